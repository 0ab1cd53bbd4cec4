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
    #[error("{what}; check the store's provider, container and prefix, or take a full snapshot first")]
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
         different histories under one prefix. Restore to revision {} (before the conflict), or \
         move the object that does not belong out of the prefix",
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
    /// The object store failed (a damaged encrypted object is [`Error::Corrupt`] instead).
    #[error(transparent)]
    Store(StoreError),
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
    /// A local file operation failed (other than for want of space: [`Error::NoSpace`]).
    #[error("I/O error on {}: {source}; check the path, its permissions and free space", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The request itself is wrong (a member name that is not in the cluster, a malformed store
    /// prefix): the caller's input, not the data or the machine.
    #[error("invalid request: {what}")]
    Invalid {
        /// What is wrong with it.
        what: String,
    },
    /// A local filesystem is full (ENOSPC) or the user's disk quota is used up (EDQUOT).
    #[error(
        "no space left on the filesystem of {}{}: {source}; free space there, or use a larger \
         filesystem for it",
        path.display(),
        match space { Some(s) => format!(" ({s})"), None => String::new() }
    )]
    NoSpace {
        /// The file or directory that could not be written.
        path: PathBuf,
        /// The filesystem's size and free space when the write failed, if they could be read.
        space: Option<DiskSpace>,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the restored database failed, for a reason other than the file's I/O (those are
    /// [`Error::Io`] and [`Error::NoSpace`] naming the file).
    #[error("writing the restored db failed: {source}")]
    DbWrite {
        /// The writer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bug or an unexpected state inside etcdbr (a task panicked, an invariant broke). Nothing
    /// the machine or the input caused is reported as this.
    #[error("internal error: {what}; please report this")]
    Internal {
        /// What happened.
        what: String,
    },
}

/// The size and free space of a filesystem, as `statvfs(2)` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes available to an unprivileged user.
    pub available: u64,
    /// Bytes in the filesystem.
    pub total: u64,
}

impl DiskSpace {
    /// The space of the filesystem that holds `path`, or of the nearest existing ancestor of
    /// `path` (the file a failed write meant to create may not exist).
    pub fn of(path: &Path) -> Option<DiskSpace> {
        let mut p = path;
        loop {
            if let Ok(st) = rustix::fs::statvfs(p) {
                let unit = if st.f_frsize > 0 { st.f_frsize } else { st.f_bsize };
                return Some(DiskSpace {
                    available: st.f_bavail.saturating_mul(unit),
                    total: st.f_blocks.saturating_mul(unit),
                });
            }
            p = p.parent().filter(|q| !q.as_os_str().is_empty())?;
        }
    }
}

impl std::fmt::Display for DiskSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} free of {}", human_bytes(self.available), human_bytes(self.total))
    }
}

/// `n` bytes in binary units with one decimal ("19.8 MiB"), exact below 1 KiB.
pub fn human_bytes(n: u64) -> String {
    if n < 1024 { format!("{n} bytes") } else { scaled(n, &["KiB", "MiB", "GiB", "TiB", "PiB"]) }
}

/// `n` (at least 1 KiB) in the largest of `units` (KiB upwards) that keeps it at or above 1.
fn scaled(n: u64, units: &[&str]) -> String {
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", units[unit])
}

/// A byte count for tables and pages: `872 B`, `1.5 MiB`, up to TiB (what `etcdbrctl status`
/// and the status page print).
pub fn human_bytes_short(n: u64) -> String {
    if n < 1024 { format!("{n} B") } else { scaled(n, &["KiB", "MiB", "GiB", "TiB"]) }
}

/// Whether `e` says a filesystem is full or a disk quota is used up.
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

impl From<StoreError> for Error {
    /// A store's error keeps its kind, except a damaged object (an encrypted one that does not
    /// authenticate), which is the object's corruption, as for any other damaged object.
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Corrupt { key, why } => Error::Corrupt { object: key, why },
            other => Error::Store(other),
        }
    }
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

    /// An [`Error::Io`] on `path`, or an [`Error::NoSpace`] naming the free space of its
    /// filesystem when `source` says the filesystem is full.
    ///
    /// An `io::Error` that carries an [`Error`] (one that passed through a `Read` or `Write`
    /// adapter) gives that error back instead, so its kind is not lost.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Error {
        let path = path.as_ref();
        let source = if source.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let kind = source.kind();
            match source.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(e)) => return *e,
                Some(Err(other)) => std::io::Error::new(kind, other),
                None => std::io::Error::from(kind),
            }
        } else {
            source
        };
        if is_no_space(&source) {
            return Error::NoSpace { path: path.to_path_buf(), space: DiskSpace::of(path), source };
        }
        Error::Io { path: path.to_path_buf(), source }
    }

    /// An [`Error::Internal`].
    pub fn internal(what: impl Into<String>) -> Error {
        Error::Internal { what: what.into() }
    }

    /// The error of a task (`spawn`/`spawn_blocking`) that did not return: it panicked (a bug:
    /// [`Error::Internal`] with the panic's message) or was cancelled (at shutdown).
    pub fn task_failed(what: &str, e: tokio::task::JoinError) -> Error {
        if e.is_cancelled() {
            return Error::internal(format!("{what} was cancelled"));
        }
        let payload = e.into_panic();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Error::internal(format!("{what} panicked: {message}"))
    }

    /// An [`Error::DbWrite`] from the db writer's error.
    pub fn db_write<E>(source: E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Error::DbWrite { source: Box::new(source) }
    }

    /// This error with a db writer's I/O failure attributed to `path`, the file it was writing:
    /// an [`Error::DbWrite`] caused by the file's I/O becomes [`Error::Io`] or
    /// [`Error::NoSpace`] on `path`. Any other error is returned as it is.
    pub fn at_db_path(self, path: &Path) -> Error {
        match self {
            Error::DbWrite { source } => match source.downcast::<bbolt::Error>() {
                Ok(b) => match *b {
                    bbolt::Error::Io { source, .. } => Error::io(path, source),
                    other => Error::DbWrite { source: Box::new(other) },
                },
                Err(source) => match source.downcast::<std::io::Error>() {
                    Ok(io) => Error::io(path, *io),
                    Err(source) => Error::DbWrite { source },
                },
            },
            other => other,
        }
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

    #[test]
    fn a_full_filesystem_is_named_with_its_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-yet-created");
        let e = Error::io(&file, std::io::Error::from_raw_os_error(28)); // ENOSPC
        let Error::NoSpace { path, space, .. } = &e else { panic!("{e:?}") };
        assert_eq!(path, &file);
        let space = space.expect("statvfs of the existing parent");
        assert!(space.total > 0 && space.available <= space.total, "{space:?}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("no space left on the filesystem of {}", file.display())), "{msg}");
        assert!(msg.contains(" free of "), "{msg}");
        assert!(!msg.contains("please report"), "{msg}");
        let quota = Error::io(&file, std::io::Error::from_raw_os_error(122)); // EDQUOT
        assert!(matches!(quota, Error::NoSpace { .. }), "{quota:?}");
    }

    #[test]
    fn an_error_carried_through_io_keeps_its_kind() {
        let inner = Error::corrupt("p/v2/Full-1-2-3.gz", "bad");
        let e = Error::io("/x", std::io::Error::other(inner));
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    }

    #[test]
    fn a_db_write_failure_names_the_file() {
        let full = bbolt::Error::Io { path: None, source: std::io::Error::from_raw_os_error(28) };
        let e = Error::db_write(full).at_db_path(Path::new("/data.part/member/snap/db"));
        assert!(matches!(&e, Error::NoSpace { path, .. } if path == Path::new("/data.part/member/snap/db")), "{e:?}");
        let misuse = Error::db_write(bbolt::Error::Misuse { what: "order".into() }).at_db_path(Path::new("/db"));
        assert!(matches!(misuse, Error::DbWrite { .. }), "{misuse:?}");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes_short(872), "872 B");
        assert_eq!(human_bytes_short(1536), "1.5 KiB");
    }

    #[tokio::test]
    async fn a_panicking_task_is_an_internal_error_with_its_message() {
        let e = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        let e = Error::task_failed("the db writer", e);
        assert!(e.to_string().contains("the db writer panicked: boom"), "{e}");
    }
}
