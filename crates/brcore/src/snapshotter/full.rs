//! One full snapshot: etcd's snapshot stream → trailer check → compression → store.
//!
//! The stream is read once. As it passes, its db part is hashed (etcd appends the sha256 of the
//! db as the last 32 bytes) and scanned for the db's own revision ([`super::dbrev`]), and the
//! whole stream, trailer included, is compressed into a [`Spool`]. When the stream ends the
//! trailer is checked, the object is named `Full-00000000-<db revision>-<now>` and the spool is
//! uploaded with [`Snapstore::write`], which makes the object visible only once it is complete.
//! An etcd that fails mid-stream, a wrong trailer or a failed upload leaves nothing in the store.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::dbrev::{DbRevision, RevisionScanner};
use super::spool::Spool;
use crate::compress::Encoder;
use crate::error::Error;
use crate::etcd::EtcdSource;
use crate::name::{Compression, Layout, Snapshot, SnapshotKind, SnapshotName};
use crate::store::{Snapstore, WriteOptions};

/// Length of etcd's sha256 trailer after the db.
pub const TRAILER_LEN: usize = 32;

/// How to take and store a full snapshot.
#[derive(Debug, Clone)]
pub struct FullOptions {
    /// Store prefix (`--store-prefix`); the object goes to `<prefix>/v2/`.
    pub prefix: String,
    /// Compression of the object (`--compress-snapshots`, `--compression-policy`).
    pub compression: Compression,
    /// Upload parts (`--max-parallel-chunk-uploads`, `--min-chunk-size`); their product is also
    /// how much compressed snapshot is kept in memory before spilling to `temp_dir`.
    pub write: WriteOptions,
    /// Where a large compressed snapshot waits for its name (`--snapstore-temp-directory`).
    pub temp_dir: PathBuf,
    /// Limit for the whole snapshot, stream and upload (`--etcd-snapshot-timeout`).
    pub timeout: Duration,
    /// Mark the object `.final` (the last full snapshot before a planned shutdown).
    pub is_final: bool,
}

/// Where the revision in a full snapshot's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevisionSource {
    /// Read from the db inside the snapshot: exact.
    Db(DbRevision),
    /// The db could not be read while streaming (see the warning in the log); etcd's revision
    /// asked before the snapshot was used, which may be lower than the db's (the first delta
    /// then repeats some revisions, which restores skip).
    StatusBefore,
}

/// A stored full snapshot.
#[derive(Debug, Clone)]
pub struct FullSnapshot {
    /// The object.
    pub snapshot: Snapshot,
    /// Where its revision came from.
    pub revision_source: RevisionSource,
    /// Bytes etcd streamed (db and trailer).
    pub stream_bytes: u64,
}

/// Checks etcd's trailer and reads the revision while the stream passes.
#[derive(Debug, Default)]
pub struct StreamVerifier {
    held: Vec<u8>,
    hasher: Sha256,
    scanner: RevisionScanner,
    total: u64,
}

impl StreamVerifier {
    /// A verifier at the start of a stream.
    pub fn new() -> StreamVerifier {
        StreamVerifier::default()
    }

    /// Reads the next bytes of the stream.
    pub fn update(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if chunk.len() >= TRAILER_LEN {
            let held = std::mem::take(&mut self.held);
            self.consume(&held);
            let (body, tail) = chunk.split_at(chunk.len() - TRAILER_LEN);
            self.consume(body);
            self.held.extend_from_slice(tail);
        } else {
            self.held.extend_from_slice(chunk);
            if self.held.len() > TRAILER_LEN {
                let excess = self.held.len() - TRAILER_LEN;
                let body: Vec<u8> = self.held.drain(..excess).collect();
                self.consume(&body);
            }
        }
    }

    fn consume(&mut self, db: &[u8]) {
        self.hasher.update(db);
        self.scanner.feed(db);
    }

    /// Bytes seen.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Checks the trailer. Returns the db's revision as read while streaming, or the reason it
    /// could not be read (the trailer being right, the snapshot is still good).
    pub fn finish(self) -> Result<Result<DbRevision, String>, String> {
        if self.held.len() < TRAILER_LEN {
            return Err(format!("{} bytes is too short for a snapshot with a sha256 trailer", self.total));
        }
        let db_len = self.total - TRAILER_LEN as u64;
        if !db_len.is_multiple_of(512) {
            return Err(format!(
                "{db_len} bytes before the trailer is not a whole number of pages: the sha256 trailer is missing"
            ));
        }
        let digest = self.hasher.finalize();
        if digest.as_slice() != self.held.as_slice() {
            return Err("sha256 of the db does not match etcd's trailer".to_string());
        }
        Ok(self.scanner.finish().map_err(|e| e.to_string()))
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Takes a full snapshot of `source` and stores it in `store` (see the module docs).
pub async fn take_full_snapshot(
    source: &dyn EtcdSource,
    store: &dyn Snapstore,
    opts: &FullOptions,
) -> Result<FullSnapshot, Error> {
    match tokio::time::timeout(opts.timeout, take(source, store, opts)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Etcd {
            retryable: true,
            message: format!("full snapshot did not finish within --etcd-snapshot-timeout ({:?})", opts.timeout),
        }),
    }
}

async fn take(source: &dyn EtcdSource, store: &dyn Snapstore, opts: &FullOptions) -> Result<FullSnapshot, Error> {
    let started = std::time::Instant::now();
    let before = source.status().await?.revision;
    let mut stream = source.snapshot().await?;

    // Hashing, scanning and compressing are CPU work: a blocking thread does them while this
    // task keeps reading the stream. The channel's bound keeps memory to a few chunks.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let budget = opts.write.part_size.saturating_mul(opts.write.max_parallel_parts.max(1));
    let temp_dir = opts.temp_dir.clone();
    let compression = opts.compression;
    let worker = tokio::task::spawn_blocking(move || -> Result<(Spool, StreamVerifier), Error> {
        let mut verifier = StreamVerifier::new();
        let mut enc = Encoder::new(compression, Spool::new(budget, temp_dir.clone()));
        while let Some(chunk) = rx.blocking_recv() {
            verifier.update(&chunk);
            std::io::Write::write_all(&mut enc, &chunk).map_err(|e| Error::io(&temp_dir, e))?;
        }
        let spool = enc.finish().map_err(|e| Error::io(&temp_dir, e))?;
        Ok((spool, verifier))
    });
    let mut stream_error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break; // the worker failed; its error is reported below
                }
            }
            Err(e) => {
                stream_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let worker = worker.await.map_err(|e| Error::internal(format!("snapshot worker: {e}")))?;
    if let Some(e) = stream_error {
        return Err(e.into());
    }
    let (spool, verifier) = worker?;
    let stream_bytes = verifier.total();
    let (revision, revision_source) = match verifier.finish() {
        Err(why) => return Err(Error::corrupt(format!("etcd snapshot stream from {}", source.endpoint()), why)),
        Ok(Ok(db)) => (db.revision, RevisionSource::Db(db)),
        Ok(Err(why)) => {
            warn!(
                revision = before,
                %why,
                "could not read the revision from the snapshot's db; naming it after etcd's revision before the snapshot"
            );
            (before.max(0) as u64, RevisionSource::StatusBefore)
        }
    };
    let name = SnapshotName {
        kind: SnapshotKind::Full,
        start_revision: 0,
        last_revision: revision,
        created_on: unix_now(),
        compression: opts.compression,
        is_final: opts.is_final,
    };
    let key = name.key_v2(&opts.prefix);
    let spilled = spool.spilled();
    let data = spool.into_stream(key.clone()).map_err(|e| Error::io(&opts.temp_dir, e))?;
    let size = store.write(&key, data, &opts.write).await?;
    info!(
        object = %key,
        revision,
        revision_before = before,
        stream_bytes,
        stored_bytes = size,
        spilled_to_disk = spilled,
        seconds = started.elapsed().as_secs_f64(),
        "full snapshot stored"
    );
    Ok(FullSnapshot {
        snapshot: Snapshot {
            name,
            key,
            prefix: opts.prefix.trim_end_matches('/').to_string(),
            size,
            layout: Layout::V2,
            is_chunk: false,
        },
        revision_source,
        stream_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailer_is_checked_whatever_the_chunking() {
        let db = vec![5u8; 4096];
        let mut stream = db.clone();
        stream.extend_from_slice(&Sha256::digest(&db));
        for size in [1, 31, 32, 33, 1000, 5000] {
            let mut v = StreamVerifier::new();
            for c in stream.chunks(size) {
                v.update(c);
            }
            // The hash is right; the db is not bbolt, so the revision is unreadable.
            let r = v.finish().unwrap();
            assert!(r.is_err(), "chunk {size}");
        }
    }

    #[test]
    fn a_wrong_or_missing_trailer_is_refused() {
        let db = vec![5u8; 4096];
        let mut stream = db.clone();
        stream.extend_from_slice(&[0u8; 32]);
        let mut v = StreamVerifier::new();
        v.update(&stream);
        assert!(v.finish().unwrap_err().contains("does not match"));
        let mut v = StreamVerifier::new();
        v.update(&db);
        assert!(v.finish().unwrap_err().contains("trailer is missing"));
        let mut v = StreamVerifier::new();
        v.update(&[1, 2, 3]);
        assert!(v.finish().unwrap_err().contains("too short"));
    }
}
