//! gzip, zlib and zstd written as independently compressed blocks, so a full snapshot
//! compresses on every core, and (gzip) decompresses on every core: [`BlockFormat`].
//!
//! **gzip**: every block is a gzip member of its own (RFC 1952 allows any number, and every
//! reader takes them as one stream: Go's `compress/gzip` in its default multistream mode, which
//! the reference's restore uses, gzip(1), flate2's `MultiGzDecoder`). Each member's header
//! carries an extra field (FEXTRA) that says how long the member is, as BGZF does, so a reader
//! finds every member without inflating the one before and inflates them in parallel
//! ([`MemberHeader`]): subfield id `E` `B`, 8 bytes: the member's total size in bytes (u32
//! little-endian: header, deflate data and trailer) and its plain size (u32 little-endian).
//! Readers that do not know the subfield skip it, as RFC 1952 says. The members are also
//! written in one pass by one thread where that is simpler ([`BlockFormat::compress`]). A
//! member's deflate data comes from one call per block: at level 1 (the default) to ISA-L's
//! igzip (the `isal` feature: about 3 times libdeflate's level 1 on etcd dbs, for objects about
//! 2 % larger), at other levels (or without the feature) to libdeflate (about 1.3–1.7 times
//! zlib-rs's speed at the same or a smaller size); its crc32 from flate2.
//!
//! **zlib**: a zlib stream has no room for such a field and Go's `compress/zlib` reads one
//! stream only, so zlib blocks are runs of one stream: each run starts with an empty history
//! and ends with a sync flush (an empty stored block, which puts the stream on a byte
//! boundary), runs compressed on different threads are concatenated in order, and the stream
//! ends with an empty final block and the adler32 combined from the runs'. Every decoder reads
//! it (pigz writes the same shape); it decompresses on one core.
//!
//! **zstd** (etcdbr's own policy): every block is a zstd frame of its own, at
//! [`ZSTD_LEVEL`](super::ZSTD_LEVEL), with its plain size in the frame header and its content
//! checksum (xxhash64) after it. RFC 8878 makes concatenated frames one stream, as zstd(1) and
//! libzstd's streaming decoder read it. A frame dropped or two swapped whole is not seen by zstd
//! itself; etcd's sha256 trailer, checked by every restore, is.
//!
//! What blocks cost: each forgets the 32 KiB history at its start, which at 1 MiB blocks makes
//! the output a fraction of a percent larger, and a gzip member's header and trailer add 32
//! bytes per MiB. Go 1.19's `compress/gzip` and `compress/zlib` decoded a 1.15 GiB full
//! snapshot written in blocks (each format) to the stream etcd sent, its sha256 trailer
//! intact; the tests here check C zlib (Python's gzip and zlib modules) and flate2.

use std::io;

use crate::name::Compression;

/// Plain bytes per block: large enough that the lost history at each start costs little, small
/// enough that a few blocks in flight per thread stay within a few MiB.
pub const BLOCK_SIZE: usize = 1024 * 1024;

/// The gzip level of full snapshots unless configured: 1, ISA-L's igzip (the `isal` feature),
/// else libdeflate's level 1. On the 1,153 MiB db of 16 KiB values of the snapshot benchmark,
/// igzip wrote 340 MiB and a whole snapshot took 2.7 CPU-s; libdeflate's level 1 334 MiB in 5.5
/// CPU-s (as small as its level 2 for about 20 % less CPU); the reference's level 6 319 MiB.
/// Level 1 keeps a compressed snapshot of a large db near the speed etcd streams it on two
/// cores.
pub const DEFAULT_GZIP_LEVEL: u32 = 1;

/// The zlib level of full snapshots unless configured: 2. zlib is written by zlib-rs, whose
/// level 1 is a different algorithm (`deflate_quick`, static Huffman codes: larger objects).
pub const DEFAULT_ZLIB_LEVEL: u32 = 2;

/// The level a full snapshot compressed with `compression` gets unless one is configured
/// ([`DEFAULT_GZIP_LEVEL`], [`DEFAULT_ZLIB_LEVEL`]; LZW and zstd have no level to choose:
/// zstd is always [`super::ZSTD_LEVEL`]).
pub const fn default_level(compression: Compression) -> u32 {
    match compression {
        Compression::Zlib => DEFAULT_ZLIB_LEVEL,
        _ => DEFAULT_GZIP_LEVEL,
    }
}

/// The empty final block that ends the stream: BFINAL = 1, fixed Huffman codes, end of block.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// The extra field's subfield id of a block member: `E` `B`.
pub const SUBFIELD_ID: [u8; 2] = *b"EB";

/// Bytes of a block member's header: the gzip header (10), XLEN (2), the subfield (4 + 8).
pub const MEMBER_HEADER_LEN: usize = 24;

/// Bytes of a gzip member's trailer: crc32 and the plain size mod 2^32.
const GZIP_TRAILER_LEN: usize = 8;

/// The largest member (and plain size of one) a reader accepts: 64 times the blocks etcdbr
/// writes. A header claiming more is damaged, and is refused before a reader buffers that much.
pub const MAX_MEMBER_LEN: u32 = 64 * BLOCK_SIZE as u32;

/// The header of one gzip block member, as [`MemberHeader::parse`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberHeader {
    /// The member's bytes: header, deflate data and trailer.
    pub member_len: u32,
    /// Plain bytes the member holds.
    pub plain_len: u32,
}

impl MemberHeader {
    /// Reads a block member's header from the start of `bytes`. `None` if `bytes` is shorter
    /// than [`MEMBER_HEADER_LEN`] or does not start with a block member's header (another
    /// writer's gzip, such as the Go tool's one member without extra field), or the header's
    /// sizes are impossible (a member too short to hold a trailer, or above [`MAX_MEMBER_LEN`]).
    pub fn parse(bytes: &[u8]) -> Option<MemberHeader> {
        let h = bytes.get(..MEMBER_HEADER_LEN)?;
        // Magic, deflate, FLG = FEXTRA only, XLEN = 12, one subfield EB of 8 bytes.
        if h[..4] != [0x1f, 0x8b, 0x08, 0x04] || h[10..12] != [12, 0] || h[12..14] != SUBFIELD_ID || h[14..16] != [8, 0]
        {
            return None;
        }
        let member_len = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
        let plain_len = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
        let sane = (member_len as usize) >= MEMBER_HEADER_LEN + GZIP_TRAILER_LEN + 2
            && member_len <= MAX_MEMBER_LEN
            && plain_len <= MAX_MEMBER_LEN;
        sane.then_some(MemberHeader { member_len, plain_len })
    }

    fn write(&self, out: &mut [u8]) {
        // mtime 0, XFL 0, OS 255 (unknown), as Go writes them.
        out[..12].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0x00, 0xff, 12, 0]);
        out[12..16].copy_from_slice(&[SUBFIELD_ID[0], SUBFIELD_ID[1], 8, 0]);
        out[16..20].copy_from_slice(&self.member_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.plain_len.to_le_bytes());
    }
}

/// Inflates one block member (the whole member, as [`MemberHeader::parse`] delimits it) and
/// checks its crc32 and size. Errors are `InvalidData`, as a damaged stream's are.
pub fn inflate_member(member: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    inflate_member_into(member, &mut out)?;
    Ok(out)
}

/// [`inflate_member`] into `out` (cleared first), so that one buffer serves member after
/// member: a fresh MiB per member costs a page fault per 4 KiB and its unmapping. The deflate
/// data is inflated in one call into exactly the plain size the header gives (more is an
/// error), and its crc32 and size are checked against the trailer: by ISA-L's igzip with the
/// `isal` feature (about 1.3 times libdeflate's speed on delta JSON, twice on etcd dbs), by
/// libdeflate without.
pub fn inflate_member_into(member: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let header = MemberHeader::parse(member).ok_or_else(|| bad("not a block member".into()))?;
    if member.len() != header.member_len as usize {
        return Err(bad(format!("member is {} bytes, its header says {}", member.len(), header.member_len)));
    }
    let deflate = &member[MEMBER_HEADER_LEN..member.len() - GZIP_TRAILER_LEN];
    let plain_len = header.plain_len as usize;
    // Deflate expands at most 1032:1 (258-byte matches in under two bits each): a damaged
    // header claiming more is refused before the buffer is sized for it.
    if plain_len > deflate.len().saturating_mul(1032) + 16 {
        return Err(bad(format!("member of {} bytes cannot hold the {plain_len} its header says", member.len())));
    }
    // The buffer's bytes are overwritten by the inflate; only a growing buffer is zeroed.
    out.resize(plain_len, 0);
    inflate_deflate_and_trailer(&member[MEMBER_HEADER_LEN..], plain_len, out).map_err(bad)
}

/// The deflate data and gzip trailer of a block member, inflated into `out` (sized to the
/// header's `plain_len`) by igzip, which reads the trailer right after the deflate data and
/// checks its crc32 and size; bytes after the trailer are refused.
#[cfg(feature = "isal")]
fn inflate_deflate_and_trailer(data: &[u8], plain_len: usize, out: &mut [u8]) -> Result<(), String> {
    use super::isal::{InflateError, Wrapper};
    match ISAL_INFLATER.with(|cell| cell.borrow_mut().inflate(data, Wrapper::DeflateAndGzipTrailer, out)) {
        Ok((n, 0)) if n == plain_len => Ok(()),
        Ok((n, 0)) => Err(format!("member holds {n} bytes, its header says {plain_len}")),
        Ok((_, left)) => Err(format!("{left} bytes between a member's trailer and its end")),
        Err(InflateError::Overflow) => Err(format!("member holds more than the {plain_len} bytes its header says")),
        Err(InflateError::Invalid(isal_sys::igzip_lib::ISAL_INCORRECT_CHECKSUM)) => {
            Err("crc32 or size of a member does not match: the data is damaged".into())
        }
        Err(_) => Err("invalid deflate data (damaged, or cut short)".into()),
    }
}

/// [`inflate_deflate_and_trailer`] by libdeflate, which does not say where the deflate data
/// ended: bytes between it and the trailer (the member's last eight bytes) are not looked at;
/// the trailer's checks and, for a snapshot, etcd's sha256 trailer of the whole db, still see
/// every plain byte.
#[cfg(not(feature = "isal"))]
fn inflate_deflate_and_trailer(data: &[u8], plain_len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let (deflate, trailer) = data.split_at(data.len() - GZIP_TRAILER_LEN);
    let n = match INFLATER.with(|cell| cell.borrow_mut().deflate_decompress(deflate, out)) {
        Ok(n) => n,
        Err(libdeflater::DecompressionError::InsufficientSpace) => {
            return Err(format!("member holds more than the {plain_len} bytes its header says"));
        }
        Err(libdeflater::DecompressionError::BadData) => {
            return Err("invalid deflate data (damaged, or cut short)".into());
        }
    };
    out.truncate(n);
    let mut crc = flate2::Crc::new();
    crc.update(out);
    let want_crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let want_len = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    if crc.sum() != want_crc || out.len() as u32 != want_len || out.len() != plain_len {
        return Err("crc32 or size of a member does not match: the data is damaged".into());
    }
    Ok(())
}

/// Inflates `gz`, a whole gzip object held in memory, in one call (igzip, or libdeflate
/// without the `isal` feature) into `out`
/// (resized to exactly the plain size the trailer gives; only growth is zeroed, so one buffer
/// serves object after object), when that is the quick way: one member (as every delta is,
/// etcdbr's and the Go tool's) of at most `limit` plain bytes. `false` sends the caller to the
/// streaming decoder, which reads anything gzip may hold and names what is wrong with it:
/// not gzip, shorter than a header and trailer, a trailer size above `limit` or beyond what the
/// bytes can expand to, damaged data, or more than one member.
///
/// igzip checks the first member's crc32 and size against that member's own trailer and says
/// where the member ended, so anything after it goes to the streaming decoder. libdeflate
/// does not say where: a second member is seen by the object's last eight bytes not being the
/// trailer of what was inflated, and the one shape that cannot tell from one member is bytes
/// after it that end in the same eight bytes (the same member twice, say): they are not read,
/// where the streaming decoder would refuse them; what is returned is still exactly the first
/// member, and the caller's own checksum of the content (a delta's sha256) covers every byte
/// of it.
pub fn inflate_single_member_into(gz: &[u8], limit: usize, out: &mut Vec<u8>) -> bool {
    const MIN_LEN: usize = 10 + GZIP_TRAILER_LEN + 2;
    if gz.len() < MIN_LEN || gz[..3] != [0x1f, 0x8b, 0x08] {
        return false;
    }
    let trailer = &gz[gz.len() - GZIP_TRAILER_LEN..];
    let plain_len = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]) as usize;
    // Deflate expands at most 1032:1, so a larger claim is damage (or a size mod 2^32).
    if plain_len > limit || plain_len > gz.len().saturating_mul(1032) {
        return false;
    }
    out.resize(plain_len, 0);
    // igzip checks the member's own trailer and says where the member ended: one member is one
    // that ends where the object does.
    #[cfg(feature = "isal")]
    {
        let inflated = ISAL_INFLATER.with(|cell| cell.borrow_mut().inflate(gz, super::isal::Wrapper::Gzip, out));
        inflated == Ok((plain_len, 0))
    }
    #[cfg(not(feature = "isal"))]
    {
        let want_crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let inflated = INFLATER.with(|cell| cell.borrow_mut().gzip_decompress(gz, out));
        inflated.is_ok_and(|n| n == plain_len) && libdeflater::crc32(out) == want_crc
    }
}

/// The checksum of one block or of the stream so far.
#[derive(Debug)]
enum Check {
    Crc(flate2::Crc),
    Adler {
        sum: u32,
    },
    /// zstd: each frame carries its own checksum; the stream has none.
    Frames,
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

/// What a block is: a gzip member, a run of one zlib stream, a zstd frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gzip,
    Zlib,
    Zstd,
}

/// gzip, zlib or zstd at one level, written in blocks (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockFormat {
    kind: Kind,
    level: u32,
}

thread_local! {
    /// One zstd context per compressing thread, reused block after block: a fresh one per
    /// block would allocate and clear its tables every MiB.
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    /// The same for libdeflate (gzip members), with the level it was made for, and the buffer
    /// it compresses into (the bound of a block: a fresh one per block would fault in a MiB).
    static DEFLATER: std::cell::RefCell<Option<(u32, libdeflater::Compressor, Vec<u8>)>> = const { std::cell::RefCell::new(None) };
    /// igzip's level-1 compressor and the buffer it deflates into, for gzip members at level 1.
    #[cfg(feature = "isal")]
    static IGZIP: std::cell::RefCell<Option<(super::isal::IgzipLevel1, Vec<u8>)>> = const { std::cell::RefCell::new(None) };
    /// One igzip inflater per inflating thread (its state is about 85 KiB).
    #[cfg(feature = "isal")]
    static ISAL_INFLATER: std::cell::RefCell<super::isal::Inflater> = std::cell::RefCell::new(super::isal::Inflater::new());
    /// One libdeflate decompressor per inflating thread (its tables are about 32 KiB).
    #[cfg(not(feature = "isal"))]
    static INFLATER: std::cell::RefCell<libdeflater::Decompressor> = std::cell::RefCell::new(libdeflater::Decompressor::new());
}

impl BlockFormat {
    /// The block format for `compression` at `level` (gzip and zlib: clamped to 1..=9; zstd
    /// always at [`ZSTD_LEVEL`](super::ZSTD_LEVEL)), or `None` for the policies that cannot be
    /// written in blocks (none, LZW).
    pub fn new(compression: Compression, level: u32) -> Option<BlockFormat> {
        let level = level.clamp(1, 9);
        match compression {
            Compression::Gzip => Some(BlockFormat { kind: Kind::Gzip, level }),
            Compression::Zlib => Some(BlockFormat { kind: Kind::Zlib, level }),
            Compression::Zstd => Some(BlockFormat { kind: Kind::Zstd, level: super::ZSTD_LEVEL.unsigned_abs() }),
            Compression::None | Compression::Lzw => None,
        }
    }

    /// The bytes before the first block (none for gzip and zstd: every block stands alone).
    pub fn header(&self) -> Vec<u8> {
        if self.kind != Kind::Zlib {
            return Vec::new();
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
    /// in any order; [`BlockStream`] puts them back in order. A gzip block must hold less than
    /// 4 GiB (its header counts in u32); [`BLOCK_SIZE`] is far below.
    pub fn compress(&self, plain: &[u8]) -> io::Result<CompressedBlock> {
        match self.kind {
            Kind::Zstd => return compress_zstd_frame(plain),
            Kind::Gzip => return compress_gzip_member(plain, self.level),
            Kind::Zlib => {}
        }
        // zlib: a run of one stream, ended by a sync flush (zlib-rs; see the module docs).
        let mut c = flate2::Compress::new(flate2::Compression::new(self.level), false);
        // Deflate's worst case is a few bytes per 16 KiB stored block over the input.
        let mut out = Vec::with_capacity(plain.len() + plain.len() / 1000 + 64);
        loop {
            let consumed = c.total_in() as usize;
            let rest = plain.get(consumed..).unwrap_or_default();
            c.compress_vec(rest, &mut out, flate2::FlushCompress::Sync).map_err(io::Error::other)?;
            // Done once every byte is in and the sync flush is complete: room to spare after
            // it (a full output buffer may mean it is not complete yet).
            if c.total_in() as usize == plain.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64 * 1024));
        }
        let check = Check::Adler { sum: zlib_rs::adler32::adler32(1, plain) };
        // The block waits for its turn in the upload: hold only what it needs.
        out.shrink_to_fit();
        Ok(CompressedBlock { bytes: out, plain_len: plain.len() as u64, check })
    }

    /// The running checksum of a stream in this format, fed block by block.
    pub fn stream(&self) -> BlockStream {
        let check = match self.kind {
            Kind::Gzip => Check::Crc(flate2::Crc::new()),
            Kind::Zlib => Check::Adler { sum: 1 },
            Kind::Zstd => Check::Frames,
        };
        BlockStream { check, plain_len: 0 }
    }
}

/// One gzip block member of `plain`: its deflate data in one call, on this thread's compressor
/// and into its buffer, then copied out at its size: by ISA-L's igzip at level 1 (with the
/// `isal` feature), by libdeflate at `level` otherwise (1..=9).
fn compress_gzip_member(plain: &[u8], level: u32) -> io::Result<CompressedBlock> {
    let plain_len = u32::try_from(plain.len()).map_err(|_| io::Error::other("gzip block of 4 GiB or more"))?;
    let mut crc = flate2::Crc::new();
    crc.update(plain);
    let member = |scratch: &[u8]| -> io::Result<Vec<u8>> {
        let member_len = u32::try_from(MEMBER_HEADER_LEN + scratch.len() + GZIP_TRAILER_LEN)
            .map_err(|_| io::Error::other("gzip block of 4 GiB or more"))?;
        // The member at its size: the block waits for its turn in the upload.
        let mut out = Vec::with_capacity(member_len as usize);
        out.resize(MEMBER_HEADER_LEN, 0);
        MemberHeader { member_len, plain_len }.write(&mut out[..MEMBER_HEADER_LEN]);
        out.extend_from_slice(scratch);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&plain_len.to_le_bytes());
        Ok(out)
    };
    #[cfg(feature = "isal")]
    if level == 1 {
        let out = IGZIP.with(|cell| -> io::Result<Vec<u8>> {
            let mut slot = cell.borrow_mut();
            let (c, scratch) = slot.get_or_insert_with(|| (super::isal::IgzipLevel1::new(), Vec::new()));
            let bound = super::isal::IgzipLevel1::bound(plain.len());
            if scratch.len() < bound {
                scratch.resize(bound, 0);
            }
            let n = c.compress(plain, scratch)?;
            member(&scratch[..n])
        })?;
        return Ok(CompressedBlock { bytes: out, plain_len: plain.len() as u64, check: Check::Crc(crc) });
    }
    let out = DEFLATER.with(|cell| -> io::Result<Vec<u8>> {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _, _)| *l != level) {
            let lvl = libdeflater::CompressionLvl::new(level.clamp(1, 9) as i32)
                .map_err(|e| io::Error::other(format!("libdeflate level {level}: {e:?}")))?;
            *slot = Some((level, libdeflater::Compressor::new(lvl), Vec::new()));
        }
        let (_, c, scratch) = slot.as_mut().expect("set above");
        let bound = c.deflate_compress_bound(plain.len());
        if scratch.len() < bound {
            scratch.resize(bound, 0);
        }
        let n = c.deflate_compress(plain, scratch).map_err(|e| io::Error::other(format!("libdeflate: {e:?}")))?;
        member(&scratch[..n])
    })?;
    Ok(CompressedBlock { bytes: out, plain_len: plain.len() as u64, check: Check::Crc(crc) })
}

/// One zstd frame of `plain`, on this thread's context.
fn compress_zstd_frame(plain: &[u8]) -> io::Result<CompressedBlock> {
    let bytes = ZSTD.with(|cell| -> io::Result<Vec<u8>> {
        let mut slot = cell.borrow_mut();
        let c = match &mut *slot {
            Some(c) => c,
            None => {
                let mut c = zstd::bulk::Compressor::new(super::ZSTD_LEVEL)?;
                c.include_checksum(true)?;
                c.include_contentsize(true)?;
                slot.insert(c)
            }
        };
        c.compress(plain)
    })?;
    Ok(CompressedBlock { bytes, plain_len: plain.len() as u64, check: Check::Frames })
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
            (Check::Frames, Check::Frames) => {}
            // A block of another format cannot come from the same BlockFormat; the mismatch
            // shows as a wrong checksum or an invalid frame that every decoder rejects, never
            // as silent damage.
            _ => debug_assert!(false, "blocks of different formats mixed in one stream"),
        }
        self.plain_len += block.plain_len;
    }

    /// Plain bytes in the blocks added so far.
    pub fn plain_len(&self) -> u64 {
        self.plain_len
    }

    /// The bytes after the last block: for zlib the final empty block and the adler32; for
    /// gzip and zstd nothing, unless no block was written (then one empty member or frame,
    /// since an empty file is not a gzip stream to Go's reader, nor a zstd one to zstd(1)).
    pub fn trailer(self) -> Vec<u8> {
        match self.check {
            Check::Crc(_) | Check::Frames if self.plain_len > 0 => Vec::new(),
            Check::Crc(_) => {
                BlockFormat { kind: Kind::Gzip, level: 1 }.compress(&[]).map(|b| b.bytes).unwrap_or_default()
            }
            Check::Frames => compress_zstd_frame(&[]).map(|b| b.bytes).unwrap_or_default(),
            Check::Adler { sum } => {
                let mut out = FINAL_BLOCK.to_vec();
                out.extend_from_slice(&sum.to_be_bytes());
                out
            }
        }
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
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        std::fs::write(&input, data).unwrap();
        // gzip: Python's gzip module reads every member, as gzip(1) and Go do.
        let script = if gzip {
            "import sys, gzip\nsys.stdout.buffer.write(gzip.decompress(open(sys.argv[1], 'rb').read()))\n".to_string()
        } else {
            "import sys, zlib\nd = zlib.decompressobj(15)\nout = d.decompress(open(sys.argv[1], 'rb').read())\n\
             assert d.eof and not d.unused_data, 'stream not complete or trailing bytes'\nsys.stdout.buffer.write(out)\n"
                .to_string()
        };
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
    fn gzip_members_are_found_by_their_headers_and_inflate_alone() {
        let gz = BlockFormat::new(Compression::Gzip, 2).unwrap();
        assert!(gz.header().is_empty());
        let plain = sample(10_000, 3);
        let data = encode(gz, &plain, 1000);
        let (mut at, mut out) = (0, Vec::new());
        while at < data.len() {
            let h = MemberHeader::parse(&data[at..]).expect("a member header");
            let member = &data[at..at + h.member_len as usize];
            let inflated = inflate_member(member).unwrap();
            assert_eq!(inflated.len(), h.plain_len as usize);
            // Each member's trailer is what a one-shot gzip of its block writes.
            let mut one_shot = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(2));
            std::io::Write::write_all(&mut one_shot, &inflated).unwrap();
            let one_shot = one_shot.finish().unwrap();
            assert_eq!(member[member.len() - 8..], one_shot[one_shot.len() - 8..]);
            out.extend_from_slice(&inflated);
            at += h.member_len as usize;
        }
        assert!(out == plain);
        // A header whose sizes are impossible is no member's: too short for its trailer, or
        // larger than any reader should buffer.
        let first = MemberHeader::parse(&data).unwrap();
        for (member_len, plain_len) in [(33, 10), (MAX_MEMBER_LEN + 1, 10), (first.member_len, MAX_MEMBER_LEN + 1)] {
            let mut h = data[..MEMBER_HEADER_LEN].to_vec();
            MemberHeader { member_len, plain_len }.write(&mut h);
            assert_eq!(MemberHeader::parse(&h), None, "{member_len} {plain_len}");
        }
        // One buffer reused member after member (as the restore's pool does) holds each
        // member's bytes alone, whatever it held before, even a longer member's.
        let mut reused = vec![0xAA; 5000];
        let (mut at, mut again) = (0, Vec::new());
        while at < data.len() {
            let h = MemberHeader::parse(&data[at..]).unwrap();
            inflate_member_into(&data[at..at + h.member_len as usize], &mut reused).unwrap();
            assert_eq!(reused.len(), h.plain_len as usize);
            again.extend_from_slice(&reused);
            at += h.member_len as usize;
        }
        assert!(again == plain);
        // Damage inside a member, or a member cut short, is refused by the member alone.
        let h = MemberHeader::parse(&data).unwrap();
        let mut member = data[..h.member_len as usize].to_vec();
        let mid = member.len() / 2;
        member[mid] ^= 0x55;
        assert_eq!(inflate_member(&member).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(inflate_member(&data[..h.member_len as usize - 1]).is_err());
        // A header whose plain size is wrong: one byte short, one byte long, or more than the
        // member's deflate data can hold (refused before a buffer is sized for it).
        for plain_len in [h.plain_len - 1, h.plain_len + 1, u32::MAX] {
            let mut member = data[..h.member_len as usize].to_vec();
            MemberHeader { member_len: h.member_len, plain_len }.write(&mut member[..MEMBER_HEADER_LEN]);
            let e = inflate_member(&member).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "plain_len {plain_len}: {e}");
        }
        // The Go tool's gzip (one member, no extra field) is not a block member.
        let mut go = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        std::io::Write::write_all(&mut go, &plain).unwrap();
        assert_eq!(MemberHeader::parse(&go.finish().unwrap()), None);
        // An empty stream is still one (empty) member.
        let empty = encode(gz, &[], 1000);
        assert_eq!(MemberHeader::parse(&empty).map(|h| h.plain_len), Some(0));
        assert!(decode(Compression::Gzip, empty).unwrap().is_empty());
    }

    #[test]
    fn zlib_header_and_trailer_have_the_formats_shape() {
        for level in 1..=9 {
            let h = BlockFormat::new(Compression::Zlib, level).unwrap().header();
            assert_eq!(h[0], 0x78);
            assert_eq!((u16::from(h[0]) * 256 + u16::from(h[1])) % 31, 0, "level {level}");
        }
        // zlib: adler32 big-endian, as a one-shot encoder writes it.
        let plain = sample(10_000, 3);
        let data = encode(BlockFormat::new(Compression::Zlib, 2).unwrap(), &plain, 999);
        let mut one_shot = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(2));
        std::io::Write::write_all(&mut one_shot, &plain).unwrap();
        let one_shot = one_shot.finish().unwrap();
        assert_eq!(data[data.len() - 4..], one_shot[one_shot.len() - 4..]);
    }

    #[test]
    fn a_missing_or_reordered_zlib_block_is_refused_by_the_checksum() {
        let format = BlockFormat::new(Compression::Zlib, 2).unwrap();
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
        assert!(decode(Compression::Zlib, swapped).is_err());
        let mut dropped = format.header();
        for b in &blocks[..3] {
            dropped.extend_from_slice(b.bytes());
        }
        dropped.extend_from_slice(&trailer);
        assert!(decode(Compression::Zlib, dropped).is_err());
    }

    /// Decodes with zstd(1), the reference implementation's own command (Debian `zstd`,
    /// installed by scripts/install-test-deps.sh).
    fn decode_with_zstd_cli(data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.zst");
        std::fs::write(&input, data).unwrap();
        let out = std::process::Command::new("zstd")
            .args(["-d", "-c", "-q"])
            .arg(&input)
            .output()
            .expect("zstd(1) is missing: run scripts/install-test-deps.sh (Debian package zstd)");
        assert!(out.status.success(), "zstd(1) refused the stream: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    #[test]
    fn zstd_blocks_are_frames_that_zstd_reads_as_one_stream() {
        let format = BlockFormat::new(Compression::Zstd, 9).unwrap();
        assert_eq!(format, BlockFormat::new(Compression::Zstd, 1).unwrap(), "--compression-level does not apply");
        assert!(format.header().is_empty());
        for (len, block) in [(0, BLOCK_SIZE), (1, 7), (300_000, 65_536), (3 * BLOCK_SIZE + 5, BLOCK_SIZE)] {
            let plain = sample(len, len as u64 + 11);
            let data = encode(format, &plain, block);
            assert!(decode(Compression::Zstd, data.clone()).unwrap() == plain, "zstd len {len}");
            assert!(decode_with_zstd_cli(&data) == plain, "zstd(1): len {len}");
            if len > 1000 {
                assert!(data.len() < plain.len() / 2, "len {len}: {} bytes compressed", data.len());
            }
        }
        // Each block is one frame whose header holds its plain size, and which ends in a checksum
        // (frame header descriptor: bit 2 checksum flag; a single-segment frame records its size).
        let plain = sample(5000, 1);
        let block = format.compress(&plain).unwrap();
        assert_eq!(&block.bytes()[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(block.bytes()[4] & 0x04, 0x04, "content checksum flag");
        assert_eq!(zstd::zstd_safe::get_frame_content_size(block.bytes()).ok(), Some(Some(5000)));
        // A damaged frame is refused by its checksum or its structure.
        let mut bad = block.into_bytes();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(decode(Compression::Zstd, bad).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn only_gzip_zlib_and_zstd_are_written_in_blocks() {
        assert!(BlockFormat::new(Compression::None, 6).is_none());
        assert!(BlockFormat::new(Compression::Lzw, 6).is_none());
        assert!(BlockFormat::new(Compression::Zstd, 6).is_some());
        assert_eq!(BlockFormat::new(Compression::Gzip, 0), BlockFormat::new(Compression::Gzip, 1));
    }

    #[test]
    fn a_single_member_inflates_whole_and_anything_else_is_left_to_the_stream() {
        use std::io::Write;
        let inflate = |gz: &[u8], limit: usize| {
            let mut out = vec![1u8; 7]; // a used buffer: its bytes are replaced, not appended to
            inflate_single_member_into(gz, limit, &mut out).then_some(out)
        };
        let gzip = |plain: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(plain).unwrap();
            e.finish().unwrap()
        };
        let (a, b) = (sample(300_000, 7), sample(200_000, 8));
        let one = gzip(&a);
        assert_eq!(inflate(&one, a.len()).as_deref(), Some(&a[..]));
        // Above the limit, another format, cut short or damaged: left to the streaming decoder.
        assert_eq!(inflate(&one, a.len() - 1), None);
        assert_eq!(inflate(&a, usize::MAX), None);
        assert_eq!(inflate(&one[..one.len() - 1], usize::MAX), None);
        let mut damaged = one.clone();
        damaged[one.len() / 2] ^= 0x55;
        assert_eq!(inflate(&damaged, usize::MAX), None);
        // Two members: the one call would read the first only; the stream reads both.
        let mut two = one.clone();
        two.extend_from_slice(&gzip(&b));
        assert_eq!(inflate(&two, usize::MAX), None);
        let mut streamed = Vec::new();
        decoder(Compression::Gzip, std::io::Cursor::new(two)).read_to_end(&mut streamed).unwrap();
        assert_eq!(streamed, [a, b].concat());
        // The same member twice ends in that member's trailer: igzip says where the first
        // member ended, so it is seen (libdeflate's one call cannot tell it from one member).
        #[cfg(feature = "isal")]
        assert_eq!(inflate(&[one.clone(), one.clone()].concat(), usize::MAX), None);
        // An empty member is a member.
        assert_eq!(inflate(&gzip(b""), 0), Some(Vec::new()));
    }
}
