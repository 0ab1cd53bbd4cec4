//! Chain selection over the stores real `etcdbrctl` binaries wrote, through the `Snapstore`
//! trait (a plain directory behind it, as the reference's Local provider lays it out).

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use brcore::chain::{Chain, Target, list_chain};
use brcore::error::Error;
use brcore::store::{ByteStream, ObjectMeta, Snapstore, StoreError, WriteOptions};
use bytes::Bytes;
use futures::StreamExt;

/// A directory as an object store: keys are `/`-separated paths below `root`.
#[derive(Debug)]
struct DirStore {
    root: PathBuf,
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<ObjectMeta>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, root, out);
        } else {
            let key = path.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            out.push(ObjectMeta { key, size: fs::metadata(&path).unwrap().len() });
        }
    }
}

fn other(key: &str, e: std::io::Error) -> StoreError {
    StoreError::Other { key: key.to_string(), retryable: false, source: Box::new(e) }
}

#[async_trait]
impl Snapstore for DirStore {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out);
        out.retain(|m| m.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        let data = fs::read(self.root.join(key)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound { key: key.to_string() },
            _ => other(key, e),
        })?;
        let data = match range {
            Some(r) => data[r.start as usize..(r.end as usize).min(data.len())].to_vec(),
            None => data,
        };
        Ok(futures::stream::iter([Ok(Bytes::from(data))]).boxed())
    }

    async fn write(&self, key: &str, mut data: ByteStream, _opts: &WriteOptions) -> Result<u64, StoreError> {
        let mut buf = Vec::new();
        while let Some(chunk) = data.next().await {
            buf.extend_from_slice(&chunk?);
        }
        let path = self.root.join(key);
        fs::create_dir_all(path.parent().unwrap()).map_err(|e| other(key, e))?;
        fs::write(&path, &buf).map_err(|e| other(key, e))?;
        Ok(buf.len() as u64)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.root.join(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(other(key, e)),
            _ => Ok(()),
        }
    }
}

/// A scratch copy of a real store (so tests can remove objects).
fn copy_store(name: &str) -> (tempfile::TempDir, DirStore) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("etcd-main/v2");
    fs::create_dir_all(&dst).unwrap();
    for entry in fs::read_dir(testsupport::go_testdata().join(name).join("store/v2")).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, dst.join(path.file_name().unwrap())).unwrap();
    }
    let store = DirStore { root: tmp.path().to_path_buf() };
    (tmp, store)
}

fn last_revs(c: &Chain) -> Vec<u64> {
    c.deltas.iter().map(|d| d.name.last_revision).collect()
}

#[tokio::test]
async fn latest_chain_of_each_real_store() {
    for (name, deltas) in [("etcdbrctl-0.28.4-etcd-3.4.23", 10), ("etcdbrctl-0.43.0-etcd-3.5.30", 9)] {
        let store = DirStore { root: testsupport::go_testdata().join(name) };
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
    let store = DirStore { root: testsupport::go_testdata().join("etcdbrctl-0.28.4-etcd-3.4.23") };
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
    let (_tmp, store) = copy_store("etcdbrctl-0.43.0-etcd-3.5.30");
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
    let (tmp, store) = copy_store("etcdbrctl-0.28.4-etcd-3.4.23");
    let v2 = tmp.path().join("etcd-main/v2");
    // A second leader uploaded the same range again, later, and a delta that overlaps the next.
    fs::copy(v2.join("Incr-00000201-00000235-1795607416.gz"), v2.join("Incr-00000201-00000235-1795607417.gz")).unwrap();
    fs::copy(v2.join("Incr-00000270-00000280-1795607420.gz"), v2.join("Incr-00000265-00000285-1795607420.gz")).unwrap();
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
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore { root: tmp.path().to_path_buf() };
    let err = list_chain(&store, "shoot--dev--x/etcd-main", Target::Latest).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NotFound { .. }), "{msg}");
    assert!(msg.contains("shoot--dev--x/etcd-main/v2/") && msg.contains("DirStore"), "{msg}");
    // Objects of another prefix do not count.
    let (_tmp2, other) = copy_store("etcdbrctl-0.28.4-etcd-3.4.23");
    assert!(matches!(list_chain(&other, "etcd", Target::Latest).await, Err(Error::NotFound { .. })));
}
