//! The initializer: validate the data dir before etcd starts, and restore it from the latest
//! backups when it is missing, corrupt or behind them.
//!
//! Used by `etcdbrctl initialize` and by the HTTP server's `/initialization/start`; both call
//! [`Initializer::initialize`] and only present its [`Outcome`] differently.
//!
//! # Decisions (the reference's, `pkg/initializer/initializer.go`, with one change)
//!
//! | verdict | single member, backups exist | single member, no backups | several members |
//! |---|---|---|---|
//! | valid / ahead | nothing | nothing | nothing |
//! | missing | restore the latest set | fresh start (etcd starts empty) | refused, see below |
//! | corrupt | old member dir set aside, restore | old member dir set aside, fresh start | refused |
//! | stale | old member dir set aside, restore | (cannot happen: nothing to compare) | (not compared) |
//! | in use, wrong volume | error, nothing touched | error | error |
//!
//! **The change:** the reference deletes an invalid data dir. We rename its `member/` dir to
//! `member.<unix-seconds>.bak` inside the data dir *before* the restore starts, so a wrong
//! verdict never costs data; the restore refuses to write over an existing `member/` anyway. If
//! the restore fails, the dir is renamed back, so the data dir is as it was and a rerun starts
//! from the same state. etcd ignores the extra entry (it logs a warning about an unknown file
//! in the data dir). It is deleted only when [`InitOptions::remove_set_aside`] is set (the CLI's
//! `--delete-invalid-member-dir`), and only after the restore succeeded.
//!
//! **Several members.** With a [`ClusterAccess`] ([`Initializer::with_cluster`]) the cluster
//! is the one it describes (etcd-druid's `$ETCD_CONF`), and a member rejoins from its peers,
//! never from a backup alone (the reference's `pkg/initializer` and `pkg/member`):
//!
//! | the running cluster | this member | data dir | action |
//! |---|---|---|---|
//! | a quorum answers | not in the member list (scale-up, or removed) | any | set aside, join as a learner |
//! | a quorum answers | listed | valid | nothing (a learner is promoted by the server once in sync) |
//! | a quorum answers | listed | missing, corrupt, stale | remove the member, set aside, join as a learner |
//! | no quorum | – | valid | nothing: etcd starts and the cluster forms again |
//! | no quorum | – | bad, no backups | fresh start (a new cluster bootstraps, as the reference) |
//! | no quorum | – | bad, backups | restore the latest backup with the whole membership, **only** when every other member's sidecar reports that its data is missing, unusable, or holds nothing but a bootstrap at the backup's revision; otherwise wait ([`InitError::PeersHoldData`], [`InitError::PeersUnknown`]) |
//!
//! A learner joins with an empty data dir and `initial-cluster-state: existing` (the server's
//! `/config`), etcd syncs it from the leader, and the server's leader elector promotes it. The
//! revision comparison is skipped: followers may trail the leader's backups. The reference
//! never restores a multi-member cluster from its backup (its operators scale to one replica
//! by hand); here every member of a cluster that lost all its data restores the same chain,
//! which the offline restore makes byte-identical on each member, so they form the cluster
//! the backup was taken of. A member whose data served the cluster is never restored beside:
//! it may hold writes no backup has, and raft would not reconcile the two histories.
//!
//! Without a [`ClusterAccess`] (`etcdbrctl initialize`), an invalid data dir in a cluster of
//! several members (`--initial-cluster`) is refused with [`InitError::MultiMember`], whose
//! message gives the manual steps.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::time::{Duration, Instant};

use brcore::Snapstore;
use brcore::chain::{self, Target};
use brcore::cluster::{ClusterAccess, ClusterError};
use brcore::error::Error as CoreError;
use brcore::restore::{NoProgress, OfflineRestorer, Progress, RestorePlan, RestoreReport, Restorer};
use tracing::{Instrument, info, info_span, warn};

use crate::check::{self, Options};
use crate::report::{Mode, Report, Verdict};

mod cluster;

/// What the initializer is asked to do: [`InitOptions::new`], then set what differs. Fields may
/// be added in any release (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InitOptions {
    /// How deep to validate.
    pub mode: Mode,
    /// How to restore if needed; its `data_dir` is the data dir validated. Its target must be
    /// [`Target::Latest`]: the data dir is compared with the latest backup.
    pub plan: RestorePlan,
    /// The namespace this process runs in (`POD_NAMESPACE`), for the wrong-volume guard.
    pub namespace: Option<String>,
    /// Delete the set-aside member dir once the restore succeeded, instead of keeping it.
    pub remove_set_aside: bool,
}

impl InitOptions {
    /// Validate in `mode` and restore with `plan` when needed; no namespace guard, a set-aside
    /// member dir is kept.
    pub fn new(mode: Mode, plan: RestorePlan) -> InitOptions {
        InitOptions { mode, plan, namespace: None, remove_set_aside: false }
    }
}

/// What the initializer did about the data dir.
#[derive(Debug, Clone)]
pub enum Action {
    /// The data dir was valid and left untouched.
    Nothing,
    /// The data dir was rebuilt from the latest backups.
    Restored(Box<RestoreReport>),
    /// There were no backups (or no store) and no usable data: the data dir holds no `member/`
    /// and etcd will start empty, as a new member.
    FreshStart,
    /// The member joined its running cluster as a learner with an empty data dir: etcd starts
    /// with `initial-cluster-state: existing`, syncs from the leader and is promoted once in sync.
    JoinedAsLearner {
        /// Its new member id.
        member_id: u64,
        /// The id it had before, when it was removed first (its data dir was lost or damaged).
        removed: Option<u64>,
    },
}

/// The result of [`Initializer::initialize`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The validation that decided.
    pub validation: Report,
    /// What was done.
    pub action: Action,
    /// Where the invalid member dir was moved, if one was moved and kept.
    pub set_aside: Option<PathBuf>,
    /// A sanity validation of the restored data dir, after a restore.
    pub after: Option<Report>,
}

/// Why initialization failed. The data dir is unchanged in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The validation itself could not run (I/O failure reading the data dir).
    #[error("cannot validate {}: {source}", path.display())]
    Validation {
        /// The data dir.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The data dir must not be touched: etcd runs on it, or it belongs to another namespace.
    #[error("{verdict}")]
    Untouchable {
        /// The verdict ([`Verdict::InUse`] or [`Verdict::WrongVolume`]).
        verdict: Verdict,
    },
    /// An invalid data dir in a multi-member cluster, without access to the cluster; see the
    /// module docs.
    #[error(
        "{verdict}; this member belongs to a {members}-member cluster, where a bad member is replaced by \
         syncing from the leader, not by a restore: remove it (`etcdctl member remove <id>`), move its data dir \
         away, add it back (`etcdctl member add {name} --learner --peer-urls ...`), start etcd with \
         --initial-cluster-state existing and promote it once it caught up (`etcdbrctl server` does all this)"
    )]
    MultiMember {
        /// Why the data dir is invalid.
        verdict: Verdict,
        /// The cluster's size.
        members: usize,
        /// This member's name.
        name: String,
    },
    /// The backups could not be listed or restored.
    #[error(transparent)]
    Backup(#[from] CoreError),
    /// The cluster could not be asked, or refused a member change.
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    /// No quorum answers and this member's data dir is unusable, but other members still hold
    /// data that served the cluster: this member rejoins from them once a quorum is back.
    #[error(
        "{verdict}, and no quorum of the cluster answers, but member(s) {} still hold data that served the \
         cluster: this member rejoins from them once they form a quorum again (the initialization is retried); \
         a restore from the backup is made only when every member lost its data",
        holders.join(", ")
    )]
    PeersHoldData {
        /// Why this data dir is unusable.
        verdict: Verdict,
        /// The members with data.
        holders: Vec<String>,
    },
    /// No quorum answers, this member's data dir is unusable, and some members' sidecars could
    /// not say what their data dirs hold.
    #[error(
        "{verdict}, and no quorum of the cluster answers; whether the other members lost their data too is \
         unknown ({}): a restore from the backup is made only when every member lost its data, so this waits \
         (the initialization is retried)",
        unknown.join("; ")
    )]
    PeersUnknown {
        /// Why this data dir is unusable.
        verdict: Verdict,
        /// The members that could not be asked, with the reason.
        unknown: Vec<String>,
    },
    /// Another member was restored to a revision the latest backup does not end at: restoring
    /// this one from the latest backup would give the members different histories.
    #[error(
        "member {member} was restored to revision {revision}, but the latest backup ends at revision \
         {backup_revision}: the members would serve different data; restore every member from the same backup \
         by hand (move their data dirs away and restart them together)"
    )]
    RevisionConflict {
        /// The member.
        member: String,
        /// Its revision.
        revision: i64,
        /// The latest backup's.
        backup_revision: i64,
    },
    /// The invalid member dir could not be moved aside (or back after a failed restore).
    #[error("cannot move {} to {}: {source}; check permissions on the data dir", from.display(), to.display())]
    SetAside {
        /// The member dir.
        from: PathBuf,
        /// Where it was to go.
        to: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The restore finished but its result does not validate: a bug; the restored dir is left
    /// for inspection and the old one stays set aside.
    #[error("the restored data dir does not validate ({verdict}); please report this")]
    RestoredInvalid {
        /// The restored dir's verdict.
        verdict: Verdict,
    },
}

/// How long the multi-member steps wait for the cluster (see [`Initializer::with_waits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterWaits {
    /// For a quorum to answer before deciding that none does (the reference probes for about 30 s).
    pub quorum: Duration,
    /// For the other members' sidecars to say what their data dirs hold.
    pub peers: Duration,
    /// For etcd to accept this member as a learner (it allows one learner at a time).
    pub learner: Duration,
}

impl Default for ClusterWaits {
    fn default() -> Self {
        ClusterWaits {
            quorum: Duration::from_secs(10),
            peers: Duration::from_secs(60),
            learner: Duration::from_secs(120),
        }
    }
}

/// Validates a data dir and restores it when needed.
#[derive(Debug, Clone)]
pub struct Initializer {
    store: Option<Arc<dyn Snapstore>>,
    restorer: Option<Arc<dyn Restorer>>,
    cluster: Option<Arc<dyn ClusterAccess>>,
    waits: ClusterWaits,
}

impl Initializer {
    /// An initializer reading backups from `store` and restoring with the offline restorer.
    pub fn new(store: Arc<dyn Snapstore>) -> Self {
        let restorer: Arc<dyn Restorer> = Arc::new(OfflineRestorer::new(store.clone()));
        Initializer { store: Some(store), restorer: Some(restorer), cluster: None, waits: ClusterWaits::default() }
    }

    /// An initializer with a store and another restorer (a test double, or a future online one).
    pub fn with_restorer(store: Arc<dyn Snapstore>, restorer: Arc<dyn Restorer>) -> Self {
        Initializer { store: Some(store), restorer: Some(restorer), cluster: None, waits: ClusterWaits::default() }
    }

    /// An initializer without a store (`--storage-provider` unset in the server): a valid data
    /// dir is kept, anything else becomes a fresh start, as in the reference.
    pub fn without_store() -> Self {
        Initializer { store: None, restorer: None, cluster: None, waits: ClusterWaits::default() }
    }

    /// The same initializer, deciding with the cluster `cluster` describes and reaches (see
    /// the module docs): its member name and membership replace the plan's.
    pub fn with_cluster(mut self, cluster: Arc<dyn ClusterAccess>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The same initializer with other waits for the cluster.
    pub fn with_waits(mut self, waits: ClusterWaits) -> Self {
        self.waits = waits;
        self
    }

    /// Validates `opts.plan.data_dir` and acts on the verdict; see the module docs.
    pub async fn initialize(&self, opts: &InitOptions) -> Result<Outcome, InitError> {
        let span = info_span!("initialize", data_dir = %opts.plan.data_dir.display(), mode = %opts.mode);
        self.run(opts).instrument(span).await
    }

    async fn run(&self, opts: &InitOptions) -> Result<Outcome, InitError> {
        if !matches!(opts.plan.target, Target::Latest) {
            return Err(CoreError::Refused {
                why: "initialize restores the latest backup only; use `etcdbrctl restore` for a point in time".into(),
            }
            .into());
        }
        let mut plan = opts.plan.clone();
        if let Some(cluster) = &self.cluster {
            let spec = cluster.spec()?;
            // The configured cluster is the one a restore writes, with this member's name.
            plan.cluster = spec.restore_cluster()?;
            plan.name = spec.this.clone();
            brcore::metrics::metrics().cluster_size.set(spec.members.len() as f64);
            if spec.is_multi_member() {
                return self.run_in_cluster(opts, &plan, &spec, cluster.as_ref()).await;
            }
        }
        let plan = &plan;
        let members = plan.cluster.members.len();
        let multi = members > 1;
        // As the reference's initializer: the size of the cluster the flags describe.
        brcore::metrics::metrics().cluster_size.set(members as f64);

        let latest = self.latest_backup(plan).await?;
        // Several members: followers may trail the leader's backups and resync from it.
        let compare = if multi { None } else { latest.revision };
        let validation = self.validate(plan, opts, compare).await?;
        let verdict = validation.verdict.clone();
        if verdict.is_valid() {
            info!(status = verdict.reference_status(), "the data dir is valid; nothing to do");
            return Ok(Outcome { validation, action: Action::Nothing, set_aside: None, after: None });
        }
        if !verdict.needs_restore() {
            return Err(InitError::Untouchable { verdict });
        }
        if multi {
            return Err(InitError::MultiMember { verdict, members, name: plan.name.clone() });
        }
        warn!(status = verdict.reference_status(), "the data dir is not usable: {verdict}");
        self.restore_or_start_fresh(opts, plan, validation, latest).await
    }

    /// The latest backed-up revision, unless there is no store or no backup.
    async fn latest_backup(&self, plan: &RestorePlan) -> Result<Latest, InitError> {
        let Some(store) = &self.store else {
            return Ok(Latest { revision: None, none: true, error: None });
        };
        match chain::list_chain(store.as_ref(), &plan.prefix, Target::Latest).await {
            Ok(chain) => {
                let rev = chain.deltas.last().map(|d| d.name.last_revision).unwrap_or(chain.full.name.last_revision);
                info!(full = %chain.full.key, deltas = chain.deltas.len(), revision = rev, "latest backup");
                Ok(Latest { revision: Some(rev as i64), none: false, error: None })
            }
            Err(CoreError::NotFound { what }) => {
                info!("no backup in the store ({what})");
                Ok(Latest { revision: None, none: true, error: None })
            }
            // Unreachable store: without knowing the backups nothing may be decided.
            Err(e @ CoreError::Store(_)) => Err(e.into()),
            // Damaged backups: a valid data dir is still fine; a restore would fail.
            Err(e) => {
                warn!(error = %e, "the latest backups are unusable; validating without them");
                Ok(Latest { revision: None, none: false, error: Some(e) })
            }
        }
    }

    /// Validates the data dir (against `backup_revision` when given) and records the metric.
    async fn validate(
        &self,
        plan: &RestorePlan,
        opts: &InitOptions,
        backup_revision: Option<i64>,
    ) -> Result<Report, InitError> {
        let check_opts =
            Options { mode: opts.mode, latest_backup_revision: backup_revision, namespace: opts.namespace.clone() };
        let data_dir = plan.data_dir.clone();
        let validation = tokio::task::spawn_blocking(move || check::validate_with(&data_dir, &check_opts))
            .await
            .map_err(|e| InitError::Validation { path: plan.data_dir.clone(), source: io::Error::other(e) })?
            .map_err(|source| InitError::Validation { path: plan.data_dir.clone(), source })?;
        // As the reference: succeeded = the data dir was found valid.
        brcore::metrics::metrics()
            .validation_duration_seconds
            .with_label_values(&[brcore::metrics::succeeded(validation.verdict.is_valid())])
            .observe(validation.elapsed.as_secs_f64());
        Ok(validation)
    }

    /// Sets the unusable member dir aside and restores the latest backup into the data dir, or
    /// lets etcd start empty when there is no backup.
    async fn restore_or_start_fresh(
        &self,
        opts: &InitOptions,
        plan: &RestorePlan,
        validation: Report,
        latest: Latest,
    ) -> Result<Outcome, InitError> {
        if let Some(e) = latest.error {
            return Err(e.into());
        }
        let set_aside = set_aside_member(&plan.data_dir)?;
        let (Some(restorer), false) = (&self.restorer, latest.none) else {
            warn!(
                set_aside = set_aside.as_ref().map(|p| p.display().to_string()),
                "no backups to restore from: etcd will start empty, as a new member"
            );
            return Ok(Outcome { validation, action: Action::FreshStart, set_aside, after: None });
        };

        let progress: Arc<dyn Progress> = Arc::new(NoProgress);
        let started = Instant::now();
        let restored = restorer.restore(plan, progress).await;
        brcore::metrics::metrics()
            .restoration_duration_seconds
            .with_label_values(&["single_node", brcore::metrics::succeeded(restored.is_ok())])
            .observe(started.elapsed().as_secs_f64());
        let report = match restored {
            Ok(report) => report,
            Err(e) => {
                if let Some(aside) = &set_aside {
                    put_back(aside, &plan.data_dir)?;
                }
                return Err(e.into());
            }
        };
        info!(
            revision = report.stats.revision,
            full = %report.full,
            deltas = report.deltas.len(),
            members = plan.cluster.members.len(),
            "restored the data dir"
        );

        let after_opts = Options { mode: Mode::Sanity, latest_backup_revision: latest.revision, namespace: None };
        let data_dir = plan.data_dir.clone();
        let after = tokio::task::spawn_blocking(move || check::validate_with(&data_dir, &after_opts))
            .await
            .map_err(|e| InitError::Validation { path: plan.data_dir.clone(), source: io::Error::other(e) })?
            .map_err(|source| InitError::Validation { path: plan.data_dir.clone(), source })?;
        if !after.verdict.is_valid() {
            return Err(InitError::RestoredInvalid { verdict: after.verdict });
        }

        let kept = self.drop_set_aside(opts, set_aside)?;
        Ok(Outcome { validation, action: Action::Restored(Box::new(report)), set_aside: kept, after: Some(after) })
    }

    /// Deletes the set-aside member dir when asked to (`--delete-invalid-member-dir`).
    fn drop_set_aside(&self, opts: &InitOptions, set_aside: Option<PathBuf>) -> Result<Option<PathBuf>, InitError> {
        match set_aside {
            Some(aside) if opts.remove_set_aside => {
                info!(dir = %aside.display(), "deleting the invalid member dir, as asked");
                fs::remove_dir_all(&aside).map_err(|e| CoreError::io(&aside, e))?;
                Ok(None)
            }
            other => Ok(other),
        }
    }
}

/// The latest backup as the initializer needs it.
struct Latest {
    /// Its last revision.
    revision: Option<i64>,
    /// There is no store, or no backup in it.
    none: bool,
    /// The backups are there but unusable.
    error: Option<CoreError>,
}

/// Renames `<data-dir>/member` to `<data-dir>/member.<unix-seconds>.bak` (with a counter if that
/// exists) and returns the new path; `None` if there is no member dir.
pub fn set_aside_member(data_dir: &Path) -> Result<Option<PathBuf>, InitError> {
    let member = etcd_format::datadir::member_dir(data_dir);
    match fs::symlink_metadata(&member) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(InitError::SetAside { from: member.clone(), to: member, source: e }),
    }
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut to = data_dir.join(format!("member.{secs}.bak"));
    let mut n = 1;
    while fs::symlink_metadata(&to).is_ok() {
        to = data_dir.join(format!("member.{secs}.{n}.bak"));
        n += 1;
    }
    fs::rename(&member, &to).map_err(|source| InitError::SetAside { from: member.clone(), to: to.clone(), source })?;
    if let Ok(dir) = fs::File::open(data_dir) {
        // The rename must survive a crash before the restore's own fsyncs.
        let _ = dir.sync_all();
    }
    warn!(from = %member.display(), to = %to.display(), "moved the invalid member dir aside; nothing is deleted");
    Ok(Some(to))
}

fn put_back(aside: &Path, data_dir: &Path) -> Result<(), InitError> {
    let member = etcd_format::datadir::member_dir(data_dir);
    if fs::symlink_metadata(&member).is_ok() {
        warn!(kept = %aside.display(), "the failed restore left a member dir; keeping the old one aside");
        return Ok(());
    }
    fs::rename(aside, &member).map_err(|source| InitError::SetAside {
        from: aside.to_path_buf(),
        to: member.clone(),
        source,
    })?;
    info!(dir = %member.display(), "the restore failed; moved the old member dir back");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_aside_renames_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("d");
        assert_eq!(set_aside_member(&data).unwrap(), None, "no data dir, nothing to move");
        fs::create_dir_all(data.join("member/wal")).unwrap();
        fs::write(data.join("member/wal/x"), "1").unwrap();
        let first = set_aside_member(&data).unwrap().unwrap();
        assert!(!data.join("member").exists());
        assert_eq!(fs::read_to_string(first.join("wal/x")).unwrap(), "1");
        fs::create_dir_all(data.join("member")).unwrap();
        fs::write(data.join("member/y"), "2").unwrap();
        let second = set_aside_member(&data).unwrap().unwrap();
        assert_ne!(first, second, "a second set-aside in the same second gets its own name");
        assert_eq!(fs::read_to_string(second.join("y")).unwrap(), "2");
        assert!(first.join("wal/x").exists());
        put_back(&second, &data).unwrap();
        assert_eq!(fs::read_to_string(data.join("member/y")).unwrap(), "2");
    }
}
