//! Overlaps are verified, not trusted.
//!
//! Two objects of a chain can cover the same revision: a delta that starts at or below the
//! previous object's last revision (two leaders' sidecars uploading around a hand-off, the
//! reference's #1043), a delta whose revisions are all held already (the same range uploaded
//! twice), and the first delta after a full snapshot whose name is below the revision of the db
//! inside it. Both watched the same etcd, so their events for a shared revision must be equal.
//! If they are not, two writers stored different histories under one prefix, and nothing tells
//! which one is right: the restore refuses with [`Error::Conflict`], naming both objects and the
//! first revision where they differ.
//!
//! Two checks, one per kind of overlap:
//! - [`OverlapCheck`] compares deltas with deltas. It sees every delta of
//!   [`Chain::fetch_order`] in order and keeps the events of the revisions a later delta will
//!   repeat (from the smallest start revision of the deltas still to come), so memory is
//!   bounded by the overlaps, not by the chain.
//! - [`FullRepeats`] compares the events at or below the full snapshot's db revision with the
//!   db's `key` bucket (the change at `(revision, position)`), where the db still holds that
//!   revision: a compaction in the source etcd removes the revisions it replaced, and those
//!   cannot be compared (they are counted).
//!
//! Events are equal when kind, key, value, create and mod revision, version and lease are. The
//! time a snapshotter received them is not compared.

use std::collections::BTreeMap;

use bbolt::Db;
use etcd_format::meta::DbRevisions;
use etcd_format::mvcc::{self, KeyValueRef, RevKey, Revision};

use crate::chain::{Chain, FetchItem};
use crate::delta::{Event, EventBatch, EventKind, EventRef};
use crate::error::Error;

/// What the checks compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlapStats {
    /// Revisions held by two objects whose events were compared (and found equal).
    pub revisions_compared: u64,
    /// Events at or below the full snapshot's db revision found equal to the db's change.
    pub full_events_compared: u64,
    /// Events at or below the full snapshot's db revision that its db no longer holds
    /// (compacted away in the source etcd), so they could not be compared.
    pub full_events_compacted: u64,
}

/// Compares the deltas of a chain where they overlap (see the module docs).
#[derive(Debug)]
pub struct OverlapCheck {
    full: String,
    full_revision: i64,
    items: Vec<FetchItem>,
    /// `keep_from[i]`: the smallest start revision of the items after `i`; events below it can
    /// no longer be repeated and are dropped from the window.
    keep_from: Vec<i64>,
    /// Revision → the item that applied it and its events there.
    window: BTreeMap<i64, (usize, Vec<Event>)>,
    next: usize,
    stats: OverlapStats,
    /// The item being fed batch by batch ([`OverlapCheck::begin`]).
    current: Option<Current>,
}

/// What [`OverlapCheck`] gathers of the item being fed.
#[derive(Debug, Default)]
struct Current {
    index: usize,
    repeats: BTreeMap<i64, Vec<Event>>,
    new_held: BTreeMap<i64, Vec<Event>>,
}

impl OverlapCheck {
    /// A check of `chain`'s deltas, to be fed in [`Chain::fetch_order`].
    pub fn new(chain: &Chain) -> OverlapCheck {
        let items = chain.fetch_order();
        let mut keep_from = vec![i64::MAX; items.len()];
        let mut min = i64::MAX;
        for i in (0..items.len()).rev() {
            keep_from[i] = min;
            min = min.min(items[i].snapshot.name.start_revision as i64);
        }
        OverlapCheck {
            full: chain.full.key.clone(),
            full_revision: chain.full.name.last_revision as i64,
            items,
            keep_from,
            window: BTreeMap::new(),
            next: 0,
            stats: OverlapStats::default(),
            current: None,
        }
    }

    /// The deltas to fetch, in the order [`OverlapCheck::accept`] wants them.
    pub fn items(&self) -> &[FetchItem] {
        &self.items
    }

    /// What was compared so far.
    pub fn stats(&self) -> OverlapStats {
        self.stats
    }

    /// Checks the events of item `index` (items must come in order, each once) against the
    /// deltas before it, and returns the events to hand on to the rebuild: its new revisions,
    /// and the events at or below the full snapshot's name revision (for [`FullRepeats`]; the
    /// rebuild skips them). A redundant item hands on only the latter.
    pub fn accept(&mut self, index: usize, events: Vec<Event>) -> Result<Vec<Event>, Error> {
        let mut batch = EventBatch::new();
        events.iter().for_each(|e| batch.push(e.view()));
        self.begin(index);
        self.filter(&mut batch)?;
        self.end()?;
        Ok(batch.iter().map(|e| e.to_event()).collect())
    }

    /// Starts item `index` (items must come in order, each once), whose events then come
    /// batch by batch through [`OverlapCheck::filter`]; [`OverlapCheck::end`] ends it. The
    /// streaming form of [`OverlapCheck::accept`]: memory is the overlapping events only.
    pub fn begin(&mut self, index: usize) {
        assert_eq!(index, self.next, "deltas must be checked in fetch order");
        self.current = Some(Current { index, ..Current::default() });
    }

    /// Takes the repeated revisions out of `batch` (kept for [`OverlapCheck::end`]'s
    /// comparison) and leaves what [`OverlapCheck::accept`] hands on.
    pub fn filter(&mut self, batch: &mut EventBatch) -> Result<(), Error> {
        let Some(cur) = self.current.as_mut() else {
            return Err(Error::internal("an overlap check was fed events outside an item"));
        };
        let item = &self.items[cur.index];
        let covered = item.covered_before as i64;
        let keep = self.keep_from[cur.index];
        let full_revision = self.full_revision;
        let mut above_name = None;
        batch.retain(|e| {
            let r = e.mod_revision;
            if r <= full_revision {
                true
            } else if r <= covered {
                cur.repeats.entry(r).or_default().push(e.to_event());
                false
            } else if !item.apply {
                above_name.get_or_insert(r);
                false
            } else {
                if r >= keep {
                    cur.new_held.entry(r).or_default().push(e.to_event());
                }
                true
            }
        });
        if let Some(r) = above_name {
            return Err(Error::corrupt(
                &item.snapshot.key,
                format!(
                    "it holds an event at revision {r}, above the last revision {} of its name",
                    item.snapshot.name.last_revision
                ),
            ));
        }
        Ok(())
    }

    /// Ends the item begun last: compares its repeated revisions with what the earlier deltas
    /// applied (the revisions it covers by name must all be there too).
    pub fn end(&mut self) -> Result<(), Error> {
        let Some(Current { index, repeats, new_held }) = self.current.take() else {
            return Err(Error::internal("an overlap check ended no item"));
        };
        self.next += 1;
        let item = &self.items[index];
        let key = item.snapshot.key.clone();
        let covered = item.covered_before as i64;
        let start = item.snapshot.name.start_revision as i64;
        let keep = self.keep_from[index];

        // Compare the repeated revisions, in order, with what the earlier deltas applied; the
        // revisions this delta covers by name must all be there too.
        let from = start.max(self.full_revision + 1);
        let mut revisions: Vec<i64> = repeats.keys().copied().collect();
        if from <= covered {
            revisions.extend(self.window.range(from..=covered).map(|(r, _)| *r));
        }
        revisions.sort_unstable();
        revisions.dedup();
        for r in revisions {
            let mine = repeats.get(&r).map(Vec::as_slice).unwrap_or(&[]);
            match self.window.get(&r) {
                Some((by, theirs)) => {
                    if let Some(detail) = difference(theirs, mine) {
                        return Err(self.conflict(*by, &key, r, detail));
                    }
                    self.stats.revisions_compared += 1;
                }
                None => {
                    let by = self.item_covering(r, index);
                    let first = by.map_or_else(|| self.full.clone(), |i| self.items[i].snapshot.key.clone());
                    return Err(Error::Conflict {
                        first,
                        second: key,
                        revision: r,
                        detail: format!(
                            "the first covers revision {r} by its name but holds no event for it, the second \
                             holds {} event(s)",
                            mine.len()
                        ),
                    });
                }
            }
        }

        for (r, events) in new_held {
            self.window.insert(r, (index, events));
        }
        // Nothing still to come starts below `keep`: those revisions cannot be repeated.
        self.window = self.window.split_off(&keep);
        Ok(())
    }

    fn conflict(&self, first: usize, second: &str, revision: i64, detail: String) -> Error {
        Error::Conflict { first: self.items[first].snapshot.key.clone(), second: second.to_string(), revision, detail }
    }

    /// The applied item before `index` whose name covers revision `r`.
    fn item_covering(&self, r: i64, index: usize) -> Option<usize> {
        (0..index).rev().find(|&i| {
            let n = &self.items[i].snapshot.name;
            self.items[i].apply && (n.start_revision as i64) <= r && r <= n.last_revision as i64
        })
    }
}

/// How two objects' events for one revision differ, or `None` when they are equal.
fn difference(first: &[Event], second: &[Event]) -> Option<String> {
    for (i, (a, b)) in first.iter().zip(second).enumerate() {
        if let Some(what) = event_difference(a, b) {
            return Some(format!("change {i} of the revision: {what}"));
        }
    }
    if first.len() != second.len() {
        return Some(format!("the first holds {} change(s) in the revision, the second {}", first.len(), second.len()));
    }
    None
}

fn event_difference(a: &Event, b: &Event) -> Option<String> {
    let show = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    if a.kind != b.kind {
        return Some(format!("{:?} of {:?} against {:?} of {:?}", a.kind, show(&a.key), b.kind, show(&b.key)));
    }
    if a.key != b.key {
        return Some(format!("key {:?} against {:?}", show(&a.key), show(&b.key)));
    }
    let fields = [
        ("value", a.value != b.value),
        ("create revision", a.create_revision != b.create_revision),
        ("version", a.version != b.version),
        ("lease", a.lease != b.lease),
    ];
    fields.iter().find(|(_, differs)| *differs).map(|(field, _)| match *field {
        "value" => {
            format!("the value of {:?} differs ({} bytes against {} bytes)", show(&a.key), a.value.len(), b.value.len())
        }
        "create revision" => {
            format!("{:?} created at {} against {}", show(&a.key), a.create_revision, b.create_revision)
        }
        "version" => format!("{:?} at version {} against {}", show(&a.key), a.version, b.version),
        _ => format!("{:?} on lease {:x} against {:x}", show(&a.key), a.lease, b.lease),
    })
}

/// Compares the events that repeat the full snapshot's content with its db (see the module
/// docs).
#[derive(Debug)]
pub struct FullRepeats<'a> {
    full: &'a str,
    bucket: Option<bbolt::Bucket<'a>>,
    base: i64,
    compact: i64,
    stats: OverlapStats,
    /// The revision and position within it of the last event checked of the current object.
    position: Option<(i64, i64)>,
}

impl<'a> FullRepeats<'a> {
    /// A check against `db`, the full snapshot stored as `full` (its key, for messages).
    pub fn new(full: &'a str, db: &'a Db) -> Result<FullRepeats<'a>, Error> {
        let revs = DbRevisions::read(db).map_err(|e| Error::corrupt(full, e))?;
        let bucket = db.bucket(mvcc::KEY_BUCKET).map_err(|e| Error::corrupt(full, e))?;
        Ok(FullRepeats {
            full,
            bucket,
            base: revs.current_revision,
            compact: revs.compact_revision.unwrap_or(0).max(revs.scheduled_compact_revision.unwrap_or(0)),
            stats: OverlapStats::default(),
            position: None,
        })
    }

    /// The db's current revision: events at or below it repeat the db's content.
    pub fn base_revision(&self) -> i64 {
        self.base
    }

    /// What was compared so far (only the `full_*` fields).
    pub fn stats(&self) -> OverlapStats {
        self.stats
    }

    /// Compares the events of `object` at or below the db's revision with the db.
    pub fn check(&mut self, object: &str, events: &[Event]) -> Result<(), Error> {
        self.begin_object();
        self.check_refs(object, events.iter().map(Event::view))
    }

    /// Starts the next object, whose events then come through [`FullRepeats::check_refs`].
    pub fn begin_object(&mut self) {
        self.position = None;
    }

    /// [`FullRepeats::check`] for the next events of the current object, in batches.
    pub fn check_refs<'e>(
        &mut self,
        object: &str,
        events: impl IntoIterator<Item = EventRef<'e>>,
    ) -> Result<(), Error> {
        let mut position = self.position;
        for e in events {
            let r = e.mod_revision;
            if r > self.base {
                // Events come in revision order; the rest are new.
                break;
            }
            let sub = match position {
                Some((rev, sub)) if rev == r => sub + 1,
                _ => 0,
            };
            position = Some((r, sub));
            self.position = position;
            let revision = Revision::new(r, sub);
            let rev_key = match e.kind {
                EventKind::Put => RevKey::put(revision),
                EventKind::Delete => RevKey::tombstone(revision),
            };
            let stored = match &self.bucket {
                Some(b) => b.get(&rev_key.to_bytes()).map_err(|err| Error::corrupt(self.full, err))?,
                None => None,
            };
            let Some(stored) = stored else {
                if r <= self.compact {
                    self.stats.full_events_compacted += 1;
                    continue;
                }
                return Err(Error::Conflict {
                    first: self.full.to_string(),
                    second: object.to_string(),
                    revision: r,
                    detail: format!(
                        "the second holds a {} of {:?} as change {sub} of the revision, the first's db holds no \
                         such change",
                        if e.kind == EventKind::Put { "put" } else { "delete" },
                        String::from_utf8_lossy(e.key)
                    ),
                });
            };
            let kv = KeyValueRef::decode(stored).map_err(|err| Error::corrupt(self.full, err))?;
            let expected = match e.kind {
                EventKind::Put => KeyValueRef {
                    key: e.key,
                    create_revision: e.create_revision,
                    mod_revision: r,
                    version: e.version,
                    value: e.value,
                    lease: e.lease,
                },
                EventKind::Delete => KeyValueRef { key: e.key, ..Default::default() },
            };
            // A tombstone's stored value is the key alone; compare only that for deletes.
            let equal = match e.kind {
                EventKind::Put => kv == expected,
                EventKind::Delete => kv.key == expected.key,
            };
            if !equal {
                return Err(Error::Conflict {
                    first: self.full.to_string(),
                    second: object.to_string(),
                    revision: r,
                    detail: format!(
                        "change {sub} of the revision is {:?} (version {}, {} value bytes) in the first and {:?} \
                         (version {}, {} value bytes) in the second",
                        String::from_utf8_lossy(kv.key),
                        kv.version,
                        kv.value.len(),
                        String::from_utf8_lossy(e.key),
                        e.version,
                        e.value.len()
                    ),
                });
            }
            self.stats.full_events_compared += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Target;
    use crate::store::ObjectMeta;

    fn put(key: &str, value: &str, rev: i64) -> Event {
        Event {
            kind: EventKind::Put,
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
            time: String::new(),
        }
    }

    fn range(from: i64, to: i64) -> Vec<Event> {
        (from..=to).map(|r| put(&format!("k{r}"), "v", r)).collect()
    }

    fn chain(names: &[&str]) -> Chain {
        let listing: Vec<ObjectMeta> = names.iter().map(|n| ObjectMeta { key: format!("p/v2/{n}"), size: 1 }).collect();
        Chain::select(&listing, "p", Target::Latest).unwrap()
    }

    fn revs(events: &[Event]) -> Vec<i64> {
        events.iter().map(|e| e.mod_revision).collect()
    }

    #[test]
    fn equal_overlaps_pass_and_hand_on_each_revision_once() {
        let c = chain(&[
            "Full-00000000-00000020-100",
            "Incr-00000021-00000030-110",
            "Incr-00000021-00000030-111",
            "Incr-00000025-00000040-112",
        ]);
        let mut check = OverlapCheck::new(&c);
        let order: Vec<(String, bool)> = check.items().iter().map(|i| (i.snapshot.name.to_string(), i.apply)).collect();
        assert_eq!(
            order,
            [
                ("Incr-00000021-00000030-110".to_string(), true),
                ("Incr-00000021-00000030-111".to_string(), false),
                ("Incr-00000025-00000040-112".to_string(), true)
            ]
        );
        assert_eq!(revs(&check.accept(0, range(21, 30)).unwrap()), (21..=30).collect::<Vec<_>>());
        assert!(check.accept(1, range(21, 30)).unwrap().is_empty(), "a redundant delta hands on nothing");
        assert_eq!(revs(&check.accept(2, range(25, 40)).unwrap()), (31..=40).collect::<Vec<_>>());
        assert_eq!(check.stats().revisions_compared, 10 + 6);
        assert!(check.window.is_empty(), "nothing is kept once no delta can repeat it");
    }

    #[test]
    fn a_chain_without_overlaps_hands_on_everything_and_keeps_nothing() {
        let c = chain(&["Full-00000000-00000020-100", "Incr-00000021-00000030-110", "Incr-00000031-00000035-111"]);
        let mut check = OverlapCheck::new(&c);
        assert_eq!(check.accept(0, range(21, 30)).unwrap().len(), 10);
        assert!(check.window.is_empty());
        assert_eq!(check.accept(1, range(31, 35)).unwrap().len(), 5);
        assert_eq!(check.stats(), OverlapStats::default());
    }

    #[test]
    fn one_differing_event_names_both_objects_and_the_revision() {
        let c = chain(&["Full-00000000-00000020-100", "Incr-00000021-00000030-110", "Incr-00000026-00000035-111"]);
        let mut check = OverlapCheck::new(&c);
        check.accept(0, range(21, 30)).unwrap();
        let mut other = range(26, 35);
        other[2].value = b"different".to_vec(); // revision 28
        let e = check.accept(1, other).unwrap_err();
        let Error::Conflict { ref first, ref second, revision, .. } = e else { panic!("{e}") };
        assert_eq!(
            (first.as_str(), second.as_str(), revision),
            ("p/v2/Incr-00000021-00000030-110", "p/v2/Incr-00000026-00000035-111", 28)
        );
        assert!(e.to_string().contains("Restore to revision 27"), "{e}");

        // A lease, a version, a missing change, an extra one and a missing revision all count.
        for mutate in [
            |v: &mut Vec<Event>| v[0].lease = 7,
            |v: &mut Vec<Event>| v[0].version = 2,
            |v: &mut Vec<Event>| v[0].kind = EventKind::Delete,
            |v: &mut Vec<Event>| v.insert(1, put("extra", "v", 26)),
            |v: &mut Vec<Event>| {
                v.remove(0);
            },
        ] {
            let mut check = OverlapCheck::new(&c);
            check.accept(0, range(21, 30)).unwrap();
            let mut other = range(26, 35);
            mutate(&mut other);
            let e = check.accept(1, other).unwrap_err();
            assert!(matches!(e, Error::Conflict { revision: 26, .. }), "{e}");
        }
    }

    #[test]
    fn events_at_or_below_the_full_snapshot_are_handed_on_for_the_db_check() {
        // The first delta overlaps the full snapshot's name; a redundant one repeats both.
        let c = chain(&["Full-00000000-00000020-100", "Incr-00000015-00000025-110", "Incr-00000018-00000022-111"]);
        let mut check = OverlapCheck::new(&c);
        assert_eq!(revs(&check.accept(0, range(15, 25)).unwrap()), (15..=25).collect::<Vec<_>>());
        assert_eq!(revs(&check.accept(1, range(18, 22)).unwrap()), [18, 19, 20]);
        assert_eq!(check.stats().revisions_compared, 2);
    }

    #[test]
    fn full_repeats_compare_with_the_db() {
        use bbolt::{BulkWriter, WriterOptions};
        // A db at revision 12: k10 put at 10, k11 put at 11, k10 deleted at 12; compacted at 10.
        let mut writer = BulkWriter::new(std::io::Cursor::new(Vec::new()), WriterOptions::default()).unwrap();
        writer.begin_bucket(mvcc::KEY_BUCKET).unwrap();
        for (rev, kv, tomb) in
            [(10, put("k10", "v", 10), false), (11, put("k11", "v", 11), false), (12, put("k10", "", 12), true)]
        {
            let mut value = Vec::new();
            let key = if tomb {
                KeyValueRef { key: b"k10", ..Default::default() }.encode_to(&mut value);
                RevKey::tombstone(Revision::new(rev, 0))
            } else {
                KeyValueRef {
                    key: &kv.key,
                    create_revision: rev,
                    mod_revision: rev,
                    version: 1,
                    value: &kv.value,
                    lease: 0,
                }
                .encode_to(&mut value);
                RevKey::put(Revision::new(rev, 0))
            };
            writer.put(&key.to_bytes(), &value).unwrap();
        }
        writer.end_bucket().unwrap();
        writer.begin_bucket(etcd_format::meta::META_BUCKET).unwrap();
        writer.put(etcd_format::meta::FINISHED_COMPACT_REV, &RevKey::put(Revision::new(10, 0)).to_bytes()).unwrap();
        writer.end_bucket().unwrap();
        let (cursor, _) = writer.finish().unwrap();
        let db = Db::from_bytes(cursor.into_inner()).unwrap();
        let mut full = FullRepeats::new("p/v2/Full", &db).unwrap();
        assert_eq!(full.base_revision(), 12);

        let mut delete = put("k10", "", 12);
        delete.kind = EventKind::Delete;
        delete.create_revision = 0;
        delete.version = 0;
        let good = vec![put("k9", "v", 9), put("k11", "v", 11), delete.clone(), put("k13", "v", 13)];
        full.check("p/v2/Incr", &good).unwrap();
        assert_eq!(
            (full.stats().full_events_compared, full.stats().full_events_compacted),
            (2, 1),
            "revision 9 is compacted away; 13 is new"
        );
        let bad = vec![put("k11", "other", 11)];
        let e = full.check("p/v2/Incr", &bad).unwrap_err();
        assert!(
            matches!(e, Error::Conflict { revision: 11, ref first, ref second, .. } if first == "p/v2/Full" && second == "p/v2/Incr"),
            "{e}"
        );
        // A change the db should hold (above its compaction) but does not.
        let e = full.check("p/v2/Incr", &[put("k11", "v", 11), put("extra", "v", 11)]).unwrap_err();
        assert!(matches!(e, Error::Conflict { revision: 11, .. }), "{e}");
    }
}
