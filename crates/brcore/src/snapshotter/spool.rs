//! Where a compressed full snapshot waits until its name is known: [`Spool`].
//!
//! An object's key must be chosen before [`Snapstore::write`](crate::Snapstore::write) starts,
//! and a full snapshot's key holds the db's revision, which is only known once the last byte of
//! the db has streamed past (see [`super::dbrev`]). So the compressed bytes wait: in memory up
//! to a budget (the upload's own bound, parts in flight × part size), and beyond it in an
//! unnamed temp file in `--snapstore-temp-directory` that the OS removes when it is closed.
//! Small dbs never touch the disk; large ones cost one local write and read of the compressed
//! size (the reference spools twice: the raw db, then the compressed copy).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};

use crate::store::{ByteStream, StoreError};

/// Size of the chunks handed to the store.
const CHUNK: usize = 1024 * 1024;

/// Compressed bytes waiting for their key: in memory up to a budget, then in a temp file.
#[derive(Debug)]
pub struct Spool {
    budget: usize,
    dir: PathBuf,
    mem: Vec<Bytes>,
    current: BytesMut,
    mem_len: usize,
    file: Option<File>,
    len: u64,
}

impl Spool {
    /// A spool keeping up to `budget` bytes in memory and spilling into an unnamed file in `dir`.
    pub fn new(budget: usize, dir: PathBuf) -> Spool {
        Spool { budget, dir, mem: Vec::new(), current: BytesMut::new(), mem_len: 0, file: None, len: 0 }
    }

    /// Bytes written.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes went to a temp file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    fn seal_current(&mut self) {
        if !self.current.is_empty() {
            self.mem.push(std::mem::take(&mut self.current).freeze());
        }
    }

    fn spill(&mut self) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut f = tempfile::tempfile_in(&self.dir)?;
        self.seal_current();
        for b in self.mem.drain(..) {
            f.write_all(&b)?;
        }
        self.mem_len = 0;
        self.file = Some(f);
        Ok(())
    }

    /// Turns the spool into a stream of chunks for [`Snapstore::write`](crate::Snapstore::write).
    /// `key` names the object in errors.
    pub fn into_stream(mut self, key: String) -> io::Result<ByteStream> {
        match self.file.take() {
            None => {
                self.seal_current();
                let chunks: Vec<Result<Bytes, StoreError>> = self.mem.into_iter().map(Ok).collect();
                Ok(Box::pin(futures::stream::iter(chunks)))
            }
            Some(mut f) => {
                f.flush()?;
                f.seek(SeekFrom::Start(0))?;
                let reader = FileChunks { file: Some(f), key };
                Ok(Box::pin(futures::stream::unfold(reader, |mut r| async move {
                    let file = r.file.take()?;
                    let key = r.key.clone();
                    // Reading a local file blocks; keep it off the async workers.
                    let read = tokio::task::spawn_blocking(move || {
                        let mut file = file;
                        let mut buf = vec![0u8; CHUNK];
                        let mut filled = 0;
                        while filled < buf.len() {
                            match file.read(&mut buf[filled..]) {
                                Ok(0) => break,
                                Ok(n) => filled += n,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) => return (file, Err(e)),
                            }
                        }
                        buf.truncate(filled);
                        (file, Ok(buf))
                    })
                    .await;
                    match read {
                        Ok((file, Ok(buf))) if !buf.is_empty() => {
                            r.file = Some(file);
                            Some((Ok(Bytes::from(buf)), r))
                        }
                        Ok((_, Ok(_))) => None,
                        Ok((_, Err(e))) => Some((Err(spool_error(&key, e)), r)),
                        Err(e) => Some((Err(spool_error(&key, io::Error::other(e.to_string()))), r)),
                    }
                })))
            }
        }
    }
}

fn spool_error(key: &str, e: io::Error) -> StoreError {
    StoreError::Other { key: key.to_string(), retryable: false, source: Box::new(e) }
}

struct FileChunks {
    file: Option<File>,
    key: String,
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.mem_len + buf.len() > self.budget {
            self.spill()?;
        }
        match &mut self.file {
            Some(f) => f.write_all(buf)?,
            None => {
                self.current.extend_from_slice(buf);
                self.mem_len += buf.len();
                if self.current.len() >= CHUNK {
                    self.seal_current();
                }
            }
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    async fn collect(s: Spool) -> Vec<u8> {
        let chunks: Vec<Bytes> = s.into_stream("k".into()).unwrap().try_collect().await.unwrap();
        chunks.concat()
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn small_content_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(10 * CHUNK, dir.path().to_path_buf());
        let d = data(3 * CHUNK + 17);
        for c in d.chunks(1000) {
            s.write_all(c).unwrap();
        }
        assert!(!s.spilled());
        assert_eq!(s.len(), d.len() as u64);
        assert_eq!(collect(s).await, d);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn content_over_the_budget_spills_to_an_unnamed_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(100_000, dir.path().join("sub"));
        let d = data(2 * CHUNK + 5);
        for c in d.chunks(4096) {
            s.write_all(c).unwrap();
        }
        assert!(s.spilled());
        // The file has no name: nothing is left in the directory, even while it is open.
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 0);
        assert_eq!(collect(s).await, d);
    }

    #[tokio::test]
    async fn an_unusable_temp_dir_is_an_error_not_a_panic() {
        let mut s = Spool::new(10, PathBuf::from("/proc/definitely/not/here"));
        assert!(s.write_all(&data(100)).is_err());
    }
}
