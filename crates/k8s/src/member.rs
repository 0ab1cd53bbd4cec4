//! [`MemberLease`]: the member's heartbeat, renewed every `--k8s-heartbeat-duration`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use crate::rules::member_patch;
use crate::{LeaseClient, LeaseError};

/// The annotation the reference sets on the member Lease: `"true"` when all of this member's
/// peer URLs in the etcd config are `https`, else `"false"`.
pub const TLS_ENABLED_ANNOTATION: &str = "member.etcd.gardener.cloud/tls-enabled";

/// Who this member is, as its etcd answers a status request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberIdentity {
    /// The member's id.
    pub member_id: u64,
    /// The cluster's id.
    pub cluster_id: u64,
    /// Whether the member is the raft leader.
    pub leader: bool,
}

impl MemberIdentity {
    /// `<member id hex>:<cluster id hex>:Leader|Member`, lowercase hex without padding (Go's
    /// `strconv.FormatUint(id, 16)`), what etcd-druid parses.
    pub fn holder_identity(&self) -> String {
        let role = if self.leader { "Leader" } else { "Member" };
        format!("{:x}:{:x}:{role}", self.member_id, self.cluster_id)
    }
}

/// The member Lease (`[<member-name-prefix>-]$POD_NAME`).
#[derive(Debug, Clone)]
pub struct MemberLease {
    client: LeaseClient,
    name: String,
    annotations: BTreeMap<String, String>,
}

impl MemberLease {
    /// The Lease `name`, renewed through `client` with `annotations` set on each renewal.
    pub fn new(client: LeaseClient, name: impl Into<String>, annotations: BTreeMap<String, String>) -> MemberLease {
        MemberLease { client, name: name.into(), annotations }
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renews the Lease once: `holderIdentity` from `identity`, `renewTime` now, and the
    /// annotations.
    pub async fn renew(&self, identity: &MemberIdentity) -> Result<(), LeaseError> {
        let lease = self.client.get(&self.name).await?;
        let patch = member_patch(&lease, &identity.holder_identity(), &self.annotations, SystemTime::now());
        self.client.patch(&self.name, &patch).await.map(|_| ())
    }

    /// Renews the Lease every `period` until `stop`, the first time one period after the start
    /// (as the reference's timer). Before each renewal `identity` asks etcd who this member is:
    /// `Err` (etcd does not answer) and `Ok(None)` (the cluster has no leader; the reference
    /// stops renewing while its leader elector knows no leader) skip the renewal, so the Lease
    /// ages and etcd-druid sees the member as not ready. Failed renewals are logged; the next
    /// period tries again.
    pub async fn run<F, Fut>(self, period: Duration, mut identity: F, stop: impl Future<Output = ()>)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<MemberIdentity>, String>>,
    {
        tokio::pin!(stop);
        info!(namespace = self.client.namespace(), lease = self.name.as_str(), ?period, "renewing the member lease");
        let mut skipped_for: Option<String> = None;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(period) => {}
            }
            let why = match identity().await {
                Ok(Some(id)) => match self.renew(&id).await {
                    Ok(()) => {
                        debug!(lease = self.name.as_str(), holder = id.holder_identity(), "member lease renewed");
                        None
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?period, "member lease renewal failed");
                        None
                    }
                },
                Ok(None) => Some("the etcd cluster has no leader".to_string()),
                Err(e) => Some(format!("etcd does not answer: {e}")),
            };
            // Say it once per cause, not at every heartbeat.
            if why != skipped_for {
                if let Some(w) = &why {
                    warn!(lease = self.name.as_str(), reason = w.as_str(), "not renewing the member lease");
                } else if skipped_for.is_some() {
                    info!(lease = self.name.as_str(), "renewing the member lease again");
                }
                skipped_for = why;
            }
        }
    }
}
