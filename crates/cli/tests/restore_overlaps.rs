//! Overlaps are verified, not trusted: deltas that cover the same revisions (two leaders'
//! sidecars around a hand-off, one range stored twice) restore exactly when their events agree,
//! and are refused (exit 3, both objects and the revision named, nothing left behind) when one
//! event differs. The store is the Go etcdbrctl's (real etcd 3.4.23) with overlapping deltas cut
//! from its own; real etcd judges the result.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

use brcore::delta::{Event, EventKind, encode_events, read_events};
use testsupport::{Etcd, EtcdVersion, free_port, go_testdata};

const STORE_34: &str = "etcdbrctl-0.28.4-etcd-3.4.23";
const FINAL_REV: i64 = 338;

fn copy_store(container: &Path) {
    let src = go_testdata().join(STORE_34).join("store").join("v2");
    fs::create_dir_all(container.join("v2")).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), container.join("v2").join(entry.file_name())).unwrap();
    }
}

fn object(container: &Path, starts_with: &str) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(container.join("v2"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(starts_with))
        .collect();
    assert_eq!(found.len(), 1, "{starts_with}: {found:?}");
    found.into_iter().next().unwrap()
}

fn read_delta(path: &Path) -> Vec<Event> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(path).unwrap()).read_to_end(&mut raw).unwrap();
    read_events(&raw[..], &path.display().to_string()).unwrap()
}

fn write_delta(container: &Path, name: &str, events: &[Event]) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&encode_events(events)).unwrap();
    fs::write(container.join("v2").join(name), gz.finish().unwrap()).unwrap();
    name.to_string()
}

/// The Go tool's events of revisions `from..=to`, from its deltas.
fn events(container: &Path, from: i64, to: i64) -> Vec<Event> {
    let mut all = Vec::new();
    for prefix in ["Incr-00000201-00000235", "Incr-00000236-00000264"] {
        all.extend(read_delta(&object(container, prefix)));
    }
    all.into_iter().filter(|e| (from..=to).contains(&e.mod_revision)).collect()
}

fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fs::read_dir(dir.join("v2"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect()
}

fn restore(container: &Path, data_dir: &Path, peer: u16) -> Output {
    common::restore_one(container, data_dir, peer).output().expect("run etcdbrctl")
}

fn expected_final_hash() -> u32 {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(go_testdata().join(STORE_34).join("hashkv-final.json")).unwrap()).unwrap();
    v[0]["HashKV"]["hash"].as_u64().unwrap() as u32
}

/// Adds, beside the Go tool's 201-235 and 236-264, a delta 220-250 that overlaps both (its
/// events copied from them) and a second copy of 201-235 stored later (redundant).
fn add_overlaps(container: &Path) -> (String, String) {
    let overlapping = write_delta(container, "Incr-00000220-00000250-1795607417.gz", &events(container, 220, 250));
    let twice = write_delta(container, "Incr-00000201-00000235-1795607430.gz", &events(container, 201, 235));
    (overlapping, twice)
}

#[test]
fn overlapping_deltas_with_equal_events_restore_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("store");
    copy_store(&container);
    let (overlapping, twice) = add_overlaps(&container);
    let before = tree(&container);

    for version in [EtcdVersion::V3_4, EtcdVersion::V3_5] {
        let data = tmp.path().join(format!("data-{version:?}"));
        let peer = free_port();
        let out = restore(&container, &data, peer);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{stdout}\n{stderr}");
        // The redundant copy is named as left out, with the reason, in the summary and the log.
        assert!(stdout.contains(&twice) && stdout.contains("left out"), "{stdout}");
        assert!(stderr.contains(&twice), "{stderr}");
        assert!(stdout.contains("+ 11 deltas"), "the overlapping delta is applied for its new revisions: {stdout}");
        assert!(!stdout.contains(&format!("left out {overlapping}")), "{stdout}");
        assert_eq!(before, tree(&container), "a restore never writes to the store");

        let etcd = Etcd::start_on(version, &data, "n1", peer, free_port());
        assert_eq!(etcd.revision(), FINAL_REV);
        assert_eq!(etcd.hashkv(FINAL_REV).0, expected_final_hash(), "{version:?}");
    }
}

#[test]
fn one_differing_event_is_refused_naming_both_objects_and_the_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("store");
    copy_store(&container);
    let go_delta = object(&container, "Incr-00000201-00000235").file_name().unwrap().to_string_lossy().to_string();

    // 220-250 with one value changed at revision 225, which the Go tool's 201-235 holds too.
    let mut ours = events(&container, 220, 250);
    let e = ours.iter_mut().find(|e| e.mod_revision == 225 && e.kind == EventKind::Put).expect("a put at 225");
    e.value = b"a value the source never held".to_vec();
    let overlapping = write_delta(&container, "Incr-00000220-00000250-1795607417.gz", &ours);
    let before = tree(&container);

    let data = tmp.path().join("data");
    let out = restore(&container, &data, free_port());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&go_delta) && stderr.contains(&overlapping), "both objects named: {stderr}");
    assert!(stderr.contains("revision 225"), "the first differing revision named: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!data.join("member").exists(), "nothing where etcd would boot from it");
    assert!(!tmp.path().join("data.part").exists(), "the unfinished restore was cleaned up");
    assert_eq!(before, tree(&container), "the store is untouched");

    // The same difference in a delta that is entirely redundant is refused the same way.
    fs::remove_file(container.join("v2").join(&overlapping)).unwrap();
    let mut twice = events(&container, 201, 235);
    let e = twice.iter_mut().find(|e| e.mod_revision == 230 && e.kind == EventKind::Put).expect("a put at 230");
    e.lease = 0x1234;
    let redundant = write_delta(&container, "Incr-00000201-00000235-1795607430.gz", &twice);
    let out = restore(&container, &data, free_port());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&go_delta) && stderr.contains(&redundant) && stderr.contains("revision 230"), "{stderr}");
    assert!(!data.join("member").exists() && !tmp.path().join("data.part").exists());
}
