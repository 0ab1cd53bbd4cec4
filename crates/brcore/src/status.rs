//! How the backups stand: the chain a restore would use now, whether it is continuous, and how
//! far it lags the live etcd. The data behind `etcdbrctl status`.
//!
//! This is the revision check an operator must make before a manual restore ("confirm any
//! inconsistency in revision numbers between the latest snapshot set and the running etcd"),
//! done by the tool: [`backup_status`] lists the store with the same chain selection as a
//! restore ([`crate::chain::list_chain`]), asks etcd for its status when one is given, and turns
//! both into a [`Verdict`] that monitoring can act on.

use std::time::Duration;

use serde::Serialize;

use crate::chain::{self, Chain, Target};
use crate::error::Error;
use crate::etcd::EtcdSource;
use crate::name::Snapshot;
use crate::store::Snapstore;

/// One stored snapshot object, as the status reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectInfo {
    /// The full store key.
    pub key: String,
    /// The object's name (`Full-…`, `Incr-…`).
    pub name: String,
    /// `Full` or `Incr`.
    pub kind: String,
    /// First revision it covers (0 for a full snapshot).
    pub start_revision: u64,
    /// Last revision it covers, by name.
    pub last_revision: u64,
    /// When it was created (unix seconds), from its name.
    pub created_on: i64,
    /// Stored (compressed) size in bytes.
    pub size: u64,
}

impl From<&Snapshot> for ObjectInfo {
    fn from(s: &Snapshot) -> Self {
        ObjectInfo {
            key: s.key.clone(),
            name: s.name.to_string(),
            kind: s.name.kind.as_str().to_string(),
            start_revision: s.name.start_revision,
            last_revision: s.name.last_revision,
            created_on: s.name.created_on,
            size: s.size,
        }
    }
}

/// Revisions missing from the chain: no restore can go past `from - 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GapInfo {
    /// The first missing revision.
    pub from: i64,
    /// The last missing revision.
    pub to: i64,
    /// The error as a restore would report it (names the objects on either side).
    pub message: String,
}

/// What the live etcd member said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveInfo {
    /// The endpoint asked.
    pub endpoint: String,
    /// Its current revision.
    pub revision: i64,
    /// The id of the member that answered, hex as etcdctl prints it.
    pub member_id: String,
    /// The raft leader's member id, hex; empty when there is none.
    pub leader: String,
    /// The db file's size in bytes.
    pub db_size: i64,
    /// The etcd server version.
    pub version: String,
}

/// How far the backups are behind etcd: what a restore now would lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lag {
    /// etcd's revision minus the newest backed-up revision; negative when etcd is behind the
    /// backups.
    pub revisions: i64,
    /// How long the revisions not yet backed up have been at risk: the age of the newest
    /// backup object when `revisions` is positive, 0 otherwise.
    pub seconds: i64,
}

/// The most the backups may lag before [`Verdict::LagAboveLimit`] (`--max-lag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxLag {
    /// Revisions etcd may be ahead of the newest backup (needs etcd's status).
    Revisions(u64),
    /// How long revisions may wait for a backup; without etcd, the age of the newest backup.
    Time(Duration),
}

impl std::fmt::Display for MaxLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxLag::Revisions(n) => write!(f, "{n} revisions"),
            MaxLag::Time(d) => write!(f, "{} s", d.as_secs()),
        }
    }
}

/// The one-word answer, in the order it is decided: the first that applies wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// No full snapshot under the prefix: nothing to restore from.
    NoBackup,
    /// The chain after the newest full snapshot has a gap: a restore stops before it.
    ChainBroken,
    /// etcd was asked and did not answer.
    EtcdUnreachable,
    /// etcd's revision is below the newest backed-up one: etcd lost data the backups hold (or
    /// the store belongs to another cluster).
    EtcdBehind,
    /// The lag exceeds the limit.
    LagAboveLimit,
    /// A continuous chain within the limit.
    Healthy,
}

/// Everything `etcdbrctl status` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The store prefix.
    pub prefix: String,
    /// When the status was taken (unix seconds).
    pub checked_at: i64,
    /// The newest full snapshot (of the newest history), if any.
    pub full_snapshot: Option<ObjectInfo>,
    /// The continuous deltas after it, in order (up to a gap, if there is one).
    pub delta_snapshots: Vec<ObjectInfo>,
    /// Deltas left out because earlier objects already hold all their revisions.
    pub redundant: Vec<ObjectInfo>,
    /// The revision a restore now reaches (by the objects' names).
    pub last_revision: Option<u64>,
    /// Seconds since the newest object of the chain was created.
    pub newest_backup_age_seconds: Option<i64>,
    /// The gap that breaks the chain, if any.
    pub gap: Option<GapInfo>,
    /// etcd's status, when endpoints were given and it answered.
    pub etcd: Option<LiveInfo>,
    /// Why etcd's status could not be read, when endpoints were given.
    pub etcd_error: Option<String>,
    /// The lag, when both the chain and etcd's revision are known.
    pub lag: Option<Lag>,
    /// The limit applied (`--max-lag`), as text.
    pub max_lag: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
}

impl BackupStatus {
    /// The newest object of the chain (the last delta, or the full snapshot).
    pub fn newest(&self) -> Option<&ObjectInfo> {
        self.delta_snapshots.last().or(self.full_snapshot.as_ref())
    }
}

/// Lists the chain under `prefix` (the selection a restore makes), asks `etcd` for its status
/// when given, and decides the [`Verdict`] against `max_lag`. `now` is the unix time to measure
/// ages against.
///
/// A missing backup, a gap and an unreachable etcd are verdicts, not errors, so the report is
/// complete either way. Errors: the store cannot be listed ([`Error::Store`]), or an object's
/// name makes the selection fail otherwise.
pub async fn backup_status(
    store: &dyn Snapstore,
    prefix: &str,
    etcd: Option<&dyn EtcdSource>,
    max_lag: Option<MaxLag>,
    now: i64,
) -> Result<BackupStatus, Error> {
    let (chain, gap) = match chain::list_chain(store, prefix, Target::Latest).await {
        Ok(c) => (Some(c), None),
        Err(Error::NotFound { .. }) => (None, None),
        Err(e @ Error::Gap { from, to, .. }) => {
            let gap = GapInfo { from, to, message: e.to_string() };
            // The continuous part before the gap: what a restore can still reach.
            let before = u64::try_from(from - 1).unwrap_or(0);
            match chain::list_chain(store, prefix, Target::Revision(before)).await {
                Ok(c) => (Some(c), Some(gap)),
                Err(Error::NotFound { .. } | Error::Gap { .. }) => (None, Some(gap)),
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let (live, etcd_error) = match etcd {
        None => (None, None),
        Some(source) => match source.status().await {
            Ok(s) => (
                Some(LiveInfo {
                    endpoint: source.endpoint(),
                    revision: s.revision,
                    member_id: format!("{:x}", s.member_id),
                    leader: if s.leader == 0 { String::new() } else { format!("{:x}", s.leader) },
                    db_size: s.db_size,
                    version: s.version,
                }),
                None,
            ),
            Err(e) => (None, Some(e.to_string())),
        },
    };
    Ok(decide(prefix, chain.as_ref(), gap, live, etcd_error, max_lag, now))
}

/// The status and verdict from what was found (pure, for tests).
fn decide(
    prefix: &str,
    chain: Option<&Chain>,
    gap: Option<GapInfo>,
    live: Option<LiveInfo>,
    etcd_error: Option<String>,
    max_lag: Option<MaxLag>,
    now: i64,
) -> BackupStatus {
    let newest = chain.map(|c| c.deltas.last().unwrap_or(&c.full));
    let last_revision = chain.map(Chain::last_revision);
    let age = newest.map(|n| (now - n.name.created_on).max(0));
    let lag = match (last_revision, &live) {
        (Some(last), Some(l)) => {
            let revisions = l.revision - last as i64;
            Some(Lag { revisions, seconds: if revisions > 0 { age.unwrap_or(0) } else { 0 } })
        }
        _ => None,
    };
    let over_limit = match (max_lag, lag) {
        (Some(MaxLag::Revisions(n)), Some(lag)) => lag.revisions > n as i64,
        (Some(MaxLag::Time(d)), Some(lag)) => lag.seconds > d.as_secs() as i64,
        (Some(MaxLag::Time(d)), None) if live.is_none() && etcd_error.is_none() => {
            age.is_some_and(|a| a > d.as_secs() as i64)
        }
        _ => false,
    };
    let verdict = if chain.is_none() {
        Verdict::NoBackup
    } else if gap.is_some() {
        Verdict::ChainBroken
    } else if etcd_error.is_some() {
        Verdict::EtcdUnreachable
    } else if lag.is_some_and(|l| l.revisions < 0) {
        Verdict::EtcdBehind
    } else if over_limit {
        Verdict::LagAboveLimit
    } else {
        Verdict::Healthy
    };
    BackupStatus {
        prefix: prefix.to_string(),
        checked_at: now,
        full_snapshot: chain.map(|c| ObjectInfo::from(&c.full)),
        delta_snapshots: chain.map(|c| c.deltas.iter().map(ObjectInfo::from).collect()).unwrap_or_default(),
        redundant: chain.map(|c| c.redundant.iter().map(ObjectInfo::from).collect()).unwrap_or_default(),
        last_revision,
        newest_backup_age_seconds: age,
        gap,
        etcd: live,
        etcd_error,
        lag,
        max_lag: max_lag.map(|m| m.to_string()),
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectMeta;

    fn chain(names: &[&str]) -> Chain {
        let listing: Vec<ObjectMeta> =
            names.iter().map(|n| ObjectMeta { key: format!("p/v2/{n}"), size: 10 }).collect();
        Chain::select(&listing, "p", Target::Latest).unwrap()
    }

    fn live(revision: i64) -> LiveInfo {
        LiveInfo {
            endpoint: "http://e:2379".into(),
            revision,
            member_id: "1".into(),
            leader: "1".into(),
            db_size: 1,
            version: "3.5.1".into(),
        }
    }

    const NOW: i64 = 1_000;

    #[test]
    fn lag_counts_revisions_and_the_age_of_the_newest_object() {
        let c = chain(&["Full-00000000-00000010-900", "Incr-00000011-00000020-970"]);
        let s = decide("p", Some(&c), None, Some(live(25)), None, None, NOW);
        assert_eq!(s.verdict, Verdict::Healthy);
        assert_eq!(s.lag, Some(Lag { revisions: 5, seconds: 30 }));
        assert_eq!((s.last_revision, s.newest_backup_age_seconds), (Some(20), Some(30)));
        assert_eq!(s.newest().unwrap().name, "Incr-00000011-00000020-970");
        // Nothing written since the newest backup: nothing at risk, however old it is.
        let s = decide("p", Some(&c), None, Some(live(20)), None, Some(MaxLag::Time(Duration::from_secs(1))), NOW);
        assert_eq!((s.verdict, s.lag), (Verdict::Healthy, Some(Lag { revisions: 0, seconds: 0 })));
    }

    #[test]
    fn limits_in_revisions_and_in_time() {
        let c = chain(&["Full-00000000-00000010-900", "Incr-00000011-00000020-970"]);
        let with = |max| decide("p", Some(&c), None, Some(live(25)), None, Some(max), NOW).verdict;
        assert_eq!(with(MaxLag::Revisions(5)), Verdict::Healthy);
        assert_eq!(with(MaxLag::Revisions(4)), Verdict::LagAboveLimit);
        assert_eq!(with(MaxLag::Time(Duration::from_secs(30))), Verdict::Healthy);
        assert_eq!(with(MaxLag::Time(Duration::from_secs(29))), Verdict::LagAboveLimit);
        // Without etcd a time limit applies to the newest backup's age; revisions cannot be judged.
        let without = |max| decide("p", Some(&c), None, None, None, Some(max), NOW).verdict;
        assert_eq!(without(MaxLag::Time(Duration::from_secs(29))), Verdict::LagAboveLimit);
        assert_eq!(without(MaxLag::Time(Duration::from_secs(30))), Verdict::Healthy);
        assert_eq!(without(MaxLag::Revisions(0)), Verdict::Healthy);
    }

    #[test]
    fn verdicts_in_order_of_precedence() {
        let c = chain(&["Full-00000000-00000010-900"]);
        let gap = GapInfo { from: 11, to: 12, message: "gap".into() };
        let lim = Some(MaxLag::Revisions(0));
        assert_eq!(decide("p", None, None, Some(live(5)), None, lim, NOW).verdict, Verdict::NoBackup);
        assert_eq!(decide("p", Some(&c), Some(gap), None, Some("x".into()), lim, NOW).verdict, Verdict::ChainBroken);
        assert_eq!(decide("p", Some(&c), None, None, Some("down".into()), lim, NOW).verdict, Verdict::EtcdUnreachable);
        let behind = decide("p", Some(&c), None, Some(live(7)), None, lim, NOW);
        assert_eq!((behind.verdict, behind.lag.unwrap().revisions), (Verdict::EtcdBehind, -3));
        assert_eq!(decide("p", Some(&c), None, Some(live(11)), None, lim, NOW).verdict, Verdict::LagAboveLimit);
        let json = serde_json::to_value(decide("p", Some(&c), None, Some(live(10)), None, lim, NOW)).unwrap();
        assert_eq!(json["verdict"], "healthy");
        assert_eq!(json["fullSnapshot"]["lastRevision"], 10);
        assert_eq!(json["lag"], serde_json::json!({"revisions": 0, "seconds": 0}));
    }
}
