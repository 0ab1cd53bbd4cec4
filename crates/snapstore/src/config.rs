//! Which store to open: the provider and the reference's `--store-*` settings.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::Error;

/// A storage provider, as `--storage-provider` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// A directory on the local file system.
    Local,
    /// Amazon S3 or an S3-compatible store (SeaweedFS, MinIO, ...).
    S3,
    /// Azure Blob Storage (or Azurite).
    ABS,
    /// Google Cloud Storage.
    GCS,
    /// OpenStack Swift.
    Swift,
    /// Alibaba Cloud OSS.
    OSS,
    /// Dell EMC ECS, an S3-compatible store configured through `ECS_*` variables.
    ECS,
    /// OpenShift Container Storage, an S3-compatible store.
    OCS,
}

impl Provider {
    /// Every provider, in the reference's order.
    pub const ALL: [Provider; 8] = [
        Provider::Local,
        Provider::S3,
        Provider::ABS,
        Provider::GCS,
        Provider::Swift,
        Provider::OSS,
        Provider::ECS,
        Provider::OCS,
    ];

    /// The name `--storage-provider` uses for this provider.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "Local",
            Provider::S3 => "S3",
            Provider::ABS => "ABS",
            Provider::GCS => "GCS",
            Provider::Swift => "Swift",
            Provider::OSS => "OSS",
            Provider::ECS => "ECS",
            Provider::OCS => "OCS",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = Error;

    /// Parses the reference's names exactly (they are case-sensitive there too); the empty
    /// string is `Local`, as in the reference's `GetSnapstore`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(Provider::Local);
        }
        Provider::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| Error::UnknownProvider(s.to_string()))
    }
}

/// The smallest part size the reference accepts (`--min-chunk-size`), which is also S3's
/// minimum multipart part size.
pub const MIN_CHUNK_SIZE: usize = 5 * 1024 * 1024;

/// A [`StoreConfig`] field, as an invalid value's error names it ([`crate::Error::Setting`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// [`StoreConfig::container`].
    Container,
    /// [`StoreConfig::prefix`].
    Prefix,
    /// [`StoreConfig::endpoint_override`].
    EndpointOverride,
    /// [`StoreConfig::max_parallel_chunk_uploads`].
    MaxParallelChunkUploads,
    /// [`StoreConfig::min_chunk_size`].
    MinChunkSize,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Setting::Container => "store container",
            Setting::Prefix => "store prefix",
            Setting::EndpointOverride => "store endpoint override",
            Setting::MaxParallelChunkUploads => "parallel part uploads",
            Setting::MinChunkSize => "upload part size",
        })
    }
}

/// The Local provider's container when none is given.
pub const DEFAULT_LOCAL_CONTAINER: &str = "default.bkp";

/// How to reach a store: the reference's snapstore flags, checked.
///
/// Credentials are not part of it: [`crate::open`] reads them from the reference's environment
/// variables and files, so a `StoreConfig` can be printed and logged safely.
///
/// Built with [`StoreConfig::new`] or [`StoreConfig::local`] and the `with_*` setters; fields may
/// be added in any release (the struct is `#[non_exhaustive]`).
///
/// ```
/// use snapstore::{Provider, StoreConfig};
///
/// let s3 = StoreConfig::new(Provider::S3, "backups")
///     .with_prefix("etcd-main")
///     .with_endpoint_override("http://127.0.0.1:8333");
/// assert_eq!(s3.snapshot_prefix(), "etcd-main/v2");
/// let local = StoreConfig::local("/var/backups/etcd");
/// assert_eq!(local.provider, Provider::Local);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// `--storage-provider`.
    pub provider: Provider,
    /// `--store-container`: the bucket/container, or the Local directory. `None` falls back to the
    /// `STORAGE_CONTAINER` variable (with [`StoreConfig::env_prefix`]), then for Local to
    /// [`DEFAULT_LOCAL_CONTAINER`].
    pub container: Option<String>,
    /// `--store-prefix` as given (without the `/v2` the reference appends; see
    /// [`StoreConfig::snapshot_prefix`]). Keys passed to the store include it: the store's root is
    /// the container.
    pub prefix: String,
    /// `--store-endpoint-override`: an S3/ABS/GCS/OSS endpoint to use instead of the provider's.
    pub endpoint_override: Option<String>,
    /// `--max-parallel-chunk-uploads`: parts in flight per upload.
    pub max_parallel_chunk_uploads: usize,
    /// `--min-chunk-size`: bytes per uploaded part.
    pub min_chunk_size: usize,
    /// `--snapstore-temp-directory`. Uploads stream, so nothing is spooled here; it is kept for
    /// flag compatibility and created (0700) if missing, as the reference does.
    pub temp_dir: PathBuf,
    /// Prefix of every environment variable read (`""`, `SOURCE_` for `copy`'s source store,
    /// `SECONDARY_` for a secondary store), as in the reference.
    pub env_prefix: String,
}

impl Default for StoreConfig {
    /// The reference's defaults: Local, 5 parallel uploads of 5 MiB parts, `/tmp`.
    fn default() -> Self {
        StoreConfig {
            provider: Provider::Local,
            container: None,
            prefix: String::new(),
            endpoint_override: None,
            max_parallel_chunk_uploads: 5,
            min_chunk_size: MIN_CHUNK_SIZE,
            temp_dir: PathBuf::from("/tmp"),
            env_prefix: String::new(),
        }
    }
}

impl StoreConfig {
    /// A store of `provider` in `container` (the bucket or container; the directory for Local),
    /// with an empty prefix and the reference's defaults otherwise.
    pub fn new(provider: Provider, container: impl Into<String>) -> Self {
        StoreConfig { provider, container: Some(container.into()), ..StoreConfig::default() }
    }

    /// A Local store in `dir`.
    pub fn local(dir: impl AsRef<std::path::Path>) -> Self {
        StoreConfig::new(Provider::Local, dir.as_ref().display().to_string())
    }

    /// Sets [`StoreConfig::prefix`].
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`StoreConfig::endpoint_override`].
    pub fn with_endpoint_override(mut self, url: impl Into<String>) -> Self {
        self.endpoint_override = Some(url.into());
        self
    }

    /// Sets [`StoreConfig::max_parallel_chunk_uploads`] and [`StoreConfig::min_chunk_size`].
    pub fn with_uploads(mut self, max_parallel_chunk_uploads: usize, min_chunk_size: usize) -> Self {
        self.max_parallel_chunk_uploads = max_parallel_chunk_uploads;
        self.min_chunk_size = min_chunk_size;
        self
    }

    /// Sets [`StoreConfig::temp_dir`].
    pub fn with_temp_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.temp_dir = dir.into();
        self
    }

    /// Sets [`StoreConfig::env_prefix`].
    pub fn with_env_prefix(mut self, env_prefix: impl Into<String>) -> Self {
        self.env_prefix = env_prefix.into();
        self
    }

    /// Checks the flags the way the reference does: at least one upload in flight and parts of
    /// at least 5 MiB.
    ///
    /// An invalid value is [`Error::Setting`] naming the field ([`Setting`]), so that a caller
    /// can name where the value came from (the CLI names its flag).
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |setting, why: String| Err(Error::Setting { setting, why });
        if self.max_parallel_chunk_uploads == 0 {
            return invalid(Setting::MaxParallelChunkUploads, "0: at least one part must be in flight".into());
        }
        if self.min_chunk_size < MIN_CHUNK_SIZE {
            return invalid(
                Setting::MinChunkSize,
                format!("{} bytes: at least {MIN_CHUNK_SIZE} bytes (5 MiB) are needed", self.min_chunk_size),
            );
        }
        if let Some(endpoint) = &self.endpoint_override
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return invalid(Setting::EndpointOverride, format!("{endpoint:?}: give an http:// or https:// URL"));
        }
        if let Err(why) = brcore::name::check_prefix(&self.prefix) {
            return invalid(Setting::Prefix, format!("{:?}: {why}", self.prefix));
        }
        if self.provider != Provider::Local
            && let Some(c) = self.container.as_deref().filter(|c| !c.is_empty())
            && (c.contains('/') || c.trim() != c || c.chars().any(|ch| ch.is_control() || ch.is_whitespace()))
        {
            return invalid(
                Setting::Container,
                format!(
                    "{c:?}: {} {} names have no '/', spaces or control characters (a path belongs in the \
                     store prefix)",
                    self.provider,
                    if matches!(self.provider, Provider::ABS | Provider::Swift) { "container" } else { "bucket" },
                ),
            );
        }
        Ok(())
    }

    /// For the Local provider: the directory the store would use, from `--store-container`, the
    /// `STORAGE_CONTAINER` variable or the default, relative ones under `$HOME` (read from the
    /// process environment). `None` for object stores.
    pub fn local_root(&self) -> Result<Option<PathBuf>, Error> {
        if self.provider != Provider::Local {
            return Ok(None);
        }
        let env = |name: &str| std::env::var(name).ok();
        let container = self.resolve_container(&env)?;
        local_root(&container, env("HOME").as_deref()).map(Some)
    }

    /// The key prefix under which snapshots live: `<prefix>/v2`, or `v2` for an empty prefix
    /// (the reference's `Complete()`).
    pub fn snapshot_prefix(&self) -> String {
        brcore::name::v2_dir(&self.prefix).trim_end_matches('/').to_string()
    }

    /// The write options these flags ask for.
    pub fn write_options(&self) -> brcore::WriteOptions {
        brcore::WriteOptions::new(self.max_parallel_chunk_uploads, self.min_chunk_size)
    }

    /// The container after the `STORAGE_CONTAINER` fallback (and, for Local, the default).
    pub(crate) fn resolve_container(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Error> {
        let from_env = || env(&format!("{}STORAGE_CONTAINER", self.env_prefix)).filter(|c| !c.is_empty());
        match self.container.clone().filter(|c| !c.is_empty()).or_else(from_env) {
            Some(c) => Ok(c),
            None if self.provider == Provider::Local => Ok(DEFAULT_LOCAL_CONTAINER.to_string()),
            None => Err(Error::Setting {
                setting: Setting::Container,
                why: format!("not given for {}: give one, or set {}STORAGE_CONTAINER", self.provider, self.env_prefix),
            }),
        }
    }
}

/// The Local provider's directory: a relative container lives under `$HOME`, an absolute one is
/// used as it is.
pub(crate) fn local_root(container: &str, home: Option<&str>) -> Result<PathBuf, Error> {
    let path = Path::new(container);
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    match home.filter(|h| !h.is_empty()) {
        Some(home) => Ok(Path::new(home).join(path)),
        None => Err(Error::Config(format!(
            "Local container {container:?} is relative to $HOME, but HOME is not set; give an absolute path"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_round_trip_and_empty_is_local() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>().unwrap(), p);
        }
        assert_eq!("".parse::<Provider>().unwrap(), Provider::Local);
        let err = "s4".parse::<Provider>().unwrap_err().to_string();
        assert!(err.contains("s4") && err.contains("Swift"), "{err}");
        // The reference's names are case-sensitive; so are ours.
        assert!("s3".parse::<Provider>().is_err());
        assert!("FAILED".parse::<Provider>().is_err(), "the reference's test fake is not a provider");
    }

    #[test]
    fn validate_refuses_what_the_reference_refuses() {
        let ok = StoreConfig::default();
        ok.validate().unwrap();
        let setting = |c: StoreConfig| match c.validate() {
            Err(Error::Setting { setting, why }) => (setting, format!("{setting}: {why}")),
            other => panic!("{other:?}"),
        };
        let zero = StoreConfig { max_parallel_chunk_uploads: 0, ..StoreConfig::default() };
        assert_eq!(setting(zero).0, Setting::MaxParallelChunkUploads);
        let small = StoreConfig { min_chunk_size: MIN_CHUNK_SIZE - 1, ..StoreConfig::default() };
        let (s, msg) = setting(small);
        assert_eq!(s, Setting::MinChunkSize);
        assert!(msg.contains("5242879 bytes") && msg.contains("5 MiB"), "{msg}");
        let bad = StoreConfig { endpoint_override: Some("127.0.0.1:9000".into()), ..StoreConfig::default() };
        assert_eq!(setting(bad).0, Setting::EndpointOverride);
        let prefix = StoreConfig { prefix: "./p".into(), ..StoreConfig::default() };
        let (s, msg) = setting(prefix);
        assert_eq!(s, Setting::Prefix);
        assert!(msg.contains("store prefix: \"./p\"") && msg.contains("did you mean \"p\""), "{msg}");
        assert!(!msg.contains("--"), "a library message names no flag: {msg}");
        let bucket = StoreConfig { provider: Provider::S3, container: Some("b/p".into()), ..StoreConfig::default() };
        let (s, msg) = setting(bucket);
        assert_eq!(s, Setting::Container);
        assert!(msg.contains("\"b/p\"") && msg.contains("S3 bucket"), "{msg}");
        let local = StoreConfig { container: Some("/var/backups/etcd".into()), ..StoreConfig::default() };
        local.validate().unwrap();
    }

    #[test]
    fn snapshot_prefix_appends_v2() {
        let mut c = StoreConfig::default();
        assert_eq!(c.snapshot_prefix(), "v2");
        c.prefix = "etcd-main".into();
        assert_eq!(c.snapshot_prefix(), "etcd-main/v2");
        c.prefix = "a/b/".into();
        assert_eq!(c.snapshot_prefix(), "a/b/v2");
    }

    #[test]
    fn container_falls_back_to_env_then_local_default() {
        let env = |k: &str| (k == "SOURCE_STORAGE_CONTAINER").then(|| "from-env".to_string());
        let none = |_: &str| None;
        let mut c = StoreConfig { env_prefix: "SOURCE_".into(), ..StoreConfig::default() };
        assert_eq!(c.resolve_container(&env).unwrap(), "from-env");
        assert_eq!(c.resolve_container(&none).unwrap(), DEFAULT_LOCAL_CONTAINER);
        c.container = Some("flag".into());
        assert_eq!(c.resolve_container(&env).unwrap(), "flag");
        let s3 = StoreConfig { provider: Provider::S3, ..StoreConfig::default() };
        assert!(s3.resolve_container(&none).unwrap_err().to_string().contains("STORAGE_CONTAINER"));
    }

    #[test]
    fn local_root_joins_relative_containers_under_home() {
        assert_eq!(local_root("default.bkp", Some("/home/u")).unwrap(), PathBuf::from("/home/u/default.bkp"));
        assert_eq!(local_root("/var/backups", Some("/home/u")).unwrap(), PathBuf::from("/var/backups"));
        assert!(local_root("rel", None).is_err());
    }
}
