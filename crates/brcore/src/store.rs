//! The object store seen by the domain: [`Snapstore`].
//!
//! Implementations live in the `snapstore` crate (opendal: Local, S3, Azure Blob, GCS, Swift,
//! OSS). The domain never names a backend: it lists, reads, writes and deletes objects by key.

use std::fmt;
use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};

/// A stream of byte chunks: how large objects move, never as one `Vec<u8>`.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send + 'static>>;

/// One complete object in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key, relative to the store's root (e.g. `etcd-main/v2/Full-00000000-00000166-1795607409.gz`).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// Options for [`Snapstore::write`]: [`WriteOptions::new`] or the reference's defaults
/// ([`WriteOptions::default`]). Fields may be added in any release (`#[non_exhaustive]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WriteOptions {
    /// Upload parts in flight at once, where the backend uploads in parts
    /// (`--max-parallel-chunk-uploads`).
    pub max_parallel_parts: usize,
    /// Size of one part (`--min-chunk-size`); memory in flight is bounded by
    /// `max_parallel_parts * part_size`.
    pub part_size: usize,
}

impl WriteOptions {
    /// `max_parallel_parts` parts of `part_size` bytes in flight.
    pub fn new(max_parallel_parts: usize, part_size: usize) -> Self {
        WriteOptions { max_parallel_parts, part_size }
    }
}

impl Default for WriteOptions {
    fn default() -> Self {
        // The reference's defaults: 5 parallel uploads of at least 5 MiB.
        WriteOptions { max_parallel_parts: 5, part_size: 5 * 1024 * 1024 }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No object under this key.
    #[error("object {key} not found")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// The store refused our credentials or permissions.
    #[error("store denied access to {key}: {message}")]
    PermissionDenied {
        /// The key or prefix of the operation.
        key: String,
        /// What the store said.
        message: String,
    },
    /// The object's content is damaged: an encrypted object whose header or payload does not
    /// authenticate ([`crate::encrypt`]). A restore reports it as a corrupt object.
    #[error("{key} is damaged: {why}")]
    Corrupt {
        /// The stored key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// An encrypted object cannot be decrypted with the keys given (none fits, or none given).
    #[error("cannot decrypt {key}: {why}")]
    Decrypt {
        /// The stored key.
        key: String,
        /// Why, and what to do.
        why: String,
    },
    /// Anything else; `retryable` says whether trying again may help (timeouts, 5xx, resets).
    #[error("store operation on {key} failed: {source}")]
    Other {
        /// The key or prefix of the operation.
        key: String,
        /// Whether a retry may succeed.
        retryable: bool,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Other { retryable: true, .. })
    }
}

/// An object store holding backups.
///
/// # Contract
///
/// - **Keys** are `/`-separated paths relative to the store's root (bucket/container/directory).
/// - **`list(prefix)`** returns every *complete* object whose key starts with `prefix`, sorted by
///   key. Objects of an upload in progress or of a failed upload are never listed.
/// - **`write`** is all or nothing: the object becomes visible under `key` only once the whole
///   stream has been stored (multipart/block uploads are committed at the end, local files are
///   renamed into place after fsync). If the stream yields an error, or the store fails, the call
///   returns an error and nothing is left under `key` (an existing object of that key is left as
///   it was). Returns the number of bytes written.
/// - **`read`** streams an object, or the byte `range` of it; a missing object is
///   [`StoreError::NotFound`].
/// - **`delete`** is idempotent: deleting a missing key succeeds.
/// - After an error the store stays usable; errors say whether a retry may help
///   ([`StoreError::is_retryable`]). Implementations do not retry forever on their own.
///
/// `brcore::testing::run_conformance` (feature `testing`) checks every clause against a store.
///
/// # Example
///
/// Objects move as streams of [`Bytes`]; [`SnapstoreExt`] has the one-buffer conveniences.
///
/// ```
/// use brcore::{InMemoryStore, Snapstore, SnapstoreExt, WriteOptions};
/// use bytes::Bytes;
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brcore::StoreError> {
/// let store = InMemoryStore::new();
/// let parts = futures::stream::iter([Ok(Bytes::from("etcd's ")), Ok(Bytes::from("snapshot"))]);
/// let n = store.write("etcd-main/v2/Full-00000000-00000001-1700000000", parts.boxed(), &WriteOptions::default()).await?;
/// assert_eq!(n, 15);
/// let listed = store.list("etcd-main/v2/").await?;
/// assert_eq!(listed[0].size, 15);
/// let mut stream = store.read(&listed[0].key, Some(7..15)).await?;
/// assert_eq!(stream.next().await.unwrap()?, "snapshot");
/// store.delete(&listed[0].key).await?;
/// store.delete(&listed[0].key).await?; // idempotent
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Snapstore: Send + Sync + fmt::Debug {
    /// Every complete object under `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Streams the object `key`, or only `range` of its bytes.
    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError>;

    /// Stores `data` under `key`, atomically (see the trait's contract).
    async fn write(&self, key: &str, data: ByteStream, opts: &WriteOptions) -> Result<u64, StoreError>;

    /// Deletes `key`; succeeds if it does not exist.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Moves the complete object `from` to `to`, replacing any object under `to`, and returns
    /// its size. A full snapshot is uploaded under a staging key while etcd streams it, because
    /// its name holds a revision that is only known at the end; this gives it its name.
    ///
    /// Readers of `to` see its old content (or nothing) until the whole object is there, never a
    /// part of it. After success `from` is gone; if only deleting `from` failed, that is logged
    /// and the call still succeeds, since `to` is complete. After an error `from` is unchanged.
    ///
    /// The default is [`rename_by_streaming`]; stores override it with a rename (Local) or a
    /// server-side copy.
    async fn rename(&self, from: &str, to: &str) -> Result<u64, StoreError> {
        rename_by_streaming(self, from, to).await
    }

    /// Whether reading byte ranges of one object at once is worth it (the restore fetches a
    /// large full snapshot as parallel ranged reads). `false` where a range costs as much as the
    /// whole object up to its end ([`crate::encrypt::EncryptedStore`]); ranges stay correct.
    fn ranged_reads(&self) -> bool {
        true
    }

    /// For a store on the local filesystem: the path of the complete object `key`, so a reader
    /// that needs random access (a bbolt db) can read it in place instead of copying it. Callers
    /// only read through it. `None` (the default) for remote stores or a missing object.
    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }

    /// The store as messages name it (`S3 bucket "b" at http://…`, `Local store /backups`).
    /// The default is its `Debug` form.
    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

/// Checks that `key` is a well-formed object key: not empty, no leading or trailing `/`, no
/// empty, `.` or `..` segment, no backslash or NUL. Stores call it before a key reaches the
/// backend, so that no key can escape the store's root (a Local store maps keys to paths).
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |why: &str| StoreError::Other {
        key: key.to_string(),
        retryable: false,
        source: format!("invalid object key: {why}").into(),
    };
    if key.is_empty() {
        return Err(bad("empty"));
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err(bad("must not start or end with '/'"));
    }
    if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(bad("empty, '.' or '..' path segment"));
    }
    if key.contains(['\\', '\0']) {
        return Err(bad("backslash or NUL"));
    }
    Ok(())
}

/// Conveniences on every [`Snapstore`] (including `dyn Snapstore`), so callers need not hand-roll
/// read-all loops or one-shot streams. Implemented for all stores; not meant to be implemented by
/// hand.
///
/// ```
/// use brcore::{InMemoryStore, SnapstoreExt};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), brcore::error::Error> {
/// let store = InMemoryStore::new();
/// store.write_bytes("etcd-main/v2/Full-00000000-00000042-1700000000", "db".into()).await?;
/// store.write_bytes("etcd-main/v2/Incr-00000043-00000050-1700000060", "[]".into()).await?;
/// let snapshots = store.list_snapshots("etcd-main").await?;
/// assert_eq!(snapshots.len(), 2);
/// assert_eq!(snapshots[1].name.last_revision, 50);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait SnapstoreExt: Snapstore {
    /// The whole object `key`, in one buffer. For objects known to be small (deltas, sidecars);
    /// stream large ones with [`Snapstore::read`].
    async fn read_to_bytes(&self, key: &str) -> Result<Bytes, StoreError> {
        self.read_range_to_bytes(key, None).await
    }

    /// The bytes of `range` of the object `key` (or all of it), in one buffer.
    async fn read_range_to_bytes(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, StoreError> {
        let mut stream = self.read(key, range).await?;
        let mut first: Option<Bytes> = None;
        let mut rest = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            match &first {
                // One chunk (the common case for small objects) is returned without a copy.
                None if rest.is_empty() => first = Some(chunk),
                _ => {
                    if let Some(f) = first.take() {
                        rest.extend_from_slice(&f);
                    }
                    rest.extend_from_slice(&chunk);
                }
            }
        }
        Ok(first.unwrap_or_else(|| rest.freeze()))
    }

    /// Stores `data` under `key` with the default [`WriteOptions`], atomically.
    async fn write_bytes(&self, key: &str, data: Bytes) -> Result<u64, StoreError> {
        let stream: ByteStream = Box::pin(futures::stream::iter([Ok(data)]));
        self.write(key, stream, &WriteOptions::default()).await
    }

    /// Every snapshot under `prefix` in the reference's layout (`<prefix>/v2/…`, and the legacy
    /// `<prefix>/v1/Backup-…/…`), parsed, in listing order. Objects whose names are not
    /// snapshots (foreign files) and the parts of the Go tool's chunked uploads are left out.
    async fn list_snapshots(&self, prefix: &str) -> Result<Vec<crate::name::Snapshot>, crate::error::Error> {
        let prefix = prefix.trim_end_matches('/');
        let mut out = Vec::new();
        for dir in crate::chain::layout_prefixes(prefix) {
            for meta in self.list(&dir).await? {
                match crate::name::Snapshot::parse_key(&meta.key, meta.size) {
                    Ok(snapshot) if !snapshot.is_chunk => out.push(snapshot),
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

impl<S: Snapstore + ?Sized> SnapstoreExt for S {}

/// Renames by reading `from`, writing it to `to` through [`Snapstore::write`] (all or nothing)
/// and deleting `from`: the default [`Snapstore::rename`], and the fallback of stores whose
/// server-side copy cannot take an object.
pub async fn rename_by_streaming<S: Snapstore + ?Sized>(store: &S, from: &str, to: &str) -> Result<u64, StoreError> {
    if from == to {
        // Renaming onto itself keeps the object; streaming it would delete it at the end.
        let listed = store.list(from).await?;
        return match listed.iter().find(|m| m.key == from) {
            Some(meta) => Ok(meta.size),
            None => Err(StoreError::NotFound { key: from.to_string() }),
        };
    }
    let data = store.read(from, None).await?;
    let size = store.write(to, data, &WriteOptions::default()).await?;
    delete_renamed_source(store, from).await;
    Ok(size)
}

/// Deletes the source of a finished rename. The new key is complete by then, so a failure only
/// leaves a stray object behind: it is logged, not returned.
pub async fn delete_renamed_source<S: Snapstore + ?Sized>(store: &S, from: &str) {
    if let Err(e) = store.delete(from).await {
        tracing::warn!(key = from, error = %e, "renamed object: could not delete the source; it is left behind");
    }
}
