//! OpenStack Keystone v3 authentication for the Swift store, as the reference's gophercloud
//! client does it: a token for the credentials (password, application credential or an
//! existing token), scoped to the project, and the object-store URL from the token's catalog.
//!
//! The store asks again before the token expires (see `store/mod.rs`).

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::Error;
use crate::config::Provider;
use crate::credentials::{Secret, SwiftCredentials};

/// How long before its expiry a token is replaced.
pub(crate) const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// An issued token and where it is used.
#[derive(Clone)]
pub(crate) struct SwiftSession {
    /// `X-Subject-Token`.
    pub token: Secret,
    /// The object-store URL of the account (`.../v1/AUTH_<project>`).
    pub storage_url: String,
    /// When the token expires (`None`: Keystone did not say).
    pub expires_at: Option<SystemTime>,
}

impl std::fmt::Debug for SwiftSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwiftSession")
            .field("token", &self.token)
            .field("storage_url", &self.storage_url)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl SwiftSession {
    /// Whether the token should be replaced now.
    pub fn expiring(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|e| now + RENEW_BEFORE >= e)
    }
}

fn fail(reason: impl Into<String>) -> Error {
    Error::Credentials { provider: Provider::Swift, reason: reason.into() }
}

/// `POST <authURL>/auth/tokens`: the identity endpoint takes `/v3` when the URL names none.
fn tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") { format!("{base}/auth/tokens") } else { format!("{base}/v3/auth/tokens") }
}

fn domain(name: &Option<String>) -> Value {
    json!({ "name": name.clone().unwrap_or_else(|| "Default".to_string()) })
}

/// The v3 token request for `c` (gophercloud's `AuthOptions.ToTokenV3CreateMap`, with the
/// scope `clientconfig` builds: the project by name in the user's domain, or the domain).
pub(crate) fn token_request(c: &SwiftCredentials) -> Result<Value, Error> {
    let user_domain = c.user_domain_name.clone().or_else(|| c.domain_name.clone());
    let project_domain = c.project_domain_name.clone().or_else(|| c.domain_name.clone());
    let project_scope = || -> Option<Value> {
        c.tenant_name.as_ref().map(|p| json!({ "project": { "name": p, "domain": domain(&project_domain) } }))
    };
    let auth_type = c.auth_type.as_deref().unwrap_or("password");
    let (identity, scope) = if auth_type == "v3applicationcredential"
        || c.application_credential_id.is_some()
        || c.application_credential_name.is_some()
    {
        let secret = c
            .application_credential_secret
            .as_ref()
            .ok_or_else(|| fail("an application credential needs its secret"))?;
        let cred = match (&c.application_credential_id, &c.application_credential_name) {
            (Some(id), _) => json!({ "id": id, "secret": secret.expose() }),
            (None, Some(name)) => {
                let user =
                    c.username.as_ref().ok_or_else(|| fail("an application credential by name needs the username"))?;
                json!({ "name": name, "secret": secret.expose(), "user": { "name": user, "domain": domain(&user_domain) } })
            }
            (None, None) => return Err(fail("an application credential needs its ID or name")),
        };
        // Application credentials carry their own scope.
        (json!({ "methods": ["application_credential"], "application_credential": cred }), None)
    } else if let Some(token) = &c.auth_token {
        (json!({ "methods": ["token"], "token": { "id": token.expose() } }), project_scope())
    } else {
        let (Some(user), Some(password)) = (&c.username, &c.password) else {
            return Err(fail("password authentication needs username and password"));
        };
        let user = json!({ "name": user, "domain": domain(&user_domain), "password": password.expose() });
        let scope = project_scope().or_else(|| c.domain_name.as_ref().map(|d| json!({ "domain": { "name": d } })));
        (json!({ "methods": ["password"], "password": { "user": user } }), scope)
    };
    let mut auth = json!({ "identity": identity });
    if let Some(scope) = scope {
        auth["scope"] = scope;
    }
    Ok(json!({ "auth": auth }))
}

/// The public object-store endpoint of `region` (any region when `None`, if there is one).
pub(crate) fn object_store_url(token: &Value, region: Option<&str>) -> Result<String, Error> {
    let catalog = token
        .pointer("/token/catalog")
        .and_then(Value::as_array)
        .ok_or_else(|| fail("the token has no service catalog"))?;
    let endpoints: Vec<&Value> = catalog
        .iter()
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("object-store"))
        .flat_map(|s| s.get("endpoints").and_then(Value::as_array).into_iter().flatten())
        .filter(|e| e.get("interface").and_then(Value::as_str) == Some("public"))
        .filter(|e| {
            region.is_none_or(|r| {
                e.get("region_id").and_then(Value::as_str) == Some(r)
                    || e.get("region").and_then(Value::as_str) == Some(r)
            })
        })
        .collect();
    match endpoints.as_slice() {
        [one] => one
            .get("url")
            .and_then(Value::as_str)
            .map(|u| u.trim_end_matches('/').to_string())
            .ok_or_else(|| fail("the object-store endpoint has no URL")),
        [] => Err(fail(format!(
            "the service catalog has no public object-store endpoint{}",
            region.map(|r| format!(" in region {r}")).unwrap_or_default()
        ))),
        _ => {
            Err(fail("the service catalog has several public object-store endpoints: set the region (OS_REGION_NAME)"))
        }
    }
}

/// Authenticates with Keystone and returns the session for the Swift store.
pub(crate) async fn authenticate(
    client: &reqwest::Client,
    c: &SwiftCredentials,
    region: Option<&str>,
) -> Result<SwiftSession, Error> {
    let body = token_request(c)?;
    let url = tokens_url(&c.auth_url);
    let resp = client
        .post(&url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| Error::Config(format!("Keystone at {url} cannot be reached: {e}")))?;
    let status = resp.status();
    let token = resp.headers().get("X-Subject-Token").and_then(|v| v.to_str().ok()).map(|t| Secret::new(t.to_string()));
    let text = resp.text().await.map_err(|e| Error::Config(format!("reading Keystone's answer from {url}: {e}")))?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(String::from))
            .unwrap_or_default();
        return Err(fail(format!("Keystone at {url} refused the credentials ({status}) {message}")));
    }
    let token = token.ok_or_else(|| fail(format!("Keystone at {url} answered without X-Subject-Token")))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| fail(format!("Keystone's token is not JSON: {e}")))?;
    let storage_url = object_store_url(&value, region)?;
    let expires_at = value
        .pointer("/token/expires_at")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok());
    Ok(SwiftSession { token, storage_url, expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> SwiftCredentials {
        SwiftCredentials {
            auth_url: "https://keystone.example:5000/v3".into(),
            domain_name: Some("gardener".into()),
            tenant_name: Some("shoot-project".into()),
            username: Some("etcd-backup".into()),
            password: Some(Secret::new("pw")),
            ..SwiftCredentials::default()
        }
    }

    #[test]
    fn password_requests_are_project_scoped_in_the_domain() {
        let v = token_request(&creds()).unwrap();
        assert_eq!(v["auth"]["identity"]["methods"][0], "password");
        assert_eq!(v["auth"]["identity"]["password"]["user"]["name"], "etcd-backup");
        assert_eq!(v["auth"]["identity"]["password"]["user"]["domain"]["name"], "gardener");
        assert_eq!(v["auth"]["scope"]["project"]["name"], "shoot-project");
        assert_eq!(v["auth"]["scope"]["project"]["domain"]["name"], "gardener");
        assert_eq!(tokens_url("https://k:5000/v3/"), "https://k:5000/v3/auth/tokens");
        assert_eq!(tokens_url("https://k:5000"), "https://k:5000/v3/auth/tokens");
    }

    #[test]
    fn application_credentials_carry_their_own_scope() {
        let c = SwiftCredentials {
            auth_type: Some("v3applicationcredential".into()),
            application_credential_id: Some("ac-id".into()),
            application_credential_secret: Some(Secret::new("s")),
            ..creds()
        };
        let v = token_request(&c).unwrap();
        assert_eq!(v["auth"]["identity"]["application_credential"]["id"], "ac-id");
        assert!(v["auth"].get("scope").is_none());
        let by_name =
            SwiftCredentials { application_credential_id: None, application_credential_name: Some("ac".into()), ..c };
        let v = token_request(&by_name).unwrap();
        assert_eq!(v["auth"]["identity"]["application_credential"]["user"]["name"], "etcd-backup");
    }

    #[test]
    fn the_object_store_url_is_the_public_endpoint_of_the_region() {
        let token = json!({"token": {"catalog": [
            {"type": "identity", "endpoints": [{"interface": "public", "region": "r1", "url": "https://k/v3"}]},
            {"type": "object-store", "endpoints": [
                {"interface": "internal", "region": "r1", "url": "http://swift.internal/v1/AUTH_p"},
                {"interface": "public", "region": "r1", "url": "https://swift-r1/v1/AUTH_p/"},
                {"interface": "public", "region_id": "r2", "url": "https://swift-r2/v1/AUTH_p"}
            ]}
        ]}});
        assert_eq!(object_store_url(&token, Some("r1")).unwrap(), "https://swift-r1/v1/AUTH_p");
        assert_eq!(object_store_url(&token, Some("r2")).unwrap(), "https://swift-r2/v1/AUTH_p");
        assert!(object_store_url(&token, None).unwrap_err().to_string().contains("OS_REGION_NAME"));
        assert!(object_store_url(&token, Some("r3")).is_err());
    }
}
