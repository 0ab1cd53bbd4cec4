//! [`ThreadedFile`]: a `Write + Seek` file whose writes are done by a thread of their own, so
//! the kernel's work on the data runs beside the code that produces it (the db writer's B+tree
//! building) instead of after it.
//!
//! [`ThreadedFile::direct`] writes with `O_DIRECT` where the filesystem takes it: the written
//! pages go from our buffers to the device without being copied into the page cache, which for
//! a restore's db (written once, read by etcd later) was the largest single cost of a large
//! restore. Direct writes need the file offset, the length and the buffer's address aligned
//! ([`ALIGN`]); the buffers are allocated aligned and handed over only when full, so every
//! chunk of a stream written from an aligned start is aligned, and only the pieces after a seek
//! to an unaligned position or the last one (a bbolt file of 4 KiB pages never has such) go
//! through the page cache. A filesystem that refuses `O_DIRECT` (`EINVAL`) gets every write
//! through the page cache; a debug log line says which way the file was written. The caller
//! still fsyncs at the end: `O_DIRECT` alone does not flush the device's cache or the file's
//! size.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rustix::fs::OFlags;

/// Bytes gathered before they are handed to the I/O thread.
const CHUNK: usize = 1 << 20;
/// Chunks handed over and not yet written, at most.
const IN_FLIGHT: usize = 4;
/// Alignment of `O_DIRECT` writes (offset, length and memory): 4 KiB covers every block device
/// whose logical block is 512 B or 4 KiB.
pub const ALIGN: usize = 4096;

/// A buffer of [`CHUNK`] bytes whose start is [`ALIGN`]-aligned in memory (safe code: a `Vec`
/// of one more alignment unit, used from its first aligned byte).
struct AlignedBuf {
    raw: Vec<u8>,
    /// Index of the first aligned byte of `raw`.
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new() -> AlignedBuf {
        let raw = vec![0u8; CHUNK + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, start, len: 0 }
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn room(&self) -> usize {
        CHUNK - self.len
    }

    /// Appends as much of `data` as fits; returns how much that was.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        let at = self.start + self.len;
        self.raw[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }
}

/// How the I/O thread wrote: bytes written directly, bytes through the page cache.
#[derive(Debug, Default, Clone, Copy)]
struct Written {
    direct: u64,
    buffered: u64,
}

/// A file written at positions by an I/O thread (see the module docs). Errors of the thread
/// surface at a later write, at a seek, or at [`ThreadedFile::finish`].
pub struct ThreadedFile {
    tx: Option<mpsc::SyncSender<(u64, AlignedBuf)>>,
    spare: mpsc::Receiver<AlignedBuf>,
    thread: Option<JoinHandle<io::Result<File>>>,
    buf: AlignedBuf,
    /// The file position of `buf[0]`.
    pos: u64,
}

impl std::fmt::Debug for ThreadedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadedFile").field("pos", &self.pos).field("buffered", &self.buf.len).finish()
    }
}

impl ThreadedFile {
    /// Starts the I/O thread for `file`, writing from its start through the page cache.
    pub fn new(file: File) -> ThreadedFile {
        ThreadedFile::start(file, false)
    }

    /// [`ThreadedFile::new`], writing with `O_DIRECT` where the filesystem takes it (see the
    /// module docs): for a file that is written once and not read back soon.
    pub fn direct(file: File) -> ThreadedFile {
        ThreadedFile::start(file, true)
    }

    fn start(file: File, direct: bool) -> ThreadedFile {
        let (tx, rx) = mpsc::sync_channel::<(u64, AlignedBuf)>(IN_FLIGHT);
        let (spare_tx, spare) = mpsc::sync_channel::<AlignedBuf>(IN_FLIGHT + 1);
        let thread = std::thread::Builder::new()
            .name("db-writer-io".into())
            .spawn(move || -> io::Result<File> {
                let mut direct = direct && set_direct(&file, true).is_ok();
                let mut written = Written::default();
                for (at, mut chunk) in rx {
                    write_chunk(&file, &mut direct, at, chunk.bytes(), &mut written, |b, at| file.write_all_at(b, at))?;
                    chunk.len = 0;
                    let _ = spare_tx.try_send(chunk);
                }
                if direct {
                    set_direct(&file, false)?;
                }
                tracing::debug!(
                    direct_bytes = written.direct,
                    page_cache_bytes = written.buffered,
                    "db file written: {} bytes with O_DIRECT, {} through the page cache",
                    written.direct,
                    written.buffered
                );
                Ok(file)
            })
            .ok();
        ThreadedFile { tx: Some(tx), spare, thread, buf: AlignedBuf::new(), pos: 0 }
    }

    fn hand_over(&mut self) -> io::Result<()> {
        if self.buf.len == 0 {
            return Ok(());
        }
        let next = self.spare.try_recv().unwrap_or_else(|_| AlignedBuf::new());
        let chunk = std::mem::replace(&mut self.buf, next);
        let len = chunk.len as u64;
        let sent = match &self.tx {
            Some(tx) => tx.send((self.pos, chunk)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.thread_error());
        }
        self.pos += len;
        Ok(())
    }

    /// The I/O thread's error, once it has stopped.
    fn thread_error(&mut self) -> io::Error {
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the db's I/O thread panicked"),
            Some(Ok(Ok(_))) | None => io::Error::other("the db's I/O thread stopped"),
        }
    }

    /// Writes what is left, waits for the I/O thread and returns the file (not synced).
    pub fn finish(mut self) -> io::Result<File> {
        self.hand_over()?;
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the db's I/O thread panicked")),
            None => Err(io::Error::other("the db's I/O thread could not be started")),
        }
    }
}

/// Turns `O_DIRECT` on or off for `file`. `EINVAL` when the filesystem does not support it.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    let flags = if on { flags | OFlags::DIRECT } else { flags - OFlags::DIRECT };
    rustix::fs::fcntl_setfl(file, flags)?;
    Ok(())
}

/// Writes `bytes` at `at`: directly when `direct` is on and the piece is aligned, else through
/// the page cache (`O_DIRECT` turned off for it). A direct write the kernel refuses with
/// `EINVAL` is done again through the page cache, and `direct` stays off for the rest.
/// `write_direct` is the direct write (`write_all_at`; the tests make it refuse).
fn write_chunk(
    file: &File,
    direct: &mut bool,
    at: u64,
    bytes: &[u8],
    written: &mut Written,
    write_direct: impl FnOnce(&[u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let aligned =
        at.is_multiple_of(ALIGN as u64) && bytes.len().is_multiple_of(ALIGN) && bytes.as_ptr().align_offset(ALIGN) == 0;
    if *direct && aligned {
        match write_direct(bytes, at) {
            Ok(()) => {
                written.direct += bytes.len() as u64;
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                tracing::debug!(error = %e, "O_DIRECT write refused: the db goes through the page cache");
                set_direct(file, false)?;
                *direct = false;
            }
            Err(e) => return Err(e),
        }
    }
    if *direct {
        // An unaligned piece: through the page cache, then direct again.
        set_direct(file, false)?;
        file.write_all_at(bytes, at)?;
        set_direct(file, true)?;
    } else {
        file.write_all_at(bytes, at)?;
    }
    written.buffered += bytes.len() as u64;
    Ok(())
}

impl Write for ThreadedFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.thread.is_none() {
            return Err(io::Error::other("the db's I/O thread could not be started"));
        }
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.buf.fill(rest);
            rest = &rest[n..];
            // Handed over only when full: whole chunks keep direct writes aligned.
            if self.buf.room() == 0 {
                self.hand_over()?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.hand_over()
    }
}

impl Seek for ThreadedFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let here = self.pos + self.buf.len as u64;
        let target = match to {
            SeekFrom::Start(n) => n,
            SeekFrom::Current(d) => here.checked_add_signed(d).ok_or_else(|| io::Error::other("seek before 0"))?,
            SeekFrom::End(_) => return Err(io::Error::other("ThreadedFile cannot seek from the end")),
        };
        if target != here {
            self.hand_over()?;
            self.pos = target;
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a stream with seeks to aligned and unaligned positions, pieces of every size
    /// and more than a chunk at once, and returns what the file holds and what it should.
    fn write_mixed(f: &mut ThreadedFile) -> Vec<u8> {
        let big: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        f.write_all(&[9; 4096]).unwrap();
        f.write_all(&big).unwrap();
        assert_eq!(f.stream_position().unwrap(), 4096 + big.len() as u64);
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&[1; 100]).unwrap();
        f.seek(SeekFrom::Start(4096 + big.len() as u64)).unwrap();
        f.write_all(b"end").unwrap();
        // A second aligned run after an unaligned one.
        f.seek(SeekFrom::Start(8 * CHUNK as u64)).unwrap();
        for piece in big.chunks(7777) {
            f.write_all(piece).unwrap();
        }
        let mut want = vec![9u8; 4096];
        want[..100].fill(1);
        want.extend_from_slice(&big);
        want.extend_from_slice(b"end");
        want.resize(8 * CHUNK, 0);
        want.extend_from_slice(&big);
        want
    }

    #[test]
    fn writes_land_where_they_were_written_whatever_the_seeks() {
        for direct in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let file = File::create(&path).unwrap();
            let mut f = if direct { ThreadedFile::direct(file) } else { ThreadedFile::new(file) };
            let want = write_mixed(&mut f);
            let file = f.finish().unwrap();
            // O_DIRECT is off again on the returned file: the caller's own writes are plain.
            assert!(!rustix::fs::fcntl_getfl(&file).unwrap().contains(OFlags::DIRECT));
            let got = std::fs::read(&path).unwrap();
            assert!(got == want, "direct = {direct}");
        }
    }

    #[test]
    fn an_unaligned_piece_on_a_direct_file_goes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let Ok(()) = set_direct(&file, true) else {
            // The filesystem refuses O_DIRECT: the fallback is all there is to test, below.
            return;
        };
        let mut direct = true;
        let mut written = Written::default();
        let buf = AlignedBuf { len: ALIGN, ..AlignedBuf::new() };
        let write = |b: &[u8], at: u64| file.write_all_at(b, at);
        write_chunk(&file, &mut direct, 0, buf.bytes(), &mut written, write).unwrap();
        write_chunk(&file, &mut direct, ALIGN as u64, b"tail", &mut written, write).unwrap();
        assert!(direct);
        assert_eq!((written.direct, written.buffered), (ALIGN as u64, 4));
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), ALIGN + 4);
        assert_eq!(&got[ALIGN..], b"tail");
    }

    #[test]
    fn a_refused_direct_write_is_done_through_the_page_cache_and_direct_stays_off() {
        // What a filesystem without O_DIRECT support answers at the write: EINVAL.
        let refuse = |_: &[u8], _: u64| Err(io::Error::from_raw_os_error(rustix::io::Errno::INVAL.raw_os_error()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let mut direct = set_direct(&file, true).is_ok();
        let mut written = Written::default();
        let buf = AlignedBuf { len: ALIGN, ..AlignedBuf::new() };
        write_chunk(&file, &mut direct, 0, buf.bytes(), &mut written, refuse).unwrap();
        assert!(!direct);
        assert!(!rustix::fs::fcntl_getfl(&file).unwrap().contains(OFlags::DIRECT));
        let mut second = AlignedBuf::new();
        second.fill(&[5u8; ALIGN]);
        let never = |_: &[u8], _: u64| -> io::Result<()> { panic!("direct write tried after the refusal") };
        write_chunk(&file, &mut direct, ALIGN as u64, second.bytes(), &mut written, never).unwrap();
        assert_eq!((written.direct, written.buffered), (0, 2 * ALIGN as u64));
        let mut want = vec![0u8; ALIGN];
        want.extend_from_slice(&[5u8; ALIGN]);
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
