//! Flags checked at start: a wrong spelling is exit 2 naming the flag, before any work (no
//! connection to etcd, no file or directory created); what a killed restore left is reported
//! with its size and removed at the next run; a data dir that is a mount point restores.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::run as etcdbrctl;
use testsupport::{Etcd, EtcdVersion, Tmpfs, free_port, go_testdata};

const STORE_35: &str = "etcdbrctl-0.43.0-etcd-3.5.30";

/// Every path under `dir` (relative, sorted), to show nothing was created.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A listener posing as etcd; a sub-command that was refused at start never connects to it.
struct FakeEtcd(TcpListener);

impl FakeEtcd {
    fn new() -> FakeEtcd {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        FakeEtcd(l)
    }
    fn endpoint(&self) -> String {
        format!("http://{}", self.0.local_addr().unwrap())
    }
    fn was_contacted(&self) -> bool {
        self.0.accept().is_ok()
    }
}

#[test]
fn wrong_flag_values_are_usage_errors_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let file = root.join("a-file");
    fs::write(&file, b"not a directory").unwrap();
    let store = root.join("store").display().to_string();
    let data = root.join("data").display().to_string();
    let file_s = file.display().to_string();
    let under_file = file.join("tmp").display().to_string();
    let etcd = FakeEtcd::new();
    let ep = etcd.endpoint();
    let local = ["--storage-provider", "Local", "--store-container", store.as_str()];
    let before = tree(root);

    // (arguments, the flag the message must name)
    let mut cases: Vec<(Vec<&str>, &str)> = Vec::new();
    for prefix in ["/p", "./p", "p/.", "p//q", "../p", " p"] {
        for cmd in ["snapshot", "restore", "status", "compact", "server", "initialize", "copy"] {
            let mut argv = vec![cmd];
            argv.extend(local);
            argv.extend(["--store-prefix", prefix]);
            if matches!(cmd, "snapshot" | "server" | "status") {
                argv.extend(["--endpoints", ep.as_str()]);
            }
            if matches!(cmd, "restore" | "initialize" | "server" | "compact") {
                argv.extend(["--data-dir", data.as_str()]);
            }
            cases.push((argv, "--store-prefix"));
        }
    }
    cases.push((
        vec!["copy", "--storage-provider", "Local", "--store-container", &store, "--source-store-prefix", "/p"],
        "--source-store-prefix",
    ));
    for cmd in ["restore", "initialize", "server", "compact"] {
        let mut argv = vec![cmd];
        argv.extend(local);
        argv.extend(["--data-dir", file_s.as_str()]);
        cases.push((argv, "--data-dir"));
        let mut argv = vec![cmd];
        argv.extend(local);
        argv.extend(["--data-dir", data.as_str(), "--restoration-temp-snapshots-dir", under_file.as_str()]);
        cases.push((argv, "--restoration-temp-snapshots-dir"));
    }
    cases.push((
        vec!["restore", "--storage-provider", "Local", "--store-container", &file_s, "--data-dir", &data],
        "--store-container",
    ));
    cases.push((
        vec![
            "snapshot",
            "--storage-provider",
            "Local",
            "--store-container",
            &store,
            "--snapstore-temp-directory",
            &file_s,
            "--endpoints",
            &ep,
        ],
        "--snapstore-temp-directory",
    ));
    cases.push((
        vec!["snapshot", "--storage-provider", "S3", "--store-container", "bucket/path", "--endpoints", &ep],
        "--store-container",
    ));
    cases.push((vec!["status", "--storage-provider", "ABS", "--store-container", "my container"], "--store-container"));
    // Values that went together badly were exit 1 after opening the store; now exit 2 first.
    cases.push((
        vec![
            "restore",
            "--storage-provider",
            "Local",
            "--store-container",
            &store,
            "--data-dir",
            &data,
            "--name",
            "nobody",
        ],
        "--name",
    ));
    cases.push((
        vec![
            "restore",
            "--storage-provider",
            "Local",
            "--store-container",
            &store,
            "--data-dir",
            &data,
            "--initial-cluster",
            "x",
        ],
        "--initial-cluster",
    ));
    cases.push((
        vec![
            "initialize",
            "--storage-provider",
            "Local",
            "--store-container",
            &store,
            "--data-dir",
            &data,
            "--dry-run",
        ],
        "--dry-run",
    ));
    cases.push((
        vec![
            "snapshot",
            "--storage-provider",
            "Local",
            "--store-container",
            &store,
            "--schedule",
            "every minute",
            "--endpoints",
            &ep,
        ],
        "--schedule",
    ));
    cases.push((
        vec![
            "server",
            "--storage-provider",
            "Local",
            "--store-container",
            &store,
            "--data-dir",
            &data,
            "--reelection-period",
            "10ms",
            "--endpoints",
            &ep,
        ],
        "--reelection-period",
    ));
    cases.push((
        vec![
            "compact",
            "--storage-provider",
            "Local",
            "--store-container",
            &store,
            "--data-dir",
            &data,
            "--compression-policy",
            "bzip2",
        ],
        "--compression-policy",
    ));

    for (argv, flag) in &cases {
        let out = etcdbrctl(argv);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {stderr}");
        assert!(stderr.contains(flag), "{argv:?}: the message must name {flag}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!etcd.was_contacted(), "a refused command connected to etcd");
    assert_eq!(tree(root), before, "a refused command created files or directories");
}

/// Restores the Go-made test store into `data_dir` as member n1 on `peer`.
fn restore(data_dir: &Path, peer: u16) -> Output {
    let container = go_testdata().join(STORE_35).join("store");
    common::restore_one(&container, data_dir, peer).output().expect("run etcdbrctl")
}

/// etcd booted on `data_dir` serves the Go tool's source data (its recorded hashkv).
fn judge(data_dir: &Path, peer: u16) {
    let etcd = Etcd::start_on(EtcdVersion::V3_5, data_dir, "n1", peer, free_port());
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(go_testdata().join(STORE_35).join("meta.json")).unwrap()).unwrap();
    let rev = meta["final_revision"].as_i64().unwrap();
    let want: serde_json::Value =
        serde_json::from_slice(&fs::read(go_testdata().join(STORE_35).join("hashkv-final.json")).unwrap()).unwrap();
    assert_eq!(etcd.hashkv(rev).0 as u64, want[0]["HashKV"]["hash"].as_u64().unwrap(), "hashkv");
}

#[test]
fn a_killed_restores_leftovers_are_reported_with_their_size_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("new.etcd");
    let part = tmp.path().join("new.etcd.part");
    fs::create_dir_all(part.join("member/snap")).unwrap();
    fs::write(part.join("member/snap/db"), vec![7u8; 3 << 20]).unwrap();
    let peer = free_port();
    let out = restore(&data_dir, peer);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("removing 3.0 MiB left in {} by a restore that did not finish", part.display())),
        "{stderr}"
    );
    assert!(!part.exists());
    judge(&data_dir, peer);

    // initialize removes them too, also when it has nothing to restore (no store here).
    let other = tmp.path().join("other");
    let part = tmp.path().join("other.part");
    fs::create_dir_all(part.join("member")).unwrap();
    fs::write(part.join("member/x"), vec![1u8; 4096]).unwrap();
    let out = etcdbrctl(&["initialize", "--data-dir", other.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("removing 4.0 KiB left in"), "{stderr}");
    assert!(!part.exists());
}

#[test]
fn a_data_dir_that_is_a_mount_point_restores_in_place() {
    // The part dir beside a mount point would be on the parent's filesystem, and the final
    // rename could not cross into the mount; it is built inside the mount instead.
    let mount = Tmpfs::mount(256);
    let peer = free_port();
    let out = restore(mount.path(), peer);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(mount.path()).first().map(|p| p.display().to_string()), Some("member".to_string()));
    assert!(!mount.join(".etcdbr-restore.part").exists());
    let beside = mount.path().with_file_name(format!("{}.part", mount.path().file_name().unwrap().to_string_lossy()));
    assert!(!beside.exists());
    judge(mount.path(), peer);
}
