//! Google Cloud Storage: the service-account (or external-account) JSON named by
//! `GOOGLE_APPLICATION_CREDENTIALS`, and a `storageAPIEndpoint` file beside it.

use std::path::Path;

use super::source::read_file;
use super::{GcsCredentials, Secret};
use crate::Error;
use crate::config::Provider;

pub(super) fn gcs_from_file(path: &Path) -> Result<GcsCredentials, Error> {
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
