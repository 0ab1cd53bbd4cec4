//! [`LeaseClient`]: GET and merge-PATCH of `coordination.k8s.io/v1` Leases in one namespace,
//! through kube-rs.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

use crate::LeaseError;

/// How long one request may take before it counts as failed (the reference's
/// `LeaseUpdateTimeoutDuration` is 60 s for a whole update; a GET and a PATCH share it).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads and patches Leases in one namespace.
///
/// Where the API is found, in the order of the reference's controller-runtime:
/// `$KUBECONFIG` when set; else the pod's service account when `$KUBERNETES_SERVICE_HOST` is
/// set (`https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, the token and CA under
/// `/var/run/secrets/kubernetes.io/serviceaccount/`, both re-read about once a minute as they
/// rotate); else `~/.kube/config`. Token files named in a kubeconfig (`tokenFile`) are re-read
/// the same way.
#[derive(Clone)]
pub struct LeaseClient {
    api: Api<Lease>,
    namespace: String,
    timeout: Duration,
}

impl fmt::Debug for LeaseClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseClient").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

fn config_error(what: impl fmt::Display) -> LeaseError {
    LeaseError::Config(what.to_string())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl LeaseClient {
    /// A client for Leases in `namespace`, configured from the environment (see the type's
    /// docs). Reads files only; no request is sent.
    pub async fn from_environment(namespace: &str) -> Result<LeaseClient, LeaseError> {
        let config = if env("KUBECONFIG").is_some() {
            kube::Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|e| config_error(format!("cannot use $KUBECONFIG: {e}")))?
        } else if env("KUBERNETES_SERVICE_HOST").is_some() {
            kube::Config::incluster().map_err(|e| config_error(format!("cannot use the pod's service account: {e}")))?
        } else {
            kube::Config::from_kubeconfig(&KubeConfigOptions::default()).await.map_err(|e| {
                config_error(format!(
                    "no Kubernetes API configured: set $KUBECONFIG, run in a pod with a service account, or write ~/.kube/config ({e})"
                ))
            })?
        };
        LeaseClient::from_config(config, namespace)
    }

    /// A client for Leases in `namespace` through the current context of the kubeconfig file
    /// at `path`.
    pub async fn from_kubeconfig(path: &Path, namespace: &str) -> Result<LeaseClient, LeaseError> {
        let kubeconfig =
            Kubeconfig::read_from(path).map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| config_error(format!("cannot use {}: {e}", path.display())))?;
        LeaseClient::from_config(config, namespace)
    }

    fn from_config(mut config: kube::Config, namespace: &str) -> Result<LeaseClient, LeaseError> {
        if namespace.trim().is_empty() {
            return Err(config_error("the namespace of the Leases is empty (set $POD_NAMESPACE)"));
        }
        // Both of rustls' providers are in the build (other crates bring ring); kube builds its
        // TLS config from the process default, so one must be chosen. aws-lc-rs, as the store
        // clients and the HTTPS server use. Failing means another part installed one already.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        config.read_timeout = Some(DEFAULT_REQUEST_TIMEOUT);
        let client =
            kube::Client::try_from(config).map_err(|e| config_error(format!("cannot build the client: {e}")))?;
        Ok(LeaseClient {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Limits each request to `timeout` (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> LeaseClient {
        self.timeout = timeout;
        self
    }

    /// The namespace of the Leases.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Lease `name`.
    pub async fn get(&self, name: &str) -> Result<Lease, LeaseError> {
        self.bounded(name, self.api.get(name)).await
    }

    /// Applies a JSON merge patch (RFC 7386, `application/merge-patch+json`, what the
    /// reference's `client.MergeFrom` sends) to the Lease `name` and returns the result. A
    /// patch that carries `metadata.resourceVersion` fails with [`LeaseError::Conflict`] when
    /// the Lease changed since.
    pub async fn patch(&self, name: &str, patch: &Value) -> Result<Lease, LeaseError> {
        self.bounded(name, self.api.patch(name, &PatchParams::default(), &Patch::Merge(patch))).await
    }

    async fn bounded<T>(
        &self,
        name: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(LeaseError::from_kube(name, e)),
            Err(_) => Err(LeaseError::Unreachable {
                name: name.to_string(),
                message: format!("no answer within {:?}", self.timeout),
            }),
        }
    }
}
