//! One full snapshot: etcd's snapshot stream → trailer check → compression → store, streamed.
//!
//! The object's name holds the db's own revision, which is only known once the last byte of the
//! db has streamed past ([`super::dbrev`]). So the stream is uploaded while it arrives under a
//! staging key, `<prefix>/.etcdbr-staging/Full-<unix>-<nonce>.part` (outside `v2/`, so neither
//! our listings nor the reference's see it), and renamed to `Full-00000000-<db revision>-<time
//! the stream began>` once the stream has ended and etcd's sha256 trailer matched ([`Snapstore::rename`]: a rename
//! on the Local store, a server-side copy on object stores). Nothing is spooled to disk, and
//! memory is bounded by the upload's parts in flight plus a few compression blocks.
//!
//! Three things happen to every chunk, on different threads: the verifier hashes it and scans
//! it for the revision; the compressor cuts the stream into [`BLOCK_SIZE`] blocks that gzip and
//! zlib compress on every core ([`crate::compress::blocks`]); the store uploads what comes out.
//! An etcd that fails mid-stream, a wrong trailer or a failed upload leaves no object under a
//! snapshot name; the staging object is deleted, and one left by a killed process is deleted by
//! [`remove_stale_staging`] at the next start.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use etcd_format::snapshot_file::{Sha256Trailer, TRAILER_LEN, TrailerStatus};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::dbrev::{DbRevision, RevisionScanner};
use crate::bridge::{ChannelWriter, receiver_stream};
use crate::compress::Encoder;
use crate::compress::blocks::{self, BLOCK_SIZE, BlockFormat};
use crate::error::Error;
use crate::etcd::EtcdSource;
use crate::name::{Compression, Snapshot, SnapshotKind, SnapshotName, prefix_dir};
use crate::store::{ByteStream, Snapstore, StoreError, WriteOptions};

/// The directory under the store prefix where full snapshots are uploaded before their rename.
pub const STAGING_DIR: &str = ".etcdbr-staging";

/// How to take and store a full snapshot: [`FullOptions::new`], then set what differs from its
/// defaults. Fields may be added in any release (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FullOptions {
    /// Store prefix (`--store-prefix`); the object goes to `<prefix>/v2/`.
    pub prefix: String,
    /// Compression of the object (`--compress-snapshots`, `--compression-policy`).
    pub compression: Compression,
    /// Deflate level for gzip and zlib, 1 (fastest) to 9 (smallest); `None`: the policy's
    /// default ([`blocks::default_level`]).
    pub compression_level: Option<u32>,
    /// Upload parts (`--max-parallel-chunk-uploads`, `--min-chunk-size`); their product bounds
    /// the memory the upload holds.
    pub write: WriteOptions,
    /// Limit for the whole snapshot, stream and upload (`--etcd-snapshot-timeout`).
    pub timeout: Duration,
    /// Mark the object `.final` (the last full snapshot before a planned shutdown).
    pub is_final: bool,
}

impl FullOptions {
    /// Options for `prefix` with the reference's defaults: gzip, 5 parts of 5 MiB, 15 minutes.
    pub fn new(prefix: impl Into<String>) -> FullOptions {
        FullOptions {
            prefix: prefix.into(),
            compression: Compression::Gzip,
            compression_level: None,
            write: WriteOptions::default(),
            timeout: Duration::from_secs(15 * 60),
            is_final: false,
        }
    }
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

/// Checks etcd's trailer and reads the revision while the stream passes: etcd-format's
/// [`Sha256Trailer`] hands the db's bytes (the stream without its trailer) to the revision
/// scanner.
#[derive(Debug, Default)]
pub struct StreamVerifier {
    trailer: Sha256Trailer,
    scanner: RevisionScanner,
}

impl StreamVerifier {
    /// A verifier at the start of a stream.
    pub fn new() -> StreamVerifier {
        StreamVerifier::default()
    }

    /// Reads the next bytes of the stream.
    pub fn update(&mut self, chunk: &[u8]) {
        let scanner = &mut self.scanner;
        self.trailer.update_with(chunk, |db| scanner.feed(db));
    }

    /// Bytes seen.
    pub fn total(&self) -> u64 {
        self.trailer.total_len()
    }

    /// Checks the trailer. Returns the db's revision as read while streaming, or the reason it
    /// could not be read (the trailer being right, the snapshot is still good).
    pub fn finish(self) -> Result<Result<DbRevision, String>, String> {
        let total = self.trailer.total_len();
        if total < TRAILER_LEN as u64 {
            return Err(format!("{total} bytes is too short for a snapshot with a sha256 trailer"));
        }
        match self.trailer.finish("etcd's snapshot stream") {
            Ok(TrailerStatus::Verified) => Ok(self.scanner.finish().map_err(|e| e.to_string())),
            Ok(TrailerStatus::NoTrailer) => Err(format!(
                "{} bytes before the trailer is not a whole number of pages: the sha256 trailer is missing",
                total - TRAILER_LEN as u64
            )),
            Err(_) => Err("sha256 of the db does not match etcd's trailer".to_string()),
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The staging key of a full snapshot begun at `created_on` (unix seconds).
pub fn staging_key(prefix: &str, created_on: i64) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = format!("Full-{created_on}-{:x}{nanos:08x}.part", std::process::id());
    format!("{}{name}", prefix_dir(prefix, STAGING_DIR))
}

/// When the staging object `key` was begun (unix seconds), if it is one.
pub fn parse_staging_key(key: &str) -> Option<i64> {
    let (dir, name) = key.rsplit_once('/')?;
    if dir != STAGING_DIR && !dir.ends_with(&format!("/{STAGING_DIR}")) {
        return None;
    }
    let rest = name.strip_prefix("Full-")?.strip_suffix(".part")?;
    let (created, nonce) = rest.split_once('-')?;
    if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    created.parse().ok()
}

/// Deletes the staging objects under `prefix` begun more than `older_than` before `now`: the
/// remains of a snapshotter that was killed mid-upload. Younger ones may belong to a snapshot
/// in progress (another member's sidecar, before a leader change) and are left alone. Returns
/// how many were deleted.
pub async fn remove_stale_staging(
    store: &dyn Snapstore,
    prefix: &str,
    older_than: Duration,
    now: i64,
) -> Result<usize, Error> {
    let mut removed = 0;
    for meta in store.list(&prefix_dir(prefix, STAGING_DIR)).await? {
        let Some(created) = parse_staging_key(&meta.key) else { continue };
        if now.saturating_sub(created) > older_than.as_secs() as i64 {
            store.delete(&meta.key).await?;
            info!(key = %meta.key, bytes = meta.size, "deleted the staging object of an unfinished full snapshot");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Takes a full snapshot of `source` and stores it in `store` (see the module docs).
pub async fn take_full_snapshot(
    source: &dyn EtcdSource,
    store: &dyn Snapstore,
    opts: &FullOptions,
) -> Result<FullSnapshot, Error> {
    let staging = staging_key(&opts.prefix, unix_now());
    let result = match tokio::time::timeout(opts.timeout, take(source, store, opts, &staging)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Etcd {
            retryable: true,
            message: format!("full snapshot did not finish within its timeout ({:?})", opts.timeout),
        }),
    };
    if result.is_err() {
        // The upload may have completed before the failure (a wrong trailer, a failed rename).
        if let Err(e) = store.delete(&staging).await {
            warn!(key = %staging, error = %e, "could not delete the staging object; the next start deletes it");
        }
    }
    result
}

/// How many blocks compress at once: every core, since etcd's stream is the other limit.
fn compression_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8)
}

fn stream_failed(key: &str, why: &str) -> StoreError {
    StoreError::Other { key: key.to_string(), retryable: true, source: why.to_string().into() }
}

/// The compressed object as a stream, from a channel of plain blocks in stream order.
fn encode(
    compression: Compression,
    level: u32,
    mut plain: mpsc::Receiver<Result<Bytes, StoreError>>,
    key: &str,
) -> ByteStream {
    if let Some(format) = BlockFormat::new(compression, level) {
        let key = key.to_string();
        let blocks = futures::stream::poll_fn(move |cx| plain.poll_recv(cx))
            .map(move |item| {
                let key = key.clone();
                async move {
                    let block = item?;
                    let compressed = tokio::task::spawn_blocking(move || format.compress(&block)).await;
                    match compressed {
                        Ok(Ok(b)) => Ok(b),
                        Ok(Err(e)) => Err(stream_failed(&key, &format!("compression failed: {e}"))),
                        Err(e) => Err(stream_failed(&key, &format!("compression worker: {e}"))),
                    }
                }
            })
            .buffered(compression_workers());
        let header = futures::stream::iter([Ok(Bytes::from(format.header()))]);
        let body = futures::stream::unfold((Box::pin(blocks), Some(format.stream())), |(mut blocks, mut sum)| async {
            let running = sum.as_mut()?;
            match blocks.next().await {
                Some(Ok(b)) => {
                    running.add(&b);
                    Some((Ok(Bytes::from(b.into_bytes())), (blocks, sum)))
                }
                Some(Err(e)) => Some((Err(e), (blocks, None))),
                None => {
                    let trailer = sum.take().map(|s| s.trailer()).unwrap_or_default();
                    Some((Ok(Bytes::from(trailer)), (blocks, None)))
                }
            }
        });
        return Box::pin(header.chain(body));
    }
    if compression == Compression::None {
        return receiver_stream(plain);
    }
    // LZW has no blocks: one encoder on a blocking thread, its output sent on as it comes.
    let (tx, out) = mpsc::channel::<Result<Bytes, StoreError>>(4);
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let mut enc = match Encoder::new(compression, ChannelWriter::new(tx.clone(), BLOCK_SIZE)) {
            Ok(enc) => enc,
            Err(e) => {
                let _ = tx.blocking_send(Err(stream_failed(&key, &format!("compression failed to start: {e}"))));
                return;
            }
        };
        while let Some(item) = plain.blocking_recv() {
            let written = match item {
                Ok(block) => enc.write_all(&block),
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            if written.is_err() {
                return; // the upload stopped reading: its own error is reported
            }
        }
        if let Ok(mut w) = enc.finish() {
            let _ = w.flush();
        } else {
            let _ = tx.blocking_send(Err(stream_failed(&key, "compression failed")));
        }
    });
    receiver_stream(out)
}

/// Block buffers used again once every stage has dropped its share of them, so a snapshot of
/// many GiB does not map, fault in and zero a fresh MiB for every block.
#[derive(Default)]
struct BlockPool {
    /// Empty handles to the allocations of blocks sent on, oldest first.
    handles: std::collections::VecDeque<BytesMut>,
}

impl BlockPool {
    /// The blocks a Local upload holds at once (the verifier's and the writer's channels and the
    /// block each works on), so the oldest handle is usually free again. Each handle keeps its
    /// block's memory alive; an S3 upload holds its parts' blocks longer and allocates anew.
    const MAX_HANDLES: usize = 8;

    /// An empty buffer of [`BLOCK_SIZE`]: a reclaimed one when a stage is done with it.
    fn take(&mut self) -> BytesMut {
        if let Some(i) = self.handles.iter_mut().position(|h| h.try_reclaim(BLOCK_SIZE))
            && let Some(h) = self.handles.remove(i)
        {
            return h;
        }
        BytesMut::with_capacity(BLOCK_SIZE)
    }

    /// Keeps the empty handle left after a block was split off and sent on.
    fn give_back(&mut self, handle: BytesMut) {
        if self.handles.len() == Self::MAX_HANDLES {
            self.handles.pop_front();
        }
        self.handles.push_back(handle);
    }
}

async fn take(
    source: &dyn EtcdSource,
    store: &dyn Snapstore,
    opts: &FullOptions,
    staging: &str,
) -> Result<FullSnapshot, Error> {
    let started = std::time::Instant::now();
    // The object is named after the time the stream began (the reference names it before its
    // upload, and stores no delta meanwhile): every
    // object stored in an earlier second holds revisions the snapshot holds too, so a full
    // snapshot below an earlier object's revision means etcd went back (`chain::Histories`).
    let begun = unix_now();
    let before = source.status().await?.revision;
    let mut stream = source.snapshot().await?;

    // The verifier hashes and scans on a thread of its own. It and the compressor get the same
    // blocks (shared, not copied); the channels' bounds keep a few blocks in memory and slow
    // the stream down only when a stage falls behind.
    let (verify_tx, mut verify_rx) = mpsc::channel::<Bytes>(2);
    let verifier = tokio::task::spawn_blocking(move || {
        let mut verifier = StreamVerifier::new();
        while let Some(block) = verify_rx.blocking_recv() {
            verifier.update(&block);
        }
        verifier
    });
    let (plain_tx, plain_rx) = mpsc::channel::<Result<Bytes, StoreError>>(1);
    let level = opts.compression_level.unwrap_or(blocks::default_level(opts.compression));
    let body = encode(opts.compression, level, plain_rx, staging);
    let upload = store.write(staging, body, &opts.write);
    // Owns both senders, so the verifier and the upload see the end when the stream ends.
    let feed = async move {
        // Hands a block to the verifier and to the upload; false once the upload has failed
        // (its error is reported by the upload itself).
        let send = async |block: Bytes| -> Result<bool, Error> {
            if verify_tx.send(block.clone()).await.is_err() {
                return Err(Error::internal("snapshot verifier stopped"));
            }
            Ok(plain_tx.send(Ok(block)).await.is_ok())
        };
        let mut pool = BlockPool::default();
        let mut block = pool.take();
        while let Some(item) = stream.next().await {
            let chunk = match item {
                Ok(chunk) => chunk,
                Err(e) => {
                    // Fail the upload too, so nothing is committed from a cut stream.
                    let _ = plain_tx.send(Err(stream_failed(staging, "etcd's snapshot stream failed"))).await;
                    return Err(Error::from(e));
                }
            };
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = rest.len().min(BLOCK_SIZE - block.len());
                block.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if block.len() == BLOCK_SIZE {
                    let full = block.split().freeze();
                    let next = pool.take();
                    pool.give_back(std::mem::replace(&mut block, next));
                    if !send(full).await? {
                        return Ok(());
                    }
                }
            }
        }
        debug!("etcd's snapshot stream ended; finishing the upload");
        if !block.is_empty() {
            send(block.freeze()).await?;
        }
        Ok(())
    };
    let (fed, uploaded) = tokio::join!(feed, upload);
    fed?;
    let staged_bytes = uploaded?;
    let verifier = verifier.await.map_err(|e| Error::task_failed("the snapshot verifier", e))?;
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
        created_on: begun,
        compression: opts.compression,
        is_final: opts.is_final,
    };
    let key = name.key_v2(&opts.prefix);
    let streamed = started.elapsed();
    let size = store.rename(staging, &key).await?;
    debug!(staging, staged_bytes, "staging object renamed");
    info!(
        object = %key,
        revision,
        revision_before = before,
        stream_bytes,
        stored_bytes = size,
        stream_seconds = streamed.as_secs_f64(),
        seconds = started.elapsed().as_secs_f64(),
        "full snapshot stored"
    );
    Ok(FullSnapshot { snapshot: Snapshot::new_v2(&opts.prefix, name, size), revision_source, stream_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn staging_keys_parse_back_and_are_never_snapshot_names() {
        for prefix in ["", "etcd-main", "a/b/"] {
            let key = staging_key(prefix, 1_795_607_409);
            assert_eq!(parse_staging_key(&key), Some(1_795_607_409), "{key}");
            assert!(Snapshot::parse_key(&key, 1).is_err(), "{key} must not look like a snapshot");
            assert!(!key.contains("/v2/") && !key.starts_with("v2/"), "{key}");
        }
        assert_eq!(parse_staging_key("etcd-main/v2/Full-00000000-00000009-1795606904.gz"), None);
        assert_eq!(parse_staging_key("etcd-main/.etcdbr-staging/Full-12-.part"), None);
        assert_eq!(parse_staging_key("etcd-main/.etcdbr-staging/Full-x-ab.part"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_compression_streams_what_a_restore_decodes() {
        use std::io::Read;
        let data: Vec<u8> = (0..(3 * BLOCK_SIZE + 12_345) as u32).map(|i| (i % 97) as u8).collect();
        for compression in Compression::ALL {
            let (tx, rx) = mpsc::channel(2);
            let stream = encode(compression, blocks::default_level(compression), rx, "k");
            let blocks: Vec<Bytes> = data.chunks(BLOCK_SIZE).map(Bytes::copy_from_slice).collect();
            let feed = tokio::spawn(async move {
                for b in blocks {
                    tx.send(Ok(b)).await.unwrap();
                }
            });
            let parts: Vec<Bytes> = stream.map(|p| p.unwrap()).collect().await;
            feed.await.unwrap();
            let mut plain = Vec::new();
            crate::compress::decoder(compression, std::io::Cursor::new(parts.concat()))
                .read_to_end(&mut plain)
                .unwrap();
            assert!(plain == data, "{compression:?}: {} bytes back of {}", plain.len(), data.len());
        }
    }

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
