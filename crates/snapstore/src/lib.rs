//! [`brcore::Snapstore`] implemented on opendal: Local directory, S3 and S3-compatible stores
//! (ECS, OCS), Azure Blob, Google Cloud Storage, OpenStack Swift and Alibaba OSS.
//!
//! [`open`] turns a [`StoreConfig`] (the reference's `--storage-provider`, `--store-*` flags) and
//! the reference's credential variables and files into an [`OpendalStore`]. Everything about
//! reliability sits in opendal layers stacked once per store, not in each call: a
//! [`TimeoutLayer`](opendal::layers::TimeoutLayer) inside a
//! [`RetryLayer`](opendal::layers::RetryLayer) with exponential backoff and jitter.
//!
//! # Atomic writes
//!
//! Object-store writes stream through an opendal writer whose chunk is the part size and whose concurrency is
//! the number of parallel parts, so S3 gets a multipart upload, Azure a block upload, and memory
//! stays bounded by `parts × part size`. If the input stream or the store fails, the writer is
//! aborted, so no object appears (multipart uploads are aborted; uncommitted Azure blocks expire
//! on their own). Local writes do not go through opendal: a thread of their own writes each chunk
//! as it comes into a temp file under `<container>/.etcdbr-tmp/` (the same file system as the
//! target), which is fsynced and renamed into place; the directory is fsynced after the rename.
//! A failed stream removes the temp file. Listings never show that temp directory, and it is only
//! created by the first write: opening or reading a store writes nothing into it.
//!
//! # Renames
//!
//! [`Snapstore::rename`] gives a full snapshot, uploaded under a
//! staging key, its final name; it never shows a part of the object under the new key, and
//! after an error the source is unchanged.
//!
//! - **Local**: a `rename(2)` within the container (the new key's directories are created
//!   0700), then the directories whose entries changed are fsynced. Costs nothing per byte.
//! - **S3, ECS, OCS, Azure Blob, GCS, Swift, OSS**: a server-side copy (CopyObject, Copy Blob,
//!   rewrite, copy), then a stat of the new key until it holds the whole object, then the source
//!   is deleted (a failed delete is logged: the new key is complete). Azure's Copy Blob may finish
//!   in the background: the store reads its `x-ms-copy-status` and waits (up to 5 minutes) for
//!   `success`; while it is `pending` Azure already lists the destination, which is the one
//!   window where a listing can show an incomplete object. A copy that ends `failed`/`aborted`
//!   has its destination deleted; one that does not finish in time is a retryable error.
//! - **Streaming fallback**: objects beyond the service's copy limit (S3 5 GiB, Swift 5 GiB,
//!   OSS 1 GiB), or a copy the service refuses (a non-retryable error such as 400 or 501), are
//!   read and written through the ordinary atomic write, then the source is deleted. A store
//!   that is down or denies access fails the rename instead.
//!
//! # Credentials that change
//!
//! Before every operation the store stats the credential files it read (following symlinks, so
//! a Kubernetes secret's `..data` swap is seen); if any changed (mtime, size or inode), it reads
//! them again and rebuilds its client, as the reference does before each snapshot (its #449).
//! [`OpendalStore::reload_if_changed`] does the same on demand.

#![warn(missing_docs)]

mod config;
mod credentials;
mod keystone;
mod store;

use std::path::PathBuf;

pub use config::{DEFAULT_LOCAL_CONTAINER, MIN_CHUNK_SIZE, Provider, Setting, StoreConfig};
pub use credentials::{
    AbsCredentials, Credentials, GcsCredentials, OssCredentials, S3Credentials, Secret, SwiftCredentials,
};
pub use store::{LOCAL_TEMP_DIR, OpendalStore};

use std::sync::Arc;

use brcore::Snapstore;

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `--storage-provider` named no provider we know.
    #[error("unknown storage provider {0:?}: expected one of Local, S3, ABS, GCS, Swift, OSS, ECS, OCS")]
    UnknownProvider(String),
    /// A flag value the reference also refuses, or a combination that cannot work.
    #[error("invalid snapstore configuration: {0}")]
    Config(String),
    /// A [`StoreConfig`] setting the reference also refuses ([`StoreConfig::validate`]).
    #[error("{setting}: {why}")]
    Setting {
        /// The setting (the CLI names its flag).
        setting: Setting,
        /// What is wrong with the value, and what would do.
        why: String,
    },
    /// Credentials are missing or incomplete; the reason names the field and file, never a value.
    #[error("{provider} credentials: {reason}")]
    Credentials {
        /// The provider whose credentials were read.
        provider: Provider,
        /// What is wrong.
        reason: String,
    },
    /// A credential file or directory could not be read.
    #[error("cannot read credentials from {path}: {source}")]
    CredentialFile {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Local store's directory (or the temp directory) could not be created.
    #[error("cannot prepare directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The provider's feature is not available in this build or for these credentials.
    #[error("{provider}: {reason}")]
    Unsupported {
        /// The provider.
        provider: Provider,
        /// What is missing and what to do instead.
        reason: String,
    },
    /// opendal refused the configuration.
    #[error("cannot set up the {provider} store: {source}")]
    Backend {
        /// The provider.
        provider: Provider,
        /// opendal's error.
        #[source]
        source: opendal::Error,
    },
}

/// Opens the store `config` describes, reading credentials from the process environment as the
/// Go etcdbrctl does (`AWS_APPLICATION_CREDENTIALS`, `AZURE_APPLICATION_CREDENTIALS`, …).
///
/// ```
/// use snapstore::{Provider, StoreConfig};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // A Local store: objects are files under the container directory.
/// let dir = tempfile::tempdir().unwrap();
/// let config = StoreConfig::local(dir.path());
/// assert_eq!(config.provider, Provider::Local);
/// let store = snapstore::open(&config).unwrap();
/// assert!(store.list("etcd-main/v2/").await.unwrap().is_empty());
///
/// // An S3 bucket (credentials from $AWS_APPLICATION_CREDENTIALS when it is used).
/// let s3 = StoreConfig::new(Provider::S3, "backups");
/// # let _ = s3;
/// # }
/// ```
pub fn open(config: &StoreConfig) -> Result<Arc<dyn Snapstore>, Error> {
    Ok(Arc::new(OpendalStore::open(config)?))
}
