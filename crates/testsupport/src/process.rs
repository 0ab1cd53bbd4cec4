//! What every child-process server here does the same way: start with its output appended to a
//! log file, notice that it exited before it served, die by SIGKILL; and the one raw HTTP/1.0
//! exchange the readiness probes and the tests' `GET`s make.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Starts `cmd` with stdin closed and stdout and stderr appended to the file `log`; panics
/// naming the program when it cannot be started.
pub(crate) fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("log file {}: {e}", log.display()));
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log fd"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", cmd.get_program().to_string_lossy()))
}

/// The exit status of a child that has already exited, `None` while it runs (or if there is none).
pub(crate) fn exited(child: &mut Option<Child>) -> Option<ExitStatus> {
    child.as_mut().and_then(|c| c.try_wait().ok().flatten())
}

/// Kills the child with SIGKILL, as a crash would end it, and waits for it; does nothing if
/// there is none.
pub(crate) fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Sends the whole HTTP/1.0 `request` to 127.0.0.1:`port` and reads the answer to its end (or
/// until `read_timeout`): (status code, body), or `None` if nothing answered with a status line.
/// Connecting is bounded by 2 s and writing by 5 s, so a stuck peer cannot stall a caller's
/// loop past its deadline.
pub(crate) fn exchange(port: u16, request: &[u8], read_timeout: Duration) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(read_timeout)).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request).ok()?;
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// `GET path` on 127.0.0.1:`port` over HTTP/1.0: (status code, body), or `None` if nothing
/// answered. The answer may take up to 30 s.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    exchange(port, format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(), Duration::from_secs(30))
}

/// A xorshift64 generator (Marsaglia's 13/7/17): deterministic noise for test values and
/// objects, so that compression cannot hide a bug and a misplaced byte shows as a mismatch.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator whose state starts at `state` (0 is made 1: xorshift never leaves 0).
    pub fn new(state: u64) -> XorShift {
        XorShift(state.max(1))
    }

    /// A generator spread from a small `seed` (multiplied by the golden ratio, made odd).
    pub fn seeded(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next state.
    #[allow(clippy::should_implement_trait)] // not an Iterator: it never ends
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (`next % n`; 0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `n` bytes, each the low byte of the next state.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Fills `out` with the next states' little-endian bytes, eight a state (the last state
    /// gives only as many as are left).
    pub fn fill(&mut self, out: &mut [u8]) {
        for word in out.chunks_mut(8) {
            word.copy_from_slice(&self.next().to_le_bytes()[..word.len()]);
        }
    }

    /// `len` characters, each `symbols[next % symbols.len()]`.
    pub fn text(&mut self, len: usize, symbols: &[u8]) -> String {
        (0..len).map(|_| symbols[(self.next() % symbols.len() as u64) as usize] as char).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_steps_as_marsaglia_13_7_17() {
        let mut x = XorShift::new(1);
        // 1 → 1 ^ 1<<13 = 8193 → ^ >>7 = 8193 ^ 64 = 8257 → ^ <<17 = 8257 ^ 1082261504.
        assert_eq!(x.next(), 8257 ^ (8257 << 17));
        assert_eq!(XorShift::new(0).next(), XorShift::new(1).next(), "0 would stay 0");
        let s = XorShift::seeded(3).text(64, b"ab");
        assert_eq!(s.len(), 64);
        assert!(s.contains('a') && s.contains('b'), "{s}");
        let (mut a, mut b) = (XorShift::new(5), XorShift::new(5));
        let mut bytes = [0u8; 11];
        a.fill(&mut bytes);
        assert_eq!(bytes[..8], b.next().to_le_bytes());
        assert_eq!(bytes[8..], b.next().to_le_bytes()[..3]);
        let (mut a, mut b) = (XorShift::new(9), XorShift::new(9));
        assert_eq!(a.bytes(3), [b.next() as u8, b.next() as u8, b.next() as u8]);
        assert_eq!(a.below(10), (b.next() % 10) as usize);
        assert_eq!(a.below(0), 0);
    }
}
