//! Choosing what to restore: one full snapshot and the deltas after it, a [`Chain`].
//!
//! The reference (`GetLatestFullSnapshotAndDeltaSnapList`) walks the sorted listing from the
//! highest last revision down, skipping chunks, collecting deltas until it meets a full
//! snapshot. It checks nothing else; gaps and overlaps only surface while events are replayed
//! through an embedded etcd. Here the same selection is made, generalised to a target revision
//! or time, and the chain is checked on the object *names* before anything is downloaded:
//!
//! - A delta normally starts right after the previous object's last revision
//!   (`start == previous.last + 1`).
//! - A delta that starts at or below the previous last revision but ends above it **overlaps**:
//!   it is kept, and the events it repeats (mod revision ≤ [`Chain::covered_before`]) must be
//!   skipped by the consumer. This happens when two leaders' sidecars both uploaded deltas around
//!   a leader change (reference issue #1043); both watched the same etcd, so the repeated
//!   revisions hold the same events.
//! - A delta that ends at or below the previous last revision is **redundant** (for instance the
//!   same range uploaded twice by two leaders): every revision in it is already covered, so it is
//!   left out of [`Chain::deltas`] and listed in [`Chain::redundant`]. The reference would replay
//!   it and then fail its revision check; dropping it is what makes such stores restorable.
//! - A delta that starts above `previous.last + 1` leaves revisions that no object holds: that
//!   is [`Error::Gap`], naming the missing range and the objects on either side.
//!
//! The name of a full snapshot can be *below* the revision of the database inside it (the
//! reference reads the revision before streaming the snapshot), so the first delta may repeat
//! revisions the full snapshot already holds; only its content tells, and the replay skips them
//! (see `rebuild`). Every repeated revision is compared before it is skipped (see
//! [`crate::overlap`]).
//!
//! # Histories
//!
//! Going back in time (a restore to an older revision, time or full snapshot, by this tool
//! without its bump, or by another) starts a new history: the etcd restored from it runs from
//! the older revision again, and a snapshotter on it stores objects whose revisions repeat those
//! of the history it left. A store can so hold two histories whose objects interleave by
//! revision. [`Histories`] tells them apart by the objects' names, as PostgreSQL's archive
//! recovery follows the newest timeline:
//!
//! - Objects are scanned in creation order (`created_on`, seconds). A full snapshot whose last
//!   revision is below the highest revision that objects of its history created in an earlier
//!   second already reached is a **candidate** branch: the etcd it was taken from went back.
//! - The candidate starts a new history unless the first delta created after it continues the
//!   old objects rather than itself (its start is above that highest revision): that is a full
//!   snapshot written late beside a running chain (a compaction by the Go tool, which names its
//!   result when it finishes), not an etcd that went back. A new history's first delta starts
//!   right after its full snapshot, so it re-covers revisions of the abandoned objects.
//! - The objects created from the branch on belong to the new history. The objects of an older
//!   history above the revision of the branch's full snapshot are **abandoned**: never part of a
//!   chain of the newest history. Below it, they are its past. A chain never mixes histories:
//!   its deltas belong to the history of its full snapshot.
//!
//! `etcdbrctl restore` avoids the situation where it can: when the store holds revisions above
//! the restored one, it bumps the restored revision past them (`RestorePlan::keep_revision`),
//! so the new history's objects all sort above the old ones and the store holds one increasing
//! sequence that this tool and the Go tool read the same way.
//!
//! (The file passes 700 lines only with its unit tests, kept beside the code they pin.)

use std::cmp::Ordering;
use std::collections::HashMap;

use tracing::warn;

use crate::error::Error;
use crate::name::{Layout, Snapshot, SnapshotKind};
use crate::store::{ObjectMeta, Snapstore};

/// What state to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// The newest state the store holds: the latest full snapshot and every delta after it.
    #[default]
    Latest,
    /// The state at this etcd revision: the newest full snapshot at or below it and the deltas up
    /// to the one that contains it.
    Revision(u64),
    /// The state at this unix time (seconds): the newest full snapshot created at or before it,
    /// and the deltas up to the first one created after it (whose events carry their own times).
    Time(i64),
}

/// One full snapshot and the deltas to replay on top of it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The base: a full snapshot.
    pub full: Snapshot,
    /// The deltas to replay, in `(last revision, creation time)` order, continuous by name.
    pub deltas: Vec<Snapshot>,
    /// Deltas left out because earlier objects already cover all their revisions.
    pub redundant: Vec<Snapshot>,
    /// Objects of abandoned histories that hold revisions after the base (see [`Histories`]),
    /// each with the reason; never applied.
    pub abandoned: Vec<(Snapshot, String)>,
    /// When the base belongs to an older history that the newest one branched from: the branch
    /// revision, above which the older history's events are not the newest history's. A restore
    /// applies no event above it.
    pub stop_revision: Option<u64>,
    /// The highest last revision of any snapshot under the prefix, of any history.
    pub store_revision: u64,
    /// How many histories the store holds (1 when it never went back).
    pub histories: usize,
}

/// The histories of one prefix's snapshots, told apart by their names (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Histories {
    /// Per history, oldest first: the full snapshot it began with (`None` for the first).
    starts: Vec<Option<Snapshot>>,
    /// Per history: the revision above which its objects are abandoned (`None`: the newest).
    caps: Vec<Option<u64>>,
    /// Object key → history.
    of: HashMap<String, usize>,
}

impl Histories {
    /// Finds the histories of `snapshots` (one prefix's listing, any order; chunks are ignored).
    pub fn find(snapshots: &[Snapshot]) -> Histories {
        Histories::find_with(snapshots, true)
    }

    /// [`Histories::find`] for decisions that delete: a candidate branch counts only once a
    /// delta created after it re-covers the older objects' revisions, never while none
    /// follows it (which is a new history's first moments, or a full snapshot written late
    /// beside a running chain whose next delta has not come yet).
    pub fn find_confirmed(snapshots: &[Snapshot]) -> Histories {
        Histories::find_with(snapshots, false)
    }

    fn find_with(snapshots: &[Snapshot], unconfirmed_counts: bool) -> Histories {
        let mut list: Vec<&Snapshot> = snapshots.iter().filter(|s| !s.is_chunk).collect();
        list.sort_by(|a, b| a.name.created_on.cmp(&b.name.created_on).then_with(|| Snapshot::reference_order(a, b)));
        let mut starts: Vec<Option<Snapshot>> = vec![None];
        let mut of = HashMap::with_capacity(list.len());
        // The highest last revision of the current history's objects created in earlier seconds.
        let mut high = 0u64;
        let mut i = 0;
        while i < list.len() {
            let second = list[i].name.created_on;
            let end = i + list[i..].iter().take_while(|s| s.name.created_on == second).count();
            let candidate = list[i..end]
                .iter()
                .position(|s| s.name.kind == SnapshotKind::Full && s.name.last_revision < high)
                .map(|p| i + p);
            if let Some(c) = candidate
                && goes_back(&list, c, high, unconfirmed_counts)
            {
                starts.push(Some(list[c].clone()));
                high = list[c].name.last_revision;
            }
            for s in &list[i..end] {
                of.insert(s.key.clone(), starts.len() - 1);
                high = high.max(s.name.last_revision);
            }
            i = end;
        }
        let mut caps = vec![None; starts.len()];
        let mut cap: Option<u64> = None;
        for k in (0..starts.len()).rev() {
            caps[k] = cap;
            if let Some(f) = &starts[k] {
                cap = Some(cap.map_or(f.name.last_revision, |c| c.min(f.name.last_revision)));
            }
        }
        Histories { starts, caps, of }
    }

    /// The number of histories (1 for a store that never went back).
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether there is no history at all (never: an empty store has one, empty).
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The history `s` belongs to (0 = the oldest); objects not in the listing count as the
    /// oldest's.
    pub fn history_of(&self, s: &Snapshot) -> usize {
        self.of.get(&s.key).copied().unwrap_or(0)
    }

    /// The full snapshot history `h` began with (`None` for the first).
    pub fn start(&self, h: usize) -> Option<&Snapshot> {
        self.starts.get(h).and_then(Option::as_ref)
    }

    /// The revision above which history `h`'s objects are abandoned (`None` for the newest).
    pub fn cap(&self, h: usize) -> Option<u64> {
        self.caps.get(h).copied().flatten()
    }

    /// Whether `s` is part of the newest history: one of its objects, or of an older history at
    /// or below the revision where the newer ones branched from it (a delta that spans that
    /// revision is, up to it).
    pub fn is_current(&self, s: &Snapshot) -> bool {
        match self.cap(self.history_of(s)) {
            None => true,
            Some(cap) => match s.name.kind {
                SnapshotKind::Full => s.name.last_revision <= cap,
                SnapshotKind::Incr => s.name.start_revision <= cap,
            },
        }
    }

    /// Why `s` (not [`Histories::is_current`]) is abandoned, for logs and summaries.
    pub fn why_abandoned(&self, s: &Snapshot) -> String {
        let h = self.history_of(s);
        let cap = self.cap(h).unwrap_or(u64::MAX);
        let by = (h + 1..self.starts.len())
            .filter_map(|j| self.start(j))
            .find(|f| f.name.last_revision == cap)
            .map_or_else(String::new, |f| f.key.clone());
        format!(
            "it belongs to an abandoned history: {by} (created at unix time {}) began a newer one at revision \
             {cap}, and the older history's objects above that revision are never applied",
            self.starts.iter().flatten().find(|f| f.key == by).map_or(0, |f| f.name.created_on)
        )
    }

    /// Orders snapshots by history, then as [`Snapshot::reference_order`]: a store's objects
    /// as one sequence in which every history follows the one it left.
    pub fn order(&self, a: &Snapshot, b: &Snapshot) -> Ordering {
        self.history_of(a).cmp(&self.history_of(b)).then_with(|| Snapshot::reference_order(a, b))
    }
}

/// Whether the candidate full snapshot `list[c]` (last revision below `high`) starts a new
/// history: the first delta created after it that holds newer revisions starts at or below
/// `high`, re-covering revisions of the older objects, or there is none yet (and
/// `unconfirmed_counts`).
fn goes_back(list: &[&Snapshot], c: usize, high: u64, unconfirmed_counts: bool) -> bool {
    let f = list[c];
    match list[c + 1..]
        .iter()
        .find(|s| s.name.kind == SnapshotKind::Incr && s.name.last_revision > f.name.last_revision)
    {
        Some(d) => d.name.start_revision <= high,
        None => unconfirmed_counts,
    }
}

/// One delta of [`Chain::fetch_order`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchItem {
    /// The delta.
    pub snapshot: Snapshot,
    /// The revision up to which the full snapshot (by name) and the deltas before it cover every
    /// event: its events at or below it repeat revisions already held, and are compared.
    pub covered_before: u64,
    /// Whether its new events are applied (false: a redundant delta, only compared).
    pub apply: bool,
}

impl Chain {
    /// Selects the chain for `target` from a store listing (any keys; only snapshots under
    /// `<prefix>/v2/` and `<prefix>/v1/` count, chunks never do).
    ///
    /// Errors: [`Error::NotFound`] when no full snapshot fits the target, [`Error::Gap`] when the
    /// deltas after it are not continuous by name.
    ///
    /// ```
    /// use brcore::ObjectMeta;
    /// use brcore::chain::{Chain, Target};
    ///
    /// let listing: Vec<ObjectMeta> = [
    ///     "etcd-main/v2/Full-00000000-00000100-1700000000.gz",
    ///     "etcd-main/v2/Incr-00000101-00000150-1700000060.gz",
    ///     "etcd-main/v2/Incr-00000151-00000200-1700000120.gz",
    /// ]
    /// .iter()
    /// .map(|key| ObjectMeta { key: key.to_string(), size: 1 })
    /// .collect();
    /// let latest = Chain::select(&listing, "etcd-main", Target::Latest).unwrap();
    /// assert_eq!(latest.deltas.len(), 2);
    /// assert_eq!(latest.last_revision(), 200);
    /// // A point in time stops at the delta that holds it.
    /// let at = Chain::select(&listing, "etcd-main", Target::Revision(120)).unwrap();
    /// assert_eq!(at.deltas.len(), 1);
    /// ```
    pub fn select(listing: &[ObjectMeta], prefix: &str, target: Target) -> Result<Chain, Error> {
        let prefix = prefix.trim_end_matches('/');
        let mut snaps = Vec::new();
        for meta in listing {
            match Snapshot::parse_key(&meta.key, meta.size) {
                Ok(s) if s.prefix == prefix => snaps.push(s),
                Ok(_) => {}
                Err(e) => {
                    // Lease sidecars (`Leases-…json`) live beside the deltas on purpose.
                    if under_layout_dir(&meta.key, prefix)
                        && crate::snapshotter::leases::parse_sidecar_key(&meta.key).is_none()
                    {
                        warn!(key = %meta.key, error = %e, "ignoring an object that is not a snapshot");
                    }
                }
            }
        }
        Chain::select_snapshots(snaps, target).map_err(|e| match e {
            Error::NotFound { what } => Error::NotFound { what: format!("{what} under {}", layout_dirs(prefix)) },
            other => other,
        })
    }

    /// [`Chain::select`] over already parsed snapshots (all of one prefix, any order).
    ///
    /// The chain belongs to the newest history (see [`Histories`]): its full snapshot is the
    /// newest (by history, then revision) that fits the target among the newest history's own
    /// and those of older histories at or below the revision where it branched from them; its
    /// deltas are of the full snapshot's history, and stop at that branch revision.
    pub fn select_snapshots(mut snaps: Vec<Snapshot>, target: Target) -> Result<Chain, Error> {
        snaps.retain(|s| !s.is_chunk);
        snaps.sort_by(Snapshot::reference_order);
        let histories = Histories::find(&snaps);
        let store_revision = snaps.iter().map(|s| s.name.last_revision).max().unwrap_or(0);
        let fits = |s: &Snapshot| match target {
            Target::Latest => true,
            Target::Revision(r) => s.name.last_revision <= r,
            Target::Time(t) => s.name.created_on <= t,
        };
        let full_at = (0..snaps.len())
            .filter(|&i| snaps[i].name.kind == SnapshotKind::Full && fits(&snaps[i]) && histories.is_current(&snaps[i]))
            .max_by(|&a, &b| histories.order(&snaps[a], &snaps[b]));
        let Some(full_at) = full_at else {
            let fulls: Vec<&Snapshot> = snaps.iter().filter(|s| s.name.kind == SnapshotKind::Full).collect();
            let what = match (target, fulls.first()) {
                (_, None) if snaps.is_empty() => "no snapshots".to_string(),
                (_, None) => format!("no full snapshot (only {} delta snapshots)", snaps.len()),
                (Target::Revision(r), Some(oldest)) => format!(
                    "no full snapshot at or below revision {r} (the oldest, {}, is at revision {})",
                    oldest.key, oldest.name.last_revision
                ),
                (Target::Time(t), Some(_)) => {
                    let oldest = fulls.iter().min_by_key(|s| s.name.created_on).map(|s| s.name.created_on);
                    format!(
                        "no full snapshot created at or before unix time {t} (the oldest was created at {})",
                        oldest.unwrap_or_default()
                    )
                }
                (Target::Latest, Some(_)) => "no full snapshot".to_string(),
            };
            return Err(Error::NotFound { what });
        };
        let full = snaps[full_at].clone();
        let history = histories.history_of(&full);
        let stop_revision = histories.cap(history);
        let mut deltas: Vec<Snapshot> = Vec::new();
        let mut redundant = Vec::new();
        let mut covered = full.name.last_revision;
        let mut past_time = false;
        for s in &snaps[full_at + 1..] {
            if s.name.kind != SnapshotKind::Incr || histories.history_of(s) != history {
                continue;
            }
            match target {
                Target::Revision(r) if covered >= r => break,
                Target::Time(_) if past_time => break,
                _ => {}
            }
            if stop_revision.is_some_and(|stop| covered >= stop) {
                break;
            }
            if s.name.last_revision <= covered {
                warn!(
                    key = %s.key,
                    covered,
                    "leaving out a delta snapshot whose revisions are all covered by earlier objects"
                );
                redundant.push(s.clone());
                continue;
            }
            if s.name.start_revision > covered + 1 {
                let before = deltas.last().unwrap_or(&full);
                return Err(Error::Gap {
                    from: (covered + 1) as i64,
                    to: (s.name.start_revision - 1) as i64,
                    detail: format!(
                        "no object holds them: {} ends at revision {covered}, the next one, {}, starts at {}",
                        before.key, s.key, s.name.start_revision
                    ),
                });
            }
            if let Target::Time(t) = target {
                past_time = s.name.created_on > t;
            }
            covered = s.name.last_revision;
            deltas.push(s.clone());
        }
        // What a selection blind to histories could have taken after the base.
        let abandoned: Vec<(Snapshot, String)> = snaps
            .iter()
            .filter(|s| !histories.is_current(s) && s.name.last_revision > full.name.last_revision)
            .filter(|s| match (target, s.name.kind) {
                (Target::Revision(r), SnapshotKind::Full) => s.name.last_revision <= r,
                (Target::Revision(r), SnapshotKind::Incr) => s.name.start_revision <= r,
                _ => true,
            })
            .map(|s| (s.clone(), histories.why_abandoned(s)))
            .collect();
        if histories.len() > 1 {
            let newest = histories.len() - 1;
            tracing::info!(
                histories = histories.len(),
                newest_began_with = histories.start(newest).map(|f| f.key.as_str()),
                abandoned = abandoned.len(),
                "the store holds {} histories; following the newest",
                histories.len()
            );
        }
        Ok(Chain { full, deltas, redundant, abandoned, stop_revision, store_revision, histories: histories.len() })
    }

    /// The revision up to which the objects before delta `i` already hold every event: the full
    /// snapshot's name revision for the first delta, the previous delta's last revision after
    /// that. Events of delta `i` at or below it are repeats (an overlap) and must be skipped.
    ///
    /// # Panics
    /// If `i` is not an index into [`Chain::deltas`].
    pub fn covered_before(&self, i: usize) -> u64 {
        assert!(i < self.deltas.len(), "delta index {i} out of range");
        if i == 0 { self.full.name.last_revision } else { self.deltas[i - 1].name.last_revision }
    }

    /// Every delta to fetch, in the order they are read: the deltas to apply and the redundant
    /// ones (which are fetched only to be compared with the objects that cover them), by
    /// [`Snapshot::reference_order`], each with the revision up to which the objects before it
    /// cover every event.
    pub fn fetch_order(&self) -> Vec<FetchItem> {
        let mut items: Vec<(&Snapshot, bool)> =
            self.deltas.iter().map(|d| (d, true)).chain(self.redundant.iter().map(|d| (d, false))).collect();
        items.sort_by(|a, b| Snapshot::reference_order(a.0, b.0));
        let mut covered = self.full.name.last_revision;
        items
            .into_iter()
            .map(|(snapshot, apply)| {
                let item = FetchItem { snapshot: snapshot.clone(), covered_before: covered, apply };
                if apply {
                    covered = covered.max(snapshot.name.last_revision);
                }
                item
            })
            .collect()
    }

    /// The objects a restore of this chain leaves out although they hold revisions after its
    /// full snapshot, each with the reason, for summaries and logs.
    pub fn left_out(&self) -> Vec<(String, String)> {
        let redundant = self.redundant.iter().map(|s| {
            (
                s.key.clone(),
                format!(
                    "every revision it holds ({}..={}) is held by earlier objects of the chain, and its events \
                     for them are equal to theirs",
                    s.name.start_revision, s.name.last_revision
                ),
            )
        });
        redundant.chain(self.abandoned.iter().map(|(s, why)| (s.key.clone(), why.clone()))).collect()
    }

    /// The last revision the chain reaches, by name.
    pub fn last_revision(&self) -> u64 {
        self.deltas.last().unwrap_or(&self.full).name.last_revision
    }

    /// Every object of the chain, full snapshot first.
    pub fn objects(&self) -> impl Iterator<Item = &Snapshot> {
        std::iter::once(&self.full).chain(self.deltas.iter())
    }

    /// Bytes to download (stored, compressed sizes).
    pub fn total_size(&self) -> u64 {
        self.objects().map(|s| s.size).sum()
    }

    /// Whether the full snapshot lives in the legacy v1 layout.
    pub fn is_v1(&self) -> bool {
        matches!(self.full.layout, Layout::V1 { .. })
    }
}

fn layout_dirs(prefix: &str) -> String {
    format!("{} (and {})", crate::name::v2_dir(prefix), crate::name::v1_dir(prefix))
}

pub(crate) fn layout_prefixes(prefix: &str) -> [String; 2] {
    [crate::name::v2_dir(prefix), crate::name::v1_dir(prefix)]
}

fn under_layout_dir(key: &str, prefix: &str) -> bool {
    layout_prefixes(prefix).iter().any(|p| key.starts_with(p.as_str()))
}

/// The newest revision and the newest creation time (unix seconds) of any snapshot under
/// `<prefix>/v2/` and `<prefix>/v1/` in `store`, of any history; `None` when there is none.
pub async fn store_head(store: &dyn Snapstore, prefix: &str) -> Result<Option<(u64, i64)>, Error> {
    let prefix = prefix.trim_end_matches('/');
    let mut head: Option<(u64, i64)> = None;
    for dir in layout_prefixes(prefix) {
        for meta in store.list(&dir).await? {
            if let Ok(s) = Snapshot::parse_key(&meta.key, meta.size)
                && s.prefix == prefix
                && !s.is_chunk
            {
                let (r, t) = head.unwrap_or((0, i64::MIN));
                head = Some((r.max(s.name.last_revision), t.max(s.name.created_on)));
            }
        }
    }
    Ok(head)
}

/// Lists `<prefix>/v2/` and `<prefix>/v1/` in `store` and selects the chain for `target`
/// (see [`Chain::select`]).
///
/// The reference lists the parent of `v2` and keeps what contains `v1`/`v2`, which also picks up
/// objects of other prefixes that share the parent; listing the two layout directories sees
/// exactly this prefix's objects.
pub async fn list_chain(store: &dyn Snapstore, prefix: &str, target: Target) -> Result<Chain, Error> {
    let prefix = prefix.trim_end_matches('/');
    let mut listing = Vec::new();
    for dir in layout_prefixes(prefix) {
        listing.extend(store.list(&dir).await?);
    }
    Chain::select(&listing, prefix, target).map_err(|e| match e {
        Error::NotFound { what } => Error::NotFound { what: format!("{what} in {}", store.describe()) },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta { key: key.to_string(), size: 1 }
    }

    fn keys(names: &[&str]) -> Vec<ObjectMeta> {
        names.iter().map(|n| meta(&format!("p/v2/{n}"))).collect()
    }

    fn names(snaps: &[Snapshot]) -> Vec<String> {
        snaps.iter().map(|s| s.name.to_string()).collect()
    }

    #[test]
    fn latest_is_the_last_full_and_every_delta_after_it() {
        let listing = keys(&[
            "Full-00000000-00000010-100.gz",
            "Incr-00000011-00000020-110.gz",
            "Full-00000000-00000020-120.gz",
            "Incr-00000021-00000025-130.gz",
            "Incr-00000026-00000030-140.gz",
            "Full-00000000-00000020-120.gz/0000000001",
            "Incr-00000026-00000030-140.gz/0000000002",
        ]);
        let c = Chain::select(&listing, "p", Target::Latest).unwrap();
        assert_eq!(c.full.name.to_string(), "Full-00000000-00000020-120.gz");
        assert_eq!(names(&c.deltas), ["Incr-00000021-00000025-130.gz", "Incr-00000026-00000030-140.gz"]);
        assert_eq!((c.covered_before(0), c.covered_before(1), c.last_revision()), (20, 25, 30));
        assert!(c.redundant.is_empty());
    }

    #[test]
    fn revision_targets_pick_an_older_full_and_stop_at_the_covering_delta() {
        let listing = keys(&[
            "Full-00000000-00000010-100",
            "Incr-00000011-00000015-105",
            "Incr-00000016-00000020-110",
            "Full-00000000-00000020-120",
            "Incr-00000021-00000025-130",
        ]);
        let c = Chain::select(&listing, "p", Target::Revision(14)).unwrap();
        assert_eq!(c.full.name.last_revision, 10);
        assert_eq!(names(&c.deltas), ["Incr-00000011-00000015-105"]);
        let c = Chain::select(&listing, "p", Target::Revision(16)).unwrap();
        assert_eq!(c.deltas.len(), 2);
        let c = Chain::select(&listing, "p", Target::Revision(10)).unwrap();
        assert!(c.deltas.is_empty());
        let c = Chain::select(&listing, "p", Target::Revision(20)).unwrap();
        assert_eq!((c.full.name.last_revision, c.deltas.len()), (20, 0));
        let c = Chain::select(&listing, "p", Target::Revision(1000)).unwrap();
        assert_eq!((c.full.name.last_revision, c.last_revision()), (20, 25));
        let e = Chain::select(&listing, "p", Target::Revision(9)).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }));
        assert!(e.to_string().contains("at revision 10"), "{e}");
    }

    #[test]
    fn time_targets_include_the_first_delta_created_after_the_time() {
        let listing = keys(&[
            "Full-00000000-00000010-100",
            "Incr-00000011-00000015-105",
            "Incr-00000016-00000020-110",
            "Incr-00000021-00000025-115",
            "Full-00000000-00000025-120",
        ]);
        let c = Chain::select(&listing, "p", Target::Time(107)).unwrap();
        assert_eq!(c.full.name.last_revision, 10);
        assert_eq!(names(&c.deltas), ["Incr-00000011-00000015-105", "Incr-00000016-00000020-110"]);
        let c = Chain::select(&listing, "p", Target::Time(120)).unwrap();
        assert_eq!((c.full.name.last_revision, c.deltas.len()), (25, 0));
        assert!(matches!(Chain::select(&listing, "p", Target::Time(99)), Err(Error::NotFound { .. })));
    }

    #[test]
    fn gaps_name_the_range_and_both_objects() {
        let listing = keys(&["Full-00000000-00000010-100", "Incr-00000011-00000015-105", "Incr-00000018-00000020-110"]);
        let e = Chain::select(&listing, "p", Target::Latest).unwrap_err();
        let Error::Gap { from, to, ref detail } = e else { panic!("{e}") };
        assert_eq!((from, to), (16, 17));
        assert!(
            detail.contains("p/v2/Incr-00000011-00000015-105") && detail.contains("p/v2/Incr-00000018-00000020-110")
        );
        // The full snapshot itself can border the gap.
        let listing = keys(&["Full-00000000-00000010-100", "Incr-00000012-00000015-105"]);
        let e = Chain::select(&listing, "p", Target::Latest).unwrap_err();
        assert!(matches!(e, Error::Gap { from: 11, to: 11, .. }), "{e}");
        assert!(e.to_string().contains("Full-00000000-00000010-100"));
        // A gap beyond a revision target does not matter.
        let listing = keys(&["Full-00000000-00000010-100", "Incr-00000011-00000015-105", "Incr-00000018-00000020-110"]);
        assert_eq!(Chain::select(&listing, "p", Target::Revision(15)).unwrap().deltas.len(), 1);
    }

    #[test]
    fn overlaps_are_kept_and_redundant_deltas_dropped() {
        // Two leaders around a hand-off (#1043): the old one uploaded 21-30 and 31-34, the new
        // one 21-30 again (later) and 31-40.
        let listing = keys(&[
            "Full-00000000-00000020-100",
            "Incr-00000021-00000030-110",
            "Incr-00000021-00000030-111",
            "Incr-00000031-00000034-112",
            "Incr-00000031-00000040-113",
            "Incr-00000041-00000045-120",
        ]);
        let c = Chain::select(&listing, "p", Target::Latest).unwrap();
        assert_eq!(
            names(&c.deltas),
            [
                "Incr-00000021-00000030-110",
                "Incr-00000031-00000034-112",
                "Incr-00000031-00000040-113",
                "Incr-00000041-00000045-120"
            ]
        );
        assert_eq!(names(&c.redundant), ["Incr-00000021-00000030-111"]);
        assert_eq!(c.covered_before(2), 34, "events 31..=34 of the overlapping delta are repeats");
        // A first delta that overlaps the full snapshot's name revision.
        let listing = keys(&["Full-00000000-00000020-100", "Incr-00000015-00000025-110"]);
        let c = Chain::select(&listing, "p", Target::Latest).unwrap();
        assert_eq!((c.deltas.len(), c.covered_before(0)), (1, 20));
        // A delta at the full's revision sorts before it when older, and is redundant when newer.
        let listing = keys(&["Incr-00000011-00000020-90", "Full-00000000-00000020-100", "Incr-00000011-00000020-101"]);
        let c = Chain::select(&listing, "p", Target::Latest).unwrap();
        assert_eq!((c.deltas.len(), c.redundant.len()), (0, 1));
    }

    /// History 0 written up to revision 1006, then etcd restored to 500 without a bump and
    /// backed up again (history 1).
    const TWO_HISTORIES: &[&str] = &[
        "Full-00000000-00000100-100",
        "Incr-00000101-00000300-110",
        "Incr-00000301-00000539-120",
        "Full-00000000-00000900-125",
        "Incr-00000540-00001006-130",
        "Full-00000000-00000500-200",
        "Incr-00000501-00000534-210",
        "Incr-00000535-00000560-220",
    ];

    #[test]
    fn latest_follows_the_newest_history_and_never_applies_an_abandoned_object() {
        let c = Chain::select(&keys(TWO_HISTORIES), "p", Target::Latest).unwrap();
        assert_eq!(c.full.name.to_string(), "Full-00000000-00000500-200");
        assert_eq!(names(&c.deltas), ["Incr-00000501-00000534-210", "Incr-00000535-00000560-220"]);
        let abandoned: Vec<String> = c.abandoned.iter().map(|(s, _)| s.name.to_string()).collect();
        assert_eq!(abandoned, ["Full-00000000-00000900-125", "Incr-00000540-00001006-130"]);
        assert!(c.abandoned[0].1.contains("p/v2/Full-00000000-00000500-200"), "{}", c.abandoned[0].1);
        assert_eq!(c.left_out().len(), 2);
        assert_eq!((c.stop_revision, c.store_revision, c.histories), (None, 1006, 2));

        let snaps: Vec<Snapshot> =
            keys(TWO_HISTORIES).iter().map(|m| Snapshot::parse_key(&m.key, 1).unwrap()).collect();
        let h = Histories::find(&snaps);
        assert_eq!(h.len(), 2);
        assert_eq!((h.cap(0), h.cap(1)), (Some(500), None));
    }

    #[test]
    fn points_in_time_address_the_newest_history() {
        let listing = keys(TWO_HISTORIES);
        // Before the branch: the old history's objects, never past the branch revision.
        let c = Chain::select(&listing, "p", Target::Revision(450)).unwrap();
        assert_eq!(c.full.name.last_revision, 100);
        assert_eq!(names(&c.deltas), ["Incr-00000101-00000300-110", "Incr-00000301-00000539-120"]);
        assert_eq!(c.stop_revision, Some(500));
        // After it: the new history's.
        let c = Chain::select(&listing, "p", Target::Revision(520)).unwrap();
        assert_eq!((c.full.name.last_revision, names(&c.deltas)), (500, vec!["Incr-00000501-00000534-210".into()]));
        assert_eq!(c.stop_revision, None);
        // A revision only the abandoned history reached: the newest history's end, not Full-900.
        let c = Chain::select(&listing, "p", Target::Revision(900)).unwrap();
        assert_eq!((c.full.name.last_revision, c.last_revision()), (500, 560));
        // A time before the branch: the newest history's past, i.e. up to the branch revision.
        let c = Chain::select(&listing, "p", Target::Time(125)).unwrap();
        assert_eq!((c.full.name.last_revision, c.stop_revision), (100, Some(500)));
        assert_eq!(c.deltas.len(), 2);
        let c = Chain::select(&listing, "p", Target::Time(215)).unwrap();
        assert_eq!((c.full.name.last_revision, c.deltas.len()), (500, 2));
    }

    #[test]
    fn two_branches_in_a_row() {
        let mut names_ = TWO_HISTORIES.to_vec();
        names_.extend(["Full-00000000-00000520-300", "Incr-00000521-00000600-310"]);
        let listing = keys(&names_);
        let c = Chain::select(&listing, "p", Target::Latest).unwrap();
        assert_eq!((c.full.name.last_revision, c.last_revision(), c.histories), (520, 600, 3));
        let abandoned: Vec<String> = c.abandoned.iter().map(|(s, _)| s.name.to_string()).collect();
        assert_eq!(
            abandoned,
            ["Incr-00000535-00000560-220", "Full-00000000-00000900-125", "Incr-00000540-00001006-130"]
        );
        // 510 lies in history 1, which history 2 left at 520.
        let c = Chain::select(&listing, "p", Target::Revision(510)).unwrap();
        assert_eq!((c.full.name.last_revision, c.stop_revision), (500, Some(520)));
        assert_eq!(names(&c.deltas), ["Incr-00000501-00000534-210"]);
        let c = Chain::select(&listing, "p", Target::Revision(530)).unwrap();
        assert_eq!((c.full.name.last_revision, c.last_revision()), (520, 600));
    }

    #[test]
    fn a_full_snapshot_stored_late_beside_a_running_chain_is_not_a_new_history() {
        // The Go tool's compaction names its result when it finishes; deltas stored meanwhile
        // are newer, and the next delta continues them, not the compacted snapshot.
        let listing = keys(&[
            "Full-00000000-00000100-100",
            "Incr-00000101-00000338-110",
            "Incr-00000339-00000345-120",
            "Full-00000000-00000338-130",
            "Incr-00000346-00000400-140",
        ]);
        let c = Chain::select(&listing, "p", Target::Latest).unwrap();
        assert_eq!(c.histories, 1);
        assert_eq!((c.full.name.last_revision, c.last_revision()), (338, 400));
        assert_eq!(names(&c.deltas), ["Incr-00000339-00000345-120", "Incr-00000346-00000400-140"]);
    }

    #[test]
    fn a_new_history_without_deltas_yet_is_one_for_restores_but_not_for_deleting() {
        let listing = keys(&["Full-00000000-00000100-100", "Incr-00000101-00001006-130", "Full-00000000-00000500-200"]);
        let c = Chain::select(&listing, "p", Target::Latest).unwrap();
        assert_eq!((c.full.name.last_revision, c.deltas.len(), c.histories), (500, 0, 2));
        let snaps: Vec<Snapshot> = listing.iter().map(|m| Snapshot::parse_key(&m.key, 1).unwrap()).collect();
        assert_eq!(Histories::find_confirmed(&snaps).len(), 1);
    }

    #[test]
    fn a_bumped_restore_keeps_one_increasing_history() {
        let listing = keys(&[
            "Full-00000000-00000100-100",
            "Incr-00000101-00001006-130",
            "Full-00000000-1000001006-200",
            "Incr-1000001007-1000001066-210",
        ]);
        let c = Chain::select(&listing, "p", Target::Latest).unwrap();
        assert_eq!((c.histories, c.full.name.last_revision, c.last_revision()), (1, 1000001006, 1000001066));
        assert!(c.abandoned.is_empty());
        // The revisions the bump skipped are held by no object.
        let e = Chain::select(&listing, "p", Target::Revision(5000)).unwrap_err();
        assert!(matches!(e, Error::Gap { from: 1007, to: 1000001006, .. }), "{e}");
    }

    #[test]
    fn other_prefixes_v1_and_junk() {
        let listing = vec![
            meta("p/v1/Backup-90/Full-00000000-00000005-90"),
            meta("p/v1/Backup-90/Incr-00000006-00000008-95"),
            meta("p-other/v2/Full-00000000-00000100-200"),
            meta("q/p/v2/Full-00000000-00000100-200"),
            meta("p/v2/README"),
            meta("p/v2/Incr-00000009-00000012-99"),
        ];
        let c = Chain::select(&listing, "p/", Target::Latest).unwrap();
        assert_eq!(c.full.key, "p/v1/Backup-90/Full-00000000-00000005-90");
        assert!(c.is_v1());
        assert_eq!(c.deltas.len(), 2);
        assert_eq!(c.total_size(), 3);
        let e = Chain::select(&listing, "nothing", Target::Latest).unwrap_err();
        assert!(e.to_string().contains("nothing/v2/"), "{e}");
        let e = Chain::select(&keys(&["Incr-00000001-00000002-3"]), "p", Target::Latest).unwrap_err();
        assert!(e.to_string().contains("only 1 delta"), "{e}");
    }
}
