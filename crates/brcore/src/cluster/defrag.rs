//! Defragmentation of every member ([`defragment_all`]), and [`ClusterEtcd`], the local member
//! as an [`EtcdSource`] whose defragmentation covers the whole cluster.

use std::time::Instant;

use async_trait::async_trait;
use tracing::{info, warn};

use super::{ClusterAccess, ClusterError, MemberClient};
use crate::etcd::{EtcdError, EtcdSource, EtcdStatus, LeaseTtl, LiveHashKv, SnapshotStream, WatchStream};
use crate::metrics::Metrics;

/// One member's defragmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Defragmented {
    /// The member.
    pub name: String,
    /// The endpoint defragmented.
    pub endpoint: String,
    /// The db file's size before, in bytes.
    pub size_before: i64,
    /// And after.
    pub size_after: i64,
}

/// Why a defragmentation round of the whole cluster did not (fully) run.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DefragError {
    /// A member was not healthy, so no member was touched this round.
    #[error("defragmentation skipped this round: {why}")]
    Skipped {
        /// Which member, and why.
        why: String,
    },
    /// Defragmenting a member failed; the members after it were not touched.
    #[error("defragmenting member {member} failed: {source}")]
    Failed {
        /// The member.
        member: String,
        /// The failure.
        #[source]
        source: ClusterError,
    },
}

/// Defragments every member of the running cluster, as the reference does: only when every
/// member answers its status and is a voter, then the followers one at a time and the leader
/// last (it is the one whose pause the clients feel). A member that is down or still a learner
/// skips the whole round ([`DefragError::Skipped`], logged and counted in
/// `etcdbr_defragmentation_skipped_total`); the next scheduled round tries again.
pub async fn defragment_all(client: &MemberClient, metrics: &Metrics) -> Result<Vec<Defragmented>, DefragError> {
    let skip = |why: String| {
        warn!("defragmentation skipped this round: {why}");
        metrics.defragmentation_skipped_total.inc();
        DefragError::Skipped { why }
    };
    let live = client.live().await.map_err(|e| skip(format!("the cluster does not answer ({e})")))?;
    let mut members = Vec::new();
    for m in &live.members {
        if m.is_learner {
            return Err(skip(format!("member {} is a learner, still catching up with the leader", m.label())));
        }
        let Some(endpoint) = m.client_urls.first() else {
            return Err(skip(format!("member {} has no client URL (it has not started)", m.label())));
        };
        match client.member_status(endpoint).await {
            Ok(s) => members.push((m, endpoint.clone(), s.status.db_size)),
            Err(e) => return Err(skip(format!("member {} at {endpoint} is not healthy ({e})", m.label()))),
        }
    }
    // Followers first, the leader last.
    members.sort_by_key(|(m, _, _)| m.id == live.leader_id);
    info!(members = members.len(), "every member is healthy: defragmenting the followers, then the leader");
    let mut done = Vec::new();
    for (m, endpoint, size_before) in members {
        let started = Instant::now();
        let result = client.defragment(&endpoint).await;
        metrics
            .defragmentation_duration_seconds
            .with_label_values(&[endpoint.as_str(), crate::metrics::succeeded(result.is_ok())])
            .observe(started.elapsed().as_secs_f64());
        if let Err(source) = result {
            return Err(DefragError::Failed { member: m.label(), source });
        }
        let size_after = client.member_status(&endpoint).await.map(|s| s.status.db_size).unwrap_or(size_before);
        info!(
            member = m.label(),
            %endpoint,
            size_before,
            size_after,
            leader = m.id == live.leader_id,
            "member defragmented"
        );
        done.push(Defragmented { name: m.label(), endpoint, size_before, size_after });
    }
    Ok(done)
}

/// The local member as an [`EtcdSource`] whose [`EtcdSource::defragment`] covers the whole
/// cluster ([`defragment_all`]) when the configuration has several members; everything else
/// goes to the local member as before. The snapshotter runs on it in the server role, so its
/// defragmentation schedule defragments every member.
#[derive(Debug)]
pub struct ClusterEtcd {
    local: std::sync::Arc<dyn EtcdSource>,
    access: std::sync::Arc<dyn ClusterAccess>,
    metrics: Metrics,
}

impl ClusterEtcd {
    /// `local` for everything but defragmentation, which goes through `access`.
    pub fn new(
        local: std::sync::Arc<dyn EtcdSource>,
        access: std::sync::Arc<dyn ClusterAccess>,
        metrics: Metrics,
    ) -> ClusterEtcd {
        ClusterEtcd { local, access, metrics }
    }
}

#[async_trait]
impl EtcdSource for ClusterEtcd {
    fn endpoint(&self) -> String {
        self.local.endpoint()
    }

    async fn snapshot(&self) -> Result<SnapshotStream, EtcdError> {
        self.local.snapshot().await
    }

    async fn watch(&self, from_revision: i64) -> Result<WatchStream, EtcdError> {
        self.local.watch(from_revision).await
    }

    async fn status(&self) -> Result<EtcdStatus, EtcdError> {
        self.local.status().await
    }

    async fn defragment(&self) -> Result<(), EtcdError> {
        let spec = match self.access.spec() {
            Ok(s) if s.is_multi_member() => s,
            Ok(_) => return self.local.defragment().await,
            Err(e) => {
                return Err(EtcdError::Unavailable {
                    endpoint: self.local.endpoint(),
                    message: format!("cannot tell which members to defragment: {e}"),
                });
            }
        };
        let client = self.access.members(&spec);
        defragment_all(&client, &self.metrics)
            .await
            .map(|_| ())
            .map_err(|e| EtcdError::Unavailable { endpoint: self.local.endpoint(), message: e.to_string() })
    }

    async fn lease_ttl(&self, id: i64) -> Result<Option<LeaseTtl>, EtcdError> {
        self.local.lease_ttl(id).await
    }

    async fn hash_kv(&self, revision: i64) -> Result<LiveHashKv, EtcdError> {
        self.local.hash_kv(revision).await
    }
}
