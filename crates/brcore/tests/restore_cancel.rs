//! The `Restorer` contract's cancellation clause: dropping the restore's future leaves no
//! `member/` and removes `<data-dir>.part`.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use brcore::restore::{NoProgress, OfflineRestorer, RestorePlan, Restorer, part_dir};
use brcore::{ByteStream, InMemoryStore, ObjectMeta, Snapstore, SnapstoreExt, StoreError, WriteOptions};
use etcd_format::membership::Cluster;
use tokio::sync::Notify;

/// A store whose reads of one object wait until the test opens the gate.
#[derive(Debug)]
struct Gated {
    inner: InMemoryStore,
    gated: String,
    reached: Notify,
    open: Notify,
}

#[async_trait]
impl Snapstore for Gated {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        if key.ends_with(&self.gated) {
            self.reached.notify_one();
            self.open.notified().await;
        }
        self.inner.read(key, range).await
    }
    async fn write(&self, key: &str, data: ByteStream, opts: &WriteOptions) -> Result<u64, StoreError> {
        self.inner.write(key, data, opts).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
}

async fn gated_store(gated: &str) -> Arc<Gated> {
    let inner = InMemoryStore::new();
    let v2 = testsupport::go_testdata().join("etcdbrctl-0.28.4-etcd-3.4.23/store/v2");
    for entry in std::fs::read_dir(v2).unwrap() {
        let path = entry.unwrap().path();
        let key = format!("etcd-main/v2/{}", path.file_name().unwrap().to_str().unwrap());
        inner.write_bytes(&key, std::fs::read(&path).unwrap().into()).await.unwrap();
    }
    Arc::new(Gated { inner, gated: gated.to_string(), reached: Notify::new(), open: Notify::new() })
}

async fn gone_within(path: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !path.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !path.exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_restore_stops_it_and_removes_the_part_dir() {
    let store = gated_store("Incr-00000338-00000338-1795607425.gz").await;
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("new.etcd");
    let cluster = Cluster::from_initial_cluster("default=http://127.0.0.1:2380", "etcd-cluster").unwrap();
    let plan = RestorePlan::new("etcd-main", data_dir.clone(), cluster, "default");
    let restorer = OfflineRestorer::new(store.clone());

    {
        let restore = restorer.restore(&plan, Arc::new(NoProgress));
        tokio::select! {
            result = restore => panic!("the restore finished past a closed gate: {:?}", result.map(|r| r.full)),
            _ = store.reached.notified() => {}
        }
        // The restore's future is dropped here, while it waits for the last delta.
    }
    let part = part_dir(&data_dir);
    assert!(gone_within(&part, Duration::from_secs(30)).await, "{} left behind after the cancellation", part.display());
    assert!(!data_dir.join("member").exists(), "a cancelled restore put member/ in place");

    // The fetch that waited at the gate finds nobody to deliver to; nothing appears afterwards.
    store.open.notify_waiters();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!data_dir.join("member").exists(), "member/ appeared after the cancellation");
    assert!(!part.exists(), "{} re-appeared after the cancellation", part.display());

    // The same plan restores completely when it is left to finish.
    let store = gated_store("no-such-object").await;
    let report = OfflineRestorer::new(store).restore(&plan, Arc::new(NoProgress)).await.expect("restore");
    assert_eq!(report.stats.revision, 338);
    assert!(data_dir.join("member/snap/db").is_file());
    assert!(!part.exists());
}
