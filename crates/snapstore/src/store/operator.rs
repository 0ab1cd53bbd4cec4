//! Building the opendal operator of each provider: its service builder from the credentials,
//! the HTTP client (timeouts, the reference's TLS options), the timeout layer, and the S3
//! addressing rules of the Go tool's AWS SDK.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use opendal::layers::TimeoutLayer;
use opendal::{HttpTransporter, Operator, services};
use tracing::warn;

use super::Settings;
use crate::Error;
use crate::config::Provider;
use crate::credentials::{self, Credentials, Loaded, S3Credentials};
use crate::keystone::SwiftSession;

/// Time for one control request (stat, list page, delete) before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for one I/O step (a part upload, the commit, or a read of a chunk); the reference allows
/// 180 s per part.
const IO_TIMEOUT: Duration = Duration::from_secs(180);
/// Time to open a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Settings {
    /// An object store as errors name it: `S3 bucket "b" at http://…`, `ABS container "c"`.
    pub(super) fn describe(&self) -> Arc<str> {
        let what = match self.provider {
            Provider::ABS | Provider::Swift => "container",
            _ => "bucket",
        };
        let at = self.endpoint_override.as_deref().map(|e| format!(" at {e}")).unwrap_or_default();
        format!("{} {what} {:?}{at}", self.provider, self.container).into()
    }

    pub(super) fn load_credentials(&self) -> Result<Loaded, Error> {
        let lookup = |name: &str| self.env.get(name).cloned();
        let emulator = self.endpoint_override.as_deref().is_some_and(|e| e.starts_with("http://"));
        credentials::load(self.provider, &lookup, &self.env_prefix, emulator)
    }

    /// The object store's operator for `creds`, on our own HTTP client; `None` for Swift with
    /// Keystone credentials until `session` (the token and storage URL Keystone issued) is given.
    pub(super) fn build_operator(
        &self,
        creds: &Credentials,
        session: Option<&SwiftSession>,
    ) -> Result<Option<Operator>, Error> {
        let provider = self.provider;
        let backend = |source| Error::Backend { provider, source };
        let mut tls = TlsOptions::default();
        let op = match (provider, creds) {
            (Provider::S3 | Provider::ECS | Provider::OCS, Credentials::S3(c)) => {
                tls.insecure_skip_verify = c.insecure_skip_verify;
                tls.trusted_ca_cert = c.trusted_ca_cert.clone();
                Operator::new(self.s3_builder(c)?).map_err(backend)?
            }
            (Provider::ABS, Credentials::Abs(c)) => {
                let endpoint = match &self.endpoint_override {
                    Some(e) => e.trim_end_matches('/').to_string(),
                    None => format!(
                        "https://{}.{}",
                        c.storage_account,
                        c.domain.as_deref().unwrap_or("blob.core.windows.net")
                    ),
                };
                let builder = services::Azblob::default()
                    .container(&self.container)
                    .root("/")
                    .endpoint(&endpoint)
                    .account_name(&c.storage_account)
                    .account_key(c.storage_key.expose());
                Operator::new(builder).map_err(backend)?
            }
            (Provider::GCS, Credentials::Gcs(c)) => {
                let mut builder = services::Gcs::default().bucket(&self.container).root("/");
                let endpoint =
                    self.endpoint_override.clone().or_else(|| c.as_ref().and_then(|c| c.storage_api_endpoint.clone()));
                if let Some(e) = &endpoint {
                    builder = builder.endpoint(e);
                }
                let emulator = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
                builder = match c {
                    Some(c) => builder
                        .credential(&base64::engine::general_purpose::STANDARD.encode(c.credential_json.expose()))
                        .disable_vm_metadata()
                        .disable_config_load(),
                    // Emulator mode: no authentication, as the reference does for http:// endpoints.
                    None if emulator => builder.skip_signature().disable_vm_metadata().disable_config_load(),
                    // Application Default Credentials: opendal's default chain reads the gcloud
                    // well-known file and then the metadata server (`GCE_METADATA_HOST`), as
                    // Google's Go client does for the reference.
                    None => builder,
                };
                Operator::new(builder).map_err(backend)?
            }
            (Provider::Swift, Credentials::Swift(c)) => {
                // A storage URL and token given, or those Keystone issued (see `keystone_login`).
                let (url, token) = match (&c.storage_url, &c.token, session) {
                    (Some(url), Some(token), _) => (url.clone(), token.clone()),
                    (_, _, Some(s)) => (s.storage_url.clone(), s.token.clone()),
                    _ => return Ok(None),
                };
                let builder = services::Swift::default()
                    .endpoint(self.endpoint_override.as_deref().unwrap_or(&url))
                    .container(&self.container)
                    .root("/")
                    .token(token.expose());
                Operator::new(builder).map_err(backend)?
            }
            (Provider::OSS, Credentials::Oss(c)) => {
                let endpoint = self.endpoint_override.clone().unwrap_or_else(|| c.endpoint.clone());
                let mut builder = services::Oss::default()
                    .bucket(&self.container)
                    .root("/")
                    .endpoint(&endpoint)
                    .access_key_id(&c.access_key_id)
                    .access_key_secret(c.access_key_secret.expose());
                // An IP address cannot take the bucket as a subdomain; Alibaba's own SDK switches
                // to path-style requests for IP endpoints, and so do we.
                if host_is_ip(&endpoint) {
                    builder = builder.addressing_style("path");
                }
                Operator::new(builder).map_err(backend)?
            }
            (p, c) => {
                return Err(Error::Config(format!("{p} cannot use {} credentials", kind_of(c))));
            }
        };
        let transport = HttpTransporter::new(opendal_http_transport_reqwest::ReqwestTransport::new(
            http_client(&tls).map_err(Error::Config)?,
        ));
        let ctx = op.context().with_http_transport(transport);
        Ok(Some(with_timeouts(op.with_context(ctx))))
    }

    fn s3_builder(&self, c: &S3Credentials) -> Result<services::S3, Error> {
        let mut b = services::S3::default().bucket(&self.container).root("/");
        let endpoint = self.endpoint_override.clone().or_else(|| c.endpoint.clone());
        if let Some(e) = &endpoint {
            b = b.endpoint(e);
        }
        let region = c
            .region
            .clone()
            .or_else(|| self.env.get("AWS_REGION").cloned())
            .or_else(|| self.env.get("AWS_DEFAULT_REGION").cloned())
            // S3-compatible stores behind an endpoint override rarely care about the region,
            // but SigV4 needs one.
            .unwrap_or_else(|| "us-east-1".to_string());
        b = b.region(&region);
        if s3_virtual_host_style(&self.container, endpoint.as_deref(), c.force_path_style) {
            b = b.enable_virtual_host_style();
        }
        if let (Some(ak), Some(sk)) = (&c.access_key_id, &c.secret_access_key) {
            // Only the keys we were given: no environment, profile or instance metadata.
            b = b.access_key_id(ak).secret_access_key(sk.expose()).disable_config_load().disable_ec2_metadata();
        } else if let (Some(role), Some(token)) = (&c.role_arn, &c.token_path) {
            let provider =
                reqsign_aws_v4::AssumeRoleWithWebIdentityCredentialProvider::with_config(role.clone(), token.clone())
                    .with_region(region.clone())
                    .with_regional_sts_endpoint();
            b = b
                .credential_provider_chain(reqsign_core::ProvideCredentialChain::new().push(provider))
                .disable_config_load()
                .disable_ec2_metadata();
        }
        if let (Some(alg), Some(key)) = (&c.sse_customer_algorithm, &c.sse_customer_key) {
            b = b.server_side_encryption_with_customer_key(alg, key.expose().as_bytes());
        }
        Ok(b)
    }
}

/// The Local store's operator: opendal's `Fs` service on `root`, for reads, listings and
/// deletes only. Opening a store (for a restore, say) never writes into it; writes go through
/// [`super::local::write_local_file`].
pub(super) fn local_operator(root: &Path) -> Result<Operator, Error> {
    let op = Operator::new(services::Fs::default().root(&root.to_string_lossy()))
        .map_err(|source| Error::Backend { provider: Provider::Local, source })?;
    Ok(with_timeouts(op))
}

/// `op` with the timeout layer every store has. The retry layer goes on per call (see
/// [`Call`](super::error::Call)), outside this timeout layer: a timed-out attempt is retried,
/// and the retry layer never has its future dropped halfway (opendal's documented ordering).
fn with_timeouts(op: Operator) -> Operator {
    op.layer(TimeoutLayer::new().with_timeout(REQUEST_TIMEOUT).with_io_timeout(IO_TIMEOUT))
}

/// Whether S3 requests name the bucket in the host (`bucket.endpoint`) rather than the path, as
/// the Go tool's AWS SDK (v2) decides it: path-style when `s3ForcePathStyle` is true, when the
/// endpoint is an IP address, or when the bucket cannot be a DNS label (dots need an `http://`
/// endpoint, where no certificate has to match); virtual-hosted otherwise (`s3ForcePathStyle`
/// false is the SDK's default, not a force).
pub(crate) fn s3_virtual_host_style(bucket: &str, endpoint: Option<&str>, force_path_style: Option<bool>) -> bool {
    if force_path_style == Some(true) {
        return false;
    }
    if endpoint.is_some_and(host_is_ip) {
        return false;
    }
    let dots_allowed = endpoint.is_some_and(|e| e.starts_with("http://"));
    if dots_allowed { bucket.split('.').all(dns_compatible_bucket) } else { dns_compatible_bucket(bucket) }
}

/// The AWS endpoint rules' `isVirtualHostableS3Bucket` without sub-domains: 3 to 63 lower-case
/// letters, digits and hyphens, starting and ending with a letter or digit, not an IPv4 address.
fn dns_compatible_bucket(label: &str) -> bool {
    let b = label.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && label.parse::<std::net::Ipv4Addr>().is_err()
}

/// Whether the host of `endpoint` (`scheme://host:port/...` or `host:port`) is an IP address.
fn host_is_ip(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.parse::<std::net::IpAddr>().is_ok()
}

pub(super) fn kind_of(c: &Credentials) -> &'static str {
    match c {
        Credentials::None => "no",
        Credentials::S3(_) => "S3",
        Credentials::Abs(_) => "ABS",
        Credentials::Gcs(_) => "GCS",
        Credentials::Swift(_) => "Swift",
        Credentials::Oss(_) => "OSS",
    }
}

/// TLS settings the reference offers for S3-compatible stores.
#[derive(Default)]
pub(super) struct TlsOptions {
    insecure_skip_verify: bool,
    trusted_ca_cert: Option<String>,
}

pub(super) fn http_client(tls: &TlsOptions) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
    if tls.insecure_skip_verify {
        warn!("TLS certificate verification of the object store is off (insecureSkipVerify)");
        b = b.tls_danger_accept_invalid_certs(true);
    }
    if let Some(pem) = &tls.trusted_ca_cert {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("trustedCaCert is not a PEM certificate: {e}"))?;
        if certs.is_empty() {
            return Err("trustedCaCert holds no PEM certificate".to_string());
        }
        for cert in certs {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| format!("cannot build the HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_endpoints_are_recognised() {
        assert!(host_is_ip("http://127.0.0.1:9000"));
        assert!(host_is_ip("127.0.0.1:9000/x"));
        assert!(host_is_ip("https://[::1]:443"));
        assert!(host_is_ip("10.0.0.1"));
        assert!(!host_is_ip("https://oss-eu-central-1.aliyuncs.com"));
        assert!(!host_is_ip("localhost:9000"));
    }

    /// The Go tool's AWS SDK: virtual-hosted unless s3ForcePathStyle, an IP endpoint, or a
    /// bucket that cannot be a host name.
    #[test]
    fn s3_addressing_is_the_aws_sdks() {
        let v = s3_virtual_host_style;
        assert!(v("etcd-backups", None, None), "AWS itself: virtual-hosted by default");
        assert!(v("etcd-backups", None, Some(false)), "s3ForcePathStyle=false is the default");
        assert!(!v("etcd-backups", None, Some(true)));
        assert!(v("etcd-backups", Some("https://s3.eu-central-1.example.com"), None));
        assert!(!v("etcd-backups", Some("http://127.0.0.1:8333"), None), "an IP cannot take the bucket as a subdomain");
        assert!(!v("etcd-backups", Some("https://[::1]:8333"), None));
        assert!(!v("my.backups", None, None), "dots break the certificate over https");
        assert!(!v("my.backups", Some("https://minio.example.com"), None));
        assert!(v("etcd.backups", Some("http://minio.example.com"), None), "dots are fine over http");
        assert!(!v("Etcd-Backups", None, None), "upper case is not DNS-compatible");
        assert!(!v("ab", None, None));
        assert!(!v("-backups", None, None));
        assert!(!v("backups_1", None, None));
        assert!(!v(&"a".repeat(64), None, None));
    }
}
