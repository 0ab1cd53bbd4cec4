//! The `Snapstore` contract (`brcore::testing`) on the stores brcore itself ships.

use std::sync::Arc;

use brcore::{InMemoryStore, Snapstore, SnapstoreExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_conforms() {
    brcore::testing::run_conformance(Arc::new(InMemoryStore::new())).await;
}

#[tokio::test]
async fn ext_helpers_read_write_and_list_the_layout() {
    let store = InMemoryStore::new();
    for key in [
        "etcd-main/v2/Full-00000000-00000042-1700000000.gz",
        "etcd-main/v2/Incr-00000043-00000050-1700000060.gz",
        "etcd-main/v1/Backup-1700000000/Full-00000000-00000007-1700000000",
        "etcd-main/v2/not-a-snapshot.txt",
        "etcd-main/.etcdbr-staging/Full-1700000000-1.part",
        "other/v2/Full-00000000-00000001-1700000000",
    ] {
        store.write_bytes(key, bytes::Bytes::from(key.to_string())).await.unwrap();
    }
    let names: Vec<String> =
        store.list_snapshots("etcd-main/").await.unwrap().iter().map(|s| s.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "Full-00000000-00000042-1700000000.gz",
            "Incr-00000043-00000050-1700000060.gz",
            "Full-00000000-00000007-1700000000"
        ],
        "v2 then v1, staging objects, foreign files and other prefixes left out"
    );
    let key = "etcd-main/v2/Incr-00000043-00000050-1700000060.gz";
    assert_eq!(store.read_to_bytes(key).await.unwrap(), key.as_bytes());
    assert_eq!(store.read_range_to_bytes(key, Some(10..14)).await.unwrap(), &key.as_bytes()[10..14]);
    assert!(store.read_to_bytes("etcd-main/v2/missing").await.is_err());
    // Through `dyn Snapstore` as well.
    let dynamic: Arc<dyn Snapstore> = Arc::new(store);
    assert_eq!(dynamic.read_to_bytes(key).await.unwrap(), key.as_bytes());
    assert_eq!(format!("{dynamic:?}"), "InMemoryStore { objects: 6 }", "Debug shows no object bytes");
}

/// A store that lists newest-first: the suite must fail, and name the clause.
#[derive(Debug)]
struct ReverseListing(InMemoryStore);

#[async_trait::async_trait]
impl Snapstore for ReverseListing {
    async fn list(&self, prefix: &str) -> Result<Vec<brcore::ObjectMeta>, brcore::StoreError> {
        let mut out = self.0.list(prefix).await?;
        out.reverse();
        Ok(out)
    }
    async fn read(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<brcore::ByteStream, brcore::StoreError> {
        self.0.read(key, range).await
    }
    async fn write(
        &self,
        key: &str,
        data: brcore::ByteStream,
        opts: &brcore::WriteOptions,
    ) -> Result<u64, brcore::StoreError> {
        self.0.write(key, data, opts).await
    }
    async fn delete(&self, key: &str) -> Result<(), brcore::StoreError> {
        self.0.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_fails_a_store_that_breaks_the_contract_and_names_the_clause() {
    use futures::FutureExt;
    let broken = Arc::new(ReverseListing(InMemoryStore::new()));
    let outcome = std::panic::AssertUnwindSafe(brcore::testing::run_conformance(broken)).catch_unwind().await;
    let payload = outcome.expect_err("a store listing newest-first must fail the suite");
    let message = payload.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("list_is_sorted_by_key"), "{message}");
    assert!(!message.contains("range_reads"), "clauses the store keeps are not blamed: {message}");
}
