//! Backups proven restorable without a restore: [`verify`] fetches and checks every object of
//! the chain, rebuilds it offline into a temp dir with the restore's own code
//! ([`crate::restore::rebuild_chain`]), runs the bbolt check and computes etcd's HashKV of the
//! result, and compares it with a live etcd's HashKV at the same revision when one is given.
//!
//! # Comparing with a live member
//!
//! HashKV at revision R covers the key history up to R, minus what compaction removed. The live
//! member has usually compacted since the full snapshot was taken, so the rebuilt db's own hash
//! at R (the one a restore will report) differs from the live one even when the data is equal.
//! The comparison therefore hashes the rebuilt db *as compacted at the live member's compaction
//! revision* ([`etcd_format::hashkv::hash_kv_as_compacted`]), taken from the same HashKV answer.
//! Three outcomes per revision: bit-exact, differs, or cannot compare (etcd compacted past R, or
//! still holds history older than the full snapshot). When R differs, a bisection over the
//! revisions both still hold finds the first one that differs and the object holding it.
//!
//! The store is only read; no data dir is involved. The rebuilt db lives in a temp dir under
//! [`VerifyPlan::temp_dir`], removed when the verification ends (also on error). Memory is the
//! restore's: the fetch window, the bulk writer, and the hash's per-key state.
//!
//! [`Verifier`] runs verifications on a period (the server's `--verification-period`) and
//! publishes each result and the `etcdbr_verification_*` metrics.
//!
//! (The file passes 700 lines only with its unit tests, kept beside the code they pin.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bbolt::Db;
use etcd_format::hashkv::{self, HashKv};
use etcd_format::mvcc::Error as MvccError;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::chain::{self, Chain, Target};
use crate::error::Error;
use crate::etcd::{EtcdError, EtcdSource, LiveHashKv};
use crate::metrics::Metrics;
use crate::rebuild::{LeasePolicy, Membership, RebuildOptions, RebuildStats};
use crate::restore::{self, FetchOptions, Progress};
use crate::store::Snapstore;

/// What to verify and how: [`VerifyPlan::new`], then set what differs from its defaults.
/// Fields may be added in any release (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyPlan {
    /// The store prefix (`--store-prefix`).
    pub prefix: String,
    /// The newest state, or the state at a revision (`--to-revision`).
    pub target: Target,
    /// Where the temp dir holding the rebuilt db is made; it needs room for the db.
    pub temp_dir: PathBuf,
    /// Deltas fetched at once.
    pub max_fetchers: usize,
    /// Accept a full snapshot without a sha256 trailer.
    pub skip_hash_check: bool,
    /// Memory for deltas read and decoded ahead of the db writer, as a restore's.
    pub memory_budget: u64,
    /// Revisions hashed (and compared): the chain's end, plus `samples - 1` spread over the
    /// chain's object boundaries. At least 1.
    pub samples: usize,
}

impl VerifyPlan {
    /// The latest chain under `prefix`, rebuilt in `temp_dir`, hashed at its end.
    pub fn new(prefix: impl Into<String>, temp_dir: impl Into<PathBuf>) -> VerifyPlan {
        VerifyPlan {
            prefix: prefix.into(),
            target: Target::Latest,
            temp_dir: temp_dir.into(),
            max_fetchers: 6,
            skip_hash_check: false,
            memory_budget: crate::deltafeed::DEFAULT_BUDGET,
            samples: 1,
        }
    }
}

/// How one revision compared with the live etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Comparison {
    /// No etcd was given.
    NotCompared,
    /// etcd's HashKV equals the rebuilt db's, hashed as compacted where etcd is.
    #[serde(rename_all = "camelCase")]
    BitExact {
        /// etcd's hash.
        live_hash: u32,
        /// etcd's compaction revision when it hashed.
        live_compact_revision: i64,
    },
    /// etcd's HashKV differs from the rebuilt db's.
    #[serde(rename_all = "camelCase")]
    Differs {
        /// etcd's hash.
        live_hash: u32,
        /// The rebuilt db's hash as compacted at `live_compact_revision`.
        offline_hash: u32,
        /// etcd's compaction revision when it hashed.
        live_compact_revision: i64,
    },
    /// The two cannot be compared at this revision; the offline hash is still the one a
    /// restore will report.
    CannotCompare {
        /// Why (etcd compacted past it, or holds older history than the full snapshot).
        reason: String,
    },
    /// etcd did not answer.
    EtcdUnreachable {
        /// What failed.
        error: String,
    },
}

/// One hashed revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionCheck {
    /// The revision.
    pub revision: i64,
    /// The rebuilt db's HashKV at it, with the db's own compaction: what `etcdctl endpoint
    /// hashkv --rev` reports on a member restored from this chain. The hash to keep.
    pub hash: u32,
    /// The rebuilt db's compaction revision (-1: never compacted).
    pub compact_revision: i64,
    /// The comparison with etcd.
    #[serde(flatten)]
    pub comparison: Comparison,
}

/// The first revision at which the backup and etcd disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Difference {
    /// The revision.
    pub revision: i64,
    /// The object that holds it (a delta, or the full snapshot).
    pub object: String,
    /// Whether the revision before it was seen equal (false: it is the lowest revision both
    /// still hold, or the bisection was cut short, so the difference may start earlier).
    pub exact: bool,
}

impl std::fmt::Display for Difference {
    /// `revision R[ (or earlier)], held by OBJECT`: the words `etcdbrctl verify` and the
    /// server's status page both say it in.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let earlier = if self.exact { "" } else { " (or earlier)" };
        write!(f, "revision {}{earlier}, held by {}", self.revision, self.object)
    }
}

/// The verdict of one verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every object checked, the rebuild clean, and etcd's HashKV equal at the chain's end.
    BitExact,
    /// etcd's HashKV differs at some revision (see [`VerifyReport::difference`]).
    Differs,
    /// Every object checked and the rebuild clean, but etcd cannot be compared at the chain's
    /// end (it compacted past it); keep the offline hash.
    CannotCompare,
    /// Every object checked and the rebuild clean; no etcd was given.
    NotCompared,
    /// Every object checked and the rebuild clean, but etcd did not answer.
    EtcdUnreachable,
}

impl Outcome {
    /// Whether the backup itself proved restorable and nothing contradicts etcd.
    pub fn is_success(self) -> bool {
        !matches!(self, Outcome::Differs | Outcome::EtcdUnreachable)
    }
}

/// An object left out of the rebuild, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    /// The object's key.
    pub key: String,
    /// Why it was left out.
    pub why: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// The store prefix.
    pub prefix: String,
    /// When the verification started (unix seconds).
    pub started_at: i64,
    /// The full snapshot's key.
    pub full: String,
    /// The deltas applied, in order.
    pub deltas: Vec<String>,
    /// Objects fetched and checked but left out (their revisions are held by others).
    pub left_out: Vec<LeftOut>,
    /// The full snapshot's own revision (the db's, which its name may understate).
    pub base_revision: i64,
    /// The revision the rebuilt chain reaches.
    pub revision: i64,
    /// The rebuilt db's compaction revision (-1: never compacted).
    pub compact_revision: i64,
    /// Revisions in the rebuilt db's `key` bucket.
    pub key_revisions: u64,
    /// Events applied from the deltas.
    pub events_applied: u64,
    /// Bytes read from the store.
    pub bytes_fetched: u64,
    /// Size of the rebuilt db.
    pub db_size: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The etcd endpoint compared with, if any.
    pub endpoint: Option<String>,
    /// The hashed revisions, ascending; the last is the chain's end.
    pub checks: Vec<RevisionCheck>,
    /// The first revision that differs from etcd, if one does.
    pub difference: Option<Difference>,
    /// The verdict.
    pub outcome: Outcome,
}

impl VerifyReport {
    /// The check at the chain's end.
    pub fn end(&self) -> Option<&RevisionCheck> {
        self.checks.last()
    }
}

/// Verifies the chain `plan` names in `store`, comparing with `live` when given.
///
/// Errors are those of a restore: [`Error::NotFound`] (no backup), [`Error::Gap`],
/// [`Error::Corrupt`] naming the damaged object, [`Error::Conflict`], [`Error::Store`]. A chain
/// whose content ends before its names say is [`Error::Corrupt`] naming its last object. etcd's
/// answers never make an error: they are [`Comparison`]s.
pub async fn verify(
    store: Arc<dyn Snapstore>,
    plan: &VerifyPlan,
    live: Option<&dyn EtcdSource>,
    progress: Arc<dyn Progress>,
) -> Result<VerifyReport, Error> {
    let started = Instant::now();
    let started_at = unix_now();
    let chain = chain::list_chain(store.as_ref(), &plan.prefix, plan.target).await?;
    info!(full = %chain.full.key, deltas = chain.deltas.len(), "verifying {} and {} deltas", chain.full.key, chain.deltas.len());
    progress.start(chain.full.size, chain.deltas.len());
    let known_lease_ttls = restore::lease_sidecars(store.as_ref(), &plan.prefix, &chain).await?;

    std::fs::create_dir_all(&plan.temp_dir).map_err(|e| Error::io(&plan.temp_dir, e))?;
    // Removed when it goes out of scope, whatever happens below.
    let work = tempfile::Builder::new()
        .prefix("etcdbr-verify-")
        .tempdir_in(&plan.temp_dir)
        .map_err(|e| Error::io(&plan.temp_dir, e))?;
    let db_path = work.path().join("db");
    let to_revision = match plan.target {
        Target::Revision(r) => Some(r as i64),
        _ => None,
    };
    let opts = RebuildOptions {
        to_revision,
        to_time_nanos: match plan.target {
            Target::Time(t) => Some(t as i128 * 1_000_000_000 + 999_999_999),
            _ => None,
        },
        // HashKV covers the `key` bucket only; the membership stays as the snapshot has it.
        membership: Membership::Keep,
        lease_policy: LeasePolicy::default(),
        bump_revision: None,
        // The history as it was: the comparison is with etcd's, not with a restored member's.
        bump_past: None,
        writer: bbolt::WriterOptions::default(),
        known_lease_ttls,
    };
    let fetch = FetchOptions {
        max_fetchers: plan.max_fetchers.max(1),
        skip_hash_check: plan.skip_hash_check,
        memory_budget: plan.memory_budget,
        // The db is read back at once: keep it in the page cache.
        direct_io: false,
    };
    let (stats, bytes_fetched) =
        restore::rebuild_chain(store.clone(), &chain, opts, &db_path, work.path(), fetch, progress).await?;
    check_reaches_its_names(&chain, &stats, plan.target)?;
    let db_size = std::fs::metadata(&db_path).map_err(|e| Error::io(&db_path, e))?.len();

    let path = db_path.clone();
    let db = Arc::new(blocking(move || open_checked(&path)).await?);
    let samples = sample_revisions(&chain, &stats, plan.samples);
    let mut checks = Vec::with_capacity(samples.len());
    for revision in samples {
        let d = db.clone();
        let own = match blocking(move || hash(&d, revision, None)).await? {
            Some(h) => h,
            // At or below the db's own compaction: nothing to hash there.
            None => continue,
        };
        let comparison = match live {
            None => Comparison::NotCompared,
            Some(source) => compare_at(&db, source, revision).await?,
        };
        checks.push(RevisionCheck { revision, hash: own.hash, compact_revision: own.compact_revision, comparison });
    }
    let difference = match (live, checks.iter().position(|c| matches!(c.comparison, Comparison::Differs { .. }))) {
        (Some(source), Some(i)) => {
            let floor = checks[..i]
                .iter()
                .rev()
                .find(|c| matches!(c.comparison, Comparison::BitExact { .. }))
                .map(|c| (c.revision, true));
            Some(first_difference(&db, source, &chain, &stats, &checks[i], floor).await?)
        }
        _ => None,
    };
    drop(db);
    drop(work);
    let outcome = match (&difference, checks.last().map(|c| &c.comparison)) {
        (Some(_), _) => Outcome::Differs,
        (None, Some(Comparison::BitExact { .. })) => Outcome::BitExact,
        (None, Some(Comparison::EtcdUnreachable { .. })) => Outcome::EtcdUnreachable,
        (None, Some(Comparison::NotCompared) | None) => Outcome::NotCompared,
        (None, Some(_)) => Outcome::CannotCompare,
    };
    let report = VerifyReport {
        prefix: plan.prefix.clone(),
        started_at,
        full: chain.full.key.clone(),
        deltas: chain.deltas.iter().map(|d| d.key.clone()).collect(),
        left_out: chain.left_out().into_iter().map(|(key, why)| LeftOut { key, why }).collect(),
        base_revision: stats.base_revision,
        revision: stats.revision,
        compact_revision: checks.last().map_or(-1, |c| c.compact_revision),
        key_revisions: stats.key_revisions,
        events_applied: stats.events_applied,
        bytes_fetched,
        db_size,
        seconds: started.elapsed().as_secs_f64(),
        endpoint: live.map(|l| l.endpoint()),
        checks,
        difference,
        outcome,
    };
    info!(revision = report.revision, outcome = ?report.outcome, seconds = report.seconds, "verification finished");
    Ok(report)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::task_failed("the verifier task", e))?
}

/// Opens a rebuilt db and runs the full bbolt check on it: a db that etcdbr itself wrote and
/// that fails the check is etcdbr's bug. Shared by `verify` and `restore --dry-run`.
pub fn open_checked(path: &std::path::Path) -> Result<Db, Error> {
    let db = Db::open(path).map_err(|e| match e {
        bbolt::Error::Io { source, .. } => Error::io(path, source),
        e => Error::internal(format!("the rebuilt db {} does not open: {e}", path.display())),
    })?;
    let report = db.check();
    if !report.is_ok() {
        return Err(Error::internal(format!("the rebuilt db fails its bbolt check: {:?}", report.findings)));
    }
    db.release_pages();
    Ok(db)
}

/// HashKV of the rebuilt db at `revision`, with its own compaction (`compact_at` `None`) or as
/// compacted at `compact_at`. `None` when the revision is at or below the compaction.
fn hash(db: &Db, revision: i64, compact_at: Option<i64>) -> Result<Option<HashKv>, Error> {
    let result = match compact_at {
        None => hashkv::hash_kv(db, Some(revision)),
        Some(c) => hashkv::hash_kv_as_compacted(db, Some(revision), c),
    };
    db.release_pages();
    match result {
        Ok(h) => Ok(Some(h)),
        Err(MvccError::Compacted { .. }) => Ok(None),
        Err(e @ MvccError::CompactedLater { .. }) => Err(Error::Refused { why: e.to_string() }),
        Err(MvccError::Bolt(bbolt::Error::Io { source, .. })) => Err(Error::io("the rebuilt db", source)),
        Err(e) => Err(Error::internal(format!("hashing the rebuilt db at revision {revision}: {e}"))),
    }
}

/// A chain whose events end before its last object's name says was cut short (a truncated
/// delta): a restore would silently stop early.
fn check_reaches_its_names(chain: &Chain, stats: &RebuildStats, target: Target) -> Result<(), Error> {
    let by_name = chain.last_revision() as i64;
    let expected = match target {
        Target::Revision(r) => by_name.min(r as i64),
        // A time target stops inside a delta by the events' own times.
        Target::Time(_) => return Ok(()),
        Target::Latest => by_name,
    };
    if stats.revision < expected {
        let last = chain.deltas.last().unwrap_or(&chain.full);
        return Err(Error::corrupt(
            &last.key,
            format!(
                "its name says the chain reaches revision {by_name}, but its events end at revision {}",
                stats.revision
            ),
        ));
    }
    Ok(())
}

/// The revisions to hash: the chain's end, and up to `samples - 1` more spread evenly over the
/// chain's object boundaries (the full snapshot's revision, each delta's last), ascending.
fn sample_revisions(chain: &Chain, stats: &RebuildStats, samples: usize) -> Vec<i64> {
    let end = stats.revision;
    let mut points: Vec<i64> = std::iter::once(stats.base_revision)
        .chain(chain.deltas.iter().map(|d| d.name.last_revision as i64))
        .filter(|&r| r > 0 && r < end)
        .collect();
    points.sort_unstable();
    points.dedup();
    let want = samples.saturating_sub(1).min(points.len());
    let mut picked: Vec<i64> = match want {
        0 => Vec::new(),
        1 => vec![points[points.len() / 2]],
        n => (0..n).map(|k| points[(k * (points.len() - 1) + (n - 1) / 2) / (n - 1)]).collect(),
    };
    picked.push(end);
    picked.dedup();
    picked
}

/// How often a member that has not reached a revision yet is asked again.
const FUTURE_RETRIES: usize = 5;

/// Asks `live` for its HashKV at `revision` (again, briefly, while it has not reached it).
async fn live_hash(live: &dyn EtcdSource, revision: i64) -> Result<LiveHashKv, EtcdError> {
    let mut tries = 0;
    loop {
        match live.hash_kv(revision).await {
            Err(EtcdError::FutureRevision { .. }) if tries < FUTURE_RETRIES => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// Compares the rebuilt db with `live` at `revision`.
async fn compare_at(db: &Arc<Db>, live: &dyn EtcdSource, revision: i64) -> Result<Comparison, Error> {
    let answer = match live_hash(live, revision).await {
        Ok(a) => a,
        Err(EtcdError::Compacted { compact_revision, .. }) => {
            let at = if compact_revision > 0 {
                format!(" (its compaction revision is {compact_revision})")
            } else {
                String::new()
            };
            return Ok(Comparison::CannotCompare { reason: format!("etcd compacted past revision {revision}{at}") });
        }
        Err(EtcdError::FutureRevision { message, .. }) => {
            return Ok(Comparison::CannotCompare {
                reason: format!("etcd has not reached revision {revision} ({message}): it is behind the backups"),
            });
        }
        Err(e) => return Ok(Comparison::EtcdUnreachable { error: e.to_string() }),
    };
    let d = db.clone();
    let live_compact = answer.compact_revision;
    match blocking(move || hash(&d, revision, Some(live_compact))).await {
        Ok(Some(h)) if h.hash == answer.hash => {
            Ok(Comparison::BitExact { live_hash: answer.hash, live_compact_revision: live_compact })
        }
        Ok(Some(h)) => Ok(Comparison::Differs {
            live_hash: answer.hash,
            offline_hash: h.hash,
            live_compact_revision: live_compact,
        }),
        // etcd answered, so its compaction is below the revision: the db's own is not.
        Ok(None) => Ok(Comparison::CannotCompare {
            reason: format!("the backup's full snapshot was compacted past revision {revision}"),
        }),
        Err(Error::Refused { why }) => Ok(Comparison::CannotCompare {
            reason: format!("etcd still holds history older than the backup's full snapshot: {why}"),
        }),
        Err(e) => Err(e),
    }
}

/// Bisection steps at most: enough for 2^40 revisions.
const BISECT_STEPS: usize = 40;

/// Finds the first revision that differs, between `floor` (the highest revision seen equal, if
/// any) and the differing check `bad`, by bisection over the revisions both sides still hold.
async fn first_difference(
    db: &Arc<Db>,
    live: &dyn EtcdSource,
    chain: &Chain,
    stats: &RebuildStats,
    bad: &RevisionCheck,
    floor: Option<(i64, bool)>,
) -> Result<Difference, Error> {
    let Comparison::Differs { live_compact_revision, .. } = bad.comparison else {
        return Err(Error::internal("first_difference called on a revision that does not differ"));
    };
    // Below both compactions nothing can be hashed; the seen-equal floor is exact.
    let compacted = live_compact_revision.max(bad.compact_revision).max(0);
    let (mut good, mut exact) = match floor {
        Some((r, _)) if r >= compacted => (r, true),
        _ => (compacted, false),
    };
    let mut differs = bad.revision;
    for _ in 0..BISECT_STEPS {
        if differs - good <= 1 {
            break;
        }
        let mid = good + (differs - good) / 2;
        match compare_at(db, live, mid).await? {
            Comparison::BitExact { .. } => {
                good = mid;
                exact = true;
            }
            Comparison::Differs { .. } => differs = mid,
            other => {
                warn!(revision = mid, result = ?other, "bisection stopped: etcd cannot be compared there");
                exact = false;
                break;
            }
        }
    }
    let exact = exact && differs - good == 1;
    Ok(Difference { revision: differs, object: holder(chain, stats, differs), exact })
}

/// The key of the object that holds `revision`.
fn holder(chain: &Chain, stats: &RebuildStats, revision: i64) -> String {
    if revision <= stats.base_revision {
        return chain.full.key.clone();
    }
    chain
        .deltas
        .iter()
        .find(|d| d.name.start_revision as i64 <= revision && revision <= d.name.last_revision as i64)
        .unwrap_or(&chain.full)
        .key
        .clone()
}

/// One run of the [`Verifier`]: when, and what it found or why it failed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// When it started (unix seconds).
    pub started_at: i64,
    /// When it finished (unix seconds).
    pub finished_at: i64,
    /// Whether it succeeded (see [`Outcome::is_success`]; an error is a failure).
    pub succeeded: bool,
    /// The report, when the chain could be verified.
    pub report: Option<VerifyReport>,
    /// Why it failed, when it did not get that far.
    pub error: Option<String>,
}

/// Runs [`verify`] on a period against the live etcd, for the server's sidecar: publishes each
/// [`Verification`] and keeps the `etcdbr_verification_*` metrics.
#[derive(Debug)]
pub struct Verifier {
    store: Arc<dyn Snapstore>,
    live: Arc<dyn EtcdSource>,
    plan: VerifyPlan,
    metrics: Metrics,
    results: watch::Sender<Option<Arc<Verification>>>,
}

impl Verifier {
    /// A verifier of `plan`'s chain in `store` against `live`, recording into `metrics`.
    pub fn new(store: Arc<dyn Snapstore>, live: Arc<dyn EtcdSource>, plan: VerifyPlan, metrics: Metrics) -> Verifier {
        let (results, _) = watch::channel(None);
        Verifier { store, live, plan, metrics, results }
    }

    /// A receiver of the newest result (`None` until the first run finishes).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Verification>>> {
        self.results.subscribe()
    }

    /// Verifies once, records the metrics and publishes the result.
    pub async fn run_once(&self) -> Arc<Verification> {
        let started_at = unix_now();
        let result =
            verify(self.store.clone(), &self.plan, Some(self.live.as_ref()), Arc::new(restore::NoProgress)).await;
        let finished_at = unix_now();
        let run = match result {
            Ok(report) => {
                let succeeded = report.outcome.is_success();
                if succeeded {
                    info!(revision = report.revision, outcome = ?report.outcome, "scheduled verification succeeded");
                } else {
                    warn!(revision = report.revision, outcome = ?report.outcome, difference = ?report.difference, "scheduled verification failed");
                }
                Verification { started_at, finished_at, succeeded, report: Some(report), error: None }
            }
            Err(e) => {
                warn!(error = %e, "scheduled verification failed");
                Verification { started_at, finished_at, succeeded: false, report: None, error: Some(e.to_string()) }
            }
        };
        match (&run.report, run.succeeded) {
            (Some(r), true) => self.metrics.observe_verification(true, finished_at, r.revision),
            _ => self.metrics.observe_verification(false, finished_at, 0),
        }
        let run = Arc::new(run);
        self.results.send_replace(Some(run.clone()));
        run
    }

    /// Verifies every `period` (the first after one period) until `until` completes. A run in
    /// progress when `until` completes is abandoned (its temp dir is removed).
    pub async fn run(&self, period: Duration, until: impl std::future::Future<Output = ()>) {
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => return,
                _ = tokio::time::sleep(period) => {}
            }
            tokio::select! {
                _ = &mut until => return,
                _ = self.run_once() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectMeta;

    fn chain(names: &[&str]) -> Chain {
        let listing: Vec<ObjectMeta> = names.iter().map(|n| ObjectMeta { key: format!("p/v2/{n}"), size: 1 }).collect();
        Chain::select(&listing, "p", Target::Latest).unwrap()
    }

    fn stats(base: i64, revision: i64) -> RebuildStats {
        RebuildStats { base_revision: base, revision, ..Default::default() }
    }

    fn long_chain() -> Chain {
        chain(&[
            "Full-00000000-00000010-1",
            "Incr-00000011-00000020-2",
            "Incr-00000021-00000030-3",
            "Incr-00000031-00000040-4",
            "Incr-00000041-00000050-5",
            "Incr-00000051-00000060-6",
        ])
    }

    #[test]
    fn samples_spread_over_the_object_boundaries_and_end_at_the_chain_end() {
        let c = long_chain();
        let s = stats(12, 60);
        assert_eq!(sample_revisions(&c, &s, 1), [60]);
        assert_eq!(sample_revisions(&c, &s, 0), [60]);
        assert_eq!(sample_revisions(&c, &s, 2), [30, 60], "the middle boundary and the end");
        assert_eq!(sample_revisions(&c, &s, 3), [12, 50, 60]);
        assert_eq!(sample_revisions(&c, &s, 6), [12, 20, 30, 40, 50, 60]);
        assert_eq!(sample_revisions(&c, &s, 100), [12, 20, 30, 40, 50, 60]);
        // A full snapshot alone: its own revision.
        let c = chain(&["Full-00000000-00000010-1"]);
        assert_eq!(sample_revisions(&c, &stats(12, 12), 5), [12]);
    }

    #[test]
    fn a_difference_is_named_by_the_object_that_holds_it() {
        let c = long_chain();
        let s = stats(12, 60);
        assert_eq!(holder(&c, &s, 12), "p/v2/Full-00000000-00000010-1");
        assert_eq!(holder(&c, &s, 11), "p/v2/Full-00000000-00000010-1", "the full's db holds more than its name");
        assert_eq!(holder(&c, &s, 13), "p/v2/Incr-00000011-00000020-2");
        assert_eq!(holder(&c, &s, 41), "p/v2/Incr-00000041-00000050-5");
        assert_eq!(holder(&c, &s, 60), "p/v2/Incr-00000051-00000060-6");
    }

    #[test]
    fn a_chain_whose_events_end_before_its_names_is_corrupt() {
        let c = long_chain();
        assert!(check_reaches_its_names(&c, &stats(12, 60), Target::Latest).is_ok());
        let e = check_reaches_its_names(&c, &stats(12, 55), Target::Latest).unwrap_err();
        assert!(matches!(&e, Error::Corrupt { object, .. } if object == "p/v2/Incr-00000051-00000060-6"), "{e}");
        assert!(check_reaches_its_names(&c, &stats(12, 45), Target::Revision(45)).is_ok());
        assert!(check_reaches_its_names(&c, &stats(12, 44), Target::Revision(45)).is_err());
        assert!(check_reaches_its_names(&c, &stats(12, 60), Target::Revision(1000)).is_ok());
    }

    #[test]
    fn outcomes_that_count_as_success() {
        assert!(
            Outcome::BitExact.is_success() && Outcome::CannotCompare.is_success() && Outcome::NotCompared.is_success()
        );
        assert!(!Outcome::Differs.is_success() && !Outcome::EtcdUnreachable.is_success());
        let c = RevisionCheck {
            revision: 5,
            hash: 7,
            compact_revision: -1,
            comparison: Comparison::BitExact { live_hash: 7, live_compact_revision: 3 },
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"revision": 5, "hash": 7, "compactRevision": -1, "result": "bit-exact", "liveHash": 7, "liveCompactRevision": 3})
        );
    }
}
