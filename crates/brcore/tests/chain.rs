//! Chain selection over the stores real `etcdbrctl` binaries wrote, through the `Snapstore`
//! trait (their objects loaded into an `InMemoryStore`).

use std::fs;

use brcore::chain::{Chain, Target, list_chain};
use brcore::error::Error;
use brcore::{InMemoryStore, Snapstore, SnapstoreExt};

/// The objects of a real store (`testdata/<name>/store/v2/`) under `<prefix>/v2/` of an
/// in-memory store, so tests can add and remove objects.
async fn load_store(name: &str, prefix: &str) -> InMemoryStore {
    let store = InMemoryStore::new();
    for entry in fs::read_dir(testsupport::go_testdata().join(name).join("store/v2")).unwrap() {
        let path = entry.unwrap().path();
        let key = format!("{prefix}/v2/{}", path.file_name().unwrap().to_str().unwrap());
        store.write_bytes(&key, fs::read(&path).unwrap().into()).await.unwrap();
    }
    store
}

/// A copy of `from` under the name `to`, both under `etcd-main/v2/`.
async fn copy_object(store: &InMemoryStore, from: &str, to: &str) {
    let data = store.read_to_bytes(&format!("etcd-main/v2/{from}")).await.unwrap();
    store.write_bytes(&format!("etcd-main/v2/{to}"), data).await.unwrap();
}

fn last_revs(c: &Chain) -> Vec<u64> {
    c.deltas.iter().map(|d| d.name.last_revision).collect()
}

#[tokio::test]
async fn latest_chain_of_each_real_store() {
    for (name, deltas) in [("etcdbrctl-0.28.4-etcd-3.4.23", 10), ("etcdbrctl-0.43.0-etcd-3.5.30", 9)] {
        let store = load_store(name, "store").await;
        let chain = list_chain(&store, "store", Target::Latest).await.unwrap();
        assert!(chain.full.key.starts_with("store/v2/Full-00000000-00000166-"), "{}", chain.full.key);
        assert_eq!(chain.deltas.len(), deltas, "{name}");
        assert_eq!(chain.last_revision(), 338);
        assert!(chain.redundant.is_empty());
        assert_eq!(chain.deltas[0].name.start_revision, 167);
        for (i, d) in chain.deltas.iter().enumerate() {
            assert_eq!(d.name.start_revision, chain.covered_before(i) + 1, "continuous by name");
        }
        let on_disk: u64 = fs::read_dir(testsupport::go_testdata().join(name).join("store/v2"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(chain.total_size(), on_disk);
        // A trailing slash on the prefix means the same.
        assert_eq!(list_chain(&store, "store/", Target::Latest).await.unwrap(), chain);
    }
}

#[tokio::test]
async fn point_in_time_chains_of_a_real_store() {
    let store = load_store("etcdbrctl-0.28.4-etcd-3.4.23", "store").await;
    // The mid revision of the test data (269) lies in Incr-00000265-00000269.
    let chain = list_chain(&store, "store", Target::Revision(269)).await.unwrap();
    assert_eq!(last_revs(&chain), [168, 200, 235, 264, 269]);
    let chain = list_chain(&store, "store", Target::Revision(266)).await.unwrap();
    assert_eq!(chain.last_revision(), 269);
    let chain = list_chain(&store, "store", Target::Revision(166)).await.unwrap();
    assert!(chain.deltas.is_empty());
    let err = list_chain(&store, "store", Target::Revision(100)).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }) && err.to_string().contains("revision 166"), "{err}");
    // By time: Incr-00000236-00000264-1795607418 is the first delta created after 1795607417.
    let chain = list_chain(&store, "store", Target::Time(1795607417)).await.unwrap();
    assert_eq!(last_revs(&chain), [168, 200, 235, 264]);
    let chain = list_chain(&store, "store", Target::Time(i64::MAX)).await.unwrap();
    assert_eq!(chain.last_revision(), 338);
    assert!(matches!(list_chain(&store, "store", Target::Time(1795607408)).await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn a_missing_delta_is_a_gap_naming_its_neighbours() {
    let store = load_store("etcdbrctl-0.43.0-etcd-3.5.30", "etcd-main").await;
    store.delete("etcd-main/v2/Incr-00000270-00000288-1795611447.gz").await.unwrap();
    let err = list_chain(&store, "etcd-main", Target::Latest).await.unwrap_err();
    let Error::Gap { from, to, ref detail } = err else { panic!("{err}") };
    assert_eq!((from, to), (270, 288));
    assert!(detail.contains("Incr-00000236-00000269-1795611445.gz"), "{detail}");
    assert!(detail.contains("Incr-00000289-00000303-1795611448.gz"), "{detail}");
    assert!(!err.is_retryable());
    // Restoring to a revision before the gap still works.
    let chain = list_chain(&store, "etcd-main", Target::Revision(269)).await.unwrap();
    assert_eq!(chain.last_revision(), 269);
}

#[tokio::test]
async fn overlapping_uploads_of_two_leaders_are_resolved_by_name() {
    let store = load_store("etcdbrctl-0.28.4-etcd-3.4.23", "etcd-main").await;
    // A second leader uploaded the same range again, later, and a delta that overlaps the next.
    copy_object(&store, "Incr-00000201-00000235-1795607416.gz", "Incr-00000201-00000235-1795607417.gz").await;
    copy_object(&store, "Incr-00000270-00000280-1795607420.gz", "Incr-00000265-00000285-1795607420.gz").await;
    let chain = list_chain(&store, "etcd-main", Target::Latest).await.unwrap();
    let redundant: Vec<String> = chain.redundant.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(redundant, ["Incr-00000201-00000235-1795607417.gz"]);
    assert_eq!(chain.last_revision(), 338);
    let i = chain.deltas.iter().position(|d| d.name.start_revision == 265 && d.name.last_revision == 285).unwrap();
    assert_eq!(chain.covered_before(i), 280, "revisions 265..=280 of the overlapping delta are repeats");
    assert_eq!(chain.deltas[i + 1].name.start_revision, 281);
    assert_eq!(chain.covered_before(i + 1), 285, "and 281..=285 of the next one");
}

#[tokio::test]
async fn an_empty_store_is_not_found_naming_prefix_and_store() {
    let store = InMemoryStore::new();
    let err = list_chain(&store, "shoot--dev--x/etcd-main", Target::Latest).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NotFound { .. }), "{msg}");
    assert!(msg.contains("shoot--dev--x/etcd-main/v2/") && msg.contains("InMemoryStore"), "{msg}");
    // Objects of another prefix do not count.
    let other = load_store("etcdbrctl-0.28.4-etcd-3.4.23", "etcd-main").await;
    assert!(matches!(list_chain(&other, "etcd", Target::Latest).await, Err(Error::NotFound { .. })));
}
