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
//! Writes stream through an opendal writer whose chunk is the part size and whose concurrency is
//! the number of parallel parts, so S3 gets a multipart upload, Azure a block upload, and memory
//! stays bounded by `parts × part size`. If the input stream or the store fails, the writer is
//! aborted, so no object appears (multipart uploads are aborted; uncommitted Azure blocks expire
//! on their own). Local writes go to a temp file under `<container>/.etcdbr-tmp/` (opendal's
//! `atomic_write_dir`, the same file system as the target), which is fsynced and renamed into
//! place; the directory is fsynced after the rename. Listings never show that temp directory, and
//! it is only created by the first write: opening or reading a store writes nothing into it.
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
mod store;

use std::path::PathBuf;

pub use config::{DEFAULT_LOCAL_CONTAINER, MIN_CHUNK_SIZE, Provider, StoreConfig};
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

/// Opens the store `config` describes, reading credentials from the process environment.
pub fn open(config: &StoreConfig) -> Result<Arc<dyn Snapstore>, Error> {
    Ok(Arc::new(OpendalStore::open(config)?))
}
