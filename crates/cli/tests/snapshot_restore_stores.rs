//! The whole job through the real binary on each store that runs here: `etcdbrctl snapshot`
//! against real etcd while it is written to, SIGTERM, then `etcdbrctl restore` from the same
//! store; etcd booted on the result serves the source's data with an equal `hashkv`.
//! Local (a directory), S3 (SeaweedFS's gateway) and Azure Blob (Azurite).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::etcdbrctl;
use testsupport::azurite::Azurite;
use testsupport::seaweed::SeaweedS3;
use testsupport::{Etcd, EtcdVersion, free_port};

/// How the binary reaches one store: flags and environment.
struct StoreFlags {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn round_trip(store: &StoreFlags, what: &str) {
    let source = Etcd::start(EtcdVersion::V3_5);
    for i in 0..30 {
        source.etcdctl(&["put", &format!("/app/k{i}"), &format!("v{i}")]);
    }
    let mut snapshot = etcdbrctl();
    snapshot
        .args([
            "snapshot",
            "--endpoints",
            &source.endpoint(),
            "--schedule",
            "0 0 1 1 *",
            "--delta-snapshot-period",
            "1s",
        ])
        .args(["--garbage-collection-period", "1m"])
        .args(&store.args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &store.env {
        snapshot.env(k, v);
    }
    let child = snapshot.spawn().expect("start etcdbrctl snapshot");
    std::thread::sleep(Duration::from_millis(1500));
    // Changes after the full snapshot: updates, a txn, a range delete, a leased key.
    let lease_id = common::change_keys(&source);
    std::thread::sleep(Duration::from_millis(1500));
    let rev = source.revision();
    let (source_hash, _, _) = source.hashkv(rev);
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let out = testsupport::wait_output(child, Duration::from_secs(30));
    assert!(out.status.success(), "{what}: etcdbrctl snapshot failed: {}", String::from_utf8_lossy(&out.stderr));

    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("restored");
    let peer = free_port();
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut restore = etcdbrctl();
    restore
        .args(["restore", "--data-dir", data_dir.to_str().unwrap(), "--name", "n1"])
        .args(["--initial-cluster", &format!("n1={peer_url}"), "--initial-advertise-peer-urls", &peer_url])
        .args(&store.args);
    for (k, v) in &store.env {
        restore.env(k, v);
    }
    let out = restore.output().expect("run etcdbrctl restore");
    assert!(out.status.success(), "{what}: restore failed: {}", String::from_utf8_lossy(&out.stderr));
    let restored = Etcd::start_on(EtcdVersion::V3_5, &data_dir, "n1", peer, free_port());
    assert_eq!(restored.revision(), rev, "{what}: restored revision");
    assert_eq!(restored.hashkv(rev).0, source_hash, "{what}: hashkv of the restored member");
    let (want, _) = source.get_all(rev);
    let (got, _) = restored.get_all(rev);
    assert_eq!(got, want, "{what}: keys");
    let ttl = restored.etcdctl(&["lease", "timetolive", &lease_id, "--keys"]);
    assert!(ttl.contains("TTL(900s)") && ttl.contains("/app/leased"), "{what}: lease after restore: {ttl}");
}

#[test]
fn snapshot_and_restore_through_the_local_store() {
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("backups");
    let flags = StoreFlags {
        args: vec![
            "--storage-provider".into(),
            "Local".into(),
            "--store-container".into(),
            container.display().to_string(),
            "--store-prefix".into(),
            "etcd-main".into(),
        ],
        env: vec![],
    };
    round_trip(&flags, "Local");
    assert!(Path::new(&container).join("etcd-main/v2").is_dir());
}

#[test]
fn snapshot_and_restore_through_s3() {
    let seaweed = SeaweedS3::start();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("accessKeyID"), seaweed.access_key()).unwrap();
    std::fs::write(creds.path().join("secretAccessKey"), seaweed.secret_key()).unwrap();
    std::fs::write(creds.path().join("region"), "us-east-1").unwrap();
    let flags = StoreFlags {
        args: vec![
            "--storage-provider".into(),
            "S3".into(),
            "--store-container".into(),
            seaweed.bucket().into(),
            "--store-prefix".into(),
            "etcd-main".into(),
            "--store-endpoint-override".into(),
            seaweed.endpoint(),
        ],
        env: vec![("AWS_APPLICATION_CREDENTIALS".into(), creds.path().display().to_string())],
    };
    round_trip(&flags, "S3 (SeaweedFS)");
}

#[test]
fn snapshot_and_restore_through_azure_blob() {
    let azurite = Azurite::start();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("storageAccount"), azurite.account()).unwrap();
    std::fs::write(creds.path().join("storageKey"), azurite.key()).unwrap();
    let flags = StoreFlags {
        args: vec![
            "--storage-provider".into(),
            "ABS".into(),
            "--store-container".into(),
            azurite.container().into(),
            "--store-prefix".into(),
            "etcd-main".into(),
            "--store-endpoint-override".into(),
            azurite.endpoint(),
        ],
        env: vec![("AZURE_APPLICATION_CREDENTIALS".into(), creds.path().display().to_string())],
    };
    round_trip(&flags, "Azure Blob (Azurite)");
}
