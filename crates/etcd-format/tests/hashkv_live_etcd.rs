//! HashKV, snapshot status and key reconstruction, judged by real etcd 3.4.23, 3.5.1 and 3.5.30.
//!
//! Each test runs a workload on a real etcd (puts, updates, a multi-op txn, deletes, a range
//! delete, leased keys, values spanning overflow pages, an empty value, a compaction at the
//! revision of a delete, more writes after it), records what etcd answers (`endpoint hashkv
//! --rev R`, `get --rev R`, `snapshot status`), then computes the same offline from (a) the data
//! dir's db copied after stopping etcd and (b) an `etcdctl snapshot save` file.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use etcd_format::hashkv::{HashKv, hash_kv};
use etcd_format::lease::{Lease, read_leases};
use etcd_format::meta::{DbRevisions, Meta};
use etcd_format::mvcc::{self, KeyValue, LEASE_BUCKET, Revision};
use etcd_format::snapshot_file::{TrailerStatus, verify_snapshot_file};
use etcd_format::status::snapshot_status;
use testsupport::{Etcd, EtcdVersion};

/// A value of `n` printable bytes that differs per `seed`, so compression or dedup can't hide bugs.
fn big_value(n: usize, seed: u32) -> String {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect()
}

/// What etcd answered while it ran.
struct Observed {
    /// (requested rev, etcd's hashkv answer).
    hashkv: Vec<(i64, HashKv)>,
    /// (rev, every key at rev as etcdctl's JSON).
    keys: Vec<(i64, Vec<serde_json::Value>)>,
}

fn observe(etcd: &Etcd, revs: impl IntoIterator<Item = i64>, with_keys: bool) -> Observed {
    let mut obs = Observed { hashkv: Vec::new(), keys: Vec::new() };
    for rev in revs {
        let (hash, compact_revision, revision) = etcd.hashkv(rev);
        obs.hashkv.push((rev, HashKv { hash, compact_revision, revision }));
        if with_keys && rev > 0 {
            obs.keys.push((rev, etcd.get_all(rev).0));
        }
    }
    obs
}

/// etcdctl's JSON form of one key, as our reader reconstructs it.
fn to_etcdctl_json(kv: &KeyValue) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("key".into(), B64.encode(&kv.key).into());
    m.insert("create_revision".into(), kv.create_revision.into());
    m.insert("mod_revision".into(), kv.mod_revision.into());
    m.insert("version".into(), kv.version.into());
    if !kv.value.is_empty() {
        m.insert("value".into(), B64.encode(&kv.value).into());
    }
    if kv.lease != 0 {
        m.insert("lease".into(), kv.lease.into());
    }
    serde_json::Value::Object(m)
}

fn check_offline(what: &str, db: &bbolt::Db, obs: &Observed) {
    for (rev, want) in &obs.hashkv {
        let got = hash_kv(db, Some(*rev)).unwrap_or_else(|e| panic!("{what}: hash_kv at {rev}: {e}"));
        assert_eq!(&got, want, "{what}: HashKV at --rev {rev}");
    }
    for (rev, want) in &obs.keys {
        let got: Vec<serde_json::Value> = mvcc::keys_at(db, *rev).unwrap().values().map(to_etcdctl_json).collect();
        assert_eq!(&got, want, "{what}: keys at --rev {rev}");
    }
}

fn put(etcd: &Etcd, key: &str, value: &str) -> i64 {
    etcd.etcdctl(&["put", key, value]);
    etcd.revision()
}

/// What the main workload did.
struct Workload {
    compact: i64,
    last: i64,
    lease: i64,
    /// The revisions of the two txns (before and after the compaction).
    txns: (i64, i64),
    observed: Observed,
}

/// The main workload, and etcd's answers at every revision above the compaction.
fn main_workload(etcd: &Etcd) -> Workload {
    for i in 1..=6 {
        put(etcd, &format!("/a/{i}"), &format!("v{i}"));
    }
    put(etcd, "/a/1", "v1b");
    put(etcd, "/a/2", "v2b");
    put(etcd, "/a/1", "v1c");
    // One revision, four changes: subs 0..3 in execution order.
    etcd.etcdctl_stdin(
        &["txn"],
        "mod(\"/a/1\") > \"0\"\n\nput /t/z z\ndel /a/3\nput /t/a a\nput /a/4 v4b\n\nput /never x\n\n",
    );
    let txn1 = etcd.revision();
    let grant: serde_json::Value =
        serde_json::from_str(&etcd.etcdctl(&["lease", "grant", "600", "-w", "json"])).unwrap();
    let lease = grant["ID"].as_i64().expect("lease ID");
    let lease_hex = format!("{lease:x}");
    etcd.etcdctl(&["put", "/l/1", "x", "--lease", &lease_hex]);
    etcd.etcdctl(&["put", "/l/2", "y", "--lease", &lease_hex]);
    // Values beyond a 4 KiB page: their leaves get overflow pages.
    put(etcd, "/big/1", &big_value(6000, 1));
    put(etcd, "/big/2", &big_value(12000, 2));
    put(etcd, "/big/1", &big_value(5000, 3));
    put(etcd, "/e", "");
    etcd.etcdctl(&["del", "/a/5"]);
    for k in ["/r/1", "/r/3", "/r/2"] {
        put(etcd, k, k);
    }
    etcd.etcdctl(&["del", "--prefix", "/r/"]);
    let before_compact = etcd.revision();
    // Compact exactly at the revision of a delete: 3.4.23/3.5.1 drop that tombstone.
    etcd.etcdctl(&["del", "/a/2"]);
    let compact = etcd.revision();
    assert_eq!(compact, before_compact + 1);
    etcd.etcdctl(&["compaction", &compact.to_string()]);
    put(etcd, "/a/2", "again");
    put(etcd, "/n/1", "n");
    put(etcd, "/t/z", "z2");
    etcd.etcdctl(&["del", "/t/a"]);
    etcd.etcdctl(&["put", "/l/1", "x2", "--lease", &lease_hex]);
    etcd.etcdctl_stdin(&["txn"], &format!("\nput /t/q q\ndel /a/6\nput /big/2 {}\n\n\n", big_value(7000, 4)));
    let txn2 = etcd.revision();
    etcd.etcdctl(&["del", "/e"]);
    put(etcd, "/e", "");
    put(etcd, "/big/3", &big_value(20000, 5));
    let last = etcd.revision();
    let observed = observe(etcd, (compact + 1..=last).chain([0]), true);
    Workload { compact, last, lease, txns: (txn1, txn2), observed }
}

fn main_workload_matches(version: EtcdVersion) {
    let mut etcd = Etcd::start(version);
    let Workload { compact, last, lease, txns, observed: obs } = main_workload(&etcd);
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.db");
    etcd.etcdctl(&["snapshot", "save", snap.to_str().unwrap()]);
    etcd.stop();
    let live_db = dir.path().join("live.db");
    std::fs::copy(etcd.data_dir().join("member/snap/db"), &live_db).unwrap();
    drop(etcd);

    assert_eq!(verify_snapshot_file(&snap).unwrap(), TrailerStatus::Verified);
    assert_eq!(verify_snapshot_file(&live_db).unwrap(), TrailerStatus::NoTrailer);

    for (what, path) in [("live db", &live_db), ("snapshot", &snap)] {
        let what = format!("{version:?} {what}");
        let db = bbolt::Db::open(path).unwrap();
        check_offline(&what, &db, &obs);

        let revs = DbRevisions::read(&db).unwrap();
        assert_eq!(revs.current_revision, last, "{what}");
        assert_eq!(revs.last_key_revision.map(|r| r.main), Some(last), "{what}");
        assert_eq!(revs.compact_revision, Some(compact), "{what}");
        assert_eq!(revs.scheduled_compact_revision, Some(compact), "{what}");
        assert!(revs.consistent_index.is_some_and(|ci| ci > 0), "{what}: {revs:?}");
        // 3.4 never writes `term`; 3.5 does with every commit.
        assert_eq!(revs.term.is_some(), version != EtcdVersion::V3_4, "{what}: {revs:?}");

        // Like etcd: compacted and future revisions are refused.
        assert!(matches!(hash_kv(&db, Some(compact)), Err(mvcc::Error::Compacted { .. })), "{what}");
        assert!(matches!(hash_kv(&db, Some(last + 1)), Err(mvcc::Error::FutureRevision { .. })), "{what}");

        // The one lease, with the TTL it was granted.
        let leases = read_leases(&db).unwrap();
        assert_eq!(leases.len(), 1, "{what}: {leases:?}");
        assert_eq!((leases[0].id, leases[0].ttl), (lease, 600), "{what}");
        let lease_raw = db.bucket(LEASE_BUCKET).unwrap().unwrap();
        let lease_raw = lease_raw.get(&Lease::bucket_key(lease)).unwrap().unwrap();
        assert_eq!(leases[0].encode(), lease_raw, "{what}: lease record re-encodes byte-exact");

        // Every entry etcd wrote re-encodes to the same bytes: leased, empty, large values,
        // tombstones.
        mvcc::for_each_revision(&db, |e| {
            let again = if e.rev_key.tombstone {
                KeyValue::tombstone(e.kv.key.to_vec()).encode()
            } else {
                e.kv.to_owned().encode()
            };
            assert_eq!(again, e.raw_value, "{what}: entry {}", e.rev_key.rev);
            assert_eq!(e.rev_key.to_bytes(), e.raw_key);
            Ok(std::ops::ControlFlow::Continue(()))
        })
        .unwrap();

        let want = version.snapshot_status(path);
        let got = serde_json::to_value(snapshot_status(&db).unwrap()).unwrap();
        assert_eq!(got, want, "{what}: snapshot status");
    }

    // Each txn is one revision whose changes are numbered in execution order. The first one
    // is below the compaction, so only its entries that are still the newest of their key stay.
    let db = bbolt::Db::open(&snap).unwrap();
    let mut at: BTreeMap<i64, Vec<(i64, bool, String)>> = BTreeMap::new();
    mvcc::for_each_revision(&db, |e| {
        if e.rev_key.rev.main == txns.0 || e.rev_key.rev.main == txns.1 {
            let key = String::from_utf8_lossy(e.kv.key).into_owned();
            at.entry(e.rev_key.rev.main).or_default().push((e.rev_key.rev.sub, e.rev_key.tombstone, key));
        }
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .unwrap();
    let s = |v: &[(i64, bool, &str)]| v.iter().map(|&(a, b, c)| (a, b, c.to_string())).collect::<Vec<_>>();
    assert_eq!(at[&txns.0], s(&[(0, false, "/t/z"), (2, false, "/t/a"), (3, false, "/a/4")]), "{version:?}");
    assert_eq!(at[&txns.1], s(&[(0, false, "/t/q"), (1, true, "/a/6"), (2, false, "/big/2")]), "{version:?}");
}

/// A tail scenario: a delete that is the last write, then a compaction at it (so etcd's
/// current revision is above the last key left in the bucket), then every key deleted (an
/// empty keep set), then a key created after the compaction (a keep set of only new keys).
fn compacted_tail_matches(version: EtcdVersion) {
    let mut etcd = Etcd::start(version);
    put(&etcd, "/x/1", "a");
    put(&etcd, "/x/2", "b");
    let kept = put(&etcd, "/x/1", "c");
    etcd.etcdctl(&["del", "/x/2"]);
    let compact = etcd.revision();
    etcd.etcdctl(&["compaction", &compact.to_string()]);
    let at_compact = observe(&etcd, [0], false);
    let dir = tempfile::tempdir().unwrap();
    let snap1 = dir.path().join("at-compact.db");
    etcd.etcdctl(&["snapshot", "save", snap1.to_str().unwrap()]);

    etcd.etcdctl(&["del", "/x/1"]);
    let all_deleted = etcd.revision();
    put(&etcd, "/y/1", "new");
    let obs_final = observe(&etcd, [all_deleted, all_deleted + 1, 0], true);
    etcd.stop();
    let live = bbolt::Db::open(&etcd.data_dir().join("member/snap/db")).unwrap();

    let db1 = bbolt::Db::open(&snap1).unwrap();
    let revs = DbRevisions::read(&db1).unwrap();
    assert_eq!(revs.current_revision, compact, "{version:?}: currentRev is the compaction's");
    // etcd before 3.4.34/3.5.16 drops the tombstone at the compaction revision; newer etcd
    // keeps it (and HashKV skips it).
    let (last_key, status_rev) = if version == EtcdVersion::V3_5Latest {
        (Revision::new(compact, 0), compact)
    } else {
        (Revision::new(kept, 0), kept)
    };
    assert_eq!(revs.last_key_revision, Some(last_key), "{version:?}");
    check_offline(&format!("{version:?} at compact"), &db1, &at_compact);
    let status = snapshot_status(&db1).unwrap();
    assert_eq!(status.revision, status_rev, "status reports the last key in the bucket, not currentRev");
    assert_eq!(serde_json::to_value(status).unwrap(), version.snapshot_status(&snap1));

    check_offline(&format!("{version:?} final"), &live, &obs_final);
    let meta = Meta::read(&live).unwrap();
    assert_eq!(meta.finished_compact_rev, Some(Revision::new(compact, 0)));
}

#[test]
fn hashkv_status_and_keys_match_etcd_3_4() {
    main_workload_matches(EtcdVersion::V3_4);
}

#[test]
fn hashkv_status_and_keys_match_etcd_3_5() {
    main_workload_matches(EtcdVersion::V3_5);
}

#[test]
fn hashkv_after_compacting_a_final_delete_matches_etcd_3_4() {
    compacted_tail_matches(EtcdVersion::V3_4);
}

#[test]
fn hashkv_after_compacting_a_final_delete_matches_etcd_3_5() {
    compacted_tail_matches(EtcdVersion::V3_5);
}

#[test]
fn hashkv_status_and_keys_match_etcd_3_5_30() {
    main_workload_matches(EtcdVersion::V3_5Latest);
}

#[test]
fn hashkv_skips_the_tombstone_kept_at_the_compaction_like_etcd_3_5_30() {
    compacted_tail_matches(EtcdVersion::V3_5Latest);
}
