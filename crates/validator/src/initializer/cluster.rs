//! The initializer in a cluster of several members: the decisions of the module docs' second
//! table ([`Initializer::run_in_cluster`]), the other members' sidecars asked what their data
//! dirs hold, and the learner added (after the stale member was removed).

use std::time::{Duration, Instant};

use brcore::cluster::{
    ClusterAccess, ClusterError, ClusterSpec, DataReport, DataState, LiveMember, MemberClient, Refusal,
};
use brcore::restore::RestorePlan;
use tracing::{info, warn};

use super::{Action, InitError, InitOptions, Initializer, Outcome, set_aside_member};
use crate::report::Verdict;

impl Initializer {
    /// The multi-member decisions; see the module docs.
    pub(super) async fn run_in_cluster(
        &self,
        opts: &InitOptions,
        plan: &RestorePlan,
        spec: &ClusterSpec,
        cluster: &dyn ClusterAccess,
    ) -> Result<Outcome, InitError> {
        let members = cluster.members(spec);
        let me = spec.this_member();
        info!(
            member = %spec.this,
            members = spec.members.len(),
            origin = %spec.origin,
            endpoints = ?members.endpoints(),
            "this member belongs to a multi-member cluster: asking it for its member list"
        );
        let live = members.live_within(self.waits.quorum).await;
        let validation = self.validate(plan, opts, None).await?;
        let verdict = validation.verdict.clone();
        if !verdict.is_valid() && !verdict.needs_restore() {
            return Err(InitError::Untouchable { verdict });
        }

        if let Some(live) = live {
            info!(
                cluster_id = format!("{:x}", live.cluster_id),
                members = live.members.len(),
                answered = %live.endpoint,
                "a quorum answers: a member that lost its data rejoins from its peers"
            );
            let Some(listed) = live.find(me).cloned() else {
                info!(
                    member = %me.name,
                    "this member is not in the cluster's member list (a scale-up, or it was removed): \
                     joining as a learner with an empty data dir"
                );
                let set_aside = set_aside_member(&plan.data_dir)?;
                let added = add_learner(&members, me, self.waits.learner).await?;
                let set_aside = self.drop_set_aside(opts, set_aside)?;
                let action = Action::JoinedAsLearner { member_id: added.id, removed: None };
                return Ok(Outcome { validation, action, set_aside, after: None });
            };
            if verdict.is_valid() {
                if listed.is_learner {
                    info!("the data dir is valid and this member is a learner: it is promoted once in sync");
                } else {
                    info!(status = verdict.reference_status(), "the data dir is valid; nothing to do");
                }
                return Ok(Outcome { validation, action: Action::Nothing, set_aside: None, after: None });
            }
            if listed.is_learner && listed.name.is_empty() && matches!(verdict, Verdict::Missing { .. }) {
                info!(id = format!("{:x}", listed.id), "added as a learner already and not started yet: joining");
                let action = Action::JoinedAsLearner { member_id: listed.id, removed: None };
                return Ok(Outcome { validation, action, set_aside: None, after: None });
            }
            warn!(
                status = verdict.reference_status(),
                id = format!("{:x}", listed.id),
                "the data dir is not usable ({verdict}): removing this member from the cluster and adding it \
                 back as a learner, which syncs from the leader"
            );
            remove_member(&members, &listed).await?;
            let set_aside = set_aside_member(&plan.data_dir)?;
            let added = add_learner(&members, me, self.waits.learner).await?;
            let set_aside = self.drop_set_aside(opts, set_aside)?;
            let action = Action::JoinedAsLearner { member_id: added.id, removed: Some(listed.id) };
            return Ok(Outcome { validation, action, set_aside, after: None });
        }

        // No quorum answers: the cluster is down, or still starting.
        if verdict.is_valid() {
            info!("no quorum answers yet, and the data dir is valid: etcd starts on it and the cluster forms again");
            return Ok(Outcome { validation, action: Action::Nothing, set_aside: None, after: None });
        }
        let latest = self.latest_backup(plan).await?;
        if latest.none {
            // As the reference: with no backup, the store says this is a new cluster.
            info!("no quorum answers and there is no backup: a new cluster bootstraps");
            return self.restore_or_start_fresh(opts, plan, validation, latest).await;
        }
        warn!(
            status = verdict.reference_status(),
            "no quorum answers and the data dir is not usable ({verdict}): asking the other members' sidecars \
             whether they lost their data too"
        );
        let reports = self.ask_peers(spec, cluster).await;
        let mut holders = Vec::new();
        let mut unknown = Vec::new();
        for (peer, report) in &reports {
            match report {
                Ok(r) if r.state == DataState::Serving => holders.push(format!("{peer} ({})", r.detail)),
                Ok(r) if r.state == DataState::Unknown => unknown.push(format!("{peer}: {}", r.detail)),
                Ok(r) => info!(member = %peer, state = %r.state, revision = r.revision, "{}", r.detail),
                Err(e) => unknown.push(e.to_string()),
            }
        }
        if !holders.is_empty() {
            return Err(InitError::PeersHoldData { verdict, holders });
        }
        if !unknown.is_empty() {
            return Err(InitError::PeersUnknown { verdict, unknown });
        }
        if let Some(backup_revision) = latest.revision {
            for (peer, report) in &reports {
                if let Ok(DataReport { state: DataState::Bootstrap, revision: Some(revision), .. }) = report
                    && *revision != backup_revision
                {
                    return Err(InitError::RevisionConflict {
                        member: peer.clone(),
                        revision: *revision,
                        backup_revision,
                    });
                }
            }
        }
        warn!(
            members = spec.members.len(),
            "every member lost its data: restoring this member from the latest backup, with the whole membership"
        );
        self.restore_or_start_fresh(opts, plan, validation, latest).await
    }

    /// Asks every other member's sidecar what its data dir holds, each until it answers with a
    /// definite state or the wait for peers has passed. Stops early when one holds data.
    async fn ask_peers(
        &self,
        spec: &ClusterSpec,
        cluster: &dyn ClusterAccess,
    ) -> Vec<(String, Result<DataReport, ClusterError>)> {
        let deadline = Instant::now() + self.waits.peers;
        let mut out = Vec::new();
        for peer in spec.peers() {
            let answer = loop {
                let answer = cluster.peer_data(peer).await;
                let definite = matches!(&answer, Ok(r) if r.state != DataState::Unknown);
                if definite || Instant::now() + Duration::from_secs(2) > deadline {
                    break answer;
                }
                match &answer {
                    Ok(r) => info!(member = %peer.name, "{}; asking again", r.detail),
                    Err(e) => info!(member = %peer.name, error = %e, "no answer yet; asking again"),
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            };
            let serving = matches!(&answer, Ok(r) if r.state == DataState::Serving);
            out.push((peer.name.clone(), answer));
            if serving {
                break;
            }
        }
        out
    }
}

/// Adds `me` as a learner, retrying while etcd has its one learner already (another member
/// joining) or no quorum answers, up to `limit`. A member with these peer URLs that exists
/// already (an earlier attempt got through) is taken as added.
async fn add_learner(
    members: &MemberClient,
    me: &brcore::cluster::MemberSpec,
    limit: Duration,
) -> Result<LiveMember, InitError> {
    let metrics = brcore::metrics::metrics();
    let deadline = Instant::now() + limit;
    loop {
        let started = Instant::now();
        let result = members.add_learner(&me.peer_urls).await;
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok(m) => {
                metrics.add_learner_duration_seconds.with_label_values(&["true"]).observe(elapsed);
                metrics.is_learner_count_total.with_label_values(&["true"]).inc();
                metrics.is_learner.set(1.0);
                info!(id = format!("{:x}", m.id), peer_urls = ?me.peer_urls, "added this member to the cluster as a learner");
                return Ok(m);
            }
            Err(e) if e.refusal() == Some(Refusal::AlreadyMember) => {
                let live = members.live().await?;
                if let Some(m) = live.find(me).filter(|m| m.is_learner || m.name.is_empty()) {
                    info!(id = format!("{:x}", m.id), "this member was added already");
                    return Ok(m.clone());
                }
                return Err(e.into());
            }
            Err(e) => {
                let retry = matches!(e.refusal(), Some(Refusal::TooManyLearners))
                    || matches!(e, ClusterError::NoQuorum { .. } | ClusterError::Unavailable { .. });
                if !retry || Instant::now() + Duration::from_secs(5) > deadline {
                    metrics.add_learner_duration_seconds.with_label_values(&["false"]).observe(elapsed);
                    metrics.is_learner_count_total.with_label_values(&["false"]).inc();
                    return Err(e.into());
                }
                info!(error = %e, "cannot add this member as a learner yet; trying again in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Removes `member` from the cluster (gone already counts as removed), retrying a few times
/// while no quorum answers.
async fn remove_member(members: &MemberClient, member: &LiveMember) -> Result<(), InitError> {
    let metrics = brcore::metrics::metrics();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let started = Instant::now();
        let result = members.remove(member.id).await;
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                metrics.member_remove_duration_seconds.with_label_values(&["true"]).observe(elapsed);
                info!(id = format!("{:x}", member.id), "removed this member from the cluster");
                return Ok(());
            }
            Err(e) if e.refusal() == Some(Refusal::MemberNotFound) => return Ok(()),
            Err(e @ (ClusterError::NoQuorum { .. } | ClusterError::Unavailable { .. })) if attempt < 5 => {
                info!(error = %e, "cannot remove this member yet; trying again in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                metrics.member_remove_duration_seconds.with_label_values(&["false"]).observe(elapsed);
                return Err(e.into());
            }
        }
    }
}
