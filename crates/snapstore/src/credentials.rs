//! Credentials, read the way the reference reads them: a directory of one-value files named by
//! `<PROVIDER>_APPLICATION_CREDENTIALS` (or a `*.json` inside it), a JSON file named by
//! `<PROVIDER>_APPLICATION_CREDENTIALS_JSON`, `GOOGLE_APPLICATION_CREDENTIALS` for GCS, and
//! `ECS_*` variables for ECS. Every variable name may carry the config's `env_prefix`
//! (`SOURCE_`, `SECONDARY_`).
//!
//! Secret values are held in [`Secret`], whose `Debug` prints `***`; nothing here implements
//! `Display` for a secret. One-value files are trimmed of surrounding whitespace (a trailing
//! newline from `echo` would otherwise become part of a key).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::Error;
use crate::config::Provider;

/// A secret value (key, password, token): kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for handing to the client library; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(<empty>)" } else { "Secret(***)" })
    }
}

/// S3 and S3-compatible credentials (S3, ECS, OCS).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct S3Credentials {
    /// `accessKeyID`; `None` with no secret means "use the AWS default chain" (environment,
    /// profile, instance metadata), as the reference does when no variable is set.
    pub access_key_id: Option<String>,
    /// `secretAccessKey`.
    pub secret_access_key: Option<Secret>,
    /// `region` (required with file credentials).
    pub region: Option<String>,
    /// `endpoint` (deprecated in the reference in favour of `--store-endpoint-override`).
    pub endpoint: Option<String>,
    /// `s3ForcePathStyle`: path-style requests when true; otherwise virtual-hosted where the
    /// bucket and endpoint allow it, as the Go tool's AWS SDK (see `store::operator::s3_virtual_host_style`).
    pub force_path_style: Option<bool>,
    /// `insecureSkipVerify`: TLS certificates of the endpoint are not verified (logged as a warning).
    pub insecure_skip_verify: bool,
    /// `trustedCaCert`: a PEM CA certificate trusted in addition to the system roots.
    pub trusted_ca_cert: Option<String>,
    /// `sseCustomerKey` for SSE-C.
    pub sse_customer_key: Option<Secret>,
    /// `sseCustomerAlgorithm` for SSE-C (e.g. `AES256`).
    pub sse_customer_algorithm: Option<String>,
    /// `roleARN` for web-identity federation.
    pub role_arn: Option<String>,
    /// The web-identity token file (`token` in a directory, `tokenPath` in JSON).
    pub token_path: Option<PathBuf>,
}

/// Azure Blob credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsCredentials {
    /// `storageAccount`.
    pub storage_account: String,
    /// `storageKey` (base64 shared key).
    pub storage_key: Secret,
    /// `domain` (deprecated in the reference); default `blob.core.windows.net`.
    pub domain: Option<String>,
}

/// Google Cloud Storage credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsCredentials {
    /// The service-account (or external-account) JSON, as read from the file.
    pub credential_json: Secret,
    /// `type` from that JSON: `service_account` or `external_account`.
    pub kind: String,
    /// `storageAPIEndpoint` beside the credential file, if present.
    pub storage_api_endpoint: Option<String>,
}

/// OpenStack Swift credentials: a credentials file (or directory) as the reference reads it,
/// with the `OS_*` variables gophercloud reads (`SOURCE_OS_*` for a copy source) filling what
/// the file leaves out, or standing alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SwiftCredentials {
    /// `authURL` (Keystone), or `OS_AUTH_URL`.
    pub auth_url: String,
    /// `domainName`, or `OS_DOMAIN_NAME`: the user's and the project's domain unless those are
    /// given.
    pub domain_name: Option<String>,
    /// `OS_USER_DOMAIN_NAME`.
    pub user_domain_name: Option<String>,
    /// `OS_PROJECT_DOMAIN_NAME`.
    pub project_domain_name: Option<String>,
    /// `tenantName`, or `OS_TENANT_NAME` / `OS_PROJECT_NAME`: the project the token is scoped to.
    pub tenant_name: Option<String>,
    /// `OS_REGION_NAME`, else `region`: which object-store endpoint of the catalog is used.
    pub region: Option<String>,
    /// `authType`: `password` (default) or `v3applicationcredential`.
    pub auth_type: Option<String>,
    /// `username` (password auth).
    pub username: Option<String>,
    /// `password` (password auth).
    pub password: Option<Secret>,
    /// `applicationCredentialID`.
    pub application_credential_id: Option<String>,
    /// `applicationCredentialName`.
    pub application_credential_name: Option<String>,
    /// `applicationCredentialSecret`.
    pub application_credential_secret: Option<Secret>,
    /// `OS_TOKEN` / `OS_AUTH_TOKEN`: a Keystone token to authenticate with (token auth).
    pub auth_token: Option<Secret>,
    /// `storageURL` (our extension): the object-store URL of the account, used with `token`.
    pub storage_url: Option<String>,
    /// `token` (our extension): a Keystone token already issued for `storageURL`.
    pub token: Option<Secret>,
}

/// Alibaba Cloud OSS credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OssCredentials {
    /// `storageEndpoint`.
    pub endpoint: String,
    /// `accessKeyID`.
    pub access_key_id: String,
    /// `accessKeySecret`.
    pub access_key_secret: Secret,
}

/// The credentials of one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Local needs none.
    None,
    /// S3, ECS, OCS.
    S3(S3Credentials),
    /// ABS.
    Abs(AbsCredentials),
    /// GCS; `None` in emulator mode (an `http://` endpoint override), which needs no auth, and
    /// otherwise without `GOOGLE_APPLICATION_CREDENTIALS`: Application Default Credentials (the
    /// gcloud well-known file, then the GCE metadata server), as the reference's Google client.
    Gcs(Option<GcsCredentials>),
    /// Swift.
    Swift(SwiftCredentials),
    /// OSS.
    Oss(OssCredentials),
}

/// Credentials plus the files they came from, so a change can be noticed.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The credentials.
    pub credentials: Credentials,
    /// Files and directories whose change means the credentials must be read again.
    pub watched: Vec<PathBuf>,
}

/// A snapshot of what the watched files looked like: (path, (mtime, size, inode)) each.
pub(crate) type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64, u64)>)>;

/// Stats every watched path (following symlinks, so a Kubernetes `..data` swap shows up).
pub(crate) fn fingerprint(watched: &[PathBuf]) -> Fingerprint {
    watched
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok().map(|m| {
                #[cfg(unix)]
                let ino = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let ino = 0;
                (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), ino)
            });
            (p.clone(), m)
        })
        .collect()
}

/// Key/value pairs from one credential source (JSON object or directory of files).
#[derive(Debug, Default)]
struct Fields {
    values: BTreeMap<String, String>,
    /// Where they came from, for error messages.
    origin: String,
    /// The directory when read from one-value files (S3's `token` is a path into it).
    dir: Option<PathBuf>,
}

impl Fields {
    fn get(&self, key: &str) -> Option<String> {
        self.values.get(key).cloned().filter(|v| !v.is_empty())
    }

    fn require(&self, provider: Provider, key: &str) -> Result<String, Error> {
        self.get(key)
            .ok_or_else(|| Error::Credentials { provider, reason: format!("{key} is missing in {}", self.origin) })
    }

    fn bool(&self, provider: Provider, key: &str) -> Result<Option<bool>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_bool(&v).map(Some).ok_or_else(|| Error::Credentials {
                provider,
                reason: format!("{key} in {} is not a boolean", self.origin),
            }),
        }
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn read_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::CredentialFile { path: path.to_path_buf(), source })
}

fn json_fields(provider: Provider, path: &Path) -> Result<Fields, Error> {
    let text = read_file(path)?;
    // serde_json's error names only a line and column, never the content.
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Credentials { provider, reason: format!("{} is not valid JSON: {e}", path.display()) })?;
    let obj = value.as_object().ok_or_else(|| Error::Credentials {
        provider,
        reason: format!("{} must hold a JSON object", path.display()),
    })?;
    let mut values = BTreeMap::new();
    for (k, v) in obj {
        let s = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => continue,
        };
        values.insert(k.clone(), s);
    }
    Ok(Fields { values, origin: path.display().to_string(), dir: None })
}

fn dir_fields(path: &Path, watched: &mut Vec<PathBuf>) -> Result<Fields, Error> {
    let mut values = BTreeMap::new();
    let entries =
        std::fs::read_dir(path).map_err(|source| Error::CredentialFile { path: path.to_path_buf(), source })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::CredentialFile { path: path.to_path_buf(), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Kubernetes secret volumes hold `..data` and timestamped dirs; the keys are symlinks.
        if name.starts_with('.') {
            continue;
        }
        let p = entry.path();
        if p.is_file() {
            names.push((name, p));
        }
    }
    names.sort();
    for (name, p) in names {
        values.insert(name, read_file(&p)?.trim().to_string());
        watched.push(p);
    }
    Ok(Fields { values, origin: format!("directory {}", path.display()), dir: Some(path.to_path_buf()) })
}

/// The first `*.json` in `dir` by name (the reference takes the first `os.ReadDir` returns,
/// which is sorted by name).
fn first_json_in(dir: &Path) -> Result<Option<PathBuf>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::CredentialFile { path: dir.to_path_buf(), source })?;
    let mut jsons: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    jsons.sort();
    Ok(jsons.into_iter().next())
}

/// Reads `<prefix><base>_JSON`, else `<prefix><base>` (a `*.json` in it first, then its files).
/// `Ok(None)` when neither variable is set.
fn read_source(
    provider: Provider,
    env: &dyn Fn(&str) -> Option<String>,
    env_prefix: &str,
    base: &str,
    watched: &mut Vec<PathBuf>,
) -> Result<Option<Fields>, Error> {
    if let Some(file) = env(&format!("{env_prefix}{base}_JSON")).filter(|f| !f.is_empty()) {
        let path = PathBuf::from(file);
        let fields = json_fields(provider, &path)?;
        watched.push(path);
        return Ok(Some(fields));
    }
    if let Some(dir) = env(&format!("{env_prefix}{base}")).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        watched.push(dir.clone());
        if let Some(json) = first_json_in(&dir)? {
            let fields = json_fields(provider, &json)?;
            watched.push(json);
            return Ok(Some(fields));
        }
        return dir_fields(&dir, watched).map(Some);
    }
    Ok(None)
}

fn missing(provider: Provider, what: &str) -> Error {
    Error::Credentials { provider, reason: format!("no credentials: set {what}") }
}

/// Loads the credentials `provider` needs. `gcs_emulator` says an `http://` endpoint override
/// was given, in which case GCS needs none (the reference's emulator mode).
pub fn load(
    provider: Provider,
    env: &dyn Fn(&str) -> Option<String>,
    env_prefix: &str,
    gcs_emulator: bool,
) -> Result<Loaded, Error> {
    let mut watched = Vec::new();
    let credentials = match provider {
        Provider::Local => Credentials::None,
        Provider::S3 => {
            match read_source(provider, env, env_prefix, "AWS_APPLICATION_CREDENTIALS", &mut watched)? {
                Some(f) => Credentials::S3(s3_from_fields(provider, &f)?),
                // The reference falls back to the AWS SDK's default chain.
                None => Credentials::S3(S3Credentials::default()),
            }
        }
        Provider::OCS => {
            let f = read_source(provider, env, env_prefix, "OPENSHIFT_APPLICATION_CREDENTIALS", &mut watched)?
                .ok_or_else(|| missing(provider, &format!("{env_prefix}OPENSHIFT_APPLICATION_CREDENTIALS[_JSON]")))?;
            Credentials::S3(ocs_from_fields(provider, &f)?)
        }
        Provider::ECS => Credentials::S3(ecs_from_env(env, env_prefix)?),
        Provider::ABS => {
            let f = read_source(provider, env, env_prefix, "AZURE_APPLICATION_CREDENTIALS", &mut watched)?
                .ok_or_else(|| missing(provider, &format!("{env_prefix}AZURE_APPLICATION_CREDENTIALS[_JSON]")))?;
            Credentials::Abs(AbsCredentials {
                storage_account: f.require(provider, "storageAccount")?,
                storage_key: Secret::new(f.require(provider, "storageKey")?),
                domain: f.get("domain"),
            })
        }
        Provider::GCS => {
            let var = format!("{env_prefix}GOOGLE_APPLICATION_CREDENTIALS");
            match env(&var).filter(|v| !v.is_empty()) {
                Some(path) => {
                    let path = PathBuf::from(path);
                    let gcs = gcs_from_file(&path)?;
                    watched.push(path);
                    Credentials::Gcs(Some(gcs))
                }
                None if gcs_emulator => Credentials::Gcs(None),
                // A copy source must name its file (the reference refuses otherwise); the
                // primary and secondary stores fall back to Application Default Credentials.
                None if env_prefix == "SOURCE_" => return Err(missing(provider, &var)),
                None => Credentials::Gcs(None),
            }
        }
        Provider::Swift => {
            let f = read_source(provider, env, env_prefix, "OPENSTACK_APPLICATION_CREDENTIALS", &mut watched)?;
            Credentials::Swift(swift_credentials(provider, f.as_ref(), env, env_prefix)?)
        }
        Provider::OSS => {
            let f = read_source(provider, env, env_prefix, "ALICLOUD_APPLICATION_CREDENTIALS", &mut watched)?
                .ok_or_else(|| missing(provider, &format!("{env_prefix}ALICLOUD_APPLICATION_CREDENTIALS[_JSON]")))?;
            Credentials::Oss(OssCredentials {
                endpoint: f.require(provider, "storageEndpoint")?,
                access_key_id: f.require(provider, "accessKeyID")?,
                access_key_secret: Secret::new(f.require(provider, "accessKeySecret")?),
            })
        }
    };
    Ok(Loaded { credentials, watched })
}

fn s3_from_fields(provider: Provider, f: &Fields) -> Result<S3Credentials, Error> {
    let token_path = match (&f.dir, f.get("tokenPath")) {
        (_, Some(p)) => Some(PathBuf::from(p)),
        // In a directory the token itself is the file `token`.
        (Some(dir), None) if f.get("token").is_some() => Some(dir.join("token")),
        _ => None,
    };
    let c = S3Credentials {
        access_key_id: f.get("accessKeyID"),
        secret_access_key: f.get("secretAccessKey").map(Secret::new),
        region: f.get("region"),
        endpoint: f.get("endpoint"),
        force_path_style: f.bool(provider, "s3ForcePathStyle")?,
        insecure_skip_verify: f.bool(provider, "insecureSkipVerify")?.unwrap_or(false),
        trusted_ca_cert: f.get("trustedCaCert"),
        sse_customer_key: f.get("sseCustomerKey").map(Secret::new),
        sse_customer_algorithm: f.get("sseCustomerAlgorithm"),
        role_arn: f.get("roleARN"),
        token_path,
    };
    let fail = |reason: &str| Error::Credentials { provider, reason: format!("{reason} ({})", f.origin) };
    if c.region.is_none() {
        return Err(fail("region is missing"));
    }
    let static_keys = c.access_key_id.is_some() && c.secret_access_key.is_some();
    let web_identity = c.role_arn.is_some() && c.token_path.is_some();
    if !static_keys && !web_identity {
        return Err(fail("either accessKeyID and secretAccessKey, or roleARN and token, must be set"));
    }
    if c.sse_customer_key.is_some() != c.sse_customer_algorithm.is_some() {
        return Err(fail("sseCustomerKey and sseCustomerAlgorithm must be given together"));
    }
    Ok(c)
}

fn ocs_from_fields(provider: Provider, f: &Fields) -> Result<S3Credentials, Error> {
    let disable_ssl = f.bool(provider, "disableSSL")?.unwrap_or(false);
    let endpoint = with_scheme(&f.require(provider, "endpoint")?, disable_ssl);
    Ok(S3Credentials {
        access_key_id: Some(f.require(provider, "accessKeyID")?),
        secret_access_key: Some(Secret::new(f.require(provider, "secretAccessKey")?)),
        region: Some(f.require(provider, "region")?),
        endpoint: Some(endpoint),
        force_path_style: Some(true),
        insecure_skip_verify: f.bool(provider, "insecureSkipVerify")?.unwrap_or(false),
        ..S3Credentials::default()
    })
}

fn ecs_from_env(env: &dyn Fn(&str) -> Option<String>, prefix: &str) -> Result<S3Credentials, Error> {
    let provider = Provider::ECS;
    // The reference reads the unprefixed ECS_* variables for every store (a copy's source
    // included); a prefixed one (`SOURCE_ECS_…`) is taken first, so two ECS accounts can differ.
    let var = |name: &str| {
        env(&format!("{prefix}{name}")).filter(|v| !v.is_empty()).or_else(|| env(name).filter(|v| !v.is_empty()))
    };
    let require = |name: &str| {
        var(name).ok_or_else(|| Error::Credentials { provider, reason: format!("{prefix}{name} is not set") })
    };
    // As the reference: a value that is no boolean means the default, false.
    let flag = |name: &str| -> Result<bool, Error> {
        Ok(match var(name) {
            None => false,
            Some(v) => parse_bool(&v).unwrap_or_else(|| {
                tracing::warn!(variable = name, "not a boolean; using false, as the Go tool does");
                false
            }),
        })
    };
    let disable_ssl = flag("ECS_DISABLE_SSL")?;
    Ok(S3Credentials {
        access_key_id: Some(require("ECS_ACCESS_KEY_ID")?),
        secret_access_key: Some(Secret::new(require("ECS_SECRET_ACCESS_KEY")?)),
        // The reference's fixed ECS region.
        region: Some("US-Standard".to_string()),
        endpoint: Some(with_scheme(&require("ECS_ENDPOINT")?, disable_ssl)),
        force_path_style: Some(true),
        insecure_skip_verify: flag("ECS_INSECURE_SKIP_VERIFY")?,
        ..S3Credentials::default()
    })
}

/// An endpoint without a scheme gets `http://` when SSL is disabled, else `https://`.
fn with_scheme(endpoint: &str, disable_ssl: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if disable_ssl {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    }
}

fn gcs_from_file(path: &Path) -> Result<GcsCredentials, Error> {
    let provider = Provider::GCS;
    let text = read_file(path)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Credentials { provider, reason: format!("{} is not valid JSON: {e}", path.display()) })?;
    let kind = value.get("type").and_then(|t| t.as_str()).unwrap_or_default().to_string();
    if kind != "service_account" && kind != "external_account" {
        return Err(Error::Credentials {
            provider,
            reason: format!("{}: type must be service_account or external_account, got {kind:?}", path.display()),
        });
    }
    let storage_api_endpoint = path
        .parent()
        .map(|d| d.join("storageAPIEndpoint"))
        .filter(|p| p.is_file())
        .map(|p| read_file(&p))
        .transpose()?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    Ok(GcsCredentials { credential_json: Secret::new(text), kind, storage_api_endpoint })
}

/// The `OS_*` variables gophercloud's clientconfig reads, with the prefix of `env_prefix`'s
/// store: `SOURCE_OS_` for a copy source, `OS_` otherwise (the reference has no `SECONDARY_OS_`).
pub(crate) fn os_env_prefix(env_prefix: &str) -> &'static str {
    if env_prefix == "SOURCE_" { "SOURCE_OS_" } else { "OS_" }
}

/// The `OS_*` variable names read (without prefix).
pub(crate) const OS_VARIABLES: &[&str] = &[
    "AUTH_URL",
    "USERNAME",
    "PASSWORD",
    "TENANT_NAME",
    "PROJECT_NAME",
    "DOMAIN_NAME",
    "USER_DOMAIN_NAME",
    "PROJECT_DOMAIN_NAME",
    "REGION_NAME",
    "AUTH_TYPE",
    "APPLICATION_CREDENTIAL_ID",
    "APPLICATION_CREDENTIAL_NAME",
    "APPLICATION_CREDENTIAL_SECRET",
    "TOKEN",
    "AUTH_TOKEN",
    "STORAGE_URL",
];

/// The file's fields (when there is a file), each missing one filled from the `OS_*`
/// variables, as gophercloud's clientconfig fills an empty setting from its variable.
fn swift_credentials(
    provider: Provider,
    f: Option<&Fields>,
    env: &dyn Fn(&str) -> Option<String>,
    env_prefix: &str,
) -> Result<SwiftCredentials, Error> {
    let os = os_env_prefix(env_prefix);
    let var = |name: &str| env(&format!("{os}{name}")).filter(|v| !v.is_empty());
    let field = |key: &str| f.and_then(|f| f.get(key));
    let either = |key: &str, name: &str| field(key).or_else(|| var(name));
    let origin = f.map_or_else(|| format!("the {os}* variables"), |f| f.origin.clone());
    let c = SwiftCredentials {
        auth_url: either("authURL", "AUTH_URL").unwrap_or_default(),
        domain_name: either("domainName", "DOMAIN_NAME"),
        user_domain_name: var("USER_DOMAIN_NAME"),
        project_domain_name: var("PROJECT_DOMAIN_NAME"),
        tenant_name: field("tenantName").or_else(|| var("PROJECT_NAME")).or_else(|| var("TENANT_NAME")),
        // gophercloud picks the endpoint with OS_REGION_NAME; the file's region is the fallback.
        region: var("REGION_NAME").or_else(|| field("region")),
        auth_type: either("authType", "AUTH_TYPE"),
        username: either("username", "USERNAME"),
        password: either("password", "PASSWORD").map(Secret::new),
        application_credential_id: either("applicationCredentialID", "APPLICATION_CREDENTIAL_ID"),
        application_credential_name: either("applicationCredentialName", "APPLICATION_CREDENTIAL_NAME"),
        application_credential_secret: either("applicationCredentialSecret", "APPLICATION_CREDENTIAL_SECRET")
            .map(Secret::new),
        auth_token: var("AUTH_TOKEN").or_else(|| var("TOKEN")).map(Secret::new),
        storage_url: field("storageURL").or_else(|| var("STORAGE_URL")),
        token: field("token").map(Secret::new),
    };
    let fail = |reason: String| Error::Credentials { provider, reason: format!("{reason} ({origin})") };
    if f.is_none() && c.auth_url.is_empty() && c.storage_url.is_none() {
        return Err(missing(
            provider,
            &format!("{env_prefix}OPENSTACK_APPLICATION_CREDENTIALS[_JSON], or the {os}* variables ({os}AUTH_URL, …)"),
        ));
    }
    // A storage URL with a token needs no Keystone.
    if c.storage_url.is_some() && (c.token.is_some() || c.auth_token.is_some()) {
        return Ok(SwiftCredentials { token: c.token.clone().or_else(|| c.auth_token.clone()), ..c });
    }
    if c.auth_url.is_empty() {
        return Err(fail("authURL (or OS_AUTH_URL) is missing".into()));
    }
    match c.auth_type.as_deref().unwrap_or("password") {
        "v3applicationcredential" | "applicationcredential" | "v3applicationcredentials" => {
            let id_or_name = c.application_credential_id.is_some() || c.application_credential_name.is_some();
            if !id_or_name || c.application_credential_secret.is_none() {
                return Err(fail(
                    "v3applicationcredential auth needs applicationCredentialID or Name, and applicationCredentialSecret"
                        .into(),
                ));
            }
        }
        "token" | "v3token" => {
            if c.auth_token.is_none() {
                return Err(fail("token auth needs OS_TOKEN or OS_AUTH_TOKEN".into()));
            }
        }
        "password" | "v3password" | "" => {
            if c.auth_token.is_none() && (c.username.is_none() || c.password.is_none()) {
                return Err(fail("password auth needs username and password".into()));
            }
        }
        other => return Err(fail(format!("unknown authType {other:?}"))),
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        move |k: &str| map.get(k).cloned()
    }

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = S3Credentials {
            access_key_id: Some("AKIDCANARY".into()),
            secret_access_key: Some(Secret::new("s3cr3t-canary-value")),
            sse_customer_key: Some(Secret::new("sse-canary-value")),
            ..S3Credentials::default()
        };
        let abs = AbsCredentials {
            storage_account: "acct".into(),
            storage_key: Secret::new("abs-canary-value"),
            domain: None,
        };
        let text = format!("{c:?} {abs:?} {:?}", Credentials::Abs(abs.clone()));
        for canary in ["s3cr3t-canary-value", "sse-canary-value", "abs-canary-value"] {
            assert!(!text.contains(canary), "{text}");
        }
        assert!(text.contains("Secret(***)"));
    }

    #[test]
    fn s3_from_directory_of_files_trims_values_and_watches_them() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "accessKeyID", "AKID\n");
        write(dir.path(), "secretAccessKey", "secret\n");
        write(dir.path(), "region", "eu-west-1");
        write(dir.path(), "s3ForcePathStyle", "true");
        let env = env_of(&[("AWS_APPLICATION_CREDENTIALS", dir.path().display().to_string())]);
        let loaded = load(Provider::S3, &env, "", false).unwrap();
        let Credentials::S3(c) = &loaded.credentials else { panic!("{loaded:?}") };
        assert_eq!(c.access_key_id.as_deref(), Some("AKID"));
        assert_eq!(c.secret_access_key.as_ref().map(|s| s.expose()), Some("secret"));
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.force_path_style, Some(true));
        assert_eq!(loaded.watched.len(), 5, "the dir and its four files: {:?}", loaded.watched);
    }

    #[test]
    fn s3_json_file_wins_over_directory_and_json_in_directory_wins_over_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "accessKeyID", "from-file");
        write(dir.path(), "secretAccessKey", "s");
        write(dir.path(), "region", "r");
        let json = r#"{"accessKeyID":"from-json","secretAccessKey":"s","region":"r","s3ForcePathStyle":false}"#;
        write(dir.path(), "creds.json", json);
        let env = env_of(&[("AWS_APPLICATION_CREDENTIALS", dir.path().display().to_string())]);
        let Credentials::S3(c) = load(Provider::S3, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(c.access_key_id.as_deref(), Some("from-json"));
        assert_eq!(c.force_path_style, Some(false));

        let other = tempfile::tempdir().unwrap();
        let file = write(other.path(), "aws.json", r#"{"accessKeyID":"explicit","secretAccessKey":"s","region":"r"}"#);
        let env = env_of(&[
            ("AWS_APPLICATION_CREDENTIALS", dir.path().display().to_string()),
            ("AWS_APPLICATION_CREDENTIALS_JSON", file.display().to_string()),
        ]);
        let Credentials::S3(c) = load(Provider::S3, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(c.access_key_id.as_deref(), Some("explicit"));
    }

    #[test]
    fn s3_web_identity_from_directory_points_at_token_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "region", "r");
        write(dir.path(), "roleARN", "arn:aws:iam::1:role/x");
        write(dir.path(), "token", "jwt");
        let env = env_of(&[("AWS_APPLICATION_CREDENTIALS", dir.path().display().to_string())]);
        let Credentials::S3(c) = load(Provider::S3, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(c.token_path, Some(dir.path().join("token")));
        assert!(c.access_key_id.is_none());
    }

    #[test]
    fn s3_bad_credentials_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(&[("AWS_APPLICATION_CREDENTIALS", dir.path().display().to_string())]);
        write(dir.path(), "accessKeyID", "a");
        write(dir.path(), "secretAccessKey", "s");
        let e = load(Provider::S3, &env, "", false).unwrap_err().to_string();
        assert!(e.contains("region is missing"), "{e}");
        write(dir.path(), "region", "r");
        write(dir.path(), "sseCustomerKey", "k");
        let e = load(Provider::S3, &env, "", false).unwrap_err().to_string();
        assert!(e.contains("sseCustomerAlgorithm"), "{e}");
        std::fs::remove_file(dir.path().join("sseCustomerKey")).unwrap();
        write(dir.path(), "s3ForcePathStyle", "maybe");
        let e = load(Provider::S3, &env, "", false).unwrap_err().to_string();
        assert!(e.contains("not a boolean"), "{e}");
        let json = write(dir.path(), "broken.json", "{\"accessKeyID\": \"secret-canary");
        let env = env_of(&[("AWS_APPLICATION_CREDENTIALS_JSON", json.display().to_string())]);
        let e = load(Provider::S3, &env, "", false).unwrap_err().to_string();
        assert!(e.contains("not valid JSON") && !e.contains("secret-canary"), "{e}");
    }

    #[test]
    fn s3_without_any_variable_uses_default_chain() {
        let env = env_of(&[]);
        let loaded = load(Provider::S3, &env, "", false).unwrap();
        assert_eq!(loaded.credentials, Credentials::S3(S3Credentials::default()));
        assert!(loaded.watched.is_empty());
    }

    #[test]
    fn env_prefix_selects_source_variables() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "storageAccount", "acct");
        write(dir.path(), "storageKey", "a2V5");
        let env = env_of(&[("SOURCE_AZURE_APPLICATION_CREDENTIALS", dir.path().display().to_string())]);
        assert!(load(Provider::ABS, &env, "", false).is_err());
        let Credentials::Abs(c) = load(Provider::ABS, &env, "SOURCE_", false).unwrap().credentials else { panic!() };
        assert_eq!(c.storage_account, "acct");
        assert_eq!(c.storage_key.expose(), "a2V5");
        assert_eq!(c.domain, None);
    }

    #[test]
    fn abs_json_and_missing_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "abs.json",
            r#"{"storageAccount":"acct","storageKey":"k","domain":"blob.core.chinacloudapi.cn"}"#,
        );
        let env = env_of(&[("AZURE_APPLICATION_CREDENTIALS_JSON", f.display().to_string())]);
        let Credentials::Abs(c) = load(Provider::ABS, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(c.domain.as_deref(), Some("blob.core.chinacloudapi.cn"));
        let f = write(dir.path(), "abs.json", r#"{"storageAccount":"acct"}"#);
        let env = env_of(&[("AZURE_APPLICATION_CREDENTIALS_JSON", f.display().to_string())]);
        let e = load(Provider::ABS, &env, "", false).unwrap_err().to_string();
        assert!(e.contains("storageKey is missing"), "{e}");
    }

    #[test]
    fn gcs_reads_its_file_or_falls_back_to_application_default_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "sa.json", r#"{"type":"service_account","project_id":"p","private_key":"x"}"#);
        write(dir.path(), "storageAPIEndpoint", "https://storage.example/\n");
        let env = env_of(&[("GOOGLE_APPLICATION_CREDENTIALS", f.display().to_string())]);
        let Credentials::Gcs(Some(c)) = load(Provider::GCS, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(c.kind, "service_account");
        assert_eq!(c.storage_api_endpoint.as_deref(), Some("https://storage.example/"));
        let bad = write(dir.path(), "user.json", r#"{"type":"authorized_user"}"#);
        let env = env_of(&[("GOOGLE_APPLICATION_CREDENTIALS", bad.display().to_string())]);
        assert!(load(Provider::GCS, &env, "", false).unwrap_err().to_string().contains("authorized_user"));
        let none = env_of(&[]);
        assert_eq!(load(Provider::GCS, &none, "", false).unwrap().credentials, Credentials::Gcs(None), "ADC");
        assert_eq!(load(Provider::GCS, &none, "SECONDARY_", false).unwrap().credentials, Credentials::Gcs(None));
        assert_eq!(load(Provider::GCS, &none, "", true).unwrap().credentials, Credentials::Gcs(None));
        let e = load(Provider::GCS, &none, "SOURCE_", false).unwrap_err().to_string();
        assert!(e.contains("SOURCE_GOOGLE_APPLICATION_CREDENTIALS"), "a copy source must name its file: {e}");
    }

    #[test]
    fn swift_password_and_application_credentials() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "authURL", "https://keystone.example/v3");
        write(dir.path(), "username", "u");
        write(dir.path(), "password", "p");
        write(dir.path(), "domainName", "d");
        write(dir.path(), "tenantName", "t");
        write(dir.path(), "region", "RegionOne");
        let env = env_of(&[("OPENSTACK_APPLICATION_CREDENTIALS", dir.path().display().to_string())]);
        let Credentials::Swift(c) = load(Provider::Swift, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.region.as_deref(), Some("RegionOne"));

        let f = write(
            dir.path(),
            "app.json",
            r#"{"authURL":"https://k/v3","authType":"v3applicationcredential","applicationCredentialID":"id"}"#,
        );
        let env = env_of(&[("OPENSTACK_APPLICATION_CREDENTIALS_JSON", f.display().to_string())]);
        let e = load(Provider::Swift, &env, "", false).unwrap_err().to_string();
        assert!(e.contains("applicationCredentialSecret"), "{e}");
        let f = write(
            dir.path(),
            "app.json",
            r#"{"authURL":"https://k/v3","authType":"v3applicationcredential","applicationCredentialID":"id","applicationCredentialSecret":"s"}"#,
        );
        let env = env_of(&[("OPENSTACK_APPLICATION_CREDENTIALS_JSON", f.display().to_string())]);
        let Credentials::Swift(c) = load(Provider::Swift, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(c.application_credential_id.as_deref(), Some("id"));
    }

    #[test]
    fn oss_requires_all_three_fields() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "storageEndpoint", "oss-eu-central-1.aliyuncs.com");
        write(dir.path(), "accessKeyID", "id");
        let env = env_of(&[("ALICLOUD_APPLICATION_CREDENTIALS", dir.path().display().to_string())]);
        let e = load(Provider::OSS, &env, "", false).unwrap_err().to_string();
        assert!(e.contains("accessKeySecret is missing"), "{e}");
        write(dir.path(), "accessKeySecret", "s");
        let Credentials::Oss(c) = load(Provider::OSS, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(c.endpoint, "oss-eu-central-1.aliyuncs.com");
    }

    #[test]
    fn ecs_from_environment_variables() {
        let env = env_of(&[
            ("ECS_ENDPOINT", "ecs.example:9020".into()),
            ("ECS_ACCESS_KEY_ID", "id".into()),
            ("ECS_SECRET_ACCESS_KEY", "s".into()),
            ("ECS_DISABLE_SSL", "true".into()),
        ]);
        let Credentials::S3(c) = load(Provider::ECS, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(c.endpoint.as_deref(), Some("http://ecs.example:9020"));
        assert_eq!(c.region.as_deref(), Some("US-Standard"));
        let env = env_of(&[("ECS_ENDPOINT", "https://ecs.example".into())]);
        let e = load(Provider::ECS, &env, "", false).unwrap_err().to_string();
        assert!(e.contains("ECS_ACCESS_KEY_ID"), "{e}");
    }

    /// As the reference: ECS_* without prefix serve every store; a prefixed variable wins; a
    /// value that is no boolean is the default.
    #[test]
    fn ecs_reads_the_unprefixed_variables_and_defaults_bad_booleans() {
        let env = env_of(&[
            ("ECS_ENDPOINT", "ecs.example:9020".into()),
            ("ECS_ACCESS_KEY_ID", "id".into()),
            ("ECS_SECRET_ACCESS_KEY", "s".into()),
            ("ECS_DISABLE_SSL", "yes".into()),
            ("SOURCE_ECS_ACCESS_KEY_ID", "source-id".into()),
        ]);
        let Credentials::S3(c) = load(Provider::ECS, &env, "SOURCE_", false).unwrap().credentials else { panic!() };
        assert_eq!(c.access_key_id.as_deref(), Some("source-id"));
        assert_eq!(c.endpoint.as_deref(), Some("https://ecs.example:9020"), "`yes` is no boolean: SSL stays on");
        let Credentials::S3(c) = load(Provider::ECS, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(c.access_key_id.as_deref(), Some("id"));
    }

    /// Without a credentials file the OS_* variables gophercloud reads (SOURCE_OS_* for a copy
    /// source); with one, they fill what it leaves out.
    #[test]
    fn swift_reads_the_os_variables() {
        let os = env_of(&[
            ("OS_AUTH_URL", "https://keystone.example/v3".into()),
            ("OS_USERNAME", "u".into()),
            ("OS_PASSWORD", "p".into()),
            ("OS_PROJECT_NAME", "proj".into()),
            ("OS_USER_DOMAIN_NAME", "ud".into()),
            ("OS_REGION_NAME", "RegionTwo".into()),
        ]);
        let Credentials::Swift(c) = load(Provider::Swift, &os, "", false).unwrap().credentials else { panic!() };
        assert_eq!(
            (c.auth_url.as_str(), c.username.as_deref(), c.tenant_name.as_deref()),
            ("https://keystone.example/v3", Some("u"), Some("proj"))
        );
        assert_eq!((c.user_domain_name.as_deref(), c.region.as_deref()), (Some("ud"), Some("RegionTwo")));
        let e = load(Provider::Swift, &os, "SOURCE_", false).unwrap_err().to_string();
        assert!(e.contains("SOURCE_OS_"), "a copy source reads SOURCE_OS_*: {e}");
        let Credentials::Swift(c) = load(Provider::Swift, &os, "SECONDARY_", false).unwrap().credentials else {
            panic!()
        };
        assert_eq!(c.username.as_deref(), Some("u"), "the reference has no SECONDARY_OS_*");
        // A file's fields win; the variables fill the rest.
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "c.json",
            r#"{"authURL":"https://k2/v3","username":"file-user","password":"fp","tenantName":"ft","region":"RegionOne"}"#,
        );
        let mut vars = vec![
            ("OPENSTACK_APPLICATION_CREDENTIALS_JSON", f.display().to_string()),
            ("OS_USER_DOMAIN_NAME", "ud".into()),
        ];
        let env = env_of(&vars);
        let Credentials::Swift(c) = load(Provider::Swift, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(
            (c.username.as_deref(), c.tenant_name.as_deref(), c.user_domain_name.as_deref()),
            (Some("file-user"), Some("ft"), Some("ud"))
        );
        assert_eq!(c.region.as_deref(), Some("RegionOne"));
        vars.push(("OS_REGION_NAME", "RegionTwo".into()));
        let Credentials::Swift(c) = load(Provider::Swift, &env_of(&vars), "", false).unwrap().credentials else {
            panic!()
        };
        assert_eq!(c.region.as_deref(), Some("RegionTwo"), "gophercloud picks the endpoint with OS_REGION_NAME");
        // Nothing at all: the message names both ways.
        let e = load(Provider::Swift, &env_of(&[]), "", false).unwrap_err().to_string();
        assert!(e.contains("OPENSTACK_APPLICATION_CREDENTIALS") && e.contains("OS_AUTH_URL"), "{e}");
    }

    #[test]
    fn ocs_from_json_adds_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "ocs.json",
            r#"{"endpoint":"s3.openshift.local","region":"r","accessKeyID":"id","secretAccessKey":"s","disableSSL":true}"#,
        );
        let env = env_of(&[("OPENSHIFT_APPLICATION_CREDENTIALS_JSON", f.display().to_string())]);
        let Credentials::S3(c) = load(Provider::OCS, &env, "", false).unwrap().credentials else { panic!() };
        assert_eq!(c.endpoint.as_deref(), Some("http://s3.openshift.local"));
    }

    #[test]
    fn fingerprint_changes_when_a_watched_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "k", "one");
        let before = fingerprint(std::slice::from_ref(&f));
        assert_eq!(before, fingerprint(std::slice::from_ref(&f)));
        // A different size is a change even when the mtime granularity hides the rewrite.
        write(dir.path(), "k", "three");
        assert_ne!(before, fingerprint(std::slice::from_ref(&f)));
        std::fs::remove_file(&f).unwrap();
        assert_eq!(fingerprint(std::slice::from_ref(&f))[0].1, None);
    }
}
