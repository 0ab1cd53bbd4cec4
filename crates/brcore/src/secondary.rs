//! Backup sync to a secondary store, as the reference's server does it (v0.43.0,
//! `--secondary-backup-sync-enabled`): while this sidecar snapshots (it leads), every backup of
//! the primary store that the secondary lacks is copied there with [`crate::copy`] (all backup
//! sets, ten objects at once, `.final` dropped), at once and then every sync period; and the
//! secondary store is garbage-collected with the primary's policy every garbage-collection
//! period ([`crate::snapshotter::collect`]). The primary store is only read.
//!
//! Copies and collections take turns, so a collection never deletes an object a copy is
//! writing. A failed round is logged and tried again next period, as the reference does.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::copy::{CopyPlan, CopyReport, copy};
use crate::error::Error;
use crate::gc::{GcOptions, Policy};
use crate::metrics::Metrics;
use crate::snapshotter::collect::{GcReport, collect_garbage};
use crate::store::{Snapstore, WriteOptions};

/// Objects copied at once by a sync round (the reference's fixed ten).
pub const SYNC_PARALLEL_COPIES: usize = 10;

/// How the secondary store is kept in sync: [`SyncConfig::new`], then set what differs from its
/// defaults. Fields may be added in any release (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyncConfig {
    /// The primary store's prefix (`--store-prefix`).
    pub primary_prefix: String,
    /// The secondary store's prefix (`--secondary-store-prefix`).
    pub secondary_prefix: String,
    /// How often backups are copied (`--secondary-backup-sync-period`); the first copy is made
    /// at once.
    pub period: Duration,
    /// Upload parts written to the secondary store.
    pub write: WriteOptions,
    /// How often the secondary store is garbage-collected (`--garbage-collection-period`;
    /// `None`: never, as for the primary).
    pub gc_period: Option<Duration>,
    /// Which full snapshots the collection keeps (the primary's policy).
    pub gc_policy: Policy,
    /// The collection's other settings (the primary's).
    pub gc_options: GcOptions,
}

impl SyncConfig {
    /// Copies from `primary_prefix` to `secondary_prefix` every `period`, default upload parts,
    /// no garbage collection of the secondary.
    pub fn new(primary_prefix: impl Into<String>, secondary_prefix: impl Into<String>, period: Duration) -> SyncConfig {
        SyncConfig {
            primary_prefix: primary_prefix.into(),
            secondary_prefix: secondary_prefix.into(),
            period,
            write: WriteOptions::default(),
            gc_period: None,
            gc_policy: Policy::Exponential,
            gc_options: GcOptions::default(),
        }
    }
}

/// One copy round: the primary's backups the secondary lacks, copied. An empty primary is
/// nothing to copy.
pub async fn sync_once(
    primary: Arc<dyn Snapstore>,
    secondary: Arc<dyn Snapstore>,
    config: &SyncConfig,
) -> Result<CopyReport, Error> {
    let plan = CopyPlan {
        source_prefix: config.primary_prefix.clone(),
        dest_prefix: config.secondary_prefix.clone(),
        max_backups: None,
        max_age_secs: None,
        parallel: SYNC_PARALLEL_COPIES,
        write: config.write.clone(),
        now: unix_now(),
    };
    match copy(primary, secondary, &plan).await {
        Err(Error::NotFound { what }) => {
            debug!(%what, "no backups in the primary store yet: nothing to sync");
            Ok(CopyReport::default())
        }
        other => other,
    }
}

/// One collection of the secondary store.
pub async fn collect_once(
    secondary: &dyn Snapstore,
    config: &SyncConfig,
    metrics: &Metrics,
) -> Result<GcReport, Error> {
    collect_garbage(secondary, &config.secondary_prefix, config.gc_policy, &config.gc_options, unix_now(), metrics)
        .await
}

/// Copies and collects until `stop` completes (see the module docs).
pub async fn run(
    primary: Arc<dyn Snapstore>,
    secondary: Arc<dyn Snapstore>,
    config: SyncConfig,
    metrics: Metrics,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    info!(period = ?config.period, gc_period = ?config.gc_period, "starting the backup sync to the secondary store");
    let mut copies = tokio::time::interval_at(Instant::now(), config.period.max(Duration::from_millis(1)));
    copies.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Never fires without a period; the reference's collector waits one period before the first run.
    let gc_period = config.gc_period.unwrap_or(Duration::from_secs(u32::MAX as u64));
    let mut collections = tokio::time::interval_at(Instant::now() + gc_period, gc_period);
    collections.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => {
                info!("backup sync to the secondary store stopped");
                return;
            }
            _ = copies.tick() => match sync_once(primary.clone(), secondary.clone(), &config).await {
                Ok(r) => info!(copied = r.copied.len(), bytes = r.bytes, present = r.skipped.len(), "synced backups to the secondary store"),
                Err(e) => {
                    warn!(error = %e, "could not copy backups to the secondary store; trying again next period");
                    metrics.failure("secondary");
                }
            },
            _ = collections.tick(), if config.gc_period.is_some() => {
                match collect_once(secondary.as_ref(), &config, &metrics).await {
                    Ok(r) => info!(deleted = r.deleted.len(), failed = r.failed.len(), "garbage-collected the secondary store"),
                    Err(e) => {
                        warn!(error = %e, "garbage collection of the secondary store failed; trying again next period");
                        metrics.failure("gc");
                    }
                }
            }
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
