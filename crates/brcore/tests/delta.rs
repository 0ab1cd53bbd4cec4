//! Delta snapshots written by real `etcdbrctl` binaries (v0.28.4 on etcd 3.4.23, v0.43.0 on etcd
//! 3.5.30): decoding, byte-exact re-encoding, and agreement with what etcd itself reported.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use brcore::compress;
use brcore::delta::{self, Event, EventKind};
use brcore::error::Error;
use brcore::name::{Snapshot, SnapshotKind};

/// Every store under the Go-made test data, with its objects parsed and sorted.
fn stores() -> Vec<(PathBuf, Vec<(Snapshot, PathBuf)>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(testsupport::go_testdata()).unwrap() {
        let dir = entry.unwrap().path();
        let v2 = dir.join("store/v2");
        if !v2.is_dir() {
            continue;
        }
        let mut objects: Vec<(Snapshot, PathBuf)> = fs::read_dir(&v2)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let key = format!("store/v2/{}", path.file_name().unwrap().to_str().unwrap());
                let snap = Snapshot::parse_key(&key, fs::metadata(&path).unwrap().len()).unwrap();
                (snap, path)
            })
            .collect();
        objects.sort_by(|a, b| Snapshot::reference_order(&a.0, &b.0));
        out.push((dir, objects));
    }
    assert!(out.len() >= 2, "expected both etcdbrctl stores under {}", testsupport::go_testdata().display());
    out
}

fn decompressed(snap: &Snapshot, path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    compress::decoder(snap.name.compression, fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn every_real_delta_re_encodes_to_the_same_bytes() {
    let mut deltas = 0;
    let mut events = 0;
    for (_, objects) in stores() {
        for (snap, path) in objects.iter().filter(|(s, _)| s.name.kind == SnapshotKind::Incr) {
            let content = decompressed(snap, path);
            let decoded = delta::decode_content(&content, &snap.key).unwrap();
            assert!(!decoded.is_empty(), "{}", snap.key);
            let encoded = delta::encode_events(&decoded);
            assert!(encoded == content, "{}: re-encoding differs from what Go wrote", snap.key);
            // The name's last revision is the last event's.
            assert_eq!(decoded.last().unwrap().mod_revision as u64, snap.name.last_revision, "{}", snap.key);
            assert!(decoded[0].mod_revision as u64 >= snap.name.start_revision, "{}", snap.key);
            deltas += 1;
            events += decoded.len();
        }
    }
    assert!(deltas >= 19 && events > 100, "{deltas} deltas, {events} events");
}

#[test]
fn reading_through_the_decompressor_matches_and_streams_in_order() {
    for (_, objects) in stores() {
        let mut previous: Option<i64> = None;
        for (snap, path) in objects.iter().filter(|(s, _)| s.name.kind == SnapshotKind::Incr) {
            let reader = compress::decoder(snap.name.compression, fs::File::open(path).unwrap());
            let events: Vec<Event> = delta::DeltaReader::new(reader, &snap.key).unwrap().collect();
            for e in &events {
                // Every revision after the full snapshot produces at least one event, and these
                // stores do not overlap: revisions advance by 0 or 1.
                if let Some(p) = previous {
                    assert!(e.mod_revision == p || e.mod_revision == p + 1, "{}: {p} -> {}", snap.key, e.mod_revision);
                }
                previous = Some(e.mod_revision);
                assert!(e.time_nanos().is_some(), "{}: time {:?}", snap.key, e.time);
                if e.kind == EventKind::Delete {
                    assert!(e.value.is_empty() && e.create_revision == 0 && e.version == 0 && e.lease == 0);
                }
            }
        }
        assert_eq!(previous, Some(338));
    }
}

#[test]
fn the_replayed_events_agree_with_etcds_final_state() {
    // expected-final.json is `etcdctl get "" --prefix -w json` on the source cluster at the end.
    for (dir, objects) in stores() {
        let full_rev = objects.iter().find(|(s, _)| s.name.kind == SnapshotKind::Full).unwrap().0.name.last_revision;
        let mut live: BTreeMap<Vec<u8>, Option<Event>> = BTreeMap::new();
        let mut leases_above_2_53 = 0;
        for (snap, path) in objects.iter().filter(|(s, _)| s.name.kind == SnapshotKind::Incr) {
            for e in delta::decode_content(&decompressed(snap, path), &snap.key).unwrap() {
                if e.lease > (1i64 << 53) {
                    leases_above_2_53 += 1;
                }
                let key = e.key.clone();
                live.insert(key, (e.kind == EventKind::Put).then_some(e));
            }
        }
        assert!(leases_above_2_53 > 0, "the stores hold leased keys with ids above 2^53");
        let expected: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("expected-final.json")).unwrap()).unwrap();
        let kvs = expected["kvs"].as_array().unwrap();
        let mut checked = 0;
        for kv in kvs {
            let key = B64.decode(kv["key"].as_str().unwrap()).unwrap();
            let mod_rev = kv["mod_revision"].as_i64().unwrap();
            if (mod_rev as u64) <= full_rev {
                continue;
            }
            let event = live.get(&key).and_then(|e| e.as_ref()).unwrap_or_else(|| panic!("{key:?} not live in deltas"));
            let value = kv.get("value").and_then(|v| v.as_str()).map(|v| B64.decode(v).unwrap()).unwrap_or_default();
            assert_eq!(event.value, value);
            assert_eq!(event.mod_revision, mod_rev);
            assert_eq!(event.create_revision, kv["create_revision"].as_i64().unwrap());
            assert_eq!(event.version, kv["version"].as_i64().unwrap());
            assert_eq!(event.lease, kv.get("lease").and_then(|l| l.as_i64()).unwrap_or(0));
            checked += 1;
        }
        // Keys the deltas deleted last are absent from etcd's final state.
        for (key, e) in &live {
            if e.is_none() {
                assert!(
                    !kvs.iter().any(|kv| B64.decode(kv["key"].as_str().unwrap()).unwrap() == *key),
                    "{key:?} deleted in the deltas but live in etcd"
                );
            }
        }
        assert!(checked > 20, "{}: only {checked} keys changed after the full snapshot", dir.display());
    }
}

#[test]
fn damaged_real_deltas_are_corrupt_not_panics() {
    let (_, objects) = stores().remove(0);
    let (snap, path) = objects.iter().find(|(s, _)| s.name.kind == SnapshotKind::Incr).unwrap();
    let raw = fs::read(path).unwrap();
    // Truncated compressed object.
    let cut = raw[..raw.len() / 2].to_vec();
    let err =
        delta::read_events(compress::decoder(snap.name.compression, std::io::Cursor::new(cut)), &snap.key).unwrap_err();
    assert!(matches!(err, Error::Corrupt { ref object, .. } if *object == snap.key), "{err}");
    // Flipped bits in the content, at many positions: always an error, never a panic.
    let content = decompressed(snap, path);
    for pos in (0..content.len()).step_by(97) {
        let mut bad = content.clone();
        bad[pos] ^= 0x20;
        assert!(delta::decode_content(&bad, &snap.key).is_err(), "flip at {pos} went unnoticed");
    }
}
