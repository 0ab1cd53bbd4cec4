//! [`SnapshotLeases`]: the full- and delta-snapshot Leases, renewed after each snapshot.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brcore::name::Snapshot;
use brcore::snapshotter::Progress;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::rules::{delta_snapshot_patch, full_snapshot_patch};
use crate::{LeaseClient, LeaseError};

/// The reference's `FullSnapshotLeaseUpdateInterval`: how long a failed update waits before it
/// is tried again (unless a newer snapshot comes first).
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(60);
/// The reference's `LeaseUpdateTimeoutDuration`: the limit for one update, retries on conflict
/// included.
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Waits between attempts after a conflict (client-go's `retry.DefaultBackoff`: 4 attempts,
/// 10 ms × 5ⁿ).
const CONFLICT_BACKOFF: [Duration; 3] =
    [Duration::from_millis(10), Duration::from_millis(50), Duration::from_millis(250)];

/// What renewing a full-snapshot Lease did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullRenewal {
    /// `renewTime` (and `holderIdentity` if it was lower) were written.
    Renewed,
    /// The Lease holds a higher revision already; left alone.
    Newer,
}

/// The full- and delta-snapshot Leases (`--full-snapshot-lease-name`,
/// `--delta-snapshot-lease-name`) of one namespace.
#[derive(Debug, Clone)]
pub struct SnapshotLeases {
    client: LeaseClient,
    full: String,
    delta: String,
    retry: Duration,
}

fn created_on(snapshot: &Snapshot) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(snapshot.name.created_on).unwrap_or(0))
}

impl SnapshotLeases {
    /// The Leases `full` and `delta`, through `client`.
    pub fn new(client: LeaseClient, full: impl Into<String>, delta: impl Into<String>) -> SnapshotLeases {
        SnapshotLeases { client, full: full.into(), delta: delta.into(), retry: DEFAULT_RETRY_INTERVAL }
    }

    /// How long a failed update waits before it is retried (default [`DEFAULT_RETRY_INTERVAL`]).
    pub fn with_retry_interval(mut self, retry: Duration) -> SnapshotLeases {
        self.retry = retry;
        self
    }

    /// Renews the full-snapshot Lease for `snapshot` (its last revision and creation time),
    /// re-reading the Lease after a conflict (4 attempts), all within [`UPDATE_TIMEOUT`].
    pub async fn renew_full(&self, snapshot: &Snapshot) -> Result<FullRenewal, LeaseError> {
        let name = self.full.as_str();
        let attempts = async {
            let mut waits = CONFLICT_BACKOFF.iter();
            loop {
                let lease = self.client.get(name).await?;
                let Some(patch) = full_snapshot_patch(name, &lease, snapshot.name.last_revision, created_on(snapshot))?
                else {
                    return Ok(FullRenewal::Newer);
                };
                match self.client.patch(name, &patch).await {
                    Ok(_) => return Ok(FullRenewal::Renewed),
                    Err(LeaseError::Conflict { .. }) if let Some(wait) = waits.next() => {
                        debug!(lease = name, "full snapshot lease changed meanwhile; reading it again");
                        tokio::time::sleep(*wait).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        tokio::time::timeout(UPDATE_TIMEOUT, attempts).await.unwrap_or_else(|_| {
            Err(LeaseError::Unreachable {
                name: name.to_string(),
                message: format!("no update within {UPDATE_TIMEOUT:?}"),
            })
        })
    }

    /// Renews the delta-snapshot Lease after a delta round; `newest_delta` is the last
    /// revision of the newest delta after the newest full snapshot (`None` before any).
    pub async fn renew_delta(&self, newest_delta: Option<u64>) -> Result<(), LeaseError> {
        let name = self.delta.as_str();
        let update = async {
            let lease = self.client.get(name).await?;
            let patch = delta_snapshot_patch(name, &lease, newest_delta, SystemTime::now())?;
            self.client.patch(name, &patch).await.map(|_| ())
        };
        tokio::time::timeout(UPDATE_TIMEOUT, update).await.unwrap_or_else(|_| {
            Err(LeaseError::Unreachable {
                name: name.to_string(),
                message: format!("no update within {UPDATE_TIMEOUT:?}"),
            })
        })
    }

    /// Follows `progress` until `stop`: renews the full-snapshot Lease for each new full
    /// snapshot and the delta-snapshot Lease after each delta round. A failed update is
    /// logged and retried after the retry interval, or at once when newer progress arrives;
    /// progress that arrives while an update runs is taken up next (only the newest counts).
    /// Whatever is pending when the process starts (a full snapshot stored before this task
    /// ran) is renewed first.
    pub async fn run(self, mut progress: watch::Receiver<Progress>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        // What the Leases hold now, as far as this task knows.
        let mut renewed_full: Option<(u64, i64)> = None;
        let mut renewed_rounds = 0u64;
        let mut full_retry: Option<Instant> = None;
        let mut delta_retry: Option<Instant> = None;
        info!(
            namespace = self.client.namespace(),
            full = self.full.as_str(),
            delta = self.delta.as_str(),
            "renewing the snapshot leases"
        );
        loop {
            let now = Instant::now();
            let p = progress.borrow_and_update().clone();
            let full = p.full.as_ref().filter(|f| renewed_full != Some((f.name.last_revision, f.name.created_on)));
            if let Some(f) = full
                && full_retry.is_none_or(|t| now >= t)
            {
                match self.renew_full(f).await {
                    Ok(outcome) => {
                        info!(
                            lease = self.full.as_str(),
                            revision = f.name.last_revision,
                            ?outcome,
                            "full snapshot lease renewed"
                        );
                        renewed_full = Some((f.name.last_revision, f.name.created_on));
                        full_retry = None;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?self.retry, "full snapshot lease update failed");
                        full_retry = Some(Instant::now() + self.retry);
                    }
                }
            }
            if p.delta_rounds != renewed_rounds && delta_retry.is_none_or(|t| now >= t) {
                let newest = p.delta.as_ref().map(|d| d.name.last_revision);
                match self.renew_delta(newest).await {
                    Ok(()) => {
                        debug!(lease = self.delta.as_str(), revision = newest, "delta snapshot lease renewed");
                        renewed_rounds = p.delta_rounds;
                        delta_retry = None;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?self.retry, "delta snapshot lease update failed");
                        delta_retry = Some(Instant::now() + self.retry);
                    }
                }
            }
            if progress.has_changed().unwrap_or(false) {
                // Newer progress arrived during the updates: a retry waits no longer.
                full_retry = None;
                delta_retry = None;
                continue;
            }
            let wake = [full_retry, delta_retry].into_iter().flatten().min();
            tokio::select! {
                _ = &mut stop => return,
                changed = progress.changed() => {
                    if changed.is_err() {
                        // The snapshotter side is gone: nothing new will come. Finish retries.
                        if wake.is_none() {
                            stop.await;
                            return;
                        }
                        tokio::select! {
                            _ = &mut stop => return,
                            _ = tokio::time::sleep_until(wake.expect("checked above")) => {}
                        }
                    } else {
                        full_retry = None;
                        delta_retry = None;
                    }
                }
                _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
            }
        }
    }
}
