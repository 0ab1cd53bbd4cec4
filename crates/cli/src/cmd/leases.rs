//! The Kubernetes Leases of `server` and `compact` (`crates/k8s`), from their flags and the
//! pod's environment (`$POD_NAMESPACE`, `$POD_NAME`, `$ETCD_CONF`, and where the API is:
//! `$KUBECONFIG`, the pod's service account or `~/.kube/config`).
//!
//! A configuration that cannot work (renewal asked for, but no namespace or no Kubernetes API
//! configured) stops the command at start, before anything is written, as the Go tool stops
//! (it exits when it cannot build its client). Once running, a Lease API that fails is only
//! logged and retried.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use brcore::name::Snapshot;
use brcore::snapshotter::ProgressSender;
use httpd::etcdconf::{EtcdConf, Value};
use httpd::leader::ClusterView;
use k8s::{LeaseClient, MemberIdentity, MemberLease, SnapshotLeases, TLS_ENABLED_ANNOTATION};
use tracing::{info, warn};

use crate::flags::{MemberLeaseArgs, SnapshotLeaseArgs};

/// What the Leases need from the environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct LeaseEnv {
    /// `$POD_NAMESPACE`: where the Leases are.
    pub namespace: Option<String>,
    /// `$POD_NAME`: the member Lease's name (after the config's `member-name-prefix`).
    pub pod_name: Option<String>,
    /// `$ETCD_CONF`, else the reference's default path: the member name prefix and peer URLs.
    pub etcd_conf: PathBuf,
    /// A kubeconfig to use instead of the environment's (tests).
    pub kubeconfig: Option<PathBuf>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl LeaseEnv {
    /// Read from the process environment.
    pub fn from_env() -> LeaseEnv {
        LeaseEnv {
            namespace: env("POD_NAMESPACE"),
            pod_name: env("POD_NAME"),
            etcd_conf: env("ETCD_CONF").map_or_else(|| PathBuf::from(httpd::DEFAULT_ETCD_CONF), PathBuf::from),
            kubeconfig: None,
        }
    }

    fn namespace(&self, flag: &str) -> anyhow::Result<&str> {
        match self.namespace.as_deref() {
            Some(ns) => Ok(ns),
            None => bail!("{flag} needs $POD_NAMESPACE, the namespace of the Leases (etcd-druid sets it from the pod)"),
        }
    }

    async fn client(&self, flag: &str) -> anyhow::Result<LeaseClient> {
        let ns = self.namespace(flag)?;
        let client = match &self.kubeconfig {
            Some(path) => LeaseClient::from_kubeconfig(path, ns).await,
            None => LeaseClient::from_environment(ns).await,
        };
        client.with_context(|| format!("{flag}: cannot reach the Kubernetes API"))
    }
}

/// The snapshot Leases when `--enable-snapshot-lease-renewal` is on.
pub(crate) async fn snapshot_leases(
    args: &SnapshotLeaseArgs,
    env: &LeaseEnv,
) -> anyhow::Result<Option<SnapshotLeases>> {
    if !args.enable_snapshot_lease_renewal {
        return Ok(None);
    }
    let client = env.client("--enable-snapshot-lease-renewal").await?;
    Ok(Some(SnapshotLeases::new(client, &args.full_snapshot_lease_name, &args.delta_snapshot_lease_name)))
}

/// The member Lease when `--enable-member-lease-renewal` is on: named `$POD_NAME`, or
/// `<member-name-prefix>-$POD_NAME` when the etcd config sets one, annotated with whether this
/// member's peer URLs are all `https` (the reference's `IsPeerURLTLSEnabled`). The reference
/// exits when it cannot read these; so does this.
pub(crate) async fn member_lease(args: &MemberLeaseArgs, env: &LeaseEnv) -> anyhow::Result<Option<MemberLease>> {
    if !args.enable_member_lease_renewal {
        return Ok(None);
    }
    let flag = "--enable-member-lease-renewal";
    env.namespace(flag)?;
    let Some(pod) = env.pod_name.as_deref() else {
        bail!("{flag} needs $POD_NAME, the member Lease's name (etcd-druid sets it from the pod)");
    };
    let text = std::fs::read_to_string(&env.etcd_conf)
        .with_context(|| format!("{flag}: cannot read the etcd config {} (set $ETCD_CONF)", env.etcd_conf.display()))?;
    let (name, tls) = member_name_and_peer_tls(&text, pod)
        .map_err(|e| anyhow::anyhow!("{flag}: etcd config {}: {e}", env.etcd_conf.display()))?;
    let client = env.client(flag).await?;
    let annotations = BTreeMap::from([(TLS_ENABLED_ANNOTATION.to_string(), tls.to_string())]);
    Ok(Some(MemberLease::new(client, name, annotations)))
}

/// The member's name (`<member-name-prefix>-<pod>` or `<pod>`) and whether all of its peer URLs
/// (`initial-advertise-peer-urls`, a map from member name to URLs as etcd-druid writes it, or
/// one list for the member) are `https`.
pub(crate) fn member_name_and_peer_tls(text: &str, pod: &str) -> Result<(String, bool), String> {
    let conf = EtcdConf::parse(text)?;
    let name = match conf.get_string("member-name-prefix")?.filter(|p| !p.is_empty()) {
        Some(prefix) => format!("{prefix}-{pod}"),
        None => pod.to_string(),
    };
    let urls: Vec<String> = match conf.get("initial-advertise-peer-urls")? {
        Some(Value::Map(members)) => match members.into_iter().find(|(k, _)| *k == name) {
            Some((_, Value::Scalar(s))) => s.split(',').map(str::to_string).collect(),
            Some((_, Value::List(items))) => items,
            _ => return Err(format!("initial-advertise-peer-urls has no URLs for member {name:?}")),
        },
        Some(Value::Scalar(s)) => s.split(',').map(str::to_string).collect(),
        Some(Value::List(items)) => items,
        None | Some(Value::Empty) => return Err("initial-advertise-peer-urls is not set".into()),
    };
    let urls: Vec<&str> = urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()).collect();
    if urls.is_empty() {
        return Err(format!("initial-advertise-peer-urls has no URLs for member {name:?}"));
    }
    Ok((name, urls.iter().all(|u| u.starts_with("https://"))))
}

/// The Lease tasks a server runs beside its HTTP API.
#[derive(Debug, Default)]
pub(crate) struct ServerLeases {
    /// The snapshot Leases and the channel the snapshotters report into.
    pub snapshot: Option<(SnapshotLeases, ProgressSender)>,
    /// The member Lease and its heartbeat.
    pub member: Option<(MemberLease, Duration)>,
}

impl ServerLeases {
    /// From the server's flags; checks the environment (see the module docs).
    pub async fn new(
        snapshot: &SnapshotLeaseArgs,
        member: &MemberLeaseArgs,
        env: &LeaseEnv,
    ) -> anyhow::Result<ServerLeases> {
        Ok(ServerLeases {
            snapshot: snapshot_leases(snapshot, env).await?.map(|l| (l, ProgressSender::new())),
            member: member_lease(member, env).await?.map(|l| (l, member.k8s_heartbeat_duration)),
        })
    }

    /// Starts the tasks until `stop`: the snapshot Leases follow the progress the snapshotters
    /// report; the member Lease asks `view` who this member is at each heartbeat (the leader
    /// elector's question). Returns the tasks and the progress sender for the snapshotters.
    pub fn spawn(
        self,
        view: Arc<dyn ClusterView>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> (Vec<tokio::task::JoinHandle<()>>, Option<ProgressSender>) {
        let mut tasks = Vec::new();
        let mut progress = None;
        let stopped = |mut s: tokio::sync::watch::Receiver<bool>| async move {
            let _ = s.wait_for(|v| *v).await;
        };
        if let Some((leases, sender)) = self.snapshot {
            tasks.push(tokio::spawn(leases.run(sender.subscribe(), stopped(stop.clone()))));
            progress = Some(sender);
        }
        if let Some((lease, period)) = self.member {
            let identity = move || {
                let view = view.clone();
                async move {
                    let l = view.leadership().await.map_err(|e| e.to_string())?;
                    // No leader: the reference's elector is in its unknown state and stops the
                    // renewal.
                    Ok((l.leader_id != 0).then_some(MemberIdentity {
                        member_id: l.member_id,
                        cluster_id: l.cluster_id,
                        leader: l.leader_id == l.member_id,
                    }))
                }
            };
            tasks.push(tokio::spawn(lease.run(period, identity, stopped(stop))));
        }
        (tasks, progress)
    }
}

/// Renews the full-snapshot Lease for the snapshot `compact` stored; a failure is a warning
/// (the compacted snapshot is stored all the same), as in the reference.
pub(crate) async fn renew_after_compaction(leases: &SnapshotLeases, snapshot: &Snapshot) {
    match leases.renew_full(snapshot).await {
        Ok(outcome) => info!(revision = snapshot.name.last_revision, ?outcome, "full snapshot lease renewed"),
        Err(e) => warn!(error = %e, "full snapshot lease update failed; the compacted snapshot is stored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRUID: &str = "\
name: etcd-main
member-name-prefix: shoot--dev
initial-advertise-peer-urls:
  shoot--dev-etcd-main-0:
  - https://etcd-main-0.etcd-main-peer.shoot.svc:2380
  shoot--dev-etcd-main-1:
  - http://etcd-main-1.etcd-main-peer.shoot.svc:2380
initial-cluster: shoot--dev-etcd-main-0=https://etcd-main-0.etcd-main-peer.shoot.svc:2380
";

    #[test]
    fn the_member_lease_is_named_and_annotated_from_the_etcd_config() {
        assert_eq!(member_name_and_peer_tls(DRUID, "etcd-main-0").unwrap(), ("shoot--dev-etcd-main-0".into(), true));
        assert_eq!(member_name_and_peer_tls(DRUID, "etcd-main-1").unwrap(), ("shoot--dev-etcd-main-1".into(), false));
        let e = member_name_and_peer_tls(DRUID, "etcd-main-2").unwrap_err();
        assert!(e.contains("shoot--dev-etcd-main-2"), "{e}");
        let plain = "name: etcd\ninitial-advertise-peer-urls: http://10.0.0.1:2380,https://a:2380\n";
        assert_eq!(member_name_and_peer_tls(plain, "etcd-0").unwrap(), ("etcd-0".into(), false));
        let tls = "initial-advertise-peer-urls: [https://a:2380, 'https://b:2380']\n";
        assert_eq!(member_name_and_peer_tls(tls, "etcd-0").unwrap(), ("etcd-0".into(), true));
        assert!(member_name_and_peer_tls("name: x\n", "etcd-0").is_err());
    }

    #[tokio::test]
    async fn renewal_needs_the_namespace_and_the_pod_name() {
        let on = SnapshotLeaseArgs {
            enable_snapshot_lease_renewal: true,
            full_snapshot_lease_name: "f".into(),
            delta_snapshot_lease_name: "d".into(),
        };
        let e = snapshot_leases(&on, &LeaseEnv::default()).await.unwrap_err().to_string();
        assert!(e.contains("POD_NAMESPACE"), "{e}");
        let off = SnapshotLeaseArgs { enable_snapshot_lease_renewal: false, ..on.clone() };
        assert!(snapshot_leases(&off, &LeaseEnv::default()).await.unwrap().is_none());
        let member =
            MemberLeaseArgs { enable_member_lease_renewal: true, k8s_heartbeat_duration: Duration::from_secs(1) };
        let env = LeaseEnv { namespace: Some("ns".into()), ..LeaseEnv::default() };
        let e = member_lease(&member, &env).await.unwrap_err().to_string();
        assert!(e.contains("POD_NAME"), "{e}");
        let env = LeaseEnv { pod_name: Some("etcd-0".into()), etcd_conf: "/nonexistent/etcd.conf.yaml".into(), ..env };
        let e = format!("{:#}", member_lease(&member, &env).await.unwrap_err());
        assert!(e.contains("/nonexistent/etcd.conf.yaml"), "{e}");
    }
}
