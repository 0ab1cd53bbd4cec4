//! ISA-L's igzip, in one stateless call each way: the deflate data of gzip block members at
//! level 1, and the inflate of whole gzip members held in memory ([`super::blocks`]: full
//! snapshots' block members, whole deltas). The only unsafe code of the crate's compression:
//! calls into the C library on buffers borrowed for the call.
#![allow(unsafe_code)]

use std::io;

use isal_sys::igzip_lib as ffi;

/// One thread's igzip compressor: the stream state (about 80 KiB, boxed) and the level-1 hash
/// table it works in, both reused block after block.
pub struct IgzipLevel1 {
    stream: Box<ffi::isal_zstream>,
    level_buf: Vec<u8>,
}

impl IgzipLevel1 {
    /// A compressor; its state is set up anew by every [`IgzipLevel1::compress`].
    pub fn new() -> IgzipLevel1 {
        // SAFETY: isal_zstream is a C struct of integers, raw pointers and arrays of them, for
        // which all-zero bytes are a valid value; isal_deflate_stateless_init sets it up before
        // every use.
        let stream: Box<ffi::isal_zstream> = Box::new(unsafe { std::mem::zeroed() });
        IgzipLevel1 { stream, level_buf: vec![0u8; ffi::ISAL_DEF_LVL1_DEFAULT as usize] }
    }

    /// The output room [`IgzipLevel1::compress`] needs for `plain_len` bytes: igzip falls back
    /// to stored blocks (5 bytes of header per 64 KiB) where deflate would grow the data.
    pub fn bound(plain_len: usize) -> usize {
        plain_len + (plain_len / 65_535 + 1) * 5 + ffi::ISAL_DEF_MAX_HDR_SIZE as usize + 64
    }

    /// Deflates `plain` into `out` (raw deflate, final block set), and returns the bytes
    /// written. `out` should hold [`IgzipLevel1::bound`] bytes; an error if it cannot.
    pub fn compress(&mut self, plain: &[u8], out: &mut [u8]) -> io::Result<usize> {
        let avail_in = u32::try_from(plain.len()).map_err(|_| io::Error::other("igzip: a block of 4 GiB or more"))?;
        let avail_out = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let s = &mut *self.stream;
        // SAFETY: s is a valid, exclusively borrowed isal_zstream; init writes only into it.
        unsafe { ffi::isal_deflate_stateless_init(s) };
        s.level = 1;
        s.level_buf = self.level_buf.as_mut_ptr();
        s.level_buf_size = self.level_buf.len() as u32;
        s.gzip_flag = ffi::IGZIP_DEFLATE as u16;
        s.flush = ffi::NO_FLUSH as u16;
        s.end_of_stream = 1;
        // igzip reads next_in (the pointer is *mut in C only) and writes within avail_out.
        s.next_in = plain.as_ptr().cast_mut();
        s.avail_in = avail_in;
        s.next_out = out.as_mut_ptr();
        s.avail_out = avail_out;
        // SAFETY: next_in/avail_in and next_out/avail_out describe `plain` and `out`, borrowed
        // for this call; level_buf is owned by self; the stream keeps no pointer past the call
        // that is used again without being set anew (both are cleared below).
        let rc = unsafe { ffi::isal_deflate_stateless(s) };
        let written = s.total_out as usize;
        let left = s.avail_in;
        s.next_in = std::ptr::null_mut();
        s.next_out = std::ptr::null_mut();
        match rc {
            0 if left == 0 => Ok(written),
            ffi::STATELESS_OVERFLOW => Err(io::Error::other(format!(
                "igzip: {} bytes of output room is too little for a block of {} bytes",
                out.len(),
                plain.len()
            ))),
            _ => Err(io::Error::other(format!("igzip deflate failed (code {rc}, {left} bytes not read)"))),
        }
    }
}

/// What an inflate reads around the deflate data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapper {
    /// A whole gzip member: header, deflate data, trailer.
    Gzip,
    /// Deflate data and then a gzip trailer (crc32, size) without a header: a block member
    /// after its header was read.
    DeflateAndGzipTrailer,
}

/// Why an inflate failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The output room was too small for what the data holds.
    Overflow,
    /// The input ended before the member did.
    CutShort,
    /// Invalid data or header, or a crc32 or size that does not match the trailer (igzip's code).
    Invalid(i32),
}

/// One thread's igzip inflater: the state (about 85 KiB, boxed), reused member after member.
pub struct Inflater {
    state: Box<ffi::inflate_state>,
}

impl Inflater {
    /// An inflater; its state is set up anew by every [`Inflater::inflate`].
    pub fn new() -> Inflater {
        // SAFETY: inflate_state is a C struct of integers, raw pointers and arrays of them, for
        // which all-zero bytes are a valid value; isal_inflate_init sets it up before every use.
        Inflater { state: Box::new(unsafe { std::mem::zeroed() }) }
    }

    /// Inflates one member from the start of `input` into `out`, checking its trailer's crc32
    /// and size. Returns the plain bytes written and the bytes of `input` after the member's
    /// trailer, not read (another member, or anything else: the caller decides).
    pub fn inflate(&mut self, input: &[u8], wrapper: Wrapper, out: &mut [u8]) -> Result<(usize, usize), InflateError> {
        let avail_in = u32::try_from(input.len()).map_err(|_| InflateError::Invalid(0))?;
        let avail_out = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let s = &mut *self.state;
        // SAFETY: s is a valid, exclusively borrowed inflate_state; init writes only into it.
        unsafe { ffi::isal_inflate_init(s) };
        s.crc_flag = match wrapper {
            Wrapper::Gzip => ffi::ISAL_GZIP,
            Wrapper::DeflateAndGzipTrailer => ffi::ISAL_GZIP_NO_HDR_VER,
        };
        // igzip reads next_in (the pointer is *mut in C only) and writes within avail_out.
        s.next_in = input.as_ptr().cast_mut();
        s.avail_in = avail_in;
        s.next_out = out.as_mut_ptr();
        s.avail_out = avail_out;
        // SAFETY: next_in/avail_in and next_out/avail_out describe `input` and `out`, borrowed
        // for this call; both pointers are cleared below, before the borrows end.
        let rc = unsafe { ffi::isal_inflate_stateless(s) };
        let (written, left) = (s.total_out as usize, s.avail_in as usize);
        s.next_in = std::ptr::null_mut();
        s.next_out = std::ptr::null_mut();
        match rc as u32 {
            ffi::ISAL_DECOMP_OK => Ok((written, left)),
            ffi::ISAL_END_INPUT => Err(InflateError::CutShort),
            ffi::ISAL_OUT_OVERFLOW => Err(InflateError::Overflow),
            _ => Err(InflateError::Invalid(rc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn inflate(deflated: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        flate2::read::DeflateDecoder::new(deflated).read_to_end(&mut plain).unwrap();
        plain
    }

    #[test]
    fn blocks_inflate_back_whatever_their_content() {
        let mut c = IgzipLevel1::new();
        let mut x = 0x9e37_79b9_u32;
        let random: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let text: Vec<u8> = (0..1_048_576u32).map(|i| b"etcd key value revision "[(i % 24) as usize]).collect();
        for plain in [Vec::new(), vec![7u8], random.clone(), text.clone(), [text, random].concat()] {
            let mut out = vec![0u8; IgzipLevel1::bound(plain.len())];
            let n = c.compress(&plain, &mut out).unwrap();
            assert!(inflate(&out[..n]) == plain, "{} bytes", plain.len());
        }
    }

    fn gzip(plain: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(plain).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_gzip_member_inflates_with_its_trailer_checked_and_what_follows_left() {
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 ^ (i >> 9) as u8).collect();
        let gz = gzip(&plain);
        let mut i = Inflater::new();
        let mut out = vec![0u8; plain.len()];
        assert_eq!(i.inflate(&gz, Wrapper::Gzip, &mut out), Ok((plain.len(), 0)));
        assert!(out == plain);
        // A second member after the first is left unread, and counted.
        let two = [gz.clone(), gzip(b"more")].concat();
        assert_eq!(i.inflate(&two, Wrapper::Gzip, &mut out), Ok((plain.len(), two.len() - gz.len())));
        // Too little room, a cut member, a wrong crc32, a wrong size, not gzip.
        let mut small = vec![0u8; plain.len() - 1];
        assert_eq!(i.inflate(&gz, Wrapper::Gzip, &mut small), Err(InflateError::Overflow));
        assert_eq!(i.inflate(&gz[..gz.len() / 2], Wrapper::Gzip, &mut out), Err(InflateError::CutShort));
        for at in [gz.len() - 8, gz.len() - 4] {
            let mut bad = gz.clone();
            bad[at] ^= 1;
            assert!(matches!(i.inflate(&bad, Wrapper::Gzip, &mut out), Err(InflateError::Invalid(_))), "at {at}");
        }
        assert!(i.inflate(b"not gzip at all", Wrapper::Gzip, &mut out).is_err());
        // The deflate data and trailer alone (the header skipped: 10 bytes, no flags).
        assert_eq!(i.inflate(&gz[10..], Wrapper::DeflateAndGzipTrailer, &mut out), Ok((plain.len(), 0)));
        assert!(out == plain);
        let mut bad = gz.clone();
        let at = bad.len() - 6;
        bad[at] ^= 0x40;
        assert!(i.inflate(&bad[10..], Wrapper::DeflateAndGzipTrailer, &mut out).is_err());
    }

    #[test]
    fn too_little_room_is_an_error_not_a_cut_block() {
        let mut c = IgzipLevel1::new();
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let mut out = vec![0u8; 1000];
        let err = c.compress(&plain, &mut out).unwrap_err();
        assert!(err.to_string().contains("too little"), "{err}");
        // The same compressor works again afterwards.
        let mut out = vec![0u8; IgzipLevel1::bound(plain.len())];
        let n = c.compress(&plain, &mut out).unwrap();
        assert!(inflate(&out[..n]) == plain);
    }
}
