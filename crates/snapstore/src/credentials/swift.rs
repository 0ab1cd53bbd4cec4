//! OpenStack Swift: the reference's credentials file, with the `OS_*` variables gophercloud
//! reads filling what it leaves out (or standing alone).

use super::source::Fields;
use super::{Secret, SwiftCredentials, missing};
use crate::Error;
use crate::config::Provider;

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
pub(super) fn swift_credentials(
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
