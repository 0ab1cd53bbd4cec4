//! [`OpendalStore`]: one opendal operator per store, behind the [`Snapstore`] trait.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use brcore::{ByteStream, ObjectMeta, Snapstore, StoreError, WriteOptions};
use futures::{StreamExt, TryStreamExt};
use opendal::layers::{RetryEvent, RetryLayer, TimeoutLayer};
use opendal::{Buffer, ErrorKind, HttpBody, HttpTransport, HttpTransporter, Operator, services};
use tracing::{Instrument, debug, debug_span, field, info_span, warn};

use crate::Error;
use crate::config::{Provider, StoreConfig, local_root};
use crate::credentials::{self, Credentials, Fingerprint, Loaded, S3Credentials};
use crate::keystone::{self, SwiftSession};

/// The directory inside a Local store's root where writes are staged before the rename; it is
/// on the same file system as the objects, so the rename is atomic, and it is never listed.
pub const LOCAL_TEMP_DIR: &str = ".etcdbr-tmp";

/// Time for one control request (stat, list page, delete) before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for one I/O step (a part upload, the commit, or a read of a chunk); the reference allows
/// 180 s per part.
const IO_TIMEOUT: Duration = Duration::from_secs(180);
/// Time to open a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of a temporary failure (so at most 5 attempts), and the backoff between them.
const RETRIES: usize = 4;
const RETRY_MIN_DELAY: Duration = Duration::from_millis(500);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(10);

/// The largest object S3's CopyObject takes (AWS's limit; SeaweedFS copies more); a larger one
/// is renamed by streaming it. For a larger object opendal switches to its multipart copier
/// (UploadPartCopy), which retries a failed part in place, at once and without bound: when the
/// store died mid-copy in our fault test, the rename hung until the I/O timeout (180 s) for
/// each of the retry layer's attempts. CopyObject is one request that fails like any other.
const S3_COPY_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// The largest object OSS's CopyObject takes; a larger one is renamed by streaming it.
const OSS_COPY_MAX: u64 = 1024 * 1024 * 1024;
/// The largest object Swift's server-side copy takes; a larger one is renamed by streaming it.
const SWIFT_COPY_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// How long a server-side copy may take to show up complete under its new key. Azure's Copy
/// Blob may answer "pending" and finish in the background (a few GiB at tens of MB/s); the
/// source is only deleted once the copy is complete.
const COPY_SETTLE_LIMIT: Duration = Duration::from_secs(300);
/// First and longest pause between two checks of a copy that is not complete yet.
const COPY_POLL_MIN: Duration = Duration::from_millis(200);
const COPY_POLL_MAX: Duration = Duration::from_secs(5);

/// The environment variables a store may read, captured once at open so a reload sees the same.
type EnvSnapshot = BTreeMap<String, String>;

fn env_names(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = [
        "STORAGE_CONTAINER",
        "AWS_APPLICATION_CREDENTIALS",
        "AWS_APPLICATION_CREDENTIALS_JSON",
        "AZURE_APPLICATION_CREDENTIALS",
        "AZURE_APPLICATION_CREDENTIALS_JSON",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "OPENSTACK_APPLICATION_CREDENTIALS",
        "OPENSTACK_APPLICATION_CREDENTIALS_JSON",
        "ALICLOUD_APPLICATION_CREDENTIALS",
        "ALICLOUD_APPLICATION_CREDENTIALS_JSON",
        "OPENSHIFT_APPLICATION_CREDENTIALS",
        "OPENSHIFT_APPLICATION_CREDENTIALS_JSON",
        "ECS_ENDPOINT",
        "ECS_ACCESS_KEY_ID",
        "ECS_SECRET_ACCESS_KEY",
        "ECS_DISABLE_SSL",
        "ECS_INSECURE_SKIP_VERIFY",
    ]
    .iter()
    .map(|n| format!("{prefix}{n}"))
    .collect();
    // Read without prefix: the home of a relative Local container, and the AWS region of the
    // default chain.
    names.extend(["HOME", "AWS_REGION", "AWS_DEFAULT_REGION"].map(String::from));
    // Swift: gophercloud's variables (SOURCE_OS_* for a copy source), and the reference's
    // unprefixed ECS_* variables, which every store reads.
    let os = credentials::os_env_prefix(prefix);
    names.extend(credentials::OS_VARIABLES.iter().map(|n| format!("{os}{n}")));
    names.extend(
        ["ECS_ENDPOINT", "ECS_ACCESS_KEY_ID", "ECS_SECRET_ACCESS_KEY", "ECS_DISABLE_SSL", "ECS_INSECURE_SKIP_VERIFY"]
            .map(String::from),
    );
    names
}

/// The operator in use and what its credentials looked like when it was built.
struct Current {
    /// `None` until a Swift store authenticated with Keystone (see [`OpendalStore::call`]).
    op: Option<Operator>,
    fingerprint: Fingerprint,
    credentials: Credentials,
    /// The Keystone token the Swift operator uses, replaced before it expires.
    session: Option<SwiftSession>,
}

/// What a store was opened with; enough to rebuild its client when credentials change.
struct Settings {
    provider: Provider,
    container: String,
    endpoint_override: Option<String>,
    env_prefix: String,
    env: EnvSnapshot,
    /// The Local root directory (None for object stores).
    local_root: Option<PathBuf>,
}

/// A [`Snapstore`] on an opendal operator, with retry and timeout layers, credential reload
/// and, for Local, atomic temp-file writes. See the crate docs for the guarantees.
pub struct OpendalStore {
    s: Settings,
    /// Credential files and dirs to stat before each operation (empty: nothing to reload).
    watched: RwLock<Vec<PathBuf>>,
    current: RwLock<Current>,
    /// One Keystone login at a time (Swift with Keystone credentials).
    keystone: tokio::sync::Mutex<()>,
    /// Local only: set once [`LOCAL_TEMP_DIR`] exists, which the first write creates.
    local_temp_ready: OnceLock<()>,
}

impl fmt::Debug for OpendalStore {
    // Hand-written so the operator (and anything it holds) never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpendalStore")
            .field("provider", &self.s.provider)
            .field("container", &self.s.container)
            .field("endpoint_override", &self.s.endpoint_override)
            .field("local_root", &self.s.local_root)
            .finish_non_exhaustive()
    }
}

impl OpendalStore {
    /// Opens the store `config` describes, with credentials from the process environment.
    pub fn open(config: &StoreConfig) -> Result<OpendalStore, Error> {
        OpendalStore::open_with_env(config, &|name| std::env::var(name).ok())
    }

    /// Opens the store `config` describes, looking environment variables up with `env` (tests and
    /// embedders pass their own instead of changing the process environment).
    pub fn open_with_env(config: &StoreConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<OpendalStore, Error> {
        config.validate()?;
        // Installs opendal's process-wide reqwest transport, which S3's STS calls rely on; our
        // operators get their own client below. Safe to call more than once.
        opendal::install_default();
        let env: EnvSnapshot =
            env_names(&config.env_prefix).into_iter().filter_map(|n| env(&n).map(|v| (n, v))).collect();
        let lookup = |name: &str| env.get(name).cloned();
        let container = config.resolve_container(&lookup)?;
        prepare_temp_dir(&config.temp_dir)?;
        let local_root = match config.provider {
            Provider::Local => {
                let root = local_root(&container, lookup("HOME").as_deref())?;
                create_private_dir(&root)?;
                Some(root)
            }
            _ => None,
        };
        let s = Settings {
            provider: config.provider,
            container,
            endpoint_override: config.endpoint_override.clone(),
            env_prefix: config.env_prefix.clone(),
            env,
            local_root,
        };
        let loaded = s.load_credentials()?;
        let op = s.build_operator(&loaded.credentials, None)?;
        let fingerprint = credentials::fingerprint(&loaded.watched);
        debug!(provider = %s.provider, container = %s.container, "opened snapstore");
        Ok(OpendalStore {
            s,
            watched: RwLock::new(loaded.watched),
            current: RwLock::new(Current { op, fingerprint, credentials: loaded.credentials, session: None }),
            keystone: tokio::sync::Mutex::new(()),
            local_temp_ready: OnceLock::new(),
        })
    }

    /// The provider.
    pub fn provider(&self) -> Provider {
        self.s.provider
    }

    /// The bucket/container, or the Local container as configured.
    pub fn container(&self) -> &str {
        &self.s.container
    }

    /// The Local store's root directory, `None` for object stores.
    pub fn local_root(&self) -> Option<&Path> {
        self.s.local_root.as_deref()
    }

    /// Reads the credential files again and rebuilds the client if any of them changed since
    /// they were last read; returns whether it did. Every operation calls this first.
    pub fn reload_if_changed(&self) -> Result<bool, Error> {
        let watched = self.watched.read().map(|w| w.clone()).unwrap_or_default();
        if watched.is_empty() {
            return Ok(false);
        }
        let now = credentials::fingerprint(&watched);
        if self.current.read().map(|c| c.fingerprint == now).unwrap_or(false) {
            return Ok(false);
        }
        let loaded = self.s.load_credentials()?;
        let op = self.s.build_operator(&loaded.credentials, None)?;
        let fingerprint = credentials::fingerprint(&loaded.watched);
        if let Ok(mut w) = self.watched.write() {
            *w = loaded.watched;
        }
        if let Ok(mut c) = self.current.write() {
            *c = Current { op, fingerprint, credentials: loaded.credentials, session: None };
        }
        tracing::info!(provider = %self.s.provider, "credentials changed; store client rebuilt");
        Ok(true)
    }

    /// The operator for the next call, rebuilt first if the credentials changed (and, for Swift
    /// with Keystone credentials, once its token is about to expire), with a retry layer of its
    /// own (see [`Call`]).
    async fn call(&self, key: &str) -> Result<Call, StoreError> {
        if let Err(e) = self.reload_if_changed() {
            // A rotation may be half done; the next call reads the files again.
            return Err(StoreError::Other { key: key.to_string(), retryable: true, source: Box::new(e) });
        }
        let base = match self.fresh_operator(key)? {
            Some(op) => op,
            None => self.keystone_login(key).await?,
        };
        Ok(Call::new(base, self.s.provider, self.s.describe()))
    }

    /// The operator, unless a Keystone token has to be (re)issued first.
    fn fresh_operator(&self, key: &str) -> Result<Option<Operator>, StoreError> {
        let c = self.current.read().map_err(|_| StoreError::Other {
            key: key.to_string(),
            retryable: false,
            source: "store lock poisoned".into(),
        })?;
        let expiring = c.session.as_ref().is_some_and(|s| s.expiring(std::time::SystemTime::now()));
        Ok(c.op.clone().filter(|_| !expiring))
    }

    /// Swift with Keystone credentials: a token and the storage URL from Keystone, and the
    /// operator that uses them. One login at a time; calls that waited use its result.
    async fn keystone_login(&self, key: &str) -> Result<Operator, StoreError> {
        let _one = self.keystone.lock().await;
        if let Some(op) = self.fresh_operator(key)? {
            return Ok(op);
        }
        let creds = self.current.read().map(|c| c.credentials.clone()).map_err(|_| StoreError::Other {
            key: key.to_string(),
            retryable: false,
            source: "store lock poisoned".into(),
        })?;
        let Credentials::Swift(swift) = &creds else {
            return Err(StoreError::Other { key: key.to_string(), retryable: false, source: "no store client".into() });
        };
        let client = http_client(&TlsOptions::default()).map_err(|e| StoreError::Other {
            key: key.to_string(),
            retryable: false,
            source: e.into(),
        })?;
        let session = keystone::authenticate(&client, swift, swift.region.as_deref()).await.map_err(|e| match e {
            Error::Credentials { .. } => StoreError::PermissionDenied { key: key.to_string(), message: e.to_string() },
            other => StoreError::Other { key: key.to_string(), retryable: true, source: Box::new(other) },
        })?;
        let op = self
            .s
            .build_operator(&creds, Some(&session))
            .map_err(|e| StoreError::Other { key: key.to_string(), retryable: false, source: Box::new(e) })?
            .ok_or_else(|| StoreError::Other {
                key: key.to_string(),
                retryable: false,
                source: "no Swift client".into(),
            })?;
        tracing::info!(storage_url = %session.storage_url, "authenticated with Keystone");
        if let Ok(mut c) = self.current.write() {
            c.op = Some(op.clone());
            c.session = Some(session);
        }
        Ok(op)
    }

    /// The Local staging directory, created (0700) and swept of stale files at the first write.
    fn local_temp_dir(&self, root: &Path, key: &str) -> Result<PathBuf, StoreError> {
        let temp = root.join(LOCAL_TEMP_DIR);
        if self.local_temp_ready.get().is_none() {
            create_private_dir(&temp).map_err(|e| StoreError::Other {
                key: key.to_string(),
                retryable: false,
                source: Box::new(e),
            })?;
            remove_stale_staging_files(&temp);
            let _ = self.local_temp_ready.set(());
        }
        Ok(temp)
    }

    /// Checks that the bucket/container exists and the credentials are accepted, by listing at
    /// most one object at its root.
    pub async fn check(&self) -> Result<(), StoreError> {
        let call = self.call("").await?;
        let op = &call.op;
        let span = debug_span!("snapstore.check", provider = %self.s.provider, container = %self.s.container);
        async {
            let container = &self.s.container;
            let mut lister = op.lister_with("/").await.map_err(|e| container_missing(container, call.err("", e)))?;
            match lister.try_next().await {
                Ok(_) => Ok(()),
                Err(e) => Err(container_missing(container, call.err("", e))),
            }
        }
        .instrument(span)
        .await
    }

    fn check_key(&self, key: &str) -> Result<(), StoreError> {
        brcore::store::check_key(key)?;
        if self.s.provider == Provider::Local
            && (key == LOCAL_TEMP_DIR || key.starts_with(&format!("{LOCAL_TEMP_DIR}/")))
        {
            return Err(StoreError::Other {
                key: key.to_string(),
                retryable: false,
                source: "invalid object key: reserved for staging writes".into(),
            });
        }
        Ok(())
    }
}

impl Settings {
    /// The store as errors name it: `S3 bucket "b" at http://…`, `Local store /backups`.
    fn describe(&self) -> Arc<str> {
        if let Some(root) = &self.local_root {
            return format!("Local store {}", root.display()).into();
        }
        let what = match self.provider {
            Provider::ABS | Provider::Swift => "container",
            _ => "bucket",
        };
        let at = self.endpoint_override.as_deref().map(|e| format!(" at {e}")).unwrap_or_default();
        format!("{} {what} {:?}{at}", self.provider, self.container).into()
    }

    fn load_credentials(&self) -> Result<Loaded, Error> {
        let lookup = |name: &str| self.env.get(name).cloned();
        let emulator = self.endpoint_override.as_deref().is_some_and(|e| e.starts_with("http://"));
        credentials::load(self.provider, &lookup, &self.env_prefix, emulator)
    }

    /// The operator for `creds`; `None` for Swift with Keystone credentials until `session`
    /// (the token and storage URL Keystone issued) is given.
    fn build_operator(&self, creds: &Credentials, session: Option<&SwiftSession>) -> Result<Option<Operator>, Error> {
        let provider = self.provider;
        let backend = |source| Error::Backend { provider, source };
        let mut tls = TlsOptions::default();
        let op = match (provider, creds) {
            (Provider::Local, _) => {
                let root =
                    self.local_root.as_ref().ok_or_else(|| Error::Config("Local store without a root".into()))?;
                // Reads and deletes only: opening a store (for a restore, say) never writes into
                // it. Writes go through `write_local_file`.
                Operator::new(services::Fs::default().root(&root.to_string_lossy())).map_err(backend)?
            }
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
        let op = if provider == Provider::Local {
            op
        } else {
            let transport = HttpTransporter::new(opendal_http_transport_reqwest::ReqwestTransport::new(
                http_client(&tls).map_err(Error::Config)?,
            ));
            let ctx = op.context().with_http_transport(transport);
            op.with_context(ctx)
        };
        // The retry layer goes on per call (see `Call`), outside this timeout layer: a timed-out
        // attempt is retried, and the retry layer never has its future dropped halfway (opendal's
        // documented ordering).
        Ok(Some(op.layer(TimeoutLayer::new().with_timeout(REQUEST_TIMEOUT).with_io_timeout(IO_TIMEOUT))))
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

/// Staging files untouched for this long were left by a writer that crashed: a live one writes
/// into its file at least every few seconds (an upload that stalls fails on its own timeouts
/// well before) and renames it away at the end. The first write of a process removes them.
const STALE_STAGING_AGE: Duration = Duration::from_secs(3600);

/// Removes staging files of crashed writers; failures only cost disk space, so they are logged.
fn remove_stale_staging_files(temp: &Path) {
    let Ok(entries) = std::fs::read_dir(temp) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if path.is_file() && age.is_some_and(|a| a > STALE_STAGING_AGE) {
            match std::fs::remove_file(&path) {
                Ok(()) => debug!(path = %path.display(), "removed a stale staging file"),
                Err(e) => warn!(path = %path.display(), error = %e, "cannot remove a stale staging file"),
            }
        }
    }
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

/// A listing (or check) that finds no container at all must not read as "no objects".
fn container_missing(container: &str, err: StoreError) -> StoreError {
    match err {
        StoreError::NotFound { key } => StoreError::Other {
            key,
            retryable: false,
            source: format!("bucket/container {container:?} does not exist").into(),
        },
        other => other,
    }
}

fn kind_of(c: &Credentials) -> &'static str {
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
struct TlsOptions {
    insecure_skip_verify: bool,
    trusted_ca_cert: Option<String>,
}

fn http_client(tls: &TlsOptions) -> Result<reqwest::Client, String> {
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

/// One store operation: the operator with a retry layer whose notifications set `retried`.
///
/// opendal's retry layer retries only errors marked temporary, and marks every error it returns
/// persistent, so after it `is_temporary` is always false. Whether the failure was of the kind a
/// retry can cure is therefore taken from whether the layer retried during this call: a
/// temporary failure is always retried at least once before it is returned.
#[derive(Clone)]
struct Call {
    op: Operator,
    provider: Provider,
    /// The store, as errors name it ([`Settings::describe`]).
    store: Arc<str>,
    retried: Arc<AtomicBool>,
}

impl Call {
    fn new(base: Operator, provider: Provider, store: Arc<str>) -> Call {
        let retried = Arc::new(AtomicBool::new(false));
        let flag = retried.clone();
        let retry = RetryLayer::new()
            .with_max_times(RETRIES)
            .with_min_delay(RETRY_MIN_DELAY)
            .with_max_delay(RETRY_MAX_DELAY)
            .with_factor(2.0)
            .with_jitter()
            .with_notify(move |e: RetryEvent<'_>| {
                flag.store(true, Ordering::Relaxed);
                warn!(operation = ?e.op, attempt = e.attempt, after = ?e.retry_after, error = %e.err, "retrying store request");
            });
        Call { op: base.layer(retry), provider, store, retried }
    }

    fn err(&self, key: &str, e: opendal::Error) -> StoreError {
        in_store(&self.store, map_opendal_error(self.provider, key, e, self.retried.load(Ordering::Relaxed)))
    }

    fn io_err(&self, key: &str, e: std::io::Error) -> StoreError {
        in_store(&self.store, map_io_error(self.provider, key, e, self.retried.load(Ordering::Relaxed)))
    }
}

/// A store's failure, named by the store it happened in (the key is the [`StoreError`]'s).
#[derive(Debug, thiserror::Error)]
#[error("{store}: {source}")]
struct InStore {
    store: Arc<str>,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// `e` with the store named in its message: every failure says which object (its key) and
/// which store (`store`, see [`Settings::describe`]).
fn in_store(store: &Arc<str>, e: StoreError) -> StoreError {
    match e {
        StoreError::Other { key, retryable, source } => {
            StoreError::Other { key, retryable, source: Box::new(InStore { store: store.clone(), source }) }
        }
        StoreError::PermissionDenied { key, message } => {
            StoreError::PermissionDenied { key, message: format!("{store}: {message}") }
        }
        other => other,
    }
}

/// Maps an opendal error to the domain's error: NotFound and PermissionDenied by kind; the rest
/// is retryable when it was temporary (`retried`: the retry layer retried it before giving up,
/// or opendal still marks it temporary) or rate limited.
fn map_opendal_error(provider: Provider, key: &str, e: opendal::Error, retried: bool) -> StoreError {
    match e.kind() {
        ErrorKind::NotFound => StoreError::NotFound { key: key.to_string() },
        ErrorKind::PermissionDenied => StoreError::PermissionDenied {
            key: key.to_string(),
            message: format!(
                "{provider} refused the request ({}); check the credentials, the clock, and the \
                 permissions on the bucket/container",
                e.message()
            ),
        },
        kind => {
            let retryable = retried || e.is_temporary() || kind == ErrorKind::RateLimited;
            StoreError::Other { key: key.to_string(), retryable, source: Box::new(e) }
        }
    }
}

fn map_io_error(provider: Provider, key: &str, e: std::io::Error, retried: bool) -> StoreError {
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<opendal::Error>()) {
        Some(Ok(op_err)) => map_opendal_error(provider, key, *op_err, retried),
        Some(Err(other)) => StoreError::Other { key: key.to_string(), retryable: false, source: other },
        None => {
            StoreError::Other { key: key.to_string(), retryable: false, source: Box::new(std::io::Error::from(kind)) }
        }
    }
}

/// The directory to list for `prefix`: the prefix itself when it ends with `/`, else its parent.
fn list_dir(prefix: &str) -> &str {
    match prefix.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    }
}

fn prepare_temp_dir(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    create_private_dir(dir)
}

/// Creates `dir` (and parents) with mode 0700 where it creates them, as etcd and the reference do.
fn create_private_dir(dir: &Path) -> Result<(), Error> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|source| Error::Directory { path: dir.to_path_buf(), source })
}

#[async_trait]
impl Snapstore for OpendalStore {
    /// The Local provider's objects are plain files under the container directory; complete
    /// ones only, since writes go through a staging directory and a rename.
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        let root = self.s.local_root.as_deref()?;
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|s| s == ".." || s.is_empty()) {
            return None;
        }
        let path = root.join(key);
        path.is_file().then_some(path)
    }

    fn describe(&self) -> String {
        self.s.describe().to_string()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        if prefix.starts_with('/') || prefix.split('/').any(|s| s == "..") {
            return Err(StoreError::Other {
                key: prefix.to_string(),
                retryable: false,
                source: "invalid list prefix: leading '/' or '..' segment".into(),
            });
        }
        let call = self.call(prefix).await?;
        let op = &call.op;
        let span = debug_span!("snapstore.list", provider = %self.s.provider, prefix, objects = field::Empty);
        async {
            let dir = list_dir(prefix);
            let entries = op
                .list_with(dir)
                .recursive(true)
                .await
                .map_err(|e| container_missing(&self.s.container, call.err(prefix, e)))?;
            let temp_prefix = format!("{LOCAL_TEMP_DIR}/");
            let mut out: Vec<ObjectMeta> = entries
                .into_iter()
                .filter(|e| e.metadata().is_file())
                .map(|e| {
                    let size = e.metadata().content_length();
                    (e.path().trim_start_matches('/').to_string(), size)
                })
                .filter(|(key, _)| key.starts_with(prefix))
                .filter(|(key, _)| self.s.provider != Provider::Local || !key.starts_with(&temp_prefix))
                .map(|(key, size)| ObjectMeta { key, size })
                .collect();
            out.sort_by(|a, b| a.key.cmp(&b.key));
            tracing::Span::current().record("objects", out.len());
            Ok(out)
        }
        .instrument(span)
        .await
    }

    async fn read(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        self.check_key(key)?;
        let call = self.call(key).await?;
        let op = &call.op;
        let span = debug_span!("snapstore.read", provider = %self.s.provider, key, range = ?range);
        async {
            if let Some(r) = &range
                && r.start >= r.end
            {
                // An empty range reads nothing, but a missing object is still NotFound.
                op.stat(key).await.map_err(|e| call.err(key, e))?;
                return Ok(Box::pin(futures::stream::empty()) as ByteStream);
            }
            let reader = op.reader(key).await.map_err(|e| call.err(key, e))?;
            let bytes_range: opendal::BytesRange = match &range {
                Some(r) => (r.start..r.end).into(),
                None => (..).into(),
            };
            let mut stream = reader.into_bytes_stream(bytes_range).await.map_err(|e| call.err(key, e))?;
            // Pull the first chunk now so that a missing object is an error of `read` itself.
            let first = match stream.next().await {
                None => None,
                Some(Ok(b)) => Some(b),
                Some(Err(e)) => return Err(call.io_err(key, e)),
            };
            let owned_key = key.to_string();
            let stream_call = call.clone();
            let rest = stream.map_err(move |e| stream_call.io_err(&owned_key, e));
            let all = futures::stream::iter(first.map(Ok)).chain(rest);
            Ok(Box::pin(all) as ByteStream)
        }
        .instrument(span)
        .await
    }

    async fn write(&self, key: &str, mut data: ByteStream, opts: &WriteOptions) -> Result<u64, StoreError> {
        self.check_key(key)?;
        if let Some(root) = &self.s.local_root {
            let temp = self.local_temp_dir(root, key)?;
            let span = info_span!("snapstore.write", provider = %self.s.provider, key, bytes = field::Empty);
            return async {
                let written = write_local_file(root, &temp, key, data).await?;
                tracing::Span::current().record("bytes", written);
                debug!(bytes = written, "object stored");
                Ok(written)
            }
            .instrument(span)
            .await;
        }
        let call = self.call(key).await?;
        let op = &call.op;
        let part_size = opts.part_size.max(1);
        let parts = opts.max_parallel_parts.max(1);
        let span = info_span!(
            "snapstore.write",
            provider = %self.s.provider,
            key,
            part_size,
            parts,
            bytes = field::Empty
        );
        async {
            let mut writer =
                op.writer_with(key).chunk(part_size).concurrent(parts).await.map_err(|e| call.err(key, e))?;
            let mut written: u64 = 0;
            let streamed: Result<(), StoreError> = async {
                while let Some(item) = data.next().await {
                    let bytes = item?;
                    written += bytes.len() as u64;
                    writer.write(bytes).await.map_err(|e| call.err(key, e))?;
                }
                Ok(())
            }
            .await;
            let result = match streamed {
                Ok(()) => writer.close().await.map(|_| ()).map_err(|e| call.err(key, e)),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                // Nothing may become visible: abort the multipart upload / drop the temp file.
                if let Err(abort) = writer.abort().await {
                    warn!(error = %abort, "aborting the failed upload failed; the store may keep invisible parts");
                }
                warn!(error = %e, bytes = written, "upload failed and was aborted");
                return Err(e);
            }
            tracing::Span::current().record("bytes", written);
            debug!(bytes = written, "object stored");
            Ok(written)
        }
        .instrument(span)
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check_key(key)?;
        let call = self.call(key).await?;
        let op = &call.op;
        let span = debug_span!("snapstore.delete", provider = %self.s.provider, key);
        async {
            match op.delete(key).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(call.err(key, e)),
            }
        }
        .instrument(span)
        .await
    }

    /// Local: a rename within the store's file system, fsynced. Object stores: a server-side
    /// copy (CopyObject on S3, Copy Blob on Azure, rewrite on GCS), waited for until the new
    /// key holds the whole object, then the source is deleted; where the service has no copy,
    /// or the object is beyond its copy limit, or the copy is refused, the object is streamed
    /// through [`Snapstore::write`] instead. Either way `to` is never seen partial, except
    /// that Azure lists the destination of a Copy Blob that finishes in the background while
    /// it runs (see the crate docs).
    async fn rename(&self, from: &str, to: &str) -> Result<u64, StoreError> {
        self.check_key(from)?;
        self.check_key(to)?;
        let call = self.call(from).await?;
        let span = debug_span!(
            "snapstore.rename",
            provider = %self.s.provider,
            from,
            to,
            method = field::Empty,
            bytes = field::Empty
        );
        async {
            if from == to {
                // Nothing moves; deleting "the source" afterwards would lose the object.
                let meta = call.op.stat(from).await.map_err(|e| call.err(from, e))?;
                return Ok(meta.content_length());
            }
            let size = match &self.s.local_root {
                Some(root) => {
                    tracing::Span::current().record("method", "fs-rename");
                    let (root, src, dst) = (root.clone(), from.to_string(), to.to_string());
                    let joined = tokio::task::spawn_blocking(move || rename_local_file(&root, &src, &dst)).await;
                    let fail = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Other {
                        key: from.to_string(),
                        retryable: false,
                        source,
                    };
                    match joined {
                        Ok(Ok(size)) => size,
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Err(StoreError::NotFound { key: from.to_string() });
                        }
                        Ok(Err(e)) => return Err(fail(Box::new(e))),
                        Err(e) => return Err(fail(Box::new(e))),
                    }
                }
                None => self.rename_object(&call, from, to).await?,
            };
            tracing::Span::current().record("bytes", size);
            debug!(bytes = size, "object renamed");
            Ok(size)
        }
        .instrument(span)
        .await
    }
}

/// Renaming on object stores: the server-side copy, its fallback, and the wait for the copy.
impl OpendalStore {
    /// Renames on an object store: server-side copy where it can, else streaming; then deletes
    /// `from`. `from` is untouched on every error path.
    async fn rename_object(&self, call: &Call, from: &str, to: &str) -> Result<u64, StoreError> {
        let size = call.op.stat(from).await.map_err(|e| call.err(from, e))?.content_length();
        let span = tracing::Span::current();
        if let Some(why) = self.no_server_copy(&call.op, size) {
            span.record("method", "stream");
            debug!(reason = why, bytes = size, "streaming the object to its new key");
            return brcore::store::rename_by_streaming(self, from, to).await;
        }
        span.record("method", "server-copy");
        // On Azure, a transport that notes x-ms-copy-status, which tells a Copy Blob still
        // running in the background from a finished one.
        let (op, copy_status) = match self.s.provider {
            Provider::ABS => {
                let (op, slot) = with_copy_status_probe(&call.op);
                (op, Some(slot))
            }
            _ => (call.op.clone(), None),
        };
        debug!(bytes = size, "server-side copy started");
        // One request per copy (no `chunk`): S3's CopyObject, Azure's Copy Blob, Swift's and
        // OSS's copy; GCS's rewrite loops on its token.
        if let Err(e) = op.copy(from, to).await {
            // A failed copy leaves nothing new under `to` (the copies are atomic). A refusal
            // (400, 501, too large) is worth a try by streaming; a store that is down or denies
            // access is not.
            return match call.err(from, e) {
                StoreError::Other { retryable: false, source, .. } => {
                    span.record("method", "stream");
                    warn!(error = %source, "server-side copy refused; streaming the object to its new key instead");
                    brcore::store::rename_by_streaming(self, from, to).await
                }
                other => Err(other),
            };
        }
        self.await_complete_copy(call, &op, copy_status.as_ref(), to, size).await?;
        brcore::store::delete_renamed_source(self, from).await;
        Ok(size)
    }

    /// Why `op` should not copy an object of `size` bytes server-side, if it should not.
    fn no_server_copy(&self, op: &Operator, size: u64) -> Option<&'static str> {
        if !op.info().capability().copy {
            return Some("the service has no server-side copy");
        }
        match self.s.provider {
            Provider::S3 | Provider::ECS | Provider::OCS if size > S3_COPY_MAX => {
                Some("larger than S3 CopyObject's 5 GiB limit")
            }
            Provider::OSS if size > OSS_COPY_MAX => Some("larger than OSS CopyObject's 1 GiB limit"),
            Provider::Swift if size > SWIFT_COPY_MAX => Some("larger than Swift's 5 GiB copy limit"),
            _ => None,
        }
    }

    /// Waits until `to` holds all `size` bytes of a finished copy. An Azure copy that ended
    /// failed or aborted leaves a partial blob, which is deleted; a copy that does not finish
    /// within [`COPY_SETTLE_LIMIT`] is a retryable error, and nothing is deleted.
    async fn await_complete_copy(
        &self,
        call: &Call,
        op: &Operator,
        copy_status: Option<&CopyStatusSlot>,
        to: &str,
        size: u64,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + COPY_SETTLE_LIMIT;
        let mut pause = COPY_POLL_MIN;
        loop {
            if let Some(slot) = copy_status {
                slot.clear();
            }
            let len = match op.stat(to).await {
                Ok(meta) => Some(meta.content_length()),
                // Some S3-compatible stores show a new key a moment late.
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(call.err(to, e)),
            };
            let status = copy_status.and_then(CopyStatusSlot::get);
            match copy_progress(status.as_deref(), len, size) {
                CopyProgress::Complete => {
                    debug!(status = status.as_deref().unwrap_or("none"), bytes = size, "server-side copy complete");
                    return Ok(());
                }
                CopyProgress::Failed(why) => {
                    if let Err(e) = self.delete(to).await {
                        warn!(key = to, error = %e, "cannot delete the partial copy");
                    }
                    return Err(StoreError::Other { key: to.to_string(), retryable: true, source: why.into() });
                }
                CopyProgress::Running => {}
            }
            if Instant::now() + pause > deadline {
                return Err(StoreError::Other {
                    key: to.to_string(),
                    retryable: true,
                    source: format!(
                        "the server-side copy did not complete within {COPY_SETTLE_LIMIT:?} (copy status {}, \
                         {} of {size} bytes visible); the source is kept",
                        status.as_deref().unwrap_or("none"),
                        len.map_or_else(|| "no object".to_string(), |l| l.to_string()),
                    )
                    .into(),
                });
            }
            debug!(status = status.as_deref().unwrap_or("none"), len = ?len, size, "copy not complete yet");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(COPY_POLL_MAX);
        }
    }
}

/// Where a server-side copy stands, from the destination's size and, on Azure, its
/// `x-ms-copy-status`.
#[derive(Debug, PartialEq, Eq)]
enum CopyProgress {
    /// `to` holds the whole object.
    Complete,
    /// Not there yet: still copying, or not visible yet.
    Running,
    /// The copy ended without the object (Azure `failed` or `aborted`).
    Failed(String),
}

fn copy_progress(status: Option<&str>, len: Option<u64>, size: u64) -> CopyProgress {
    match status {
        Some(s) if s.eq_ignore_ascii_case("failed") || s.eq_ignore_ascii_case("aborted") => {
            CopyProgress::Failed(format!("the server-side copy ended {s}; the source is kept"))
        }
        // The destination of a running Azure copy may already show the full length.
        Some(s) if s.eq_ignore_ascii_case("pending") => CopyProgress::Running,
        _ if len == Some(size) => CopyProgress::Complete,
        _ => CopyProgress::Running,
    }
}

/// The last `x-ms-copy-status` a probed operator received.
#[derive(Clone, Default)]
struct CopyStatusSlot(Arc<Mutex<Option<String>>>);

impl CopyStatusSlot {
    fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|s| s.clone())
    }

    fn clear(&self) {
        if let Ok(mut s) = self.0.lock() {
            *s = None;
        }
    }

    fn set(&self, v: &str) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(v.to_string());
        }
    }
}

/// An HTTP transport that passes every request on and notes the `x-ms-copy-status` header of
/// the responses: Azure reports with it whether a Copy Blob finished, and opendal drops it.
struct CopyStatusProbe {
    inner: HttpTransporter,
    slot: CopyStatusSlot,
}

impl HttpTransport for CopyStatusProbe {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        let resp = self.inner.fetch(req).await?;
        if let Some(v) = resp.headers().get("x-ms-copy-status").and_then(|v| v.to_str().ok()) {
            self.slot.set(v);
        }
        Ok(resp)
    }
}

/// `op` with its HTTP transport wrapped in a [`CopyStatusProbe`] (layers kept), and the probe's slot.
fn with_copy_status_probe(op: &Operator) -> (Operator, CopyStatusSlot) {
    let slot = CopyStatusSlot::default();
    let base = op.base_context();
    let probe = CopyStatusProbe { inner: base.http_transport().clone(), slot: slot.clone() };
    let ctx = base.with_http_transport(HttpTransporter::new(probe));
    (op.clone().with_context(ctx), slot)
}

/// Writes a Local object: the chunks go to a temp file in `temp` (on the container's file
/// system) from a thread of its own, which writes each chunk as it comes, with no copy and no
/// async file layer between; then the file is fsynced, renamed to `key` (its directories created
/// 0700) and the directory fsynced. A failed stream or write removes the temp file, so nothing
/// appears under `key`.
async fn write_local_file(root: &Path, temp: &Path, key: &str, mut data: ByteStream) -> Result<u64, StoreError> {
    let store: Arc<str> = format!("Local store {}", root.display()).into();
    let fail = |e: std::io::Error| {
        in_store(
            &store,
            StoreError::Other {
                key: key.to_string(),
                // A full disk may be freed by garbage collection; a permission error needs a person.
                retryable: e.kind() != std::io::ErrorKind::PermissionDenied,
                source: Box::new(e),
            },
        )
    };
    let file = tempfile::Builder::new().prefix(".write-").tempfile_in(temp).map_err(fail)?;
    // `Some(chunk)` to write, then `None` once the stream has ended well. A channel closed
    // without that `None` (the stream failed) leaves the temp file to be dropped, i.e. removed.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<bytes::Bytes>>(2);
    let target = root.join(key);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        use std::io::Write as _;
        let mut file = file;
        let mut written = 0u64;
        loop {
            match rx.blocking_recv() {
                Some(Some(chunk)) => {
                    file.write_all(&chunk)?;
                    written += chunk.len() as u64;
                }
                Some(None) => break,
                None => return Err(std::io::Error::other("the stream ended in an error")),
            }
        }
        file.as_file().sync_all()?;
        let dir = target.parent().map(Path::to_path_buf).unwrap_or_default();
        create_private_dir(&dir).map_err(std::io::Error::other)?;
        file.persist(&target).map_err(|e| e.error)?;
        fsync_dir(&dir)?;
        Ok(written)
    });
    let mut streamed: Result<(), StoreError> = Ok(());
    while let Some(item) = data.next().await {
        match item {
            Ok(chunk) => {
                if tx.send(Some(chunk)).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                streamed = Err(e);
                break;
            }
        }
    }
    if streamed.is_ok() {
        let _ = tx.send(None).await;
    }
    drop(tx);
    let result = writer.await;
    streamed?;
    match result {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => {
            warn!(key, error = %e, "write to the Local store failed; nothing was stored");
            Err(fail(e))
        }
        Err(e) => Err(fail(std::io::Error::other(e.to_string()))),
    }
}

/// fsyncs a directory, so the entries a rename or create put in it survive a crash.
fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Renames the Local object `from` to `to` under `root` and returns its size: creates `to`'s
/// directories (0700), renames, and fsyncs the directories whose entries changed, so the
/// rename survives a crash. A missing `from` (or a directory there) is `NotFound`.
fn rename_local_file(root: &Path, from: &str, to: &str) -> std::io::Result<u64> {
    let src = root.join(from);
    let dst = root.join(to);
    let meta = std::fs::metadata(&src)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{from} is not an object")));
    }
    let src_dir = src.parent().unwrap_or(root).to_path_buf();
    let dst_dir = dst.parent().unwrap_or(root).to_path_buf();
    // The nearest directory that exists already: the new directories' entries land in it.
    let mut existing = dst_dir.as_path();
    while !existing.is_dir() {
        existing = existing.parent().unwrap_or(root);
    }
    let existing = existing.to_path_buf();
    create_private_dir(&dst_dir).map_err(std::io::Error::other)?;
    std::fs::rename(&src, &dst)?;
    let mut dir = dst_dir.as_path();
    loop {
        fsync_dir(dir)?;
        if dir == existing {
            break;
        }
        dir = dir.parent().unwrap_or(&existing);
    }
    if src_dir != dst_dir {
        fsync_dir(&src_dir)?;
    }
    Ok(meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_staging_files_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("Full-1.gz.stale");
        let fresh = dir.path().join("Full-2.gz.live");
        let slow = dir.path().join("Full-3.gz.slow");
        for f in [&old, &fresh, &slow] {
            std::fs::write(f, b"x").unwrap();
        }
        let touch = |f: &Path, ago: u64| {
            let t = std::time::SystemTime::now() - Duration::from_secs(ago);
            std::fs::File::options().write(true).open(f).unwrap().set_modified(t).unwrap();
        };
        touch(&old, 2 * 3600);
        touch(&slow, 30 * 60);
        remove_stale_staging_files(dir.path());
        assert!(!old.exists(), "a staging file untouched for two hours stays");
        assert!(fresh.exists(), "a live writer's staging file was removed");
        assert!(slow.exists(), "a staging file written to 30 minutes ago was removed");
    }

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

    #[test]
    fn list_dir_is_the_prefix_directory() {
        assert_eq!(list_dir(""), "");
        assert_eq!(list_dir("etcd-main/v2/"), "etcd-main/v2/");
        assert_eq!(list_dir("etcd-main/v2/Full-"), "etcd-main/v2/");
        assert_eq!(list_dir("Full-"), "");
    }

    #[test]
    fn errors_map_by_kind_and_temporariness() {
        let e = |kind, msg: &str| opendal::Error::new(kind, msg);
        let nf = map_opendal_error(Provider::S3, "k", e(ErrorKind::NotFound, "gone"), false);
        assert!(matches!(nf, StoreError::NotFound { .. }));
        let pd = map_opendal_error(Provider::S3, "k", e(ErrorKind::PermissionDenied, "SignatureDoesNotMatch"), false);
        match pd {
            StoreError::PermissionDenied { message, .. } => {
                assert!(message.contains("SignatureDoesNotMatch") && message.contains("credentials"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let tmp = map_opendal_error(Provider::S3, "k", e(ErrorKind::Unexpected, "503").set_temporary(), false);
        assert!(tmp.is_retryable());
        // What the retry layer returns after giving up: persistent, but retried on the way.
        let gave_up = map_opendal_error(Provider::S3, "k", e(ErrorKind::Unexpected, "503").set_persistent(), true);
        assert!(gave_up.is_retryable(), "retries exhausted is still worth a later retry");
        // The retry layer marks every error persistent; one it never retried is not retryable.
        let bad_request = map_opendal_error(Provider::S3, "k", e(ErrorKind::Unexpected, "400").set_persistent(), false);
        assert!(!bad_request.is_retryable());
        let config = map_opendal_error(Provider::S3, "k", e(ErrorKind::ConfigInvalid, "NoSuchBucket"), false);
        assert!(!config.is_retryable());
        let slow = map_opendal_error(Provider::S3, "k", e(ErrorKind::RateLimited, "SlowDown"), false);
        assert!(slow.is_retryable());
    }

    #[test]
    fn store_errors_name_the_object_and_the_store() {
        let settings = |provider, container: &str, endpoint: Option<&str>, local_root: Option<&str>| Settings {
            provider,
            container: container.to_string(),
            endpoint_override: endpoint.map(str::to_string),
            env_prefix: String::new(),
            env: Default::default(),
            local_root: local_root.map(PathBuf::from),
        };
        let s3 = settings(Provider::S3, "backups", Some("http://127.0.0.1:8333"), None).describe();
        assert_eq!(&*s3, "S3 bucket \"backups\" at http://127.0.0.1:8333");
        assert_eq!(&*settings(Provider::ABS, "c", None, None).describe(), "ABS container \"c\"");
        assert_eq!(&*settings(Provider::Local, "/b", None, Some("/b")).describe(), "Local store /b");

        let e = opendal::Error::new(ErrorKind::Unexpected, "connection refused").set_temporary();
        let msg = in_store(&s3, map_opendal_error(Provider::S3, "p/v2/Full-00000000-00000009-1", e, true)).to_string();
        assert!(msg.contains("p/v2/Full-00000000-00000009-1"), "{msg}");
        assert!(msg.contains("S3 bucket \"backups\" at http://127.0.0.1:8333"), "{msg}");
        assert!(msg.contains("connection refused"), "{msg}");
        let e = opendal::Error::new(ErrorKind::PermissionDenied, "AccessDenied");
        let msg = in_store(&s3, map_opendal_error(Provider::S3, "p/v2", e, false)).to_string();
        assert!(msg.contains("p/v2") && msg.contains("S3 bucket \"backups\"") && msg.contains("AccessDenied"), "{msg}");
    }

    #[test]
    fn io_errors_carrying_opendal_errors_keep_their_kind() {
        let e: std::io::Error = opendal::Error::new(ErrorKind::NotFound, "gone").into();
        assert!(matches!(map_io_error(Provider::S3, "k", e, false), StoreError::NotFound { .. }));
        let plain = std::io::Error::other("reset");
        assert!(matches!(map_io_error(Provider::S3, "k", plain, false), StoreError::Other { retryable: false, .. }));
        let e: std::io::Error = opendal::Error::new(ErrorKind::Unexpected, "reset").set_persistent().into();
        assert!(map_io_error(Provider::S3, "k", e, true).is_retryable());
    }

    #[test]
    fn copy_progress_waits_for_azure_status_and_full_size() {
        use CopyProgress::*;
        // S3, GCS, Swift, OSS: no status; complete once the whole size is there.
        assert_eq!(copy_progress(None, Some(10), 10), Complete);
        assert_eq!(copy_progress(None, Some(4), 10), Running);
        assert_eq!(copy_progress(None, None, 10), Running);
        assert_eq!(copy_progress(None, Some(0), 0), Complete);
        // Azure: a pending copy may already show the full length; it is not complete.
        assert_eq!(copy_progress(Some("pending"), Some(10), 10), Running);
        assert_eq!(copy_progress(Some("success"), Some(10), 10), Complete);
        assert_eq!(copy_progress(Some("success"), Some(9), 10), Running);
        for ended in ["failed", "aborted", "Failed"] {
            assert!(matches!(copy_progress(Some(ended), Some(10), 10), Failed(m) if m.contains(ended)), "{ended}");
        }
    }

    #[test]
    fn local_rename_creates_private_dirs_and_reports_missing_sources() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("p/.staging")).unwrap();
        std::fs::write(root.join("p/.staging/obj"), b"12345").unwrap();
        assert_eq!(rename_local_file(root, "p/.staging/obj", "p/v2/x/obj").unwrap(), 5);
        assert_eq!(std::fs::read(root.join("p/v2/x/obj")).unwrap(), b"12345");
        assert!(!root.join("p/.staging/obj").exists());
        let missing = rename_local_file(root, "p/.staging/obj", "p/v2/y").unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        assert!(!root.join("p/v2/y").exists());
        // A directory is not an object.
        let dir_src = rename_local_file(root, "p/v2", "p/v3").unwrap_err();
        assert_eq!(dir_src.kind(), std::io::ErrorKind::NotFound);
        assert!(root.join("p/v2/x/obj").exists());
    }

    /// The fallback for objects beyond a service's copy limit (5 GiB on S3), run directly on
    /// a real SeaweedFS with a multi-part object.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streaming_rename_moves_the_object_on_seaweedfs() {
        let seaweed = testsupport::seaweed::SeaweedS3::start();
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("accessKeyID"), seaweed.access_key()).unwrap();
        std::fs::write(creds.path().join("secretAccessKey"), seaweed.secret_key()).unwrap();
        std::fs::write(creds.path().join("region"), "us-east-1\n").unwrap();
        let dir = creds.path().display().to_string();
        let config = StoreConfig {
            provider: Provider::S3,
            container: Some(seaweed.bucket().to_string()),
            endpoint_override: Some(seaweed.endpoint()),
            ..StoreConfig::default()
        };
        let store =
            OpendalStore::open_with_env(&config, &|k| (k == "AWS_APPLICATION_CREDENTIALS").then(|| dir.clone()))
                .unwrap();
        let bytes: Vec<u8> =
            (0..12 * 1024 * 1024 + 7).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let input: ByteStream = Box::pin(futures::stream::iter(
            bytes.chunks(1 << 20).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect::<Vec<_>>(),
        ));
        store.write("s/.staging/a", input, &WriteOptions::default()).await.unwrap();
        assert_eq!(
            brcore::store::rename_by_streaming(&store, "s/.staging/a", "s/v2/a").await.unwrap(),
            bytes.len() as u64
        );
        let chunks: Vec<bytes::Bytes> = store.read("s/v2/a", None).await.unwrap().try_collect().await.unwrap();
        let back = chunks.concat();
        assert!(back == bytes, "streamed rename changed the object");
        let listed = store.list("s/").await.unwrap();
        assert_eq!(listed, vec![ObjectMeta { key: "s/v2/a".into(), size: bytes.len() as u64 }]);
    }

    #[test]
    fn keys_are_checked_before_reaching_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { container: Some(dir.path().display().to_string()), ..StoreConfig::default() };
        let store = OpendalStore::open_with_env(&config, &|_| None).unwrap();
        for bad in ["", "/abs", "dir/", "a//b", "a/../b", "./a", "a\\b", ".etcdbr-tmp/x", ".etcdbr-tmp"] {
            assert!(store.check_key(bad).is_err(), "{bad:?} must be refused");
        }
        for good in ["a", "etcd-main/v2/Full-00000000-00000001-1.gz", ".hidden", "a/.etcdbr-tmp"] {
            store.check_key(good).unwrap();
        }
    }

    #[test]
    fn debug_shows_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("abs.json");
        std::fs::write(&json, r#"{"storageAccount":"acct","storageKey":"a2V5LWNhbmFyeQ=="}"#).unwrap();
        let config = StoreConfig { provider: Provider::ABS, container: Some("c".into()), ..StoreConfig::default() };
        let path = json.display().to_string();
        let store = OpendalStore::open_with_env(&config, &|k| {
            (k == "AZURE_APPLICATION_CREDENTIALS_JSON").then(|| path.clone())
        })
        .unwrap();
        let text = format!("{store:?}");
        assert!(!text.contains("a2V5LWNhbmFyeQ") && text.contains("ABS"), "{text}");
    }
}
