//! Credential fallbacks of the Go tool, end to end through `etcdbrctl`.
//!
//! GCS without `GOOGLE_APPLICATION_CREDENTIALS`: Application Default Credentials, as Google's Go
//! client does for the reference. No GCS server or GCE metadata server can be installed here,
//! so the test stands in for both with the real protocols: the metadata server answers
//! `GET /computeMetadata/v1/instance/service-accounts/default/token` (with the
//! `Metadata-Flavor: Google` header it requires) with a token, found through
//! `GCE_METADATA_HOST`, as on a GCE VM or GKE with workload identity; the storage endpoint
//! (`--store-endpoint-override`, https with a test CA in `SSL_CERT_FILE`) is `openssl s_server`,
//! which prints the request it receives. The request must carry that token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testsupport::free_port;

const TOKEN: &str = "adc-token-from-the-metadata-server";

/// A GCE metadata server stand-in: every request is recorded (request line and the
/// `Metadata-Flavor` header) and answered with [`TOKEN`] when the header is present, 403 (as the
/// real one) when not.
fn metadata_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut flavor = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("metadata-flavor")
                {
                    flavor = Some(v.trim().to_string());
                }
            }
            log.lock().unwrap().push(format!("{} flavor={flavor:?}", line.trim()));
            let (status, body) = if flavor.as_deref() == Some("Google") {
                ("200 OK", format!(r#"{{"access_token":"{TOKEN}","expires_in":3599,"token_type":"Bearer"}}"#))
            } else {
                ("403 Forbidden", "Missing Metadata-Flavor:Google header.".to_string())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nMetadata-Flavor: Google\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

/// A CA and a certificate for 127.0.0.1 signed by it.
fn certificates(dir: &Path) {
    testsupport::PrivateCa::new(dir, "test-ca").leaf("tls", "storage", "IP:127.0.0.1", None);
}

#[test]
fn gcs_without_a_credentials_file_uses_application_default_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    certificates(tmp.path());
    let (metadata_port, metadata_requests) = metadata_server();
    let storage_port = free_port();
    let received = tmp.path().join("received");
    let mut storage = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept", &storage_port.to_string()])
        .arg("-cert")
        .arg(tmp.path().join("tls.crt"))
        .arg("-key")
        .arg(tmp.path().join("tls.key"))
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&received).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    std::thread::sleep(Duration::from_millis(300));
    // No well-known gcloud file under this HOME, no GOOGLE_APPLICATION_CREDENTIALS.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut etcdbrctl = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"))
        .args(["restore", "--storage-provider=GCS", "--store-container=etcd-backups", "--store-prefix=etcd-main"])
        .arg(format!("--store-endpoint-override=https://127.0.0.1:{storage_port}"))
        .arg(format!("--data-dir={}", tmp.path().join("new.etcd").display()))
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("STORAGE_CONTAINER")
        .env("HOME", &home)
        .env("GCE_METADATA_HOST", format!("127.0.0.1:{metadata_port}"))
        .env("SSL_CERT_FILE", tmp.path().join("ca.crt"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let request = loop {
        let text = std::fs::read_to_string(&received).unwrap_or_default();
        if text.contains("\r\n\r\n") || text.contains("\n\n") {
            break text;
        }
        if let Some(status) = etcdbrctl.try_wait().unwrap() {
            let mut err = String::new();
            etcdbrctl.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!(
                "etcdbrctl ended ({status}) before the storage request arrived\n{err}\nmetadata: {:?}",
                metadata_requests.lock().unwrap()
            );
        }
        assert!(Instant::now() < deadline, "no storage request within 60 s: {:?}", metadata_requests.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = etcdbrctl.kill();
    let _ = etcdbrctl.wait();
    let _ = storage.kill();
    let _ = storage.wait();
    let asked = metadata_requests.lock().unwrap().clone();
    assert!(
        asked.iter().any(|r| r.starts_with("GET /computeMetadata/v1/instance/service-accounts/default/token")
            && r.ends_with("flavor=Some(\"Google\")")),
        "the metadata server was asked for a token: {asked:?}"
    );
    assert!(request.starts_with("GET /storage/v1/b/etcd-backups/o"), "a GCS listing of the bucket: {request}");
    assert!(
        request.lines().any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}"))),
        "the storage request carries the metadata server's token: {request}"
    );
}
