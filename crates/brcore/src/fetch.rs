//! Fetching a chain into a rebuild, shared by restore, compact and verification: the full
//! snapshot streamed (in parallel ranged reads where the store allows, decompressed in blocks)
//! into a temp file, or read in place on a Local store (uncompressed: the object itself is the
//! rebuild's source; etcdbr's gzip members: read by the inflaters with positioned reads), its
//! sha256 trailer checked beside the rebuild that reads it; the deltas
//! fetched and decoded in parallel within a memory budget ([`crate::deltafeed`]); both fed to
//! [`rebuild::rebuild_db`] on a blocking thread. Also the lease sidecars the snapshotter wrote
//! beside the deltas.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tracing::{Instrument, info_span};

use crate::bridge::ChannelReader;
use crate::chain::Chain;
use crate::compress::{self, blocks, blocks::MEMBER_HEADER_LEN, blocks::MemberHeader};
use crate::delta::EventBatch;
use crate::deltafeed::{self, DeltaFeed, Piece};
use crate::error::Error;
use crate::iothread::ThreadedFile;
use crate::name::{Compression, Snapshot};
use crate::overlap::{FullRepeats, OverlapCheck};
use crate::rebuild::{self, RebuildOptions, RebuildStats};
use crate::restore::{Progress, set_private};
use crate::store::{Snapstore, StoreError};
use etcd_format::snapshot_file::{self, TrailerStatus};

/// The TTLs the snapshotter recorded (in `Leases-…json` sidecars beside the deltas) for leases
/// granted after the full snapshot: lease id → granted TTL. Stores without sidecars (the Go
/// tool's) give an empty map. A sidecar that does not parse is corrupt: it is ours, so it
/// should.
pub async fn lease_sidecars(
    store: &dyn Snapstore,
    prefix: &str,
    chain: &Chain,
) -> Result<std::collections::HashMap<i64, i64>, Error> {
    use crate::snapshotter::leases;
    let mut ttls = std::collections::HashMap::new();
    if chain.deltas.is_empty() {
        return Ok(ttls);
    }
    let ranges: std::collections::HashSet<(u64, u64)> =
        chain.deltas.iter().map(|d| (d.name.start_revision, d.name.last_revision)).collect();
    for object in store.list(&crate::name::v2_dir(prefix)).await? {
        let Some(range) = leases::parse_sidecar_key(&object.key) else { continue };
        if !ranges.contains(&range) {
            continue;
        }
        let mut stream = store.read(&object.key, None).await?;
        let mut raw = Vec::with_capacity(object.size as usize);
        while let Some(chunk) = stream.next().await {
            raw.extend_from_slice(&chunk?);
        }
        let sidecar = leases::decode(&raw).map_err(|why| Error::corrupt(&object.key, why))?;
        for lease in sidecar.leases {
            if let Some(ttl) = lease.granted_ttl.filter(|&t| t > 0) {
                ttls.insert(lease.id, ttl);
            }
        }
    }
    Ok(ttls)
}

/// How the chain's objects are fetched: [`FetchOptions::default`] (the reference's 6 fetchers,
/// the hash checked, [`crate::deltafeed::DEFAULT_BUDGET`]), then set what differs.
/// Fields may be added in any release (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FetchOptions {
    /// Deltas fetched at once.
    pub max_fetchers: usize,
    /// Accept a full snapshot without a sha256 trailer.
    pub skip_hash_check: bool,
    /// Memory for deltas read and decoded ahead of the writer ([`crate::deltafeed`]).
    pub memory_budget: u64,
    /// Write the db with `O_DIRECT` where the filesystem takes it
    /// ([`ThreadedFile::direct`]): for a db that is not read back soon (a restore's); a db
    /// read back at once (verify, compact) is better left in the page cache.
    pub direct_io: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            max_fetchers: 6,
            skip_hash_check: false,
            memory_budget: crate::deltafeed::DEFAULT_BUDGET,
            direct_io: false,
        }
    }
}

/// Fetches `chain` from `store` and rebuilds it into a fresh db at `db_path`: the full snapshot
/// streams (decompressed) into a temp file in `temp_dir`, the deltas are fetched and decoded in
/// parallel and applied in order by [`rebuild::rebuild_db`] while the full snapshot's sha256
/// trailer is checked beside it (a mismatch fails the whole call, whatever was rebuilt). The db
/// is fsynced. Returns the rebuild's numbers and the bytes read from the store.
///
/// The shared core of restore, compact and verification.
pub async fn rebuild_chain(
    store: Arc<dyn Snapstore>,
    chain: &Chain,
    opts: RebuildOptions,
    db_path: &Path,
    temp_dir: &Path,
    fetch: FetchOptions,
    progress: Arc<dyn Progress>,
) -> Result<(RebuildStats, u64), Error> {
    fs::create_dir_all(temp_dir).map_err(|e| Error::io(temp_dir, e))?;
    let full_path = tempfile::Builder::new()
        .prefix("full-snapshot-")
        .tempfile_in(temp_dir)
        .map_err(|e| Error::io(temp_dir, e))?
        .into_temp_path();

    // Deltas: fetched and decoded in parallel as they stream, handed to the writer in order,
    // in the memory budget. Deltas that repeat revisions (two leaders uploading, the
    // reference's #1043, or the same range stored twice) are compared where they overlap, and
    // each revision is applied once.
    let check = OverlapCheck::new(chain);
    let items: Vec<Snapshot> = check.items().iter().map(|i| i.snapshot.clone()).collect();
    let feed = deltafeed::start(
        store.clone(),
        items,
        deltafeed::FeedOptions { max_fetchers: fetch.max_fetchers, budget: fetch.memory_budget },
        progress.clone(),
    );

    // The deltas are already being fetched and decoded (up to the channel's bound) while the
    // full snapshot streams in. An uncompressed full snapshot on the local filesystem is read in
    // place: no copy, as etcd's own restore.
    let in_place = match chain.full.name.compression {
        Compression::None => store.local_path(&chain.full.key),
        _ => None,
    };
    let fetched_full = match &in_place {
        Some(path) => {
            let len = fs::metadata(path).map(|m| m.len()).map_err(|e| Error::io(path, e));
            len.inspect(|&len| progress.full_bytes(len))
        }
        None => fetch_full(store.as_ref(), &chain.full, &full_path, progress.clone()).await,
    };
    // bbolt reads only up to the db's high-water mark, so the trailer after it is ignored.
    let source_path = in_place.unwrap_or_else(|| full_path.to_path_buf());
    // The sha256 trailer is checked beside the rebuild, on a core the rebuild leaves idle while
    // it waits for the disk; a rebuild of a damaged db is thrown away (below). A snapshot
    // without a trailer is refused before any work, unless the hash check is skipped.
    let trailer_check = fetched_full.and_then(|full_bytes| {
        let check = TrailerCheck::start(&source_path, &chain.full.key, fetch.skip_hash_check)?;
        Ok((full_bytes, check))
    });
    let (full_bytes, trailer_check) = match trailer_check {
        Ok(ok) => ok,
        Err(e) => {
            feed.abort();
            return Err(e);
        }
    };
    let source_bad = trailer_check.failed_flag();
    let db_out = db_path.to_path_buf();
    let full_key = chain.full.key.clone();
    let direct_io = fetch.direct_io;
    let rebuilt = tokio::task::spawn_blocking(move || -> Result<(RebuildStats, DeltaFeed, File), Error> {
        let mut feed = feed;
        let written = (|| {
            let source = bbolt::Db::open(&source_path).map_err(|e| Error::corrupt("full snapshot", e))?;
            let out = File::create(&db_out).map_err(|e| Error::io(&db_out, e))?;
            set_private(&db_out)?;
            // Events that repeat the full snapshot's content are compared with its db.
            let repeats = FullRepeats::new(&full_key, &source)?;
            let batches = Checked { feed: &mut feed, check, repeats, key: String::new(), failed: false, source_bad };
            // The db's writes run on a thread of their own (direct: no copy into the page cache).
            let out = if direct_io { ThreadedFile::direct(out) } else { ThreadedFile::new(out) };
            // It gathers the pages into its own chunks: the writer's buffer would be a copy more.
            let opts = RebuildOptions { writer: opts.writer.with_out_buffer(0), ..opts };
            let (out, stats) =
                rebuild::rebuild_db_batches(&source, batches, &opts, out).map_err(|e| e.at_db_path(&db_out))?;
            let file = out.finish().map_err(|e| Error::io(&db_out, e))?;
            Ok((stats, file))
        })();
        match written {
            Ok((stats, file)) => Ok((stats, feed, file)),
            Err(e) => {
                feed.abort();
                // A gap or a revision going backwards inside a damaged delta: its hash says so.
                Err(feed.damage().unwrap_or(e))
            }
        }
    });
    let (rebuilt, checked) = tokio::join!(rebuilt, trailer_check.finish());
    let rebuilt = rebuilt.map_err(|e| Error::task_failed("the db writer", e))?;
    // A damaged full snapshot is reported as such, whatever its bytes did to the rebuild.
    let (stats, feed, db_file) = match (checked, rebuilt) {
        (Err(e), Ok((_, feed, _))) => {
            feed.abort();
            return Err(e);
        }
        (Err(e), Err(_)) | (Ok(()), Err(e)) => return Err(e),
        (Ok(()), Ok(done)) => done,
    };
    // The decompressed full is no longer read: it is removed (its pages freed) beside the db's
    // fsync, and never written back to the disk.
    let removed = tokio::task::spawn_blocking(move || drop(full_path));
    let db_out = db_path.to_path_buf();
    let synced = tokio::task::spawn_blocking(move || db_file.sync_all().map_err(|e| Error::io(&db_out, e)));
    let (removed, synced) = tokio::join!(removed, synced);
    removed.map_err(|e| Error::task_failed("the temp file's removal", e))?;
    synced.map_err(|e| Error::task_failed("the db's fsync", e))??;
    let fetched = feed.fetched().await?;
    Ok((stats, full_bytes + fetched))
}

/// The writer's view of the delta feed: batches, with the deltas compared where they overlap
/// and the events that repeat the full snapshot compared with its db.
struct Checked<'a, 'f> {
    feed: &'f mut DeltaFeed,
    check: OverlapCheck,
    repeats: FullRepeats<'a>,
    /// The delta being read.
    key: String,
    failed: bool,
    /// Set when the full snapshot's trailer check failed: the rebuild stops at the next batch.
    source_bad: Arc<std::sync::atomic::AtomicBool>,
}

impl Iterator for Checked<'_, '_> {
    type Item = Result<EventBatch, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.source_bad.load(std::sync::atomic::Ordering::Relaxed) {
            self.failed = true;
            // Replaced by the trailer check's own error (see `rebuild_chain`).
            return Some(Err(Error::corrupt("full snapshot", "its sha256 trailer does not match")));
        }
        loop {
            let piece = match self.feed.next()? {
                Ok(piece) => piece,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            };
            let item = match piece {
                Piece::Begin(index, key) => {
                    self.check.begin(index);
                    self.repeats.begin_object();
                    self.key = key;
                    continue;
                }
                Piece::Batch(mut batch) => self
                    .check
                    .filter(&mut batch)
                    .and_then(|()| self.repeats.check_refs(&self.key, batch.iter()))
                    .map(|()| batch),
                Piece::End => match self.check.end() {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                },
            };
            self.failed = item.is_err();
            return Some(item);
        }
    }
}

/// The sha256 trailer check of the full snapshot's plain bytes (a temp file, or the object read
/// in place), run on a blocking thread beside the rebuild.
struct TrailerCheck {
    task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl TrailerCheck {
    /// Starts the check of the file at `path`, the object `key`. A file whose length says it
    /// has no trailer is refused here, at once (unless `skip_hash_check`: then nothing is
    /// checked, as etcd's `--skip-hash-check` does).
    fn start(path: &Path, key: &str, skip_hash_check: bool) -> Result<TrailerCheck, Error> {
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let len = fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        if !snapshot_file::has_trailer(len) {
            if skip_hash_check {
                return Ok(TrailerCheck { task: None, failed });
            }
            return Err(Error::corrupt(
                key,
                "it has no sha256 trailer (not a whole etcd snapshot, or truncated); \
                 skip the hash check only if it is a raw db copied from a data dir",
            ));
        }
        let (path, key, flag) = (path.to_path_buf(), key.to_string(), failed.clone());
        let task = tokio::task::spawn_blocking(move || {
            let checked = check_trailer(&path, &key);
            if checked.is_err() {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            checked
        });
        Ok(TrailerCheck { task: Some(task), failed })
    }

    /// Set once the check has failed.
    fn failed_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.failed.clone()
    }

    /// Waits for the check.
    async fn finish(self) -> Result<(), Error> {
        match self.task {
            None => Ok(()),
            Some(task) => task.await.map_err(|e| Error::task_failed("the snapshot verifier", e))?,
        }
    }
}

/// Checks the sha256 trailer of the file at `path` (a whole snapshot: db and trailer); a
/// mismatch is the object `key`'s damage, a read error keeps its kind.
fn check_trailer(path: &Path, key: &str) -> Result<(), Error> {
    match snapshot_file::verify_snapshot_file_as(path, key) {
        Ok(TrailerStatus::Verified) => Ok(()),
        // The length was checked when the check started; a file that changed length since is
        // not what was fetched.
        Ok(TrailerStatus::NoTrailer) => Err(Error::corrupt(key, "its length changed while it was read")),
        Err(snapshot_file::Error::Io { path, source }) => Err(Error::io(&path, source)),
        Err(e) => Err(Error::corrupt(key, format!("{e}: the object is damaged; restore from an older full snapshot"))),
    }
}

/// Streams the full snapshot into `path`, decompressed (its sha256 trailer is checked by
/// [`TrailerCheck`] beside the rebuild). Returns the compressed bytes read from the store.
///
/// etcdbr's gzip members ([`blocks`]) are inflated on every core, each written by its inflater
/// at its place in the file (the headers say every member's plain size, so its offset is known
/// before it is inflated); another writer's stream (the Go tool's one gzip member, zlib, LZW,
/// zstd) is decoded on one thread.
async fn fetch_full(
    store: &dyn Snapstore,
    snap: &Snapshot,
    path: &Path,
    progress: Arc<dyn Progress>,
) -> Result<u64, Error> {
    let span = info_span!("fetch_full", object = %snap.key);
    // etcdbr's members in a file of the Local store are read in place by the inflaters.
    if snap.name.compression == Compression::Gzip
        && let Some(src) = store.local_path(&snap.key)
        && let Some(read) =
            inflate_local_members(src, path, &snap.key, progress.clone()).instrument(span.clone()).await?
    {
        return Ok(read);
    }
    let mut stream = ranged_read(store, &snap.key, snap.size);
    let key = snap.key.clone();
    let compression = snap.name.compression;
    let mut fetched = 0u64;
    // The first bytes say whether a gzip object is etcdbr's members in blocks, which inflate
    // in parallel, or one stream (the Go tool's), which inflates on one core.
    let mut head = bytes::BytesMut::new();
    while head.len() < MEMBER_HEADER_LEN {
        match stream.next().await {
            Some(chunk) => {
                let chunk = chunk?;
                fetched += chunk.len() as u64;
                progress.full_bytes(chunk.len() as u64);
                head.extend_from_slice(&chunk);
            }
            None => break,
        }
    }
    let in_blocks = compression == Compression::Gzip && MemberHeader::parse(&head).is_some();
    let file = open_temp(path)?;
    let first = futures::stream::iter([Ok(head.freeze())]);
    let counted = stream.map(|chunk| {
        let chunk = chunk.map_err(Error::from)?;
        fetched += chunk.len() as u64;
        progress.full_bytes(chunk.len() as u64);
        Ok(chunk)
    });
    let compressed = first.chain(counted);
    if in_blocks {
        inflate_members(Box::pin(compressed), file, path, &key).instrument(span).await?;
        return Ok(fetched);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Error>>(8);
    let out_path = path.to_path_buf();
    let writer_key = key.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let mut decoder = compress::decoder(compression, ChannelReader::new(rx));
        let mut out = file;
        copy_full(&mut decoder, &mut out, &writer_key, &out_path)
    });
    let mut compressed = Box::pin(compressed);
    async {
        while let Some(chunk) = compressed.next().await {
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    }
    .instrument(span)
    .await;
    drop(compressed);
    drop(tx);
    writer.await.map_err(|e| Error::task_failed("the snapshot writer", e))??;
    Ok(fetched)
}

/// Opens the temp file at `path` (created empty) for the decompressed full snapshot. No fsync:
/// it is a temporary input, read back at once and removed; the db written from it is what gets
/// fsynced. Opened without O_TRUNC: ext4 takes a truncate to zero for "replace via truncate"
/// and writes the whole file back at its close (auto_da_alloc), which made the db's fsync wait
/// for the temp file's 165 MB.
fn open_temp(path: &Path) -> Result<File, Error> {
    fs::OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, e))
}

/// Threads that inflate block members: every core.
fn inflaters() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 16)
}

/// Inflates one block member of the object `key` into `plain` and writes it at `offset` of
/// `out` (the temp file at `path`).
fn inflate_member_at(
    member: &[u8],
    plain: &mut Vec<u8>,
    out: &File,
    offset: u64,
    path: &Path,
    key: &str,
) -> Result<(), Error> {
    use std::os::unix::fs::FileExt;
    blocks::inflate_member_into(member, plain).map_err(|e| read_error(key, e))?;
    out.write_all_at(plain, offset).map_err(|e| Error::io(path, e))
}

/// Inflates the block members of `compressed` on every core into `file` (at `path`): each
/// inflater writes its member's bytes at their offset, into one buffer of a pool.
async fn inflate_members(
    compressed: futures::stream::BoxStream<'_, Result<Bytes, Error>>,
    file: File,
    path: &Path,
    key: &str,
) -> Result<(), Error> {
    let file = Arc::new(file);
    let pool = BufferPool::default();
    let workers = inflaters();
    let mut written = std::pin::pin!(
        split_members(compressed, key.to_string())
            .map(|member| {
                let (file, pool, path, key) = (file.clone(), pool.clone(), path.to_path_buf(), key.to_string());
                async move {
                    let (member, offset) = member?;
                    tokio::task::spawn_blocking(move || -> Result<(), Error> {
                        let mut plain = pool.take();
                        inflate_member_at(&member, &mut plain, &file, offset, &path, &key)?;
                        pool.put(plain);
                        Ok(())
                    })
                    .await
                    .map_err(|e| Error::task_failed("the inflater", e))?
                }
            })
            // Two members in flight per core beyond the ones inflating keep the cores busy while
            // the store's next bytes arrive; memory: a member and its plain MiB each.
            .buffered(workers + 2)
    );
    while let Some(done) = written.next().await {
        done?;
    }
    Ok(())
}

/// etcdbr's gzip block members in the file `src` (an object of the Local store), inflated into
/// the file at `path` on every core: each inflater takes the next member's header in turn and
/// reads the member itself with a positioned read, so no stream, no copy into a queue and no
/// task hop stands between the file and the inflaters. `Ok(None)`: the object does not start
/// with a block member (the Go tool's one stream); it is read as a stream instead.
async fn inflate_local_members(
    src: std::path::PathBuf,
    path: &Path,
    key: &str,
    progress: Arc<dyn Progress>,
) -> Result<Option<u64>, Error> {
    let (path, key) = (path.to_path_buf(), key.to_string());
    let task = tokio::task::spawn_blocking(move || -> Result<Option<u64>, Error> {
        use std::os::unix::fs::FileExt;
        let source = File::open(&src).map_err(|e| Error::io(&src, e))?;
        let len = source.metadata().map_err(|e| Error::io(&src, e))?.len();
        let mut head = [0u8; MEMBER_HEADER_LEN];
        if len < MEMBER_HEADER_LEN as u64 {
            return Ok(None);
        }
        source.read_exact_at(&mut head, 0).map_err(|e| Error::io(&src, e))?;
        if MemberHeader::parse(&head).is_none() {
            return Ok(None);
        }
        let out = open_temp(&path)?;
        // The next member: its offset in the object and its plain bytes' offset; `None` once
        // every member is taken or an inflater failed.
        let next = std::sync::Mutex::new(Some((0u64, 0u64)));
        let take = || -> Result<Option<(u64, u64, usize)>, Error> {
            let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
            let Some((at, plain_at)) = *next else { return Ok(None) };
            if at == len {
                *next = None;
                return Ok(None);
            }
            *next = None; // until this member is known to be whole
            let mut h = [0u8; MEMBER_HEADER_LEN];
            if len - at < MEMBER_HEADER_LEN as u64 {
                return Err(member_cut(&key, at));
            }
            source.read_exact_at(&mut h, at).map_err(|e| Error::io(&src, e))?;
            let header = MemberHeader::parse(&h).ok_or_else(|| no_member_at(&key, at))?;
            let member_len = u64::from(header.member_len);
            if len - at < member_len {
                return Err(member_cut(&key, at));
            }
            *next = Some((at + member_len, plain_at + u64::from(header.plain_len)));
            Ok(Some((at, plain_at, header.member_len as usize)))
        };
        let inflate_one = |at: u64, plain_at: u64, member: &mut Vec<u8>, plain: &mut Vec<u8>| -> Result<(), Error> {
            source.read_exact_at(member, at).map_err(|e| Error::io(&src, e))?;
            inflate_member_at(member, plain, &out, plain_at, &path, &key)
        };
        let inflate = || -> Result<(), Error> {
            let (mut member, mut plain) = (Vec::new(), Vec::new());
            while let Some((at, plain_at, member_len)) = take()? {
                member.resize(member_len, 0);
                if let Err(e) = inflate_one(at, plain_at, &mut member, &mut plain) {
                    // The other inflaters stop at their next member.
                    *next.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    return Err(e);
                }
                progress.full_bytes(member_len as u64);
            }
            Ok(())
        };
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..inflaters()).map(|_| scope.spawn(inflate)).collect();
            // The first failure is reported.
            let mut result = Ok(());
            for inflater in threads {
                let done = inflater.join().unwrap_or_else(|_| Err(Error::internal("an inflater panicked")));
                if let Err(e) = done {
                    result = result.and(Err(e));
                }
            }
            result
        })?;
        Ok(Some(len))
    });
    task.await.map_err(|e| Error::task_failed("the inflaters", e))?
}

/// The object `key` has no gzip block member where one should start, at byte `offset`.
fn no_member_at(key: &str, offset: u64) -> Error {
    Error::corrupt(key, format!("no gzip block member starts at byte {offset}; the object is damaged"))
}

/// The object `key` ends inside the gzip block member that starts at byte `offset`.
fn member_cut(key: &str, offset: u64) -> Error {
    Error::corrupt(key, format!("it ends inside a gzip block member at byte {offset}; the object is truncated"))
}

/// Cuts a stream of compressed bytes into its gzip block members ([`MemberHeader`]), each with
/// the offset of its plain bytes in the stream's.
fn split_members<'a>(
    compressed: futures::stream::BoxStream<'a, Result<Bytes, Error>>,
    key: String,
) -> impl futures::Stream<Item = Result<(Bytes, u64), Error>> + 'a {
    let state = (compressed, bytes::BytesMut::new(), 0u64, 0u64, false);
    futures::stream::unfold(state, move |(mut input, mut pending, mut offset, mut plain_offset, done)| {
        let key = key.clone();
        async move {
            if done {
                return None;
            }
            loop {
                if pending.len() >= MEMBER_HEADER_LEN {
                    let Some(h) = MemberHeader::parse(&pending) else {
                        let e = no_member_at(&key, offset);
                        return Some((Err(e), (input, pending, offset, plain_offset, true)));
                    };
                    let len = h.member_len as usize;
                    if pending.len() >= len {
                        offset += len as u64;
                        let at = plain_offset;
                        plain_offset += u64::from(h.plain_len);
                        let member = pending.split_to(len).freeze();
                        return Some((Ok((member, at)), (input, pending, offset, plain_offset, false)));
                    }
                }
                match input.next().await {
                    Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e), (input, pending, offset, plain_offset, true))),
                    None if pending.is_empty() => return None,
                    None => {
                        let e = member_cut(&key, offset);
                        return Some((Err(e), (input, pending, offset, plain_offset, true)));
                    }
                }
            }
        }
    })
}

/// Bytes of one ranged read of a full snapshot.
const FULL_PART: u64 = 8 << 20;
/// Ranged reads of a full snapshot in flight: downloads from object stores are faster in
/// parallel, and memory stays bounded by parts × part size.
const FULL_PARTS_IN_FLIGHT: usize = 4;

/// Reads `key` (`size` bytes by the listing) as ranged reads in flight at once, yielding the
/// bytes in order. A small object, or one whose size is unknown, is one plain read.
fn ranged_read<'a>(
    store: &'a dyn Snapstore,
    key: &'a str,
    size: u64,
) -> futures::stream::BoxStream<'a, Result<Bytes, StoreError>> {
    if size <= FULL_PART || !store.ranged_reads() {
        return Box::pin(futures::stream::once(store.read(key, None)).try_flatten());
    }
    let ranges = (0..size).step_by(FULL_PART as usize).map(move |start| start..(start + FULL_PART).min(size));
    Box::pin(
        futures::stream::iter(ranges)
            .map(move |range| async move {
                let mut part = store.read(key, Some(range)).await?;
                let mut chunks = Vec::new();
                while let Some(chunk) = part.next().await {
                    chunks.push(chunk?);
                }
                Ok::<_, StoreError>(futures::stream::iter(chunks.into_iter().map(Ok)))
            })
            .buffered(FULL_PARTS_IN_FLIGHT)
            .try_flatten(),
    )
}

/// Copies the decompressed full snapshot into the temp file at `path`, telling the two sides'
/// failures apart: a read failure is the object's (damaged data, or the store's error carried
/// through the decoder), a write failure is the temp file's (a full disk names its filesystem).
fn copy_full(from: &mut impl Read, to: &mut impl Write, key: &str, path: &Path) -> Result<(), Error> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(key, e)),
        };
        to.write_all(&buf[..n]).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// A failure reading the object `key` through its decoder.
pub(crate) fn read_error(key: &str, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput => {
            Error::corrupt(key, format!("it does not decompress: {e}; the object is damaged or truncated"))
        }
        // The store's error (or another of ours) carried through the reader keeps its kind;
        // anything else is the stream's I/O, named by the object.
        _ => match e.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(err)) => *err,
            Some(Err(other)) => {
                Error::Store(StoreError::Other { key: key.to_string(), retryable: false, source: other })
            }
            None => Error::Store(StoreError::Other {
                key: key.to_string(),
                retryable: false,
                source: "reading the object failed".into(),
            }),
        },
    }
}

/// Buffers of inflated members, reused: an inflater puts back what it has written.
#[derive(Clone, Default)]
struct BufferPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// Buffers kept at most: one per member in flight.
    const KEEP: usize = 32;

    fn take(&self) -> Vec<u8> {
        self.0.lock().ok().and_then(|mut v| v.pop()).unwrap_or_default()
    }

    fn put(&self, buf: Vec<u8>) {
        if let Ok(mut v) = self.0.lock()
            && v.len() < Self::KEEP
        {
            v.push(buf);
        }
    }
}
