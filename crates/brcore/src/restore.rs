//! Offline restore: the latest full snapshot plus every later delta, rebuilt into a data dir
//! that etcd boots, without running etcd.
//!
//! The path, in one pass over each input:
//! 1. [`crate::chain::list_chain`] lists the store and picks the full snapshot and its deltas.
//! 2. The full snapshot streams from the store through decompression into a temp file (a bbolt
//!    db must be random-access to read); its sha256 trailer is checked as it streams.
//! 3. Deltas are fetched and decoded in parallel (bounded by `max_fetchers`), verified, and fed in
//!    order to [`crate::rebuild::rebuild_db`], which writes the new `member/snap/db`.
//! 4. The WAL and snap file of the new member are written, everything is fsynced, and the
//!    result is renamed into place.
//!
//! Everything is built in `<data-dir>.part` on the data dir's filesystem; the data dir only ever
//! holds a complete `member/` dir. The store is only read.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tracing::{Instrument, info, info_span, warn};

use crate::bridge::ChannelReader;
use crate::chain::{self, Chain, Target};
use crate::compress::{self, blocks, blocks::MEMBER_HEADER_LEN, blocks::MemberHeader};
use crate::delta::EventBatch;
use crate::deltafeed::{self, DeltaFeed, Piece};
use crate::error::Error;
use crate::iothread::ThreadedFile;
use crate::name::{Compression, Snapshot};
use crate::overlap::{FullRepeats, OverlapCheck};
use crate::rebuild::{self, LeasePolicy, Membership, RebuildOptions, RebuildStats};
use crate::store::{Snapstore, StoreError};
use etcd_format::membership::Cluster;
use etcd_format::snapshot_file::{Sha256Trailer, TrailerStatus};

/// Everything a restore needs to know. Build it with [`RestorePlan::new`] and the `with_*`
/// setters; the fields stay readable.
///
/// ```
/// use std::path::PathBuf;
/// use brcore::chain::Target;
/// use brcore::restore::RestorePlan;
/// use etcd_format::membership::Cluster;
///
/// let cluster = Cluster::from_initial_cluster("etcd-0=http://10.0.0.1:2380", "etcd-cluster").unwrap();
/// let plan = RestorePlan::new("etcd-main", PathBuf::from("/var/etcd/data/new.etcd"), cluster, "etcd-0")
///     .with_target(Target::Revision(1_000))
///     .with_dry_run(true);
/// assert_eq!(plan.max_fetchers, 6);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RestorePlan {
    /// The store prefix (`--store-prefix`), without the `v2` the layout appends.
    pub prefix: String,
    /// The data dir to create (`--data-dir`); it must not hold a `member/` dir.
    pub data_dir: PathBuf,
    /// Where the decompressed full snapshot is kept while it is read
    /// (`--restoration-temp-snapshots-dir`); default: inside `<data-dir>.part`.
    pub temp_dir: Option<PathBuf>,
    /// The cluster the restored member(s) belong to (`--initial-cluster`, token).
    pub cluster: Cluster,
    /// This member's name (`--name`).
    pub name: String,
    /// Latest, or a point in time.
    pub target: Target,
    /// Deltas fetched at once (`--max-fetchers`).
    pub max_fetchers: usize,
    /// Bytes of memory for deltas read ahead and decoded ahead of the db writer
    /// (`--restore-memory-budget`; see [`crate::deltafeed`]).
    pub memory_budget: u64,
    /// Accept a full snapshot without a sha256 trailer (`--skip-hash-check`).
    pub skip_hash_check: bool,
    /// Refuse a result larger than this many bytes (`--embedded-etcd-quota-bytes`).
    pub quota_bytes: Option<u64>,
    /// `--bump-revision N --mark-compacted`; when the restore goes back in time (below),
    /// N is the margin above the store's newest revision.
    pub bump_revision: Option<i64>,
    /// `--keep-revision`: keep the restored revision even when the store holds newer ones.
    /// Without it, a restore that ends below the newest revision of any object under the prefix
    /// bumps past that revision (by `bump_revision`, or
    /// [`crate::rebuild::DEFAULT_BUMP_MARGIN`]) and marks it compacted: it begins a new history
    /// whose objects sort above every object of the old one, for this tool and the Go tool
    /// alike, and no watcher sees a revision twice. A dry run never bumps.
    pub keep_revision: bool,
    /// TTL of leases the deltas reference but the full lacks.
    pub lease_policy: LeasePolicy,
    /// Verify the whole chain and report, but leave no data dir.
    pub dry_run: bool,
}

impl RestorePlan {
    /// A plan to restore the latest state under `prefix` into `data_dir`, as member `name` of
    /// `cluster`, with the reference's defaults: 6 deltas fetched at once, the sha256 trailer
    /// checked, no quota, no bump beyond what a new history needs, leases granted after the full
    /// snapshot kept with [`LeasePolicy::default`], the temporary full snapshot inside
    /// `<data-dir>.part`.
    pub fn new(prefix: impl Into<String>, data_dir: PathBuf, cluster: Cluster, name: impl Into<String>) -> Self {
        RestorePlan {
            prefix: prefix.into(),
            data_dir,
            temp_dir: None,
            cluster,
            name: name.into(),
            target: Target::Latest,
            max_fetchers: 6,
            memory_budget: crate::deltafeed::DEFAULT_BUDGET,
            skip_hash_check: false,
            quota_bytes: None,
            bump_revision: None,
            keep_revision: false,
            lease_policy: LeasePolicy::default(),
            dry_run: false,
        }
    }

    /// Restores the state at `target` instead of the latest.
    pub fn with_target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// Keeps the decompressed full snapshot in `dir` while it is read.
    pub fn with_temp_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.temp_dir = dir;
        self
    }

    /// Fetches at most `n` deltas at once (at least 1).
    pub fn with_max_fetchers(mut self, n: usize) -> Self {
        self.max_fetchers = n.max(1);
        self
    }

    /// Bounds the memory the delta pipeline holds at once to `bytes` (see
    /// [`RestorePlan::memory_budget`]).
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// Accepts a full snapshot without a sha256 trailer.
    pub fn with_skip_hash_check(mut self, skip: bool) -> Self {
        self.skip_hash_check = skip;
        self
    }

    /// Refuses a result larger than `bytes`.
    pub fn with_quota_bytes(mut self, bytes: Option<u64>) -> Self {
        self.quota_bytes = bytes;
        self
    }

    /// Bumps the restored revision by `n` and marks it compacted (see [`RestorePlan::bump_revision`]).
    pub fn with_bump_revision(mut self, n: Option<i64>) -> Self {
        self.bump_revision = n;
        self
    }

    /// Keeps the restored revision even when the store holds newer ones (see
    /// [`RestorePlan::keep_revision`]).
    pub fn with_keep_revision(mut self, keep: bool) -> Self {
        self.keep_revision = keep;
        self
    }

    /// The TTL of leases the deltas reference but the full snapshot lacks.
    pub fn with_lease_policy(mut self, policy: LeasePolicy) -> Self {
        self.lease_policy = policy;
        self
    }

    /// Verifies the whole chain and reports, leaving no data dir.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The full snapshot used.
    pub full: String,
    /// The deltas applied, in order.
    pub deltas: Vec<String>,
    /// Objects left out although they hold revisions after the full snapshot, each with the
    /// reason (see [`Chain::left_out`]).
    pub left_out: Vec<(String, String)>,
    /// Whether the restore went back in time below revisions the store holds and bumped past
    /// them: the data dir begins a new history (see [`RestorePlan::keep_revision`]).
    pub new_history: bool,
    /// The rebuild's numbers (revision, keys, events).
    pub stats: RebuildStats,
    /// Bytes read from the store.
    pub bytes_fetched: u64,
    /// Size of the written db.
    pub db_size: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The data dir written (None for a dry run).
    pub data_dir: Option<PathBuf>,
    /// For a dry run: etcd's HashKV of the rebuilt db at its revision, computed offline, to
    /// compare with a live cluster's `etcdctl endpoint hashkv --rev`.
    pub hashkv: Option<u32>,
}

/// Progress of a long restore, for a progress bar or logs.
pub trait Progress: Send + Sync {
    /// The chain is known: the full snapshot's size and the number of deltas.
    fn start(&self, _full_bytes: u64, _deltas: usize) {}
    /// More bytes of the full snapshot arrived.
    fn full_bytes(&self, _n: u64) {}
    /// One more delta was applied.
    fn delta_applied(&self, _name: &str, _events: usize) {}
}

/// Progress that goes nowhere.
#[derive(Debug, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// Rebuilds a data dir from backups.
///
/// # Contract
/// - On success the data dir holds a complete `member/` dir etcd boots from; on any error it is
///   left as it was (no `member/` appears) and temporary files are removed.
/// - A data dir that already holds `member/` is refused with [`Error::Refused`].
/// - The store is never written to.
/// - A dry run ([`RestorePlan::dry_run`]) fetches and checks the whole chain and rebuilds the db
///   as a restore would, then removes everything it wrote: on success the data dir is untouched
///   and the report's `hashkv` holds the offline HashKV of the result. A dry run does not
///   refuse a data dir that holds `member/` (it writes nothing there).
/// - Dropping the returned future before it completes cancels the restore: no `member/` appears,
///   and the work stops and removes `<data-dir>.part` in the background shortly after (the
///   blocking db writer finishes its current step first).
///
/// # Example
///
/// ```no_run
/// use std::sync::Arc;
/// use brcore::restore::{NoProgress, OfflineRestorer, RestorePlan, Restorer};
/// use etcd_format::membership::Cluster;
///
/// # async fn restore(store: Arc<dyn brcore::Snapstore>) -> Result<(), brcore::error::Error> {
/// // Needs a store with backups under `etcd-main/v2/` (see `snapstore::open`).
/// let cluster = Cluster::from_initial_cluster("etcd-0=http://10.0.0.1:2380", "etcd-cluster").unwrap();
/// let plan = RestorePlan::new("etcd-main", "/var/etcd/data/new.etcd".into(), cluster, "etcd-0");
/// let report = OfflineRestorer::new(store).restore(&plan, Arc::new(NoProgress)).await?;
/// println!("restored revision {} from {} and {} deltas", report.stats.revision, report.full, report.deltas.len());
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Restorer: Send + Sync + std::fmt::Debug {
    /// Runs the restore that `plan` describes.
    async fn restore(&self, plan: &RestorePlan, progress: Arc<dyn Progress>) -> Result<RestoreReport, Error>;
}

/// The offline restorer: writes etcd's files itself, no etcd process.
#[derive(Debug, Clone)]
pub struct OfflineRestorer {
    store: Arc<dyn Snapstore>,
}

impl OfflineRestorer {
    /// A restorer reading backups from `store`.
    pub fn new(store: Arc<dyn Snapstore>) -> Self {
        OfflineRestorer { store }
    }
}

#[async_trait]
impl Restorer for OfflineRestorer {
    async fn restore(&self, plan: &RestorePlan, progress: Arc<dyn Progress>) -> Result<RestoreReport, Error> {
        let span = info_span!("restore", data_dir = %plan.data_dir.display(), prefix = %plan.prefix);
        // The restore runs as a task of its own, so that dropping this future does not abandon
        // it halfway: the guard's drop tells the task, which stops its work and removes
        // `<data-dir>.part` (the contract's cancellation clause).
        let cancel = Arc::new(Cancel::default());
        let guard = CancelOnDrop(Some(cancel.clone()));
        let task =
            tokio::spawn(restore_cancellable(self.store.clone(), plan.clone(), progress, cancel).instrument(span));
        let result = task.await.map_err(|e| Error::task_failed("the restore", e));
        guard.disarm();
        result?
    }
}

/// Whether the caller of a restore went away, and a wake-up for the task when it does.
#[derive(Debug, Default)]
struct Cancel {
    cancelled: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
    /// Held by the last step ([`finish_member_dir`]) and by a cancellation's removal of the
    /// part dir, so the two never run at once: a removal racing the rename into place could
    /// leave a partial `member/` where etcd boots from.
    finishing: std::sync::Mutex<()>,
}

impl Cancel {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn finishing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.finishing.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs blocking file-system work (removing a tree, renames, fsyncs) on a blocking thread, off
/// the runtime's workers.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::task_failed(what, e))?
}

/// Removes a part dir that is no longer wanted; a part dir already gone is no error.
fn remove_part_dir(part: &Path) -> io::Result<()> {
    match fs::remove_dir_all(part) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Cancels the restore when dropped, unless disarmed once the restore's result is in.
struct CancelOnDrop(Option<Arc<Cancel>>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.cancelled.store(true, std::sync::atomic::Ordering::SeqCst);
            // A stored permit: the task wakes even if it is not waiting yet.
            cancel.wake.notify_one();
        }
    }
}

fn cancelled_error() -> Error {
    Error::Refused { why: "the restore was cancelled".into() }
}

/// [`restore`], stopped when `cancel` says the caller went away, before the result is in place.
async fn restore_cancellable(
    store: Arc<dyn Snapstore>,
    plan: RestorePlan,
    progress: Arc<dyn Progress>,
    cancel: Arc<Cancel>,
) -> Result<RestoreReport, Error> {
    let part = part_dir(&plan.data_dir);
    tokio::select! {
        result = restore(store, &plan, progress, &cancel) => result,
        _ = cancel.wake.notified() => {
            // Dropping `restore` dropped the fetches; a blocking step still running only writes
            // into files it already opened, which go away with the directory. A last step
            // already under way finishes first (see `Cancel::finishing`).
            warn!(dir = %part.display(), "restore cancelled: removing its unfinished files");
            let (dir, cancel) = (part.clone(), cancel.clone());
            let removed = blocking("removing the cancelled restore's files", move || {
                let _finishing = cancel.finishing();
                remove_part_dir(&dir).map_err(|e| Error::io(&dir, e))
            })
            .await;
            if let Err(e) = removed {
                warn!(dir = %part.display(), error = %e, "could not remove the cancelled restore's files");
            }
            Err(cancelled_error())
        }
    }
}

async fn restore(
    store: Arc<dyn Snapstore>,
    plan: &RestorePlan,
    progress: Arc<dyn Progress>,
    cancel: &Arc<Cancel>,
) -> Result<RestoreReport, Error> {
    let started = Instant::now();
    let (data_dir, dry_run) = (plan.data_dir.clone(), plan.dry_run);
    blocking("the data dir's checks", move || {
        refuse_data_dir_not_a_dir(&data_dir)?;
        if !dry_run {
            refuse_existing_member(&data_dir)?;
        }
        remove_unfinished_restore(&data_dir)
    })
    .await?;
    let chain = chain::list_chain(store.as_ref(), &plan.prefix, plan.target).await?;
    info!(
        full = %chain.full.key,
        deltas = chain.deltas.len(),
        "restoring from {} and {} deltas",
        chain.full.key,
        chain.deltas.len()
    );
    progress.start(chain.full.size, chain.deltas.len());

    let part = part_dir(&plan.data_dir);
    let result = build(store, plan, &chain, &part, progress).await;
    match result {
        Ok(mut report) => {
            for (key, why) in &report.left_out {
                info!(object = %key, "left out: {why}");
            }
            let (data_dir, dry_run, cancel) = (plan.data_dir.clone(), plan.dry_run, cancel.clone());
            let finished = blocking("moving the restored member dir into place", move || {
                finish_member_dir(&part, &data_dir, dry_run, &cancel)
            })
            .await?;
            match finished {
                Finished::Cancelled => return Err(cancelled_error()),
                Finished::InPlace => report.data_dir = Some(plan.data_dir.clone()),
                Finished::Removed => {}
            }
            report.elapsed = started.elapsed();
            Ok(report)
        }
        Err(e) => {
            let dir = part.clone();
            let cleanup = blocking("removing the unfinished restore", move || {
                remove_part_dir(&dir).map_err(|e| Error::io(&dir, e))
            })
            .await;
            if let Err(cleanup) = cleanup {
                warn!(dir = %part.display(), error = %cleanup, "could not remove the unfinished restore");
            }
            Err(e)
        }
    }
}

/// `<data-dir>.part`, beside the data dir on the same filesystem.
///
/// When the data dir is a mount point (another filesystem than its parent's), a dir beside it
/// could not be renamed into it: the part dir is `<data-dir>/.etcdbr-restore.part` instead,
/// and its `member/` is renamed into place alone.
pub fn part_dir(data_dir: &Path) -> PathBuf {
    if is_mount_point(data_dir) {
        return data_dir.join(".etcdbr-restore.part");
    }
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "data".into());
    name.push(".part");
    data_dir.with_file_name(name)
}

/// Whether `dir` is a directory on another filesystem than its parent.
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(dir) else { return false };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    meta.is_dir() && fs::metadata(parent).is_ok_and(|p| p.dev() != meta.dev())
}

/// Removes what a restore that was killed left in [`part_dir`], loudly (with its size), and
/// returns that size; `None` when there was nothing. Every restore calls it first; a command
/// that may restore later (initialize, the server) calls it at its start, so the space comes
/// back at the next run whatever that run decides.
pub fn remove_unfinished_restore(data_dir: &Path) -> Result<Option<u64>, Error> {
    let part = part_dir(data_dir);
    let meta = match fs::symlink_metadata(&part) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&part, e)),
    };
    let size = if meta.is_dir() { dir_size(&part) } else { meta.len() };
    warn!(
        dir = %part.display(),
        bytes = size,
        "removing {} left in {} by a restore that did not finish (killed, or the machine stopped)",
        crate::error::human_bytes(size),
        part.display()
    );
    let removed = if meta.is_dir() { fs::remove_dir_all(&part) } else { fs::remove_file(&part) };
    removed.map_err(|e| Error::io(&part, e))?;
    Ok(Some(size))
}

/// Bytes in the files under `dir` (what can be read of it).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A data dir path that exists but is not a directory (a regular file, a socket) can never
/// receive `member/`: refused before any work.
fn refuse_data_dir_not_a_dir(data_dir: &Path) -> Result<(), Error> {
    match fs::metadata(data_dir) {
        Ok(m) if !m.is_dir() => {
            Err(Error::Invalid { what: format!("the data dir {} exists and is not a directory", data_dir.display()) })
        }
        _ => Ok(()),
    }
}

fn refuse_existing_member(data_dir: &Path) -> Result<(), Error> {
    let member = data_dir.join("member");
    if member.exists() {
        return Err(Error::Refused {
            why: format!(
                "{} already exists: etcd would boot from it. Move it aside (or remove it if it is \
                 known to be bad) and run the restore again",
                member.display()
            ),
        });
    }
    Ok(())
}

async fn build(
    store: Arc<dyn Snapstore>,
    plan: &RestorePlan,
    chain: &Chain,
    part: &Path,
    progress: Arc<dyn Progress>,
) -> Result<RestoreReport, Error> {
    let snap_dir = part.join("member").join("snap");
    let temp_dir = plan.temp_dir.clone().unwrap_or_else(|| part.to_path_buf());
    let dirs = (snap_dir.clone(), temp_dir.clone());
    blocking("creating the restore's directories", move || {
        let (snap_dir, temp_dir) = dirs;
        create_private_dirs(&snap_dir)?;
        fs::create_dir_all(&temp_dir).map_err(|e| Error::io(&temp_dir, e))
    })
    .await?;
    let db_path = snap_dir.join("db");
    let bump_past = (!plan.keep_revision && !plan.dry_run).then_some(chain.store_revision as i64);
    let opts = RebuildOptions {
        // The target, but never past the revision where a newer history branched off the
        // chain's (see `Chain::stop_revision`).
        to_revision: match (plan.target, chain.stop_revision) {
            (Target::Revision(r), Some(stop)) => Some(r.min(stop) as i64),
            (Target::Revision(r), None) => Some(r as i64),
            (_, stop) => stop.map(|s| s as i64),
        },
        to_time_nanos: match plan.target {
            Target::Time(t) => Some(t as i128 * 1_000_000_000 + 999_999_999),
            _ => None,
        },
        membership: {
            let meta = plan.cluster.restore_meta();
            Membership::Replace {
                members: plan.cluster.members_bucket_entries(),
                consistent_index: meta.consistent_index,
                term: meta.term,
                conf_state_json: meta.conf_state_json(),
            }
        },
        lease_policy: plan.lease_policy,
        bump_revision: plan.bump_revision,
        bump_past,
        writer: bbolt::WriterOptions::default(),
        known_lease_ttls: lease_sidecars(store.as_ref(), &plan.prefix, chain).await?,
    };
    let fetch = FetchOptions {
        max_fetchers: plan.max_fetchers,
        skip_hash_check: plan.skip_hash_check,
        memory_budget: plan.memory_budget,
    };
    let (stats, fetched) = rebuild_chain(store, chain, opts, &db_path, &temp_dir, fetch, progress).await?;

    if let Some(to) = match plan.target {
        Target::Revision(r) => Some(r as i64),
        _ => None,
    } && stats.ended_early
        && chain.stop_revision.is_none_or(|stop| (stop as i64) >= to)
    {
        warn!(requested = to, reached = stats.revision, "the backups end before the requested revision");
    }
    let new_history = stats.bumped_by > 0 && bump_past.is_some_and(|past| stats.revision - stats.bumped_by < past);
    if new_history {
        warn!(
            restored = stats.revision - stats.bumped_by,
            store_revision = chain.store_revision,
            bumped_to = stats.revision,
            "the store holds revisions up to {} above the restored revision {}: the revision is bumped to {} and \
             marked compacted, so this restore begins a new history above every object in the store \
             (a plan that keeps the revision restores {})",
            chain.store_revision,
            stats.revision - stats.bumped_by,
            stats.revision,
            stats.revision - stats.bumped_by
        );
    }
    let db_size = fs::metadata(&db_path).map_err(|e| Error::io(&db_path, e))?.len();
    if let Some(quota) = plan.quota_bytes
        && db_size > quota
    {
        return Err(Error::Refused {
            why: format!(
                "the restored db is {db_size} bytes, above the quota of {quota} bytes: etcd would \
                 raise a NOSPACE alarm; raise the quota (and etcd's backend quota with it)"
            ),
        });
    }

    let mut hashkv = None;
    if plan.dry_run {
        // Verify the result as etcd would see it: a clean bbolt check and its HashKV.
        let path = db_path.clone();
        hashkv = Some(
            tokio::task::spawn_blocking(move || -> Result<u32, Error> {
                let db = crate::verify::open_checked(&path)?;
                let h = etcd_format::hashkv::hash_kv(&db, None).map_err(|e| match e {
                    etcd_format::mvcc::Error::Bolt(bbolt::Error::Io { source, .. }) => Error::io(&path, source),
                    e => Error::internal(format!("hashing the rebuilt db: {e}")),
                })?;
                Ok(h.hash)
            })
            .await
            .map_err(|e| Error::task_failed("the dry run's verifier", e))??,
        );
    }

    let member_dir = part.join("member");
    let cluster = plan.cluster.clone();
    let name = plan.name.clone();
    let dry_run = plan.dry_run;
    tokio::task::spawn_blocking(move || {
        if dry_run {
            return Ok(());
        }
        etcd_format::membership::write_member_files(&member_dir, &cluster, &name).map_err(member_files_error)?;
        fsync_dir(&member_dir.join("snap"))?;
        fsync_dir(&member_dir)
    })
    .await
    .map_err(|e| Error::task_failed("the WAL writer", e))??;

    info!(
        revision = stats.revision,
        key_revisions = stats.key_revisions,
        events = stats.events_applied,
        db_size,
        "rebuilt the db"
    );
    Ok(RestoreReport {
        full: chain.full.key.clone(),
        deltas: chain.deltas.iter().map(|d| d.key.clone()).collect(),
        left_out: chain.left_out(),
        new_history,
        stats,
        bytes_fetched: fetched,
        db_size,
        elapsed: Duration::ZERO,
        data_dir: None,
        hashkv,
    })
}

/// Writing the WAL and snap files failed: I/O names the file (a full disk is
/// [`Error::NoSpace`]), anything else is a member or cluster the plan should not have held.
fn member_files_error(e: etcd_format::membership::MembershipError) -> Error {
    use etcd_format::membership::MembershipError as M;
    use etcd_format::{snap::SnapError, wal::WalError};
    match e {
        M::Io { path, source } | M::Wal(WalError::Io { path, source }) | M::Snap(SnapError::Io { path, source }) => {
            Error::io(path, source)
        }
        other => Error::Invalid { what: format!("cannot write the new member's WAL and snap files: {other}") },
    }
}

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
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions { max_fetchers: 6, skip_hash_check: false, memory_budget: crate::deltafeed::DEFAULT_BUDGET }
    }
}

/// Fetches `chain` from `store` and rebuilds it into a fresh db at `db_path`: the full snapshot
/// streams (decompressed, its trailer checked) into a temp file in `temp_dir`, the deltas are
/// fetched and decoded in parallel and applied in order by [`rebuild::rebuild_db`]. The db is
/// fsynced. Returns the rebuild's numbers and the bytes read from the store.
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
    // place (its trailer checked in one read pass): no copy, as etcd's own restore.
    let in_place = match chain.full.name.compression {
        Compression::None => store.local_path(&chain.full.key),
        _ => None,
    };
    let fetched_full = match &in_place {
        Some(path) => verify_in_place(path, &chain.full.key, fetch.skip_hash_check, progress.as_ref()).await,
        None => fetch_full(store.as_ref(), &chain.full, &full_path, fetch.skip_hash_check, progress.clone()).await,
    };
    let full_bytes = match fetched_full {
        Ok(n) => n,
        Err(e) => {
            feed.abort();
            return Err(e);
        }
    };
    // bbolt reads only up to the db's high-water mark, so the trailer after it is ignored.
    let source_path = in_place.unwrap_or_else(|| full_path.to_path_buf());
    let db_out = db_path.to_path_buf();
    let full_key = chain.full.key.clone();
    let (stats, feed) = tokio::task::spawn_blocking(move || -> Result<(RebuildStats, DeltaFeed), Error> {
        let mut feed = feed;
        let written = (|| {
            let source = bbolt::Db::open(&source_path).map_err(|e| Error::corrupt("full snapshot", e))?;
            let out = File::create(&db_out).map_err(|e| Error::io(&db_out, e))?;
            set_private(&db_out)?;
            // Events that repeat the full snapshot's content are compared with its db.
            let repeats = FullRepeats::new(&full_key, &source)?;
            let batches = Checked { feed: &mut feed, check, repeats, key: String::new(), failed: false };
            // The kernel's copy of the db into the page cache runs on a thread of its own.
            let (out, stats) = rebuild::rebuild_db_batches(&source, batches, &opts, ThreadedFile::new(out))
                .map_err(|e| e.at_db_path(&db_out))?;
            let file = out.finish().map_err(|e| Error::io(&db_out, e))?;
            file.sync_all().map_err(|e| Error::io(&db_out, e))?;
            Ok(stats)
        })();
        match written {
            Ok(stats) => Ok((stats, feed)),
            Err(e) => {
                feed.abort();
                // A gap or a revision going backwards inside a damaged delta: its hash says so.
                Err(feed.damage().unwrap_or(e))
            }
        }
    })
    .await
    .map_err(|e| Error::task_failed("the db writer", e))??;
    let fetched = feed.fetched().await?;
    drop(full_path);
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
}

impl Iterator for Checked<'_, '_> {
    type Item = Result<EventBatch, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
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

/// Checks the sha256 trailer of an uncompressed full snapshot that is read in place.
async fn verify_in_place(path: &Path, key: &str, skip_hash_check: bool, progress: &dyn Progress) -> Result<u64, Error> {
    let p = path.to_path_buf();
    let status = tokio::task::spawn_blocking(move || etcd_format::snapshot_file::verify_snapshot_file(&p))
        .await
        .map_err(|e| Error::task_failed("the snapshot verifier", e))?;
    match status {
        Ok(TrailerStatus::Verified) => {}
        Ok(TrailerStatus::NoTrailer) if skip_hash_check => {}
        Ok(TrailerStatus::NoTrailer) => {
            return Err(Error::corrupt(
                key,
                "it has no sha256 trailer (not a whole etcd snapshot, or truncated); \
                 skip the hash check only if it is a raw db copied from a data dir",
            ));
        }
        Err(e) => {
            return Err(Error::corrupt(
                key,
                format!("{e}: the object is damaged; restore from an older full snapshot"),
            ));
        }
    }
    let len = fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    progress.full_bytes(len);
    Ok(len)
}

/// Streams the full snapshot into `path`: decompressed, its sha256 trailer checked and cut off.
/// Returns the compressed bytes read from the store.
async fn fetch_full(
    store: &dyn Snapstore,
    snap: &Snapshot,
    path: &Path,
    skip_hash_check: bool,
    progress: Arc<dyn Progress>,
) -> Result<u64, Error> {
    let span = info_span!("fetch_full", object = %snap.key);
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
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, Error>>(8);
    let out_path = path.to_path_buf();
    let writer_key = key.clone();
    // Inflated members' buffers go back to the inflaters once written.
    let pool = BufferPool::default();
    let writer_pool = pool.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let key = writer_key;
        let file = File::create(&out_path).map_err(|e| Error::io(&out_path, e))?;
        let mut out = HashingWriter { inner: file, trailer: Sha256Trailer::new() };
        if in_blocks {
            // Whole inflated members, in order: written as they are, no copy.
            while let Some(plain) = rx.blocking_recv() {
                let plain = plain?;
                out.write_all(&plain).map_err(|e| Error::io(&out_path, e))?;
                writer_pool.put(Vec::from(plain));
            }
        } else {
            let mut decoder = compress::decoder(compression, ChannelReader::new(rx));
            copy_full(&mut decoder, &mut out, &key, &out_path)?;
        }
        let HashingWriter { inner: file, trailer } = out;
        let db_len = trailer.data_len();
        // An etcd snapshot is whole pages plus the 32-byte sha256 of them.
        match trailer.finish(&key) {
            Ok(TrailerStatus::Verified) => file.set_len(db_len).map_err(|e| Error::io(&out_path, e))?,
            Ok(TrailerStatus::NoTrailer) if skip_hash_check => {}
            Ok(TrailerStatus::NoTrailer) => {
                return Err(Error::corrupt(
                    &key,
                    "it has no sha256 trailer (not a whole etcd snapshot, or truncated); \
                     skip the hash check only if it is a raw db copied from a data dir",
                ));
            }
            Err(e) => {
                return Err(Error::corrupt(
                    &key,
                    format!("{e}: the object is damaged; restore from an older full snapshot"),
                ));
            }
        }
        // No fsync: this file is a temporary input, read back at once and removed; the db
        // written from it is what gets fsynced.
        drop(file);
        Ok(())
    });
    let first = futures::stream::iter([Ok(head.freeze())]);
    let counted = stream.map(|chunk| {
        let chunk = chunk.map_err(Error::from)?;
        fetched += chunk.len() as u64;
        progress.full_bytes(chunk.len() as u64);
        Ok(chunk)
    });
    let compressed = first.chain(counted);
    let mut plain: futures::stream::BoxStream<'_, Result<Bytes, Error>> = if in_blocks {
        // Members inflate on every core; the writer gets their bytes in order.
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 16);
        let member_key = key.clone();
        Box::pin(
            split_members(Box::pin(compressed), key.clone())
                .map(move |member| {
                    let key = member_key.clone();
                    let pool = pool.clone();
                    async move {
                        let member = member?;
                        tokio::task::spawn_blocking(move || {
                            let mut plain = pool.take();
                            blocks::inflate_member_into(&member, &mut plain).map(|()| Bytes::from(plain))
                        })
                        .await
                        .map_err(|e| Error::task_failed("the inflater", e))?
                        .map_err(|e| read_error(&key, e))
                    }
                })
                .buffered(workers + 2),
        )
    } else {
        Box::pin(compressed)
    };
    async {
        while let Some(chunk) = plain.next().await {
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    }
    .instrument(span)
    .await;
    drop(plain);
    drop(tx);
    writer.await.map_err(|e| Error::task_failed("the snapshot writer", e))??;
    Ok(fetched)
}

/// Cuts a stream of compressed bytes into its gzip block members ([`MemberHeader`]).
fn split_members<'a>(
    compressed: futures::stream::BoxStream<'a, Result<Bytes, Error>>,
    key: String,
) -> impl futures::Stream<Item = Result<Bytes, Error>> + 'a {
    let state = (compressed, bytes::BytesMut::new(), 0u64, false);
    futures::stream::unfold(state, move |(mut input, mut pending, mut offset, done)| {
        let key = key.clone();
        async move {
            if done {
                return None;
            }
            loop {
                if pending.len() >= MEMBER_HEADER_LEN {
                    let Some(h) = MemberHeader::parse(&pending) else {
                        let e = Error::corrupt(
                            &key,
                            format!("no gzip block member starts at byte {offset}; the object is damaged"),
                        );
                        return Some((Err(e), (input, pending, offset, true)));
                    };
                    let len = h.member_len as usize;
                    if pending.len() >= len {
                        offset += len as u64;
                        let member = pending.split_to(len).freeze();
                        return Some((Ok(member), (input, pending, offset, false)));
                    }
                }
                match input.next().await {
                    Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e), (input, pending, offset, true))),
                    None if pending.is_empty() => return None,
                    None => {
                        let e = Error::corrupt(
                            &key,
                            format!("it ends inside a gzip block member at byte {offset}; the object is truncated"),
                        );
                        return Some((Err(e), (input, pending, offset, true)));
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
    if size <= FULL_PART {
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

/// Buffers of inflated members, reused: the writer puts back what it has written.
#[derive(Clone, Default)]
struct BufferPool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// Buffers kept at most: those in flight between the inflaters and the writer.
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

/// Writes through to a file while feeding every byte to the trailer check. Unbuffered: every
/// write is a whole member or a 256 KiB read, large enough as they come.
struct HashingWriter {
    inner: File,
    trailer: Sha256Trailer,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.trailer.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn create_private_dirs(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    // etcd wants 0700 on every level (3.5 warns otherwise); create each one explicitly.
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o700).recursive(true);
    builder.create(dir).map_err(|e| Error::io(dir, e))?;
    let mut p = dir;
    while let Some(parent) = p.parent() {
        set_mode(p, 0o700)?;
        if p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".part")) {
            break;
        }
        p = parent;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))
}

fn set_private(path: &Path) -> Result<(), Error> {
    set_mode(path, 0o600)
}

fn fsync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// How the last step of a restore ended.
enum Finished {
    /// `member/` is in the data dir.
    InPlace,
    /// A dry run: the part dir is removed.
    Removed,
    /// The caller went away before the rename: the part dir is removed.
    Cancelled,
}

/// The restore's last step, sync (run through [`blocking`]) and under the cancellation lock: the
/// last chance to honour a cancellation (once `member/` is in place the restore is done), then
/// the part dir renamed into place, or removed after a dry run.
fn finish_member_dir(part: &Path, data_dir: &Path, dry_run: bool, cancel: &Cancel) -> Result<Finished, Error> {
    let _finishing = cancel.finishing();
    let cancelled = cancel.is_cancelled();
    if dry_run || cancelled {
        fs::remove_dir_all(part).map_err(|e| Error::io(part, e))?;
        return Ok(if cancelled { Finished::Cancelled } else { Finished::Removed });
    }
    move_into_place(part, data_dir)?;
    Ok(Finished::InPlace)
}

/// Renames the finished `part` dir into place: the whole dir when the data dir is missing or
/// empty, else its `member/` into the data dir. Either way `member/` appears in one rename.
fn move_into_place(part: &Path, data_dir: &Path) -> Result<(), Error> {
    let empty = match fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(Error::io(data_dir, e)),
    };
    if empty {
        // rename(2) replaces an empty directory.
        fs::rename(part, data_dir).map_err(|e| Error::io(data_dir, e))?;
    } else {
        refuse_existing_member(data_dir)?;
        fs::rename(part.join("member"), data_dir.join("member")).map_err(|e| Error::io(data_dir, e))?;
        fs::remove_dir_all(part).map_err(|e| Error::io(part, e))?;
    }
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsync_dir(parent)?;
    }
    fsync_dir(data_dir)
}
