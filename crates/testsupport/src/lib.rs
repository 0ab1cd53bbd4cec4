//! Test helpers: the real components etcdbr talks to, started as child processes on free
//! loopback ports in temp dirs, killed on drop.
//!
//! A missing binary fails the test with the command that installs it: nothing is skipped.
//! Binaries are looked up under `$ETCDBR_DEPS` (default `/opt/etcdbr-deps`), where
//! `scripts/install-test-deps.sh` puts them.
//!
//! The one exception is the Kubernetes API, of which no server can be installed from the
//! package registries: [`kube::KubeApi`] is a stand-in written for the tests that serves
//! `coordination.k8s.io/v1` Leases with the real server's semantics over HTTPS.

pub mod azurite;
pub mod etcd;
pub mod kube;
mod process;
pub mod seaweed;
pub mod tls;
pub mod tmpfs;

use std::net::TcpListener;
use std::path::PathBuf;

pub use etcd::{Etcd, EtcdVersion};
pub use kube::KubeApi;
pub use process::{XorShift, http_get};
pub use tls::PrivateCa;
pub use tmpfs::Tmpfs;

/// Where `scripts/install-test-deps.sh` installs the test dependencies.
pub fn deps_dir() -> PathBuf {
    std::env::var_os("ETCDBR_DEPS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/etcdbr-deps"))
}

/// The path of a required binary, or a panic that says how to install it.
pub fn require_binary(path: PathBuf, what: &str) -> PathBuf {
    if !path.is_file() {
        panic!(
            "{what} not found at {}: run `bash scripts/install-test-deps.sh` (as root) to install it",
            path.display()
        );
    }
    path
}

/// The last `n` lines of a log file (empty if unreadable), for failure messages.
pub(crate) fn log_tail_of(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits for `child` (started with piped output) to exit and returns its output; kills it and
/// panics with its stderr when it is still running after `limit`.
pub fn wait_output(mut child: std::process::Child, limit: std::time::Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if child.try_wait().expect("wait for the child").is_some() {
            return child.wait_with_output().expect("the child's output");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("the child's output");
    panic!("the child did not exit within {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Ports are handed out from a per-process counter offset by the pid, then probed, so parallel
/// test threads and processes rarely race for the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Ports from 10000 up to the kernel's ephemeral range (32768 by default), which outgoing
    // connections take ports from: a port handed out there may be taken by some connection
    // before the server that was meant to get it binds it.
    let (low, high) = port_range();
    let span = u32::from(high - low);
    let start = (std::process::id() * 20) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The ports [`free_port`] picks from: from 10000 to the start of the ephemeral range, or the
/// old [20000, 50000) where that range starts too low to leave room.
pub fn port_range() -> (u16, u16) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    if ephemeral_start >= 20000 { (10000, ephemeral_start) } else { (20000, 50000) }
}

/// The folder of the test stores written by the Go etcdbrctl (`testdata/` at the repository's
/// root; its README says how they were made).
pub fn go_testdata() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata");
    if !root.is_dir() {
        panic!("test data not found at {}: the repository's testdata/ folder is missing", root.display());
    }
    root.canonicalize().expect("canonical testdata path")
}

/// Decompresses the Full snapshot of the Go-made test store `store` (a folder of
/// [`go_testdata`]) into the file `out` (etcd's snapshot format: the db and its sha256), and
/// returns `out`.
pub fn go_full_snapshot(store: &str, out: &std::path::Path) -> PathBuf {
    let folder = go_testdata().join(store).join("store/v2");
    let full = std::fs::read_dir(&folder)
        .expect("read the test store")
        .map(|e| e.expect("test store entry").path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("Full-")))
        .unwrap_or_else(|| panic!("no Full snapshot in {}", folder.display()));
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&full).expect("open the Full snapshot")),
        &mut bytes,
    )
    .expect("gunzip the Full snapshot");
    std::fs::write(out, bytes).expect("write the decompressed snapshot");
    out.to_path_buf()
}
