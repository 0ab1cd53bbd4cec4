//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while opening, reading or writing a bbolt file.
///
/// Corruption is reported with the page and byte offset where it was detected, so a damaged
/// snapshot can be located with a hex dump. The bulk writer's contract violations (keys out of
/// order, a put outside a bucket) have their own variant: they are bugs in the caller, not
/// damaged data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the underlying file failed.
    #[error("bbolt I/O error{}: {source}", path.as_ref().map(|p| format!(" on {}", p.display())).unwrap_or_default())]
    Io {
        /// The file involved, when known.
        path: Option<PathBuf>,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes do not form a valid bbolt structure.
    #[error("corrupted bbolt data{}{}: {what}",
        page.map(|p| format!(" in page {p}")).unwrap_or_default(),
        offset.map(|o| format!(" at byte offset {o:#x}")).unwrap_or_default())]
    Corrupted {
        /// The page where the problem was found (for inline buckets: the page that holds them).
        page: Option<u64>,
        /// The absolute byte offset in the file, when it can be pinned down.
        offset: Option<u64>,
        /// What is wrong, in words.
        what: String,
    },
    /// The file is shorter than its active meta page says (`meta.pgid * pageSize`).
    #[error("truncated bbolt file: the meta page needs {needed} bytes but the file has only {len}")]
    Truncated {
        /// The length the active meta requires.
        needed: u64,
        /// The actual length.
        len: u64,
    },
    /// A well-formed file this crate deliberately does not handle (big-endian, odd page size).
    #[error("unsupported bbolt file: {what}")]
    Unsupported {
        /// Why it is refused.
        what: String,
    },
    /// The caller broke the [`crate::BulkWriter`] contract (order of keys, nesting, sizes).
    #[error("bulk writer misuse: {what}")]
    Misuse {
        /// Which rule was broken.
        what: String,
    },
}

impl Error {
    pub(crate) fn io(path: Option<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path, source }
    }

    pub(crate) fn misuse(what: impl Into<String>) -> Error {
        Error::Misuse { what: what.into() }
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Error {
        Error::Io { path: None, source }
    }
}
