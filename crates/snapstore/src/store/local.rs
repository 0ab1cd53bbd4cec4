//! The Local store's files: the atomic write through a temp file in [`LOCAL_TEMP_DIR`], the
//! fsynced rename, and the private (0700) directories. Reads, listings and deletes go through
//! opendal's `Fs` service like every other store's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use brcore::{ByteStream, StoreError, WriteOptions};
use futures::StreamExt;
use opendal::Operator;
use tracing::{Instrument, debug, field, info_span, warn};

use super::error::{Call, in_store};
use super::operator::local_operator;
use super::{Backend, OpendalStore, Settings};
use crate::Error;
use crate::credentials::Credentials;
use crate::keystone::SwiftSession;

/// The directory inside a Local store's root where writes are staged before the rename; it is
/// on the same file system as the objects, so the rename is atomic, and it is never listed.
pub const LOCAL_TEMP_DIR: &str = ".etcdbr-tmp";

/// The Local store: objects are files under `root`. Writes are staged in [`LOCAL_TEMP_DIR`]
/// and renamed into place; renames are `rename(2)`; both are fsynced.
pub(super) struct LocalFs {
    root: PathBuf,
    /// `Local store <root>`, as errors name it.
    name: Arc<str>,
    /// Set once [`LOCAL_TEMP_DIR`] exists, which the first write creates.
    temp_ready: OnceLock<()>,
}

impl LocalFs {
    /// The store under `root` (which exists).
    pub(super) fn new(root: PathBuf) -> LocalFs {
        let name = format!("Local store {}", root.display()).into();
        LocalFs { root, name, temp_ready: OnceLock::new() }
    }

    /// The staging directory, created (0700) and swept of stale files at the first write.
    fn temp_dir(&self, key: &str) -> Result<PathBuf, StoreError> {
        let temp = self.root.join(LOCAL_TEMP_DIR);
        if self.temp_ready.get().is_none() {
            create_private_dir(&temp).map_err(|e| StoreError::Other {
                key: key.to_string(),
                retryable: false,
                source: Box::new(e),
            })?;
            remove_stale_staging_files(&temp);
            let _ = self.temp_ready.set(());
        }
        Ok(temp)
    }
}

#[async_trait]
impl Backend for LocalFs {
    fn describe(&self, _: &Settings) -> Arc<str> {
        self.name.clone()
    }

    fn operator(&self, _: &Settings, _: &Credentials, _: Option<&SwiftSession>) -> Result<Option<Operator>, Error> {
        local_operator(&self.root).map(Some)
    }

    async fn write(
        &self,
        store: &OpendalStore,
        key: &str,
        data: ByteStream,
        _: &WriteOptions,
    ) -> Result<u64, StoreError> {
        let temp = self.temp_dir(key)?;
        let span = info_span!("snapstore.write", provider = %store.provider(), key, bytes = field::Empty);
        async {
            let written = write_local_file(&self.root, &self.name, &temp, key, data).await?;
            tracing::Span::current().record("bytes", written);
            debug!(bytes = written, "object stored");
            Ok(written)
        }
        .instrument(span)
        .await
    }

    async fn rename(&self, _: &OpendalStore, _: &Call, from: &str, to: &str) -> Result<u64, StoreError> {
        tracing::Span::current().record("method", "fs-rename");
        let (root, src, dst) = (self.root.clone(), from.to_string(), to.to_string());
        let joined = tokio::task::spawn_blocking(move || rename_local_file(&root, &src, &dst)).await;
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Other {
            key: from.to_string(),
            retryable: false,
            source,
        };
        match joined {
            Ok(Ok(size)) => Ok(size),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound { key: from.to_string() })
            }
            Ok(Err(e)) => Err(fail(Box::new(e))),
            Err(e) => Err(fail(Box::new(e))),
        }
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    /// Complete objects only, since writes go through the staging directory and a rename.
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|s| s == ".." || s.is_empty()) {
            return None;
        }
        let path = self.root.join(key);
        path.is_file().then_some(path)
    }

    fn reserved(&self, key: &str) -> bool {
        key == LOCAL_TEMP_DIR || self.staging(key)
    }

    fn staging(&self, key: &str) -> bool {
        key.strip_prefix(LOCAL_TEMP_DIR).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Staging files untouched for this long were left by a writer that crashed: a live one writes
/// into its file at least every few seconds (an upload that stalls fails on its own timeouts
/// well before) and renames it away at the end. The first write of a process removes them.
const STALE_STAGING_AGE: Duration = Duration::from_secs(3600);

/// Removes staging files of crashed writers; failures only cost disk space, so they are logged.
pub(super) fn remove_stale_staging_files(temp: &Path) {
    let Ok(entries) = std::fs::read_dir(temp) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if path.is_file() && age.is_some_and(|a| a > STALE_STAGING_AGE) {
            match std::fs::remove_file(&path) {
                Ok(()) => debug!(path = %path.display(), "removed a stale staging file"),
                Err(e) => warn!(path = %path.display(), error = %e, "cannot remove a stale staging file"),
            }
        }
    }
}

/// Creates `dir` (and parents) with mode 0700 where it creates them, as etcd and the reference do.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), Error> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|source| Error::Directory { path: dir.to_path_buf(), source })
}

/// Writes a Local object: the chunks go to a temp file in `temp` (on the container's file
/// system) from a thread of its own, which writes each chunk as it comes, with no copy and no
/// async file layer between; then the file is fsynced, renamed to `key` (its directories created
/// 0700) and the directory fsynced. A failed stream or write removes the temp file, so nothing
/// appears under `key`.
pub(super) async fn write_local_file(
    root: &Path,
    store: &Arc<str>,
    temp: &Path,
    key: &str,
    mut data: ByteStream,
) -> Result<u64, StoreError> {
    let fail = |e: std::io::Error| {
        in_store(
            store,
            StoreError::Other {
                key: key.to_string(),
                // A full disk may be freed by garbage collection; a permission error needs a person.
                retryable: e.kind() != std::io::ErrorKind::PermissionDenied,
                source: Box::new(e),
            },
        )
    };
    let file = tempfile::Builder::new().prefix(".write-").tempfile_in(temp).map_err(fail)?;
    // `Some(chunk)` to write, then `None` once the stream has ended well. A channel closed
    // without that `None` (the stream failed) leaves the temp file to be dropped, i.e. removed.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<bytes::Bytes>>(2);
    let target = root.join(key);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        use std::io::Write as _;
        let mut file = file;
        let mut written = 0u64;
        loop {
            match rx.blocking_recv() {
                Some(Some(chunk)) => {
                    file.write_all(&chunk)?;
                    written += chunk.len() as u64;
                }
                Some(None) => break,
                None => return Err(std::io::Error::other("the stream ended in an error")),
            }
        }
        file.as_file().sync_all()?;
        let dir = target.parent().map(Path::to_path_buf).unwrap_or_default();
        create_private_dir(&dir).map_err(std::io::Error::other)?;
        file.persist(&target).map_err(|e| e.error)?;
        fsync_dir(&dir)?;
        Ok(written)
    });
    let mut streamed: Result<(), StoreError> = Ok(());
    while let Some(item) = data.next().await {
        match item {
            Ok(chunk) => {
                if tx.send(Some(chunk)).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                streamed = Err(e);
                break;
            }
        }
    }
    if streamed.is_ok() {
        let _ = tx.send(None).await;
    }
    drop(tx);
    let result = writer.await;
    streamed?;
    match result {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => {
            warn!(key, error = %e, "write to the Local store failed; nothing was stored");
            Err(fail(e))
        }
        Err(e) => Err(fail(std::io::Error::other(e.to_string()))),
    }
}

/// fsyncs a directory, so the entries a rename or create put in it survive a crash.
fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Renames the Local object `from` to `to` under `root` and returns its size: creates `to`'s
/// directories (0700), renames, and fsyncs the directories whose entries changed, so the
/// rename survives a crash. A missing `from` (or a directory there) is `NotFound`.
pub(super) fn rename_local_file(root: &Path, from: &str, to: &str) -> std::io::Result<u64> {
    let src = root.join(from);
    let dst = root.join(to);
    let meta = std::fs::metadata(&src)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{from} is not an object")));
    }
    let src_dir = src.parent().unwrap_or(root).to_path_buf();
    let dst_dir = dst.parent().unwrap_or(root).to_path_buf();
    // The nearest directory that exists already: the new directories' entries land in it.
    let mut existing = dst_dir.as_path();
    while !existing.is_dir() {
        existing = existing.parent().unwrap_or(root);
    }
    let existing = existing.to_path_buf();
    create_private_dir(&dst_dir).map_err(std::io::Error::other)?;
    std::fs::rename(&src, &dst)?;
    let mut dir = dst_dir.as_path();
    loop {
        fsync_dir(dir)?;
        if dir == existing {
            break;
        }
        dir = dir.parent().unwrap_or(&existing);
    }
    if src_dir != dst_dir {
        fsync_dir(&src_dir)?;
    }
    Ok(meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_staging_files_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("Full-1.gz.stale");
        let fresh = dir.path().join("Full-2.gz.live");
        let slow = dir.path().join("Full-3.gz.slow");
        for f in [&old, &fresh, &slow] {
            std::fs::write(f, b"x").unwrap();
        }
        let touch = |f: &Path, ago: u64| {
            let t = std::time::SystemTime::now() - Duration::from_secs(ago);
            std::fs::File::options().write(true).open(f).unwrap().set_modified(t).unwrap();
        };
        touch(&old, 2 * 3600);
        touch(&slow, 30 * 60);
        remove_stale_staging_files(dir.path());
        assert!(!old.exists(), "a staging file untouched for two hours stays");
        assert!(fresh.exists(), "a live writer's staging file was removed");
        assert!(slow.exists(), "a staging file written to 30 minutes ago was removed");
    }

    #[test]
    fn local_rename_creates_private_dirs_and_reports_missing_sources() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("p/.staging")).unwrap();
        std::fs::write(root.join("p/.staging/obj"), b"12345").unwrap();
        assert_eq!(rename_local_file(root, "p/.staging/obj", "p/v2/x/obj").unwrap(), 5);
        assert_eq!(std::fs::read(root.join("p/v2/x/obj")).unwrap(), b"12345");
        assert!(!root.join("p/.staging/obj").exists());
        let missing = rename_local_file(root, "p/.staging/obj", "p/v2/y").unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        assert!(!root.join("p/v2/y").exists());
        // A directory is not an object.
        let dir_src = rename_local_file(root, "p/v2", "p/v3").unwrap_err();
        assert_eq!(dir_src.kind(), std::io::ErrorKind::NotFound);
        assert!(root.join("p/v2/x/obj").exists());
    }
}
