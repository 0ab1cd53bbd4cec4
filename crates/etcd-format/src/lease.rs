//! The `lease` bucket: `BE64(id)` → `leasepb.Lease`.
//!
//! etcd attaches keys to leases at boot from `KeyValue.lease`; this bucket only lists each
//! lease's ID and TTL. A restore that adds a record for a lease the deltas reference writes
//! `08 id 10 ttl`, byte-identical to what etcd 3.4/3.5 write for `lease grant` (the
//! remaining-TTL field is only written by lease checkpointing, which is off by default).

use crate::mvcc::{Error, Field, LEASE_BUCKET, ProtoReader, put_varint_field};

/// A `leasepb.Lease` record (proto3: zero fields are omitted on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    /// The lease ID (`int64` bits; IDs commonly exceed 2^53).
    pub id: i64,
    /// The granted time to live, in seconds. etcd raises 0 to its minimum TTL, so never write 0.
    pub ttl: i64,
    /// The remaining TTL saved by a checkpoint; etcd honours a non-zero value as the first
    /// expiry at boot, so a restore leaves it 0.
    pub remaining_ttl: i64,
}

impl Lease {
    /// The bucket key of lease `id`: its 8 bytes big-endian.
    pub fn bucket_key(id: i64) -> [u8; 8] {
        id.to_be_bytes()
    }

    /// The lease ID from a bucket key, which must be exactly 8 bytes.
    pub fn id_from_key(key: &[u8]) -> Result<i64, Error> {
        let bytes: [u8; 8] = key
            .try_into()
            .map_err(|_| Error::corrupt(LEASE_BUCKET, key, format!("a lease key is 8 bytes, found {}", key.len())))?;
        Ok(i64::from_be_bytes(bytes))
    }

    /// The protobuf bytes: fields 1..3 in order, zeros omitted.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        put_varint_field(&mut out, 1, self.id as u64);
        put_varint_field(&mut out, 2, self.ttl as u64);
        put_varint_field(&mut out, 3, self.remaining_ttl as u64);
        out
    }

    /// Decodes a protobuf `Lease` (proto3: missing fields are 0, unknown fields skipped).
    pub fn decode(buf: &[u8]) -> Result<Lease, String> {
        let mut lease = Lease::default();
        let mut r = ProtoReader::new(buf);
        while let Some((field, value)) = r.next_field()? {
            match (field, value) {
                (1, Field::Varint(v)) => lease.id = v as i64,
                (2, Field::Varint(v)) => lease.ttl = v as i64,
                (3, Field::Varint(v)) => lease.remaining_ttl = v as i64,
                (1..=3, other) => {
                    return Err(format!("Lease field {field} has the wrong wire type ({})", other.wire_name()));
                }
                _ => {}
            }
        }
        Ok(lease)
    }
}

/// Every lease record of the db, in key order, each checked against its key.
///
/// A missing `lease` bucket yields none (etcd creates it empty at boot).
pub fn read_leases(db: &bbolt::Db) -> Result<Vec<Lease>, Error> {
    let Some(bucket) = db.bucket(LEASE_BUCKET)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in bucket.iter() {
        match entry? {
            bbolt::Entry::Value { key, value } => {
                let id = Lease::id_from_key(key)?;
                let lease = Lease::decode(value).map_err(|why| Error::corrupt(LEASE_BUCKET, key, why))?;
                if lease.id != id {
                    return Err(Error::corrupt(
                        LEASE_BUCKET,
                        key,
                        format!("the record holds lease {:x}, its key says {:x}", lease.id, id),
                    ));
                }
                out.push(lease);
            }
            bbolt::Entry::Bucket { name } => {
                return Err(Error::corrupt(LEASE_BUCKET, name, "a nested bucket inside the lease bucket"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::hex;

    #[test]
    fn encoding_matches_what_etcd_writes_for_lease_grant() {
        // Real bytes from etcd 3.4.23 and 3.5.30: ID 0x390da2127eb37327 and 0x53a0a2128aa785f4, TTL 3600.
        let l = Lease { id: 0x390da2127eb37327, ttl: 3600, remaining_ttl: 0 };
        assert_eq!(hex(&l.encode()), "08a7e6cdf5a7c2e8863910901c");
        let l = Lease { id: 0x53a0a2128aa785f4, ttl: 3600, remaining_ttl: 0 };
        assert_eq!(hex(&l.encode()), "08f48b9ed5a8c2a8d05310901c");
        assert_eq!(Lease::decode(&l.encode()).unwrap(), l);
        assert_eq!(hex(&Lease::bucket_key(0x53a0a2128aa785f4)), "53a0a2128aa785f4");
        assert_eq!(Lease::id_from_key(&Lease::bucket_key(l.id)).unwrap(), l.id);
    }

    #[test]
    fn remaining_ttl_is_field_three_and_zeros_are_omitted() {
        let l = Lease { id: 1, ttl: 0, remaining_ttl: 4 };
        assert_eq!(hex(&l.encode()), "08011804");
        assert_eq!(Lease::decode(&l.encode()).unwrap(), l);
        assert!(Lease::default().encode().is_empty());
    }

    #[test]
    fn corrupted_lease_records_are_refused() {
        assert!(Lease::decode(&[0x08]).is_err(), "truncated varint");
        assert!(Lease::decode(&[0x0a, 0x01, 0x00]).is_err(), "id as bytes");
        assert!(Lease::id_from_key(&[1, 2, 3]).is_err(), "short key");
        assert!(Lease::id_from_key(&[0; 9]).is_err(), "long key");
    }
}
