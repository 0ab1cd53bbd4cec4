//! The etcd cluster a member belongs to: as configured ([`ClusterSpec`]), as it runs
//! ([`LiveCluster`]), and the member changes the reference's sidecar makes ([`MemberClient`]).
//!
//! etcd-druid describes the cluster in the etcd config file (`$ETCD_CONF`: `initial-cluster`,
//! and the advertise URLs as maps from member name to URLs) and names each member after its
//! pod; it passes none of the `--initial-cluster` flags. [`ClusterAccess`] is the one view of
//! the cluster every decision uses (validation, restore, rejoin, `/config`, leader election,
//! defragmentation): [`ClusterAccess::spec`] re-reads the configuration each time (a scale-up
//! rewrites it), [`ClusterAccess::members`] reaches the running cluster through any member
//! that answers with a quorum behind it, and [`ClusterAccess::peer_data`] asks another
//! member's sidecar what its data dir holds.
//!
//! As in the reference (`pkg/member`, `pkg/miscellaneous`, `pkg/defragmentor`):
//! - a member whose data dir is lost rejoins its running cluster as a learner with an empty
//!   data dir ([`MemberClient::add_learner`], after [`MemberClient::remove`] when it was still
//!   listed), and is promoted once in sync ([`MemberClient::promote`]);
//! - a member's peer URLs follow its configuration ([`MemberClient::update_peer_urls`]);
//! - defragmentation covers every member, followers first, and only while every member
//!   answers ([`defragment_all`]); [`ClusterEtcd`] gives the snapshotter that behaviour.
//!
//! Every request here goes to one member at a time (etcd-client's balancer would hide which
//! member answered), with `--etcd-connection-timeout`'s credentials and TLS.

use std::fmt;

use async_trait::async_trait;
use etcd_format::membership::Cluster;
use serde::{Deserialize, Serialize};

use crate::etcd::{EtcdError, EtcdStatus};

mod client;
mod defrag;

pub use client::{MemberClient, reconcile_peer_urls};
pub use defrag::{ClusterEtcd, DefragError, Defragmented, defragment_all};

/// A member as the configuration describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// The member name (druid: the pod name, with `member-name-prefix-` in front if set).
    pub name: String,
    /// Its peer URLs (`initial-advertise-peer-urls` for this member, `initial-cluster` for the others).
    pub peer_urls: Vec<String>,
    /// Its client URLs (`advertise-client-urls`), empty when the configuration does not say.
    pub client_urls: Vec<String>,
}

/// The cluster as configured: its members, which one is this member, and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// This member's name.
    pub this: String,
    /// Every member, in `initial-cluster` order.
    pub members: Vec<MemberSpec>,
    /// `initial-cluster-token`, which seeds member and cluster ids.
    pub token: String,
    /// Where the configuration came from, for messages (`etcd config /path` or `flags`).
    pub origin: String,
}

impl ClusterSpec {
    /// A spec of `members` in which this member is `this`. Fails when `this` is not a member,
    /// a name repeats or a member has no peer URL.
    pub fn new(this: &str, members: Vec<MemberSpec>, token: &str, origin: &str) -> Result<ClusterSpec, ClusterError> {
        let bad = |why: String| ClusterError::Config { origin: origin.to_string(), why };
        if members.is_empty() {
            return Err(bad("the cluster has no members (initial-cluster is empty)".into()));
        }
        for (i, m) in members.iter().enumerate() {
            if m.name.is_empty() {
                return Err(bad("a member has an empty name".into()));
            }
            if m.peer_urls.is_empty() {
                return Err(bad(format!("member {:?} has no peer URL", m.name)));
            }
            if members[..i].iter().any(|o| o.name == m.name) {
                return Err(bad(format!("member {:?} is listed twice", m.name)));
            }
        }
        if !members.iter().any(|m| m.name == this) {
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            return Err(bad(format!(
                "this member {this:?} is not one of the cluster's members ({}); check POD_NAME, \
                 member-name-prefix or --name",
                names.join(", ")
            )));
        }
        Ok(ClusterSpec { this: this.to_string(), members, token: token.to_string(), origin: origin.to_string() })
    }

    /// A spec from an `initial-cluster` string (`name=url,...`, a name may repeat for several
    /// peer URLs), without client URLs.
    pub fn from_initial_cluster(
        initial_cluster: &str,
        this: &str,
        token: &str,
        origin: &str,
    ) -> Result<ClusterSpec, ClusterError> {
        let members = parse_initial_cluster(initial_cluster)
            .map_err(|why| ClusterError::Config { origin: origin.to_string(), why })?
            .into_iter()
            .map(|(name, peer_urls)| MemberSpec { name, peer_urls, client_urls: Vec::new() })
            .collect();
        ClusterSpec::new(this, members, token, origin)
    }

    /// More than one member: members rejoin from their peers, never from a backup alone.
    pub fn is_multi_member(&self) -> bool {
        self.members.len() > 1
    }

    /// This member.
    pub fn this_member(&self) -> &MemberSpec {
        // `new` checked that `this` is a member.
        self.members.iter().find(|m| m.name == self.this).expect("this member is in the spec")
    }

    /// The other members.
    pub fn peers(&self) -> impl Iterator<Item = &MemberSpec> {
        self.members.iter().filter(move |m| m.name != self.this)
    }

    /// The members as an `initial-cluster` string.
    pub fn initial_cluster(&self) -> String {
        let mut out = Vec::new();
        for m in &self.members {
            for u in &m.peer_urls {
                out.push(format!("{}={u}", m.name));
            }
        }
        out.join(",")
    }

    /// The membership a restore writes for this cluster (ids hashed from peer URLs and token).
    pub fn restore_cluster(&self) -> Result<Cluster, ClusterError> {
        Cluster::from_initial_cluster(&self.initial_cluster(), &self.token)
            .map_err(|e| ClusterError::Config { origin: self.origin.clone(), why: e.to_string() })
    }

    /// Every member's client URLs, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().flat_map(|m| m.client_urls.iter().cloned()).collect()
    }
}

/// Splits `name=url,...` into members with their URLs, keeping first-seen order.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) =
            entry.split_once('=').ok_or_else(|| format!("initial-cluster entry {entry:?} is not name=url"))?;
        let (name, url) = (name.trim(), url.trim());
        if name.is_empty() || url.is_empty() {
            return Err(format!("initial-cluster entry {entry:?} needs a name and a URL"));
        }
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    Ok(out)
}

/// A member as the running cluster lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMember {
    /// The member id.
    pub id: u64,
    /// Its name; empty for a member that was added but has not started yet.
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Its client URLs; empty until it started.
    pub client_urls: Vec<String>,
    /// Whether it is a learner (non-voting).
    pub is_learner: bool,
}

impl LiveMember {
    /// A member of etcd's member list.
    pub(crate) fn from_response(m: &etcd_client::Member) -> LiveMember {
        LiveMember {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
        }
    }

    /// The name, or its id when it has not started yet.
    pub fn label(&self) -> String {
        if self.name.is_empty() { format!("{:x} (not started)", self.id) } else { self.name.clone() }
    }
}

/// The running cluster as a member with a quorum behind it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCluster {
    /// The cluster id.
    pub cluster_id: u64,
    /// The raft leader's id (0: the answering member knew none).
    pub leader_id: u64,
    /// The members.
    pub members: Vec<LiveMember>,
    /// The endpoint that answered.
    pub endpoint: String,
}

impl LiveCluster {
    /// The live member that is `spec`: by name, or for a member that has not started yet
    /// (no name), by a shared peer URL.
    pub fn find(&self, spec: &MemberSpec) -> Option<&LiveMember> {
        self.members.iter().find(|m| m.name == spec.name).or_else(|| {
            self.members.iter().find(|m| m.name.is_empty() && m.peer_urls.iter().any(|u| spec.peer_urls.contains(u)))
        })
    }

    /// Whether a learner is present.
    pub fn has_learner(&self) -> bool {
        self.members.iter().any(|m| m.is_learner)
    }
}

/// What a member's own status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The store status (revision, db size, leader, member id).
    pub status: EtcdStatus,
    /// Whether the member is a learner.
    pub is_learner: bool,
    /// The cluster id in the answer's header.
    pub cluster_id: u64,
}

impl MemberStatus {
    /// The fields of a Maintenance/Status answer.
    pub(crate) fn from_response(s: &etcd_client::StatusResponse) -> MemberStatus {
        MemberStatus {
            status: EtcdStatus::from_response(s),
            is_learner: s.is_learner(),
            cluster_id: s.header().map_or(0, |h| h.cluster_id()),
        }
    }
}

/// Why etcd refused a member change (from its error text, which etcd 3.4 and 3.5 share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The cluster already has as many learners as it allows (one by default).
    TooManyLearners,
    /// A member with these peer URLs (or this id) exists already.
    AlreadyMember,
    /// The learner has not caught up with the leader yet.
    LearnerNotInSync,
    /// The member is a voter already.
    NotALearner,
    /// No member with that id.
    MemberNotFound,
    /// Another refusal; see the message.
    Other,
}

impl Refusal {
    fn of(message: &str) -> Refusal {
        let m = message.to_ascii_lowercase();
        if m.contains("too many learner") {
            Refusal::TooManyLearners
        } else if m.contains("peer urls already exists") || m.contains("member id already exist") {
            Refusal::AlreadyMember
        } else if m.contains("in sync with leader") {
            Refusal::LearnerNotInSync
        } else if m.contains("can only promote a learner member") {
            Refusal::NotALearner
        } else if m.contains("member not found") {
            Refusal::MemberNotFound
        } else {
            Refusal::Other
        }
    }
}

/// Why a question to the cluster or a member change failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The cluster configuration cannot be used.
    #[error("the cluster configuration ({origin}) is unusable: {why}")]
    Config {
        /// Where it came from.
        origin: String,
        /// What is wrong.
        why: String,
    },
    /// No member answered with a leader behind it.
    #[error("no etcd member answered with a quorum behind it (asked {tried}); last answer: {last}")]
    NoQuorum {
        /// The endpoints asked.
        tried: String,
        /// The last failure.
        last: String,
    },
    /// etcd refused the request.
    #[error("etcd at {endpoint} refused to {what}: {message}")]
    Refused {
        /// The endpoint that answered.
        endpoint: String,
        /// What was asked.
        what: String,
        /// What etcd said.
        message: String,
        /// The refusal, classified.
        refusal: Refusal,
    },
    /// A member did not answer.
    #[error("etcd at {endpoint} did not answer ({what}): {message}")]
    Unavailable {
        /// The endpoint asked.
        endpoint: String,
        /// What was asked.
        what: String,
        /// What failed.
        message: String,
    },
    /// Another member's sidecar did not answer, or answered nonsense.
    #[error("the sidecar of member {member} ({url}): {message}")]
    Sidecar {
        /// The member.
        member: String,
        /// Where its sidecar was asked.
        url: String,
        /// What failed.
        message: String,
    },
}

impl ClusterError {
    /// The refusal, when etcd refused.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            ClusterError::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }

    fn from_etcd(what: &str, e: EtcdError) -> ClusterError {
        match e {
            EtcdError::Refused { endpoint, message } => {
                let refusal = Refusal::of(&message);
                ClusterError::Refused { endpoint, what: what.to_string(), message, refusal }
            }
            EtcdError::Unavailable { endpoint, message } => {
                ClusterError::Unavailable { endpoint, what: what.to_string(), message }
            }
            other => ClusterError::Unavailable {
                endpoint: String::new(),
                what: what.to_string(),
                message: other.to_string(),
            },
        }
    }
}

/// What a member's data dir holds, as its sidecar reports it to the other members' sidecars
/// (`GET /member/data`), so that a cluster that lost quorum is restored from the backup only
/// when every member lost its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataReport {
    /// The member.
    pub member: String,
    /// The verdict.
    pub state: DataState,
    /// The db's revision, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The db's consistent index (the last raft entry applied), when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_index: Option<u64>,
    /// Why, in words.
    #[serde(default)]
    pub detail: String,
}

/// What a data dir holds, for the decision to restore a cluster from its backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataState {
    /// No `member/` dir: nothing to boot from.
    Missing,
    /// A `member/` dir etcd cannot boot from (its db cannot be read).
    Invalid,
    /// A db that never applied a raft entry past the membership it was created with (a fresh
    /// bootstrap, or a restore whose cluster never elected a leader): nothing anyone wrote
    /// since, so replacing it loses nothing, and a restore must match its revision.
    Bootstrap,
    /// A db that served a cluster: it may hold writes no backup has. Never replaced by a
    /// restore; its member rejoins the cluster once a quorum is back.
    Serving,
    /// The sidecar could not tell (the db is being written while read).
    Unknown,
}

impl fmt::Display for DataState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataState::Missing => "missing",
            DataState::Invalid => "invalid",
            DataState::Bootstrap => "bootstrap",
            DataState::Serving => "serving",
            DataState::Unknown => "unknown",
        })
    }
}

/// The one view of the cluster (see the module docs); implemented by the server role, which
/// also knows where the other members' sidecars listen.
#[async_trait]
pub trait ClusterAccess: Send + Sync + fmt::Debug {
    /// The cluster as configured now: the configuration is read again on every call, because
    /// a scale-up rewrites it while the sidecar runs.
    fn spec(&self) -> Result<ClusterSpec, ClusterError>;

    /// A client that reaches the running cluster through the configured endpoints and
    /// `spec`'s client URLs.
    fn members(&self, spec: &ClusterSpec) -> MemberClient;

    /// What the sidecar of `peer` says about its data dir.
    async fn peer_data(&self, peer: &MemberSpec) -> Result<DataReport, ClusterError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, peer: &str) -> MemberSpec {
        MemberSpec { name: name.into(), peer_urls: vec![peer.into()], client_urls: vec![format!("{peer}0")] }
    }

    #[test]
    fn a_spec_names_this_member_and_checks_the_rest() {
        let s = ClusterSpec::from_initial_cluster(
            "m0=http://a:2380,m1=http://b:2380,m1=https://b:2381,m2=http://c:2380",
            "m1",
            "tok",
            "test",
        )
        .unwrap();
        assert!(s.is_multi_member());
        assert_eq!(s.this_member().peer_urls, ["http://b:2380", "https://b:2381"]);
        assert_eq!(s.peers().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["m0", "m2"]);
        assert_eq!(s.initial_cluster(), "m0=http://a:2380,m1=http://b:2380,m1=https://b:2381,m2=http://c:2380");
        assert_eq!(s.restore_cluster().unwrap().members.len(), 3);

        let e = ClusterSpec::from_initial_cluster("m0=http://a:2380", "m9", "t", "etcd config /x").unwrap_err();
        assert!(e.to_string().contains("\"m9\" is not one of") && e.to_string().contains("etcd config /x"), "{e}");
        assert!(ClusterSpec::from_initial_cluster("m0", "m0", "t", "x").is_err());
        assert!(ClusterSpec::from_initial_cluster("", "m0", "t", "x").is_err());
        let twice = vec![member("a", "http://a:1"), member("a", "http://a:2")];
        assert!(ClusterSpec::new("a", twice, "t", "x").is_err());
    }

    #[test]
    fn live_members_are_found_by_name_or_by_peer_url_before_they_start() {
        let live = LiveCluster {
            cluster_id: 1,
            leader_id: 10,
            members: vec![
                LiveMember {
                    id: 10,
                    name: "m0".into(),
                    peer_urls: vec!["http://a:1".into()],
                    client_urls: vec![],
                    is_learner: false,
                },
                LiveMember {
                    id: 11,
                    name: String::new(),
                    peer_urls: vec!["http://b:1".into()],
                    client_urls: vec![],
                    is_learner: true,
                },
            ],
            endpoint: "e".into(),
        };
        assert_eq!(live.find(&member("m0", "http://zzz:1")).map(|m| m.id), Some(10));
        assert_eq!(live.find(&member("m1", "http://b:1")).map(|m| m.id), Some(11));
        assert_eq!(live.find(&member("m2", "http://c:1")), None);
        assert!(live.has_learner());
        assert_eq!(live.members[1].label(), "b (not started)");
    }

    #[test]
    fn refusals_are_classified_from_etcds_words() {
        assert_eq!(Refusal::of("etcdserver: too many learner members in cluster"), Refusal::TooManyLearners);
        assert_eq!(Refusal::of("etcdserver: Peer URLs already exists"), Refusal::AlreadyMember);
        assert_eq!(
            Refusal::of("etcdserver: can only promote a learner member which is in sync with leader"),
            Refusal::LearnerNotInSync
        );
        assert_eq!(Refusal::of("etcdserver: can only promote a learner member"), Refusal::NotALearner);
        assert_eq!(Refusal::of("etcdserver: member not found"), Refusal::MemberNotFound);
        assert_eq!(Refusal::of("etcdserver: something else"), Refusal::Other);
    }

    #[test]
    fn data_reports_are_json_the_other_sidecars_read() {
        let r = DataReport {
            member: "m1".into(),
            state: DataState::Bootstrap,
            revision: Some(42),
            consistent_index: Some(3),
            detail: "restored".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"member":"m1","state":"bootstrap","revision":42,"consistentIndex":3,"detail":"restored"}"#
        );
        assert_eq!(serde_json::from_str::<DataReport>(&text).unwrap(), r);
        let missing: DataReport = serde_json::from_str(r#"{"member":"m2","state":"missing"}"#).unwrap();
        assert_eq!((missing.state, missing.revision), (DataState::Missing, None));
    }
}
