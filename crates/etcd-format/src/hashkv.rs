//! etcd's HashKV, computed offline from a db file.
//!
//! `etcdctl endpoint hashkv --rev R` asks a member for a crc32c over its `key` bucket up to
//! revision R, skipping what compaction removes. Members of one cluster must agree on it, and
//! a restore is judged by it, so this reproduces the algorithm of etcd's `HashByRev`
//! (`mvcc/kvstore.go` in 3.4, `server/mvcc/hash.go` in 3.5):
//!
//! ```text
//! h = crc32c("key")
//! for (k, v) in bucket "key", in key order, with main(k) <= R:
//!     if main(k) <= compactRev and keep(R) is not empty and rev(k) not in keep(R): skip
//!     if main(k) == compactRev and k is a tombstone: skip
//!     h += k; h += v
//! ```
//!
//! `keep(R)` holds, for every user key, its newest revision with `main ≤ R`, unless that is a
//! tombstone. etcd builds it from its in-memory index, which holds exactly the revisions in the
//! bucket.
//!
//! Which etcd versions this matches: the tombstone-at-compactRev skip is the rule of etcd
//! 3.4.34+, 3.5.16+ and 3.6. Older versions (such as 3.4.23 and 3.5.1) have no such skip, but they
//! physically delete that tombstone when they compact, so on every file they compacted
//! themselves both rules give the same hash. The two differ only for a file compacted by a newer
//! etcd whose compaction revision is a delete, read by an older etcd.
//!
//! A pending compaction (`scheduledCompactRev` newer than `finishedCompactRev`) is treated as
//! done, because etcd resumes it at boot: the result is what a member booted from this file
//! reports, including the entries that compaction would remove from the file.

use std::collections::HashMap;
use std::ops::ControlFlow;

use serde::Serialize;

use crate::meta::DbRevisions;
use crate::mvcc::{Error, Revision, for_each_revision};

/// The answer of etcd's HashKV RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HashKv {
    /// The crc32c (Castagnoli) of the kept `key` bucket entries.
    pub hash: u32,
    /// The compaction revision (-1 if never compacted), as the RPC's `compact_revision`.
    pub compact_revision: i64,
    /// The db's current revision, as the RPC's header revision.
    pub revision: i64,
}

/// The newest change of one user key at the compaction revision and at the hashed revision.
struct KeyState {
    /// Newest revision with `main ≤ compactRev`, and whether it is a tombstone: what survives
    /// compaction (tombstones never do).
    at_compact: (Revision, bool),
    /// Newest revision with `main ≤ rev`, and whether it is a tombstone.
    at_rev: (Revision, bool),
}

/// Computes HashKV at `rev` (`None` or `Some(0)`: the current revision), as etcd 3.4/3.5 would
/// after booting from `db`.
///
/// ```no_run
/// // Needs an etcd db: a member's `member/snap/db`, or a file from `etcdctl snapshot save`.
/// let db = bbolt::Db::open(std::path::Path::new("/var/etcd/data/member/snap/db")).unwrap();
/// let at_end = etcd_format::hashkv::hash_kv(&db, None).unwrap();
/// // The same number `etcdctl endpoint hashkv --rev <revision>` prints for a member with this data.
/// println!("hash {} at revision {} (compacted at {})", at_end.hash, at_end.revision, at_end.compact_revision);
/// ```
///
/// Errors like etcd: [`Error::Compacted`] if `0 < rev ≤ compactRev`, [`Error::FutureRevision`]
/// if `rev` is above the current revision. Memory is bounded by the number of distinct user
/// keys that have a revision at or below the compaction revision; values are never copied.
pub fn hash_kv(db: &bbolt::Db, rev: Option<i64>) -> Result<HashKv, Error> {
    hash_kv_inner(db, rev, None)
}

/// [`hash_kv`] as a member that holds the same history but compacted at `compact_revision`
/// reports it: the answer to compare with a live member's `HashKV`, whose compaction usually
/// moved on since the full snapshot was taken. Entries between the db's own compaction and
/// `compact_revision` are filtered as etcd's compaction would have removed them.
///
/// Errors as [`hash_kv`] (with `compact_revision` as the compaction), and
/// [`Error::CompactedLater`] when the db's own compaction is newer than `compact_revision`: it
/// no longer holds the older revisions such a member still hashes.
pub fn hash_kv_as_compacted(db: &bbolt::Db, rev: Option<i64>, compact_revision: i64) -> Result<HashKv, Error> {
    hash_kv_inner(db, rev, Some(compact_revision))
}

fn hash_kv_inner(db: &bbolt::Db, rev: Option<i64>, compact_at: Option<i64>) -> Result<HashKv, Error> {
    let revs = DbRevisions::read(db)?;
    let own = revs.effective_compact_revision();
    let compact = match compact_at {
        None => own,
        Some(c) if c >= own => c,
        Some(c) => return Err(Error::CompactedLater { requested: c, compact: own }),
    };
    let current = revs.current_revision;
    let rev = match rev {
        Some(r) if r > 0 && r <= compact => {
            return Err(Error::Compacted { requested: r, compact });
        }
        Some(r) if r > 0 && r > current => {
            return Err(Error::FutureRevision { requested: r, current });
        }
        None | Some(0) => current,
        Some(r) => r,
    };

    // Pass 1: the keep set, restricted to the keys that have revisions at or below the
    // compaction (only those revisions are ever filtered). Whether the full keep set is empty
    // also depends on keys created after the compaction: count their generations instead of
    // remembering them. etcd gives every put that starts a generation version 1, and every
    // tombstone ends one.
    let mut states: HashMap<Vec<u8>, KeyState> = HashMap::new();
    let mut live_after_compact: i64 = 0;
    // Never compacted (revisions start at 1): nothing is filtered, so pass 1 has nothing to learn.
    if compact >= 1 {
        pass_one(db, rev, compact, &mut states, &mut live_after_compact)?;
    }
    let keep_is_empty = live_after_compact <= 0 && states.values().all(|s| s.at_rev.1);

    // Pass 2: the hash.
    let mut hash = crc32c::crc32c(crate::mvcc::KEY_BUCKET);
    for_each_revision(db, |e| {
        let r = e.rev_key.rev;
        if r.main > rev {
            return Ok(ControlFlow::Break(()));
        }
        if r.main <= compact {
            // Every key seen here was recorded in pass 1.
            let Some(s) = states.get(e.kv.key) else {
                return Ok(ControlFlow::Continue(()));
            };
            // An entry at or below the compaction exists after it only if it is the key's
            // newest there and not a tombstone (this also skips a tombstone at compactRev).
            // With a non-empty keep set, it must also still be the newest at `rev`.
            let (kept, tomb) = if keep_is_empty { s.at_compact } else { s.at_rev };
            if tomb || kept != r || e.rev_key.tombstone {
                return Ok(ControlFlow::Continue(()));
            }
        }
        hash = crc32c::crc32c_append(hash, e.raw_key);
        hash = crc32c::crc32c_append(hash, e.raw_value);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(HashKv { hash, compact_revision: compact, revision: current })
}

/// Pass 1 of [`hash_kv`]: for every key with a revision at or below `compact`, its newest
/// change there and at `rev`; and the generations begun after the compaction that are still
/// live at `rev` (whether the keep set is empty depends on them too).
fn pass_one(
    db: &bbolt::Db,
    rev: i64,
    compact: i64,
    states: &mut HashMap<Vec<u8>, KeyState>,
    live_after_compact: &mut i64,
) -> Result<(), Error> {
    for_each_revision(db, |e| {
        let r = e.rev_key.rev;
        if r.main > rev {
            return Ok(ControlFlow::Break(()));
        }
        let here = (r, e.rev_key.tombstone);
        if r.main <= compact {
            match states.get_mut(e.kv.key) {
                Some(s) => {
                    s.at_compact = here;
                    s.at_rev = here;
                }
                None => {
                    states.insert(e.kv.key.to_vec(), KeyState { at_compact: here, at_rev: here });
                }
            }
        } else if let Some(s) = states.get_mut(e.kv.key) {
            s.at_rev = here;
        } else if e.rev_key.tombstone {
            *live_after_compact -= 1;
        } else if e.kv.version == 1 {
            *live_after_compact += 1;
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::io::Cursor;

    use super::*;
    use crate::meta::{FINISHED_COMPACT_REV, META_BUCKET, SCHEDULED_COMPACT_REV, encode_compact_rev};
    use crate::mvcc::{KEY_BUCKET, KeyValue, RevKey};

    /// One entry of a `key` bucket: (revision, tombstone, user key, raw value).
    type Entry = (Revision, bool, Vec<u8>, Vec<u8>);

    /// A random etcd-like history over a few keys: 1..=3 changes per revision, versions and
    /// create revisions as etcd assigns them, deletes only of live keys. Few keys and many
    /// deletes make revisions without any live key (an empty keep set) common.
    fn history(seed: u64, last: i64) -> Vec<Entry> {
        let keys = 2 + seed % 5;
        let delete_one_in = 2 + seed % 3;
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut live: BTreeMap<Vec<u8>, (i64, i64)> = BTreeMap::new(); // key -> (create, version)
        let mut out = Vec::new();
        for main in 2..=last {
            let mut used = HashSet::new();
            let changes = 1 + rnd(3);
            for _ in 0..changes {
                let key = format!("/k{}", rnd(keys)).into_bytes();
                if !used.insert(key.clone()) {
                    continue;
                }
                let rev = Revision::new(main, used.len() as i64 - 1);
                if live.contains_key(&key) && rnd(delete_one_in) == 0 {
                    live.remove(&key);
                    out.push((rev, true, key.clone(), KeyValue::tombstone(key).encode()));
                } else {
                    let (create, version) = live.get(&key).map_or((main, 1), |&(c, v)| (c, v + 1));
                    live.insert(key.clone(), (create, version));
                    let kv = KeyValue {
                        key: key.clone(),
                        create_revision: create,
                        mod_revision: main,
                        version,
                        value: format!("v{main}").into_bytes(),
                        lease: 0,
                    };
                    out.push((rev, false, key, kv.encode()));
                }
            }
        }
        out
    }

    /// The newest entry per key with main ≤ `at`: key -> (revision, tombstone).
    fn newest(entries: &[Entry], at: i64) -> HashMap<Vec<u8>, (Revision, bool)> {
        let mut m = HashMap::new();
        for (r, tomb, key, _) in entries.iter().filter(|e| e.0.main <= at) {
            m.insert(key.clone(), (*r, *tomb));
        }
        m
    }

    /// etcd's physical compaction at `c`; newer etcd keeps the tombstone at `c`.
    fn compact(entries: &[Entry], c: i64, keep_tomb_at_c: bool) -> Vec<Entry> {
        let at_c = newest(entries, c);
        let keep = |e: &Entry| e.0.main > c || (at_c[&e.2].0 == e.0 && (!e.1 || (keep_tomb_at_c && e.0.main == c)));
        entries.iter().filter(|e| keep(e)).cloned().collect()
    }

    /// etcd's HashByRev literally, over an already compacted bucket (3.5.16+ rule), and
    /// whether its keep set was empty.
    fn naive_hash(entries: &[Entry], rev: i64, c: i64) -> (u32, bool) {
        let keep: HashSet<Revision> =
            newest(entries, rev).into_values().filter(|(_, tomb)| !tomb).map(|(r, _)| r).collect();
        let mut h = crc32c::crc32c(b"key");
        for (r, tomb, _, v) in entries {
            let k = RevKey { rev: *r, tombstone: *tomb }.to_bytes();
            if r.main > rev || (r.main <= c && !keep.is_empty() && !keep.contains(r)) || (r.main == c && *tomb) {
                continue;
            }
            h = crc32c::crc32c_append(h, &k);
            h = crc32c::crc32c_append(h, v);
        }
        (h, keep.is_empty())
    }

    fn db_of(entries: &[Entry], finished: Option<i64>, scheduled: Option<i64>) -> bbolt::Db {
        let mut w = bbolt::BulkWriter::new(Cursor::new(Vec::new()), bbolt::WriterOptions::default()).unwrap();
        w.begin_bucket(KEY_BUCKET).unwrap();
        for (r, tomb, _, v) in entries {
            w.put(&RevKey { rev: *r, tombstone: *tomb }.to_bytes(), v).unwrap();
        }
        w.end_bucket().unwrap();
        w.begin_bucket(META_BUCKET).unwrap();
        if let Some(f) = finished {
            w.put(FINISHED_COMPACT_REV, &encode_compact_rev(f)).unwrap();
        }
        if let Some(s) = scheduled {
            w.put(SCHEDULED_COMPACT_REV, &encode_compact_rev(s)).unwrap();
        }
        w.end_bucket().unwrap();
        let (out, _) = w.finish().unwrap();
        bbolt::Db::from_bytes(out.into_inner()).unwrap()
    }

    #[test]
    fn bounded_memory_hash_equals_etcds_literal_algorithm_on_random_histories() {
        let last = 30;
        let mut empty_keeps = 0;
        for seed in 1..=30u64 {
            let entries = history(seed, last);
            for c in [2, 11, 23, last] {
                let old = compact(&entries, c, false);
                let new = compact(&entries, c, true);
                let variants = [
                    ("compacted by old etcd", db_of(&old, Some(c), Some(c))),
                    ("compacted by new etcd", db_of(&new, Some(c), Some(c))),
                    ("compaction pending", db_of(&entries, None, Some(c))),
                    ("compaction pending after an older one", db_of(&compact(&entries, 1, false), Some(1), Some(c))),
                ];
                for rev in (c + 1..=last).chain([0]) {
                    let at = if rev == 0 { last } else { rev };
                    let (want, empty_keep) = naive_hash(&old, at, c);
                    empty_keeps += usize::from(empty_keep);
                    assert_eq!(want, naive_hash(&new, at, c).0, "old and new etcd agree (seed {seed}, c {c})");
                    for (what, db) in &variants {
                        let got = hash_kv(db, Some(rev)).unwrap();
                        assert_eq!(
                            got,
                            HashKv { hash: want, compact_revision: c, revision: last },
                            "{what}: seed {seed}, compact {c}, rev {rev}"
                        );
                    }
                }
                for (_, db) in &variants {
                    assert!(matches!(hash_kv(db, Some(c)), Err(Error::Compacted { .. })));
                    assert!(matches!(hash_kv(db, Some(last + 1)), Err(Error::FutureRevision { .. })));
                }
            }
        }
        assert!(empty_keeps > 10, "the histories must exercise an empty keep set ({empty_keeps})");
    }

    #[test]
    fn a_db_compacted_earlier_hashes_as_a_member_compacted_later() {
        let last = 30;
        for seed in 1..=30u64 {
            let entries = history(seed, last);
            for (own, later) in [(-1, 5), (3, 11), (11, 11), (11, 23), (2, last)] {
                let db = if own < 0 {
                    db_of(&entries, None, None)
                } else {
                    db_of(&compact(&entries, own, false), Some(own), Some(own))
                };
                for rev in later + 1..=last {
                    let (want, _) = naive_hash(&compact(&entries, later, false), rev, later);
                    let got = hash_kv_as_compacted(&db, Some(rev), later).unwrap();
                    assert_eq!(
                        got,
                        HashKv { hash: want, compact_revision: later, revision: last },
                        "seed {seed}, {own} as {later}, rev {rev}"
                    );
                }
                assert!(matches!(hash_kv_as_compacted(&db, Some(later), later), Err(Error::Compacted { .. })));
            }
            let db = db_of(&compact(&entries, 11, false), Some(11), Some(11));
            let e = hash_kv_as_compacted(&db, None, 10).unwrap_err();
            assert!(matches!(e, Error::CompactedLater { requested: 10, compact: 11 }), "{e}");
            assert_eq!(hash_kv_as_compacted(&db, None, 11).unwrap(), hash_kv(&db, None).unwrap());
        }
    }

    #[test]
    fn never_compacted_reports_minus_one() {
        let entries = history(7, 12);
        let db = db_of(&entries, None, None);
        for rev in 1..=12 {
            let got = hash_kv(&db, Some(rev)).unwrap();
            assert_eq!(got, HashKv { hash: naive_hash(&entries, rev, -1).0, compact_revision: -1, revision: 12 });
        }
    }
}
