//! The snapshotter: full snapshots on a schedule, delta snapshots from a watch, garbage
//! collection and defragmentation, as the reference's `etcdbrctl snapshot` does, with every
//! fault a state of one loop: [`Snapshotter`].
//!
//! # The chain it keeps
//!
//! The store holds a chain: a full snapshot at revision `R`, then deltas `Incr-<R+1>-<a>`,
//! `Incr-<a+1>-<b>`… Two numbers carry it:
//!
//! - `chain`: the last revision stored (the previous object's last revision); the next delta
//!   starts at `chain + 1`. It moves only after the store has confirmed an object.
//! - `watched`: the last revision received from the watch. The events in memory are exactly the
//!   revisions `chain+1 ..= watched`, with no hole, and the watch always resumes at `watched+1`.
//!
//! # Faults
//!
//! | what happens | state change |
//! |---|---|
//! | etcd unreachable, restarted, watch stream lost | keep the events; reopen the watch from `watched+1` with backoff |
//! | watch start revision compacted | store what is in memory if possible, forget the chain, reopen the watch at etcd's current revision `C` and take a full snapshot; deltas resume only once a full snapshot at `≥ C` is stored, so no delta spans the hole |
//! | store fails a delta | keep the events, retry with backoff; past `--delta-snapshot-memory-limit` × 4 stop reading the watch (etcd keeps the history; compaction in between is the previous row) |
//! | full snapshot fails | retry with backoff (the very first one failing for a reason retrying cannot fix ends the run) |
//! | SIGTERM / ctrl-c | read the watch up to etcd's current revision (bounded), store the events as a last delta, return |
//!
//! Full snapshots run beside the loop, so the watch is read while a large db streams: a full
//! snapshot at `R` moves `chain` to at least `R` and drops events `≤ R` from memory.

pub mod collect;
pub mod dbrev;
pub mod full;
pub mod leases;
pub mod progress;
pub mod schedule;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::compress::Encoder;
use crate::delta::{Event, EventKind, encode_events};
use crate::error::Error;
use crate::etcd::{EtcdError, EtcdSource, WatchStream};
use crate::gc::{GcOptions, Policy};
use crate::metrics::{KIND_DELTA, KIND_FULL, Metrics};
use crate::name::{Compression, Snapshot, SnapshotKind, SnapshotName};
use crate::store::{Snapstore, WriteOptions};
use full::{FullOptions, FullSnapshot, take_full_snapshot};
use leases::LeaseRecord;
pub use progress::{Progress, ProgressSender};
pub use schedule::Schedule;

/// How long a starting snapshotter waits for the clock to pass the second of the store's newest
/// object (see `Snapshotter::new_history_guard`).
const NEW_SECOND_LIMIT: Duration = Duration::from_secs(3);
/// How long shutdown waits for events etcd has but the watch has not delivered yet.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Attempts to store the last delta at shutdown.
const FINAL_FLUSH_ATTEMPTS: u32 = 3;

/// Everything the snapshotter needs to know (the `snapshot` sub-command's flags, checked).
#[derive(Debug, Clone)]
pub struct SnapshotterConfig {
    /// Store prefix (`--store-prefix`); objects go to `<prefix>/v2/`.
    pub prefix: String,
    /// When to take full snapshots (`--schedule`).
    pub full_schedule: Schedule,
    /// How often buffered events become a delta (`--delta-snapshot-period`); `None` disables
    /// deltas and the watch (the reference does so below 1 s).
    pub delta_period: Option<Duration>,
    /// JSON bytes of buffered events that trigger a delta at once (`--delta-snapshot-memory-limit`).
    pub delta_memory_limit: usize,
    /// Buffered JSON bytes above which the watch is no longer read while the store fails.
    pub max_pending_bytes: usize,
    /// How often garbage is collected (`--garbage-collection-period`); `None` disables it.
    pub gc_period: Option<Duration>,
    /// Which full snapshots garbage collection keeps (`--garbage-collection-policy`, `--max-backups`).
    pub gc_policy: Policy,
    /// Deltas of older streams younger than this are kept (`--delta-snapshot-retention-period`).
    pub delta_retention: Duration,
    /// Compression of new objects (`--compress-snapshots`, `--compression-policy`).
    pub compression: Compression,
    /// Upload parts (`--max-parallel-chunk-uploads`, `--min-chunk-size`).
    pub write: WriteOptions,
    /// Deflate level of gzip and zlib full snapshots (`--compression-level`).
    pub compression_level: u32,
    /// Limit for one full snapshot (`--etcd-snapshot-timeout`).
    pub snapshot_timeout: Duration,
    /// Limit for storing one delta before it is retried.
    pub delta_upload_timeout: Duration,
    /// When to defragment etcd, followed by a full snapshot (`--defragmentation-schedule`).
    pub defrag_schedule: Option<Schedule>,
}

impl SnapshotterConfig {
    /// The reference's defaults, for the store prefix `prefix`.
    pub fn new(prefix: impl Into<String>) -> SnapshotterConfig {
        let limit = 10 * 1024 * 1024;
        SnapshotterConfig {
            prefix: prefix.into(),
            // The reference's default schedule; a constant that parses.
            full_schedule: Schedule::parse("0 */1 * * *").expect("valid default schedule"),
            delta_period: Some(Duration::from_secs(20)),
            delta_memory_limit: limit,
            max_pending_bytes: 4 * limit,
            gc_period: Some(Duration::from_secs(60)),
            gc_policy: Policy::Exponential,
            delta_retention: Duration::ZERO,
            compression: Compression::Gzip,
            write: WriteOptions::default(),
            compression_level: crate::compress::blocks::DEFAULT_FULL_SNAPSHOT_LEVEL,
            snapshot_timeout: Duration::from_secs(15 * 60),
            delta_upload_timeout: Duration::from_secs(120),
            defrag_schedule: None,
        }
    }
}

/// What a run did, returned when it stops.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Full snapshots stored.
    pub full_snapshots: usize,
    /// Delta snapshots stored (including the last one).
    pub delta_snapshots: usize,
    /// The last revision stored when the run stopped.
    pub last_revision: Option<u64>,
    /// The delta stored at shutdown, if there were events to store.
    pub final_delta: Option<Snapshot>,
    /// Times the watch had to be reopened.
    pub watch_reconnects: usize,
    /// Times the watch found its start revision compacted.
    pub compactions_seen: usize,
}

/// A simple capped exponential backoff.
#[derive(Debug, Clone)]
struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max, next: base }
    }
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    fn reset(&mut self) {
        self.next = self.base;
    }
}

/// Leases seen since the last full snapshot and those the buffered events introduce.
#[derive(Debug, Default)]
struct LeaseTracker {
    known: HashSet<i64>,
    pending: Vec<LeaseRecord>,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Maps an error to the `error` label of `etcdbr_snapshotter_failure`.
fn error_class(e: &Error) -> &'static str {
    match e {
        Error::Etcd { .. } => "etcd",
        Error::Store(_) => "store",
        Error::Corrupt { .. } | Error::Conflict { .. } => "corrupt",
        Error::Io { .. } | Error::NoSpace { .. } => "io",
        _ => "other",
    }
}

/// Why a request to a snapshotter failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The snapshotter is not running (not started yet, or stopped).
    #[error("the snapshotter is not running")]
    NotRunning,
    /// Delta snapshots are disabled (no delta period, or one below 1 s).
    #[error("delta snapshots are disabled (no delta period of 1 s or more)")]
    DeltasDisabled,
    /// The operation ran and failed.
    #[error("{0}")]
    Failed(String),
}

/// What a [`SnapshotterHandle`] asks for.
#[derive(Debug)]
enum Request {
    Full { is_final: bool, reply: oneshot::Sender<Result<Snapshot, RequestError>> },
    Delta { reply: oneshot::Sender<Result<Option<Snapshot>, RequestError>> },
    Defragment { reply: oneshot::Sender<Result<(), RequestError>> },
}

/// Asks a running [`Snapshotter`] for an out-of-schedule snapshot or defragmentation (what the
/// HTTP API's `/snapshot/full`, `/snapshot/delta` and a defragmentation trigger call). Cheap to
/// clone; requests are served in order by the snapshotter's loop.
#[derive(Debug, Clone)]
pub struct SnapshotterHandle {
    tx: mpsc::Sender<Request>,
}

impl SnapshotterHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Request,
    ) -> Result<T, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| RequestError::NotRunning)?;
        answer.await.map_err(|_| RequestError::NotRunning)?
    }

    /// Takes a full snapshot now (started after this call, so it holds every write acknowledged
    /// before it) and returns it; `is_final` names it `.final`.
    pub async fn full_snapshot(&self, is_final: bool) -> Result<Snapshot, RequestError> {
        self.ask(|reply| Request::Full { is_final, reply }).await
    }

    /// Stores the buffered events as a delta now; `None` when there were none.
    pub async fn delta_snapshot(&self) -> Result<Option<Snapshot>, RequestError> {
        self.ask(|reply| Request::Delta { reply }).await
    }

    /// Defragments etcd now; a full snapshot follows, as after a scheduled defragmentation.
    pub async fn defragment(&self) -> Result<(), RequestError> {
        self.ask(|reply| Request::Defragment { reply }).await
    }
}

/// Takes full and delta snapshots of one etcd into one store until told to stop.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use brcore::etcd::{EtcdClient, EtcdConfig};
/// use brcore::metrics::Metrics;
/// use brcore::snapshotter::{Schedule, Snapshotter, SnapshotterConfig};
///
/// # async fn run(store: Arc<dyn brcore::Snapstore>) -> Result<(), Box<dyn std::error::Error>> {
/// // Needs a live etcd at the endpoint and a store (see `snapstore::open`).
/// let etcd = Arc::new(EtcdClient::new(EtcdConfig {
///     endpoints: vec!["http://127.0.0.1:2379".into()],
///     ..EtcdConfig::default()
/// }));
/// let mut config = SnapshotterConfig::new("etcd-main");
/// config.full_schedule = Schedule::parse("0 */1 * * *")?; // a full snapshot every hour
/// config.delta_period = Some(Duration::from_secs(20)); // deltas from the watch, every 20 s
/// let snapshotter = Snapshotter::new(etcd, store, config, Metrics::new());
/// let handle = snapshotter.handle(); // on-demand snapshots while it runs
/// let report = snapshotter.run(tokio::signal::ctrl_c().map(|_| ())).await?;
/// # let _ = (handle, report);
/// # Ok(()) }
/// # use futures::FutureExt;
/// ```
#[derive(Debug)]
pub struct Snapshotter {
    source: Arc<dyn EtcdSource>,
    store: Arc<dyn Snapstore>,
    config: SnapshotterConfig,
    metrics: Metrics,
    /// Held while a delta and its lease sidecar are written, and during a GC cycle, so GC never
    /// sees a sidecar whose delta is still being written.
    store_lock: Arc<tokio::sync::Mutex<()>>,
    requests_tx: mpsc::Sender<Request>,
    requests: mpsc::Receiver<Request>,
    /// Where stored snapshots are reported (see [`Snapshotter::report_progress_to`]).
    progress: ProgressSender,
}

/// The loop's state besides the futures it polls (see the module docs).
struct Core {
    chain: Option<u64>,
    /// While `chain` is `None`: the revision a full snapshot must reach to start a chain.
    floor: Option<u64>,
    watched: Option<u64>,
    pending: Vec<Event>,
    pending_json: usize,
    leases: LeaseTracker,
    full_wanted: bool,
    full_done_once: bool,
    full_backoff: Backoff,
    full_retry_at: Option<Instant>,
    watch_backoff: Backoff,
    watch_retry_at: Instant,
    flush_backoff: Backoff,
    flush_retry_at: Option<Instant>,
    next_flush: Option<Instant>,
    next_full: Option<Instant>,
    next_defrag: Option<Instant>,
    deltas_since_full: usize,
    revisions_since_full: u64,
    /// The newest revision the store held when the run began (of any history), to tell that
    /// the first full snapshot begins a new history.
    store_revision_at_start: Option<u64>,
    report: RunReport,
    /// Requests for a full snapshot not yet started, and whether one of them wants `.final`.
    full_waiters_queued: Vec<oneshot::Sender<Result<Snapshot, RequestError>>>,
    full_final_queued: bool,
    /// Requests answered by the full snapshot running now.
    full_waiters_running: Vec<oneshot::Sender<Result<Snapshot, RequestError>>>,
    defrag_waiters: Vec<oneshot::Sender<Result<(), RequestError>>>,
    /// The delta being stored in the background (see [`Snapshotter::start_flush`]) and its last
    /// revision, and the deltas cut while it is stored, oldest first, with their JSON bytes.
    flush_task: Option<JoinHandle<(DeltaJob, Result<u64, Error>)>>,
    storing: Option<u64>,
    queued: std::collections::VecDeque<DeltaJob>,
    queued_json: usize,
}

impl Core {
    /// Drops the chain and everything buffered or queued for it, and asks for the full
    /// snapshot that starts a new one; the watch reopens at etcd's current revision.
    fn forget_chain(&mut self) {
        self.chain = None;
        self.floor = None;
        self.watched = None;
        self.pending.clear();
        self.pending_json = 0;
        self.queued.clear();
        self.queued_json = 0;
        self.leases = LeaseTracker::default();
        self.full_wanted = true;
        self.full_retry_at = None;
        self.watch_retry_at = Instant::now();
    }
}

fn instant_after(schedule: &Schedule) -> Option<Instant> {
    schedule.until_next(SystemTime::now()).map(|d| Instant::now() + d)
}

fn min_instant(items: &[Option<Instant>]) -> Option<Instant> {
    items.iter().flatten().min().copied()
}

impl Snapshotter {
    /// A snapshotter of `source` into `store`, reporting into `metrics`.
    pub fn new(
        source: Arc<dyn EtcdSource>,
        store: Arc<dyn Snapstore>,
        config: SnapshotterConfig,
        metrics: Metrics,
    ) -> Snapshotter {
        let (requests_tx, requests) = mpsc::channel(16);
        Snapshotter {
            source,
            store,
            config,
            metrics,
            store_lock: Arc::new(tokio::sync::Mutex::new(())),
            requests_tx,
            requests,
            progress: ProgressSender::new(),
        }
    }

    /// Reports stored snapshots into `progress` instead of a channel of its own (one channel
    /// can outlive several snapshotters). Reporting never waits for the observers.
    pub fn report_progress_to(mut self, progress: ProgressSender) -> Snapshotter {
        self.progress = progress;
        self
    }

    /// A receiver of the [`Progress`] this snapshotter reports.
    pub fn progress(&self) -> tokio::sync::watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// A handle to ask the running snapshotter for snapshots out of schedule.
    pub fn handle(&self) -> SnapshotterHandle {
        SnapshotterHandle { tx: self.requests_tx.clone() }
    }

    fn full_options(&self) -> FullOptions {
        FullOptions {
            prefix: self.config.prefix.clone(),
            compression: self.config.compression,
            write: self.config.write.clone(),
            compression_level: self.config.compression_level,
            timeout: self.config.snapshot_timeout,
            is_final: false,
        }
    }

    /// Runs until `shutdown` completes, then stores the buffered events as a last delta and
    /// returns. Starts with a full snapshot, as the reference does.
    ///
    /// Errors only when the first full snapshot fails for a reason retrying cannot fix (etcd
    /// refuses the credentials, the store denies access); every later fault is retried.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<RunReport, Error> {
        let deltas = self.config.delta_period.is_some();
        // A snapshotter killed mid-upload leaves its staging object; one that old cannot be
        // in progress any more (its own timeout has passed twice).
        let stale = (2 * self.config.snapshot_timeout).max(Duration::from_secs(3600));
        if let Err(e) = full::remove_stale_staging(&*self.store, &self.config.prefix, stale, unix_now()).await {
            warn!(error = %e, "could not clean up staging objects of unfinished full snapshots; trying at the next start");
        }
        let store_revision_at_start = self.new_history_guard().await;
        let mut core = Core {
            chain: None,
            floor: None,
            watched: None,
            pending: Vec::new(),
            pending_json: 0,
            leases: LeaseTracker::default(),
            full_wanted: true,
            full_done_once: false,
            full_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            full_retry_at: None,
            watch_backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(8)),
            watch_retry_at: Instant::now(),
            flush_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            flush_retry_at: None,
            next_flush: self.config.delta_period.map(|p| Instant::now() + p),
            next_full: instant_after(&self.config.full_schedule),
            next_defrag: self.config.defrag_schedule.as_ref().and_then(instant_after),
            deltas_since_full: 0,
            revisions_since_full: 0,
            store_revision_at_start,
            report: RunReport::default(),
            full_waiters_queued: Vec::new(),
            full_final_queued: false,
            full_waiters_running: Vec::new(),
            defrag_waiters: Vec::new(),
            flush_task: None,
            storing: None,
            queued: Default::default(),
            queued_json: 0,
        };
        let gc_task = self.config.gc_period.map(|period| {
            let store = self.store.clone();
            let prefix = self.config.prefix.clone();
            let policy = self.config.gc_policy;
            let opts = GcOptions {
                delta_retention_secs: self.config.delta_retention.as_secs() as i64,
                last_uploaded_revision: None,
                delete_chunks: false,
            };
            let metrics = self.metrics.clone();
            let lock = self.store_lock.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + period, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let _guard = lock.lock().await;
                    if let Err(e) =
                        collect::collect_garbage(&*store, &prefix, policy, &opts, unix_now(), &metrics).await
                    {
                        warn!(error = %e, "garbage collection failed; trying again next period");
                        metrics.failure("gc");
                    }
                }
            })
        });

        let mut watch: Option<WatchStream> = None;
        let mut full_task: Option<JoinHandle<(Result<FullSnapshot, Error>, Duration)>> = None;
        let mut defrag_task: Option<JoinHandle<(Result<(), EtcdError>, Duration)>> = None;
        let mut requests = std::mem::replace(&mut self.requests, mpsc::channel(1).1);
        let mut requests_closed = false;
        tokio::pin!(shutdown);

        let result = loop {
            // Open the watch when it is down and its backoff has passed.
            if deltas && watch.is_none() && Instant::now() >= core.watch_retry_at {
                match self.open_watch(&mut core).await {
                    Ok(w) => watch = Some(w),
                    Err(e) => {
                        let wait = core.watch_backoff.step();
                        warn!(error = %e, retry_in = ?wait, "cannot watch etcd");
                        self.metrics.failure("etcd");
                        core.watch_retry_at = Instant::now() + wait;
                    }
                }
            }
            // Start a full snapshot when one is wanted, none runs, and a chain can be based on it.
            let full_due = core.full_retry_at.is_none_or(|t| Instant::now() >= t);
            let base_known = !deltas || core.chain.is_some() || core.floor.is_some();
            if core.full_wanted && full_task.is_none() && full_due && base_known {
                core.full_wanted = false;
                let source = self.source.clone();
                let store = self.store.clone();
                let mut opts = self.full_options();
                opts.is_final = std::mem::take(&mut core.full_final_queued);
                core.full_waiters_running = std::mem::take(&mut core.full_waiters_queued);
                full_task = Some(tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let r = take_full_snapshot(&*source, &*store, &opts).await;
                    (r, started.elapsed())
                }));
            }
            self.metrics.snapshot_required.with_label_values(&[KIND_FULL]).set(if core.full_wanted {
                1.0
            } else {
                0.0
            });
            self.metrics.snapshot_required.with_label_values(&[KIND_DELTA]).set(if core.pending.is_empty() {
                0.0
            } else {
                1.0
            });

            let wake = min_instant(&[
                // While a delta is being stored, the next one waits for it (its branch below).
                core.next_flush
                    .filter(|_| core.flush_task.is_none())
                    .map(|t| core.flush_retry_at.map_or(t, |r| r.max(t))),
                core.next_full,
                core.next_defrag,
                core.full_retry_at.filter(|_| core.full_wanted && full_task.is_none()),
                (deltas && watch.is_none()).then_some(core.watch_retry_at),
            ])
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let read_watch = watch.is_some() && core.pending_json + core.queued_json < self.config.max_pending_bytes;

            tokio::select! {
                biased;
                _ = &mut shutdown => break Ok(()),
                joined = async { full_task.as_mut().expect("guarded by the condition").await }, if full_task.is_some() => {
                    full_task = None;
                    let (outcome, took) = joined
                        .unwrap_or_else(|e| (Err(Error::task_failed("the full snapshot task", e)), Duration::ZERO));
                    let answer = match &outcome {
                        Ok(f) => Ok(f.snapshot.clone()),
                        Err(e) => Err(RequestError::Failed(e.to_string())),
                    };
                    for w in core.full_waiters_running.drain(..) {
                        let _ = w.send(answer.clone());
                    }
                    if let Err(e) = self.full_finished(&mut core, outcome, took) {
                        break Err(e);
                    }
                    // Events that reached the memory limit before the first full snapshot gave
                    // them a chain could not be cut then: cut them now, not at the next event.
                    if core.pending_json >= self.config.delta_memory_limit
                        && core.flush_retry_at.is_none_or(|t| Instant::now() >= t)
                    {
                        self.start_flush(&mut core);
                    }
                }
                joined = async { defrag_task.as_mut().expect("guarded by the condition").await }, if defrag_task.is_some() => {
                    defrag_task = None;
                    let (outcome, took) = joined.unwrap_or_else(|e| {
                        (Err(EtcdError::Unavailable { endpoint: self.source.endpoint(), message: format!("defragmentation task: {e}") }), Duration::ZERO)
                    });
                    let endpoint = self.source.endpoint();
                    let ok = outcome.is_ok();
                    self.metrics
                        .defragmentation_duration_seconds
                        .with_label_values(&[endpoint.as_str(), crate::metrics::succeeded(ok)])
                        .observe(took.as_secs_f64());
                    let answer = outcome.as_ref().map(|_| ()).map_err(|e| RequestError::Failed(e.to_string()));
                    for w in core.defrag_waiters.drain(..) {
                        let _ = w.send(answer.clone());
                    }
                    match outcome {
                        Ok(()) => {
                            info!(seconds = took.as_secs_f64(), "etcd defragmented; taking a full snapshot");
                            core.full_wanted = true;
                        }
                        Err(e) => {
                            self.metrics.failure("defragmentation");
                            warn!(error = %e, "defragmentation failed");
                        }
                    }
                }
                joined = async { core.flush_task.as_mut().expect("guarded by the condition").await }, if core.flush_task.is_some() => {
                    core.flush_task = None;
                    let _ = self.delta_finished(&mut core, joined);
                    // Events kept arriving meanwhile: cut the next delta at once if they reached
                    // the memory limit.
                    if core.pending_json >= self.config.delta_memory_limit
                        && core.flush_retry_at.is_none_or(|t| Instant::now() >= t)
                    {
                        self.start_flush(&mut core);
                    }
                }
                request = requests.recv(), if !requests_closed => {
                    match request {
                        Some(Request::Full { is_final, reply }) => {
                            info!(is_final, "full snapshot requested");
                            core.full_waiters_queued.push(reply);
                            core.full_final_queued |= is_final;
                            core.full_wanted = true;
                            core.full_retry_at = None;
                        }
                        Some(Request::Delta { reply }) => {
                            let answer = if !deltas {
                                Err(RequestError::DeltasDisabled)
                            } else {
                                let r = self.flush(&mut core).await.map_err(|e| RequestError::Failed(e.to_string()));
                                if matches!(r, Ok(None)) && core.chain.is_some() {
                                    self.progress.delta_round(None);
                                }
                                core.next_flush = self.config.delta_period.map(|p| Instant::now() + p);
                                r
                            };
                            let _ = reply.send(answer);
                        }
                        Some(Request::Defragment { reply }) => {
                            core.defrag_waiters.push(reply);
                            if defrag_task.is_none() {
                                defrag_task = Some(self.spawn_defrag());
                            }
                        }
                        None => requests_closed = true,
                    }
                }
                item = async { watch.as_mut().expect("guarded by the condition").next().await }, if read_watch => {
                    match item {
                        Some(Ok(batch)) if batch.events.is_empty()
                            && batch.header_revision > 0
                            && core.watched.is_some_and(|w| (batch.header_revision as u64) < w) =>
                        {
                            // etcd is behind revisions it already delivered: it was restored
                            // from an older backup. Its history differs from the chain's.
                            warn!(
                                etcd_revision = batch.header_revision,
                                watched = core.watched,
                                "etcd's revision went backwards (restored from a backup?); starting a new chain"
                            );
                            watch = None;
                            self.restart_chain(&mut core, false).await;
                        }
                        Some(Ok(batch)) => {
                            core.watch_backoff.reset();
                            self.accept(&mut core, batch.events).await;
                            if core.pending_json >= self.config.delta_memory_limit
                                && core.flush_retry_at.is_none_or(|t| Instant::now() >= t)
                            {
                                debug!(bytes = core.pending_json, "delta memory limit reached");
                                self.start_flush(&mut core);
                            }
                        }
                        Some(Err(EtcdError::Compacted { requested, compact_revision })) => {
                            watch = None;
                            self.compacted(&mut core, requested, compact_revision).await;
                        }
                        Some(Err(e)) => {
                            watch = None;
                            self.watch_lost(&mut core, &e.to_string());
                        }
                        None => {
                            watch = None;
                            self.watch_lost(&mut core, "watch stream ended");
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if core.next_flush.is_some_and(|t| now >= t)
                        && core.flush_retry_at.is_none_or(|t| now >= t)
                        && core.flush_task.is_none()
                    {
                        if core.pending.is_empty() && core.chain.is_some() {
                            // A round with nothing to store: the chain is up to date.
                            self.progress.delta_round(None);
                        }
                        self.start_flush(&mut core);
                        core.next_flush = self.config.delta_period.map(|p| Instant::now() + p);
                    }
                    if core.next_full.is_some_and(|t| now >= t) {
                        core.next_full = instant_after(&self.config.full_schedule);
                        if full_task.is_none() {
                            info!("scheduled full snapshot");
                            core.full_wanted = true;
                        }
                    }
                    if core.next_defrag.is_some_and(|t| now >= t) {
                        core.next_defrag = self.config.defrag_schedule.as_ref().and_then(instant_after);
                        if defrag_task.is_none() {
                            defrag_task = Some(self.spawn_defrag());
                        } else {
                            info!("skipping a scheduled defragmentation: the previous one still runs");
                        }
                    }
                }
            }
        };

        if let Some(t) = gc_task {
            t.abort();
        }
        if let Some(t) = defrag_task {
            t.abort();
        }
        result?;
        if let Some(t) = full_task {
            if t.is_finished() {
                // Stored, but not yet taken into account: the last delta builds on it.
                let (outcome, took) =
                    t.await.unwrap_or_else(|e| (Err(Error::task_failed("the full snapshot task", e)), Duration::ZERO));
                if let Err(e) = self.full_finished(&mut core, outcome, took) {
                    warn!(error = %e, "the full snapshot failed");
                }
            } else {
                // Dropping the upload leaves nothing under the object's name (Snapstore contract).
                t.abort();
            }
        }
        info!("stopping: storing the buffered events as a last delta");
        if deltas && core.chain.is_some() {
            if watch.is_none() {
                // Catch up on what etcd has, if it answers now.
                if let Ok(Ok(w)) = tokio::time::timeout(DRAIN_LIMIT, self.open_watch(&mut core)).await {
                    watch = Some(w);
                }
            }
            if let Some(w) = watch.as_mut() {
                self.drain(&mut core, w).await;
            }
        }
        for attempt in 1..=FINAL_FLUSH_ATTEMPTS {
            match self.flush(&mut core).await {
                Ok(snap) => {
                    core.report.final_delta = snap;
                    break;
                }
                Err(e) if attempt < FINAL_FLUSH_ATTEMPTS => {
                    warn!(error = %e, attempt, "storing the last delta failed; retrying");
                    tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
                }
                Err(e) => {
                    warn!(error = %e, events = core.pending.len(), "storing the last delta failed; its events are lost")
                }
            }
        }
        core.report.last_revision = core.chain;
        Ok(core.report)
    }

    /// Looks at the store before the first full snapshot: returns its newest revision, and
    /// waits (at most [`NEW_SECOND_LIMIT`]) until the clock is past the newest object's second,
    /// so this run's objects are never of the same second as the store's newest. When etcd
    /// went back in time (a restore), the first full snapshot must be seen as created after
    /// every object of the history it leaves (see `chain::Histories`).
    async fn new_history_guard(&self) -> Option<u64> {
        match crate::chain::store_head(&*self.store, &self.config.prefix).await {
            Ok(Some((revision, created_on))) => {
                let limit = Instant::now() + NEW_SECOND_LIMIT;
                while unix_now() <= created_on && Instant::now() < limit {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if unix_now() <= created_on {
                    warn!(
                        newest_object_time = created_on,
                        "the store's newest object is dated in the future: is this machine's clock behind?"
                    );
                }
                Some(revision)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "could not list the store before the first full snapshot");
                None
            }
        }
    }

    fn spawn_defrag(&self) -> JoinHandle<(Result<(), EtcdError>, Duration)> {
        let source = self.source.clone();
        info!(endpoint = %source.endpoint(), "defragmenting etcd");
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = source.defragment().await;
            (r, started.elapsed())
        })
    }

    /// Opens the watch at `watched + 1`, learning etcd's revision first when there is no
    /// position yet (start, or after a compaction).
    async fn open_watch(&self, core: &mut Core) -> Result<WatchStream, EtcdError> {
        let from = match core.watched {
            Some(w) => w,
            None => {
                let rev = self.source.status().await?.revision.max(0) as u64;
                core.watched = Some(rev);
                if core.chain.is_none() {
                    core.floor = Some(rev);
                }
                rev
            }
        };
        let w = self.source.watch(from as i64 + 1).await?;
        debug!(from = from + 1, "watching etcd");
        Ok(w)
    }

    fn watch_lost(&self, core: &mut Core, why: &str) {
        let wait = core.watch_backoff.step();
        warn!(reason = why, resume_at = core.watched.map(|w| w + 1), retry_in = ?wait, "etcd watch lost; resuming");
        self.metrics.failure("etcd");
        core.report.watch_reconnects += 1;
        core.watch_retry_at = Instant::now() + wait;
    }

    async fn compacted(&self, core: &mut Core, requested: i64, compact_revision: i64) {
        warn!(requested, compact_revision, "etcd compacted the revisions the watch needs; taking a full snapshot");
        self.metrics.failure("compacted");
        core.report.compactions_seen += 1;
        self.restart_chain(core, true).await;
    }

    /// Forgets the chain and takes a full snapshot to start a new one; the watch reopens at
    /// etcd's current revision. `keep_buffered` first stores the events received so far (they
    /// belong to the old chain and are still valid).
    async fn restart_chain(&self, core: &mut Core, keep_buffered: bool) {
        if keep_buffered && let Err(e) = self.flush(core).await {
            warn!(error = %e, "could not store the events received before the compaction; the full snapshot covers them");
        }
        // A delta of the old chain still being stored finishes before the chain is forgotten.
        self.settle_flush(core).await;
        core.forget_chain();
    }

    fn full_finished(
        &self,
        core: &mut Core,
        outcome: Result<FullSnapshot, Error>,
        took: Duration,
    ) -> Result<(), Error> {
        match outcome {
            Ok(f) => {
                let r = f.snapshot.name.last_revision;
                if let Some(newest) = core.store_revision_at_start.take()
                    && r < newest
                {
                    warn!(
                        revision = r,
                        store_revision = newest,
                        object = %f.snapshot.key,
                        "etcd's revision {r} is below the newest revision {newest} in the store: etcd went back in \
                         time (a restore), and a new history begins with this full snapshot. Restores of the latest \
                         backup follow it; the objects stored before it above revision {r} belong to the abandoned \
                         history and are never applied"
                    );
                }
                self.metrics.observe_snapshot(KIND_FULL, true, took.as_secs_f64(), r, f.snapshot.name.created_on);
                self.progress.full_stored(&f.snapshot);
                core.full_backoff.reset();
                core.full_retry_at = None;
                core.full_done_once = true;
                core.report.full_snapshots += 1;
                match core.chain {
                    Some(c) => core.chain = Some(c.max(r)),
                    None if core.floor.is_none_or(|fl| r >= fl) => {
                        core.chain = Some(r);
                        core.floor = None;
                    }
                    None => {
                        // Taken before the hole the watch jumped over: it cannot start a chain.
                        info!(
                            revision = r,
                            needed = core.floor,
                            "full snapshot predates the watch position; taking another"
                        );
                        core.full_wanted = true;
                        return Ok(());
                    }
                }
                let before = core.pending.len();
                core.pending.retain(|e| e.mod_revision as u64 > r);
                if core.pending.len() != before {
                    core.pending_json = core.pending.iter().map(|e| e.json_len() + 1).sum();
                }
                core.watched = Some(core.watched.map_or(r, |w| w.max(r)));
                core.leases = LeaseTracker::default();
                core.deltas_since_full = 0;
                core.revisions_since_full = 0;
                self.metrics.snapstore_latest_deltas_total.set(0.0);
                self.metrics.snapstore_latest_deltas_revisions_total.set(0.0);
                Ok(())
            }
            Err(e) => {
                self.metrics.observe_snapshot(KIND_FULL, false, took.as_secs_f64(), 0, 0);
                self.metrics.failure(error_class(&e));
                if !core.full_done_once && !e.is_retryable() && !matches!(e, Error::Corrupt { .. }) {
                    warn!(error = %e, "the first full snapshot failed; stopping");
                    return Err(e);
                }
                let wait = core.full_backoff.step();
                warn!(error = %e, retry_in = ?wait, "full snapshot failed");
                core.full_wanted = true;
                core.full_retry_at = Some(Instant::now() + wait);
                Ok(())
            }
        }
    }

    /// Buffers a batch's new events, looking up leases not seen since the last full snapshot.
    async fn accept(&self, core: &mut Core, events: Vec<Event>) {
        // A batch holds whole revisions, so a revision is either entirely new or entirely seen.
        let seen = core.watched;
        for e in events {
            let rev = e.mod_revision.max(0) as u64;
            if seen.is_some_and(|w| rev <= w) {
                continue; // already buffered or stored (a resumed watch repeats them)
            }
            if e.kind == EventKind::Put && e.lease != 0 && core.leases.known.insert(e.lease) {
                let (granted, remaining) = match self.source.lease_ttl(e.lease).await {
                    Ok(Some(t)) => (Some(t.granted_ttl), Some(t.remaining_ttl)),
                    Ok(None) => (None, None),
                    Err(err) => {
                        warn!(lease = e.lease, error = %err, "cannot look up a lease's TTL; recording it as unknown");
                        (None, None)
                    }
                };
                core.leases.pending.push(LeaseRecord {
                    id: e.lease,
                    granted_ttl: granted,
                    remaining_ttl: remaining,
                    first_revision: e.mod_revision,
                });
            }
            core.pending_json += e.json_len() + 1;
            core.watched = Some(rev);
            core.pending.push(e);
        }
    }

    /// Stores the buffered events as a delta (and their lease sidecar first), waiting for it.
    /// A delta already being stored in the background is waited for first, so deltas stay in
    /// order. Does nothing when nothing is buffered or no chain exists yet. On failure the
    /// events stay buffered and a retry is scheduled.
    async fn flush(&self, core: &mut Core) -> Result<Option<Snapshot>, Error> {
        self.settle_flush(core).await;
        match self.take_delta(core) {
            Some(job) => {
                let outcome = store_delta(self.delta_context(), job).await;
                self.delta_finished(core, Ok(outcome))
            }
            None => Ok(None),
        }
    }

    /// Starts storing the buffered events as a delta in the background, unless one is being
    /// stored already: the watch keeps being read meanwhile. etcd drops a watcher that stops
    /// reading into a catch-up mode that sends at most 1,000 revisions per 100 ms, so a watch
    /// that pauses for every upload falls behind a busy etcd for good.
    ///
    /// While one is being stored, the buffered events are cut into a queued delta instead, so
    /// every delta stays near the memory limit; queued deltas are stored one after another.
    fn start_flush(&self, core: &mut Core) {
        if let Some(job) = self.take_delta(core) {
            core.queued_json += job.json;
            core.queued.push_back(job);
        }
        self.store_next(core);
    }

    /// Starts storing the oldest queued delta, unless one is being stored.
    fn store_next(&self, core: &mut Core) {
        if core.flush_task.is_some() {
            return;
        }
        if let Some(job) = core.queued.pop_front() {
            core.queued_json -= job.json;
            core.storing = Some(job.name.last_revision);
            core.flush_task = Some(tokio::spawn(store_delta(self.delta_context(), job)));
        }
    }

    /// Waits until the deltas being stored and queued are stored (or one failed, which puts
    /// them all back into the buffer), taking each into account.
    async fn settle_flush(&self, core: &mut Core) {
        while let Some(task) = core.flush_task.take() {
            let outcome = task.await;
            let _ = self.delta_finished(core, outcome);
        }
    }

    fn delta_context(&self) -> DeltaContext {
        DeltaContext {
            store: self.store.clone(),
            store_lock: self.store_lock.clone(),
            compression: self.config.compression,
            write: self.config.write.clone(),
            timeout: self.config.delta_upload_timeout,
            prefix: self.config.prefix.clone(),
        }
    }

    /// Moves the buffered events and lease records into a delta to store.
    fn take_delta(&self, core: &mut Core) -> Option<DeltaJob> {
        // A delta starts after the last one cut, stored or not.
        let chain = core.queued.back().map(|j| j.name.last_revision).or(core.storing).or(core.chain)?;
        let Some(last) = core.pending.last().map(|e| e.mod_revision.max(0) as u64) else {
            debug!("no events since the last snapshot; no delta");
            return None;
        };
        let name = SnapshotName {
            kind: SnapshotKind::Incr,
            start_revision: chain + 1,
            last_revision: last,
            created_on: unix_now(),
            compression: self.config.compression,
            is_final: false,
        };
        Some(DeltaJob {
            key: name.key_v2(&self.config.prefix),
            name,
            chain,
            events: std::mem::take(&mut core.pending),
            json: std::mem::take(&mut core.pending_json),
            leases: std::mem::take(&mut core.leases.pending),
            started: std::time::Instant::now(),
        })
    }

    /// Takes a stored delta into account, or puts a failed one's events back in front of those
    /// buffered since.
    fn delta_finished(
        &self,
        core: &mut Core,
        outcome: Result<(DeltaJob, Result<u64, Error>), tokio::task::JoinError>,
    ) -> Result<Option<Snapshot>, Error> {
        core.storing = None;
        let (mut job, result) = match outcome {
            Ok(done) => done,
            // Only a panic in the encoder gets here. Its events are gone with the task, so no
            // later delta can follow on: a new chain starts with a full snapshot.
            Err(e) => {
                let e = Error::task_failed("the delta task", e);
                error!(error = %e, "a delta was lost; starting a new chain with a full snapshot");
                core.forget_chain();
                return Err(self.flush_failed(core, e));
            }
        };
        let last = job.name.last_revision;
        match result {
            Ok(size) => {
                let secs = job.started.elapsed().as_secs_f64();
                info!(object = %job.key, events = job.events.len(), size, leases = job.leases.len(), "delta snapshot stored");
                self.metrics.observe_snapshot(KIND_DELTA, true, secs, last, job.name.created_on);
                core.flush_backoff.reset();
                core.flush_retry_at = None;
                core.report.delta_snapshots += 1;
                // A full snapshot that finished while this delta was stored may already cover
                // it; the chain never moves back.
                let extends = core.chain.is_some_and(|c| last > c);
                if extends {
                    core.chain = Some(last);
                    core.deltas_since_full += 1;
                    core.revisions_since_full += last - job.chain;
                    self.metrics.snapstore_latest_deltas_total.set(core.deltas_since_full as f64);
                    self.metrics.snapstore_latest_deltas_revisions_total.set(core.revisions_since_full as f64);
                }
                self.store_next(core);
                let snapshot = Snapshot::new_v2(&self.config.prefix, job.name, size);
                // A delta a full snapshot already covers is not newer than that full snapshot.
                self.progress.delta_round(extends.then_some(&snapshot));
                Ok(Some(snapshot))
            }
            Err(e) => {
                // This delta and the queued ones go back in front of what arrived since, minus
                // what a full snapshot taken meanwhile covers; the next attempt cuts them again.
                let covered = core.chain.unwrap_or(0);
                for mut queued in std::mem::take(&mut core.queued) {
                    job.events.append(&mut queued.events);
                    job.leases.append(&mut queued.leases);
                }
                core.queued_json = 0;
                job.events.retain(|ev| ev.mod_revision.max(0) as u64 > covered);
                job.events.append(&mut core.pending);
                core.pending = job.events;
                core.pending_json = core.pending.iter().map(|ev| ev.json_len() + 1).sum();
                job.leases.retain(|l| l.first_revision.max(0) as u64 > covered);
                job.leases.append(&mut core.leases.pending);
                core.leases.pending = job.leases;
                self.metrics.observe_snapshot(KIND_DELTA, false, job.started.elapsed().as_secs_f64(), 0, 0);
                Err(self.flush_failed(core, e))
            }
        }
    }

    fn flush_failed(&self, core: &mut Core, e: Error) -> Error {
        let wait = core.flush_backoff.step();
        warn!(error = %e, events = core.pending.len(), retry_in = ?wait, "storing a delta failed; keeping its events");
        self.metrics.failure(error_class(&e));
        core.flush_retry_at = Some(Instant::now() + wait);
        e
    }

    /// Reads the watch until it has delivered etcd's current revision, within [`DRAIN_LIMIT`].
    async fn drain(&self, core: &mut Core, watch: &mut WatchStream) {
        let target = match tokio::time::timeout(DRAIN_LIMIT, self.source.status()).await {
            Ok(Ok(s)) => s.revision.max(0) as u64,
            _ => return,
        };
        let deadline = Instant::now() + DRAIN_LIMIT;
        while core.watched.is_some_and(|w| w < target) {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Ok(Some(Ok(batch))) => {
                    self.accept(core, batch.events).await;
                    if core.pending_json >= self.config.delta_memory_limit && self.flush(core).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
}

/// A delta on its way to the store: the buffered events it took, to be put back on failure.
struct DeltaJob {
    name: SnapshotName,
    key: String,
    /// The chain's last revision when the delta was cut (its start revision minus one).
    chain: u64,
    events: Vec<Event>,
    /// Their JSON bytes, as counted against the memory limit.
    json: usize,
    leases: Vec<LeaseRecord>,
    started: std::time::Instant,
}

/// What storing a delta needs, owned, so it can run as a task of its own.
struct DeltaContext {
    store: Arc<dyn Snapstore>,
    store_lock: Arc<tokio::sync::Mutex<()>>,
    compression: Compression,
    write: WriteOptions,
    timeout: Duration,
    prefix: String,
}

/// Encodes and compresses a delta off the async threads, then writes its lease sidecar (if
/// any) and the delta, holding the store lock so garbage collection never sees the one
/// without the other. Hands the job back with the result.
async fn store_delta(ctx: DeltaContext, job: DeltaJob) -> (DeltaJob, Result<u64, Error>) {
    let compression = ctx.compression;
    let events = job.events;
    let encoded = tokio::task::spawn_blocking(move || {
        let content = encode_events(&events);
        let mut enc = Encoder::new(compression, Vec::with_capacity(content.len() / 4));
        let r = std::io::Write::write_all(&mut enc, &content).and_then(|()| enc.finish());
        (events, r)
    })
    .await;
    let (events, compressed) = match encoded {
        Ok((events, Ok(bytes))) => (events, bytes),
        Ok((events, Err(e))) => {
            // The encoder writes into memory: only a bug of ours fails it.
            return (DeltaJob { events, ..job }, Err(Error::internal(format!("compressing a delta: {e}"))));
        }
        Err(e) => {
            return (DeltaJob { events: Vec::new(), ..job }, Err(Error::task_failed("the delta encoder", e)));
        }
    };
    let job = DeltaJob { events, ..job };
    let result = {
        let _guard = ctx.store_lock.lock().await;
        let write = async {
            if !job.leases.is_empty() {
                let body = leases::encode(&job.name, &job.leases);
                let sidecar = leases::sidecar_key(&ctx.prefix, &job.name);
                let data: crate::ByteStream = Box::pin(futures::stream::iter([Ok(bytes::Bytes::from(body))]));
                ctx.store.write(&sidecar, data, &ctx.write).await?;
            }
            let data: crate::ByteStream = Box::pin(futures::stream::iter([Ok(bytes::Bytes::from(compressed))]));
            ctx.store.write(&job.key, data, &ctx.write).await
        };
        match tokio::time::timeout(ctx.timeout, write).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Store(crate::StoreError::Other {
                key: job.key.clone(),
                retryable: true,
                source: format!("no answer within {:?}", ctx.timeout).into(),
            })),
        }
    };
    (job, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let steps: Vec<u64> = (0..5).map(|_| b.step().as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.step().as_secs(), 1);
    }
}
