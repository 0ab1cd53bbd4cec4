//! The small value decoders of etcd's backend and raft log: the first byte picks the decoder, the
//! rest is its input. Each must return `Ok` or an error, never panic; whatever decodes must survive
//! an encode/decode round trip unchanged. Seeds: `key` bucket keys and values and `lease` values
//! from a real etcd db, and raft entries from a live WAL, each prefixed with its selector byte.
#![no_main]

use etcd_format::lease::Lease;
use etcd_format::mvcc::{KeyValue, RevKey};
use etcd_format::raftpb::{
    ConfChange, ConfState, Entry, HardState, Message, Metadata, Record, SnapshotMetadata, WalSnapshot,
};
use libfuzzer_sys::fuzz_target;

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(buf: &[u8]) {
    if let Ok(m) = M::decode(buf) {
        let again = M::decode(&m.encode()).expect("a decoded message re-encodes to decodable bytes");
        assert_eq!(again, m, "encode/decode round trip changed the message");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, buf)) = data.split_first() else {
        return;
    };
    match selector % 11 {
        0 => {
            if let Ok(kv) = KeyValue::decode(buf) {
                let again = KeyValue::decode(&kv.encode()).expect("a decoded KeyValue re-encodes to decodable bytes");
                assert_eq!(again, kv, "KeyValue round trip changed the value");
            }
        }
        1 => {
            if let Ok(rk) = RevKey::decode(buf) {
                let again = RevKey::decode(&rk.to_bytes()).expect("a decoded RevKey re-encodes to decodable bytes");
                assert_eq!(again, rk, "RevKey round trip changed the key");
            }
        }
        2 => {
            if let Ok(lease) = Lease::decode(buf) {
                let again = Lease::decode(&lease.encode()).expect("a decoded Lease re-encodes to decodable bytes");
                assert_eq!(again, lease, "Lease round trip changed the lease");
            }
        }
        3 => round_trip::<Entry>(buf),
        4 => round_trip::<HardState>(buf),
        5 => round_trip::<ConfState>(buf),
        6 => round_trip::<ConfChange>(buf),
        7 => round_trip::<SnapshotMetadata>(buf),
        8 => round_trip::<Record>(buf),
        9 => round_trip::<WalSnapshot>(buf),
        _ => round_trip::<Metadata>(buf),
    }
});
