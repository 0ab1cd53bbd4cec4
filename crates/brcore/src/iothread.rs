//! [`ThreadedFile`]: a `Write + Seek` file whose writes are done by a thread of their own, so
//! the kernel's copy of the data into the page cache runs beside the code that produces it
//! (the db writer's B+tree building) instead of after it.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Bytes gathered before they are handed to the I/O thread.
const CHUNK: usize = 1 << 20;
/// Chunks handed over and not yet written, at most.
const IN_FLIGHT: usize = 4;

/// A file written at positions by an I/O thread (see the module docs). Errors of the thread
/// surface at a later write, at a seek, or at [`ThreadedFile::finish`].
#[derive(Debug)]
pub struct ThreadedFile {
    tx: Option<mpsc::SyncSender<(u64, Vec<u8>)>>,
    spare: mpsc::Receiver<Vec<u8>>,
    thread: Option<JoinHandle<io::Result<File>>>,
    buf: Vec<u8>,
    /// The file position of `buf[0]`.
    pos: u64,
}

impl ThreadedFile {
    /// Starts the I/O thread for `file`, writing from its start.
    pub fn new(file: File) -> ThreadedFile {
        let (tx, rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(IN_FLIGHT);
        let (spare_tx, spare) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 1);
        let thread = std::thread::Builder::new()
            .name("db-writer-io".into())
            .spawn(move || -> io::Result<File> {
                for (at, mut chunk) in rx {
                    file.write_all_at(&chunk, at)?;
                    chunk.clear();
                    let _ = spare_tx.try_send(chunk);
                }
                Ok(file)
            })
            .ok();
        ThreadedFile { tx: Some(tx), spare, thread, buf: Vec::with_capacity(CHUNK), pos: 0 }
    }

    fn hand_over(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let chunk = std::mem::replace(&mut self.buf, next);
        let len = chunk.len() as u64;
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

impl Write for ThreadedFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.thread.is_none() {
            return Err(io::Error::other("the db's I/O thread could not be started"));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.hand_over()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.hand_over()
    }
}

impl Seek for ThreadedFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let here = self.pos + self.buf.len() as u64;
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

    #[test]
    fn writes_land_where_they_were_written_whatever_the_seeks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = ThreadedFile::new(File::create(&path).unwrap());
        let big: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        f.write_all(&[9; 4096]).unwrap();
        f.write_all(&big).unwrap();
        assert_eq!(f.stream_position().unwrap(), 4096 + big.len() as u64);
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&[1; 100]).unwrap();
        f.seek(SeekFrom::Start(4096 + big.len() as u64)).unwrap();
        f.write_all(b"end").unwrap();
        f.finish().unwrap();
        let got = std::fs::read(&path).unwrap();
        let mut want = vec![9u8; 4096];
        want[..100].fill(1);
        want.extend_from_slice(&big);
        want.extend_from_slice(b"end");
        assert!(got == want);
    }
}
