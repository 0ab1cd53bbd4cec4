//! [`SidecarCluster`]: the server role's one view of its cluster ([`ClusterAccess`]).
//!
//! The configuration is etcd-druid's etcd config file (`$ETCD_CONF`, by default
//! [`crate::DEFAULT_ETCD_CONF`]) read afresh on every question, with this member named after
//! `POD_NAME` (see [`crate::etcdconf::cluster_spec`]). Where no such file exists (etcdbrctl
//! run by hand), the flags describe the cluster: `--initial-cluster`, `--name`,
//! `--initial-cluster-token`.
//!
//! The running cluster is reached through `--service-endpoints` (druid: the client Service,
//! which routes to ready members), every member's advertised client URLs, and `--endpoints`,
//! one member at a time. Other members' sidecars are found as leader forwarding finds them
//! ([`SidecarLocator`]) and asked `GET /member/data`.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use brcore::cluster::{ClusterAccess, ClusterError, ClusterSpec, DataReport, MemberClient, MemberSpec};
use brcore::etcd::EtcdConfig;

use crate::etcdconf;
use crate::leader::SidecarLocator;

/// The cluster as the flags describe it, for when there is no etcd config file.
#[derive(Debug, Clone)]
pub struct FlagCluster {
    /// `--initial-cluster`.
    pub initial_cluster: String,
    /// `--name`.
    pub name: String,
    /// `--initial-cluster-token`.
    pub token: String,
}

/// What [`SidecarCluster`] is made of.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `$ETCD_CONF`; `None`: [`crate::DEFAULT_ETCD_CONF`], and the flags when that file does
    /// not exist.
    pub etcd_conf: Option<PathBuf>,
    /// `POD_NAME`.
    pub pod_name: Option<String>,
    /// The flags' cluster.
    pub flags: FlagCluster,
    /// How to reach etcd (credentials, TLS, `--endpoints` for the local member).
    pub etcd: EtcdConfig,
    /// `--service-endpoints`.
    pub service_endpoints: Vec<String>,
    /// Limit for each request to etcd.
    pub timeout: Duration,
    /// Where the other members' sidecars listen.
    pub locator: SidecarLocator,
    /// The client for other sidecars (see [`crate::leader::sidecar_client`]).
    pub client: reqwest::Client,
}

/// The server role's [`ClusterAccess`]; see the module docs.
#[derive(Debug)]
pub struct SidecarCluster {
    settings: ClusterSettings,
}

impl SidecarCluster {
    /// A view made of `settings`.
    pub fn new(settings: ClusterSettings) -> SidecarCluster {
        SidecarCluster { settings }
    }

    fn flags_spec(&self) -> Result<ClusterSpec, ClusterError> {
        let f = &self.settings.flags;
        let mut spec = ClusterSpec::from_initial_cluster(&f.initial_cluster, &f.name, &f.token, "flags")?;
        // The local member is the one --endpoints reaches.
        let local = self.settings.etcd.endpoints.clone();
        if let Some(me) = spec.members.iter_mut().find(|m| m.name == f.name) {
            me.client_urls = local;
        }
        Ok(spec)
    }
}

#[async_trait]
impl ClusterAccess for SidecarCluster {
    fn spec(&self) -> Result<ClusterSpec, ClusterError> {
        let path = self.settings.etcd_conf.clone().unwrap_or_else(|| PathBuf::from(crate::DEFAULT_ETCD_CONF));
        let origin = format!("etcd config {}", path.display());
        match std::fs::read_to_string(&path) {
            Ok(text) => etcdconf::cluster_spec(&text, self.settings.pod_name.as_deref(), &origin)
                .map_err(|why| ClusterError::Config { origin, why }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.settings.etcd_conf.is_none() => {
                self.flags_spec()
            }
            Err(e) => Err(ClusterError::Config { origin, why: format!("cannot read it: {e}") }),
        }
    }

    fn members(&self, spec: &ClusterSpec) -> MemberClient {
        let mut endpoints = self.settings.service_endpoints.clone();
        endpoints.extend(spec.client_urls());
        endpoints.extend(self.settings.etcd.endpoints.iter().cloned());
        MemberClient::new(self.settings.etcd.clone(), endpoints, self.settings.timeout)
    }

    async fn peer_data(&self, peer: &MemberSpec) -> Result<DataReport, ClusterError> {
        let fail = |url: &str, message: String| ClusterError::Sidecar {
            member: peer.name.clone(),
            url: url.to_string(),
            message,
        };
        let base = self.settings.locator.locate_spec(peer).ok_or_else(|| {
            fail(
                "?",
                "where its sidecar listens is unknown: it has no client URL; name it in --sidecar-endpoints".into(),
            )
        })?;
        let url = format!("{base}/member/data");
        let answer = self
            .settings
            .client
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| fail(&url, format!("no answer: {e}")))?;
        let status = answer.status();
        let body = answer.text().await.map_err(|e| fail(&url, format!("reading the answer: {e}")))?;
        if !status.is_success() {
            return Err(fail(&url, format!("answered {}: {}", status.as_u16(), body.trim())));
        }
        let report: DataReport = serde_json::from_str(&body)
            .map_err(|e| fail(&url, format!("answered something else than a data report: {e}")))?;
        if report.member != peer.name {
            return Err(fail(&url, format!("the sidecar there belongs to member {:?}", report.member)));
        }
        Ok(report)
    }
}
