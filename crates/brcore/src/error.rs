//! brcore's error type: [`Error`].
//!
//! Every message says what is wrong and what to do about it, because these errors end up in the
//! logs of an operator restoring a cluster at a bad moment.

use std::path::{Path, PathBuf};

use crate::store::StoreError;

/// Why a backup, restore or garbage-collection step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// There is no backup to work with (no full snapshot under the prefix, or none old enough
    /// for the target).
    #[error("{what}; check --storage-provider, --store-container and --store-prefix, or take a full snapshot first")]
    NotFound {
        /// What was looked for and where.
        what: String,
    },
    /// Revisions are missing between two objects of a chain, so no restore can reproduce them.
    #[error(
        "revisions {from}..={to} are missing from the backup{}; restore to a revision before \
         {from} (or from an older full snapshot), or recover the missing delta snapshot",
        if detail.is_empty() { String::new() } else { format!(" ({detail})") }
    )]
    Gap {
        /// The first missing revision.
        from: i64,
        /// The last missing revision.
        to: i64,
        /// Which objects border the gap (their keys), if known.
        detail: String,
    },
    /// An object's content is damaged: it does not decompress, its hash does not match, or its
    /// content does not parse.
    #[error("{object} is corrupt: {why}; restore from another full snapshot, or re-create the backup")]
    Corrupt {
        /// The object (store key) or file that is damaged.
        object: String,
        /// What exactly is wrong with it.
        why: String,
    },
    /// Two objects of one history cover the same revision and hold different events for it: at
    /// most one of them is right, and nothing tells which.
    #[error(
        "{first} and {second} both hold revision {revision} but disagree: {detail}; two writers stored \
         different histories under one prefix. Restore to a revision before {revision} \
         (--to-revision {}), or move the object that does not belong out of the prefix",
        revision - 1
    )]
    Conflict {
        /// The object read first (the full snapshot, or the earlier delta).
        first: String,
        /// The object that repeats the revision differently.
        second: String,
        /// The first revision where they differ.
        revision: i64,
        /// How they differ.
        detail: String,
    },
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// etcd failed or refused a request.
    #[error("etcd request failed: {message}{}", if *retryable { " (temporary; will be retried)" } else { "; check the etcd endpoints and credentials" })]
    Etcd {
        /// Whether trying again may help (unavailable leader, timeout, connection reset).
        retryable: bool,
        /// What etcd (or the client) said.
        message: String,
    },
    /// The operation was refused because it would destroy or overwrite something, or cannot
    /// give a correct result.
    #[error("refused: {why}")]
    Refused {
        /// Why, and what the operator can do.
        why: String,
    },
    /// A local file operation failed.
    #[error("I/O error on {}: {source}; check the path, its permissions and free space", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the restored database failed.
    #[error("writing the restored db failed: {source}; check free space on the data dir's filesystem")]
    DbWrite {
        /// The writer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bug or an unexpected state inside etcdbr (a task panicked, an invariant broke).
    #[error("internal error: {what}; please report this")]
    Internal {
        /// What happened.
        what: String,
    },
}

impl Error {
    /// Whether trying the same operation again may succeed (a flaky store or etcd), as opposed
    /// to an error that will repeat (corrupt data, a gap, a refusal).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(e) => e.is_retryable(),
            Error::Etcd { retryable, .. } => *retryable,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// A [`Error::Corrupt`] for `object` (a store key or a description such as "full snapshot").
    pub fn corrupt(object: impl Into<String>, why: impl std::fmt::Display) -> Error {
        Error::Corrupt { object: object.into(), why: why.to_string() }
    }

    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Error {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// An [`Error::Internal`].
    pub fn internal(what: impl Into<String>) -> Error {
        Error::Internal { what: what.into() }
    }

    /// An [`Error::DbWrite`] from the db writer's error.
    pub fn db_write<E>(source: E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Error::DbWrite { source: Box::new(source) }
    }

    /// An [`Error::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Error {
        Error::NotFound { what: what.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_problem_and_the_remedy() {
        let gap = Error::Gap { from: 10, to: 12, detail: "between a and b".into() };
        let msg = gap.to_string();
        assert!(msg.contains("10..=12") && msg.contains("between a and b") && msg.contains("restore to"), "{msg}");
        let c = Error::corrupt("etcd/v2/Incr-1-2-3.gz", "hash mismatch");
        assert!(c.to_string().starts_with("etcd/v2/Incr-1-2-3.gz is corrupt: hash mismatch"));
        let io = Error::io("/x", std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(io.to_string().contains("/x"));
    }

    #[test]
    fn retryability_follows_the_cause() {
        assert!(Error::Etcd { retryable: true, message: "leader changed".into() }.is_retryable());
        assert!(!Error::Etcd { retryable: false, message: "auth".into() }.is_retryable());
        let store = StoreError::Other { key: "k".into(), retryable: true, source: "503".into() };
        assert!(Error::from(store).is_retryable());
        assert!(!Error::corrupt("x", "y").is_retryable());
        assert!(!Error::Gap { from: 1, to: 2, detail: String::new() }.is_retryable());
        assert!(Error::io("/x", std::io::Error::from(std::io::ErrorKind::TimedOut)).is_retryable());
    }
}
