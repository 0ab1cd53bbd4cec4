//! Leader election for multi-member clusters: only the sidecar beside etcd's raft leader takes
//! snapshots; the others forward `/snapshot/full` and `/snapshot/delta` to it.
//!
//! As in the reference (`pkg/leaderelection`), a sidecar is the leader exactly while its etcd
//! member is the raft leader: [`LeaderElector`] asks the local member for its status every
//! `--reelection-period` and publishes a [`Role`]. The supervisor runs the snapshotter while
//! the role is [`Role::Leader`]; the HTTP server forwards snapshot requests while it is
//! [`Role::Follower`].
//!
//! Finding the leader's sidecar: the reference takes the host of the leader member's first
//! client URL and the server's own port. That fails when several sidecars share one host (all
//! on loopback, or host networking), so a [`SidecarLocator`] first looks the leader's member
//! name up in an explicit map (`--sidecar-endpoints name=url,...`) and falls back to the
//! reference's rule.
//!
//! Hand-off: a new leader waits (bounded) until the previous leader's sidecar has stopped
//! snapshotting, seen as its `/healthz` leaving 200 (it answers 503 once its snapshotter has
//! stored its last delta), so the two never upload deltas at the same time
//! ([`wait_for_handoff`]).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use brcore::etcd::{EtcdClient, EtcdConfig, EtcdError, EtcdSource};
use tokio::sync::{Mutex, watch};
use tracing::{debug, info, warn};

/// The header a forwarded snapshot request carries, so a sidecar that is not the leader either
/// answers 503 instead of forwarding it again (no loops while roles change).
pub const FORWARDED_HEADER: &str = "x-etcdbr-forwarded";

/// What this sidecar is in its cluster, as the last election check saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Role {
    /// Not known: etcd did not answer, or the cluster has no leader (lost quorum). Nobody
    /// here snapshots and snapshot requests answer 503.
    #[default]
    Unknown,
    /// The local etcd member is the raft leader: this sidecar snapshots.
    Leader,
    /// Another member leads: snapshot requests go to its sidecar.
    Follower {
        /// The leader's member id.
        leader_id: u64,
        /// The leader's member name (empty when etcd did not say).
        leader_name: String,
        /// The base URL of the leader's sidecar, `None` when it cannot be derived.
        sidecar: Option<String>,
    },
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Unknown => f.write_str("unknown"),
            Role::Leader => f.write_str("leader"),
            Role::Follower { leader_id, leader_name, sidecar } => {
                write!(f, "follower of {leader_name} ({leader_id:x})")?;
                match sidecar {
                    Some(s) => write!(f, " at {s}"),
                    None => f.write_str(", sidecar unknown"),
                }
            }
        }
    }
}

/// A member as etcd's member list reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member id.
    pub id: u64,
    /// The member name.
    pub name: String,
    /// Its client URLs.
    pub client_urls: Vec<String>,
}

/// What the local etcd member says about leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leadership {
    /// The id of the member answering.
    pub member_id: u64,
    /// The raft leader's id, 0 when there is none.
    pub leader_id: u64,
    /// The cluster's id (the member Lease carries it for etcd-druid).
    pub cluster_id: u64,
    /// Whether the member answering is a learner (it is promoted once in sync).
    pub is_learner: bool,
}

/// Why the cluster view could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// etcd did not answer, or answered with an error.
    #[error("etcd at {endpoint}: {message}")]
    Etcd {
        /// The endpoint asked.
        endpoint: String,
        /// What failed.
        message: String,
    },
}

/// The two questions the elector asks etcd; a trait so the election can be driven by a
/// scripted cluster in unit tests.
#[async_trait]
pub trait ClusterView: Send + Sync + fmt::Debug {
    /// The local member's id and its view of the leader.
    async fn leadership(&self) -> Result<Leadership, ClusterError>;
    /// The member with this id, `None` when the member list lacks it.
    async fn member(&self, id: u64) -> Result<Option<MemberInfo>, ClusterError>;
}

/// [`ClusterView`] over brcore's etcd connection ([`EtcdClient::member`]), asking the first
/// endpoint of an [`EtcdConfig`] (the reference asks `endpoints[0]`), with the same credentials
/// and TLS as the snapshotter.
#[derive(Debug)]
pub struct EtcdClusterView {
    etcd: EtcdClient,
}

impl EtcdClusterView {
    /// A view through the first of `config.endpoints`; every request is limited to `timeout`
    /// (`--etcd-connection-timeout-leader-election`).
    pub fn new(config: EtcdConfig, timeout: Duration) -> EtcdClusterView {
        EtcdClusterView { etcd: EtcdClient::member(config, timeout) }
    }

    fn error(&self, e: EtcdError) -> ClusterError {
        match e {
            EtcdError::Unavailable { endpoint, message } | EtcdError::Refused { endpoint, message } => {
                ClusterError::Etcd { endpoint, message }
            }
            other => ClusterError::Etcd { endpoint: self.etcd.endpoint(), message: other.to_string() },
        }
    }
}

#[async_trait]
impl ClusterView for EtcdClusterView {
    async fn leadership(&self) -> Result<Leadership, ClusterError> {
        let s = self.etcd.member_status().await.map_err(|e| self.error(e))?;
        Ok(Leadership {
            member_id: s.status.member_id,
            leader_id: s.status.leader,
            cluster_id: s.cluster_id,
            is_learner: s.is_learner,
        })
    }

    async fn member(&self, id: u64) -> Result<Option<MemberInfo>, ClusterError> {
        let list = self.etcd.member_list().await.map_err(|e| self.error(e))?;
        Ok(list.into_iter().find(|m| m.id == id).map(|m| MemberInfo {
            id: m.id,
            name: m.name,
            client_urls: m.client_urls,
        }))
    }
}

/// Finds a member's sidecar: an explicit `name → URL` map first, else the reference's rule
/// (the host of the member's first client URL, this server's port and scheme).
#[derive(Debug, Clone, Default)]
pub struct SidecarLocator {
    endpoints: HashMap<String, String>,
    port: u16,
    https: bool,
}

impl SidecarLocator {
    /// A locator for sidecars that listen on `port` with HTTPS if `https`, unless `endpoints`
    /// (member name → base URL) names them.
    pub fn new(endpoints: HashMap<String, String>, port: u16, https: bool) -> SidecarLocator {
        let endpoints = endpoints.into_iter().map(|(k, v)| (k, v.trim_end_matches('/').to_string())).collect();
        SidecarLocator { endpoints, port, https }
    }

    /// Parses `--sidecar-endpoints`: `name=url` pairs, comma separated; each URL must be
    /// `http://` or `https://`.
    pub fn parse_endpoints(text: &str) -> Result<HashMap<String, String>, String> {
        let mut map = HashMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, url) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not name=url (e.g. etcd-0=http://host:8080)"))?;
            let (name, url) = (name.trim(), url.trim());
            if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("{item:?}: need a member name and an http:// or https:// URL"));
            }
            if map.insert(name.to_string(), url.to_string()).is_some() {
                return Err(format!("member {name:?} is named twice"));
            }
        }
        Ok(map)
    }

    /// The base URL of a configured member's sidecar (see [`SidecarLocator::locate`]).
    pub fn locate_spec(&self, member: &brcore::cluster::MemberSpec) -> Option<String> {
        self.locate(&MemberInfo { id: 0, name: member.name.clone(), client_urls: member.client_urls.clone() })
    }

    /// The base URL of `member`'s sidecar, `None` when neither the map nor its client URLs
    /// give one.
    pub fn locate(&self, member: &MemberInfo) -> Option<String> {
        if let Some(url) = self.endpoints.get(&member.name) {
            return Some(url.clone());
        }
        let host = member.client_urls.iter().find_map(|u| url_host(u))?;
        let scheme = if self.https { "https" } else { "http" };
        Some(format!("{scheme}://{host}:{}", self.port))
    }
}

/// The host of a URL (`[v6]` kept in brackets), without scheme, port or path.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host =
        if authority.starts_with('[') { &authority[..=authority.find(']')?] } else { authority.split(':').next()? };
    (!host.is_empty()).then(|| host.to_string())
}

/// Publishes this sidecar's [`Role`], checked every period (see the module docs), and
/// promotes the local member while it is a learner ([`LeaderElector::with_promotion`]).
#[derive(Debug)]
pub struct LeaderElector {
    view: std::sync::Arc<dyn ClusterView>,
    locator: SidecarLocator,
    period: Duration,
    role: watch::Sender<Role>,
    /// The last leader looked up, so the member list is read once per leader change.
    known: Mutex<Option<(u64, MemberInfo)>>,
    /// Promotes the local member when it is a learner.
    promotion: Option<std::sync::Arc<dyn brcore::cluster::ClusterAccess>>,
}

impl LeaderElector {
    /// An elector asking `view` every `period` (`--reelection-period`); the role starts as
    /// [`Role::Unknown`].
    pub fn new(view: std::sync::Arc<dyn ClusterView>, locator: SidecarLocator, period: Duration) -> LeaderElector {
        let (role, _) = watch::channel(Role::Unknown);
        LeaderElector { view, locator, period, role, known: Mutex::new(None), promotion: None }
    }

    /// The same elector, promoting the local member through `cluster` while it is a learner
    /// (the reference's promote callback): etcd refuses until the learner caught up with the
    /// leader, so it is asked again every period.
    pub fn with_promotion(mut self, cluster: std::sync::Arc<dyn brcore::cluster::ClusterAccess>) -> LeaderElector {
        self.promotion = Some(cluster);
        self
    }

    /// A receiver of the role: for the HTTP server (forwarding) and the supervisor.
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// Asks etcd once and publishes the answer.
    pub async fn check(&self) -> Role {
        let role = self.decide().await;
        let changed = self.role.send_if_modified(|r| {
            if *r == role {
                false
            } else {
                *r = role.clone();
                true
            }
        });
        if changed {
            info!(role = %role, "leadership changed");
        }
        role
    }

    async fn decide(&self) -> Role {
        let l = match self.view.leadership().await {
            Ok(l) => l,
            Err(e) => {
                debug!(error = %e, "cannot ask etcd who leads");
                return Role::Unknown;
            }
        };
        brcore::metrics::metrics().is_learner.set(if l.is_learner { 1.0 } else { 0.0 });
        if l.leader_id == 0 {
            return Role::Unknown;
        }
        if l.is_learner {
            self.promote(l.member_id).await;
        }
        if l.leader_id == l.member_id {
            return Role::Leader;
        }
        let mut known = self.known.lock().await;
        let member = match known.as_ref() {
            Some((id, m)) if *id == l.leader_id => Some(m.clone()),
            _ => match self.view.member(l.leader_id).await {
                Ok(Some(m)) => {
                    *known = Some((l.leader_id, m.clone()));
                    Some(m)
                }
                Ok(None) => None,
                Err(e) => {
                    warn!(error = %e, leader = format!("{:x}", l.leader_id), "cannot list the members to find the leader");
                    None
                }
            },
        };
        Role::Follower {
            leader_id: l.leader_id,
            leader_name: member.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            sidecar: member.as_ref().and_then(|m| self.locator.locate(m)),
        }
    }

    /// Asks the cluster to promote the local learner `id`; a refusal because it has not caught
    /// up yet is expected and logged quietly.
    async fn promote(&self, id: u64) {
        let Some(cluster) = &self.promotion else {
            return;
        };
        let spec = match cluster.spec() {
            Ok(s) if s.is_multi_member() => s,
            Ok(_) => return,
            Err(e) => {
                warn!(error = %e, "this member is a learner, but the cluster cannot be read to promote it");
                return;
            }
        };
        let metrics = brcore::metrics::metrics();
        let started = std::time::Instant::now();
        let result = cluster.members(&spec).promote(id).await;
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                metrics.member_promote_duration_seconds.with_label_values(&["true"]).observe(elapsed);
                metrics.is_learner.set(0.0);
                info!(id = format!("{id:x}"), "promoted this member from learner to voting member");
            }
            Err(e) if e.refusal() == Some(brcore::cluster::Refusal::NotALearner) => {
                metrics.is_learner.set(0.0);
                info!(id = format!("{id:x}"), "this member is a voting member already");
            }
            Err(e) if e.refusal() == Some(brcore::cluster::Refusal::LearnerNotInSync) => {
                info!(id = format!("{id:x}"), "this learner is not in sync with the leader yet; promoting it later");
            }
            Err(e) => {
                metrics.member_promote_duration_seconds.with_label_values(&["false"]).observe(elapsed);
                warn!(id = format!("{id:x}"), error = %e, "cannot promote this learner");
            }
        }
    }

    /// Checks every period until `stop` completes.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            self.check().await;
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.period) => {}
            }
        }
    }
}

/// After this sidecar became the leader: waits until the previous leader's sidecar at
/// `previous` no longer reports itself healthy (its snapshotter has stored its last delta and
/// stopped), at most `limit`. Returns whether the hand-off was seen (`false`: the limit passed
/// and snapshotting starts anyway, risking a delta that overlaps, which restores tolerate).
pub async fn wait_for_handoff(client: &reqwest::Client, previous: &str, limit: Duration) -> bool {
    let url = format!("{}/healthz", previous.trim_end_matches('/'));
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match client.get(&url).timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status().is_success() => debug!(%url, "the previous leader's sidecar still snapshots"),
            Ok(r) => {
                info!(%url, status = r.status().as_u16(), "the previous leader's sidecar has stopped snapshotting");
                return true;
            }
            Err(e) => {
                info!(%url, error = %e, "the previous leader's sidecar does not answer: taking over");
                return true;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(%url, ?limit, "the previous leader's sidecar still reports healthy; taking over anyway");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The HTTP client sidecars talk to each other with (forwarding, the hand-off, the data-dir
/// question): HTTPS certificates are checked against `cacert` (`--cacert`, as the reference's
/// reverse proxy and health check trust it) besides the system's roots.
pub fn sidecar_client(cacert: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
    if let Some(path) = cacert {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA bundle {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{} holds no usable PEM certificate: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| format!("cannot build the HTTP client for other sidecars: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn hosts_come_out_of_client_urls() {
        assert_eq!(url_host("http://10.0.0.1:2379").as_deref(), Some("10.0.0.1"));
        assert_eq!(url_host("https://etcd-0.etcd-peer.ns.svc:2379/").as_deref(), Some("etcd-0.etcd-peer.ns.svc"));
        assert_eq!(url_host("http://[::1]:2379").as_deref(), Some("[::1]"));
        assert_eq!(url_host("http://user@host").as_deref(), Some("host"));
        assert_eq!(url_host("http://:2379"), None);
    }

    #[test]
    fn the_map_wins_over_the_references_rule() {
        let map = SidecarLocator::parse_endpoints("a=http://127.0.0.1:9001/, b=https://h:9002").unwrap();
        let l = SidecarLocator::new(map, 8080, false);
        let m = |name: &str| MemberInfo { id: 1, name: name.into(), client_urls: vec!["http://10.1.2.3:2379".into()] };
        assert_eq!(l.locate(&m("a")).as_deref(), Some("http://127.0.0.1:9001"));
        assert_eq!(l.locate(&m("b")).as_deref(), Some("https://h:9002"));
        assert_eq!(l.locate(&m("c")).as_deref(), Some("http://10.1.2.3:8080"));
        let tls = SidecarLocator::new(HashMap::new(), 8443, true);
        assert_eq!(tls.locate(&m("c")).as_deref(), Some("https://10.1.2.3:8443"));
        assert!(SidecarLocator::parse_endpoints("a").is_err());
        assert!(SidecarLocator::parse_endpoints("a=ftp://x").is_err());
        assert!(SidecarLocator::parse_endpoints("a=http://x,a=http://y").is_err());
        assert!(SidecarLocator::parse_endpoints("").unwrap().is_empty());
    }

    /// A cluster whose leader the test sets; counts member-list reads.
    #[derive(Debug, Default)]
    struct Scripted {
        leader: AtomicU64,
        lists: AtomicUsize,
    }

    #[async_trait]
    impl ClusterView for Scripted {
        async fn leadership(&self) -> Result<Leadership, ClusterError> {
            match self.leader.load(Ordering::SeqCst) {
                u64::MAX => Err(ClusterError::Etcd { endpoint: "e".into(), message: "down".into() }),
                leader_id => Ok(Leadership { member_id: 1, leader_id, ..Leadership::default() }),
            }
        }
        async fn member(&self, id: u64) -> Result<Option<MemberInfo>, ClusterError> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            Ok((id == 2).then(|| MemberInfo {
                id,
                name: "m2".into(),
                client_urls: vec!["http://10.0.0.2:2379".into()],
            }))
        }
    }

    #[tokio::test]
    async fn roles_follow_the_leader() {
        let view = Arc::new(Scripted::default());
        let e =
            LeaderElector::new(view.clone(), SidecarLocator::new(HashMap::new(), 8080, false), Duration::from_secs(1));
        let rx = e.subscribe();
        assert_eq!(e.check().await, Role::Unknown, "no leader yet");
        view.leader.store(1, Ordering::SeqCst);
        assert_eq!(e.check().await, Role::Leader);
        assert_eq!(*rx.borrow(), Role::Leader);
        view.leader.store(2, Ordering::SeqCst);
        let follower =
            Role::Follower { leader_id: 2, leader_name: "m2".into(), sidecar: Some("http://10.0.0.2:8080".into()) };
        assert_eq!(e.check().await, follower);
        assert_eq!(e.check().await, follower);
        assert_eq!(view.lists.load(Ordering::SeqCst), 1, "the member list is read once per leader");
        view.leader.store(3, Ordering::SeqCst);
        assert_eq!(
            e.check().await,
            Role::Follower { leader_id: 3, leader_name: String::new(), sidecar: None },
            "a leader missing from the member list has no known sidecar"
        );
        view.leader.store(u64::MAX, Ordering::SeqCst);
        assert_eq!(e.check().await, Role::Unknown, "etcd down");
    }

    #[tokio::test]
    async fn a_silent_previous_leader_ends_the_wait() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = sidecar_client(None).unwrap();
        assert!(wait_for_handoff(&client, &format!("http://127.0.0.1:{port}"), Duration::from_secs(5)).await);
    }
}
