//! Azurite (npm `azurite`), the Azure Blob emulator, on a free loopback port.
//!
//! [`Azurite::start`] runs `azurite-blob` in a temp dir with Azurite's well-known development
//! account (`devstoreaccount1`) and creates one container with a SharedKey-signed request, the
//! same authentication the product uses, so a started Azurite has also proven that signing works.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use crate::process::{self, spawn_logged};
use crate::{deps_dir, free_port, require_binary};

/// Azurite's built-in development account.
const ACCOUNT: &str = "devstoreaccount1";
/// The documented, public key of that account (it also sits in Azurite's `constants.js`).
const ACCOUNT_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The container created at start-up.
const CONTAINER: &str = "etcd-backups";

/// A running Azurite blob service with one container, killed on drop.
#[derive(Debug)]
pub struct Azurite {
    child: Option<Child>,
    // Holds Azurite's workspace and log for as long as the value lives.
    tmp: tempfile::TempDir,
    port: u16,
}

impl Azurite {
    /// The `azurite-blob` launcher; panics with the install command if it is missing.
    pub fn azurite_bin() -> PathBuf {
        require_binary(deps_dir().join("azurite/node_modules/.bin/azurite-blob"), "Azurite (npm azurite@3)")
    }

    /// Starts `azurite-blob` on a free loopback port and creates the container.
    pub fn start() -> Azurite {
        let tmp = tempfile::Builder::new().prefix("etcdbr-azurite-").tempdir().expect("temp dir");
        std::fs::create_dir(tmp.path().join("data")).expect("azurite location");
        let mut a = Azurite { child: None, tmp, port: free_port() };
        a.spawn();
        a
    }

    /// Runs `azurite-blob` on this value's workspace and port (output appended to
    /// `azurite.log`) and creates the container if it is missing; panics with the log on failure.
    fn spawn(&mut self) {
        let dir = self.tmp.path();
        let mut cmd = Command::new(Self::azurite_bin());
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &self.port.to_string()])
            .arg("--location")
            .arg(dir.join("data"))
            .args(["--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"])
            .current_dir(dir);
        let child = spawn_logged(&mut cmd, &dir.join("azurite.log"));
        self.child = Some(child);
        if let Err(why) = self.create_container(Duration::from_secs(60)) {
            panic!("Azurite on {}: {why}\n{}", self.endpoint(), self.log_tail());
        }
    }

    /// Kills Azurite with SIGKILL and waits for it, as a crash would end it; its workspace is
    /// kept. Does nothing if it is not running.
    pub fn kill(&mut self) {
        process::kill(&mut self.child);
    }

    /// Starts Azurite again on the same workspace and port (killing it first if it still runs).
    /// Azurite saves its metadata periodically, so what it keeps across a SIGKILL is whatever it
    /// had saved; the container is created again if it was lost.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Creates the container, retrying until Azurite answers; an existing container is fine.
    fn create_container(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = process::exited(&mut self.child) {
                return Err(format!("azurite-blob exited with {status} before it served"));
            }
            match self.signed_request("PUT", &format!("/{CONTAINER}"), &[("restype", "container")]) {
                Some((201, _)) | Some((409, _)) => return Ok(()),
                Some((status, body)) => return Err(format!("create container answered {status}: {body}")),
                None if Instant::now() > deadline => return Err(format!("no answer within {timeout:?}")),
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// One SharedKey-signed, bodiless request to `/<account><path>?<query>`: (status, body).
    fn signed_request(&self, method: &str, path: &str, query: &[(&str, &str)]) -> Option<(u16, String)> {
        let date = http_date(SystemTime::now());
        let version = "2021-08-06";
        // Path-style URLs (the emulator's) carry the account in the path, and the canonical
        // resource is "/<account>" followed by that whole path.
        let url_path = format!("/{ACCOUNT}{path}");
        let mut sorted: Vec<&(&str, &str)> = query.iter().collect();
        sorted.sort();
        let mut resource = format!("/{ACCOUNT}{url_path}");
        for (k, v) in &sorted {
            resource.push_str(&format!("\n{}:{v}", k.to_ascii_lowercase()));
        }
        // VERB, then eleven standard headers, all empty for a bodiless request.
        let string_to_sign =
            format!("{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{resource}");
        let key = B64.decode(ACCOUNT_KEY).expect("account key is base64");
        let signature = B64.encode(hmac_sha256(&key, string_to_sign.as_bytes()));
        let qs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let target = if qs.is_empty() { url_path } else { format!("{url_path}?{}", qs.join("&")) };
        let request = format!(
            "{method} {target} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\n\r\n",
            self.port
        );
        process::exchange(self.port, request.as_bytes(), Duration::from_secs(5))
    }

    /// The blob endpoint including the account path, `http://127.0.0.1:<port>/devstoreaccount1`,
    /// which is what `--store-endpoint-override` takes for the emulator.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// The storage account name.
    pub fn account(&self) -> &str {
        ACCOUNT
    }

    /// The storage account key (base64), Azurite's public development key.
    pub fn key(&self) -> &str {
        ACCOUNT_KEY
    }

    /// The container created at start-up.
    pub fn container(&self) -> &str {
        CONTAINER
    }

    /// The last lines of Azurite's output, for failure messages.
    pub fn log_tail(&self) -> String {
        crate::log_tail_of(&self.tmp.path().join("azurite.log"), 30)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HMAC-SHA256 (RFC 2104), small enough to write here rather than pull a crate into test support.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// An RFC 1123 date (`Wed, 25 Nov 2026 13:30:00 GMT`), as `x-ms-date` wants it.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    #[test]
    fn http_date_matches_known_instants() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_612_214);
        assert_eq!(http_date(t), "Wed, 25 Nov 2026 13:10:14 GMT");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn azurite_starts_with_container_and_checks_signatures() {
        let a = Azurite::start();
        // Creating it again is answered 409 ContainerAlreadyExists: the signed request is accepted.
        let again = a.signed_request("PUT", &format!("/{CONTAINER}"), &[("restype", "container")]);
        assert_eq!(again.map(|(s, _)| s), Some(409), "{}", a.log_tail());
        // An unsigned request is refused.
        let mut s = TcpStream::connect(("127.0.0.1", a.port)).expect("connect");
        let req = format!(
            "GET /{ACCOUNT}/{CONTAINER}?restype=container&comp=list HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            a.port
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 403") || out.starts_with("HTTP/1.0 403"), "{out}");
    }
}
