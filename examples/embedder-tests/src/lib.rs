//! A store an embedder might write: [`DirStore`], objects as files under a directory, written
//! to a temp file and renamed into place so a write is all or nothing, as the
//! [`brcore::Snapstore`] contract asks. The tests of this crate run the contract's conformance
//! suite on it in one line, and use etcdbr's examples against a real etcd.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use brcore::{ByteStream, ObjectMeta, Snapstore, StoreError, WriteOptions};
use bytes::Bytes;
use futures::StreamExt;

/// Objects as files under `root`; keys are `/`-separated paths below it.
#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// A store rooted at `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> DirStore {
        DirStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        brcore::store::check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn io_error(key: &str, e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::NotFound { key: key.to_string() },
        _ => StoreError::Other { key: key.to_string(), retryable: false, source: Box::new(e) },
    }
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(".tmp-") {
            continue; // a write in progress
        }
        // An object renamed or deleted between reading the directory and this stat is gone:
        // not listed, and not an error (a rename's copy is listed whole, or not yet).
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            walk(&path, root, out)?;
        } else if let Some(key) = path.strip_prefix(root).ok().and_then(|p| p.to_str()) {
            out.push(ObjectMeta { key: key.to_string(), size: meta.len() });
        }
    }
    Ok(())
}

#[async_trait]
impl Snapstore for DirStore {
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out).map_err(|e| io_error(prefix, e))?;
        out.retain(|m| m.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        let data = std::fs::read(self.path(key)?).map_err(|e| io_error(key, e))?;
        let data = match range {
            Some(r) => {
                let end = (r.end as usize).min(data.len());
                data[(r.start as usize).min(end)..end].to_vec()
            }
            None => data,
        };
        Ok(futures::stream::iter([Ok(Bytes::from(data))]).boxed())
    }

    async fn write(&self, key: &str, mut data: ByteStream, _opts: &WriteOptions) -> Result<u64, StoreError> {
        let path = self.path(key)?;
        let dir = path.parent().expect("a key has a parent under the root");
        std::fs::create_dir_all(dir).map_err(|e| io_error(key, e))?;
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(|e| io_error(key, e))?;
        let mut written = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?; // the temp file is removed when `tmp` drops
            tmp.write_all(&chunk).map_err(|e| io_error(key, e))?;
            written += chunk.len() as u64;
        }
        tmp.as_file().sync_all().map_err(|e| io_error(key, e))?;
        tmp.persist(&path).map_err(|e| io_error(key, e.error))?;
        Ok(written)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match std::fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(key, e)),
            _ => Ok(()),
        }
    }
}
