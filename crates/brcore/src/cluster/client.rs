//! [`MemberClient`]: questions to the running cluster and the member changes, one member at a
//! time; and [`reconcile_peer_urls`], the one change made from the configuration alone.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{ClusterAccess, ClusterError, LiveCluster, LiveMember, MemberStatus, Refusal};
use crate::etcd::{EtcdConfig, EtcdError, connect_options, endpoint_url, map_client_error};

/// Questions to the running cluster and member changes, each sent to one member at a time:
/// the endpoints are tried in turn (the one that answered last first) until one answers.
pub struct MemberClient {
    config: EtcdConfig,
    endpoints: Vec<String>,
    timeout: Duration,
    last_good: Mutex<usize>,
}

impl fmt::Debug for MemberClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberClient").field("endpoints", &self.endpoints).field("timeout", &self.timeout).finish()
    }
}

/// The key a quorum probe reads (as the reference's `ProbeEtcd`); it need not exist.
const PROBE_KEY: &str = "foo";

impl MemberClient {
    /// A client asking `endpoints` (duplicates dropped, order kept) with `config`'s
    /// credentials and TLS; each request is limited to `timeout`.
    pub fn new(config: EtcdConfig, endpoints: Vec<String>, timeout: Duration) -> MemberClient {
        let mut unique: Vec<String> = Vec::new();
        for e in endpoints.into_iter().map(|e| e.trim().trim_end_matches('/').to_string()) {
            if !e.is_empty() && !unique.contains(&e) {
                unique.push(e);
            }
        }
        MemberClient { config, endpoints: unique, timeout, last_good: Mutex::new(0) }
    }

    /// The endpoints asked.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn order(&self) -> Vec<usize> {
        let first = self.last_good.lock().map(|g| *g).unwrap_or(0);
        let n = self.endpoints.len();
        (0..n).map(|i| (first + i) % n).collect()
    }

    /// Connects to `endpoint` alone; each request on the connection is limited to `limit`.
    async fn connect(&self, endpoint: &str, limit: Duration) -> Result<etcd_client::Client, EtcdError> {
        // A member without a leader answers at once instead of letting the request time out.
        let opts = connect_options(&self.config, endpoint, self.timeout)?.with_timeout(limit).with_require_leader(true);
        let url = endpoint_url(&self.config, endpoint);
        tokio::time::timeout(self.timeout, etcd_client::Client::connect([url], Some(opts)))
            .await
            .map_err(|_| EtcdError::Unavailable {
                endpoint: endpoint.to_string(),
                message: format!("no connection within {:?}", self.timeout),
            })?
            .map_err(|e| map_client_error(endpoint, e))
    }

    /// Runs `f` against the endpoints in turn until one succeeds; a refusal ends the search
    /// (the cluster decided), anything else moves on to the next endpoint.
    async fn on_any<T, F, Fut>(&self, what: &str, f: F) -> Result<(T, String), ClusterError>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        if self.endpoints.is_empty() {
            return Err(ClusterError::NoQuorum { tried: "no endpoints".into(), last: "none configured".into() });
        }
        let mut last = String::new();
        for i in self.order() {
            let endpoint = &self.endpoints[i];
            let client = match self.connect(endpoint, self.timeout).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(%endpoint, error = %e, "{what}: no connection");
                    last = e.to_string();
                    continue;
                }
            };
            match tokio::time::timeout(self.timeout, f(client)).await {
                Ok(Ok(v)) => {
                    if let Ok(mut g) = self.last_good.lock() {
                        *g = i;
                    }
                    return Ok((v, endpoint.clone()));
                }
                Ok(Err(e)) => match map_client_error(endpoint, e) {
                    // A learner refuses what needs a voter, with Unavailable: ask another member.
                    EtcdError::Refused { endpoint, message } if !message.contains("not supported for learner") => {
                        let refusal = Refusal::of(&message);
                        return Err(ClusterError::Refused { endpoint, what: what.to_string(), message, refusal });
                    }
                    e => {
                        debug!(%endpoint, error = %e, "{what}: failed");
                        last = e.to_string();
                    }
                },
                Err(_) => {
                    debug!(%endpoint, "{what}: no answer within {:?}", self.timeout);
                    last = format!("{endpoint}: no answer within {:?}", self.timeout);
                }
            }
        }
        Err(ClusterError::NoQuorum { tried: self.endpoints.join(", "), last })
    }

    /// The member list from a member that has a quorum behind it (a linearizable read
    /// succeeded through it first). [`ClusterError::NoQuorum`] when none has.
    pub async fn live(&self) -> Result<LiveCluster, ClusterError> {
        let ((members, cluster_id, leader_id), endpoint) = self
            .on_any("list the members", |mut c| async move {
                // A linearizable read: answered only with a leader and a quorum behind it.
                c.get(PROBE_KEY, None).await?;
                let list = c.member_list().await?;
                let status = c.status().await?;
                let cluster_id = list.header().map_or(0, |h| h.cluster_id());
                let members = list.members().iter().map(LiveMember::from_response).collect::<Vec<_>>();
                Ok((members, cluster_id, status.leader()))
            })
            .await?;
        Ok(LiveCluster { cluster_id, leader_id, members, endpoint })
    }

    /// [`MemberClient::live`], asked again every 2 s until `wait` has passed; `None` when no
    /// quorum answered by then (the cluster is down, or still starting).
    pub async fn live_within(&self, wait: Duration) -> Option<LiveCluster> {
        let deadline = Instant::now() + wait;
        loop {
            match self.live().await {
                Ok(live) => return Some(live),
                Err(e) => {
                    if Instant::now() + Duration::from_secs(2) > deadline {
                        info!(error = %e, "no quorum answers");
                        return None;
                    }
                    debug!(error = %e, "no quorum answers yet");
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Adds a learner with `peer_urls` and returns it as the cluster lists it.
    pub async fn add_learner(&self, peer_urls: &[String]) -> Result<LiveMember, ClusterError> {
        let urls = peer_urls.to_vec();
        let (m, _) = self
            .on_any("add a learner", |mut c| {
                let urls = urls.clone();
                async move {
                    let opts = etcd_client::MemberAddOptions::new().with_is_learner();
                    let r = c.member_add(urls, Some(opts)).await?;
                    Ok(r.member().map(LiveMember::from_response))
                }
            })
            .await?;
        m.ok_or_else(|| ClusterError::Unavailable {
            endpoint: String::new(),
            what: "add a learner".into(),
            message: "etcd's answer named no member".into(),
        })
    }

    /// Removes the member `id`.
    pub async fn remove(&self, id: u64) -> Result<(), ClusterError> {
        self.on_any("remove a member", |mut c| async move { c.member_remove(id).await.map(|_| ()) }).await.map(|_| ())
    }

    /// Promotes the learner `id`; etcd refuses ([`Refusal::LearnerNotInSync`]) until it caught up.
    pub async fn promote(&self, id: u64) -> Result<(), ClusterError> {
        self.on_any("promote a learner", |mut c| async move { c.member_promote(id).await.map(|_| ()) })
            .await
            .map(|_| ())
    }

    /// Sets the peer URLs of member `id`.
    pub async fn update_peer_urls(&self, id: u64, urls: &[String]) -> Result<(), ClusterError> {
        let urls = urls.to_vec();
        self.on_any("update peer URLs", |mut c| {
            let urls = urls.clone();
            async move { c.member_update(id, urls).await.map(|_| ()) }
        })
        .await
        .map(|_| ())
    }

    /// The status of the member at `endpoint` (that member only).
    pub async fn member_status(&self, endpoint: &str) -> Result<MemberStatus, ClusterError> {
        let what = "report its status";
        let mut c = self.connect(endpoint, self.timeout).await.map_err(|e| ClusterError::from_etcd(what, e))?;
        let s = tokio::time::timeout(self.timeout, c.status())
            .await
            .map_err(|_| ClusterError::Unavailable {
                endpoint: endpoint.to_string(),
                what: what.into(),
                message: format!("no answer within {:?}", self.timeout),
            })?
            .map_err(|e| ClusterError::from_etcd(what, map_client_error(endpoint, e)))?;
        Ok(MemberStatus::from_response(&s))
    }

    /// Defragments the member at `endpoint` (that member only), within `--etcd-defrag-timeout`.
    pub async fn defragment(&self, endpoint: &str) -> Result<(), ClusterError> {
        let what = "defragment";
        let limit = self.config.defrag_timeout;
        let c = self.connect(endpoint, limit).await.map_err(|e| ClusterError::from_etcd(what, e))?;
        tokio::time::timeout(limit, c.maintenance_client().defragment())
            .await
            .map_err(|_| ClusterError::Unavailable {
                endpoint: endpoint.to_string(),
                what: what.into(),
                message: format!("not done within {limit:?} (--etcd-defrag-timeout)"),
            })?
            .map_err(|e| ClusterError::from_etcd(what, map_client_error(endpoint, e)))?;
        Ok(())
    }
}

/// Makes the local member's peer URLs in the running cluster what its configuration says, as
/// the reference does when its sidecar starts: after a restore (which may have written other
/// peer URLs) and after the configuration switched the peer URLs to TLS. Returns the URLs it
/// replaced, `None` when nothing had to change (or the member is not listed yet).
///
/// etcd uses a member's new peer URLs once it restarts; the caller restarts it (through
/// etcd-wrapper) or says so.
pub async fn reconcile_peer_urls(access: &dyn ClusterAccess) -> Result<Option<Vec<String>>, ClusterError> {
    let spec = access.spec()?;
    let me = spec.this_member();
    let members = access.members(&spec);
    let live = members.live().await?;
    let Some(listed) = live.find(me) else {
        debug!(member = %me.name, "not in the member list; no peer URLs to reconcile");
        return Ok(None);
    };
    if me.peer_urls.iter().all(|u| listed.peer_urls.contains(u)) {
        debug!(member = %me.name, peer_urls = ?listed.peer_urls, "the peer URLs are as configured");
        return Ok(None);
    }
    info!(
        member = %me.name,
        from = ?listed.peer_urls,
        to = ?me.peer_urls,
        "the member's peer URLs differ from its configuration: updating them"
    );
    members.update_peer_urls(listed.id, &me.peer_urls).await?;
    Ok(Some(listed.peer_urls.clone()))
}
