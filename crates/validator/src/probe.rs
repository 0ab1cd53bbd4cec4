//! Reading the data dir's files through `bbolt` and `etcd-format`, turning every problem into a
//! [`Finding`]. The policy (what is damage, what only a note) lives here and in `check.rs`.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use etcd_format::meta::DbRevisions;
use etcd_format::mvcc::{KEY_BUCKET, KeyValueRef, RevKey};
use etcd_format::snap::{self, SnapError};
use etcd_format::wal::{self, Corruption, WalContents, WalError};

use crate::report::Finding;

/// What the db says about itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DbFacts {
    /// etcd's current revision once it boots from this db.
    pub revision: i64,
    /// The raft index of the last entry applied to the db (0 if the db has none recorded).
    pub consistent_index: u64,
}

fn bolt_finding(path: &Path, e: &bbolt::Error, context: &str) -> Finding {
    let f = Finding::damage(path, format!("{context}: {e}"));
    match e {
        bbolt::Error::Corrupted { offset: Some(off), .. } => f.at(*off),
        _ => f,
    }
}

/// Opens the db, checks both meta pages and reads the revision; with `full`, walks every page
/// and decodes every `key` bucket entry. Returns the facts when the db could be read at all.
///
/// An I/O error opening the file is reported as damage too: the lock was taken on the same
/// file a moment earlier, so what fails here is the mapping of a file that is not a db.
pub(crate) fn check_db(path: &Path, full: bool) -> (Option<DbFacts>, Vec<Finding>) {
    let mut findings = Vec::new();
    let db = match bbolt::Db::open(path) {
        Ok(db) => db,
        Err(e) => {
            findings.push(bolt_finding(path, &e, "the bbolt db cannot be opened"));
            return (None, findings);
        }
    };
    // bbolt opens a file with one bad meta page by falling back to the other, older one; but
    // bbolt writes both pages in every healthy file, so a bad one means damage (and the older
    // transaction may point at pages reused since).
    let ps = u64::from(db.page_size());
    for (slot, m) in db.metas().iter().enumerate() {
        if let Err(why) = m {
            findings.push(Finding::damage(path, format!("meta page {slot} is invalid: {why}")).at(slot as u64 * ps));
        }
    }
    let facts = match DbRevisions::read(&db) {
        Ok(r) => Some(DbFacts { revision: r.current_revision, consistent_index: r.consistent_index.unwrap_or(0) }),
        Err(e) => {
            findings.push(Finding::damage(path, format!("the db's revision cannot be read: {e}")));
            None
        }
    };
    if full {
        let report = db.check();
        // Invalid meta pages were reported above, in every mode.
        for f in report.findings.iter().filter(|f| f.kind != bbolt::FindingKind::MetaInvalid) {
            let finding = Finding::damage(path, format!("bbolt check: {f}"));
            findings.push(match f.page {
                Some(p) => finding.at(p.saturating_mul(ps)),
                None => finding,
            });
        }
        if report.dropped_findings > 0 {
            findings.push(Finding::damage(path, format!("bbolt check: {} more findings", report.dropped_findings)));
        }
        if report.findings.is_empty() && facts.is_some() {
            check_key_bucket(&db, path, &mut findings);
        }
    }
    (facts, findings)
}

/// The most findings reported from the `key` bucket: one bad page yields many bad entries, and
/// the first few say enough.
const MAX_KEY_FINDINGS: usize = 10;

/// Every `key` bucket entry: a 17-byte revision (18 with the tombstone mark) and a `KeyValue`
/// whose `mod_revision` is that revision (tombstones carry only the key). etcd panics on
/// anything else when it reads the entry.
fn check_key_bucket(db: &bbolt::Db, path: &Path, findings: &mut Vec<Finding>) {
    let bucket = match db.bucket(KEY_BUCKET) {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => {
            findings.push(bolt_finding(path, &e, "the key bucket cannot be read"));
            return;
        }
    };
    let mut bad = 0usize;
    let mut report = |findings: &mut Vec<Finding>, reason: String| {
        bad += 1;
        if bad <= MAX_KEY_FINDINGS {
            findings.push(Finding::damage(path, reason));
        }
    };
    for entry in bucket.iter() {
        let (key, value) = match entry {
            Ok(bbolt::Entry::Value { key, value }) => (key, value),
            Ok(other) => {
                report(findings, format!("key bucket holds a nested bucket {:02x?}", other.key()));
                continue;
            }
            Err(e) => {
                report(findings, format!("key bucket: {e}"));
                break;
            }
        };
        let rk = match RevKey::decode(key) {
            Ok(rk) => rk,
            Err(why) => {
                report(findings, format!("key bucket entry {key:02x?}: {why}"));
                continue;
            }
        };
        // `etcdutl snapshot restore --bump-revision --mark-compacted` (3.6) writes one empty value.
        if value.is_empty() {
            continue;
        }
        match KeyValueRef::decode(value) {
            Ok(kv) if rk.tombstone || kv.mod_revision == rk.rev.main => {}
            Ok(kv) => report(
                findings,
                format!("key bucket entry at revision {} holds mod_revision {}", rk.rev.main, kv.mod_revision),
            ),
            Err(why) => report(findings, format!("key bucket entry at revision {}: {why}", rk.rev.main)),
        }
    }
    if bad > MAX_KEY_FINDINGS {
        findings.push(Finding::damage(path, format!("{} more bad key bucket entries", bad - MAX_KEY_FINDINGS)));
    }
}

/// One WAL segment file: its path and the first raft index its name promises.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub path: PathBuf,
    pub first_index: u64,
}

/// What the WAL says about the raft log.
#[derive(Debug, Clone, Default)]
pub(crate) struct WalFacts {
    pub findings: Vec<Finding>,
    /// Whether the records could be read to their end (possibly after a torn tail), so
    /// `last_index` is where the log really ends.
    pub readable: bool,
    /// The last raft index the log holds (entries or snapshot records).
    pub last_index: Option<u64>,
    /// Whether the records read include the metadata record every segment starts with.
    pub has_metadata: bool,
    /// Entries after the db's consistent index: each can add at most one revision at boot.
    pub pending_entries: u64,
}

/// The `*.wal` segments of `wal_dir`, in name order; files with other names are ignored as etcd
/// ignores them (a note says so).
pub(crate) fn wal_segments(wal_dir: &Path) -> io::Result<(Vec<Segment>, Vec<Finding>)> {
    let mut segs = Vec::new();
    let mut findings = Vec::new();
    for ent in fs::read_dir(wal_dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.ends_with(wal::SEGMENT_SUFFIX) {
            continue;
        }
        match wal::parse_segment_name(name) {
            Some((_, first_index)) => segs.push(Segment { path: ent.path(), first_index }),
            None => findings.push(Finding::note(ent.path(), "not a WAL segment name; etcd ignores this file")),
        }
    }
    segs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((segs, findings))
}

fn is_torn(kind: &Corruption) -> bool {
    matches!(kind, Corruption::TornRecord { .. } | Corruption::TornLengthField { .. } | Corruption::TornWrite)
}

fn read_segments(segs: &[Segment], limit_last: Option<u64>) -> Result<WalContents, WalError> {
    let mut readers: Vec<(PathBuf, Box<dyn Read>)> = Vec::with_capacity(segs.len());
    for (i, s) in segs.iter().enumerate() {
        let f = File::open(&s.path).map_err(|source| WalError::Io { path: s.path.clone(), source })?;
        let r = BufReader::with_capacity(1 << 16, f);
        let reader: Box<dyn Read> = match limit_last {
            Some(n) if i + 1 == segs.len() => Box::new(r.take(n)),
            _ => Box::new(r),
        };
        readers.push((s.path.clone(), reader));
    }
    wal::read_wal_segments(readers)
}

/// Reads the WAL segments, from the one holding `from_index` (or all of them), verifying the
/// crc chain and every record.
///
/// A torn record at the end of the last segment is a note: etcd cuts it at boot
/// (`wal.Repair`), as after any crash, and the log ends just before it. Anything else that is
/// wrong is damage.
pub(crate) fn scan_wal(segs: &[Segment], from_index: Option<u64>, consistent_index: u64) -> io::Result<WalFacts> {
    let start = match from_index {
        // The last segment whose first index is at or below the index: it holds that entry.
        Some(ci) => segs.iter().rposition(|s| s.first_index <= ci).unwrap_or(0),
        None => 0,
    };
    let segs = &segs[start..];
    let mut facts = WalFacts::default();
    let Some(last) = segs.last() else {
        return Ok(facts);
    };
    let contents = match read_segments(segs, None) {
        Ok(c) => c,
        Err(WalError::Corrupt { file, offset, kind }) if file == last.path && is_torn(&kind) => {
            facts.findings.push(
                Finding::note(&file, format!("{kind}: the last write was torn (a crash); etcd cuts it at boot"))
                    .at(offset),
            );
            match read_segments(segs, Some(offset)) {
                Ok(c) => c,
                Err(e) => return wal_error(facts, e),
            }
        }
        Err(e) => return wal_error(facts, e),
    };
    let last_entry = contents.last_entry.map(|(i, _)| i);
    let last_snap = contents.snapshots.iter().map(|s| s.index).max();
    facts.last_index = last_entry.max(last_snap);
    facts.readable = true;
    facts.has_metadata = contents.metadata.is_some();
    facts.pending_entries = facts.last_index.unwrap_or(0).saturating_sub(consistent_index);
    Ok(facts)
}

fn wal_error(mut facts: WalFacts, e: WalError) -> io::Result<WalFacts> {
    match e {
        WalError::Io { source, .. } => Err(source),
        WalError::Corrupt { file, offset, kind } => {
            facts.findings.push(Finding::damage(&file, format!("{kind}; etcd refuses to replay this WAL")).at(offset));
            Ok(facts)
        }
        WalError::NoSegments(dir) => {
            facts.findings.push(Finding::damage(&dir, "no WAL segment"));
            Ok(facts)
        }
        WalError::BadSegmentName(path) => {
            facts.findings.push(Finding::damage(&path, "not a WAL segment name"));
            Ok(facts)
        }
        other => {
            facts.findings.push(Finding::damage(PathBuf::new(), other.to_string()));
            Ok(facts)
        }
    }
}

/// Verifies every `*.snap` file of `snap_dir` (envelope, crc, raft snapshot) and that etcd can
/// pair the newest one with the db.
///
/// etcd loads the newest snap file that verifies and renames broken ones to `*.broken`; so a
/// broken newest file is damage (etcd would fall back to an older raft snapshot whose WAL may be
/// purged), a broken older one only a note. When the newest snapshot is past the db's
/// consistent index, etcd needs `<index>.snap.db` beside it (a snapshot received from a leader
/// and not yet applied) and fails to boot without it.
pub(crate) fn check_snap_files(snap_dir: &Path, consistent_index: Option<u64>) -> io::Result<Vec<Finding>> {
    let mut names: Vec<String> = Vec::new();
    for ent in fs::read_dir(snap_dir)? {
        let ent = ent?;
        if let Some(name) = ent.file_name().to_str()
            && name.ends_with(snap::SNAP_SUFFIX)
        {
            names.push(name.to_string());
        }
    }
    // etcd's names are fixed-width hex term-index, so name order is (term, index) order.
    names.sort();
    let mut findings = Vec::new();
    let mut newest_valid: Option<u64> = None;
    for (i, name) in names.iter().enumerate().rev() {
        let path = snap_dir.join(name);
        let newest = i + 1 == names.len();
        match snap::read_snap_file(&path) {
            Ok(s) => {
                if newest_valid.is_none() {
                    newest_valid = Some(s.metadata.index);
                }
            }
            Err(SnapError::Io { source, .. }) => return Err(source),
            Err(e @ SnapError::Corrupt { .. }) => {
                let reason = e.to_string();
                findings.push(if newest {
                    Finding::damage(&path, format!("the newest raft snapshot is broken: {reason}"))
                } else {
                    Finding::note(
                        &path,
                        format!("an older raft snapshot is broken (etcd renames it *.broken): {reason}"),
                    )
                });
            }
            Err(e) => findings.push(Finding::damage(&path, e.to_string())),
        }
    }
    if let (Some(index), Some(ci)) = (newest_valid, consistent_index)
        && index > ci
    {
        let db_snap = snap_dir.join(format!("{index:016x}.snap.db"));
        if !db_snap.is_file() {
            findings.push(Finding::damage(
                &db_snap,
                format!(
                    "the newest raft snapshot is at index {index}, past the db's consistent index {ci}, \
                     and the db snapshot etcd would recover from is missing"
                ),
            ));
        }
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_format::membership::Cluster;

    fn restored_wal(dir: &Path) -> (Cluster, PathBuf) {
        let c = Cluster::from_initial_cluster("n1=http://127.0.0.1:2380", "tok").unwrap();
        let wal_dir = dir.join("wal");
        let path = wal::create_restore_wal(&wal_dir, &c, c.members[0].id).unwrap();
        (c, path)
    }

    #[test]
    fn a_restored_wal_reads_clean_and_ends_at_the_member_count() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, _) = restored_wal(tmp.path());
        let (segs, notes) = wal_segments(&tmp.path().join("wal")).unwrap();
        assert!(notes.is_empty());
        let facts = scan_wal(&segs, None, 1).unwrap();
        assert!(facts.findings.is_empty(), "{:?}", facts.findings);
        assert!(facts.readable);
        assert_eq!(facts.last_index, Some(1));
        assert_eq!(facts.pending_entries, 0);
        assert_eq!(scan_wal(&segs, None, 0).unwrap().pending_entries, 1);
    }

    #[test]
    fn torn_tail_is_a_note_and_a_flipped_byte_is_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, path) = restored_wal(tmp.path());
        let (segs, _) = wal_segments(&tmp.path().join("wal")).unwrap();
        let end = wal::read_wal_dir(&tmp.path().join("wal")).unwrap().segments[0].end_offset;
        let bytes = fs::read(&path).unwrap();

        // Cut the last record in half: a torn write, repaired by etcd.
        fs::write(&path, &bytes[..end as usize - 10]).unwrap();
        let facts = scan_wal(&segs, None, 0).unwrap();
        assert_eq!(facts.findings.len(), 1, "{:?}", facts.findings);
        assert_eq!(facts.findings[0].severity, crate::Severity::Note);
        assert!(facts.readable);
        assert_eq!(facts.last_index, Some(1), "the entry before the torn snapshot record survives");

        // Flip a byte of the metadata record: a crc mismatch, damage.
        let mut flipped = bytes.clone();
        flipped[16 + 8 + 12] ^= 0x40;
        fs::write(&path, &flipped).unwrap();
        let facts = scan_wal(&segs, None, 0).unwrap();
        assert!(!facts.readable);
        assert_eq!(facts.findings[0].severity, crate::Severity::Damage);
        assert_eq!(facts.findings[0].offset, Some(16));
    }

    #[test]
    fn snap_files_are_verified_and_paired_with_the_db() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Cluster::from_initial_cluster("n1=http://127.0.0.1:2380", "tok").unwrap();
        let path = snap::write_snap_file(tmp.path(), &snap::restore_snapshot(&c)).unwrap();
        assert!(check_snap_files(tmp.path(), Some(1)).unwrap().is_empty());
        // The db has not applied the snapshot's index and there is no .snap.db.
        let f = check_snap_files(tmp.path(), Some(0)).unwrap();
        assert_eq!(f.len(), 1);
        assert!(f[0].reason.contains("consistent index"), "{}", f[0]);
        // A flipped byte in the only (newest) snap file.
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 40] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let f = check_snap_files(tmp.path(), Some(1)).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, crate::Severity::Damage);
    }
}
