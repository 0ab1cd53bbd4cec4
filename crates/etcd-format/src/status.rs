//! `etcdctl snapshot status` (3.4) / `etcdutl snapshot status` (3.5), offline.
//!
//! Both run bbolt's consistency check, then walk every top-level bucket in cursor order,
//! feeding a crc32c with the bucket name and each entry's key and value. "revision" is the main
//! revision of the last entry of the `key` bucket (not etcd's current revision, which can be
//! higher after a compaction), "totalKey" counts every entry of every bucket, and "totalSize"
//! is the bbolt high-water mark (`pgid * pageSize`), not the file length. etcd 3.6 changed
//! "totalKey" to count live user keys; this follows 3.4/3.5.

use serde::Serialize;

use crate::mvcc::{Error, KEY_BUCKET, RevKey};

/// What `snapshot status -w json` prints, field for field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// crc32c over every bucket name, key and value, in cursor order.
    pub hash: u32,
    /// The main revision of the last entry of the `key` bucket, 0 if it is empty.
    pub revision: i64,
    /// The number of entries in all buckets (nested bucket names count as entries).
    pub total_key: u64,
    /// `pgid * pageSize`: the size etcd would stream as a snapshot, without the trailer.
    pub total_size: u64,
}

/// Computes the status exactly as etcd 3.4/3.5 do; a db that fails the bbolt check is
/// refused, as etcd refuses it ("snapshot file integrity check failed").
pub fn snapshot_status(db: &bbolt::Db) -> Result<Status, Error> {
    let report = db.check();
    if !report.is_ok() {
        return Err(Error::CheckFailed {
            count: report.findings.len() as u64 + report.dropped_findings,
            first: report.findings.first().map(|f| f.to_string()).unwrap_or_default(),
        });
    }
    let mut hash = 0u32;
    let mut revision = 0i64;
    let mut total_key = 0u64;
    for top in db.root().iter() {
        let name = match top? {
            bbolt::Entry::Bucket { name } => name,
            bbolt::Entry::Value { key, .. } => {
                // etcd's `tx.Bucket(name)` is nil for a plain key, and status fails.
                return Err(Error::corrupt(b"", key, "cannot get hash of bucket: the root holds a plain key"));
            }
        };
        let Some(bucket) = db.bucket(name)? else {
            return Err(Error::corrupt(b"", name, "the root lists a bucket that cannot be opened"));
        };
        hash = crc32c::crc32c_append(hash, name);
        let is_key_bucket = name == KEY_BUCKET;
        for entry in bucket.iter() {
            // `ForEach` yields a nested bucket as its name with a nil value.
            let (key, value): (&[u8], &[u8]) = match entry? {
                bbolt::Entry::Value { key, value } => (key, value),
                bbolt::Entry::Bucket { name } => (name, &[]),
            };
            hash = crc32c::crc32c_append(hash, key);
            hash = crc32c::crc32c_append(hash, value);
            if is_key_bucket {
                // etcd's `bytesToRev` reads the two halves without checks; a key that is not
                // a revision was not written by etcd, so it is reported instead.
                revision = RevKey::decode(key).map_err(|why| Error::corrupt(KEY_BUCKET, key, why))?.rev.main;
            }
            total_key += 1;
        }
    }
    Ok(Status { hash, revision, total_key, total_size: db.size() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_field_names_match_etcdctl() {
        let s = Status { hash: 4184751071, revision: 39, total_key: 45, total_size: 49152 };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"hash":4184751071,"revision":39,"totalKey":45,"totalSize":49152}"#
        );
    }
}
