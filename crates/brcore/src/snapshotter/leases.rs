//! TTLs of leases that deltas refer to: the lease sidecar objects.
//!
//! A delta's put events carry the id of the key's lease but not its TTL, and a lease granted
//! after the last full snapshot is in no full snapshot's `lease` bucket. So when a put refers to
//! a lease the snapshotter has not seen since the last full snapshot, it asks etcd for the
//! lease's TTL (`LeaseTimeToLive`) and records it. The records of a delta are stored, before
//! the delta itself, in a small JSON object beside it:
//!
//! ```text
//! <prefix>/v2/Leases-<start %08d>-<last %08d>-<unix>.json
//! ```
//!
//! with the same start and last revision (and creation time) as the delta. The reference's
//! `ParseSnapshot` rejects the kind `Leases` ("unknown snapshot kind"), so the Go etcdbrctl logs
//! and ignores these objects, and its GC never deletes them; etcdbr's GC deletes a sidecar when
//! no delta with its revision range is left. Content (UTF-8 JSON, uncompressed):
//!
//! ```text
//! {"format":"etcdbr-leases/1","delta":"Incr-00000167-00000168-1795611440.gz",
//!  "leases":[{"id":7587883020383514628,"granted_ttl":60,"remaining_ttl":59,"first_revision":167},
//!            {"id":7587883020383514630,"granted_ttl":null,"remaining_ttl":null,"first_revision":168}]}
//! ```
//!
//! `id` is the lease id as in the delta's events, `first_revision` the revision of the first put
//! in the delta that referred to it, `granted_ttl` the TTL in seconds it was granted with and
//! `remaining_ttl` the seconds left when asked; both are `null` when etcd no longer knew the
//! lease (it was revoked or expired before the snapshotter asked; its keys are then deleted by
//! later events).

use serde::{Deserialize, Serialize};

use crate::name::{SnapshotKind, SnapshotName};

/// The `format` value of sidecars written by this version.
pub const FORMAT: &str = "etcdbr-leases/1";
/// The kind field of a sidecar's name.
pub const KIND: &str = "Leases";

/// One lease a delta refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The lease id.
    pub id: i64,
    /// TTL in seconds the lease was granted with; `None` if etcd no longer knew the lease.
    pub granted_ttl: Option<i64>,
    /// Seconds left when etcd was asked; `None` if etcd no longer knew the lease.
    pub remaining_ttl: Option<i64>,
    /// The revision of the first put in the delta that referred to the lease.
    pub first_revision: i64,
}

/// The content of a lease sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSidecar {
    /// Always [`FORMAT`] for this layout.
    pub format: String,
    /// The name of the delta these leases belong to.
    pub delta: String,
    /// The leases, in the order their first put appeared.
    pub leases: Vec<LeaseRecord>,
}

/// The name (without directory) of the sidecar of the delta `delta`.
pub fn sidecar_name(delta: &SnapshotName) -> String {
    format!("{KIND}-{:08}-{:08}-{}.json", delta.start_revision, delta.last_revision, delta.created_on)
}

/// The store key of the sidecar of `delta` under `prefix`.
pub fn sidecar_key(prefix: &str, delta: &SnapshotName) -> String {
    format!("{}{}", crate::name::v2_dir(prefix), sidecar_name(delta))
}

/// Start and last revision of a sidecar key (`…/v2/Leases-<start>-<last>-<unix>.json`), or
/// `None` if the key is not a sidecar's.
pub fn parse_sidecar_key(key: &str) -> Option<(u64, u64)> {
    let name = key.rsplit('/').next()?;
    let rest = name.strip_prefix(KIND)?.strip_prefix('-')?.strip_suffix(".json")?;
    let mut parts = rest.split('-');
    let start = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    let _created: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || start > last {
        return None;
    }
    Some((start, last))
}

/// Serialises a sidecar.
pub fn encode(delta: &SnapshotName, leases: &[LeaseRecord]) -> Vec<u8> {
    debug_assert_eq!(delta.kind, SnapshotKind::Incr);
    let sidecar = LeaseSidecar { format: FORMAT.to_string(), delta: delta.to_string(), leases: leases.to_vec() };
    // Serialising plain integers and strings into a Vec cannot fail.
    serde_json::to_vec(&sidecar).unwrap_or_default()
}

/// Parses a sidecar's content.
pub fn decode(bytes: &[u8]) -> Result<LeaseSidecar, String> {
    let s: LeaseSidecar = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if s.format != FORMAT {
        return Err(format!("unknown lease sidecar format {:?}", s.format));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::{Compression, Snapshot};

    fn delta() -> SnapshotName {
        SnapshotName {
            kind: SnapshotKind::Incr,
            start_revision: 167,
            last_revision: 168,
            created_on: 1_795_611_440,
            compression: Compression::Gzip,
            is_final: false,
        }
    }

    #[test]
    fn the_sidecar_key_is_not_a_snapshot_for_the_name_parser() {
        let key = sidecar_key("etcd-main", &delta());
        assert_eq!(key, "etcd-main/v2/Leases-00000167-00000168-1795611440.json");
        assert!(Snapshot::parse_key(&key, 10).is_err(), "the reference's parser must ignore sidecars");
        assert_eq!(parse_sidecar_key(&key), Some((167, 168)));
        assert_eq!(parse_sidecar_key("etcd-main/v2/Incr-00000167-00000168-1795611440.gz"), None);
        assert_eq!(sidecar_key("", &delta()), "v2/Leases-00000167-00000168-1795611440.json");
    }

    #[test]
    fn content_round_trips_with_full_i64_lease_ids() {
        let leases = [
            LeaseRecord {
                id: 7_587_883_020_383_514_628,
                granted_ttl: Some(60),
                remaining_ttl: Some(59),
                first_revision: 167,
            },
            LeaseRecord { id: 3, granted_ttl: None, remaining_ttl: None, first_revision: 168 },
        ];
        let bytes = encode(&delta(), &leases);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"id\":7587883020383514628"), "{text}");
        assert!(text.contains("\"delta\":\"Incr-00000167-00000168-1795611440.gz\""), "{text}");
        let back = decode(&bytes).unwrap();
        assert_eq!(back.leases, leases);
        assert!(decode(b"{\"format\":\"other\",\"delta\":\"x\",\"leases\":[]}").is_err());
        assert!(decode(b"not json").is_err());
    }
}
