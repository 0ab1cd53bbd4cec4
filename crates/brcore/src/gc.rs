//! Garbage collection policies, as pure functions of a listing and a clock.
//!
//! These reproduce the reference's `RunGarbageCollector` (`garbagecollector.go`) decision by
//! decision; the caller lists the store, calls [`plan`] and deletes what it returns. In short:
//!
//! 1. **Chunks** (upload parts left by GCS composes) are deleted once their snapshot is
//!    complete, i.e. when their start revision is at or below the last revision this snapshotter
//!    uploaded ([`GcOptions::last_uploaded_revision`]); with none uploaded yet, no chunk is
//!    touched. Swift's chunks are its segments and go with the manifest, so Swift sets
//!    [`GcOptions::delete_chunks`] to false. Chunks never take part in what follows.
//! 2. The remaining objects, in the reference's order, are cut into **streams**: a full snapshot
//!    and the deltas after it. Index 0 always starts a stream, even when it is a delta (deltas
//!    left over from a deleted full snapshot).
//!    With more than one history in the store (see `chain::Histories`), the objects are ordered
//!    by history first, so the newest history's newest full snapshot starts the latest stream;
//!    while it is unclear whether a full snapshot begins a new history, only what both readings
//!    delete is deleted.
//! 3. The **latest stream is never touched**. In every older stream, the deltas created before
//!    `now - delta_retention` are deleted (retention 0, the default: all of them).
//! 4. Which older full snapshots go depends on the policy:
//!    - [`Policy::LimitBased`]: all but the newest `max_backups` streams lose their full snapshot.
//!    - [`Policy::Exponential`]: walking from the second-newest stream back, each full snapshot is
//!      compared with the next newer one, relative to the end of today (UTC 23:59:59): created in
//!      the current hour → kept; less than 24 h before the end of today → one per hour; less than
//!      8 days → one per day; less than 5 weeks → one per week (the end of today moves one day back
//!      when week tracking starts); older → deleted.
//!
//! A property of the exponential policy worth knowing: its hour/day/week buckets are counted
//! back from the *current* end of day, so they shift every day. One GC run over a store keeps
//! four weekly full snapshots (the reference's own test), but with GC running every hour the
//! weekly survivors soon share a bucket with a newer one and go, leaving at most one full
//! snapshot older than a week (`tests/gc.rs` pins this). This module reproduces the reference
//! as is.
//!
//! Deleting a stream's full snapshot does not delete its deltas that are still within the
//! retention period; they then lead the oldest stream and go when they expire. Objects under an
//! immutability (object lock) period are the executor's business: the reference skips them and
//! tries again in the next cycle. The reference also skips a stream's full snapshot when
//! deleting that stream's deltas failed; [`Deletion::stream`] lets an executor do the same.

use crate::chain::Histories;
use crate::name::{Snapshot, SnapshotKind};

/// Seconds in an hour, a day and a week.
const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;

/// Which full snapshots to keep (`--garbage-collection-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Keep the newest full snapshots of the current hour, one per hour for a day, one per day for
    /// a week and one per week for four weeks (the reference's default).
    Exponential,
    /// Keep the newest `max_backups` full snapshots (`--max-backups`, default 7).
    LimitBased {
        /// How many streams (full snapshot and its deltas) keep their full snapshot.
        max_backups: usize,
    },
}

/// Settings besides the policy: [`GcOptions::default`] (delete every older delta, no chunk), then
/// set what differs. Fields may be added in any release (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GcOptions {
    /// Deltas of older streams younger than this many seconds are kept
    /// (`--delta-snapshot-retention-period`; 0 deletes them all).
    pub delta_retention_secs: i64,
    /// The last revision this snapshotter uploaded (its previous snapshot's last revision); chunks
    /// starting at or below it belong to complete uploads. `None` (or 0) deletes no chunk.
    pub last_uploaded_revision: Option<u64>,
    /// Whether chunks are deleted at all (false for Swift, whose segments go with the manifest).
    pub delete_chunks: bool,
}

/// Why an object is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeletionKind {
    /// An upload part of a complete snapshot.
    Chunk,
    /// A delta of an older stream, past the retention period.
    Delta,
    /// The full snapshot (first object) of an older stream.
    Full,
}

/// One object the policy deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The object.
    pub snapshot: Snapshot,
    /// Why.
    pub kind: DeletionKind,
    /// The index of its stream (0 = oldest) for deltas and fulls; `None` for chunks. An executor
    /// that fails to delete a stream's deltas should skip that stream's full snapshot.
    pub stream: Option<usize>,
}

/// The objects to delete from `snapshots` (one prefix's listing, any order) under `policy` at
/// unix time `now`, in the order the reference deletes them.
pub fn plan(snapshots: &[Snapshot], policy: Policy, now: i64, opts: &GcOptions) -> Vec<Deletion> {
    match policy {
        Policy::Exponential => exponential(snapshots, now, opts),
        Policy::LimitBased { max_backups } => limit_based(snapshots, max_backups, now, opts),
    }
}

/// Runs a policy under both readings of the store's histories (see [`Histories::find`] and
/// [`Histories::find_confirmed`]) and keeps only what both delete: while a full snapshot may or
/// may not begin a new history (no delta after it tells yet), neither it nor the objects it
/// would abandon are deleted. A store with one history reads the same both ways, as the
/// reference orders it.
fn under_both_readings(
    snapshots: &[Snapshot],
    policy: impl Fn(&[Snapshot], &Histories) -> Vec<Deletion>,
) -> Vec<Deletion> {
    let sure = policy(snapshots, &Histories::find_confirmed(snapshots));
    let guess: std::collections::HashSet<String> =
        policy(snapshots, &Histories::find(snapshots)).into_iter().map(|d| d.snapshot.key).collect();
    sure.into_iter().filter(|d| guess.contains(&d.snapshot.key)).collect()
}

/// The exponential policy (see the module docs).
pub fn exponential(snapshots: &[Snapshot], now: i64, opts: &GcOptions) -> Vec<Deletion> {
    under_both_readings(snapshots, |s, h| exponential_in(s, h, now, opts))
}

fn exponential_in(snapshots: &[Snapshot], histories: &Histories, now: i64, opts: &GcOptions) -> Vec<Deletion> {
    let (mut out, list) = chunks_and_rest(snapshots, histories, opts);
    let starts = stream_starts(&list);
    let mut eod = now.div_euclid(DAY) * DAY + DAY - 1;
    let mut tracking_week = false;
    for f in (1..starts.len()).rev() {
        let snap = &list[starts[f]];
        let next = &list[starts[f - 1]];
        delete_old_deltas(&list[starts[f - 1]..starts[f]], f - 1, now, opts, &mut out);
        let age = eod - next.name.created_on;
        let threshold: i64 = if age < DAY {
            if next.name.created_on.rem_euclid(DAY) / HOUR == now.rem_euclid(DAY) / HOUR { 0 } else { 1 }
        } else if age < 8 * DAY {
            24
        } else if age < 5 * WEEK {
            if !tracking_week {
                eod -= DAY;
                tracking_week = true;
            }
            24 * 7
        } else {
            i32::MAX as i64
        };
        // Go: int(eod.Sub(t).Hours()) etc., truncating toward zero like Rust's integer division.
        let since = |t: i64| eod - t;
        let hour_change = since(next.name.created_on) / HOUR - since(snap.name.created_on) / HOUR;
        let day_change = since(next.name.created_on) / DAY - since(snap.name.created_on) / DAY;
        let week_change = since(next.name.created_on) / WEEK - since(snap.name.created_on) / WEEK;
        let keep = threshold == 0
            || hour_change / threshold != 0
            || day_change * 24 / threshold != 0
            || week_change * 24 * 7 / threshold != 0;
        if !keep {
            push_full(next, f - 1, &mut out);
        }
    }
    out
}

/// The limit-based policy (see the module docs).
pub fn limit_based(snapshots: &[Snapshot], max_backups: usize, now: i64, opts: &GcOptions) -> Vec<Deletion> {
    under_both_readings(snapshots, |s, h| limit_based_in(s, h, max_backups, now, opts))
}

fn limit_based_in(
    snapshots: &[Snapshot],
    histories: &Histories,
    max_backups: usize,
    now: i64,
    opts: &GcOptions,
) -> Vec<Deletion> {
    let (mut out, list) = chunks_and_rest(snapshots, histories, opts);
    let starts = stream_starts(&list);
    for f in 0..starts.len().saturating_sub(1) {
        delete_old_deltas(&list[starts[f]..starts[f + 1]], f, now, opts, &mut out);
        if (f as i64) < starts.len() as i64 - max_backups as i64 {
            push_full(&list[starts[f]], f, &mut out);
        }
    }
    out
}

/// Sorts, decides about chunks, and returns the deletions so far plus the non-chunk objects,
/// by history and then in the reference's order ([`Histories::order`]): in a store that holds
/// more than one history, every older history's objects are older streams, and the latest
/// stream is the newest history's.
fn chunks_and_rest(snapshots: &[Snapshot], histories: &Histories, opts: &GcOptions) -> (Vec<Deletion>, Vec<Snapshot>) {
    let mut rest: Vec<Snapshot> = snapshots.iter().filter(|s| !s.is_chunk).cloned().collect();
    rest.sort_by(|a, b| histories.order(a, b));
    let mut chunks: Vec<Snapshot> = snapshots.iter().filter(|s| s.is_chunk).cloned().collect();
    chunks.sort_by(Snapshot::reference_order);
    let mut out = Vec::new();
    for s in chunks {
        let complete = match opts.last_uploaded_revision {
            Some(last) if last > 0 => s.name.start_revision <= last,
            _ => false,
        };
        if opts.delete_chunks && complete {
            out.push(Deletion { snapshot: s, kind: DeletionKind::Chunk, stream: None });
        }
    }
    (out, rest)
}

/// Indexes where streams start: 0, then every full snapshot.
fn stream_starts(list: &[Snapshot]) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend((1..list.len()).filter(|&i| list[i].name.kind == SnapshotKind::Full));
    if list.is_empty() {
        starts.clear();
    }
    starts
}

/// The reference's `GarbageCollectDeltaSnapshots`: newest first, every delta of the stream
/// (including a leading one at its index 0) created before the cutoff.
fn delete_old_deltas(stream: &[Snapshot], index: usize, now: i64, opts: &GcOptions, out: &mut Vec<Deletion>) {
    let cutoff = now.saturating_sub(opts.delta_retention_secs);
    for s in stream.iter().rev() {
        if s.name.kind == SnapshotKind::Incr && s.name.created_on < cutoff {
            out.push(Deletion { snapshot: s.clone(), kind: DeletionKind::Delta, stream: Some(index) });
        }
    }
}

/// Schedules a stream's first object, unless it already is (a leading delta deleted as old).
fn push_full(s: &Snapshot, index: usize, out: &mut Vec<Deletion>) {
    if !out.iter().any(|d| d.snapshot.key == s.key) {
        out.push(Deletion { snapshot: s.clone(), kind: DeletionKind::Full, stream: Some(index) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(kind: &str, start: u64, last: u64, created: i64) -> Snapshot {
        Snapshot::parse_key(&format!("p/v2/{kind}-{start:08}-{last:08}-{created}.gz"), 1).unwrap()
    }

    fn keys(d: &[Deletion]) -> Vec<String> {
        d.iter().map(|d| d.snapshot.name.to_string()).collect()
    }

    #[test]
    fn limit_based_keeps_the_newest_streams_and_only_the_latest_deltas() {
        let list = vec![
            snap("Full", 0, 10, 100),
            snap("Incr", 11, 20, 110),
            snap("Full", 0, 20, 200),
            snap("Incr", 21, 30, 210),
            snap("Full", 0, 30, 300),
            snap("Incr", 31, 40, 310),
        ];
        let d = limit_based(&list, 2, 1000, &GcOptions::default());
        assert_eq!(
            keys(&d),
            ["Incr-00000011-00000020-110.gz", "Full-00000000-00000010-100.gz", "Incr-00000021-00000030-210.gz"]
        );
        assert_eq!(d[1].kind, DeletionKind::Full);
        assert_eq!(d[1].stream, Some(0));
        // Retention keeps young deltas of older streams.
        let opts = GcOptions { delta_retention_secs: 950, ..Default::default() };
        let d = limit_based(&list, 1, 1000, &opts);
        assert_eq!(keys(&d), ["Full-00000000-00000010-100.gz", "Full-00000000-00000020-200.gz"]);
        // max_backups 0 still spares the latest stream.
        assert_eq!(limit_based(&list, 0, 1000, &GcOptions::default()).len(), 4);
        assert!(limit_based(&[], 1, 1000, &GcOptions::default()).is_empty());
    }

    #[test]
    fn the_newest_history_is_the_latest_stream() {
        // History 0 up to 1006 (a full at 900), then etcd went back to 500 and was backed up
        // again. By revision alone the latest stream would be Full-900's, and history 1's only
        // full snapshot an older stream's.
        let list = vec![
            snap("Full", 0, 100, 100),
            snap("Incr", 101, 539, 120),
            snap("Full", 0, 900, 125),
            snap("Incr", 540, 1006, 130),
            snap("Full", 0, 500, 200),
            snap("Incr", 501, 560, 210),
        ];
        let d = limit_based(&list, 1, 1000, &GcOptions::default());
        let deleted = keys(&d);
        assert!(!deleted.iter().any(|k| k.contains("-00000500-") || k.contains("-00000560-")), "{deleted:?}");
        assert!(deleted.contains(&"Full-00000000-00000900-125.gz".to_string()), "{deleted:?}");
        assert!(deleted.contains(&"Incr-00000540-00001006-130.gz".to_string()), "{deleted:?}");
        // A branch no delta confirms yet deletes nothing on a guess: neither the full snapshot
        // that may begin the new history nor the objects it may abandon.
        let d = limit_based(&list[..5], 1, 1000, &GcOptions::default());
        assert_eq!(
            keys(&d),
            ["Full-00000000-00000100-100.gz", "Incr-00000101-00000539-120.gz"],
            "what both readings delete"
        );
    }

    #[test]
    fn a_leading_delta_starts_the_oldest_stream_and_is_deleted_once() {
        let list = vec![snap("Incr", 5, 10, 50), snap("Incr", 11, 12, 60), snap("Full", 0, 20, 200)];
        let d = limit_based(&list, 1, 1000, &GcOptions::default());
        assert_eq!(keys(&d), ["Incr-00000011-00000012-60.gz", "Incr-00000005-00000010-50.gz"]);
        let opts = GcOptions { delta_retention_secs: 960, ..Default::default() };
        let d = limit_based(&list, 1, 1000, &opts);
        assert_eq!(keys(&d), ["Incr-00000005-00000010-50.gz"]);
        assert_eq!(d[0].kind, DeletionKind::Full, "deleted as the stream's first object");
    }

    #[test]
    fn chunks_go_only_when_their_upload_is_complete() {
        let chunk = |start: u64, last: u64, part: u32| {
            Snapshot::parse_key(&format!("p/v2/Full-{start:08}-{last:08}-5.gz/{part:010}"), 1).unwrap()
        };
        let list = vec![snap("Full", 0, 10, 5), chunk(0, 10, 1), chunk(0, 10, 2), snap("Incr", 11, 20, 6)];
        assert!(exponential(&list, 10, &GcOptions { delete_chunks: true, ..Default::default() }).is_empty());
        let opts = GcOptions { delete_chunks: true, last_uploaded_revision: Some(10), ..Default::default() };
        let d = exponential(&list, 10, &opts);
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|d| d.kind == DeletionKind::Chunk && d.stream.is_none()));
        let incr_chunk = Snapshot::parse_key("p/v2/Incr-00000021-00000030-7.gz/0000000001", 1).unwrap();
        let d = exponential(
            std::slice::from_ref(&incr_chunk),
            10,
            &GcOptions { last_uploaded_revision: Some(20), delete_chunks: true, ..Default::default() },
        );
        assert!(d.is_empty(), "its snapshot (start 21) is not uploaded yet");
        let swift = GcOptions { delete_chunks: false, last_uploaded_revision: Some(100), ..Default::default() };
        assert!(exponential(&list, 10, &swift).is_empty());
    }

    #[test]
    fn exponential_keeps_the_current_hour_and_one_per_hour_today() {
        // now = day 100, 10:30 UTC. Fulls every 10 minutes from 08:00.
        let day = 100 * DAY;
        let now = day + 10 * HOUR + 30 * 60;
        let list: Vec<Snapshot> = (0..16).map(|i| snap("Full", 0, 10 + i as u64, day + 8 * HOUR + i * 600)).collect();
        let d = exponential(&list, now, &GcOptions::default());
        let deleted: Vec<i64> = d.iter().map(|d| d.snapshot.name.created_on - day).collect();
        // 08:00..08:50 → keep 08:50 only; 09:00..09:50 → keep 09:50; 10:xx all kept.
        let expected: Vec<i64> = (0..5).map(|i| 8 * HOUR + i * 600).chain((0..5).map(|i| 9 * HOUR + i * 600)).collect();
        let mut deleted_sorted = deleted.clone();
        deleted_sorted.sort();
        assert_eq!(deleted_sorted, expected);
    }
}
