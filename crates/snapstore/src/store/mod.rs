//! [`OpendalStore`]: one opendal operator per store, behind the [`Snapstore`] trait.
//!
//! Split the way OpenDAL splits a service: this file holds the store (opening, credential
//! reload, the Keystone login) and its [`Snapstore`] implementation; [`operator`] builds the
//! opendal operator of each provider; [`error`] maps opendal's errors to [`StoreError`]s (with
//! the retry layer that tells a temporary failure from a lasting one).
//!
//! What the Local store and the object stores do differently sits behind one [`Backend`],
//! chosen once by the provider when the store is opened: [`local::LocalFs`] (the atomic write
//! through a temp file, the fsynced `rename(2)`, the reserved staging directory) or
//! [`remote::Remote`] (the multipart/block writer, the rename by server-side copy in [`copy`]).
//! No operation asks which kind of store it runs on.

mod copy;
mod error;
mod local;
mod operator;
mod remote;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use brcore::{ByteStream, ObjectMeta, Snapstore, StoreError, WriteOptions};
use futures::{StreamExt, TryStreamExt};
use opendal::{ErrorKind, Operator};
use tracing::{Instrument, debug, debug_span, field};

use crate::Error;
use crate::config::{Provider, StoreConfig, local_root};
use crate::credentials::{self, Credentials, Fingerprint};
use crate::keystone::{self, SwiftSession};

use error::{Call, container_missing};
pub use local::LOCAL_TEMP_DIR;
use local::{LocalFs, create_private_dir};
use operator::{TlsOptions, http_client};
use remote::Remote;

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
}

/// What the Local store and the object stores do differently: [`OpendalStore::open_with_env`]
/// chooses one by the provider, once, and every operation goes through it.
#[async_trait]
trait Backend: Send + Sync {
    /// The store as errors name it: `Local store /backups`, `S3 bucket "b" at http://…`.
    fn describe(&self, s: &Settings) -> Arc<str>;

    /// The operator for `creds`, with its timeout layer; `None` for Swift with Keystone
    /// credentials until `session` (the token and storage URL Keystone issued) is given.
    fn operator(
        &self,
        s: &Settings,
        creds: &Credentials,
        session: Option<&SwiftSession>,
    ) -> Result<Option<Operator>, Error>;

    /// Stores `data` under `key` (checked) so that it appears whole or not at all.
    async fn write(
        &self,
        store: &OpendalStore,
        key: &str,
        data: ByteStream,
        opts: &WriteOptions,
    ) -> Result<u64, StoreError>;

    /// Renames `from` to `to` (two different keys, both checked) with `call`, this rename's
    /// operator; returns the object's size.
    async fn rename(&self, store: &OpendalStore, call: &Call, from: &str, to: &str) -> Result<u64, StoreError>;

    /// The directory the objects are files in, for the Local store.
    fn local_root(&self) -> Option<&Path> {
        None
    }

    /// The file that holds `key`, for the Local store (see [`Snapstore::local_path`]).
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    /// Whether `key` belongs to the store's own staging and is refused as an object key.
    fn reserved(&self, _key: &str) -> bool {
        false
    }

    /// Whether a listed `key` lies in the store's own staging and is left out of listings.
    fn staging(&self, _key: &str) -> bool {
        false
    }
}

/// A [`Snapstore`] on an opendal operator, with retry and timeout layers, credential reload
/// and, for Local, atomic temp-file writes. See the crate docs for the guarantees.
pub struct OpendalStore {
    s: Settings,
    /// Local or object store, chosen at open.
    backend: Box<dyn Backend>,
    /// The store as errors name it ([`Backend::describe`]).
    name: Arc<str>,
    /// Credential files and dirs to stat before each operation (empty: nothing to reload).
    watched: RwLock<Vec<PathBuf>>,
    current: RwLock<Current>,
    /// One Keystone login at a time (Swift with Keystone credentials).
    keystone: tokio::sync::Mutex<()>,
}

impl fmt::Debug for OpendalStore {
    // Hand-written so the operator (and anything it holds) never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpendalStore")
            .field("provider", &self.s.provider)
            .field("container", &self.s.container)
            .field("endpoint_override", &self.s.endpoint_override)
            .field("local_root", &self.backend.local_root())
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
        // The one place that tells the Local store from object stores.
        let backend: Box<dyn Backend> = match config.provider {
            Provider::Local => {
                let root = local_root(&container, lookup("HOME").as_deref())?;
                create_private_dir(&root)?;
                Box::new(LocalFs::new(root))
            }
            _ => Box::new(Remote),
        };
        let s = Settings {
            provider: config.provider,
            container,
            endpoint_override: config.endpoint_override.clone(),
            env_prefix: config.env_prefix.clone(),
            env,
        };
        let name = backend.describe(&s);
        let loaded = s.load_credentials()?;
        let op = backend.operator(&s, &loaded.credentials, None)?;
        let fingerprint = credentials::fingerprint(&loaded.watched);
        debug!(provider = %s.provider, container = %s.container, "opened snapstore");
        Ok(OpendalStore {
            s,
            backend,
            name,
            watched: RwLock::new(loaded.watched),
            current: RwLock::new(Current { op, fingerprint, credentials: loaded.credentials, session: None }),
            keystone: tokio::sync::Mutex::new(()),
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
        self.backend.local_root()
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
        let op = self.backend.operator(&self.s, &loaded.credentials, None)?;
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
        Ok(Call::new(base, self.s.provider, self.name.clone()))
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
            .backend
            .operator(&self.s, &creds, Some(&session))
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
        if self.backend.reserved(key) {
            return Err(StoreError::Other {
                key: key.to_string(),
                retryable: false,
                source: "invalid object key: reserved for staging writes".into(),
            });
        }
        Ok(())
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

#[async_trait]
impl Snapstore for OpendalStore {
    /// The Local provider's objects are plain files under the container directory; complete
    /// ones only, since writes go through a staging directory and a rename.
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.backend.local_path(key)
    }

    fn describe(&self) -> String {
        self.name.to_string()
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
            let mut out: Vec<ObjectMeta> = entries
                .into_iter()
                .filter(|e| e.metadata().is_file())
                .map(|e| {
                    let size = e.metadata().content_length();
                    (e.path().trim_start_matches('/').to_string(), size)
                })
                .filter(|(key, _)| key.starts_with(prefix))
                .filter(|(key, _)| !self.backend.staging(key))
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

    async fn write(&self, key: &str, data: ByteStream, opts: &WriteOptions) -> Result<u64, StoreError> {
        self.check_key(key)?;
        self.backend.write(self, key, data, opts).await
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
            let size = self.backend.rename(self, &call, from, to).await?;
            tracing::Span::current().record("bytes", size);
            debug!(bytes = size, "object renamed");
            Ok(size)
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_dir_is_the_prefix_directory() {
        assert_eq!(list_dir(""), "");
        assert_eq!(list_dir("etcd-main/v2/"), "etcd-main/v2/");
        assert_eq!(list_dir("etcd-main/v2/Full-"), "etcd-main/v2/");
        assert_eq!(list_dir("Full-"), "");
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
