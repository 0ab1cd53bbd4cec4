//! S3 and the S3-compatible providers: S3 (`AWS_APPLICATION_CREDENTIALS[_JSON]`), OCS
//! (`OPENSHIFT_APPLICATION_CREDENTIALS[_JSON]`) and ECS (the `ECS_*` variables).

use std::path::PathBuf;

use super::source::{Fields, parse_bool};
use super::{S3Credentials, Secret};
use crate::Error;
use crate::config::Provider;

pub(super) fn s3_from_fields(provider: Provider, f: &Fields) -> Result<S3Credentials, Error> {
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

pub(super) fn ocs_from_fields(provider: Provider, f: &Fields) -> Result<S3Credentials, Error> {
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

pub(super) fn ecs_from_env(env: &dyn Fn(&str) -> Option<String>, prefix: &str) -> Result<S3Credentials, Error> {
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
