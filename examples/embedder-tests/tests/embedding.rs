//! What an outside crate can do with etcdbr's published APIs alone.

use std::sync::Arc;

use brcore::Snapstore;
use example_embedder_tests::DirStore;
use testsupport::{Etcd, EtcdVersion, free_port};

/// A store written outside this repository passes the whole `Snapstore` contract in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedder_written_store_conforms_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    brcore::testing::run_conformance(Arc::new(DirStore::new(dir.path()))).await;
}

/// The examples against a real etcd: one full snapshot into the embedder's store, an offline
/// verification of it, and a restore that etcd boots and serves with the source's hashkv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_snapshot_verify_and_restore_a_real_etcd() {
    let source = tokio::task::spawn_blocking(|| Etcd::start(EtcdVersion::V3_5)).await.unwrap();
    for i in 0..50 {
        source.etcdctl(&["put", &format!("/registry/pods/p{i:02}"), &format!("value-{i}")]);
    }
    source.etcdctl(&["del", "/registry/pods/p07"]);
    let revision = source.revision();

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Snapstore> = Arc::new(DirStore::new(dir.path().join("store")));
    let full =
        example_snapshot_once::snapshot_once(&source.endpoint(), store.clone(), "etcd-main").await.expect("snapshot");
    assert_eq!(full.snapshot.name.last_revision as i64, revision);

    let chain = example_verify_store::chain(store.as_ref(), "etcd-main").await.unwrap();
    assert_eq!(chain.full.key, full.snapshot.key);
    let report = example_verify_store::verify_store(store.clone(), "etcd-main").await.expect("verify");
    let (live_hash, _, _) = source.hashkv(revision);
    assert_eq!(report.end().expect("hashed at the end").hash, live_hash, "offline hash equals etcd's");

    let data_dir = dir.path().join("restored.etcd");
    let peer = free_port();
    let progress = Arc::new(example_restore_latest::PrintProgress::default());
    let restored = example_restore_latest::restore_latest(
        store.clone(),
        "etcd-main",
        data_dir.clone(),
        "default",
        &format!("http://127.0.0.1:{peer}"),
        progress,
    )
    .await
    .expect("restore");
    assert_eq!(restored.stats.revision, revision);
    let booted =
        tokio::task::spawn_blocking(move || Etcd::start_on(EtcdVersion::V3_5, &data_dir, "default", peer, free_port()))
            .await
            .unwrap();
    assert_eq!(booted.hashkv(revision).0, live_hash, "the restored etcd serves the source's data");
    assert_eq!(booted.etcdctl(&["get", "/registry/pods/p42", "--print-value-only"]).trim(), "value-42");
}
