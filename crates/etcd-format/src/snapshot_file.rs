//! The sha256 trailer of an etcd snapshot file (`etcdctl snapshot save`).
//!
//! etcd's snapshot stream is the bbolt file (`meta.pgid * pageSize` bytes) followed by the
//! SHA-256 of those bytes. A bbolt file is a multiple of its page size (at least 512), so a
//! length with `len % 512 == 32` has a trailer and any other length has none (a db copied
//! straight from a data dir). This is etcd's own rule (`hasChecksum`). [`Sha256Trailer`] checks
//! the trailer while the bytes stream past, so a restore (and a snapshot being stored) reads the
//! snapshot only once; [`TrailerWriter`] appends it to a db being written out as a snapshot.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The length of the trailer: one SHA-256 digest.
pub const TRAILER_LEN: usize = 32;

/// Whether a snapshot of `len` bytes carries a sha256 trailer (etcd's `hasChecksum`).
pub fn has_trailer(len: u64) -> bool {
    len % 512 == TRAILER_LEN as u64
}

/// The outcome of a trailer check that did not find a mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailerStatus {
    /// The trailer is present and equals the sha256 of the bytes before it.
    Verified,
    /// The length says there is no trailer; the whole input is the db. etcd's restore refuses
    /// this unless told `--skip-hash-check`.
    NoTrailer,
}

/// Errors of the trailer check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read snapshot {path}: {source}")]
    Io {
        /// The snapshot file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The trailer does not match the data: the snapshot is corrupt or truncated.
    #[error("snapshot {what}: sha256 mismatch: the trailer says {expected}, the {len} data bytes hash to {actual}")]
    Mismatch {
        /// The file or stream checked.
        what: String,
        /// The number of bytes hashed (the db without its trailer).
        len: u64,
        /// The digest stored in the trailer, hex.
        expected: String,
        /// The digest of the data, hex.
        actual: String,
    },
}

/// Checks the trailer of a stream fed in chunks of any size.
///
/// It hashes everything except the last 32 bytes seen so far, holding those back, so at the
/// end it can compare them with the digest without knowing the length in advance.
#[derive(Clone)]
pub struct Sha256Trailer {
    hasher: Sha256,
    tail: [u8; TRAILER_LEN],
    tail_len: usize,
    total: u64,
}

impl std::fmt::Debug for Sha256Trailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sha256Trailer").field("total", &self.total).finish_non_exhaustive()
    }
}

impl Default for Sha256Trailer {
    fn default() -> Self {
        Sha256Trailer::new()
    }
}

impl Sha256Trailer {
    /// A checker that has seen no bytes.
    pub fn new() -> Sha256Trailer {
        Sha256Trailer { hasher: Sha256::new(), tail: [0; TRAILER_LEN], tail_len: 0, total: 0 }
    }

    /// Feeds the next chunk of the stream.
    pub fn update(&mut self, chunk: &[u8]) {
        self.update_with(chunk, |_| {});
    }

    /// Feeds the next chunk of the stream and hands `on_data`, in stream order, every byte that
    /// is now known to come before the last 32 (the db, if the stream has a trailer): a reader
    /// of the db itself (the snapshotter's revision scanner) sees the stream once, without the
    /// trailer.
    pub fn update_with(&mut self, chunk: &[u8], mut on_data: impl FnMut(&[u8])) {
        self.total += chunk.len() as u64;
        if chunk.len() >= TRAILER_LEN {
            // Everything held back so far, and all of this chunk but its last 32 bytes, is data.
            let held = &self.tail[..self.tail_len];
            self.hasher.update(held);
            on_data(held);
            let (data, tail) = chunk.split_at(chunk.len() - TRAILER_LEN);
            self.hasher.update(data);
            on_data(data);
            self.tail.copy_from_slice(tail);
            self.tail_len = TRAILER_LEN;
            return;
        }
        // A short chunk: keep the newest 32 bytes of (held back ++ chunk), hash what falls out.
        let overflow = (self.tail_len + chunk.len()).saturating_sub(TRAILER_LEN);
        if overflow > 0 {
            self.hasher.update(&self.tail[..overflow]);
            on_data(&self.tail[..overflow]);
            self.tail.copy_within(overflow..self.tail_len, 0);
            self.tail_len -= overflow;
        }
        self.tail[self.tail_len..self.tail_len + chunk.len()].copy_from_slice(chunk);
        self.tail_len += chunk.len();
    }

    /// How many bytes were fed so far.
    pub fn total_len(&self) -> u64 {
        self.total
    }

    /// The length of the db part: the total without the trailer if [`has_trailer`] says there
    /// is one, else the total.
    pub fn data_len(&self) -> u64 {
        if has_trailer(self.total) { self.total - TRAILER_LEN as u64 } else { self.total }
    }

    /// Ends the stream: compares the last 32 bytes with the digest of everything before them
    /// if the total length says there is a trailer. `what` names the stream in the error.
    pub fn finish(self, what: &str) -> Result<TrailerStatus, Error> {
        if !has_trailer(self.total) {
            return Ok(TrailerStatus::NoTrailer);
        }
        let actual = self.hasher.finalize();
        if actual.as_slice() == &self.tail[..self.tail_len] {
            Ok(TrailerStatus::Verified)
        } else {
            Err(Error::Mismatch {
                what: what.to_string(),
                len: self.total - TRAILER_LEN as u64,
                expected: crate::mvcc::hex(&self.tail[..self.tail_len]),
                actual: crate::mvcc::hex(&actual),
            })
        }
    }
}

/// Writes a db as etcd's snapshot stream: every byte passes through to `inner` and is hashed;
/// [`finish`](TrailerWriter::finish) appends the sha256 of them, the trailer [`Sha256Trailer`]
/// checks.
#[derive(Debug)]
pub struct TrailerWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> TrailerWriter<W> {
    /// A writer that has written nothing.
    pub fn new(inner: W) -> TrailerWriter<W> {
        TrailerWriter { inner, hasher: Sha256::new() }
    }

    /// Appends the trailer and returns the inner writer (not flushed).
    pub fn finish(mut self) -> io::Result<W> {
        let digest = self.hasher.finalize();
        self.inner.write_all(&digest)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for TrailerWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Detects and verifies the trailer of a snapshot file, reading it once in 1 MiB chunks.
///
/// A file whose length shows no trailer is not read at all.
pub fn verify_snapshot_file(path: &Path) -> Result<TrailerStatus, Error> {
    verify_snapshot_file_as(path, &path.display().to_string())
}

/// [`verify_snapshot_file`], with a mismatch naming the file `what` (for example the object a
/// temp file was fetched from).
pub fn verify_snapshot_file_as(path: &Path, what: &str) -> Result<TrailerStatus, Error> {
    let io_err = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if !has_trailer(len) {
        return Ok(TrailerStatus::NoTrailer);
    }
    let mut checker = Sha256Trailer::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        checker.update(&buf[..n]);
    }
    checker.finish(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_trailer(db: &[u8]) -> Vec<u8> {
        let mut out = db.to_vec();
        out.extend_from_slice(&Sha256::digest(db));
        out
    }

    fn feed(bytes: &[u8], chunk: usize) -> Sha256Trailer {
        let mut c = Sha256Trailer::new();
        for part in bytes.chunks(chunk.max(1)) {
            c.update(part);
        }
        c
    }

    #[test]
    fn trailer_is_detected_by_length_like_etcd() {
        assert!(has_trailer(49184), "12 pages of 4096 plus 32");
        assert!(!has_trailer(49152));
        assert!(has_trailer(32));
        assert!(!has_trailer(0));
    }

    #[test]
    fn verifies_for_every_chunking() {
        let db: Vec<u8> = (0..4096u32 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let snap = with_trailer(&db);
        for chunk in [1, 3, 31, 32, 33, 64, 4095, 4096, 100_000] {
            let c = feed(&snap, chunk);
            assert_eq!(c.total_len(), snap.len() as u64);
            assert_eq!(c.data_len(), db.len() as u64);
            assert_eq!(c.finish("t").unwrap(), TrailerStatus::Verified, "chunk {chunk}");
        }
        // Mixed chunk sizes, short then long.
        let mut c = Sha256Trailer::new();
        let (a, rest) = snap.split_at(10);
        let (b, rest) = rest.split_at(5000);
        let (d, e) = rest.split_at(rest.len() - 7);
        for part in [a, b, d, e] {
            c.update(part);
        }
        assert_eq!(c.finish("t").unwrap(), TrailerStatus::Verified);
    }

    #[test]
    fn corrupted_byte_or_trailer_is_a_mismatch() {
        let db = vec![0x5au8; 4096 * 2];
        let mut snap = with_trailer(&db);
        snap[100] ^= 1;
        let err = feed(&snap, 777).finish("s").unwrap_err();
        assert!(matches!(err, Error::Mismatch { len: 8192, .. }), "{err}");
        let mut snap = with_trailer(&db);
        let last = snap.len() - 1;
        snap[last] ^= 0x80;
        assert!(feed(&snap, 4096).finish("s").is_err());
    }

    #[test]
    fn data_is_handed_on_without_the_trailer_whatever_the_chunking() {
        let db: Vec<u8> = (0..4096u32 * 2).map(|i| (i * 13 % 251) as u8).collect();
        let snap = with_trailer(&db);
        for chunk in [1, 5, 32, 33, 4096, 100_000] {
            let mut c = Sha256Trailer::new();
            let mut seen = Vec::new();
            for part in snap.chunks(chunk) {
                c.update_with(part, |d| seen.extend_from_slice(d));
            }
            assert_eq!(seen, db, "chunk {chunk}");
            assert_eq!(c.finish("t").unwrap(), TrailerStatus::Verified);
        }
    }

    #[test]
    fn the_writer_appends_the_trailer_the_checker_verifies() {
        let db: Vec<u8> = (0..4096u32 * 3).map(|i| (i % 241) as u8).collect();
        let mut w = TrailerWriter::new(Vec::new());
        for part in db.chunks(1000) {
            w.write_all(part).unwrap();
        }
        let out = w.finish().unwrap();
        assert_eq!(out, with_trailer(&db));
        assert_eq!(feed(&out, 4096).finish("w").unwrap(), TrailerStatus::Verified);
    }

    #[test]
    fn a_plain_db_has_no_trailer() {
        let db = vec![1u8; 4096 * 2];
        assert_eq!(feed(&db, 1000).finish("d").unwrap(), TrailerStatus::NoTrailer);
        assert_eq!(feed(&db, 1000).data_len(), 8192);
    }

    #[test]
    fn files_are_verified_streaming() {
        let dir = tempfile::tempdir().unwrap();
        let db: Vec<u8> = (0..(4096 * 300)).map(|i| (i % 253) as u8).collect();
        let good = dir.path().join("good.db");
        std::fs::write(&good, with_trailer(&db)).unwrap();
        assert_eq!(verify_snapshot_file(&good).unwrap(), TrailerStatus::Verified);
        let plain = dir.path().join("plain.db");
        std::fs::write(&plain, &db).unwrap();
        assert_eq!(verify_snapshot_file(&plain).unwrap(), TrailerStatus::NoTrailer);
        let mut bad = with_trailer(&db);
        bad[4096 * 200] ^= 0xff;
        let badp = dir.path().join("bad.db");
        std::fs::write(&badp, bad).unwrap();
        assert!(matches!(verify_snapshot_file(&badp), Err(Error::Mismatch { .. })));
        assert!(matches!(verify_snapshot_file(&dir.path().join("missing")), Err(Error::Io { .. })));
    }
}
