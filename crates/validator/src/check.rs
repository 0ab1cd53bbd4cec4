//! The validation itself: [`validate`] and [`validate_with`].

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::Path;
use std::time::Instant;

use etcd_format::datadir;
use tracing::{debug, info, info_span, warn};

use crate::probe::{self, DbFacts, WalFacts};
use crate::report::{Absent, Finding, Mode, Report, Severity, Verdict};
use crate::safeguard::{self, Guard};

/// What to check and against what.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// How deep to look.
    pub mode: Mode,
    /// The latest backed-up revision; `None` skips the comparison (no store configured, an
    /// empty store, or a multi-member cluster where followers may trail the leader's backups).
    pub latest_backup_revision: Option<i64>,
    /// The namespace this process runs in (`POD_NAMESPACE`); `Some` turns on the wrong-volume
    /// guard (see [`crate::safeguard`]).
    pub namespace: Option<String>,
}

/// Validates `data_dir` the way `initialize` does, without the wrong-volume guard.
///
/// Returns a report of every finding and a verdict. Garbage in the data dir never makes this
/// fail or panic: it becomes findings. `Err` means the check itself could not run (a directory
/// that cannot be listed, a file that cannot be read for a reason other than its content).
pub fn validate(data_dir: &Path, mode: Mode, latest_backup_revision: Option<i64>) -> io::Result<Report> {
    validate_with(data_dir, &Options { mode, latest_backup_revision, namespace: None })
}

/// Validates `data_dir` with all [`Options`]; see [`validate`].
pub fn validate_with(data_dir: &Path, opts: &Options) -> io::Result<Report> {
    let span = info_span!("validate", data_dir = %data_dir.display(), mode = %opts.mode);
    let _enter = span.enter();
    let started = Instant::now();
    let mut v = Validation { data_dir, opts, findings: Vec::new(), db_revision: None };
    let verdict = v.run()?;
    let report = Report {
        data_dir: data_dir.to_path_buf(),
        mode: opts.mode,
        findings: v.findings,
        verdict,
        db_revision: v.db_revision,
        backup_revision: opts.latest_backup_revision,
        elapsed: started.elapsed(),
    };
    for f in &report.findings {
        match f.severity {
            Severity::Damage => warn!(path = %f.path.display(), offset = f.offset, "{}", f.reason),
            Severity::Note => info!(path = %f.path.display(), offset = f.offset, "{}", f.reason),
        }
    }
    let status = report.verdict.reference_status();
    let elapsed_ms = report.elapsed.as_millis() as u64;
    if report.verdict.is_valid() {
        info!(status, elapsed_ms, "data dir {}", report.verdict);
    } else {
        warn!(status, elapsed_ms, "data dir {}", report.verdict);
    }
    Ok(report)
}

struct Validation<'a> {
    data_dir: &'a Path,
    opts: &'a Options,
    findings: Vec<Finding>,
    db_revision: Option<i64>,
}

/// Whether `path` is a directory; `Ok(None)` when it does not exist, and a damage finding (as
/// `Ok(Some(false))`) when it is something else.
fn dir_state(path: &Path) -> io::Result<Option<bool>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m.is_dir())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(None),
        Err(e) => Err(e),
    }
}

impl Validation<'_> {
    fn damage(&mut self, path: impl AsRef<Path>, reason: impl Into<String>) {
        self.findings.push(Finding::damage(path, reason));
    }

    fn note(&mut self, path: impl AsRef<Path>, reason: impl Into<String>) {
        self.findings.push(Finding::note(path, reason));
    }

    fn run(&mut self) -> io::Result<Verdict> {
        // 1. The wrong-volume guard comes first: nothing else may even be judged on a foreign volume.
        if let Guard::Foreign { found, path } = safeguard::check(self.data_dir, self.opts.namespace.as_deref())? {
            let expected = self.opts.namespace.clone().unwrap_or_default();
            return Ok(Verdict::WrongVolume { expected, found, path });
        }

        // 2. Layout.
        match dir_state(self.data_dir)? {
            None => return Ok(Verdict::Missing { absent: Absent::DataDir, path: self.data_dir.to_path_buf() }),
            Some(false) => {
                self.damage(self.data_dir, "the data dir is not a directory");
                return Ok(self.conclude(None, None));
            }
            Some(true) => {}
        }
        let member = datadir::member_dir(self.data_dir);
        match dir_state(&member)? {
            None => return Ok(Verdict::Missing { absent: Absent::MemberDir, path: member }),
            Some(false) => {
                self.damage(&member, "member is not a directory");
                return Ok(self.conclude(None, None));
            }
            Some(true) => {}
        }
        let snap_dir = datadir::snap_dir(&member);
        let wal_dir = datadir::wal_dir(&member);
        let db_path = datadir::db_path(&member);
        let snap_ok = self.require_dir(&snap_dir, "etcd keeps its db and raft snapshots there")?;
        let wal_ok = self.require_dir(&wal_dir, "etcd keeps its raft log there")?;

        // 3. The lock: a running etcd holds an exclusive flock on its db, as bbolt does; we take
        // a shared one, like a read-only bbolt open, and keep it while we look.
        let _lock = if snap_ok {
            match self.lock_db(&db_path)? {
                Lock::Held(file) => Some(file),
                Lock::Busy => return Ok(Verdict::InUse { path: db_path }),
                Lock::Absent => None,
            }
        } else {
            None
        };

        // 4. The db: meta pages, revision, consistent index; the whole page walk in full mode.
        let db = if _lock.is_some() { self.check_db(&db_path) } else { None };
        self.db_revision = db.as_ref().map(|d| d.revision);

        // 5. WAL segments: present always; decoded end to end in full mode, or only the tail in
        // sanity mode when the db alone looks older than the backups.
        let wal_files = if wal_ok {
            let (segs, notes) = probe::wal_segments(&wal_dir)?;
            self.findings.extend(notes);
            segs
        } else {
            Vec::new()
        };
        if wal_ok && wal_files.is_empty() {
            self.damage(&wal_dir, "no WAL segment (*.wal): etcd would bootstrap a new member over the existing db");
        }
        let stale_suspect = match (&db, self.opts.latest_backup_revision) {
            (Some(db), Some(backup)) => db.revision < backup,
            _ => false,
        };
        let wal = if !wal_files.is_empty() && (self.opts.mode == Mode::Full || stale_suspect) {
            let from_index = match self.opts.mode {
                Mode::Full => None,
                Mode::Sanity => db.as_ref().map(|d| d.consistent_index),
            };
            let consistent_index = db.as_ref().map(|d| d.consistent_index).unwrap_or(0);
            let facts = probe::scan_wal(&wal_files, from_index, consistent_index)?;
            self.findings.extend(facts.findings.iter().cloned());
            Some(facts)
        } else {
            None
        };
        if let Some(wal) = &wal
            && wal.readable
            && !wal.has_metadata
        {
            self.damage(&wal_dir, "the WAL has no metadata record (member and cluster id): etcd cannot open it");
        }
        if let (Some(db), Some(wal)) = (&db, &wal)
            && wal.readable
            && let last = wal.last_index.unwrap_or(0)
            && db.consistent_index > last
        {
            self.damage(
                &wal_dir,
                format!(
                    "the WAL ends at raft index {last}, but the db has applied entries up to {}: \
                     the end of the raft log is lost (truncated or deleted segments)",
                    db.consistent_index
                ),
            );
        }

        // 6. Snap files (full mode): each one's crc.
        if self.opts.mode == Mode::Full && snap_ok {
            let found = probe::check_snap_files(&snap_dir, db.as_ref().map(|d| d.consistent_index))?;
            self.findings.extend(found);
        }

        Ok(self.conclude(db.as_ref(), wal.as_ref()))
    }

    fn require_dir(&mut self, dir: &Path, why: &str) -> io::Result<bool> {
        match dir_state(dir)? {
            Some(true) => Ok(true),
            Some(false) => {
                self.damage(dir, format!("not a directory ({why})"));
                Ok(false)
            }
            None => {
                self.damage(dir, format!("missing ({why})"));
                Ok(false)
            }
        }
    }

    fn lock_db(&mut self, db_path: &Path) -> io::Result<Lock> {
        let file = match File::open(db_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.damage(db_path, "the bbolt db is missing");
                return Ok(Lock::Absent);
            }
            Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
                self.damage(db_path, "the bbolt db is a directory");
                return Ok(Lock::Absent);
            }
            Err(e) => return Err(e),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(Lock::Held(file)),
            Err(TryLockError::WouldBlock) => Ok(Lock::Busy),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn check_db(&mut self, db_path: &Path) -> Option<DbFacts> {
        let (facts, findings) = probe::check_db(db_path, self.opts.mode == Mode::Full);
        self.findings.extend(findings);
        if let Some(f) = &facts {
            debug!(revision = f.revision, consistent_index = f.consistent_index, "db read");
        }
        facts
    }

    fn conclude(&mut self, db: Option<&DbFacts>, wal: Option<&WalFacts>) -> Verdict {
        if let Some(first) = self.findings.iter().find(|f| f.severity == Severity::Damage) {
            return Verdict::Corrupt { why: first.to_string() };
        }
        let (Some(db), Some(backup)) = (db, self.opts.latest_backup_revision) else {
            return Verdict::Valid;
        };
        if db.revision > backup {
            return Verdict::Ahead { db_revision: db.revision, backup_revision: backup };
        }
        if db.revision == backup {
            return Verdict::Valid;
        }
        // The db alone is behind. etcd applies the WAL entries after the db's consistent index at
        // boot; each can raise the revision by at most one, so this is an upper bound.
        let pending = wal.map(|w| w.pending_entries).unwrap_or(0);
        let reachable = db.revision.saturating_add(pending as i64);
        if reachable >= backup {
            let wal_dir = datadir::wal_dir(&datadir::member_dir(self.data_dir));
            self.note(
                wal_dir,
                format!(
                    "the db is at revision {} behind the latest backup ({backup}), but the WAL holds {pending} \
                     entries not yet applied that etcd replays at boot; trusting the WAL",
                    db.revision
                ),
            );
            return Verdict::Valid;
        }
        Verdict::Stale { db_revision: db.revision, wal_pending: pending, backup_revision: backup }
    }
}

enum Lock {
    Held(#[allow(dead_code)] File),
    Busy,
    Absent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_problems_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("d");
        let r = validate(&data, Mode::Full, Some(5)).unwrap();
        assert_eq!(r.verdict, Verdict::Missing { absent: Absent::DataDir, path: data.clone() });
        assert_eq!(r.verdict.reference_status(), "DataDirectoryNotExist");

        fs::create_dir_all(&data).unwrap();
        let r = validate(&data, Mode::Sanity, None).unwrap();
        assert_eq!(r.verdict, Verdict::Missing { absent: Absent::MemberDir, path: data.join("member") });

        fs::create_dir_all(data.join("member/snap")).unwrap();
        let r = validate(&data, Mode::Sanity, None).unwrap();
        assert!(matches!(r.verdict, Verdict::Corrupt { .. }), "{:?}", r.verdict);
        let reasons: Vec<String> = r.damage().map(|f| f.to_string()).collect();
        assert!(reasons.iter().any(|f| f.contains("member/wal") && f.contains("missing")), "{reasons:?}");
        assert!(reasons.iter().any(|f| f.contains("snap/db") && f.contains("missing")), "{reasons:?}");

        fs::create_dir_all(data.join("member/wal")).unwrap();
        fs::write(data.join("member/snap/db"), b"corrupt file..").unwrap();
        let r = validate(&data, Mode::Full, Some(5)).unwrap();
        assert!(matches!(r.verdict, Verdict::Corrupt { .. }));
        let reasons: Vec<String> = r.damage().map(|f| f.to_string()).collect();
        assert!(reasons.iter().any(|f| f.contains("cannot be opened")), "{reasons:?}");
        assert!(reasons.iter().any(|f| f.contains("no WAL segment")), "{reasons:?}");
        assert_eq!(r.db_revision, None);
    }

    #[test]
    fn a_file_where_a_dir_belongs_is_damage_not_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("d");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("member"), b"x").unwrap();
        let r = validate(&data, Mode::Full, None).unwrap();
        assert!(matches!(r.verdict, Verdict::Corrupt { .. }), "{:?}", r.verdict);
        fs::write(tmp.path().join("f"), b"x").unwrap();
        let r = validate(&tmp.path().join("f"), Mode::Full, None).unwrap();
        assert!(matches!(r.verdict, Verdict::Corrupt { .. }), "{:?}", r.verdict);
    }

    #[test]
    fn the_wrong_volume_is_refused_before_anything_else() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("safe_guard"), "ns-a").unwrap();
        let opts = Options { mode: Mode::Sanity, latest_backup_revision: None, namespace: Some("ns-b".into()) };
        let r = validate_with(&tmp.path().join("d"), &opts).unwrap();
        assert!(matches!(r.verdict, Verdict::WrongVolume { .. }), "{:?}", r.verdict);
        assert!(!r.verdict.needs_restore() && !r.verdict.is_valid());
    }
}
