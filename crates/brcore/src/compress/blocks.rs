//! gzip and zlib written as independently compressed blocks, so a full snapshot compresses on
//! every core: [`BlockFormat`].
//!
//! A deflate stream can be cut into runs that each start with an empty history: the compressor
//! of one run needs nothing from the run before it. Each run ends with a sync flush (an empty
//! stored block, which puts the stream on a byte boundary), so runs compressed on different
//! threads can be concatenated in order. The stream then ends with an empty final block, and
//! the checksum of the whole (crc32 for gzip, adler32 for zlib) is combined from the runs'.
//!
//! The result is one ordinary gzip member or zlib stream, the shape pigz writes, and every
//! decoder reads it: Go's `compress/gzip` and `compress/zlib` (the reference's restore), C zlib,
//! flate2. What it costs: each run forgets the 32 KiB history at its start, which at 1 MiB runs
//! makes the output a fraction of a percent larger. Go 1.19's `compress/gzip` and
//! `compress/zlib` decoded a 1.15 GiB full snapshot written this way (each format) to the
//! stream etcd sent, its sha256 trailer intact; the tests here check C zlib and flate2.

use std::io;

use crate::name::Compression;

/// Plain bytes per block: large enough that the lost history at each start costs little, small
/// enough that a few blocks in flight per thread stay within a few MiB.
pub const BLOCK_SIZE: usize = 1024 * 1024;

/// The compression level of full snapshots unless configured: zlib-rs's level 2 compresses
/// etcd dbs to within a few percent of level 6 (Go's default) at about twice the speed, which
/// keeps a snapshot of a large db close to the speed etcd streams it.
pub const DEFAULT_FULL_SNAPSHOT_LEVEL: u32 = 2;

/// The empty final block that ends the stream: BFINAL = 1, fixed Huffman codes, end of block.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// gzip header as Go writes it (no name, mtime 0, OS 255).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff];

/// The checksum of one block or of the stream so far.
#[derive(Debug)]
enum Check {
    Crc(flate2::Crc),
    Adler { sum: u32 },
}

/// A block compressed on its own by [`BlockFormat::compress`].
#[derive(Debug)]
pub struct CompressedBlock {
    bytes: Vec<u8>,
    plain_len: u64,
    check: Check,
}

impl CompressedBlock {
    /// The compressed bytes, to be written in block order after [`BlockFormat::header`].
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Turns the block into its bytes (after [`BlockStream::add`] has taken its checksum).
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Plain bytes the block holds.
    pub fn plain_len(&self) -> u64 {
        self.plain_len
    }
}

/// gzip or zlib at one level, written in blocks (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockFormat {
    gzip: bool,
    level: u32,
}

impl BlockFormat {
    /// The block format for `compression` at `level` (clamped to 1..=9), or `None` for the
    /// policies that cannot be written in blocks (none, LZW).
    pub fn new(compression: Compression, level: u32) -> Option<BlockFormat> {
        let level = level.clamp(1, 9);
        match compression {
            Compression::Gzip => Some(BlockFormat { gzip: true, level }),
            Compression::Zlib => Some(BlockFormat { gzip: false, level }),
            Compression::None | Compression::Lzw => None,
        }
    }

    /// The bytes before the first block.
    pub fn header(&self) -> Vec<u8> {
        if self.gzip {
            return GZIP_HEADER.to_vec();
        }
        // CMF: deflate, 32 KiB window. FLG: the level hint zlib writes, with the check bits that
        // make CMF*256+FLG a multiple of 31.
        let flevel: u8 = match self.level {
            1 => 0,
            2..=5 => 1,
            6 => 2,
            _ => 3,
        };
        let cmf = 0x78u8;
        let flg = flevel << 6;
        let fcheck = 31 - ((u16::from(cmf) * 256 + u16::from(flg)) % 31) as u8;
        vec![cmf, flg | (fcheck % 31)]
    }

    /// Compresses `plain` as one block. Blocks of one stream may be compressed on any threads
    /// in any order; [`BlockStream`] puts them back in order.
    pub fn compress(&self, plain: &[u8]) -> io::Result<CompressedBlock> {
        let mut c = flate2::Compress::new(flate2::Compression::new(self.level), false);
        // Deflate's worst case is a few bytes per 16 KiB stored block over the input.
        let mut out = Vec::with_capacity(plain.len() + plain.len() / 1000 + 64);
        loop {
            let consumed = c.total_in() as usize;
            let rest = plain.get(consumed..).unwrap_or_default();
            c.compress_vec(rest, &mut out, flate2::FlushCompress::Sync).map_err(io::Error::other)?;
            // Done once every byte is in and the flush left room to spare in the output (a full
            // output buffer may mean the flush is not complete yet).
            if c.total_in() as usize == plain.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64 * 1024));
        }
        // The block waits for its turn in the upload: hold only what it needs.
        out.shrink_to_fit();
        let check = if self.gzip {
            let mut crc = flate2::Crc::new();
            crc.update(plain);
            Check::Crc(crc)
        } else {
            Check::Adler { sum: zlib_rs::adler32::adler32(1, plain) }
        };
        Ok(CompressedBlock { bytes: out, plain_len: plain.len() as u64, check })
    }

    /// The running checksum of a stream in this format, fed block by block.
    pub fn stream(&self) -> BlockStream {
        let check = if self.gzip { Check::Crc(flate2::Crc::new()) } else { Check::Adler { sum: 1 } };
        BlockStream { check, plain_len: 0 }
    }
}

/// The checksum of the blocks written so far, in order; [`BlockStream::trailer`] ends the stream.
#[derive(Debug)]
pub struct BlockStream {
    check: Check,
    plain_len: u64,
}

impl BlockStream {
    /// Accounts for `block`, the next block in stream order.
    pub fn add(&mut self, block: &CompressedBlock) {
        match (&mut self.check, &block.check) {
            (Check::Crc(all), Check::Crc(one)) => all.combine(one),
            (Check::Adler { sum }, Check::Adler { sum: one }) => {
                *sum = zlib_rs::adler32::adler32_combine(*sum, *one, block.plain_len);
            }
            // A block of the other format cannot come from the same BlockFormat; the mismatch
            // shows as a wrong checksum that every decoder rejects, never as silent damage.
            (Check::Crc(_), Check::Adler { .. }) | (Check::Adler { .. }, Check::Crc(_)) => {
                debug_assert!(false, "gzip and zlib blocks mixed in one stream");
            }
        }
        self.plain_len += block.plain_len;
    }

    /// Plain bytes in the blocks added so far.
    pub fn plain_len(&self) -> u64 {
        self.plain_len
    }

    /// The bytes after the last block: the final empty block and the format's trailer.
    pub fn trailer(self) -> Vec<u8> {
        let mut out = FINAL_BLOCK.to_vec();
        match self.check {
            Check::Crc(crc) => {
                out.extend_from_slice(&crc.sum().to_le_bytes());
                out.extend_from_slice(&(self.plain_len as u32).to_le_bytes());
            }
            Check::Adler { sum } => out.extend_from_slice(&sum.to_be_bytes()),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::compress::decoder;

    fn sample(n: usize, seed: u64) -> Vec<u8> {
        // Text-like bytes with repeats, so deflate finds matches within and across blocks.
        let mut x = seed;
        let words: [&[u8]; 6] = [b"/registry/pods/", b"kube-system", b"\"metadata\":{", b"0123", b"etcd ", b"\n"];
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let w = words[((x >> 33) % words.len() as u64) as usize];
            out.extend_from_slice(w);
            out.push((x >> 56) as u8);
        }
        out.truncate(n);
        out
    }

    fn encode(format: BlockFormat, plain: &[u8], block: usize) -> Vec<u8> {
        let mut out = format.header();
        let mut stream = format.stream();
        for chunk in plain.chunks(block) {
            let b = format.compress(chunk).unwrap();
            stream.add(&b);
            out.extend_from_slice(b.bytes());
        }
        out.extend_from_slice(&stream.trailer());
        out
    }

    fn decode(c: Compression, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(c, io::Cursor::new(data)).read_to_end(&mut out)?;
        Ok(out)
    }

    /// Decodes with Python's zlib module (C zlib): a decoder independent of flate2 and zlib-rs.
    fn decode_with_c_zlib(gzip: bool, data: &[u8]) -> Vec<u8> {
        let wbits = if gzip { "31" } else { "15" };
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        std::fs::write(&input, data).unwrap();
        let script = format!(
            "import sys, zlib\nd = zlib.decompressobj({wbits})\nout = d.decompress(open(sys.argv[1], 'rb').read())\n\
             assert d.eof and not d.unused_data, 'stream not complete or trailing bytes'\nsys.stdout.buffer.write(out)\n"
        );
        let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&input).output().unwrap();
        assert!(out.status.success(), "C zlib refused the stream: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    #[test]
    fn blocks_make_one_stream_every_decoder_reads() {
        for (c, gzip) in [(Compression::Gzip, true), (Compression::Zlib, false)] {
            for level in [1, 2, 6, 9] {
                let format = BlockFormat::new(c, level).unwrap();
                for (len, block) in [(0, BLOCK_SIZE), (1, 7), (300_000, 65_536), (3 * BLOCK_SIZE + 5, BLOCK_SIZE)] {
                    let plain = sample(len, len as u64 + u64::from(level));
                    let data = encode(format, &plain, block);
                    assert!(decode(c, data.clone()).unwrap() == plain, "{c:?} level {level} len {len}");
                    assert!(decode_with_c_zlib(gzip, &data) == plain, "C zlib: {c:?} level {level} len {len}");
                }
            }
        }
    }

    #[test]
    fn header_and_trailer_have_the_formats_shape() {
        let gz = BlockFormat::new(Compression::Gzip, 2).unwrap();
        assert_eq!(gz.header(), GZIP_HEADER);
        for level in 1..=9 {
            let h = BlockFormat::new(Compression::Zlib, level).unwrap().header();
            assert_eq!(h[0], 0x78);
            assert_eq!((u16::from(h[0]) * 256 + u16::from(h[1])) % 31, 0, "level {level}");
        }
        // The gzip trailer holds crc32 and the length, as a one-shot encoder writes them.
        let plain = sample(10_000, 3);
        let data = encode(gz, &plain, 1000);
        let mut one_shot = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(2));
        std::io::Write::write_all(&mut one_shot, &plain).unwrap();
        let one_shot = one_shot.finish().unwrap();
        assert_eq!(data[data.len() - 8..], one_shot[one_shot.len() - 8..]);
        // zlib: adler32 big-endian, as a one-shot encoder writes it.
        let data = encode(BlockFormat::new(Compression::Zlib, 2).unwrap(), &plain, 999);
        let mut one_shot = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(2));
        std::io::Write::write_all(&mut one_shot, &plain).unwrap();
        let one_shot = one_shot.finish().unwrap();
        assert_eq!(data[data.len() - 4..], one_shot[one_shot.len() - 4..]);
    }

    #[test]
    fn a_missing_or_reordered_block_is_refused_by_the_checksum() {
        let format = BlockFormat::new(Compression::Gzip, 2).unwrap();
        let plain = sample(4000, 5);
        let blocks: Vec<CompressedBlock> = plain.chunks(1000).map(|c| format.compress(c).unwrap()).collect();
        let mut stream = format.stream();
        blocks.iter().for_each(|b| stream.add(b));
        let trailer = stream.trailer();
        let mut swapped = format.header();
        for i in [1, 0, 2, 3] {
            swapped.extend_from_slice(blocks[i].bytes());
        }
        swapped.extend_from_slice(&trailer);
        assert!(decode(Compression::Gzip, swapped).is_err());
        let mut dropped = format.header();
        for b in &blocks[..3] {
            dropped.extend_from_slice(b.bytes());
        }
        dropped.extend_from_slice(&trailer);
        assert!(decode(Compression::Gzip, dropped).is_err());
    }

    #[test]
    fn only_gzip_and_zlib_are_written_in_blocks() {
        assert!(BlockFormat::new(Compression::None, 6).is_none());
        assert!(BlockFormat::new(Compression::Lzw, 6).is_none());
        assert_eq!(BlockFormat::new(Compression::Gzip, 0), BlockFormat::new(Compression::Gzip, 1));
    }
}
