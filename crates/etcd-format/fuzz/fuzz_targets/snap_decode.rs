//! Any byte string given to `decode_snap_file` must give `Ok` or a `SnapCorruption`, never a
//! panic or a hang. Because the envelope's CRC stops most mutations early, the same bytes also go
//! straight to the envelope and raft `Snapshot` decoders; every message that decodes must survive
//! an encode/decode round trip unchanged. Seeds: `member/snap/*.snap` from a live etcd and from
//! `etcdbrctl restore`.
#![no_main]

use etcd_format::raftpb::{Message, SnapEnvelope, Snapshot};
use libfuzzer_sys::fuzz_target;

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(m: &M) {
    let again = M::decode(&m.encode()).expect("a decoded message re-encodes to decodable bytes");
    assert_eq!(&again, m, "encode/decode round trip changed the message");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = etcd_format::snap::decode_snap_file(data) {
        round_trip(&snapshot);
    }
    if let Ok(env) = SnapEnvelope::decode(data) {
        round_trip(&env);
    }
    if let Ok(snapshot) = Snapshot::decode(data) {
        round_trip(&snapshot);
    }
});
