//! Bad input to `etcdbrctl restore`: each case gets a clear error and a non-zero exit, leaves
//! nothing where etcd would boot from it, and leaves the store untouched.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use testsupport::go_testdata;

const STORE_34: &str = "etcdbrctl-0.28.4-etcd-3.4.23";

/// A writable copy of a testdata store: (temp dir, container path).
fn copy_store(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("store");
    let src = go_testdata().join(name).join("store");
    fs::create_dir_all(container.join("v2")).unwrap();
    for entry in fs::read_dir(src.join("v2")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), container.join("v2").join(entry.file_name())).unwrap();
    }
    (tmp, container)
}

fn objects(container: &Path, starts_with: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(container.join("v2"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(starts_with))
        .collect();
    v.sort();
    v
}

fn restore(container: &Path, data_dir: &Path, extra: &[&str]) -> Output {
    common::restore_local(container, data_dir).args(extra).output().expect("run etcdbrctl")
}

/// Runs a restore expected to fail with `code`, and checks what it left behind.
fn expect_failure(container: &Path, data_dir: &Path, extra: &[&str], code: i32, message: &str) -> String {
    let before = common::files(container);
    let out = restore(container, data_dir, extra);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {stderr}");
    assert!(stderr.contains(message), "stderr should mention {message:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!data_dir.join("member").exists(), "a member dir was left where etcd would boot from it");
    let part = data_dir.with_file_name(format!("{}.part", data_dir.file_name().unwrap().to_string_lossy()));
    assert!(!part.exists(), "the unfinished restore was not cleaned up");
    assert_eq!(before, common::files(container), "the store was modified");
    stderr
}

fn flip_byte(path: &Path, offset_from_middle: usize) {
    let mut bytes = fs::read(path).unwrap();
    let i = bytes.len() / 2 + offset_from_middle;
    bytes[i] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

#[test]
fn corrupted_full_snapshot_is_refused() {
    let (tmp, container) = copy_store(STORE_34);
    flip_byte(&objects(&container, "Full")[0], 0);
    expect_failure(&container, &tmp.path().join("data"), &[], 3, "Full-00000000-00000166");
}

#[test]
fn corrupted_delta_is_refused() {
    let (tmp, container) = copy_store(STORE_34);
    flip_byte(&objects(&container, "Incr-00000236")[0], 0);
    expect_failure(&container, &tmp.path().join("data"), &[], 3, "Incr-00000236");
}

#[test]
fn truncated_delta_is_refused() {
    let (tmp, container) = copy_store(STORE_34);
    let delta = &objects(&container, "Incr-00000270")[0];
    let bytes = fs::read(delta).unwrap();
    fs::write(delta, &bytes[..bytes.len() - 20]).unwrap();
    expect_failure(&container, &tmp.path().join("data"), &[], 3, "Incr-00000270");
}

#[test]
fn truncated_full_snapshot_is_refused() {
    let (tmp, container) = copy_store(STORE_34);
    let full = &objects(&container, "Full")[0];
    let bytes = fs::read(full).unwrap();
    fs::write(full, &bytes[..bytes.len() / 3]).unwrap();
    expect_failure(&container, &tmp.path().join("data"), &[], 3, "Full-00000000-00000166");
}

#[test]
fn missing_delta_is_a_gap_that_names_the_revisions() {
    let (tmp, container) = copy_store(STORE_34);
    fs::remove_file(&objects(&container, "Incr-00000236")[0]).unwrap();
    expect_failure(&container, &tmp.path().join("data"), &[], 3, "236");
}

/// With no backup under the prefix there is nothing to restore: exit 0 as the Go tool (a druid
/// Job must not fail), a line that says so and names where it looked, no data dir, the store as
/// it was.
fn expect_nothing_to_restore(container: &Path, data_dir: &Path, extra: &[&str], message: &str) {
    let before = common::files(container);
    let out = restore(container, data_dir, extra);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "exit code; stderr: {stderr}");
    assert!(stdout.contains("nothing to restore") && stdout.contains(message), "{stdout}");
    assert!(!data_dir.exists(), "a data dir was created with nothing in it");
    assert_eq!(before, common::files(container), "the store was modified");
}

#[test]
fn empty_store_says_there_is_no_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("empty");
    fs::create_dir_all(container.join("v2")).unwrap();
    expect_nothing_to_restore(&container, &tmp.path().join("data"), &[], "no snapshots under v2/");
}

#[test]
fn wrong_prefix_says_there_is_no_backup() {
    let (tmp, container) = copy_store(STORE_34);
    expect_nothing_to_restore(&container, &tmp.path().join("data"), &["--store-prefix", "etcd-other"], "etcd-other");
}

#[test]
fn a_point_in_time_before_every_backup_is_exit_5() {
    let (tmp, container) = copy_store(STORE_34);
    expect_failure(&container, &tmp.path().join("data"), &["--to-revision", "100"], 5, "revision 166");
}

#[test]
fn existing_member_dir_is_refused_and_kept() {
    let (tmp, container) = copy_store(STORE_34);
    let data_dir = tmp.path().join("data");
    fs::create_dir_all(data_dir.join("member/snap")).unwrap();
    fs::write(data_dir.join("member/snap/db"), b"precious").unwrap();
    let before = common::files(&container);
    let out = restore(&container, &data_dir, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("member"), "{stderr}");
    assert_eq!(fs::read(data_dir.join("member/snap/db")).unwrap(), b"precious");
    assert_eq!(before, common::files(&container));
}

#[test]
fn full_disk_fails_cleanly() {
    // A 4 MiB tmpfs: the db fits, the WAL's 64,000,000-byte segment does not. The error says
    // the disk is full, which file did not fit and how large the filesystem is, with the
    // local-I/O exit code (9).
    let (_tmp, container) = copy_store(STORE_34);
    let small = testsupport::Tmpfs::mount(4);
    let stderr = expect_failure(&container, &small.join("data"), &[], 9, "no space left on the filesystem of");
    assert!(stderr.contains(&format!("{}/data.part/member/wal", small.path().display())), "{stderr}");
    assert!(stderr.contains("free of 4.0 MiB"), "{stderr}");
    assert!(!stderr.contains("please report") && !stderr.contains("internal error"), "{stderr}");
    assert_eq!(small.entries(), Vec::<PathBuf>::new(), "something was left on the full disk");
}

/// The store with its full snapshot stored uncompressed (`Full-…-<ts>` without a suffix), which
/// the restore reads in place.
fn uncompressed_store() -> (tempfile::TempDir, PathBuf) {
    let (tmp, container) = copy_store(STORE_34);
    let gz = objects(&container, "Full")[0].clone();
    let name = gz.file_name().unwrap().to_string_lossy().trim_end_matches(".gz").to_string();
    testsupport::go_full_snapshot(STORE_34, &container.join("v2").join(name));
    fs::remove_file(gz).unwrap();
    (tmp, container)
}

#[test]
fn corrupted_uncompressed_full_snapshot_read_in_place_is_refused_and_untouched() {
    let (tmp, container) = uncompressed_store();
    flip_byte(&objects(&container, "Full")[0], 0);
    expect_failure(&container, &tmp.path().join("data"), &[], 3, "Full-00000000-00000166");
}

#[test]
fn uncompressed_full_snapshot_is_read_in_place_and_left_as_it_was() {
    let (tmp, container) = uncompressed_store();
    let before = common::files(&container);
    let data_dir = tmp.path().join("data");
    let out = restore(&container, &data_dir, &["--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The same data as the Go tool's source at revision 338 (hashkv-final.json).
    assert!(stdout.contains("hashkv at revision 338: 3022581004"), "{stdout}");
    assert_eq!(before, common::files(&container), "the store was modified");
}

/// The library's messages speak of values; the command line names the flags that set them, on a
/// `hint:` line of its own.
#[test]
fn errors_name_the_flags_that_set_the_values_they_speak_of() {
    let (tmp, container) = copy_store(STORE_34);
    let stderr =
        expect_failure(&container, &tmp.path().join("a"), &["--embedded-etcd-quota-bytes", "4096"], 4, "quota of 4096");
    assert!(stderr.contains("\nhint: --embedded-etcd-quota-bytes sets the quota"), "{stderr}");
    let stderr = expect_failure(&container, &tmp.path().join("b"), &["--to-revision", "100"], 5, "revision 166");
    assert!(stderr.contains("\nhint: check --storage-provider, --store-container and --store-prefix"), "{stderr}");
    // A raw db (no sha256 trailer) as the full snapshot.
    let full = objects(&container, "Full")[0].clone();
    let mut db = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(fs::File::open(&full).unwrap()), &mut db).unwrap();
    fs::write(&full, flate2_gzip(&db[..db.len() - 32])).unwrap();
    let stderr = expect_failure(&container, &tmp.path().join("c"), &[], 3, "no sha256 trailer");
    assert!(stderr.contains("\nhint: --skip-hash-check accepts a raw db"), "{stderr}");
    // An error whose message says it all has no hint line.
    let (tmp, container) = copy_store(STORE_34);
    flip_byte(&objects(&container, "Incr-00000236")[0], 0);
    let stderr = expect_failure(&container, &tmp.path().join("d"), &[], 3, "Incr-00000236");
    assert!(!stderr.contains("hint:"), "{stderr}");
}

fn flate2_gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, data).unwrap();
    enc.finish().unwrap()
}

/// `snap` as etcdbr's full snapshots store it: gzip block members (small blocks, so there are
/// several), which the restore inflates in parallel.
fn block_members_gzip(snap: &[u8]) -> Vec<u8> {
    use brcore::compress::blocks::BlockFormat;
    let format = BlockFormat::new(brcore::name::Compression::Gzip, 2).unwrap();
    let mut stream = format.stream();
    let mut out = format.header();
    for chunk in snap.chunks(64 * 1024) {
        let block = format.compress(chunk).unwrap();
        stream.add(&block);
        out.extend_from_slice(block.bytes());
    }
    out.extend_from_slice(&stream.trailer());
    out
}

/// A full snapshot in block members whose every member is sound (each inflates, each crc32
/// matches) but whose sha256 trailer does not match the db: only the trailer, checked beside
/// the rebuild, tells. Whether the rebuild of the bytes succeeded (a wrong trailer over a good
/// db) or failed (a damaged page), the restore fails naming the object and the mismatch, and
/// leaves nothing behind; the same object with its bytes intact restores.
#[test]
fn a_full_snapshot_in_block_members_with_a_wrong_trailer_is_refused() {
    let (tmp, container) = copy_store(STORE_34);
    let full = objects(&container, "Full")[0].clone();
    let snap = gunzip(&full);
    assert!(snap.len() > 3 * 64 * 1024, "the test wants several members: {} bytes", snap.len());
    fs::write(&full, block_members_gzip(&snap)).unwrap();
    let out = restore(&container, &tmp.path().join("good"), &["--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hashkv at revision 338: 3022581004"), "{stdout}");

    let len = snap.len();
    for (case, at) in [("trailer", len - 1), ("db", len / 2)] {
        let mut bad = snap.clone();
        bad[at] ^= 0x5a;
        fs::write(&full, block_members_gzip(&bad)).unwrap();
        let stderr = expect_failure(&container, &tmp.path().join(case), &[], 3, "Full-00000000-00000166");
        assert!(stderr.contains("sha256 mismatch"), "{case}: {stderr}");
    }
}

/// The plain bytes of the gzip object at `path`.
fn gunzip(path: &Path) -> Vec<u8> {
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(fs::File::open(path).unwrap()), &mut plain)
        .unwrap();
    plain
}

/// A full snapshot in block members on the Local store is read in place, each inflater taking
/// the next member's header from the file: an object cut inside a member, one whose second
/// member's header is damaged, and one cut where a member ends (every member sound, the
/// snapshot short) are each refused naming the object and what is wrong with it.
#[test]
fn a_cut_or_damaged_full_snapshot_in_block_members_is_refused() {
    let (tmp, container) = copy_store(STORE_34);
    let full = objects(&container, "Full")[0].clone();
    let members = block_members_gzip(&gunzip(&full));
    // A member's header holds its length at bytes 16..20: the second member starts there.
    let second = u32::from_le_bytes(members[16..20].try_into().unwrap()) as usize;
    let mut damaged = members.clone();
    damaged[second] ^= 0xff;
    let no_member = format!("no gzip block member starts at byte {second}");
    let cases = [
        ("cut", members[..second + 100].to_vec(), "ends inside a gzip block member"),
        ("damaged", damaged, no_member.as_str()),
        ("short", members[..second].to_vec(), "no sha256 trailer"),
    ];
    for (case, bytes, why) in cases {
        fs::write(&full, bytes).unwrap();
        let stderr = expect_failure(&container, &tmp.path().join(case), &[], 3, "Full-00000000-00000166");
        assert!(stderr.contains(why), "{case}: {stderr}");
    }
}

/// Deltas are inflated whole in one call when they are one gzip member; gzip allows more, and a
/// delta in two members (each Incr's JSON split in two halves) is read to its end by the
/// streaming decoder: the restore (a dry run) reports the source's hashkv, as from the store as
/// the Go tool wrote it.
#[test]
fn deltas_in_two_gzip_members_restore_the_same_history() {
    let (tmp, container) = copy_store(STORE_34);
    let deltas = objects(&container, "Incr");
    assert!(deltas.len() > 5, "{deltas:?}");
    for delta in &deltas {
        let plain = gunzip(delta);
        let (first, second) = plain.split_at(plain.len() / 2);
        fs::write(delta, [flate2_gzip(first), flate2_gzip(second)].concat()).unwrap();
    }
    let data_dir = tmp.path().join("data");
    let out = restore(&container, &data_dir, &["--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let expected: serde_json::Value =
        serde_json::from_slice(&fs::read(go_testdata().join(STORE_34).join("hashkv-final.json")).unwrap()).unwrap();
    let hash = expected[0]["HashKV"]["hash"].as_u64().unwrap();
    assert!(stdout.contains(&format!("hashkv at revision 338: {hash}")), "{stdout}");
}
