//! What a validation found: [`Finding`]s and the [`Verdict`] drawn from them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How deep a validation looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Layout, both bbolt meta pages, the db's revision, and that revision against the latest
    /// backup. Cheap (milliseconds, independent of the db's size): what to run after a clean
    /// shutdown.
    Sanity,
    /// Everything [`Mode::Sanity`] does, plus a walk of every bbolt page (`bbolt check`), the
    /// WAL's crc chain over all segments and every snap file's crc. Reads the whole data dir:
    /// what to run after a crash. The reference's default.
    #[default]
    Full,
}

impl Mode {
    /// The spelling of `--validation-mode` and of `?mode=` on `/initialization/start`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sanity => "sanity",
            Mode::Full => "full",
        }
    }

    /// Parses `full` or `sanity`; anything else is `None` (the reference treats an unknown mode
    /// as `full`, which the caller may choose to do).
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "full" => Some(Mode::Full),
            "sanity" => Some(Mode::Sanity),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth knowing, harmless: etcd boots and serves correct data (e.g. a torn last WAL record
    /// that etcd cuts at boot, as after any crash).
    Note,
    /// The data dir is damaged: etcd would refuse to boot, panic later, or serve wrong data.
    Damage,
}

/// One thing a validation noticed, with the file it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Whether it makes the data dir unusable.
    pub severity: Severity,
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The byte offset inside `path`, when the problem is at a known place.
    pub offset: Option<u64>,
    /// What is wrong, in words an operator can act on.
    pub reason: String,
}

impl Finding {
    /// A [`Severity::Damage`] finding.
    pub fn damage(path: impl AsRef<Path>, reason: impl Into<String>) -> Finding {
        Finding { severity: Severity::Damage, path: path.as_ref().to_path_buf(), offset: None, reason: reason.into() }
    }

    /// A [`Severity::Note`] finding.
    pub fn note(path: impl AsRef<Path>, reason: impl Into<String>) -> Finding {
        Finding { severity: Severity::Note, path: path.as_ref().to_path_buf(), offset: None, reason: reason.into() }
    }

    /// The same finding, at byte `offset` of its file.
    pub fn at(mut self, offset: u64) -> Finding {
        self.offset = Some(offset);
        self
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Note => "note",
            Severity::Damage => "damage",
        };
        write!(f, "{level}: {}", self.path.display())?;
        if let Some(off) = self.offset {
            write!(f, " at offset {off}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Which part of the data dir is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Absent {
    /// The data dir itself does not exist.
    DataDir,
    /// The data dir exists but holds no `member/` dir (a fresh volume, or a deleted member).
    MemberDir,
}

/// The conclusion of a validation: what the data dir is good for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// etcd can boot from it and it holds at least what the backups hold (or no backup
    /// revision was given to compare with).
    Valid,
    /// Valid, and etcd is ahead of the latest backup: the writes after the last backup exist
    /// only here, so the data dir must be kept (the snapshotter will back them up).
    Ahead {
        /// The db's current revision.
        db_revision: i64,
        /// The latest backed-up revision.
        backup_revision: i64,
    },
    /// There is nothing to boot from.
    Missing {
        /// What is absent.
        absent: Absent,
        /// Its path.
        path: PathBuf,
    },
    /// The data dir is damaged (layout, bbolt file, WAL or snap files); see the findings.
    Corrupt {
        /// The first damage found, in one line.
        why: String,
    },
    /// The data dir is intact but older than the latest backup, even counting the WAL entries
    /// not yet applied to the db: booting it would lose backed-up writes (a wrong or old
    /// volume, or backups of another etcd).
    Stale {
        /// The db's current revision.
        db_revision: i64,
        /// The most the WAL can add on top of `db_revision`.
        wal_pending: u64,
        /// The latest backed-up revision.
        backup_revision: i64,
    },
    /// Another process holds the db's lock: etcd is running on this data dir. Nothing may be
    /// changed; the reference calls this `FailToOpenBoltDBError`.
    InUse {
        /// The locked db file.
        path: PathBuf,
    },
    /// The volume belongs to another namespace (the reference's `safe_guard` file): the wrong
    /// volume is mounted, and touching it would destroy another cluster's data.
    WrongVolume {
        /// The namespace this process runs in (`POD_NAMESPACE`).
        expected: String,
        /// The namespace recorded on the volume.
        found: String,
        /// The safe-guard file.
        path: PathBuf,
    },
}

impl Verdict {
    /// Whether etcd may boot from the data dir as it is ([`Verdict::Valid`] or [`Verdict::Ahead`]).
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid | Verdict::Ahead { .. })
    }

    /// Whether the data dir should be replaced by a restore ([`Verdict::Missing`],
    /// [`Verdict::Corrupt`], [`Verdict::Stale`]). [`Verdict::InUse`] and
    /// [`Verdict::WrongVolume`] are neither valid nor restorable: touching them would harm a
    /// running etcd or another cluster.
    pub fn needs_restore(&self) -> bool {
        matches!(self, Verdict::Missing { .. } | Verdict::Corrupt { .. } | Verdict::Stale { .. })
    }

    /// The reference's `DataDirStatus` name for this verdict, for logs and compatibility
    /// (`pkg/initializer/validator/types.go`).
    pub fn reference_status(&self) -> &'static str {
        match self {
            Verdict::Valid | Verdict::Ahead { .. } => "DataDirectoryValid",
            Verdict::Missing { absent: Absent::DataDir, .. } => "DataDirectoryNotExist",
            Verdict::Missing { absent: Absent::MemberDir, .. } => "DataDirectoryInvStruct",
            Verdict::Corrupt { .. } => "DataDirectoryCorrupt",
            Verdict::Stale { .. } => "RevisionConsistencyError",
            Verdict::InUse { .. } => "FailToOpenBoltDBError",
            Verdict::WrongVolume { .. } => "WrongVolumeMounted",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid => f.write_str("valid"),
            Verdict::Ahead { db_revision, backup_revision } => {
                write!(f, "valid: etcd is at revision {db_revision}, ahead of the latest backup ({backup_revision})")
            }
            Verdict::Missing { absent: Absent::DataDir, path } => {
                write!(f, "missing: the data dir {} does not exist", path.display())
            }
            Verdict::Missing { absent: Absent::MemberDir, path } => {
                write!(f, "missing: {} does not exist", path.display())
            }
            Verdict::Corrupt { why } => write!(f, "corrupt: {why}"),
            Verdict::Stale { db_revision, wal_pending, backup_revision } => write!(
                f,
                "stale: the db is at revision {db_revision} (at most {} with its {wal_pending} unapplied WAL \
                 entries), behind the latest backup at revision {backup_revision}",
                db_revision.saturating_add(*wal_pending as i64)
            ),
            Verdict::InUse { path } => write!(
                f,
                "in use: {} is locked by another process (etcd is running on this data dir); stop it first",
                path.display()
            ),
            Verdict::WrongVolume { expected, found, path } => write!(
                f,
                "wrong volume: {} says this volume belongs to namespace {found:?}, but this is {expected:?}; \
                 mount the right volume (or remove the file if the volume was moved on purpose)",
                path.display()
            ),
        }
    }
}

/// Everything one validation found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The data dir validated.
    pub data_dir: PathBuf,
    /// How deep it looked.
    pub mode: Mode,
    /// Every finding, damage and notes, in the order found.
    pub findings: Vec<Finding>,
    /// The conclusion.
    pub verdict: Verdict,
    /// The db's current revision, if the db could be read.
    pub db_revision: Option<i64>,
    /// The latest backed-up revision it was compared with, if any.
    pub backup_revision: Option<i64>,
    /// How long the validation took.
    pub elapsed: Duration,
}

impl Report {
    /// The findings that make the data dir unusable.
    pub fn damage(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Damage)
    }
}
