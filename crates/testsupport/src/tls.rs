//! A private CA and certificates signed by it, made with `openssl` (EC P-256, valid two days),
//! for the tests that run etcd, the sidecar, a store or the Kubernetes stand-in over TLS.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A private CA in a directory: `ca.crt` and `ca.key`; its leaves are written beside them.
#[derive(Debug, Clone)]
pub struct PrivateCa {
    dir: PathBuf,
}

/// A leaf certificate and its key (PEM files).
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate, `<name>.crt`.
    pub cert: PathBuf,
    /// Its private key, `<name>.key`.
    pub key: PathBuf,
}

impl PrivateCa {
    /// Makes a CA named `/CN=<cn>` in `dir` (which must exist).
    pub fn new(dir: &Path, cn: &str) -> PrivateCa {
        let ca = PrivateCa { dir: dir.to_path_buf() };
        let (crt, key) = (ca.file("ca.crt"), ca.file("ca.key"));
        let subject = format!("/CN={cn}");
        ca.openssl(
            &[&["req", "-x509"][..], &EC_KEY, &["-days", "2", "-subj", &subject, "-keyout", &key, "-out", &crt]]
                .concat(),
        );
        ca
    }

    /// The CA's certificate, to trust.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Signs a leaf `/CN=<cn>` for the subject alternative names `san` (openssl's form, e.g.
    /// `IP:127.0.0.1,DNS:localhost`), limited to `usage` (`serverAuth`, `clientAuth`) when
    /// given; writes `<name>.crt` and `<name>.key` (and `<name>.csr`, `<name>.ext`).
    pub fn leaf(&self, name: &str, cn: &str, san: &str, usage: Option<&str>) -> Leaf {
        let ext = self.file(&format!("{name}.ext"));
        let mut lines = format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n");
        if let Some(u) = usage {
            lines.push_str(&format!("extendedKeyUsage={u}\n"));
        }
        std::fs::write(&ext, lines).expect("write the extension file");
        let (crt, key, csr) =
            (self.file(&format!("{name}.crt")), self.file(&format!("{name}.key")), self.file(&format!("{name}.csr")));
        let subject = format!("/CN={cn}");
        self.openssl(&[&["req"][..], &EC_KEY, &["-subj", &subject, "-keyout", &key, "-out", &csr]].concat());
        let (ca, ca_key) = (self.file("ca.crt"), self.file("ca.key"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
        Leaf { cert: crt.into(), key: key.into() }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl (apt-get install openssl) makes the test certificates");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A new EC P-256 key, unencrypted.
const EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
