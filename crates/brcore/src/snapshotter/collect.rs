//! One garbage-collection cycle: list, plan with [`crate::gc`], delete.

use std::collections::HashSet;

use tracing::{debug, info, warn};

use super::leases::parse_sidecar_key;
use crate::error::Error;
use crate::gc::{self, DeletionKind, GcOptions, Policy};
use crate::metrics::{KIND_CHUNK, KIND_DELTA, KIND_FULL, Metrics, succeeded};
use crate::name::{SnapshotKind, parse_listing};
use crate::store::Snapstore;

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Keys deleted.
    pub deleted: Vec<String>,
    /// Keys whose deletion failed.
    pub failed: Vec<String>,
}

/// Runs one garbage-collection cycle over the snapshots under `prefix` at unix time `now`.
///
/// The plan comes from [`gc::plan`], which never touches the latest full snapshot and its
/// deltas. Deletion follows the reference: a stream whose deltas could not all be deleted keeps
/// its full snapshot until the next cycle. Lease sidecars (see [`super::leases`]) are deleted
/// once no delta with their revision range is left and they belong to an older stream.
pub async fn collect_garbage(
    store: &dyn Snapstore,
    prefix: &str,
    policy: Policy,
    opts: &GcOptions,
    now: i64,
    metrics: &Metrics,
) -> Result<GcReport, Error> {
    let prefix = prefix.trim_end_matches('/');
    let listing = store.list(prefix).await?;
    let (snaps, ignored) = parse_listing(listing.iter().map(|o| (o.key.as_str(), o.size)));
    let snaps: Vec<_> = snaps.into_iter().filter(|s| s.prefix == prefix).collect();
    let plan = gc::plan(&snaps, policy, now, opts);
    let mut report = GcReport::default();
    let mut failed_streams = HashSet::new();
    let mut deleted = HashSet::new();
    for d in &plan {
        if d.kind == DeletionKind::Full && d.stream.is_some_and(|s| failed_streams.contains(&s)) {
            debug!(object = %d.snapshot.key, "keeping a full snapshot whose deltas could not all be deleted");
            continue;
        }
        let kind = match d.kind {
            DeletionKind::Chunk => KIND_CHUNK,
            DeletionKind::Delta => KIND_DELTA,
            DeletionKind::Full => KIND_FULL,
        };
        match store.delete(&d.snapshot.key).await {
            Ok(()) => {
                metrics.snapshot_gc_total.with_label_values(&[kind, succeeded(true)]).inc();
                deleted.insert(d.snapshot.key.clone());
                report.deleted.push(d.snapshot.key.clone());
            }
            Err(e) => {
                warn!(object = %d.snapshot.key, error = %e, "garbage collection could not delete an object");
                metrics.snapshot_gc_total.with_label_values(&[kind, succeeded(false)]).inc();
                metrics.failure("gc");
                if let Some(s) = d.stream {
                    failed_streams.insert(s);
                }
                report.failed.push(d.snapshot.key.clone());
            }
        }
    }
    // Sidecars: their delta is gone and they are older than the latest full snapshot (a sidecar
    // of the latest stream may be waiting for its delta, which is written right after it).
    let latest_full = snaps
        .iter()
        .filter(|s| s.name.kind == SnapshotKind::Full && !s.is_chunk && !deleted.contains(&s.key))
        .map(|s| s.name.last_revision)
        .max();
    let remaining: HashSet<(u64, u64)> = snaps
        .iter()
        .filter(|s| s.name.kind == SnapshotKind::Incr && !s.is_chunk && !deleted.contains(&s.key))
        .map(|s| (s.name.start_revision, s.name.last_revision))
        .collect();
    let v2_dir = crate::name::v2_dir(prefix);
    for (key, _) in &ignored {
        let Some((start, last)) = parse_sidecar_key(key) else { continue };
        let in_prefix = key.strip_prefix(v2_dir.as_str()).is_some_and(|name| !name.contains('/'));
        if !in_prefix || remaining.contains(&(start, last)) || latest_full.is_none_or(|f| last > f) {
            continue;
        }
        match store.delete(key).await {
            Ok(()) => report.deleted.push(key.clone()),
            Err(e) => {
                warn!(object = %key, error = %e, "garbage collection could not delete a lease sidecar");
                report.failed.push(key.clone());
            }
        }
    }
    if !report.deleted.is_empty() || !report.failed.is_empty() {
        info!(deleted = report.deleted.len(), failed = report.failed.len(), "garbage collection done");
    }
    Ok(report)
}
