//! Running a real etcd member for generation and for the replay baseline.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A port the OS reports free right now (bind to port 0, read it, close).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// How to start a member.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// The `etcd` binary.
    pub bin: PathBuf,
    /// `--data-dir` (created by etcd if absent).
    pub data_dir: PathBuf,
    /// `--name`; must match the member name of a restored data dir.
    pub name: String,
    /// Peer port; must match the peer URL of a restored data dir.
    pub peer_port: u16,
    /// `--unsafe-no-fsync`: the Go tool's embedded etcd replays with it (PR #991), and
    /// generation does not need durability.
    pub no_fsync: bool,
}

/// A running etcd process, killed when dropped.
#[derive(Debug)]
pub struct EtcdProc {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl EtcdProc {
    /// Starts etcd and waits until it answers `/health` (at most 60 s, the Go tool's limit).
    pub fn start(cfg: &EtcdConfig) -> Result<EtcdProc> {
        let client_port = free_port()?;
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{}", cfg.peer_port);
        let log = cfg.data_dir.with_extension("etcd.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&cfg.bin);
        cmd.arg("--name")
            .arg(&cfg.name)
            .arg("--data-dir")
            .arg(&cfg.data_dir)
            .arg("--listen-client-urls")
            .arg(&endpoint)
            .arg("--advertise-client-urls")
            .arg(&endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{}={peer}", cfg.name))
            // 8 GiB, the quota the Go tool's restore uses for its embedded etcd (#636).
            .arg("--quota-backend-bytes")
            .arg("8589934592")
            .arg("--max-request-bytes")
            .arg("10485760")
            .arg("--max-txn-ops")
            .arg("10000")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if cfg.no_fsync {
            cmd.arg("--unsafe-no-fsync");
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", cfg.bin.display()))?;
        let mut proc = EtcdProc { child, endpoint, log };
        proc.wait_healthy(Duration::from_secs(60))?;
        Ok(proc)
    }

    fn wait_healthy(&mut self, limit: Duration) -> Result<()> {
        let started = Instant::now();
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "etcd exited with {status} before it was ready; log {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            if health_ok(&addr) {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("etcd was not healthy within {limit:?}; log:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The last lines of etcd's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops etcd the way the Go tool closes its embedded etcd: SIGTERM, wait for the exit.
    pub fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One plain-HTTP `GET /health`; true on a 200 with `"health":"true"`.
fn health_ok(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    (body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200")) && body.contains("\"health\":\"true\"")
}

/// Runs `etcdutl snapshot restore` (or `etcdctl` for 3.4) of `snapshot` into `data_dir` for a
/// one-member cluster `name=http://127.0.0.1:peer_port`.
pub fn snapshot_restore(tool: &Path, snapshot: &Path, data_dir: &Path, name: &str, peer_port: u16) -> Result<()> {
    let peer = format!("http://127.0.0.1:{peer_port}");
    let out = Command::new(tool)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--name")
        .arg(name)
        .arg("--initial-cluster")
        .arg(format!("{name}={peer}"))
        .arg("--initial-advertise-peer-urls")
        .arg(&peer)
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    if !out.status.success() {
        bail!("{} snapshot restore failed: {}", tool.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
