//! Client-side encryption (`--encryption-key-file`, issue 19) through the real binary against
//! real etcd 3.4 and 3.5 on every store that runs here (Local, SeaweedFS S3, Azurite):
//! snapshot → the store holds only ciphertext → restore → etcd boots with an equal `hashkv`;
//! a key rotation mid-chain restores; a wrong key (exit 6) and a flipped byte (exit 3) are
//! refused naming the object and leave no data dir; `age -d` (Debian's `age`) and gunzip turn a
//! stored object back into etcd's snapshot; `copy` re-encrypts to another key.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use brcore::encrypt::Keys;
use testsupport::azurite::Azurite;
use testsupport::seaweed::SeaweedS3;
use testsupport::{Etcd, EtcdVersion, free_port};

/// A value written to etcd that must never appear in the store's bytes.
const MARKER: &str = "etcdbr-secret-value-7f3a9c";

struct Store {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Store {
    fn local(dir: &Path) -> Store {
        let args =
            ["--storage-provider", "Local", "--store-container", dir.to_str().unwrap(), "--store-prefix", "etcd-main"];
        Store { args: args.iter().map(|s| s.to_string()).collect(), env: vec![] }
    }
}

fn etcdbrctl(store: &Store) -> Command {
    let mut cmd = common::etcdbrctl();
    for (k, v) in &store.env {
        cmd.env(k, v);
    }
    cmd
}

fn key_file(dir: &Path, name: &str, keys: &[&Keys]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, keys.iter().map(|k| k.to_file_text()).collect::<String>()).unwrap();
    path
}

/// Runs `etcdbrctl snapshot` (a full snapshot at start, deltas every second) while `writes`
/// writes to etcd, then stops it with SIGTERM.
fn snapshot_while(etcd: &Etcd, store: &Store, key: &Path, extra: &[&str], writes: impl FnOnce()) {
    let child = etcdbrctl(store)
        .args(["snapshot", "--endpoints", &etcd.endpoint(), "--schedule", "0 0 1 1 *", "--delta-snapshot-period", "1s"])
        .args(["--garbage-collection-period", "1m", "--encryption-key-file", key.to_str().unwrap()])
        .args(extra)
        .args(&store.args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start etcdbrctl snapshot");
    std::thread::sleep(Duration::from_millis(1500));
    writes();
    std::thread::sleep(Duration::from_millis(2000));
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let out = testsupport::wait_output(child, Duration::from_secs(30));
    assert!(out.status.success(), "etcdbrctl snapshot failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn write_some(etcd: &Etcd, tag: &str, n: usize) {
    for i in 0..n {
        etcd.etcdctl(&["put", &format!("/secret/{tag}-{i}"), &format!("{MARKER}-{tag}-{i}")]);
    }
}

/// `etcdbrctl restore` into `<dir>/restored`; returns its output and the data dir.
fn restore(store: &Store, key: Option<&Path>, dir: &Path, peer: u16) -> (Output, PathBuf) {
    let data_dir = dir.join("restored");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = etcdbrctl(store);
    cmd.args(["restore", "--data-dir", data_dir.to_str().unwrap(), "--name", "n1"])
        .args(["--initial-cluster", &format!("n1={peer_url}"), "--initial-advertise-peer-urls", &peer_url])
        .args(&store.args);
    if let Some(key) = key {
        cmd.args(["--encryption-key-file", key.to_str().unwrap()]);
    }
    (cmd.output().expect("run etcdbrctl restore"), data_dir)
}

/// Restores and boots etcd on the result: it must serve the source's data at `rev`.
fn restore_and_compare(store: &Store, key: &Path, source: &Etcd, version: EtcdVersion, what: &str) {
    let rev = source.revision();
    let tmp = tempfile::tempdir().unwrap();
    let peer = free_port();
    let (out, data_dir) = restore(store, Some(key), tmp.path(), peer);
    assert!(out.status.success(), "{what}: restore failed: {}", String::from_utf8_lossy(&out.stderr));
    let restored = Etcd::start_on(version, &data_dir, "n1", peer, free_port());
    assert_eq!(restored.revision(), rev, "{what}: restored revision");
    assert_eq!(restored.hashkv(rev).0, source.hashkv(rev).0, "{what}: hashkv of the restored member");
    assert_eq!(restored.get_all(rev).0, source.get_all(rev).0, "{what}: keys");
}

/// A refused restore: `code`, the message names `object_part`, nothing left where etcd boots.
fn assert_refused(out: &Output, data_dir: &Path, code: i32, object_part: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
    assert!(stderr.contains(object_part), "{what}: the error names {object_part}: {stderr}");
    assert!(!data_dir.join("member").exists(), "{what}: a data dir was left");
    let part = PathBuf::from(format!("{}.part", data_dir.display()));
    assert!(!part.exists(), "{what}: {} was left", part.display());
}

/// Every stored object (path, bytes) of a Local store.
fn objects(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    common::files(dir).into_iter().map(|(p, bytes)| (dir.join(p), bytes)).collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The `age` command-line tool (Debian's `age`, installed by scripts/install-test-deps.sh).
fn age_cli() -> PathBuf {
    let path = PathBuf::from("/usr/bin/age");
    assert!(
        path.exists(),
        "the age command-line tool is missing: run `bash scripts/install-test-deps.sh` (apt-get install age)"
    );
    path
}

/// Snapshots uncompressed (so that plaintext would show), with etcd `version`: no object holds
/// the marker or a key written to etcd, every object is age's format under a `.age` name, `age
/// -d` with the key file gives back a db that holds the marker, and the restore is bit-exact.
fn ciphertext_only_and_round_trip(version: EtcdVersion, compression: &[&str], what: &str) {
    let source = Etcd::start(version);
    write_some(&source, "before", 20);
    let tmp = tempfile::tempdir().unwrap();
    let keys = Keys::generate();
    let key = key_file(tmp.path(), "backup.key", &[&keys]);
    let container = tmp.path().join("backups");
    let store = Store::local(&container);
    snapshot_while(&source, &store, &key, compression, || {
        write_some(&source, "after", 10);
        source.etcdctl(&["del", "/secret/before-3"]);
    });

    let stored = objects(&container);
    let snapshots: Vec<_> = stored.iter().filter(|(p, _)| p.to_string_lossy().contains("/v2/")).collect();
    assert!(
        snapshots.iter().any(|(p, _)| p.file_name().unwrap().to_string_lossy().starts_with("Full-")),
        "{what}: {stored:?}"
    );
    assert!(snapshots.iter().any(|(p, _)| p.file_name().unwrap().to_string_lossy().starts_with("Incr-")), "{what}");
    for (path, bytes) in &stored {
        assert!(path.to_string_lossy().ends_with(".age"), "{what}: {} is not encrypted", path.display());
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{what}: {}", path.display());
        for needle in [MARKER, "/secret/before-1", "/secret/after-2"] {
            assert!(!contains(bytes, needle), "{what}: {needle} in {}", path.display());
        }
    }

    // By hand: `age -d -i key` (then gunzip, for gzip objects) gives etcd's snapshot.
    let (full, _) =
        snapshots.iter().find(|(p, _)| p.file_name().unwrap().to_string_lossy().starts_with("Full-")).unwrap();
    let plain = tmp.path().join("full.plain");
    let out = Command::new(age_cli())
        .args(["-d", "-i", key.to_str().unwrap(), "-o", plain.to_str().unwrap(), full.to_str().unwrap()])
        .output()
        .expect("run age");
    assert!(out.status.success(), "{what}: age -d: {}", String::from_utf8_lossy(&out.stderr));
    let mut db = std::fs::read(&plain).unwrap();
    if full.to_string_lossy().ends_with(".gz.age") {
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&db[..]), &mut inflated).unwrap();
        db = inflated;
    }
    assert!(contains(&db, &format!("{MARKER}-before-1")), "{what}: the decrypted snapshot holds etcd's data");
    let db_path = tmp.path().join("full.db");
    std::fs::write(&db_path, &db).unwrap();
    let check = common::etcdbrctl().args(["db", "check", db_path.to_str().unwrap()]).output().unwrap();
    assert!(
        check.status.success(),
        "{what}: db check of the decrypted snapshot: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    restore_and_compare(&store, &key, &source, version, what);

    // verify and status read the encrypted store too.
    let out = etcdbrctl(&store)
        .args(["verify", "--endpoints", &source.endpoint(), "--temp-dir", tmp.path().join("verify").to_str().unwrap()])
        .args(["--encryption-key-file", key.to_str().unwrap()])
        .args(&store.args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("BIT-EXACT"),
        "{what}: verify: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn etcd_3_5_gzip_objects_are_ciphertext_and_restore_bit_exact() {
    ciphertext_only_and_round_trip(EtcdVersion::V3_5, &[], "etcd 3.5, gzip");
}

#[test]
fn etcd_3_4_uncompressed_objects_are_ciphertext_and_restore_bit_exact() {
    ciphertext_only_and_round_trip(EtcdVersion::V3_4, &["--compress-snapshots=false"], "etcd 3.4, uncompressed");
}

/// Old key A, then a rotation to B (the key file: B first, A below): a chain whose full snapshot
/// and first deltas are A's and later deltas B's restores; with B alone, the A objects are
/// refused naming the object (exit 6); a flipped byte is refused (exit 3); `copy` re-encrypts
/// everything to a third key, which alone then restores the copy.
#[test]
fn key_rotation_mid_chain_wrong_key_damage_and_reencrypting_copy() {
    let version = EtcdVersion::V3_5;
    let source = Etcd::start(version);
    write_some(&source, "a", 10);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (Keys::generate(), Keys::generate(), Keys::generate());
    let key_a = key_file(tmp.path(), "a.key", &[&a]);
    let key_ba = key_file(tmp.path(), "ba.key", &[&b, &a]);
    let key_b = key_file(tmp.path(), "b.key", &[&b]);
    let key_c = key_file(tmp.path(), "c.key", &[&c]);
    let container = tmp.path().join("backups");
    let store = Store::local(&container);
    let v2 = container.join("etcd-main/v2");
    let names = || -> Vec<String> {
        let mut n: Vec<String> =
            std::fs::read_dir(&v2).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    };
    snapshot_while(&source, &store, &key_a, &[], || write_some(&source, "a-delta", 5));
    let first_run = names();
    snapshot_while(&source, &store, &key_ba, &[], || write_some(&source, "b-delta", 5));
    // Keep the first run's full snapshot only: its deltas (A) and the second run's (B) then
    // form one chain.
    let first_full = first_run.iter().find(|n| n.starts_with("Full-")).expect("a full snapshot").clone();
    for n in names() {
        if n.starts_with("Full-") && n != first_full {
            std::fs::remove_file(v2.join(&n)).unwrap();
        }
    }
    let b_deltas: Vec<String> =
        names().into_iter().filter(|n| n.starts_with("Incr-") && !first_run.contains(n)).collect();
    assert!(!b_deltas.is_empty(), "the second run stored deltas: {:?}", names());
    restore_and_compare(&store, &key_ba, &source, version, "rotation mid-chain");

    // Only the new key: the first object (A's) is refused, naming it.
    let t = tempfile::tempdir().unwrap();
    let (out, data_dir) = restore(&store, Some(&key_b), t.path(), free_port());
    assert_refused(&out, &data_dir, 6, ".age", "restore with the new key only");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first_run.iter().any(|n| stderr.contains(n.as_str())), "names an object of key A: {stderr}");
    assert!(stderr.contains(&b.write_recipient()), "names the key tried: {stderr}");
    // No key: refused too, saying a key is needed, never a restore of something else.
    let (out, data_dir) = restore(&store, None, t.path(), free_port());
    assert_refused(&out, &data_dir, 6, "--encryption-key-file", "restore without a key");

    // copy re-encrypts to C; C alone restores the copy.
    let copy_dir = tmp.path().join("copy");
    let dest = Store::local(&copy_dir);
    let out = etcdbrctl(&dest)
        .args(["copy", "--source-store-container", container.to_str().unwrap()])
        .args([
            "--source-encryption-key-file",
            key_ba.to_str().unwrap(),
            "--encryption-key-file",
            key_c.to_str().unwrap(),
        ])
        .args(&dest.args)
        .output()
        .unwrap();
    assert!(out.status.success(), "copy: {}", String::from_utf8_lossy(&out.stderr));
    for (path, bytes) in objects(&copy_dir) {
        assert!(path.to_string_lossy().ends_with(".age") && !contains(&bytes, MARKER), "{}", path.display());
    }
    restore_and_compare(&dest, &key_c, &source, version, "copy re-encrypted to another key");
    let (out, data_dir) = restore(&dest, Some(&key_ba), t.path(), free_port());
    assert_refused(&out, &data_dir, 6, ".age", "the copy with the old keys");

    // A flipped byte in the middle of the newest delta: damaged, exit 3, naming it.
    let victim = v2.join(b_deltas.last().unwrap());
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    let (out, data_dir) = restore(&store, Some(&key_ba), t.path(), free_port());
    assert_refused(&out, &data_dir, 3, b_deltas.last().unwrap(), "a flipped byte");
}

/// An object store under test: how `etcdbrctl` reaches it (for a store prefix), and how the test
/// reads its raw objects past etcdbr's decryption.
struct ObjectStore {
    what: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    config: snapstore::StoreConfig,
}

impl ObjectStore {
    fn store(&self, prefix: &str) -> Store {
        let mut args = self.args.clone();
        args.extend(["--store-prefix".to_string(), prefix.to_string()]);
        Store { args, env: self.env.clone() }
    }

    /// Every object under `prefix` as the store holds it (read through the store's own API
    /// without a key: the bytes an attacker with read access to the bucket gets).
    fn raw_objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        use brcore::{Snapstore, SnapstoreExt};
        let env = self.env.clone();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let store = snapstore::OpendalStore::open_with_env(&self.config, &lookup).expect("open the store raw");
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut out = Vec::new();
            for meta in store.list(prefix).await.expect("list the store") {
                let bytes = store.read_to_bytes(&meta.key).await.expect("read an object");
                out.push((meta.key, bytes.to_vec()));
            }
            out
        })
    }
}

/// Snapshot and restore with encryption on an object store, with etcd 3.5 (gzip) and 3.4
/// (uncompressed, so plaintext would show), each under its own prefix: every stored object is
/// age's format under an `.age` name and holds neither a value nor a key written to etcd; the
/// restore is bit-exact; without the key the same restore is refused naming an `.age` object.
fn object_store_round_trip(store: &ObjectStore) {
    for (version, prefix, extra, suffix) in [
        (EtcdVersion::V3_5, "etcd-35", &[][..], ".gz.age"),
        (EtcdVersion::V3_4, "etcd-34", &["--compress-snapshots=false"][..], ".age"),
    ] {
        let what = format!("{}, {version:?}", store.what);
        let source = Etcd::start(version);
        write_some(&source, "x", 10);
        let tmp = tempfile::tempdir().unwrap();
        let key = key_file(tmp.path(), "k.key", &[&Keys::generate()]);
        let cli = store.store(prefix);
        snapshot_while(&source, &cli, &key, extra, || write_some(&source, "y", 5));
        let raw = store.raw_objects(prefix);
        assert!(raw.iter().any(|(k, _)| k.contains("/Full-")), "{what}: a full snapshot is stored: {raw:?}");
        assert!(raw.iter().any(|(k, _)| k.contains("/Incr-")), "{what}: a delta is stored");
        for (name, bytes) in &raw {
            assert!(name.ends_with(".age"), "{what}: {name} is not encrypted");
            assert!(bytes.starts_with(b"age-encryption.org/v1"), "{what}: {name} is not age's format");
            for needle in [MARKER, "/secret/x-", "/secret/y-"] {
                assert!(!contains(bytes, needle), "{what}: {name} holds {needle:?} in plaintext");
            }
        }
        restore_and_compare(&cli, &key, &source, version, &what);
        let (out, data_dir) = restore(&cli, None, tmp.path(), free_port());
        assert_refused(&out, &data_dir, 6, suffix, &what);
    }
}

#[test]
fn encrypted_round_trip_through_s3() {
    let seaweed = SeaweedS3::start();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("accessKeyID"), seaweed.access_key()).unwrap();
    std::fs::write(creds.path().join("secretAccessKey"), seaweed.secret_key()).unwrap();
    std::fs::write(creds.path().join("region"), "us-east-1").unwrap();
    let args = ["--storage-provider", "S3", "--store-container", seaweed.bucket()];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.extend(["--store-endpoint-override".to_string(), seaweed.endpoint()]);
    let env = vec![("AWS_APPLICATION_CREDENTIALS".into(), creds.path().display().to_string())];
    let config = snapstore::StoreConfig::new(snapstore::Provider::S3, seaweed.bucket())
        .with_endpoint_override(seaweed.endpoint());
    object_store_round_trip(&ObjectStore { what: "S3 (SeaweedFS)", args, env, config });
}

#[test]
fn encrypted_round_trip_through_azure_blob() {
    let azurite = Azurite::start();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("storageAccount"), azurite.account()).unwrap();
    std::fs::write(creds.path().join("storageKey"), azurite.key()).unwrap();
    let args = ["--storage-provider", "ABS", "--store-container", azurite.container()];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.extend(["--store-endpoint-override".to_string(), azurite.endpoint()]);
    let env = vec![("AZURE_APPLICATION_CREDENTIALS".into(), creds.path().display().to_string())];
    let config = snapstore::StoreConfig::new(snapstore::Provider::ABS, azurite.container())
        .with_endpoint_override(azurite.endpoint());
    object_store_round_trip(&ObjectStore { what: "Azure Blob (Azurite)", args, env, config });
}

/// A key file that is not one: exit 2 naming the flag, before anything runs; the key's text is
/// never printed.
#[test]
fn a_bad_key_file_is_a_usage_error_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.key");
    std::fs::write(&bad, "AGE-SECRET-KEY-1SOMETHINGSECRET\n").unwrap();
    let store = Store::local(&tmp.path().join("b"));
    for key in [bad.clone(), tmp.path().join("missing.key")] {
        let out = etcdbrctl(&store)
            .args(["status", "--encryption-key-file", key.to_str().unwrap()])
            .args(&store.args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--encryption-key-file"), "{stderr}");
        assert!(!stderr.contains("SOMETHINGSECRET"), "{stderr}");
    }
    // Without a store it is refused like the other store flags.
    let out = common::etcdbrctl()
        .args([
            "restore",
            "--encryption-key-file",
            bad.to_str().unwrap(),
            "--data-dir",
            tmp.path().join("d").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
