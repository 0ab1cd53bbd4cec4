//! Offline restore: the latest full snapshot plus every later delta, rebuilt into a data dir
//! that etcd boots, without running etcd.
//!
//! The path, in one pass over each input:
//! 1. [`crate::chain::list_chain`] lists the store and picks the full snapshot and its deltas.
//! 2. The full snapshot streams from the store through decompression into a temp file (a bbolt
//!    db must be random-access to read); its sha256 trailer is checked beside step 3, and a db
//!    rebuilt from a snapshot whose trailer does not match is thrown away.
//! 3. Deltas are fetched and decoded in parallel (bounded by `max_fetchers`), verified, and fed in
//!    order to [`crate::rebuild::rebuild_db`], which writes the new `member/snap/db`.
//! 4. The WAL and snap file of the new member are written, everything is fsynced, and the
//!    result is renamed into place.
//!
//! Everything is built in `<data-dir>.part` on the data dir's filesystem; the data dir only ever
//! holds a complete `member/` dir. The store is only read.
//!
//! Steps 2 and 3 are [`crate::fetch`], shared with compact and verification (re-exported here:
//! [`rebuild_chain`], [`FetchOptions`], [`lease_sidecars`]). This file is the restore's API (the
//! plan, the report, the [`Restorer`] contract with its examples) and the member dir's
//! lifecycle around the rebuild; that is why it is somewhat over 700 lines.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::{Instrument, info, info_span, warn};

use crate::chain::{self, Chain, Target};
use crate::error::Error;
pub(crate) use crate::fetch::read_error;
pub use crate::fetch::{FetchOptions, lease_sidecars, rebuild_chain};
use crate::rebuild::{LeasePolicy, Membership, RebuildOptions, RebuildStats};
use crate::store::Snapstore;
use etcd_format::datadir;
use etcd_format::membership::Cluster;

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
    let member = datadir::member_dir(data_dir);
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
    let member_dir = datadir::member_dir(part);
    let snap_dir = datadir::snap_dir(&member_dir);
    let temp_dir = plan.temp_dir.clone().unwrap_or_else(|| part.to_path_buf());
    let dirs = (snap_dir.clone(), temp_dir.clone());
    blocking("creating the restore's directories", move || {
        let (snap_dir, temp_dir) = dirs;
        create_private_dirs(&snap_dir)?;
        fs::create_dir_all(&temp_dir).map_err(|e| Error::io(&temp_dir, e))
    })
    .await?;
    let db_path = datadir::db_path(&member_dir);
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
        // The restored db is read by etcd later, not now (a dry run reads it back at once).
        direct_io: !plan.dry_run,
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

    let cluster = plan.cluster.clone();
    let name = plan.name.clone();
    let dry_run = plan.dry_run;
    tokio::task::spawn_blocking(move || {
        if dry_run {
            return Ok(());
        }
        etcd_format::membership::write_member_files(&member_dir, &cluster, &name).map_err(member_files_error)?;
        fsync_dir(&snap_dir)?;
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

pub(crate) fn set_private(path: &Path) -> Result<(), Error> {
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
        fs::rename(datadir::member_dir(part), datadir::member_dir(data_dir)).map_err(|e| Error::io(data_dir, e))?;
        fs::remove_dir_all(part).map_err(|e| Error::io(part, e))?;
    }
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsync_dir(parent)?;
    }
    fsync_dir(data_dir)
}
