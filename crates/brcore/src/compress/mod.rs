//! Streaming compression and decompression for the reference's compression policies, and
//! etcdbr's own `zstd`.
//!
//! | suffix | policy | format |
//! |---|---|---|
//! | `.gz` | `gzip` | RFC 1952; Go writes one member, no name, mtime 0, OS 255, as flate2 does |
//! | `.zlib` | `zlib` | RFC 1950 |
//! | `.Z` | `lzw` | Go's `compress/lzw` with LSB bit order and literal width 8: the GIF variant (clear code 256, end code 257, codes start at 9 bits, up to 12) |
//! | `.zst` | `zstd` | RFC 8878, one or more frames, each with its content checksum; etcdbr's own, at level [`ZSTD_LEVEL`] (the Go tool cannot read it) |
//! | none | – | stored as is |
//!
//! Everything streams through fixed buffers: snapshots are multi-GiB, so nothing here holds a
//! whole object. Three shapes are offered: [`decoder`] (wrap a reader of compressed bytes),
//! [`Encoder`] (wrap a writer that receives compressed bytes) and [`encoding_reader`] (wrap a
//! reader of plain bytes, yielding compressed bytes; what an upload pulls from).
//!
//! The LZW format was cross-checked against Go 1.19's `compress/lzw`: the fixtures under
//! `tests/fixtures/go-compress/` were written by Go (inputs: the LCG in this module's tests) and
//! are decoded here; Go decoded this module's gzip, zlib and LZW output of 12 kB to 3 MB.

use std::io::{self, BufRead, BufReader, Read, Write};

use weezl::{BitOrder, LzwStatus};

pub mod blocks;
#[cfg(feature = "isal")]
mod isal;

use crate::name::Compression;

/// Go's `lzw.NewWriter(w, lzw.LSB, 8)`: bit order and literal width of `.Z` objects.
const LZW_ORDER: BitOrder = BitOrder::Lsb;
const LZW_LITERAL_WIDTH: u8 = 8;
/// Size of the intermediate buffers of the LZW adapters.
const BUF_SIZE: usize = 64 * 1024;

/// The zstd level of everything etcdbr writes as `.zst`, chosen for speed: on an etcd db
/// level 1 compresses 210–290 MiB/s per core to the size gzip's level 2 reaches at 60–120 MiB/s;
/// level 2 is half as fast for the same size (measured 2026-12-03 on a 289 MiB db, 1 MiB
/// blocks, the shared machine). `--compression-level` does not apply to it.
pub const ZSTD_LEVEL: i32 = 1;

/// Wraps a reader of `compression`-compressed bytes into a reader of the plain bytes.
///
/// gzip input may hold several members (Go's reader accepts that too). A truncated stream ends in
/// an error of kind [`io::ErrorKind::UnexpectedEof`]; damaged data in [`io::ErrorKind::InvalidData`]
/// (or `InvalidInput`, as flate2 reports some header errors).
pub fn decoder(compression: Compression, reader: impl Read + Send + 'static) -> Box<dyn Read + Send> {
    match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zlib => Box::new(flate2::read::ZlibDecoder::new(reader)),
        Compression::Lzw => Box::new(LzwDecoder::new(BufReader::with_capacity(BUF_SIZE, reader))),
        Compression::Zstd => match zstd::stream::read::Decoder::new(reader) {
            Ok(d) => Box::new(ZstdErrors(d)),
            Err(e) => Box::new(FailedReader(Some(zstd_error(e)))),
        },
    }
}

/// Wraps a reader of plain bytes into a reader of the bytes compressed with `compression`, so
/// an upload can pull compressed chunks from, for example, etcd's snapshot stream.
pub fn encoding_reader(compression: Compression, reader: impl Read + Send + 'static) -> Box<dyn Read + Send> {
    match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::GzEncoder::new(reader, flate2::Compression::default())),
        Compression::Zlib => Box::new(flate2::read::ZlibEncoder::new(reader, flate2::Compression::default())),
        Compression::Lzw => Box::new(LzwEncodingReader::new(BufReader::with_capacity(BUF_SIZE, reader))),
        Compression::Zstd => {
            match zstd::stream::read::Encoder::new(reader, ZSTD_LEVEL).and_then(|mut e| {
                e.include_checksum(true)?;
                Ok(e)
            }) {
                Ok(e) => Box::new(e),
                Err(e) => Box::new(FailedReader(Some(e))),
            }
        }
    }
}

/// A reader that fails its first read with the error it holds (a codec that could not start:
/// zstd's context allocation), so the callers' readers need no second error path.
struct FailedReader(Option<io::Error>);

impl Read for FailedReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self.0.take().unwrap_or_else(|| io::Error::other("zstd could not start")))
    }
}

/// zstd reports damaged data as `io::ErrorKind::Other`; this gives it the kind every other
/// decoder uses (`InvalidData`), so the restore says "damaged" for it too. A stream that ends
/// inside a frame is already `UnexpectedEof`.
struct ZstdErrors<R>(R);

impl<R: Read> Read for ZstdErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(zstd_error)
    }
}

fn zstd_error(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::Other {
        io::Error::new(io::ErrorKind::InvalidData, format!("invalid zstd (.zst) data: {e}"))
    } else {
        e
    }
}

/// A writer that compresses what it is given and writes the result to an inner writer.
///
/// Call [`Encoder::finish`] at the end: it writes the format's trailer (gzip/zlib checksum, the
/// LZW end code) and returns the inner writer. Dropping an unfinished encoder leaves a truncated
/// stream that every decoder rejects.
#[derive(Debug)]
pub struct Encoder<W: Write> {
    inner: EncoderKind<W>,
}

#[derive(Debug)]
enum EncoderKind<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zlib(flate2::write::ZlibEncoder<W>),
    Lzw(LzwEncoder<W>),
    Zstd(ZstdEncoder<W>),
}

/// zstd's streaming encoder, which has no `Debug`.
struct ZstdEncoder<W: Write>(zstd::stream::write::Encoder<'static, W>);

impl<W: Write> std::fmt::Debug for ZstdEncoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdEncoder").finish_non_exhaustive()
    }
}

impl<W: Write> Encoder<W> {
    /// Starts a `compression` stream written to `writer`. Levels are the reference's: Go's
    /// default compression for gzip and zlib; zstd at [`ZSTD_LEVEL`] with content checksums.
    ///
    /// Fails only when zstd cannot allocate its context.
    pub fn new(compression: Compression, writer: W) -> io::Result<Encoder<W>> {
        let level = flate2::Compression::default();
        let inner = match compression {
            Compression::None => EncoderKind::Plain(writer),
            Compression::Gzip => EncoderKind::Gzip(flate2::write::GzEncoder::new(writer, level)),
            Compression::Zlib => EncoderKind::Zlib(flate2::write::ZlibEncoder::new(writer, level)),
            Compression::Lzw => EncoderKind::Lzw(LzwEncoder::new(writer)),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(writer, ZSTD_LEVEL)?;
                e.include_checksum(true)?;
                EncoderKind::Zstd(ZstdEncoder(e))
            }
        };
        Ok(Encoder { inner })
    }

    /// Writes the end of the stream and returns the inner writer (not flushed beyond what the
    /// format requires; flush or sync it as the destination needs).
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            EncoderKind::Plain(w) => Ok(w),
            EncoderKind::Gzip(e) => e.finish(),
            EncoderKind::Zlib(e) => e.finish(),
            EncoderKind::Lzw(e) => e.finish(),
            EncoderKind::Zstd(e) => e.0.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            EncoderKind::Plain(w) => w.write(buf),
            EncoderKind::Gzip(e) => e.write(buf),
            EncoderKind::Zlib(e) => e.write(buf),
            EncoderKind::Lzw(e) => e.write(buf),
            EncoderKind::Zstd(e) => e.0.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            EncoderKind::Plain(w) => w.flush(),
            EncoderKind::Gzip(e) => e.flush(),
            EncoderKind::Zlib(e) => e.flush(),
            EncoderKind::Lzw(e) => e.flush(),
            EncoderKind::Zstd(e) => e.0.flush(),
        }
    }
}

fn lzw_error(e: weezl::LzwError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("invalid LZW (.Z) data: {e}"))
}

/// Pull-based LZW decoder over a buffered reader.
struct LzwDecoder<R> {
    inner: R,
    lzw: weezl::decode::Decoder,
    done: bool,
}

impl<R: BufRead> LzwDecoder<R> {
    fn new(inner: R) -> Self {
        LzwDecoder { inner, lzw: weezl::decode::Decoder::new(LZW_ORDER, LZW_LITERAL_WIDTH), done: false }
    }
}

impl<R: BufRead> Read for LzwDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.done {
            return Ok(0);
        }
        loop {
            let input = self.inner.fill_buf()?;
            let at_eof = input.is_empty();
            let res = self.lzw.decode_bytes(input, buf);
            self.inner.consume(res.consumed_in);
            match res.status {
                Err(e) => return Err(lzw_error(e)),
                Ok(LzwStatus::Done) => {
                    // Go's reader also stops at the end code and ignores what follows.
                    self.done = true;
                    return Ok(res.consumed_out);
                }
                Ok(LzwStatus::Ok | LzwStatus::NoProgress) => {}
            }
            if res.consumed_out > 0 {
                return Ok(res.consumed_out);
            }
            if res.consumed_in == 0 {
                if at_eof {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "LZW (.Z) stream ends without its end code: the object is truncated",
                    ));
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, "LZW (.Z) decoder made no progress"));
            }
        }
    }
}

/// Push-based LZW encoder in front of a writer.
struct LzwEncoder<W: Write> {
    inner: W,
    lzw: weezl::encode::Encoder,
    out: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for LzwEncoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LzwEncoder").finish_non_exhaustive()
    }
}

impl<W: Write> LzwEncoder<W> {
    fn new(inner: W) -> Self {
        LzwEncoder { inner, lzw: weezl::encode::Encoder::new(LZW_ORDER, LZW_LITERAL_WIDTH), out: vec![0; BUF_SIZE] }
    }

    fn finish(mut self) -> io::Result<W> {
        self.lzw.finish();
        loop {
            let res = self.lzw.encode_bytes(&[], &mut self.out);
            self.inner.write_all(&self.out[..res.consumed_out])?;
            match res.status.map_err(lzw_error)? {
                LzwStatus::Done => return Ok(self.inner),
                _ if res.consumed_out == 0 => {
                    return Err(io::Error::other("LZW encoder made no progress while finishing"));
                }
                _ => {}
            }
        }
    }
}

impl<W: Write> Write for LzwEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            let res = self.lzw.encode_bytes(rest, &mut self.out);
            self.inner.write_all(&self.out[..res.consumed_out])?;
            res.status.map_err(lzw_error)?;
            if res.consumed_in == 0 && res.consumed_out == 0 {
                return Err(io::Error::other("LZW encoder made no progress"));
            }
            rest = &rest[res.consumed_in..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Codes still inside the encoder can only be written at `finish` (an LZW stream has no
        // flush point), so this flushes what has been written so far.
        self.inner.flush()
    }
}

/// Pull-based LZW encoder behind a reader of plain bytes.
struct LzwEncodingReader<R> {
    inner: R,
    lzw: weezl::encode::Encoder,
    finishing: bool,
    done: bool,
}

impl<R: BufRead> LzwEncodingReader<R> {
    fn new(inner: R) -> Self {
        LzwEncodingReader {
            inner,
            lzw: weezl::encode::Encoder::new(LZW_ORDER, LZW_LITERAL_WIDTH),
            finishing: false,
            done: false,
        }
    }
}

impl<R: BufRead> Read for LzwEncodingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.done {
            return Ok(0);
        }
        loop {
            let input = if self.finishing { &[][..] } else { self.inner.fill_buf()? };
            if input.is_empty() && !self.finishing {
                self.finishing = true;
                self.lzw.finish();
            }
            let res = self.lzw.encode_bytes(input, buf);
            if !self.finishing {
                self.inner.consume(res.consumed_in);
            }
            let status = res.status.map_err(lzw_error)?;
            if matches!(status, LzwStatus::Done) {
                self.done = true;
                return Ok(res.consumed_out);
            }
            if res.consumed_out > 0 {
                return Ok(res.consumed_out);
            }
            if res.consumed_in == 0 && self.finishing {
                return Err(io::Error::other("LZW encoder made no progress while finishing"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator the Go program that wrote the fixtures used (a 64-bit LCG).
    fn lcg(n: usize, alphabet: u64, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if alphabet > 0 { b'a' + ((x >> 33) % alphabet) as u8 } else { (x >> 56) as u8 }
            })
            .collect()
    }

    fn fixture_inputs() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("empty", Vec::new()),
            ("hello", b"hello hello hello hello, etcd!".to_vec()),
            ("text", lcg(40000, 5, 1)),
            ("random", lcg(12000, 0, 2)),
        ]
    }

    fn fixture(name: &str) -> Vec<u8> {
        // Included relative to this file, so the tests need no working directory.
        let bytes: &[u8] = match name {
            "empty.Z" => include_bytes!("../../tests/fixtures/go-compress/empty.Z"),
            "hello.Z" => include_bytes!("../../tests/fixtures/go-compress/hello.Z"),
            "text.Z" => include_bytes!("../../tests/fixtures/go-compress/text.Z"),
            "random.Z" => include_bytes!("../../tests/fixtures/go-compress/random.Z"),
            "empty.gz" => include_bytes!("../../tests/fixtures/go-compress/empty.gz"),
            "hello.gz" => include_bytes!("../../tests/fixtures/go-compress/hello.gz"),
            "empty.zlib" => include_bytes!("../../tests/fixtures/go-compress/empty.zlib"),
            "hello.zlib" => include_bytes!("../../tests/fixtures/go-compress/hello.zlib"),
            other => panic!("no fixture {other}"),
        };
        bytes.to_vec()
    }

    fn decode_all(c: Compression, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(c, io::Cursor::new(data)).read_to_end(&mut out)?;
        Ok(out)
    }

    fn encode_all(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new(c, Vec::new()).unwrap();
        // Odd-sized writes exercise the buffering.
        for chunk in data.chunks(7777) {
            e.write_all(chunk).unwrap();
        }
        e.finish().unwrap()
    }

    #[test]
    fn decodes_what_go_wrote() {
        for (name, plain) in fixture_inputs() {
            let got = decode_all(Compression::Lzw, fixture(&format!("{name}.Z"))).unwrap();
            assert!(got == plain, "{name}.Z decodes to something else");
        }
        for name in ["empty", "hello"] {
            let plain = fixture_inputs().into_iter().find(|(n, _)| *n == name).unwrap().1;
            assert_eq!(decode_all(Compression::Gzip, fixture(&format!("{name}.gz"))).unwrap(), plain);
            assert_eq!(decode_all(Compression::Zlib, fixture(&format!("{name}.zlib"))).unwrap(), plain);
        }
    }

    #[test]
    fn lzw_output_starts_and_ends_like_go() {
        // Until the code table first fills, the encoding is fully determined: same clear code
        // first, same code widths, same end code and padding. (After that, Go and weezl reset the
        // table at slightly different points; both decoders accept either, which was checked by
        // decoding this module's output of up to 3 MB with Go 1.19's compress/lzw.)
        for name in ["empty", "hello"] {
            let plain = fixture_inputs().into_iter().find(|(n, _)| *n == name).unwrap().1;
            let file = format!("{name}.Z");
            assert_eq!(encode_all(Compression::Lzw, &plain), fixture(&file), "{file}");
            let mut pulled = Vec::new();
            encoding_reader(Compression::Lzw, io::Cursor::new(plain)).read_to_end(&mut pulled).unwrap();
            assert_eq!(pulled, fixture(&file), "{file} via encoding_reader");
        }
    }

    #[test]
    fn round_trips_every_policy_both_ways() {
        for c in Compression::ALL {
            for (name, plain) in fixture_inputs() {
                let written = encode_all(c, &plain);
                assert!(decode_all(c, written).unwrap() == plain, "{c:?} {name}");
                let mut pulled = Vec::new();
                encoding_reader(c, io::Cursor::new(plain.clone())).read_to_end(&mut pulled).unwrap();
                assert!(decode_all(c, pulled).unwrap() == plain, "{c:?} {name} via encoding_reader");
            }
        }
    }

    #[test]
    fn gzip_header_matches_go() {
        let gz = encode_all(Compression::Gzip, b"x");
        assert_eq!(&gz[..10], &[0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff]);
        assert_eq!(&fixture("hello.gz")[..10], &gz[..10]);
    }

    #[test]
    fn truncated_and_damaged_streams_are_errors() {
        for c in [Compression::Gzip, Compression::Zlib, Compression::Lzw, Compression::Zstd] {
            let full = encode_all(c, &lcg(5000, 5, 9));
            let cut = full[..full.len() / 2].to_vec();
            assert!(decode_all(c, cut).is_err(), "{c:?} truncated");
        }
        // An LZW code beyond the table is invalid data.
        assert!(decode_all(Compression::Lzw, vec![0xff; 16]).is_err());
        assert!(decode_all(Compression::Gzip, b"not gzip at all".to_vec()).is_err());
        assert!(decode_all(Compression::Zlib, b"not zlib at all".to_vec()).is_err());
    }

    #[test]
    fn zstd_damage_has_the_kinds_the_restore_reports_as_damage() {
        let plain = lcg(200_000, 5, 4);
        let whole = encode_all(Compression::Zstd, &plain);
        // Cut inside the frame: the stream ends early.
        let cut = decode_all(Compression::Zstd, whole[..whole.len() / 2].to_vec()).unwrap_err();
        assert!(matches!(cut.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData), "{cut:?}");
        // A flipped byte in the middle: the block or the frame's checksum is wrong.
        let mut flipped = whole.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x20;
        let e = decode_all(Compression::Zstd, flipped).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e:?}");
        assert!(e.to_string().contains("zstd"), "{e}");
        let e = decode_all(Compression::Zstd, b"not zstd at all".to_vec()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e:?}");
        // Frames written one after the other read as one stream (the full snapshot's blocks).
        let mut two = encode_all(Compression::Zstd, b"first ");
        two.extend(encode_all(Compression::Zstd, b"second"));
        assert_eq!(decode_all(Compression::Zstd, two).unwrap(), b"first second");
    }
}
