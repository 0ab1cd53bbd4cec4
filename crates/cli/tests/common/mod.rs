//! What the `etcdbrctl` tests share: the binary cargo built, run without the store and
//! credential variables of the environment the tests run in (each test sets what it means), and
//! the restore from a Local store that many of them start with.
#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// The reference's variables that name a store or its credentials, and ours for the encryption
/// key: none of them may reach a command from the shell that runs the tests.
const AMBIENT: [&str; 6] = [
    "STORAGE_CONTAINER",
    "SOURCE_STORAGE_CONTAINER",
    "AWS_APPLICATION_CREDENTIALS",
    "AWS_APPLICATION_CREDENTIALS_JSON",
    "AZURE_APPLICATION_CREDENTIALS",
    "ETCDBR_ENCRYPTION_KEY_FILE",
];

/// `etcdbrctl` with no arguments yet and none of [`AMBIENT`] in its environment.
pub fn etcdbrctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"));
    for var in AMBIENT {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `etcdbrctl args` to its end.
pub fn run(args: &[&str]) -> Output {
    etcdbrctl().args(args).output().expect("run etcdbrctl")
}

/// `etcdbrctl restore` of the Local store `container` into `data_dir`; the caller adds the
/// rest of the flags.
pub fn restore_local(container: &Path, data_dir: &Path) -> Command {
    let mut cmd = etcdbrctl();
    cmd.args(["restore", "--storage-provider", "Local", "--store-container"])
        .arg(container)
        .arg("--data-dir")
        .arg(data_dir);
    cmd
}

/// [`restore_local`] as the one member `n1` of a new cluster, its peer URL on `peer`.
pub fn restore_one(container: &Path, data_dir: &Path, peer: u16) -> Command {
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = restore_local(container, data_dir);
    cmd.args(["--name", "n1", "--initial-cluster", &format!("n1={peer_url}"), "--initial-advertise-peer-urls"])
        .arg(&peer_url);
    cmd
}

/// Every file under `dir` (paths relative to it) with its bytes: to show that a command
/// changed nothing, or that two dirs hold the same.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The changes the round-trip tests make while a snapshotter watches `source`: updates, a txn,
/// a range delete and a leased key; returns the lease's id.
pub fn change_keys(source: &testsupport::Etcd) -> String {
    for i in 0..10 {
        source.etcdctl(&["put", &format!("/app/k{i}"), &format!("updated-{i}")]);
    }
    source.etcdctl_stdin(&["txn"], "\n\nput /app/txn-a 1\nput /app/txn-b 2\ndel /app/k29\n\n\n");
    source.etcdctl(&["del", "--prefix", "/app/k2"]);
    let lease = source.etcdctl(&["lease", "grant", "900"]);
    let lease_id = lease.split_whitespace().nth(1).expect("lease id").to_string();
    source.etcdctl(&["put", "--lease", &lease_id, "/app/leased", "x"]);
    lease_id
}

/// Copies the snapshots of the Go-made test store `store` (a folder of
/// `testsupport::go_testdata()`) into `container/v2`.
pub fn copy_go_store(store: &str, container: &Path) {
    let v2 = container.join("v2");
    std::fs::create_dir_all(&v2).unwrap();
    for e in std::fs::read_dir(testsupport::go_testdata().join(store).join("store/v2")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), v2.join(e.file_name())).unwrap();
    }
}

/// A child process (a server, an etcd) killed and waited for when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Output bytes as text, for messages and `contains` checks.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
