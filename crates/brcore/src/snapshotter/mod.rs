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
//!
//! # Where things are
//!
//! This file is the loop ([`Snapshotter::run`], a dispatcher: each branch of its `select!` is an
//! `on_*` method on the loop's state) and the handlers of full snapshots, defragmentation,
//! requests and timers; it is over 700 lines because one state machine reads best in one
//! place. Apart from it: `config.rs` (what it is told, what a run reports), `handle.rs`
//! (requests), `deltas.rs` (the delta pipeline), `watch.rs` (the watch), `full.rs` (one full
//! snapshot), `dbrev.rs` (the revision read from the db), `collect.rs` and `leases.rs`.

pub mod collect;
mod config;
pub mod dbrev;
mod deltas;
pub mod full;
mod handle;
pub mod leases;
pub mod progress;
pub mod schedule;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::delta::Event;
use crate::error::Error;
use crate::etcd::{EtcdError, EtcdSource, WatchStream};
use crate::gc::GcOptions;
use crate::metrics::{KIND_DELTA, KIND_FULL, Metrics};
use crate::name::Snapshot;
use crate::store::Snapstore;
pub use config::{RunReport, SnapshotterConfig};
use deltas::{DeltaJob, LeaseTracker};
use full::{FullSnapshot, take_full_snapshot};
use handle::Request;
pub use handle::{RequestError, SnapshotterHandle};
pub use progress::{Progress, ProgressSender};
pub use schedule::Schedule;

/// How long a starting snapshotter waits for the clock to pass the second of the store's newest
/// object (see `Snapshotter::new_history_guard`).
const NEW_SECOND_LIMIT: Duration = Duration::from_secs(3);
/// How long shutdown waits for events etcd has but the watch has not delivered yet.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How long a stop waits for a full snapshot in progress before abandoning it.
const FULL_STOP_GRACE: Duration = Duration::from_secs(5);
/// Attempts to store the last delta at shutdown.
const FINAL_FLUSH_ATTEMPTS: u32 = 3;

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
/// let etcd = Arc::new(EtcdClient::new(EtcdConfig::new(["http://127.0.0.1:2379"])));
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
struct LoopState {
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

impl LoopState {
    /// The state a run begins in: a full snapshot wanted, the watch due, the timers set.
    fn new(config: &SnapshotterConfig, store_revision_at_start: Option<u64>) -> LoopState {
        LoopState {
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
            next_flush: config.delta_period.map(|p| Instant::now() + p),
            next_full: instant_after(&config.full_schedule),
            next_defrag: config.defrag_schedule.as_ref().and_then(instant_after),
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
        }
    }

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

/// What a full snapshot task returns: the snapshot (or why not) and how long it took.
type FullOutcome = (Result<FullSnapshot, Error>, Duration);
type FullTask = JoinHandle<FullOutcome>;
/// What a defragmentation task returns.
type DefragOutcome = (Result<(), EtcdError>, Duration);
type DefragTask = JoinHandle<DefragOutcome>;

/// When the loop must wake even if nothing arrives: the next timer, or a backoff that ends
/// (the full snapshot's while one is wanted and none runs, the watch's while it is down).
fn next_wake(core: &LoopState, watch_down: bool, full_idle: bool) -> Instant {
    min_instant(&[
        // While a delta is being stored, the next one waits for it (the loop's branch for it).
        core.next_flush.filter(|_| core.flush_task.is_none()).map(|t| core.flush_retry_at.map_or(t, |r| r.max(t))),
        core.next_full,
        core.next_defrag,
        core.full_retry_at.filter(|_| core.full_wanted && full_idle),
        watch_down.then_some(core.watch_retry_at),
    ])
    .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
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
        let mut core = LoopState::new(&self.config, store_revision_at_start);
        let gc_task = self.spawn_gc();
        let mut watch: Option<WatchStream> = None;
        let mut full_task: Option<FullTask> = None;
        let mut defrag_task: Option<DefragTask> = None;
        let mut requests = std::mem::replace(&mut self.requests, mpsc::channel(1).1);
        let mut requests_closed = false;
        tokio::pin!(shutdown);

        // One turn: start what is due, then wait for the first of the branches and hand it to
        // its `on_*` method.
        let result = loop {
            if deltas && watch.is_none() && Instant::now() >= core.watch_retry_at {
                watch = self.reopen_watch(&mut core).await;
            }
            if full_task.is_none() {
                full_task = self.start_full_if_due(&mut core);
            }
            self.publish_required(&core);
            let wake = next_wake(&core, deltas && watch.is_none(), full_task.is_none());
            let read_watch = watch.is_some() && core.pending_json + core.queued_json < self.config.max_pending_bytes;
            tokio::select! {
                biased;
                _ = &mut shutdown => break Ok(()),
                joined = async { full_task.as_mut().expect("guarded by the condition").await }, if full_task.is_some() => {
                    full_task = None;
                    if let Err(e) = self.on_full_done(&mut core, joined) {
                        break Err(e);
                    }
                }
                joined = async { defrag_task.as_mut().expect("guarded by the condition").await }, if defrag_task.is_some() => {
                    defrag_task = None;
                    self.on_defrag_done(&mut core, joined);
                }
                joined = async { core.flush_task.as_mut().expect("guarded by the condition").await }, if core.flush_task.is_some() => {
                    core.flush_task = None;
                    self.on_delta_stored(&mut core, joined);
                }
                request = requests.recv(), if !requests_closed => match request {
                    Some(request) => self.on_request(&mut core, request, &mut defrag_task).await,
                    None => requests_closed = true,
                },
                item = async { watch.as_mut().expect("guarded by the condition").next().await }, if read_watch => {
                    self.on_watch(&mut core, item, &mut watch).await;
                }
                _ = tokio::time::sleep_until(wake) => self.on_timer(&mut core, full_task.is_some(), &mut defrag_task),
            }
        };

        if let Some(t) = gc_task {
            t.abort();
        }
        if let Some(t) = defrag_task {
            t.abort();
        }
        result?;
        Ok(self.stop(core, watch, full_task).await)
    }

    /// Garbage collection on its period, as a task of its own (it takes the store lock).
    fn spawn_gc(&self) -> Option<JoinHandle<()>> {
        let period = self.config.gc_period?;
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
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _guard = lock.lock().await;
                if let Err(e) = collect::collect_garbage(&*store, &prefix, policy, &opts, unix_now(), &metrics).await {
                    warn!(error = %e, "garbage collection failed; trying again next period");
                    metrics.failure("gc");
                }
            }
        }))
    }

    /// Starts a full snapshot when one is wanted, its backoff has passed and a chain can be
    /// based on it (none runs: the caller asks only then).
    fn start_full_if_due(&self, core: &mut LoopState) -> Option<FullTask> {
        let full_due = core.full_retry_at.is_none_or(|t| Instant::now() >= t);
        let base_known = self.config.delta_period.is_none() || core.chain.is_some() || core.floor.is_some();
        if !(core.full_wanted && full_due && base_known) {
            return None;
        }
        core.full_wanted = false;
        let source = self.source.clone();
        let store = self.store.clone();
        let mut opts = self.config.full_options();
        opts.is_final = std::mem::take(&mut core.full_final_queued);
        core.full_waiters_running = std::mem::take(&mut core.full_waiters_queued);
        Some(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = take_full_snapshot(&*source, &*store, &opts).await;
            (r, started.elapsed())
        }))
    }

    /// `etcdbr_snapshot_required`: whether a full snapshot is wanted and events wait for a delta.
    fn publish_required(&self, core: &LoopState) {
        let as_gauge = |b: bool| if b { 1.0 } else { 0.0 };
        self.metrics.snapshot_required.with_label_values(&[KIND_FULL]).set(as_gauge(core.full_wanted));
        self.metrics.snapshot_required.with_label_values(&[KIND_DELTA]).set(as_gauge(!core.pending.is_empty()));
    }

    /// Cuts a delta at once when the buffered events reached the memory limit (and the store's
    /// backoff allows).
    fn cut_at_memory_limit(&self, core: &mut LoopState) {
        if core.pending_json >= self.config.delta_memory_limit
            && core.flush_retry_at.is_none_or(|t| Instant::now() >= t)
        {
            debug!(bytes = core.pending_json, "delta memory limit reached");
            self.start_flush(core);
        }
    }

    /// A full snapshot ended: its waiters are answered and the chain follows it. `Err` ends the
    /// run (the first full snapshot failed for a reason retrying cannot fix).
    fn on_full_done(
        &self,
        core: &mut LoopState,
        joined: Result<FullOutcome, tokio::task::JoinError>,
    ) -> Result<(), Error> {
        let (outcome, took) =
            joined.unwrap_or_else(|e| (Err(Error::task_failed("the full snapshot task", e)), Duration::ZERO));
        let answer = match &outcome {
            Ok(f) => Ok(f.snapshot.clone()),
            Err(e) => Err(RequestError::Failed(e.to_string())),
        };
        for w in core.full_waiters_running.drain(..) {
            let _ = w.send(answer.clone());
        }
        self.full_finished(core, outcome, took)?;
        // Events that reached the memory limit before the first full snapshot gave them a
        // chain could not be cut then: cut them now, not at the next event.
        self.cut_at_memory_limit(core);
        Ok(())
    }

    /// A defragmentation ended: its waiters are answered; a full snapshot follows a success.
    fn on_defrag_done(&self, core: &mut LoopState, joined: Result<DefragOutcome, tokio::task::JoinError>) {
        let (outcome, took) = joined.unwrap_or_else(|e| {
            let message = format!("defragmentation task: {e}");
            (Err(EtcdError::Unavailable { endpoint: self.source.endpoint(), message }), Duration::ZERO)
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

    /// The delta stored in the background ended; the next one is cut at once if the events
    /// that kept arriving meanwhile reached the memory limit.
    fn on_delta_stored(
        &self,
        core: &mut LoopState,
        joined: Result<(DeltaJob, Result<u64, Error>), tokio::task::JoinError>,
    ) {
        let _ = self.delta_finished(core, joined);
        self.cut_at_memory_limit(core);
    }

    /// A request from a [`SnapshotterHandle`].
    async fn on_request(&self, core: &mut LoopState, request: Request, defrag_task: &mut Option<DefragTask>) {
        match request {
            Request::Full { is_final, reply } => {
                info!(is_final, "full snapshot requested");
                core.full_waiters_queued.push(reply);
                core.full_final_queued |= is_final;
                core.full_wanted = true;
                core.full_retry_at = None;
            }
            Request::Delta { reply } => {
                let answer = if self.config.delta_period.is_none() {
                    Err(RequestError::DeltasDisabled)
                } else {
                    let r = self.flush(core).await.map_err(|e| RequestError::Failed(e.to_string()));
                    if matches!(r, Ok(None)) && core.chain.is_some() {
                        self.progress.delta_round(None);
                    }
                    core.next_flush = self.config.delta_period.map(|p| Instant::now() + p);
                    r
                };
                let _ = reply.send(answer);
            }
            Request::Defragment { reply } => {
                core.defrag_waiters.push(reply);
                if defrag_task.is_none() {
                    *defrag_task = Some(self.spawn_defrag());
                }
            }
        }
    }

    /// A timer passed: the delta period, the full snapshot schedule, the defragmentation
    /// schedule, or a backoff (whose work the next turn starts).
    fn on_timer(&self, core: &mut LoopState, full_running: bool, defrag_task: &mut Option<DefragTask>) {
        let now = Instant::now();
        if core.next_flush.is_some_and(|t| now >= t)
            && core.flush_retry_at.is_none_or(|t| now >= t)
            && core.flush_task.is_none()
        {
            if core.pending.is_empty() && core.chain.is_some() {
                // A round with nothing to store: the chain is up to date.
                self.progress.delta_round(None);
            }
            self.start_flush(core);
            core.next_flush = self.config.delta_period.map(|p| Instant::now() + p);
        }
        if core.next_full.is_some_and(|t| now >= t) {
            core.next_full = instant_after(&self.config.full_schedule);
            if !full_running {
                info!("scheduled full snapshot");
                core.full_wanted = true;
            }
        }
        if core.next_defrag.is_some_and(|t| now >= t) {
            core.next_defrag = self.config.defrag_schedule.as_ref().and_then(instant_after);
            if defrag_task.is_none() {
                *defrag_task = Some(self.spawn_defrag());
            } else {
                info!("skipping a scheduled defragmentation: the previous one still runs");
            }
        }
    }

    /// Shutdown: a full snapshot already stored is taken into account (one still running is
    /// dropped), the watch is read up to etcd's current revision, and the buffered events are
    /// stored as a last delta.
    async fn stop(
        &self,
        mut core: LoopState,
        mut watch: Option<WatchStream>,
        full_task: Option<FullTask>,
    ) -> RunReport {
        let deltas = self.config.delta_period.is_some();
        if let Some(mut t) = full_task {
            // A full snapshot in flight may be stored already or nearly: wait for it a little,
            // as the last delta builds on it. Dropping an upload that is not done leaves nothing
            // under the object's name (Snapstore contract).
            match tokio::time::timeout(FULL_STOP_GRACE, &mut t).await {
                Ok(joined) => {
                    let (outcome, took) = joined
                        .unwrap_or_else(|e| (Err(Error::task_failed("the full snapshot task", e)), Duration::ZERO));
                    if let Err(e) = self.full_finished(&mut core, outcome, took) {
                        warn!(error = %e, "the full snapshot failed");
                    }
                }
                Err(_) => {
                    info!(waited = ?FULL_STOP_GRACE, "stopping: abandoning the full snapshot in progress");
                    t.abort();
                }
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
        core.report
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

    fn full_finished(
        &self,
        core: &mut LoopState,
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
                core.leases.after_full(r);
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
