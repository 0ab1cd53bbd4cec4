//! Credentials, read the way the reference reads them: a directory of one-value files named by
//! `<PROVIDER>_APPLICATION_CREDENTIALS` (or a `*.json` inside it), a JSON file named by
//! `<PROVIDER>_APPLICATION_CREDENTIALS_JSON`, `GOOGLE_APPLICATION_CREDENTIALS` for GCS, and
//! `ECS_*` variables for ECS. Every variable name may carry the config's `env_prefix`
//! (`SOURCE_`, `SECONDARY_`).
//!
//! Secret values are held in [`Secret`], whose `Debug` prints `***`; nothing here implements
//! `Display` for a secret. One-value files are trimmed of surrounding whitespace (a trailing
//! newline from `echo` would otherwise become part of a key).
//!
//! One file a concern: `source.rs` reads the reference's files (JSON or a directory of
//! one-value files) and fingerprints them; `s3.rs` (S3, OCS, ECS), `gcs.rs` and `swift.rs` turn
//! them, and the variables, into each provider's credentials; ABS and OSS, three fields each,
//! are read in [`load`].

mod gcs;
mod s3;
mod source;
mod swift;

use std::fmt;
use std::path::PathBuf;

use crate::Error;
use crate::config::Provider;

use gcs::gcs_from_file;
use s3::{ecs_from_env, ocs_from_fields, s3_from_fields};
use source::read_source;
pub(crate) use source::{Fingerprint, fingerprint};
use swift::swift_credentials;
pub(crate) use swift::{OS_VARIABLES, os_env_prefix};

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

/// The error for a provider none of whose credential variables is set.
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

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
