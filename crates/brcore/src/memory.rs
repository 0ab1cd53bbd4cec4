//! [`InMemoryStore`]: a [`Snapstore`] in a map, for tests and for embedders who want to try the
//! library without a bucket.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::store::{ByteStream, ObjectMeta, Snapstore, StoreError, WriteOptions, check_key};

/// A [`Snapstore`] that keeps its objects in memory, with the whole contract: a write becomes
/// visible only once its stream ended without error, list is sorted by key, delete is
/// idempotent, rename is atomic.
///
/// ```
/// use brcore::{InMemoryStore, Snapstore, SnapstoreExt};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brcore::StoreError> {
/// let store = InMemoryStore::new();
/// store.write_bytes("etcd-main/v2/Full-00000000-00000001-1700000000", "db".into()).await?;
/// assert_eq!(store.read_to_bytes("etcd-main/v2/Full-00000000-00000001-1700000000").await?, "db");
/// assert_eq!(store.list("etcd-main/").await?.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct InMemoryStore {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        // A panic while the lock was held cannot leave the map half-changed: every change is one
        // insert or remove.
        self.objects.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.objects().get(key).cloned().ok_or_else(|| StoreError::NotFound { key: key.to_string() })
    }
}

// Error messages name the store through `Debug`: the object count, not the objects' bytes.
impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore").field("objects", &self.objects().len()).finish()
    }
}

#[async_trait]
impl Snapstore for InMemoryStore {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let objects = self.objects();
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, data)| ObjectMeta { key: key.clone(), size: data.len() as u64 })
            .collect())
    }

    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        check_key(key)?;
        let data = self.get(key)?;
        let data = match range {
            None => data,
            Some(r) => {
                let end = (r.end as usize).min(data.len());
                let start = (r.start as usize).min(end);
                data.slice(start..end)
            }
        };
        Ok(futures::stream::iter([Ok(data)]).boxed())
    }

    async fn write(&self, key: &str, mut data: ByteStream, _opts: &WriteOptions) -> Result<u64, StoreError> {
        check_key(key)?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = data.next().await {
            buf.extend_from_slice(&chunk?);
        }
        let len = buf.len() as u64;
        self.objects().insert(key.to_string(), buf.freeze());
        Ok(len)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.objects().remove(key);
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> Result<u64, StoreError> {
        check_key(from)?;
        check_key(to)?;
        let mut objects = self.objects();
        let data = objects.remove(from).ok_or_else(|| StoreError::NotFound { key: from.to_string() })?;
        let len = data.len() as u64;
        objects.insert(to.to_string(), data);
        Ok(len)
    }
}
