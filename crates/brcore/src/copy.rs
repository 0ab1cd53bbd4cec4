//! Copying backups between stores (`etcdbrctl copy`), as the reference's copier does.
//!
//! Backups are grouped into sets (a full snapshot and the deltas after it, up to the next full
//! snapshot), newest first; `max_backups` and `max_age` pick the sets; objects whose name is
//! already in the destination (ignoring `.final`) are skipped; the rest are streamed across with
//! a bounded number in flight, and the `.final` suffix is dropped on the way, as the reference
//! does, so the copy's newest full snapshot is not mistaken for a final one. The source is only
//! read.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use crate::chain::Histories;
use crate::error::Error;
use crate::name::{Layout, Snapshot, SnapshotKind, SnapshotName, parse_listing, v2_dir};
use crate::store::{Snapstore, WriteOptions};

/// What to copy: [`CopyPlan::new`], then set what differs from its defaults.
/// Fields may be added in any release (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CopyPlan {
    /// The source's store prefix.
    pub source_prefix: String,
    /// The destination's store prefix.
    pub dest_prefix: String,
    /// Copy only the newest this many backup sets (`--max-backups-to-copy`; `None` = all).
    pub max_backups: Option<usize>,
    /// Copy only sets whose full snapshot is younger than this many seconds
    /// (`--max-backup-age`, given in days; `None` = any age).
    pub max_age_secs: Option<i64>,
    /// Objects copied at once (`--max-parallel-copy-operations`).
    pub parallel: usize,
    /// Upload parts.
    pub write: WriteOptions,
    /// "Now", in unix seconds (injected so the age filter is testable).
    pub now: i64,
}

impl CopyPlan {
    /// Every backup set under `source_prefix` copied to `dest_prefix`, ten objects at once,
    /// default upload parts; `now` in unix seconds (for [`CopyPlan::max_age_secs`]).
    pub fn new(source_prefix: impl Into<String>, dest_prefix: impl Into<String>, now: i64) -> CopyPlan {
        CopyPlan {
            source_prefix: source_prefix.into(),
            dest_prefix: dest_prefix.into(),
            max_backups: None,
            max_age_secs: None,
            parallel: 10,
            write: WriteOptions::default(),
            now,
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// Destination keys written.
    pub copied: Vec<String>,
    /// Source keys skipped because the destination has them.
    pub skipped: Vec<String>,
    /// Bytes written.
    pub bytes: u64,
}

/// Copies the selected backup sets from `source` to `dest`.
pub async fn copy(source: Arc<dyn Snapstore>, dest: Arc<dyn Snapstore>, plan: &CopyPlan) -> Result<CopyReport, Error> {
    let wanted = select(source.as_ref(), plan).await?;
    let present = names_in(dest.as_ref(), &plan.dest_prefix).await?;
    let mut report = CopyReport::default();
    let mut todo = Vec::new();
    for snap in wanted {
        if present.contains(&without_final(&snap.name)) {
            report.skipped.push(snap.key);
        } else {
            todo.push(snap);
        }
    }
    let results: Vec<(String, u64)> = futures::stream::iter(todo)
        .map(|snap| {
            let (source, dest) = (source.clone(), dest.clone());
            let key = without_final(&snap.name).key_v2(&plan.dest_prefix);
            let write = plan.write.clone();
            async move {
                let data = source.read(&snap.key, None).await?;
                let n = dest.write(&key, data, &write).await?;
                info!(from = %snap.key, to = %key, bytes = n, "copied");
                Ok::<_, Error>((key, n))
            }
        })
        .buffer_unordered(plan.parallel.max(1))
        .try_collect()
        .await?;
    for (key, n) in results {
        report.bytes += n;
        report.copied.push(key);
    }
    report.copied.sort();
    Ok(report)
}

/// The source's objects to copy, oldest first: whole backup sets, newest `max_backups`, no older
/// than `max_age_secs`.
async fn select(source: &dyn Snapstore, plan: &CopyPlan) -> Result<Vec<Snapshot>, Error> {
    let snaps = list_v2(source, &plan.source_prefix).await?;
    if snaps.is_empty() {
        return Err(Error::not_found(format!(
            "no snapshots under {} in the source store",
            crate::name::v2_dir(&plan.source_prefix)
        )));
    }
    Ok(choose_sets(snaps, plan))
}

/// The whole backup sets of `snaps` that `plan` selects, oldest first.
fn choose_sets(mut snaps: Vec<Snapshot>, plan: &CopyPlan) -> Vec<Snapshot> {
    // By history, then revision: a set never takes a delta of another history, and the newest
    // sets are the newest history's.
    let histories = Histories::find(&snaps);
    snaps.sort_by(|a, b| histories.order(a, b));
    // Sets, oldest first: each full snapshot starts one; deltas before the first full belong to
    // no set and are not copied (nothing could restore them).
    let mut sets: Vec<Vec<Snapshot>> = Vec::new();
    for snap in snaps {
        match (snap.name.kind, sets.last_mut()) {
            (SnapshotKind::Full, _) => sets.push(vec![snap]),
            (SnapshotKind::Incr, Some(set)) => set.push(snap),
            (SnapshotKind::Incr, None) => warn!(object = %snap.key, "skipping a delta that no full snapshot precedes"),
        }
    }
    let mut chosen: Vec<Vec<Snapshot>> = sets
        .into_iter()
        .rev()
        .filter(|set| plan.max_age_secs.is_none_or(|age| set[0].name.created_on >= plan.now - age))
        .take(plan.max_backups.unwrap_or(usize::MAX))
        .collect();
    chosen.reverse();
    chosen.into_iter().flatten().collect()
}

async fn list_v2(store: &dyn Snapstore, prefix: &str) -> Result<Vec<Snapshot>, Error> {
    let dir = v2_dir(prefix);
    let listing = store.list(&dir).await?;
    let (snaps, _ignored) = parse_listing(listing.iter().map(|o| (o.key.as_str(), o.size)));
    Ok(snaps.into_iter().filter(|s| !s.is_chunk && s.layout == Layout::V2).collect())
}

async fn names_in(store: &dyn Snapstore, prefix: &str) -> Result<HashSet<SnapshotName>, Error> {
    Ok(list_v2(store, prefix).await?.into_iter().map(|s| without_final(&s.name)).collect())
}

fn without_final(name: &SnapshotName) -> SnapshotName {
    SnapshotName { is_final: false, ..name.clone() }
}

/// How many of the newest full snapshots are searched for a final one: the reference's four,
/// because a regular full snapshot (scheduled, at start or at stop) may race the final one and
/// land after it.
pub const FINAL_SEARCH_DEPTH: usize = 4;

/// A final full snapshot (`.final`) among the newest [`FINAL_SEARCH_DEPTH`] full snapshots
/// under `prefix`, newest first, as the reference's copier looks for one.
pub async fn find_final_full(store: &dyn Snapstore, prefix: &str) -> Result<Option<Snapshot>, Error> {
    let mut snaps = list_v2(store, prefix).await?;
    snaps.sort_by(Snapshot::reference_order);
    Ok(snaps
        .into_iter()
        .rev()
        .filter(|s| s.name.kind == SnapshotKind::Full)
        .take(FINAL_SEARCH_DEPTH)
        .find(|s| s.name.is_final))
}

/// Waits for a final full snapshot under `prefix` (see [`find_final_full`]), looking every
/// `interval`, for at most `timeout` (`None`: for as long as it takes). `Ok(None)` when the
/// time is up: the reference then copies what there is.
pub async fn wait_for_final_full(
    store: &dyn Snapstore,
    prefix: &str,
    interval: std::time::Duration,
    timeout: Option<std::time::Duration>,
) -> Result<Option<Snapshot>, Error> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        if let Some(found) = find_final_full(store, prefix).await? {
            info!(object = %found.key, "final full snapshot found");
            return Ok(Some(found));
        }
        let pause = match deadline {
            Some(d) => {
                let now = tokio::time::Instant::now();
                if now >= d {
                    info!("timed out waiting for a final full snapshot");
                    return Ok(None);
                }
                interval.min(d - now)
            }
            None => interval,
        };
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snaps(names: &[&str]) -> Vec<Snapshot> {
        names.iter().map(|n| Snapshot::parse_key(&format!("p/v2/{n}"), 1).unwrap()).collect()
    }

    #[test]
    fn sets_never_take_a_delta_of_another_history() {
        // History 0 up to 1006; etcd went back to 500 and was backed up again.
        let list = snaps(&[
            "Full-00000000-00000100-100",
            "Incr-00000101-00000539-120",
            "Incr-00000540-00001006-130",
            "Full-00000000-00000500-200",
            "Incr-00000501-00000560-210",
        ]);
        let plan = CopyPlan {
            source_prefix: "p".into(),
            dest_prefix: "q".into(),
            max_backups: Some(1),
            max_age_secs: None,
            parallel: 1,
            write: WriteOptions::default(),
            now: 1000,
        };
        let chosen: Vec<String> = choose_sets(list.clone(), &plan).iter().map(|s| s.name.to_string()).collect();
        assert_eq!(chosen, ["Full-00000000-00000500-200", "Incr-00000501-00000560-210"]);
        let all = CopyPlan { max_backups: None, ..plan };
        let chosen: Vec<String> = choose_sets(list, &all).iter().map(|s| s.name.to_string()).collect();
        assert_eq!(chosen.len(), 5);
        assert_eq!(
            chosen[..3],
            ["Full-00000000-00000100-100", "Incr-00000101-00000539-120", "Incr-00000540-00001006-130"]
        );
    }
}
