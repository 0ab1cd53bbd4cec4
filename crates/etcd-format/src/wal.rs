//! etcd's write-ahead log (`member/wal/*.wal`): the writer restore needs and a verifying reader.
//!
//! A WAL is a sequence of segment files `%016x-%016x.wal` (sequence, first raft index), each a
//! stream of frames: an 8-byte little-endian length field, a `walpb.Record`, and zero padding to
//! the next 8-byte boundary. Every record carries a crc32c chained over the data of all records
//! before it, across segments. A length field of 0 ends a segment's records (the rest of the
//! preallocated 64,000,000-byte file is zeros). See `docs/formats.md` §5 and etcd's
//! `wal/encoder.go`, `decoder.go`, `wal.go`.
//!
//! The reader is stricter than etcd's in a few places where etcd's own encoder is deterministic
//! (reserved length bits, padding that disagrees with the length, unknown protobuf fields, a CRC
//! record with data): such bytes never come from etcd, so they are reported as corruption.
//!
//! (The file passes 700 lines only with its unit tests, kept beside the code they pin.)

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::membership::Cluster;
use crate::raftpb::{
    ConfChange, ConfChangeType, Entry, EntryType, HardState, Message, Metadata, ProtoError, Record, WalSnapshot,
};

/// Size of a WAL segment: etcd preallocates 64,000,000 bytes (decimal, not 64 MiB).
pub const SEGMENT_SIZE_BYTES: u64 = 64 * 1000 * 1000;

/// etcd's decoder refuses records of this size or more (`maxWALEntrySizeLimit`, 10 MiB).
pub const MAX_RECORD_BYTES: u64 = 10 * 1024 * 1024;

/// How a WAL segment's file name ends; etcd ignores other files in the WAL dir.
pub const SEGMENT_SUFFIX: &str = ".wal";

/// The name of the first segment, the only one restore creates.
pub const FIRST_SEGMENT: &str = "0000000000000000-0000000000000000.wal";

/// `walpb.Record.type` values.
pub mod record_type {
    /// `etcdserverpb.Metadata`: NodeID and ClusterID; first data record of every segment.
    pub const METADATA: i64 = 1;
    /// A `raftpb.Entry`.
    pub const ENTRY: i64 = 2;
    /// A `raftpb.HardState`.
    pub const STATE: i64 = 3;
    /// No data; carries the running CRC at the start of a segment.
    pub const CRC: i64 = 4;
    /// A `walpb.Snapshot`: a raft snapshot at (index, term) exists.
    pub const SNAPSHOT: i64 = 5;
}

/// Sector size etcd's decoder uses to tell a torn write (zeroed sectors) from a bad CRC.
const SECTOR: u64 = 512;

/// What is wrong at a place in a WAL segment.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Corruption {
    /// A record's CRC is not the running crc32c.
    #[error("crc mismatch: record has {stored:#010x}, running crc is {computed:#010x}")]
    CrcMismatch {
        /// The CRC stored in the record.
        stored: u32,
        /// The CRC computed over the chain.
        computed: u32,
    },
    /// The file ends inside a frame (a torn or truncated record).
    #[error("torn record: frame needs {needed} bytes after the length field, file has {available}")]
    TornRecord {
        /// Bytes the length field announced (record plus padding).
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// The file ends inside a length field.
    #[error("torn length field: {available} of 8 bytes")]
    TornLengthField {
        /// Bytes left in the file.
        available: u64,
    },
    /// A frame whose record has a whole zeroed sector: etcd's sign of a write torn by a crash.
    #[error("torn write: the record contains a zeroed 512-byte sector")]
    TornWrite,
    /// A length field etcd would not write (too large, reserved bits, wrong padding).
    #[error("bad frame length field {len_field:#018x}: {reason}")]
    BadFrameLength {
        /// The raw length field.
        len_field: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The frame is not a valid `walpb.Record`.
    #[error("bad record: {0}")]
    BadRecord(ProtoError),
    /// The record's data is not a valid message for its type.
    #[error("bad data in record of type {record_type}: {source}")]
    BadPayload {
        /// The record type.
        record_type: i64,
        /// The decode error.
        source: ProtoError,
    },
    /// A record type etcd does not write.
    #[error("unknown record type {0}")]
    UnknownRecordType(i64),
    /// A CRC record with data, which etcd never writes.
    #[error("crc record carries data")]
    CrcRecordWithData,
    /// A record type at a place etcd never puts it: every segment starts with a CRC record then
    /// a metadata record, and neither type appears anywhere else.
    #[error("record of type {record_type} at position {position} of the segment")]
    MisplacedRecord {
        /// The record type.
        record_type: i64,
        /// The record's 0-based position in its segment.
        position: u64,
    },
    /// A ConfChange entry without data (etcd always puts a `raftpb.ConfChange` there).
    #[error("conf change entry {index} has no data")]
    EmptyConfChange {
        /// The entry's index.
        index: u64,
    },
    /// A metadata record that differs from an earlier one (etcd's `ErrMetadataConflict`).
    #[error("metadata conflict: {found:?} after {first:?}")]
    MetadataConflict {
        /// The metadata seen first.
        first: Metadata,
        /// The conflicting metadata.
        found: Metadata,
    },
    /// An entry whose type etcd does not know.
    #[error("entry {index} has unknown type {entry_type}")]
    UnknownEntryType {
        /// The entry's index.
        index: u64,
        /// The type value.
        entry_type: u64,
    },
    /// An entry index that skips ahead of the log (etcd's `ErrSliceOutOfRange`).
    #[error("entry index {index} leaves a gap: the next index can be at most {max_next}")]
    EntryGap {
        /// The entry's index.
        index: u64,
        /// The largest acceptable index.
        max_next: u64,
    },
    /// A segment file whose sequence number does not follow the previous one.
    #[error("segment sequence {found:#x} does not follow {expected:#x}")]
    SequenceGap {
        /// The sequence expected.
        expected: u64,
        /// The sequence in the file name.
        found: u64,
    },
}

/// Errors writing or reading a WAL.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O error on a file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `create_restore_wal` refuses to replace an existing WAL directory.
    #[error("WAL directory {0} already exists")]
    AlreadyExists(PathBuf),
    /// The WAL directory holds no `*.wal` segment.
    #[error("no WAL segment in {0}")]
    NoSegments(PathBuf),
    /// A `*.wal` file whose name is not `%016x-%016x.wal`.
    #[error("{0}: not a WAL segment name")]
    BadSegmentName(PathBuf),
    /// The WAL is corrupt at `offset` of `file`.
    #[error("{file} at offset {offset}: {kind}")]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Offset of the frame (its length field) in the file.
        offset: u64,
        /// What is wrong.
        kind: Corruption,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// The name of segment `seq` whose first raft index is `index`.
pub fn segment_name(seq: u64, index: u64) -> String {
    format!("{seq:016x}-{index:016x}{SEGMENT_SUFFIX}")
}

/// Parses `%016x-%016x.wal` into (sequence, first index), as etcd's `parseWALName` does.
pub fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 || !(a.bytes().chain(b.bytes()).all(|c| c.is_ascii_hexdigit())) {
        return None;
    }
    Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
}

/// Encodes frames with etcd's padding and CRC chaining, into memory.
#[derive(Debug, Clone)]
pub struct WalEncoder {
    buf: Vec<u8>,
    crc: u32,
}

impl WalEncoder {
    /// Starts a segment whose CRC chain continues from `prev_crc` (0 for the first segment),
    /// writing the CRC record every segment begins with.
    pub fn new_segment(prev_crc: u32) -> Self {
        let mut e = WalEncoder { buf: Vec::with_capacity(4096), crc: prev_crc };
        e.append(record_type::CRC, None);
        e
    }

    /// Appends one record: the running CRC absorbs `data`, the record carries the new value.
    pub fn append(&mut self, record_type: i64, data: Option<&[u8]>) {
        if let Some(d) = data {
            self.crc = crc32c::crc32c_append(self.crc, d);
        }
        let rec = Record { record_type, crc: self.crc, data: data.map(<[u8]>::to_vec) }.encode();
        let len = rec.len() as u64;
        let pad = (8 - len % 8) % 8;
        let len_field = if pad == 0 { len } else { len | ((0x80 | pad) << 56) };
        self.buf.extend_from_slice(&len_field.to_le_bytes());
        self.buf.extend_from_slice(&rec);
        self.buf.resize(self.buf.len() + pad as usize, 0);
    }

    /// Appends a message as the data of a record of `record_type`.
    pub fn append_message<M: Message>(&mut self, record_type: i64, m: &M) {
        self.append(record_type, Some(&m.encode()));
    }

    /// The running CRC (what the next segment's CRC record must carry).
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// The frames encoded so far (without the zero tail).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// The records `etcdutl snapshot restore` 3.5 writes for `self_id` in `cluster`, without the
/// zero tail: CRC, metadata, snapshot{0,0}, one ConfChange(AddNode) entry per member (ascending
/// ID, term 1, index 1..N, member JSON as context), HardState{1, lowest ID, N}, and
/// snapshot{N, 1, ConfState{voters}}.
pub fn restore_wal_bytes(cluster: &Cluster, self_id: u64) -> Vec<u8> {
    let mut e = WalEncoder::new_segment(0);
    e.append_message(record_type::METADATA, &Metadata { node_id: self_id, cluster_id: cluster.id() });
    e.append_message(record_type::SNAPSHOT, &WalSnapshot::default());
    for (i, m) in cluster.members.iter().enumerate() {
        let cc = ConfChange {
            id: 0,
            change_type: ConfChangeType::AddNode,
            node_id: m.id,
            context: Some(m.to_json().into_bytes()),
        };
        let entry = Entry { entry_type: EntryType::ConfChange, term: 1, index: i as u64 + 1, data: Some(cc.encode()) };
        e.append_message(record_type::ENTRY, &entry);
    }
    let n = cluster.members.len() as u64;
    let vote = cluster.members.first().map_or(0, |m| m.id);
    e.append_message(record_type::STATE, &HardState { term: 1, vote, commit: n });
    e.append_message(record_type::SNAPSHOT, &WalSnapshot { index: n, term: 1, conf_state: Some(cluster.conf_state()) });
    e.buf
}

/// Creates `dir` and missing parents with mode 0700 (etcd's `PrivateDirMode`); an existing
/// directory is left as it is.
pub(crate) fn create_dir_0700(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// fsyncs a directory so a file created or renamed in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a new member's WAL in `wal_dir` as restore does: the records of
/// [`restore_wal_bytes`] in `0000000000000000-0000000000000000.wal`, zero-filled to
/// 64,000,000 bytes, file mode 0600, built in `<wal_dir>.tmp` (dir mode 0700) and renamed into
/// place, with the file and both directories fsynced. Returns the segment's final path.
///
/// The tail is preallocated with `fallocate(2)` as etcd's `fileutil.Preallocate` does, so the
/// space is really reserved (a full disk fails here, not at etcd's first write) without writing
/// 64 MB of zeros; where the filesystem cannot fallocate, the file is extended instead, as etcd
/// falls back to.
pub fn create_restore_wal(wal_dir: &Path, cluster: &Cluster, self_id: u64) -> Result<PathBuf, WalError> {
    if wal_dir.exists() {
        return Err(WalError::AlreadyExists(wal_dir.to_path_buf()));
    }
    let mut tmp_name = wal_dir.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    if tmp.exists() {
        // A leftover from an interrupted attempt, as etcd's wal.Create also discards it.
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    create_dir_0700(&tmp).map_err(io_err(&tmp))?;
    let tmp_file = tmp.join(FIRST_SEGMENT);
    {
        let mut f =
            OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp_file).map_err(io_err(&tmp_file))?;
        let records = restore_wal_bytes(cluster, self_id);
        f.write_all(&records).map_err(io_err(&tmp_file))?;
        preallocate(&f, SEGMENT_SIZE_BYTES).map_err(io_err(&tmp_file))?;
        f.sync_all().map_err(io_err(&tmp_file))?;
    }
    sync_dir(&tmp).map_err(io_err(&tmp))?;
    fs::rename(&tmp, wal_dir).map_err(io_err(wal_dir))?;
    if let Some(parent) = wal_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).map_err(io_err(parent))?;
    }
    Ok(wal_dir.join(FIRST_SEGMENT))
}

/// Reserves `len` bytes for `f` (zeros past the written data), like etcd's
/// `fileutil.Preallocate(f, len, true)`.
fn preallocate(f: &File, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => f.set_len(len),
        Err(e) => Err(e.into()),
    }
}

/// One segment as the reader saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The segment file.
    pub file: PathBuf,
    /// Sequence number from the name.
    pub seq: u64,
    /// First raft index from the name.
    pub first_index: u64,
    /// Records decoded (all types).
    pub records: u64,
    /// Offset just past the last record: where the zero tail (or the file end) begins.
    pub end_offset: u64,
}

/// What a whole WAL holds, after every record's CRC was verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalContents {
    /// The segments in order.
    pub segments: Vec<SegmentSummary>,
    /// The metadata record (NodeID, ClusterID); every segment must agree.
    pub metadata: Option<Metadata>,
    /// The last HardState record.
    pub hard_state: Option<HardState>,
    /// Every snapshot record in order.
    pub snapshots: Vec<WalSnapshot>,
    /// Number of entry records (overwritten entries included).
    pub entries: u64,
    /// Index of the first entry record.
    pub first_index: Option<u64>,
    /// Index and term of the last entry record.
    pub last_entry: Option<(u64, u64)>,
    /// The running CRC after the last record.
    pub final_crc: u32,
}

/// Reads and verifies every segment of the WAL in `wal_dir`, in name order.
///
/// Files not ending in `.wal` are ignored (etcd leaves `.tmp` files and locks there);
/// `*.wal` files with malformed names, or sequence numbers that do not follow each other, are
/// errors. See [`read_wal_segments`] for what is verified.
pub fn read_wal_dir(wal_dir: &Path) -> Result<WalContents, WalError> {
    let mut names = Vec::new();
    for ent in fs::read_dir(wal_dir).map_err(io_err(wal_dir))? {
        let ent = ent.map_err(io_err(wal_dir))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.ends_with(SEGMENT_SUFFIX) {
            continue;
        }
        if parse_segment_name(name).is_none() {
            return Err(WalError::BadSegmentName(ent.path()));
        }
        names.push(name.to_string());
    }
    if names.is_empty() {
        return Err(WalError::NoSegments(wal_dir.to_path_buf()));
    }
    names.sort();
    let mut files = Vec::with_capacity(names.len());
    for n in names {
        let path = wal_dir.join(n);
        let f = File::open(&path).map_err(io_err(&path))?;
        files.push((path, BufReader::with_capacity(1 << 16, f)));
    }
    read_wal_segments(files)
}

/// Reads and verifies segments given as (file name, reader), in order.
///
/// Verified: frame lengths and padding, the crc32c chain across all records and segments, that
/// every record decodes strictly for its type, that metadata never changes, that entry indexes
/// have no gaps (an entry may go back, as raft overwrites, but not beyond the next index or the
/// latest snapshot's next index), and that sequence numbers in the names are consecutive.
/// Each segment's records end at a zero length field or at the end of the data. Never panics;
/// the first problem is returned with its file and offset.
pub fn read_wal_segments<R: Read>(segments: impl IntoIterator<Item = (PathBuf, R)>) -> Result<WalContents, WalError> {
    let mut st = ReadState::default();
    let mut prev_seq: Option<u64> = None;
    for (path, reader) in segments {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some((seq, first_index)) = parse_segment_name(name) else {
            return Err(WalError::BadSegmentName(path));
        };
        if let Some(p) = prev_seq {
            let expected = p.wrapping_add(1);
            if seq != expected {
                return Err(WalError::Corrupt {
                    file: path,
                    offset: 0,
                    kind: Corruption::SequenceGap { expected, found: seq },
                });
            }
        }
        prev_seq = Some(seq);
        let (records, end_offset) = match read_segment(&mut st, reader) {
            Ok(v) => v,
            Err(SegErr::Io(source)) => return Err(WalError::Io { path, source }),
            Err(SegErr::Corrupt(offset, kind)) => {
                return Err(WalError::Corrupt { file: path, offset, kind });
            }
        };
        st.out.segments.push(SegmentSummary { file: path, seq, first_index, records, end_offset });
    }
    if st.out.segments.is_empty() {
        return Err(WalError::NoSegments(PathBuf::new()));
    }
    st.out.final_crc = st.crc;
    Ok(st.out)
}

#[derive(Debug, Default)]
struct ReadState {
    crc: u32,
    out: WalContents,
    // The largest index the next entry may have.
    max_next: Option<u64>,
}

enum SegErr {
    Io(io::Error),
    Corrupt(u64, Corruption),
}

/// Reads up to `buf.len()` bytes, returning how many were available before end of data.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn read_segment<R: Read>(st: &mut ReadState, mut r: R) -> Result<(u64, u64), SegErr> {
    let mut off: u64 = 0;
    let mut records = 0u64;
    let mut frame = Vec::new();
    loop {
        let mut lf = [0u8; 8];
        let got = read_full(&mut r, &mut lf).map_err(SegErr::Io)?;
        if got == 0 {
            return Ok((records, off));
        }
        if got < 8 {
            return Err(SegErr::Corrupt(off, Corruption::TornLengthField { available: got as u64 }));
        }
        let len_field = u64::from_le_bytes(lf);
        if len_field == 0 {
            return Ok((records, off));
        }
        let (rec_len, pad) = frame_size(len_field).map_err(|k| SegErr::Corrupt(off, k))?;
        let needed = rec_len + pad;
        frame.resize(needed as usize, 0);
        let got = read_full(&mut r, &mut frame).map_err(SegErr::Io)? as u64;
        if got < needed {
            return Err(SegErr::Corrupt(off, Corruption::TornRecord { needed, available: got }));
        }
        let rec_bytes = &frame[..rec_len as usize];
        if let Err(kind) = apply_record(st, rec_bytes, records) {
            // etcd reports a frame with a zeroed sector as a torn write, not as a bad record.
            let kind = if is_torn_write(off, &lf, rec_bytes) { Corruption::TornWrite } else { kind };
            return Err(SegErr::Corrupt(off, kind));
        }
        records += 1;
        off += 8 + needed;
    }
}

/// Splits a nonzero length field into (record length, padding), refusing what etcd never writes.
fn frame_size(len_field: u64) -> Result<(u64, u64), Corruption> {
    let bad = |reason| Corruption::BadFrameLength { len_field, reason };
    let rec_len = len_field & 0x00ff_ffff_ffff_ffff;
    let top = (len_field >> 56) as u8;
    let pad = if top & 0x80 != 0 {
        if top & 0x78 != 0 {
            return Err(bad("reserved padding bits set"));
        }
        u64::from(top & 0x07)
    } else if top != 0 {
        return Err(bad("reserved bits set without the padding flag"));
    } else {
        0
    };
    if rec_len >= MAX_RECORD_BYTES.saturating_sub(pad) {
        return Err(bad("record exceeds the 10 MiB limit"));
    }
    if pad != (8 - rec_len % 8) % 8 {
        return Err(bad("padding does not align the frame to 8 bytes"));
    }
    Ok((rec_len, pad))
}

fn is_torn_write(frame_off: u64, len_field: &[u8; 8], rec: &[u8]) -> bool {
    // Look at the frame as laid out in the file; any 512-byte-aligned sector it covers that is
    // all zeros (whole or the part inside the frame) means the write never reached the disk.
    let start = frame_off;
    let total = 8 + rec.len() as u64;
    let byte_at = |i: u64| -> u8 { if i < 8 { len_field[i as usize] } else { rec[(i - 8) as usize] } };
    let mut s = start - start % SECTOR;
    while s < start + total {
        let lo = s.max(start);
        let hi = (s + SECTOR).min(start + total);
        if (lo..hi).all(|i| byte_at(i - start) == 0) {
            return true;
        }
        s += SECTOR;
    }
    false
}

fn payload<M: Message>(record_type: i64, data: &[u8]) -> Result<M, Corruption> {
    M::decode(data).map_err(|source| Corruption::BadPayload { record_type, source })
}

fn apply_record(st: &mut ReadState, rec_bytes: &[u8], position: u64) -> Result<(), Corruption> {
    let rec = Record::decode(rec_bytes).map_err(Corruption::BadRecord)?;
    let expected_here = match position {
        0 => Some(record_type::CRC),
        1 => Some(record_type::METADATA),
        _ => None,
    };
    let fixed_type = rec.record_type == record_type::CRC || rec.record_type == record_type::METADATA;
    if expected_here.map_or(fixed_type, |t| t != rec.record_type) {
        return Err(Corruption::MisplacedRecord { record_type: rec.record_type, position });
    }
    if rec.record_type == record_type::CRC {
        if rec.data.is_some() {
            return Err(Corruption::CrcRecordWithData);
        }
        if st.crc != 0 && rec.crc != st.crc {
            return Err(Corruption::CrcMismatch { stored: rec.crc, computed: st.crc });
        }
        st.crc = rec.crc;
        return Ok(());
    }
    let data = rec.data.as_deref().unwrap_or_default();
    let computed = crc32c::crc32c_append(st.crc, data);
    if rec.crc != computed {
        return Err(Corruption::CrcMismatch { stored: rec.crc, computed });
    }
    st.crc = computed;
    let t = rec.record_type;
    match t {
        record_type::METADATA => {
            let m: Metadata = payload(t, data)?;
            match st.out.metadata {
                Some(first) if first != m => {
                    return Err(Corruption::MetadataConflict { first, found: m });
                }
                _ => st.out.metadata = Some(m),
            }
        }
        record_type::ENTRY => {
            let e: Entry = payload(t, data)?;
            match e.entry_type {
                EntryType::ConfChange => {
                    let Some(cc) = e.data.as_deref() else {
                        return Err(Corruption::EmptyConfChange { index: e.index });
                    };
                    let _: ConfChange = payload(t, cc)?;
                }
                EntryType::Normal | EntryType::ConfChangeV2 => {}
                EntryType::Unknown(v) => {
                    return Err(Corruption::UnknownEntryType { index: e.index, entry_type: v });
                }
            }
            if let Some(max_next) = st.max_next
                && e.index > max_next
            {
                return Err(Corruption::EntryGap { index: e.index, max_next });
            }
            st.max_next = Some(e.index.saturating_add(1));
            st.out.entries += 1;
            st.out.first_index.get_or_insert(e.index);
            st.out.last_entry = Some((e.index, e.term));
        }
        record_type::STATE => st.out.hard_state = Some(payload(t, data)?),
        record_type::SNAPSHOT => {
            let s: WalSnapshot = payload(t, data)?;
            let next = s.index.saturating_add(1);
            st.max_next = Some(st.max_next.map_or(next, |m| m.max(next)));
            st.out.snapshots.push(s);
        }
        other => return Err(Corruption::UnknownRecordType(other)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn one_member() -> Cluster {
        Cluster::from_initial_cluster("n1=http://127.0.0.1:24801", "tok1").unwrap()
    }

    fn read_bytes(b: &[u8]) -> Result<WalContents, WalError> {
        read_wal_segments([(PathBuf::from(FIRST_SEGMENT), b)])
    }

    #[test]
    fn crc_record_and_framing_match_the_spec() {
        let e = WalEncoder::new_segment(0);
        assert_eq!(hex(e.bytes()), "04000000000000840804100000000000");
    }

    #[test]
    fn restore_records_read_back() {
        let c = one_member();
        let id = c.members[0].id;
        let b = restore_wal_bytes(&c, id);
        let w = read_bytes(&b).unwrap();
        assert_eq!(w.metadata, Some(Metadata { node_id: id, cluster_id: c.id() }));
        assert_eq!(w.hard_state, Some(HardState { term: 1, vote: id, commit: 1 }));
        assert_eq!(w.entries, 1);
        assert_eq!(w.snapshots.len(), 2);
        assert_eq!(w.snapshots[1].conf_state.as_ref().unwrap().voters, vec![id]);
        assert_eq!(w.segments[0].end_offset, b.len() as u64);
        // A zero tail ends the records.
        let mut tailed = b.clone();
        tailed.resize(b.len() + 4096, 0);
        assert_eq!(read_bytes(&tailed).unwrap(), w);
    }

    #[test]
    fn corrupted_data_byte_is_a_crc_mismatch_at_its_frame() {
        let c = one_member();
        let mut b = restore_wal_bytes(&c, c.members[0].id);
        // Metadata frame starts at 16; flip a byte of its data.
        b[16 + 8 + 12] ^= 0x01;
        match read_bytes(&b) {
            Err(WalError::Corrupt { offset: 16, kind: Corruption::CrcMismatch { .. }, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_record_is_torn() {
        let c = one_member();
        let b = restore_wal_bytes(&c, c.members[0].id);
        match read_bytes(&b[..70]) {
            Err(WalError::Corrupt { offset: 56, kind: Corruption::TornRecord { .. }, .. }) => {}
            other => panic!("{other:?}"),
        }
        match read_bytes(&b[..59]) {
            Err(WalError::Corrupt { offset: 56, kind: Corruption::TornLengthField { available: 3 }, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_length_fields() {
        assert!(frame_size(0x0100_0000_0000_0008).is_err());
        assert!(frame_size(0xF900_0000_0000_0007).is_err());
        assert!(frame_size(0x8100_0000_0000_0008).is_err());
        assert!(frame_size(10 * 1024 * 1024).is_err());
        assert_eq!(frame_size(0x8100_0000_0000_0007).unwrap(), (7, 1));
        assert_eq!(frame_size(16).unwrap(), (16, 0));
    }

    #[test]
    fn segment_chain_and_names() {
        let c = one_member();
        let first = restore_wal_bytes(&c, c.members[0].id);
        let crc = read_bytes(&first).unwrap().final_crc;
        let mut second = WalEncoder::new_segment(crc);
        second.append_message(record_type::METADATA, &Metadata { node_id: c.members[0].id, cluster_id: c.id() });
        second.append_message(
            record_type::ENTRY,
            &Entry { entry_type: EntryType::Normal, term: 2, index: 2, data: None },
        );
        let segs = |n2: &str, b2: Vec<u8>| {
            read_wal_segments(
                [(PathBuf::from(FIRST_SEGMENT), first.clone()), (PathBuf::from(n2), b2)]
                    .map(|(p, b)| (p, io::Cursor::new(b))),
            )
        };
        let w = segs("0000000000000001-0000000000000002.wal", second.bytes().to_vec()).unwrap();
        assert_eq!(w.entries, 2);
        assert_eq!(w.last_entry, Some((2, 2)));
        assert!(matches!(
            segs("0000000000000002-0000000000000002.wal", second.bytes().to_vec()),
            Err(WalError::Corrupt { kind: Corruption::SequenceGap { .. }, .. })
        ));
        // A second segment that does not continue the chain.
        let mut other = WalEncoder::new_segment(crc);
        other.append_message(record_type::METADATA, &Metadata { node_id: 7, cluster_id: c.id() });
        assert!(matches!(
            segs("0000000000000001-0000000000000002.wal", other.bytes().to_vec()),
            Err(WalError::Corrupt { offset: 16, kind: Corruption::MetadataConflict { .. }, .. })
        ));
        let mut wrong = WalEncoder::new_segment(crc ^ 1);
        wrong.append_message(record_type::METADATA, &Metadata::default());
        assert!(matches!(
            segs("0000000000000001-0000000000000002.wal", wrong.bytes().to_vec()),
            Err(WalError::Corrupt { offset: 0, kind: Corruption::CrcMismatch { .. }, .. })
        ));
        assert_eq!(parse_segment_name("0000000000000001-00000000000000ff.wal"), Some((1, 255)));
        assert_eq!(parse_segment_name("1-2.wal"), None);
    }

    #[test]
    fn entry_gaps_and_conflicts() {
        let mut e = WalEncoder::new_segment(0);
        e.append_message(record_type::METADATA, &Metadata { node_id: 1, cluster_id: 2 });
        e.append_message(record_type::ENTRY, &Entry { entry_type: EntryType::Normal, term: 1, index: 5, data: None });
        e.append_message(record_type::ENTRY, &Entry { entry_type: EntryType::Normal, term: 2, index: 5, data: None });
        assert_eq!(read_bytes(e.bytes()).unwrap().entries, 2);
        e.append_message(record_type::ENTRY, &Entry { entry_type: EntryType::Normal, term: 2, index: 7, data: None });
        assert!(matches!(
            read_bytes(e.bytes()),
            Err(WalError::Corrupt { kind: Corruption::EntryGap { index: 7, max_next: 6 }, .. })
        ));
        let mut e = WalEncoder::new_segment(0);
        e.append_message(record_type::METADATA, &Metadata { node_id: 1, cluster_id: 2 });
        e.append_message(record_type::METADATA, &Metadata { node_id: 1, cluster_id: 3 });
        assert!(matches!(
            read_bytes(e.bytes()),
            Err(WalError::Corrupt { kind: Corruption::MisplacedRecord { position: 2, .. }, .. })
        ));
        let mut e = WalEncoder::new_segment(0);
        e.append_message(record_type::METADATA, &Metadata { node_id: 1, cluster_id: 2 });
        e.append(9, Some(b"x"));
        assert!(matches!(read_bytes(e.bytes()), Err(WalError::Corrupt { kind: Corruption::UnknownRecordType(9), .. })));
        let mut e = WalEncoder::new_segment(0);
        e.append_message(record_type::METADATA, &Metadata { node_id: 1, cluster_id: 2 });
        e.append_message(
            record_type::ENTRY,
            &Entry { entry_type: EntryType::ConfChange, term: 1, index: 1, data: None },
        );
        assert!(matches!(
            read_bytes(e.bytes()),
            Err(WalError::Corrupt { kind: Corruption::EmptyConfChange { index: 1 }, .. })
        ));
    }

    #[test]
    fn zeroed_sector_is_a_torn_write() {
        let mut e = WalEncoder::new_segment(0);
        e.append_message(record_type::METADATA, &Metadata { node_id: 1, cluster_id: 2 });
        e.append(
            record_type::ENTRY,
            Some(&Entry { entry_type: EntryType::Normal, term: 1, index: 1, data: Some(vec![7; 2000]) }.encode()),
        );
        let mut b = e.bytes().to_vec();
        for x in &mut b[512..1024] {
            *x = 0;
        }
        assert!(matches!(read_bytes(&b), Err(WalError::Corrupt { offset: 40, kind: Corruption::TornWrite, .. })));
    }
}
