//! The `meta` bucket: consistent index, term, compaction marks and conf state.
//!
//! etcd decides at boot from these keys which raft entries it still has to apply
//! (`consistent_index`), how far the key space is compacted (`finishedCompactRev`, and a
//! `scheduledCompactRev` it resumes), and, in 3.6, which storage schema the file has (`term`,
//! `confState`). [`DbRevisions`] gathers the revisions a restore and HashKV start from.

use serde::{Deserialize, Serialize};

pub use crate::mvcc::META_BUCKET;
use crate::mvcc::{Error, KEY_BUCKET, RevKey, Revision};

/// `BE64` raft index of the last entry applied to the backend.
pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
/// `BE64` raft term of that entry (3.5+).
pub const TERM: &[u8] = b"term";
/// 17 revision bytes: a compaction that was requested (etcd resumes it at boot if it is newer
/// than the finished one).
pub const SCHEDULED_COMPACT_REV: &[u8] = b"scheduledCompactRev";
/// 17 revision bytes: the last compaction that completed.
pub const FINISHED_COMPACT_REV: &[u8] = b"finishedCompactRev";
/// JSON of `raftpb.ConfState` (3.5+).
pub const CONF_STATE: &[u8] = b"confState";
/// ASCII `Major.Minor.0` written by etcd 3.6's schema migrator.
pub const STORAGE_VERSION: &[u8] = b"storageVersion";

/// The JSON form of `raftpb.ConfState` that etcd stores under `meta/confState`.
///
/// Go's field tags put `omitempty` on the slices but not on `auto_leave`, so the usual value is
/// `{"voters":[<id>],"auto_leave":false}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfState {
    /// The voting members' IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voters: Vec<u64>,
    /// The learners' IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<u64>,
    /// The outgoing voters of a joint configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voters_outgoing: Vec<u64>,
    /// The learners to add when leaving a joint configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners_next: Vec<u64>,
    /// Whether a joint configuration is left automatically.
    #[serde(default)]
    pub auto_leave: bool,
}

impl From<&crate::raftpb::ConfState> for ConfState {
    fn from(cs: &crate::raftpb::ConfState) -> ConfState {
        ConfState {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
        }
    }
}

impl ConfState {
    /// The bytes etcd stores: Go's `json.Marshal` output, without spaces.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain integers, vectors and a bool cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Encodes a consistent index or term as etcd stores it: 8 bytes big-endian.
pub fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Encodes a compaction mark: the revision bytes of `(main, 0)`.
pub fn encode_compact_rev(main: i64) -> [u8; 17] {
    Revision::new(main, 0).to_bytes()
}

/// The typed contents of the `meta` bucket; absent keys are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// `consistent_index`.
    pub consistent_index: Option<u64>,
    /// `term` (3.5+).
    pub term: Option<u64>,
    /// `scheduledCompactRev`.
    pub scheduled_compact_rev: Option<Revision>,
    /// `finishedCompactRev`.
    pub finished_compact_rev: Option<Revision>,
    /// `confState` (3.5+).
    pub conf_state: Option<ConfState>,
    /// `storageVersion` (3.6+).
    pub storage_version: Option<String>,
}

impl Meta {
    /// Reads and checks the `meta` bucket. A missing bucket reads as all `None`; a known key
    /// with a malformed value is [`Error::Corrupt`] (etcd would panic on it at boot).
    pub fn read(db: &bbolt::Db) -> Result<Meta, Error> {
        let mut meta = Meta::default();
        let Some(bucket) = db.bucket(META_BUCKET)? else {
            return Ok(meta);
        };
        for entry in bucket.iter() {
            let bbolt::Entry::Value { key, value } = entry? else {
                continue;
            };
            match key {
                CONSISTENT_INDEX => meta.consistent_index = Some(decode_u64(key, value)?),
                TERM => meta.term = Some(decode_u64(key, value)?),
                SCHEDULED_COMPACT_REV => meta.scheduled_compact_rev = Some(decode_rev(key, value)?),
                FINISHED_COMPACT_REV => meta.finished_compact_rev = Some(decode_rev(key, value)?),
                CONF_STATE => {
                    let cs = serde_json::from_slice(value)
                        .map_err(|e| Error::corrupt(META_BUCKET, key, format!("confState is not JSON: {e}")))?;
                    meta.conf_state = Some(cs);
                }
                STORAGE_VERSION => {
                    let v = std::str::from_utf8(value)
                        .map_err(|_| Error::corrupt(META_BUCKET, key, "storageVersion is not UTF-8"))?;
                    meta.storage_version = Some(v.to_owned());
                }
                _ => {}
            }
        }
        Ok(meta)
    }
}

/// The revisions of a db as etcd sees them when it boots from it (`store.restore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbRevisions {
    /// etcd's `currentRev`: the main revision of the last key in the `key` bucket, but at least
    /// the finished compaction's, and at least 1 (a fresh store). A compaction at the revision
    /// of a delete removes that tombstone, so this can exceed [`Self::last_key_revision`]. A
    /// restore appends events above it.
    pub current_revision: i64,
    /// The last entry of the `key` bucket, `None` if it is empty. Its main revision is what
    /// `snapshot status` reports as "revision".
    pub last_key_revision: Option<Revision>,
    /// The main revision of `finishedCompactRev` (etcd's `compactMainRev`), `None` if the db
    /// was never compacted.
    pub compact_revision: Option<i64>,
    /// The main revision of `scheduledCompactRev`, `None` if no compaction was ever requested.
    pub scheduled_compact_revision: Option<i64>,
    /// `consistent_index`.
    pub consistent_index: Option<u64>,
    /// `term`, which etcd 3.4 does not write.
    pub term: Option<u64>,
}

impl DbRevisions {
    /// Reads the four `meta` keys it needs and the last key of the `key` bucket.
    ///
    /// Only those keys are looked at, so a malformed `confState` or an unknown key does not
    /// stop a HashKV; a malformed index or compaction mark is [`Error::Corrupt`].
    pub fn read(db: &bbolt::Db) -> Result<DbRevisions, Error> {
        let (mut consistent_index, mut term, mut scheduled, mut finished) = (None, None, None, None);
        if let Some(bucket) = db.bucket(META_BUCKET)? {
            if let Some(v) = bucket.get(CONSISTENT_INDEX)? {
                consistent_index = Some(decode_u64(CONSISTENT_INDEX, v)?);
            }
            if let Some(v) = bucket.get(TERM)? {
                term = Some(decode_u64(TERM, v)?);
            }
            if let Some(v) = bucket.get(SCHEDULED_COMPACT_REV)? {
                scheduled = Some(decode_rev(SCHEDULED_COMPACT_REV, v)?.main);
            }
            if let Some(v) = bucket.get(FINISHED_COMPACT_REV)? {
                finished = Some(decode_rev(FINISHED_COMPACT_REV, v)?.main);
            }
        }
        let last_key_revision = last_key_revision(db)?;
        let current_revision = last_key_revision.map_or(1, |r| r.main).max(finished.unwrap_or(1)).max(1);
        Ok(DbRevisions {
            current_revision,
            last_key_revision,
            compact_revision: finished,
            scheduled_compact_revision: scheduled,
            consistent_index,
            term,
        })
    }

    /// The compaction etcd reports once it has booted from this db: the scheduled one if it
    /// is newer than the finished one (etcd resumes it at boot), else the finished one, and
    /// -1 (etcd's initial `compactMainRev`) if there is none.
    pub fn effective_compact_revision(&self) -> i64 {
        let finished = self.compact_revision.unwrap_or(-1);
        match self.scheduled_compact_revision {
            Some(s) if s > finished => s,
            _ => finished,
        }
    }
}

/// A consistent index or term: exactly 8 bytes big-endian (etcd panics on anything else).
fn decode_u64(key: &[u8], v: &[u8]) -> Result<u64, Error> {
    let bytes: [u8; 8] =
        v.try_into().map_err(|_| Error::corrupt(META_BUCKET, key, format!("expected 8 bytes, found {}", v.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A compaction mark: exactly 17 revision bytes.
fn decode_rev(key: &[u8], v: &[u8]) -> Result<Revision, Error> {
    Revision::from_bytes(v).map_err(|why| Error::corrupt(META_BUCKET, key, why))
}

/// The revision of the last entry of the `key` bucket.
fn last_key_revision(db: &bbolt::Db) -> Result<Option<Revision>, Error> {
    let Some(bucket) = db.bucket(KEY_BUCKET)? else {
        return Ok(None);
    };
    // The rightmost leaf's last key: constant time however large the bucket (validation's
    // sanity mode reads this on every start).
    let last = match bucket.last()? {
        Some(bbolt::Entry::Value { key, .. }) => Some(key),
        Some(bbolt::Entry::Bucket { name }) => {
            return Err(Error::corrupt(KEY_BUCKET, name, "a nested bucket in the key bucket".to_string()));
        }
        None => None,
    };
    match last {
        None => Ok(None),
        Some(key) => {
            let rk = RevKey::decode(key).map_err(|why| Error::corrupt(KEY_BUCKET, key, why))?;
            Ok(Some(rk.rev))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::hex;

    #[test]
    fn conf_state_json_matches_go() {
        let cs = ConfState { voters: vec![13668033151171901709], ..Default::default() };
        assert_eq!(String::from_utf8(cs.to_json()).unwrap(), r#"{"voters":[13668033151171901709],"auto_leave":false}"#);
        let parsed: ConfState = serde_json::from_slice(&cs.to_json()).unwrap();
        assert_eq!(parsed, cs);
        let full: ConfState =
            serde_json::from_str(r#"{"voters":[1,2],"learners":[3],"voters_outgoing":[1],"auto_leave":true}"#).unwrap();
        assert_eq!(full.learners, vec![3]);
        assert!(full.auto_leave);
    }

    #[test]
    fn marks_and_indices_encode_like_etcd() {
        assert_eq!(hex(&encode_compact_rev(20)), "00000000000000145f0000000000000000");
        assert_eq!(hex(&encode_u64(44)), "000000000000002c");
    }

    #[test]
    fn effective_compaction_prefers_a_newer_scheduled_one() {
        let mut r = DbRevisions {
            current_revision: 30,
            last_key_revision: Some(Revision::new(30, 0)),
            compact_revision: Some(10),
            scheduled_compact_revision: Some(18),
            consistent_index: Some(1),
            term: None,
        };
        assert_eq!(r.effective_compact_revision(), 18);
        r.scheduled_compact_revision = Some(10);
        assert_eq!(r.effective_compact_revision(), 10);
        r.compact_revision = None;
        r.scheduled_compact_revision = None;
        assert_eq!(r.effective_compact_revision(), -1);
    }
}
