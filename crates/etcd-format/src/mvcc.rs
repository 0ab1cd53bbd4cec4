//! etcd's MVCC schema in the `key` bucket: revision keys and `mvccpb.KeyValue` values.
//!
//! Every change etcd applies is stored under its revision: `BE64(main) '_' BE64(sub)` (17 bytes)
//! for a put, with a trailing `'t'` (18 bytes) for a delete (a tombstone). The value is the
//! protobuf `mvccpb.KeyValue`, which etcd's HashKV covers byte for byte, so [`KeyValue::encode`]
//! reproduces gogo's output exactly: fields in ascending number order, proto3 zero values
//! omitted. This module also names the ten top-level buckets and holds the error type that the
//! schema modules ([`crate::lease`], [`crate::meta`], [`crate::hashkv`], [`crate::status`])
//! share.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::ControlFlow;

/// The bucket of MVCC revisions: revision key → `mvccpb.KeyValue`.
pub const KEY_BUCKET: &[u8] = b"key";
/// The bucket of etcd's own bookkeeping (consistent index, term, compaction marks).
pub const META_BUCKET: &[u8] = b"meta";
/// The bucket of leases: `BE64(id)` → `leasepb.Lease`.
pub const LEASE_BUCKET: &[u8] = b"lease";
/// The bucket of auth flags (`authEnabled`, `authRevision`).
pub const AUTH_BUCKET: &[u8] = b"auth";
/// The bucket of auth users: name → `authpb.User`.
pub const AUTH_USERS_BUCKET: &[u8] = b"authUsers";
/// The bucket of auth roles: name → `authpb.Role`.
pub const AUTH_ROLES_BUCKET: &[u8] = b"authRoles";
/// The bucket of raised alarms: `etcdserverpb.AlarmMember` → empty.
pub const ALARM_BUCKET: &[u8] = b"alarm";
/// The bucket of cluster-wide settings (`clusterVersion`, `downgrade`).
pub const CLUSTER_BUCKET: &[u8] = b"cluster";
/// The bucket of members: member ID in lowercase hex → member JSON.
pub const MEMBERS_BUCKET: &[u8] = b"members";
/// The bucket of removed members: member ID in lowercase hex → `removed`.
pub const MEMBERS_REMOVED_BUCKET: &[u8] = b"members_removed";

/// All ten top-level buckets a running etcd 3.4/3.5 creates, in bbolt's cursor (bytewise) order.
pub const ALL_BUCKETS: [&[u8]; 10] = [
    ALARM_BUCKET,
    AUTH_BUCKET,
    AUTH_ROLES_BUCKET,
    AUTH_USERS_BUCKET,
    CLUSTER_BUCKET,
    KEY_BUCKET,
    LEASE_BUCKET,
    MEMBERS_BUCKET,
    MEMBERS_REMOVED_BUCKET,
    META_BUCKET,
];

/// Length of a put's revision key (`markBytePosition + 1` in etcd).
pub const REV_BYTES_LEN: usize = 17;
/// Length of a tombstone's revision key (`markedRevBytesLen` in etcd).
pub const MARKED_REV_BYTES_LEN: usize = 18;
const REV_SEPARATOR: u8 = b'_';
const TOMBSTONE_MARK: u8 = b't';

/// Errors of the backend schema modules (`mvcc`, `lease`, `meta`, `hashkv`, `status`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bbolt file itself could not be read (its own corruption carries page and offset).
    #[error(transparent)]
    Bolt(#[from] bbolt::Error),
    /// An entry of an etcd bucket does not have the shape etcd writes.
    #[error("corrupt entry in bucket {bucket:?} at key {key}: {reason}")]
    Corrupt {
        /// The bucket holding the entry.
        bucket: String,
        /// The entry's key, hex-encoded (revision keys are binary).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `snapshot status` refuses a file that bbolt's own consistency check rejects.
    #[error("bbolt integrity check failed with {count} finding(s): {first}")]
    CheckFailed {
        /// How many findings the checker reported.
        count: u64,
        /// The first finding, as a hint of what is wrong.
        first: String,
    },
    /// The requested revision was compacted away, as etcd's `ErrCompacted`.
    #[error("required revision {requested} has been compacted (compact revision {compact})")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The compaction revision of the db.
        compact: i64,
    },
    /// The requested revision is newer than the db's current revision, as etcd's `ErrFutureRev`.
    #[error("required revision {requested} is a future revision (current revision {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: i64,
        /// The db's current revision.
        current: i64,
    },
    /// A hash "as compacted at" a revision was asked of a db compacted later than that: the db no
    /// longer holds the revisions such a hash covers.
    #[error(
        "the db was compacted at revision {compact}, after revision {requested}: it no longer holds \
         the history a member compacted at {requested} still hashes"
    )]
    CompactedLater {
        /// The compaction revision asked for.
        requested: i64,
        /// The db's own compaction revision.
        compact: i64,
    },
}

impl Error {
    /// A corruption finding for the entry `key` of `bucket`.
    pub(crate) fn corrupt(bucket: &[u8], key: &[u8], reason: impl fmt::Display) -> Error {
        Error::Corrupt {
            bucket: String::from_utf8_lossy(bucket).into_owned(),
            key: hex(key),
            reason: reason.to_string(),
        }
    }
}

/// Lowercase hex of `bytes`, for error messages about binary keys.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An MVCC revision: `main` counts write transactions, `sub` the changes inside one.
///
/// The derived order is (main, sub), which is also the byte order of the encoded keys because
/// both halves are big-endian and never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The main revision: one per write transaction, starting at 2 in a fresh etcd.
    pub main: i64,
    /// The position of the change inside its transaction, 0-based.
    pub sub: i64,
}

impl Revision {
    /// A revision from its two halves.
    pub const fn new(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    /// The 17 bytes etcd stores (`revToBytes`), also used for the compaction marks in `meta`.
    pub fn to_bytes(self) -> [u8; REV_BYTES_LEN] {
        let mut out = [0u8; REV_BYTES_LEN];
        out[..8].copy_from_slice(&self.main.to_be_bytes());
        out[8] = REV_SEPARATOR;
        out[9..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    /// Decodes exactly 17 revision bytes; anything else is a description of the defect.
    ///
    /// etcd itself only reads the two halves, but a wrong length or separator means the entry
    /// was not written by etcd, and a negative half would break the byte order, so all are
    /// refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<Revision, String> {
        if bytes.len() != REV_BYTES_LEN {
            return Err(format!("a revision is {REV_BYTES_LEN} bytes, found {}", bytes.len()));
        }
        Revision::from_prefix(bytes)
    }

    /// Decodes the first 17 bytes, which the caller has checked exist.
    fn from_prefix(bytes: &[u8]) -> Result<Revision, String> {
        let (main, rest) = bytes.split_first_chunk::<8>().ok_or("revision shorter than 8 bytes")?;
        let (&sep, rest) = rest.split_first().ok_or("revision without separator")?;
        let (sub, _) = rest.split_first_chunk::<8>().ok_or("revision shorter than 17 bytes")?;
        if sep != REV_SEPARATOR {
            return Err(format!("revision separator is 0x{sep:02x}, not '_'"));
        }
        let rev = Revision { main: i64::from_be_bytes(*main), sub: i64::from_be_bytes(*sub) };
        if rev.main < 0 || rev.sub < 0 {
            return Err(format!("negative revision ({}, {})", rev.main, rev.sub));
        }
        Ok(rev)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.main, self.sub)
    }
}

/// A key of the `key` bucket: a revision, and whether the change it records is a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevKey {
    /// The revision of the change.
    pub rev: Revision,
    /// True for a delete (the 18-byte key ending in `'t'`).
    pub tombstone: bool,
}

impl RevKey {
    /// The key of a put at `rev`.
    pub const fn put(rev: Revision) -> RevKey {
        RevKey { rev, tombstone: false }
    }

    /// The key of a delete at `rev`.
    pub const fn tombstone(rev: Revision) -> RevKey {
        RevKey { rev, tombstone: true }
    }

    /// The bucket key: 17 bytes for a put, 18 for a tombstone.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MARKED_REV_BYTES_LEN);
        out.extend_from_slice(&self.rev.to_bytes());
        if self.tombstone {
            out.push(TOMBSTONE_MARK);
        }
        out
    }

    /// Decodes a bucket key; any length other than 17 or 18, or a bad marker, is a defect.
    pub fn decode(bytes: &[u8]) -> Result<RevKey, String> {
        match bytes.len() {
            REV_BYTES_LEN => Ok(RevKey::put(Revision::from_prefix(bytes)?)),
            MARKED_REV_BYTES_LEN => {
                let mark = bytes[REV_BYTES_LEN];
                if mark != TOMBSTONE_MARK {
                    return Err(format!("revision key marker is 0x{mark:02x}, not 't'"));
                }
                Ok(RevKey::tombstone(Revision::from_prefix(bytes)?))
            }
            n => Err(format!("a revision key is 17 or 18 bytes, found {n}")),
        }
    }
}

/// An `mvccpb.KeyValue` borrowing its bytes from the db, for scans that must not copy values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyValueRef<'a> {
    /// The user key.
    pub key: &'a [u8],
    /// The main revision of the put that created this generation of the key.
    pub create_revision: i64,
    /// The main revision of this change.
    pub mod_revision: i64,
    /// 1 for a create, then +1 per put in the generation.
    pub version: i64,
    /// The user value.
    pub value: &'a [u8],
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

impl<'a> KeyValueRef<'a> {
    /// Decodes a protobuf `KeyValue` as proto3 does: missing fields are zero, the last
    /// occurrence of a field wins, unknown fields are skipped.
    ///
    /// An empty input is a valid, all-zero KeyValue (etcd's bump-revision key has one).
    pub fn decode(buf: &'a [u8]) -> Result<KeyValueRef<'a>, String> {
        let mut kv = KeyValueRef::default();
        let mut r = ProtoReader::new(buf);
        while let Some((field, value)) = r.next_field()? {
            match (field, value) {
                (1, Field::Bytes(b)) => kv.key = b,
                (2, Field::Varint(v)) => kv.create_revision = v as i64,
                (3, Field::Varint(v)) => kv.mod_revision = v as i64,
                (4, Field::Varint(v)) => kv.version = v as i64,
                (5, Field::Bytes(b)) => kv.value = b,
                (6, Field::Varint(v)) => kv.lease = v as i64,
                (1..=6, other) => {
                    return Err(format!("KeyValue field {field} has the wrong wire type ({})", other.wire_name()));
                }
                _ => {}
            }
        }
        Ok(kv)
    }

    /// Appends gogo's exact encoding: fields 1..6 in order, zero values and empty bytes omitted.
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        put_bytes_field(out, 1, self.key);
        put_varint_field(out, 2, self.create_revision as u64);
        put_varint_field(out, 3, self.mod_revision as u64);
        put_varint_field(out, 4, self.version as u64);
        put_bytes_field(out, 5, self.value);
        put_varint_field(out, 6, self.lease as u64);
    }

    /// An owned copy.
    pub fn to_owned(&self) -> KeyValue {
        KeyValue {
            key: self.key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }
}

/// An `mvccpb.KeyValue`: the value of every entry of the `key` bucket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The user key.
    pub key: Vec<u8>,
    /// The main revision of the put that created this generation of the key.
    pub create_revision: i64,
    /// The main revision of this change.
    pub mod_revision: i64,
    /// 1 for a create, then +1 per put in the generation.
    pub version: i64,
    /// The user value.
    pub value: Vec<u8>,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

impl KeyValue {
    /// The value etcd stores under a tombstone: the key alone (`0a len key`).
    ///
    /// etcd fills `mod_revision` into the watch event only after writing the db, so the stored
    /// tombstone has no other field; writing one would change HashKV.
    pub fn tombstone(key: Vec<u8>) -> KeyValue {
        KeyValue { key, ..KeyValue::default() }
    }

    /// A borrowing view of this value.
    pub fn as_ref(&self) -> KeyValueRef<'_> {
        KeyValueRef {
            key: &self.key,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: &self.value,
            lease: self.lease,
        }
    }

    /// gogo's exact protobuf bytes (see [`KeyValueRef::encode_to`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.key.len() + self.value.len() + 40);
        self.as_ref().encode_to(&mut out);
        out
    }

    /// Decodes a protobuf `KeyValue` (see [`KeyValueRef::decode`]).
    pub fn decode(buf: &[u8]) -> Result<KeyValue, String> {
        KeyValueRef::decode(buf).map(|kv| kv.to_owned())
    }
}

/// One entry of the `key` bucket: the raw bytes (which HashKV covers) and their decoding.
#[derive(Debug, Clone, Copy)]
pub struct RevisionEntry<'a> {
    /// The bucket key as stored.
    pub raw_key: &'a [u8],
    /// The bucket value as stored.
    pub raw_value: &'a [u8],
    /// The decoded bucket key.
    pub rev_key: RevKey,
    /// The decoded value.
    pub kv: KeyValueRef<'a>,
}

/// Visits the `key` bucket in revision order, decoding each entry, until `f` breaks.
///
/// A missing `key` bucket yields nothing: etcd creates it on boot and treats it as empty. An
/// entry that does not decode is [`Error::Corrupt`]; an error from `f` stops the scan.
pub fn for_each_revision<F>(db: &bbolt::Db, mut f: F) -> Result<(), Error>
where
    F: FnMut(RevisionEntry<'_>) -> Result<ControlFlow<()>, Error>,
{
    let Some(bucket) = db.bucket(KEY_BUCKET)? else {
        return Ok(());
    };
    for entry in bucket.iter() {
        match entry? {
            bbolt::Entry::Value { key, value } => {
                let rev_key = RevKey::decode(key).map_err(|why| Error::corrupt(KEY_BUCKET, key, why))?;
                let kv = KeyValueRef::decode(value).map_err(|why| Error::corrupt(KEY_BUCKET, key, why))?;
                if f(RevisionEntry { raw_key: key, raw_value: value, rev_key, kv })?.is_break() {
                    break;
                }
            }
            bbolt::Entry::Bucket { name } => {
                return Err(Error::corrupt(KEY_BUCKET, name, "a nested bucket inside the key bucket"));
            }
        }
    }
    Ok(())
}

/// The live keys at revision `rev`, as `etcdctl get "" --prefix --rev REV` returns them.
///
/// For each user key, the newest change with `main ≤ rev` decides: a put is returned, a
/// tombstone hides the key. The result is only complete for `rev` above the compaction
/// revision, as in etcd. Memory grows with the number of live keys and their values.
pub fn keys_at(db: &bbolt::Db, rev: i64) -> Result<BTreeMap<Vec<u8>, KeyValue>, Error> {
    let mut live: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
    for_each_revision(db, |e| {
        if e.rev_key.rev.main > rev {
            return Ok(ControlFlow::Break(()));
        }
        if e.rev_key.tombstone {
            live.remove(e.kv.key);
        } else {
            live.insert(e.kv.key.to_vec(), e.kv.to_owned());
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(live)
}

// ---- a minimal protobuf wire codec, shared with `lease` ----

/// One decoded protobuf field value.
pub(crate) enum Field<'a> {
    Varint(u64),
    /// A fixed64 field; no etcd message we read has one, so its value is skipped.
    Fixed64,
    Bytes(&'a [u8]),
    /// A fixed32 field, skipped likewise.
    Fixed32,
}

impl Field<'_> {
    pub(crate) fn wire_name(&self) -> &'static str {
        match self {
            Field::Varint(_) => "varint",
            Field::Fixed64 => "fixed64",
            Field::Bytes(_) => "length-delimited",
            Field::Fixed32 => "fixed32",
        }
    }
}

/// Reads protobuf fields from a byte slice without panicking on any input.
pub(crate) struct ProtoReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ProtoReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> ProtoReader<'a> {
        ProtoReader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(format!("truncated varint at offset {start}"));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(format!("varint overflows 64 bits at offset {start}"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes at offset {start}"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(format!("field of {n} bytes at offset {} runs past the end ({})", self.pos, self.buf.len()));
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next (field number, value), or None at the end of the buffer.
    pub(crate) fn next_field(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let tag = self.varint()?;
        let field = tag >> 3;
        if field == 0 {
            return Err(format!("field number 0 at offset {at}"));
        }
        let value = match tag & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| format!("length {len} at offset {at} too large"))?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed32
            }
            wt => return Err(format!("unsupported wire type {wt} at offset {at}")),
        };
        Ok(Some((field, value)))
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A proto3 varint field; omitted when zero.
pub(crate) fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_varint(out, field << 3);
        put_varint(out, v);
    }
}

/// A proto3 bytes field; omitted when empty.
pub(crate) fn put_bytes_field(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    if !b.is_empty() {
        put_varint(out, (field << 3) | 2);
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn revision_bytes_round_trip_and_sort_like_revisions() {
        let r = Revision::new(0x48e, 0);
        assert_eq!(hex(&r.to_bytes()), "000000000000048e5f0000000000000000");
        assert_eq!(Revision::from_bytes(&r.to_bytes()), Ok(r));
        let a = RevKey::put(Revision::new(2, 5)).to_bytes();
        let b = RevKey::tombstone(Revision::new(2, 5)).to_bytes();
        let c = RevKey::put(Revision::new(3, 0)).to_bytes();
        assert_eq!(a.len(), 17);
        assert_eq!(b.len(), 18);
        assert_eq!(*b.last().unwrap(), b't');
        assert!(a < b && b < c, "byte order is revision order");
        assert_eq!(RevKey::decode(&b), Ok(RevKey::tombstone(Revision::new(2, 5))));
        assert_eq!(RevKey::decode(&a), Ok(RevKey::put(Revision::new(2, 5))));
    }

    #[test]
    fn corrupted_revision_keys_are_refused() {
        let good = RevKey::tombstone(Revision::new(7, 1)).to_bytes();
        for n in [0, 1, 8, 16, 19, 32] {
            let mut k = good.clone();
            k.resize(n, 0);
            if n != 17 {
                assert!(RevKey::decode(&k).is_err(), "length {n}");
            }
        }
        let mut bad_sep = good.clone();
        bad_sep[8] = b'-';
        assert!(RevKey::decode(&bad_sep).unwrap_err().contains("separator"));
        let mut bad_mark = good.clone();
        bad_mark[17] = b'x';
        assert!(RevKey::decode(&bad_mark).unwrap_err().contains("marker"));
        let mut negative = good[..17].to_vec();
        negative[0] = 0x80;
        assert!(RevKey::decode(&negative).unwrap_err().contains("negative"));
        assert!(Revision::from_bytes(&good).is_err(), "a meta revision is exactly 17 bytes");
    }

    #[test]
    fn key_value_encoding_is_byte_exact_to_gogo() {
        // Field order 1..6, zeros omitted; matches the bytes etcd 3.4/3.5 store.
        let kv = KeyValue {
            key: b"/a".to_vec(),
            create_revision: 2,
            mod_revision: 300,
            version: 3,
            value: b"v".to_vec(),
            lease: 0x390da2127eb37327,
        };
        let enc = kv.encode();
        assert_eq!(hex(&enc), "0a022f61100218ac0220032a017630a7e6cdf5a7c2e88639");
        assert_eq!(KeyValue::decode(&enc).unwrap(), kv);
        let empty_value = KeyValue { value: Vec::new(), lease: 0, ..kv.clone() };
        assert_eq!(hex(&empty_value.encode()), "0a022f61100218ac022003");
    }

    #[test]
    fn tombstone_value_is_the_key_alone() {
        let t = KeyValue::tombstone(b"/registry/x".to_vec());
        assert_eq!(t.encode(), [&[0x0a, 11][..], b"/registry/x"].concat());
        assert_eq!(KeyValue::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn empty_value_decodes_as_all_zero() {
        // etcdutl's --bump-revision key stores a 0-byte KeyValue.
        assert_eq!(KeyValue::decode(&[]).unwrap(), KeyValue::default());
        assert!(KeyValue::default().encode().is_empty());
    }

    #[test]
    fn negative_and_large_numbers_use_ten_byte_varints() {
        let kv = KeyValue { key: b"k".to_vec(), lease: -1, version: i64::MAX, ..Default::default() };
        let enc = kv.encode();
        assert_eq!(hex(&enc), "0a016b20ffffffffffffffff7f30ffffffffffffffffff01");
        assert_eq!(KeyValue::decode(&enc).unwrap(), kv);
    }

    #[test]
    fn large_values_round_trip() {
        let value: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let kv = KeyValue { key: b"big".to_vec(), create_revision: 5, mod_revision: 5, version: 1, value, lease: 0 };
        let enc = kv.encode();
        assert_eq!(&enc[11..15], &[0x2a, 0xa0, 0x9c, 0x01], "tag and length varint of 20000 after the numbers");
        assert_eq!(KeyValue::decode(&enc).unwrap(), kv);
    }

    #[test]
    fn unknown_fields_are_skipped_and_last_occurrence_wins() {
        let buf = unhex("0a016b 1002 1003 3d01020304 41 0102030405060708 7a00");
        let kv = KeyValue::decode(&buf).unwrap();
        assert_eq!(kv.key, b"k");
        assert_eq!(kv.create_revision, 3);
    }

    #[test]
    fn corrupted_key_values_are_refused_without_panic() {
        let good =
            KeyValue { key: b"key".to_vec(), value: b"value".to_vec(), version: 1, ..Default::default() }.encode();
        for cut in 1..good.len() {
            // Every strict prefix that ends inside a field must fail; those on a field
            // boundary are valid shorter messages.
            let _ = KeyValue::decode(&good[..cut]);
        }
        assert!(KeyValue::decode(&good[..2]).is_err(), "truncated key");
        assert!(KeyValue::decode(&unhex("10")).is_err(), "truncated varint");
        assert!(KeyValue::decode(&unhex("10ffffffffffffffffff7f")).is_err(), "varint over 64 bits");
        assert!(KeyValue::decode(&unhex("08 01")).is_err(), "key as varint");
        assert!(KeyValue::decode(&unhex("12 01 00")).is_err(), "create_revision as bytes");
        assert!(KeyValue::decode(&unhex("0b")).is_err(), "wire type 3");
        assert!(KeyValue::decode(&unhex("00 00")).is_err(), "field 0");
        assert!(KeyValue::decode(&unhex("0affffffffffffffff7f")).is_err(), "huge length");
    }

    #[test]
    fn random_bytes_never_panic_the_decoders() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let valid = KeyValue {
            key: b"/k".to_vec(),
            create_revision: 300,
            mod_revision: 301,
            version: 2,
            value: b"value".to_vec(),
            lease: 7,
        }
        .encode();
        for round in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half pure noise, half a valid message with a few bytes flipped.
            let buf: Vec<u8> = if round % 2 == 0 {
                (0..(x % 40) as usize).map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8).collect()
            } else {
                let mut b = valid.clone();
                for i in 0..3 {
                    let at = ((x >> (i * 16)) as usize) % b.len();
                    b[at] ^= (x >> (i * 8 + 3)) as u8;
                }
                b.truncate(b.len() - (x % 4) as usize);
                b
            };
            let _ = KeyValue::decode(&buf);
            let _ = crate::lease::Lease::decode(&buf);
            let _ = RevKey::decode(&buf);
        }
    }

    #[test]
    fn bucket_names_are_in_cursor_order() {
        let mut sorted = ALL_BUCKETS.to_vec();
        sorted.sort();
        assert_eq!(sorted, ALL_BUCKETS.to_vec());
    }
}
