//! The backend schema of the full snapshots written by the real Go etcdbrctl (from etcd 3.4.23
//! and 3.5.30): every `key`, `lease` and `meta` entry decodes, and re-encoding gives back the
//! exact bytes etcd wrote (HashKV covers them, so a restore must reproduce them).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use etcd_format::lease::{Lease, read_leases};
use etcd_format::meta::{ConfState, DbRevisions, Meta};
use etcd_format::mvcc::{self, KeyValue, LEASE_BUCKET, Revision};

/// The store's Full snapshot, decompressed into `dir`.
fn gunzip_full(store: &str, dir: &Path) -> PathBuf {
    testsupport::go_full_snapshot(store, &dir.join(format!("{store}.db")))
}

/// Every entry of the `key` bucket re-encodes to the bytes etcd wrote, and obeys etcd's
/// invariants; returns the number of entries.
fn key_bucket_round_trips(db: &bbolt::Db) -> usize {
    let mut n = 0;
    let mut last: Option<Revision> = None;
    mvcc::for_each_revision(db, |e| {
        n += 1;
        let rev = e.rev_key.rev;
        assert!(last.is_none_or(|l| l < rev), "revisions increase: {last:?} then {rev}");
        last = Some(rev);
        assert_eq!(e.rev_key.to_bytes(), e.raw_key);
        if e.rev_key.tombstone {
            assert_eq!(KeyValue::tombstone(e.kv.key.to_vec()).encode(), e.raw_value, "tombstone at {rev}");
        } else {
            assert_eq!(e.kv.to_owned().encode(), e.raw_value, "put at {rev}");
            assert_eq!(e.kv.mod_revision, rev.main, "mod_revision of {rev}");
            assert!(e.kv.version >= 1 && e.kv.create_revision <= e.kv.mod_revision, "{rev}: {:?}", e.kv);
        }
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    n
}

#[test]
fn store_full_snapshots_decode_and_re_encode_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    for (store, consistent_index, term) in
        [("etcdbrctl-0.28.4-etcd-3.4.23", 171, None), ("etcdbrctl-0.43.0-etcd-3.5.30", 172, Some(2))]
    {
        let db = bbolt::Db::open(&gunzip_full(store, dir.path())).unwrap();
        assert_eq!(key_bucket_round_trips(&db), 163, "{store}");

        let revs = DbRevisions::read(&db).unwrap();
        assert_eq!(revs.current_revision, 166, "{store}");
        assert_eq!(revs.last_key_revision.map(|r| r.main), Some(166), "{store}");
        assert_eq!(revs.compact_revision, Some(135), "{store}");
        assert_eq!(revs.scheduled_compact_revision, Some(135), "{store}");
        assert_eq!(revs.consistent_index, Some(consistent_index), "{store}");
        assert_eq!(revs.term, term, "{store}");
        assert_eq!(revs.effective_compact_revision(), 135);

        let meta = Meta::read(&db).unwrap();
        let want_conf = term.map(|_| ConfState { voters: vec![700240968890523710], ..Default::default() });
        assert_eq!(meta.conf_state, want_conf, "{store}: 3.5 writes confState, 3.4 does not");
        if let Some(cs) = &meta.conf_state {
            let raw = db.bucket(b"meta").unwrap().unwrap().get(b"confState").unwrap().unwrap();
            assert_eq!(cs.to_json(), raw, "{store}: confState JSON re-encodes byte-exact");
        }

        let leases = read_leases(&db).unwrap();
        assert_eq!(leases.len(), 1, "{store}");
        assert!(leases[0].ttl > 0 && leases[0].remaining_ttl == 0, "{store}: {leases:?}");
        let raw = db.bucket(LEASE_BUCKET).unwrap().unwrap().get(&Lease::bucket_key(leases[0].id)).unwrap().unwrap();
        assert_eq!(leases[0].encode(), raw, "{store}: lease re-encodes byte-exact");

        // 113 live keys at the snapshot's revision, and some of them hold the lease.
        let live = mvcc::keys_at(&db, 166).unwrap();
        assert_eq!(live.len(), 113, "{store}");
        assert!(live.values().any(|kv| kv.lease == leases[0].id), "{store}: a key uses the lease");
    }
}

#[test]
fn corrupted_key_entries_are_reported_not_panicked() {
    // A db whose key bucket holds a 16-byte key and another with a truncated KeyValue.
    for (key, value, what) in [
        (vec![0u8; 16], KeyValue::tombstone(b"k".to_vec()).encode(), "a revision key is 17 or 18 bytes"),
        (mvcc::RevKey::put(Revision::new(2, 0)).to_bytes(), vec![0x0a, 0x05, b'k'], "runs past the end"),
    ] {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = bbolt::BulkWriter::new(&mut out, bbolt::WriterOptions::default()).unwrap();
        w.begin_bucket(b"key").unwrap();
        w.put(&key, &value).unwrap();
        w.end_bucket().unwrap();
        w.finish().unwrap();
        let db = bbolt::Db::from_bytes(out.into_inner()).unwrap();
        let err = mvcc::keys_at(&db, 10).unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
        assert!(matches!(err, mvcc::Error::Corrupt { .. }));
        assert!(etcd_format::hashkv::hash_kv(&db, None).is_err());
        assert!(DbRevisions::read(&db).is_err() || what.contains("past the end"));
    }
}
