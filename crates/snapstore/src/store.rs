//! [`OpendalStore`]: one opendal operator per store, behind the [`Snapstore`] trait.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use brcore::{ByteStream, ObjectMeta, Snapstore, StoreError, WriteOptions};
use futures::{StreamExt, TryStreamExt};
use opendal::layers::{RetryEvent, RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, HttpTransporter, Operator, services};
use tracing::{Instrument, debug, debug_span, field, info_span, warn};

use crate::Error;
use crate::config::{Provider, StoreConfig, local_root};
use crate::credentials::{self, Credentials, Fingerprint, Loaded, S3Credentials};

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
    names
}

/// The operator in use and what its credentials looked like when it was built.
struct Current {
    op: Operator,
    fingerprint: Fingerprint,
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
    /// Local only: the operator that stages writes in [`LOCAL_TEMP_DIR`], built at the first
    /// write (building it creates that directory).
    local_writer: OnceLock<Operator>,
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
        let op = s.build_operator(&loaded.credentials)?;
        let fingerprint = credentials::fingerprint(&loaded.watched);
        debug!(provider = %s.provider, container = %s.container, "opened snapstore");
        Ok(OpendalStore {
            s,
            watched: RwLock::new(loaded.watched),
            current: RwLock::new(Current { op, fingerprint }),
            local_writer: OnceLock::new(),
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
        let op = self.s.build_operator(&loaded.credentials)?;
        let fingerprint = credentials::fingerprint(&loaded.watched);
        if let Ok(mut w) = self.watched.write() {
            *w = loaded.watched;
        }
        if let Ok(mut c) = self.current.write() {
            *c = Current { op, fingerprint };
        }
        tracing::info!(provider = %self.s.provider, "credentials changed; store client rebuilt");
        Ok(true)
    }

    /// The operator for the next call, rebuilt first if the credentials changed, with a retry
    /// layer of its own (see [`Call`]).
    fn call(&self, key: &str) -> Result<Call, StoreError> {
        if let Err(e) = self.reload_if_changed() {
            // A rotation may be half done; the next call reads the files again.
            return Err(StoreError::Other { key: key.to_string(), retryable: true, source: Box::new(e) });
        }
        let base = self.current.read().map(|c| c.op.clone()).map_err(|_| StoreError::Other {
            key: key.to_string(),
            retryable: false,
            source: "store lock poisoned".into(),
        })?;
        Ok(Call::new(base, self.s.provider))
    }

    /// The call for a write: for Local, the staging operator (built once); else [`Self::call`].
    fn write_call(&self, key: &str) -> Result<Call, StoreError> {
        let Some(root) = &self.s.local_root else { return self.call(key) };
        if let Some(op) = self.local_writer.get() {
            return Ok(Call::new(op.clone(), self.s.provider));
        }
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Other {
            key: key.to_string(),
            retryable: false,
            source: e,
        };
        let temp = root.join(LOCAL_TEMP_DIR);
        create_private_dir(&temp).map_err(|e| fail(Box::new(e)))?;
        remove_stale_staging_files(&temp);
        let builder = services::Fs::default().root(&root.to_string_lossy()).atomic_write_dir(&temp.to_string_lossy());
        let op = Operator::new(builder)
            .map_err(|e| fail(Box::new(e)))?
            .layer(TimeoutLayer::new().with_timeout(REQUEST_TIMEOUT).with_io_timeout(IO_TIMEOUT));
        let op = self.local_writer.get_or_init(|| op).clone();
        Ok(Call::new(op, self.s.provider))
    }

    /// Checks that the bucket/container exists and the credentials are accepted, by listing at
    /// most one object at its root.
    pub async fn check(&self) -> Result<(), StoreError> {
        let call = self.call("")?;
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
        let bad = |why: &str| StoreError::Other {
            key: key.to_string(),
            retryable: false,
            source: format!("invalid object key: {why}").into(),
        };
        if key.is_empty() {
            return Err(bad("empty"));
        }
        if key.starts_with('/') || key.ends_with('/') {
            return Err(bad("must not start or end with '/'"));
        }
        if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            return Err(bad("empty, '.' or '..' path segment"));
        }
        if key.contains(['\\', '\0']) {
            return Err(bad("backslash or NUL"));
        }
        if self.s.provider == Provider::Local
            && (key == LOCAL_TEMP_DIR || key.starts_with(&format!("{LOCAL_TEMP_DIR}/")))
        {
            return Err(bad("reserved for staging writes"));
        }
        Ok(())
    }

    /// fsyncs the directory holding a Local object so the rename survives a crash.
    async fn sync_parent_dir(&self, key: &str) -> Result<(), StoreError> {
        let Some(root) = &self.s.local_root else { return Ok(()) };
        let dir = root.join(key).parent().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
        let joined = tokio::task::spawn_blocking(move || std::fs::File::open(&dir).and_then(|d| d.sync_all())).await;
        let err: Box<dyn std::error::Error + Send + Sync> = match joined {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => Box::new(e),
            Err(e) => Box::new(e),
        };
        Err(StoreError::Other { key: key.to_string(), retryable: false, source: err })
    }
}

impl Settings {
    fn load_credentials(&self) -> Result<Loaded, Error> {
        let lookup = |name: &str| self.env.get(name).cloned();
        let emulator = self.endpoint_override.as_deref().is_some_and(|e| e.starts_with("http://"));
        credentials::load(self.provider, &lookup, &self.env_prefix, emulator)
    }

    fn build_operator(&self, creds: &Credentials) -> Result<Operator, Error> {
        let provider = self.provider;
        let backend = |source| Error::Backend { provider, source };
        let mut tls = TlsOptions::default();
        let op = match (provider, creds) {
            (Provider::Local, _) => {
                let root =
                    self.local_root.as_ref().ok_or_else(|| Error::Config("Local store without a root".into()))?;
                // Reads and deletes only: this operator stages nothing, so opening a store (for a
                // restore, say) never writes into it. Writes use `local_writer`.
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
                builder = match c {
                    Some(c) => builder
                        .credential(&base64::engine::general_purpose::STANDARD.encode(c.credential_json.expose()))
                        .disable_vm_metadata()
                        .disable_config_load(),
                    // Emulator mode: no authentication, as the reference does for http:// endpoints.
                    None => builder.skip_signature().disable_vm_metadata().disable_config_load(),
                };
                Operator::new(builder).map_err(backend)?
            }
            (Provider::Swift, Credentials::Swift(c)) => {
                let (Some(url), Some(token)) = (&c.storage_url, &c.token) else {
                    return Err(Error::Unsupported {
                        provider,
                        reason: "opendal's Swift service authenticates with a storage URL and a token; \
                                 Keystone password/application-credential login is not implemented: \
                                 add storageURL and token to the credentials"
                            .into(),
                    });
                };
                let builder = services::Swift::default()
                    .endpoint(self.endpoint_override.as_deref().unwrap_or(url))
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
        Ok(op.layer(TimeoutLayer::new().with_timeout(REQUEST_TIMEOUT).with_io_timeout(IO_TIMEOUT)))
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
        if c.force_path_style == Some(false) {
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

/// Staging files older than this were left by a writer that crashed (a live one renames its file
/// away long before): the first write of a process removes them.
const STALE_STAGING_AGE: Duration = Duration::from_secs(24 * 3600);

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
    retried: Arc<AtomicBool>,
}

impl Call {
    fn new(base: Operator, provider: Provider) -> Call {
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
        Call { op: base.layer(retry), provider, retried }
    }

    fn err(&self, key: &str, e: opendal::Error) -> StoreError {
        map_opendal_error(self.provider, key, e, self.retried.load(Ordering::Relaxed))
    }

    fn io_err(&self, key: &str, e: std::io::Error) -> StoreError {
        map_io_error(self.provider, key, e, self.retried.load(Ordering::Relaxed))
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

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        if prefix.starts_with('/') || prefix.split('/').any(|s| s == "..") {
            return Err(StoreError::Other {
                key: prefix.to_string(),
                retryable: false,
                source: "invalid list prefix: leading '/' or '..' segment".into(),
            });
        }
        let call = self.call(prefix)?;
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
        let call = self.call(key)?;
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
        let call = self.write_call(key)?;
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
            self.sync_parent_dir(key).await?;
            tracing::Span::current().record("bytes", written);
            debug!(bytes = written, "object stored");
            Ok(written)
        }
        .instrument(span)
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check_key(key)?;
        let call = self.call(key)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_staging_files_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("Full-1.gz.stale");
        let fresh = dir.path().join("Full-2.gz.live");
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&fresh, b"y").unwrap();
        let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(48 * 3600);
        std::fs::File::options().write(true).open(&old).unwrap().set_modified(two_days_ago).unwrap();
        remove_stale_staging_files(dir.path());
        assert!(!old.exists(), "a staging file of a crashed writer stays");
        assert!(fresh.exists(), "a live writer's staging file was removed");
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
    fn io_errors_carrying_opendal_errors_keep_their_kind() {
        let e: std::io::Error = opendal::Error::new(ErrorKind::NotFound, "gone").into();
        assert!(matches!(map_io_error(Provider::S3, "k", e, false), StoreError::NotFound { .. }));
        let plain = std::io::Error::other("reset");
        assert!(matches!(map_io_error(Provider::S3, "k", plain, false), StoreError::Other { retryable: false, .. }));
        let e: std::io::Error = opendal::Error::new(ErrorKind::Unexpected, "reset").set_persistent().into();
        assert!(map_io_error(Provider::S3, "k", e, true).is_retryable());
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
