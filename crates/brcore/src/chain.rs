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
//! (see `rebuild`).

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
    pub fn select_snapshots(mut snaps: Vec<Snapshot>, target: Target) -> Result<Chain, Error> {
        snaps.retain(|s| !s.is_chunk);
        snaps.sort_by(Snapshot::reference_order);
        let fits = |s: &Snapshot| match target {
            Target::Latest => true,
            Target::Revision(r) => s.name.last_revision <= r,
            Target::Time(t) => s.name.created_on <= t,
        };
        let Some(full_at) = snaps.iter().rposition(|s| s.name.kind == SnapshotKind::Full && fits(s)) else {
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
        let mut deltas: Vec<Snapshot> = Vec::new();
        let mut redundant = Vec::new();
        let mut covered = full.name.last_revision;
        let mut past_time = false;
        for s in &snaps[full_at + 1..] {
            if s.name.kind != SnapshotKind::Incr {
                continue;
            }
            match target {
                Target::Revision(r) if covered >= r => break,
                Target::Time(_) if past_time => break,
                _ => {}
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
        Ok(Chain { full, deltas, redundant })
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
        self.redundant
            .iter()
            .map(|s| {
                (
                    s.key.clone(),
                    format!(
                        "every revision it holds ({}..={}) is held by earlier objects of the chain, and its events \
                         for them are equal to theirs",
                        s.name.start_revision, s.name.last_revision
                    ),
                )
            })
            .collect()
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
    if prefix.is_empty() { "v2/ (and v1/)".to_string() } else { format!("{prefix}/v2/ (and {prefix}/v1/)") }
}

fn layout_prefixes(prefix: &str) -> [String; 2] {
    if prefix.is_empty() {
        ["v2/".to_string(), "v1/".to_string()]
    } else {
        [format!("{prefix}/v2/"), format!("{prefix}/v1/")]
    }
}

fn under_layout_dir(key: &str, prefix: &str) -> bool {
    layout_prefixes(prefix).iter().any(|p| key.starts_with(p.as_str()))
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
