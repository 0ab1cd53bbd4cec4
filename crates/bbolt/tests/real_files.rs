//! The reader and checker on snapshots written by the real Go etcdbrctl (etcd 3.4.23 and 3.5.30).

mod common;

use bbolt::{Db, Entry};

const BUCKETS: [&str; 10] =
    ["alarm", "auth", "authRoles", "authUsers", "cluster", "key", "lease", "members", "members_removed", "meta"];

#[test]
fn real_full_snapshots_open_check_clean_and_list_all_buckets() {
    // (entries per bucket in BUCKETS order), from the Python oracle boltparse.py.
    let expected: [[usize; 10]; 2] = [[0, 1, 0, 0, 1, 163, 1, 1, 0, 3], [0, 1, 0, 0, 1, 163, 1, 1, 0, 5]];
    for (path, expected) in common::full_snapshots().iter().zip(expected) {
        let bytes = common::gunzip(path);
        assert_eq!(bytes.len() % 512, 32, "sha256 trailer present");
        let db = Db::from_bytes(bytes.clone()).expect("open");
        assert_eq!(db.page_size(), 4096);
        assert_eq!(db.size(), (bytes.len() - 32) as u64, "size = pgid * page size, trailer ignored");
        let report = db.check();
        assert!(report.is_ok(), "{}: {report}", path.display());
        assert!(report.free_pages > 0 || report.reachable_pages == report.pages);
        assert_eq!(report.buckets, 10);
        assert_eq!(report.entries as usize, expected.iter().sum::<usize>());
        let names: Vec<String> = db
            .root()
            .iter()
            .map(|e| match e.expect("iterate root") {
                Entry::Bucket { name } => String::from_utf8(name.to_vec()).expect("ascii"),
                Entry::Value { .. } => panic!("plain key in the root bucket"),
            })
            .collect();
        assert_eq!(names, BUCKETS);
        for (name, want) in BUCKETS.iter().zip(expected) {
            let b = db.bucket(name.as_bytes()).expect("lookup").expect("bucket exists");
            let n = b.iter().collect::<Result<Vec<_>, _>>().expect("iterate").len();
            assert_eq!(n, want, "entries in {name}");
        }
        // Keys of the key bucket are revisions: 17 bytes, or 18 with a 't' for tombstones, the
        // last one at main revision 166 (the snapshot's revision).
        let key = db.bucket(b"key").unwrap().unwrap();
        let mut last = None;
        for e in key.iter() {
            let Entry::Value { key, value } = e.unwrap() else { panic!("bucket inside key") };
            assert!(key.len() == 17 || (key.len() == 18 && key[17] == b't'), "revision key {key:?}");
            assert_eq!(key.get(8), Some(&b'_'));
            assert_eq!(db.bucket(b"key").unwrap().unwrap().get(key).unwrap(), Some(value));
            last = Some(u64::from_be_bytes(key[..8].try_into().unwrap()));
        }
        assert_eq!(last, Some(166));
        assert_eq!(key.get(b"nope").unwrap(), None);
        assert!(db.bucket(b"nope").unwrap().is_none());
        assert!(db.bucket(b"alarm").unwrap().unwrap().is_inline(), "empty buckets are inline in etcd files");
        assert!(!key.is_inline());
    }
}

#[test]
fn real_snapshot_opens_from_disk_via_mmap() {
    let path = &common::full_snapshots()[0];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db");
    std::fs::write(&file, common::gunzip(path)).unwrap();
    let db = Db::open(&file).expect("open file");
    assert_eq!(db.path(), Some(file.as_path()));
    assert!(db.check().is_ok());
    let from_mem = Db::from_bytes(std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(common::dump(&db), common::dump(&from_mem));
    assert_eq!(db.meta(), from_mem.meta());
    // WriteTo writes meta 0 with txid T and meta 1 with T-1; the larger wins.
    let [m0, m1] = db.metas();
    let (m0, m1) = (m0.unwrap(), m1.unwrap());
    assert_eq!(m0.txid, m1.txid + 1);
    assert_eq!(db.meta().slot, 0);
    assert_eq!(db.meta().freelist, None, "etcd never persists the freelist");
}
