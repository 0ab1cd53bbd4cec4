//! etcd's raft snap files (`member/snap/%016x-%016x.snap`, term then index).
//!
//! A snap file is `snappb.Snapshot{crc, data}` where `data` is an encoded `raftpb.Snapshot`
//! and `crc` is its crc32c (Castagnoli, not chained), as `Snapshotter.save` writes it; etcd's
//! `Snapshotter.Load` renames an empty file or one with a bad CRC to `*.broken`. For a restored
//! member the snapshot's data is the v2 store JSON of the membership
//! ([`crate::membership::Cluster::v2_store_json`]). See `docs/formats.md` §6.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::membership::Cluster;
use crate::raftpb::{Message, ProtoError, SnapEnvelope, Snapshot, SnapshotMetadata};

/// What is wrong with a snap file's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SnapCorruption {
    /// The file has no bytes (etcd's `ErrEmptySnapshot`).
    #[error("empty snap file")]
    Empty,
    /// The envelope is not a valid `snappb.Snapshot`.
    #[error("bad snappb.Snapshot envelope: {0}")]
    BadEnvelope(ProtoError),
    /// The envelope has no data field.
    #[error("snappb.Snapshot has no data")]
    NoData,
    /// The stored CRC does not match the data (etcd's `ErrCRCMismatch`).
    #[error("crc mismatch: file has {stored:#010x}, data hashes to {computed:#010x}")]
    CrcMismatch {
        /// The CRC in the envelope.
        stored: u32,
        /// crc32c of the data.
        computed: u32,
    },
    /// The data is not a valid `raftpb.Snapshot`.
    #[error("bad raftpb.Snapshot: {0}")]
    BadSnapshot(ProtoError),
}

/// Errors writing or reading a snap file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SnapError {
    /// An I/O error on the file or its directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file's contents are not a valid snap file.
    #[error("{file}: {kind}")]
    Corrupt {
        /// The snap file.
        file: PathBuf,
        /// What is wrong.
        kind: SnapCorruption,
    },
}

/// How a raft snapshot file's name ends (`<index>.snap.db`, a db received from a leader, is
/// another file).
pub const SNAP_SUFFIX: &str = ".snap";

/// The file name etcd gives the snapshot at (`term`, `index`).
pub fn snap_file_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}{SNAP_SUFFIX}")
}

/// Parses `%016x-%016x.snap` into (term, index).
pub fn parse_snap_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SNAP_SUFFIX)?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 || !a.bytes().chain(b.bytes()).all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
}

/// The snap files in `snap_dir` as (term, index, path), newest (highest term, then index) first,
/// the order in which etcd's `Snapshotter` tries them. Other files (`db`, `*.snap.db`,
/// `*.broken`, temporaries) are skipped.
pub fn list_snap_files(snap_dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, SnapError> {
    let io = |source| SnapError::Io { path: snap_dir.to_path_buf(), source };
    let mut out = Vec::new();
    for ent in fs::read_dir(snap_dir).map_err(io)? {
        let ent = ent.map_err(io)?;
        if let Some((term, index)) = ent.file_name().to_str().and_then(parse_snap_file_name) {
            out.push((term, index, ent.path()));
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse((e.0, e.1)));
    Ok(out)
}

/// The bytes of a snap file holding `snapshot`: `08 <crc varint> 12 <len varint> <raftpb.Snapshot>`.
pub fn encode_snap_file(snapshot: &Snapshot) -> Vec<u8> {
    let data = snapshot.encode();
    let crc = crc32c::crc32c(&data);
    SnapEnvelope { crc, data: Some(data) }.encode()
}

/// Decodes and verifies a snap file's bytes: envelope, CRC, then the raft snapshot.
pub fn decode_snap_file(bytes: &[u8]) -> Result<Snapshot, SnapCorruption> {
    if bytes.is_empty() {
        return Err(SnapCorruption::Empty);
    }
    let env = SnapEnvelope::decode(bytes).map_err(SnapCorruption::BadEnvelope)?;
    let data = env.data.ok_or(SnapCorruption::NoData)?;
    let computed = crc32c::crc32c(&data);
    if computed != env.crc {
        return Err(SnapCorruption::CrcMismatch { stored: env.crc, computed });
    }
    Snapshot::decode(&data).map_err(SnapCorruption::BadSnapshot)
}

/// Reads and verifies the snap file at `path`.
pub fn read_snap_file(path: &Path) -> Result<Snapshot, SnapError> {
    let bytes = fs::read(path).map_err(|source| SnapError::Io { path: path.to_path_buf(), source })?;
    decode_snap_file(&bytes).map_err(|kind| SnapError::Corrupt { file: path.to_path_buf(), kind })
}

/// The raft snapshot restore saves for `cluster`: the v2 store JSON of its members at index N
/// (= member count), term 1, with every member a voter.
pub fn restore_snapshot(cluster: &Cluster) -> Snapshot {
    Snapshot {
        data: Some(cluster.v2_store_json().into_bytes()),
        metadata: SnapshotMetadata { conf_state: cluster.conf_state(), index: cluster.members.len() as u64, term: 1 },
    }
}

/// Writes `snapshot` to `snap_dir/<term>-<index>.snap` as `Snapshotter.SaveSnap` does (mode
/// 0666 less the umask, like etcd), fsyncs the file and the directory, and returns its path.
/// An existing file of that name is replaced, as etcd's `WriteAndSyncFile` truncates it.
pub fn write_snap_file(snap_dir: &Path, snapshot: &Snapshot) -> Result<PathBuf, SnapError> {
    let path = snap_dir.join(snap_file_name(snapshot.metadata.term, snapshot.metadata.index));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SnapError::Io { path: p, source }
    };
    let mut f =
        OpenOptions::new().write(true).create(true).truncate(true).mode(0o666).open(&path).map_err(io(&path))?;
    f.write_all(&encode_snap_file(snapshot)).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))?;
    crate::wal::sync_dir(snap_dir).map_err(io(snap_dir))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_crc() {
        let c = Cluster::from_initial_cluster("n1=http://127.0.0.1:24801", "tok1").unwrap();
        let s = restore_snapshot(&c);
        let b = encode_snap_file(&s);
        assert_eq!(b[0], 0x08);
        assert_eq!(decode_snap_file(&b).unwrap(), s);
        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x20;
        assert!(matches!(decode_snap_file(&bad), Err(SnapCorruption::CrcMismatch { .. })));
        assert!(matches!(decode_snap_file(&b[..b.len() - 3]), Err(SnapCorruption::BadEnvelope(_))));
        assert_eq!(decode_snap_file(&[]), Err(SnapCorruption::Empty));
        assert_eq!(decode_snap_file(&[0x08, 0x00]), Err(SnapCorruption::NoData));
    }

    #[test]
    fn name_is_term_then_index() {
        assert_eq!(snap_file_name(1, 3), "0000000000000001-0000000000000003.snap");
        assert_eq!(parse_snap_file_name("0000000000000002-00000000000000ff.snap"), Some((2, 255)));
        assert_eq!(parse_snap_file_name("0000000000000002-00000000000000ff.snap.db"), None);
        assert_eq!(parse_snap_file_name("2-ff.snap"), None);
    }

    #[test]
    fn write_list_read() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::from_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2", "t").unwrap();
        let s = restore_snapshot(&c);
        let p = write_snap_file(dir.path(), &s).unwrap();
        fs::write(dir.path().join("db"), b"x").unwrap();
        let mut older = s.clone();
        older.metadata.index = 1;
        write_snap_file(dir.path(), &older).unwrap();
        let list = list_snap_files(dir.path()).unwrap();
        assert_eq!(list.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(), vec![(1, 2), (1, 1)]);
        assert_eq!(list[0].2, p);
        assert_eq!(read_snap_file(&p).unwrap(), s);
        fs::write(&p, b"").unwrap();
        assert!(matches!(read_snap_file(&p), Err(SnapError::Corrupt { kind: SnapCorruption::Empty, .. })));
    }
}
