//! The generator makes data a restore accepts and that means what it says: a small dataset
//! (full from real etcd 3.5.30, deltas synthesised) is rebuilt by `brcore::rebuild::rebuild_db`
//! (which refuses gaps, revisions going backwards and a key changed twice in one revision), and
//! the result's live keys match the generator's bookkeeping.

use std::path::PathBuf;

use brcore::delta::EventKind;
use brcore::rebuild::{Membership, RebuildOptions, rebuild_db};
use etcdbr_benches::{Dataset, DatasetParams, ETCD_3_5_30_DIR};

#[test]
fn generated_store_rebuilds_to_the_last_revision_with_consistent_keys() {
    let etcd = PathBuf::from(ETCD_3_5_30_DIR).join("etcd");
    if !etcd.exists() {
        panic!("{} is missing: the generator needs a real etcd", etcd.display());
    }
    let root = tempfile::tempdir().unwrap();
    let params = DatasetParams {
        keys: 300,
        revisions: 700,
        events_per_delta: 100,
        value_size: 200,
        delta_value_size: 100,
        seed: 3,
    };
    let ds = Dataset::open_or_generate(root.path(), &params, &etcd).unwrap();
    assert_eq!(ds.info.last_revision - ds.info.base_revision, 700);
    assert!(ds.info.deltas.len() >= 7, "about 100 events per delta: {:?}", ds.info.deltas);

    // Object names chain: each delta starts right after the previous one's last revision.
    let mut next = ds.info.base_revision as u64 + 1;
    for name in &ds.info.deltas {
        let n = brcore::name::SnapshotName::parse(name).unwrap();
        assert_eq!(n.start_revision, next, "{name}");
        next = n.last_revision + 1;
    }
    assert_eq!(next - 1, ds.info.last_revision as u64);

    let events = ds.read_events().unwrap();
    assert_eq!(events.len() as u64, ds.info.events);
    assert!(events.iter().any(|e| e.kind == EventKind::Delete));
    assert!(events.iter().any(|e| e.lease != 0));
    assert!(events.windows(2).any(|w| w[0].mod_revision == w[1].mod_revision), "some revisions are txns");

    let db = bbolt::Db::open(&ds.db_file()).unwrap();
    let opts = RebuildOptions::new(Membership::Keep);
    let out = root.path().join("rebuilt.db");
    let file = std::fs::File::create(&out).unwrap();
    let (_, stats) = rebuild_db(&db, events.iter().cloned().map(Ok), &opts, file).unwrap();
    assert_eq!(stats.revision, ds.info.last_revision);
    assert_eq!(stats.revisions_applied, 700);
    assert!(stats.leases_added > 0, "deltas reference leases the full lacks");

    let rebuilt = bbolt::Db::open(&out).unwrap();
    assert!(rebuilt.check().is_ok());
    let live = etcd_format::mvcc::keys_at(&rebuilt, stats.revision).unwrap();
    assert_eq!(live.len() as u64, ds.info.live_keys_at_end);
    // The last put of each key carries the create revision and version etcd would have given.
    for e in events.iter().rev().filter(|e| e.kind == EventKind::Put).take(50) {
        if let Some(kv) = live.get(&e.key)
            && kv.mod_revision == e.mod_revision
        {
            assert_eq!((kv.create_revision, kv.version), (e.create_revision, e.version));
            assert!(e.create_revision <= e.mod_revision && e.version >= 1);
        }
    }

    // A second open finds the cache instead of generating again.
    let again = Dataset::open_or_generate(root.path(), &params, &etcd).unwrap();
    // The cached info comes back from JSON: compare the float with a tolerance.
    assert!(
        (again.info.generation_seconds - ds.info.generation_seconds).abs() < 1e-6,
        "regenerated instead of reusing the cache"
    );
}
