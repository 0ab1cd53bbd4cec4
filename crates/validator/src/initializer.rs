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
//! **Several members** (`--initial-cluster` with more than one entry): the reference skips the
//! revision comparison (a follower may trail the leader's backups and resyncs from the leader),
//! and for an invalid data dir removes the member from the cluster, deletes its data and adds it
//! back as a learner, which then syncs from the leader. That needs the etcd member API, which
//! etcdbr does not drive yet: an invalid data dir in a multi-member cluster is refused with
//! [`InitError::MultiMember`], whose message gives the manual steps.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use brcore::Snapstore;
use brcore::chain::{self, Target};
use brcore::error::Error as CoreError;
use brcore::restore::{NoProgress, OfflineRestorer, Progress, RestorePlan, RestoreReport, Restorer};
use tracing::{Instrument, info, info_span, warn};

use crate::check::{self, Options};
use crate::report::{Mode, Report, Verdict};

/// What the initializer is asked to do.
#[derive(Debug, Clone)]
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
    /// An invalid data dir in a multi-member cluster; see the module docs.
    #[error(
        "{verdict}; this member belongs to a {members}-member cluster, where a bad member is replaced by \
         syncing from the leader, not by a restore: remove it (`etcdctl member remove <id>`), move its data dir \
         away, add it back (`etcdctl member add {name} --learner --peer-urls ...`), start etcd with \
         --initial-cluster-state existing and promote it once it caught up; etcdbr does not automate this yet"
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

/// Validates a data dir and restores it when needed.
#[derive(Debug, Clone)]
pub struct Initializer {
    store: Option<Arc<dyn Snapstore>>,
    restorer: Option<Arc<dyn Restorer>>,
}

impl Initializer {
    /// An initializer reading backups from `store` and restoring with the offline restorer.
    pub fn new(store: Arc<dyn Snapstore>) -> Self {
        let restorer: Arc<dyn Restorer> = Arc::new(OfflineRestorer::new(store.clone()));
        Initializer { store: Some(store), restorer: Some(restorer) }
    }

    /// An initializer with a store and another restorer (a test double, or a future online one).
    pub fn with_restorer(store: Arc<dyn Snapstore>, restorer: Arc<dyn Restorer>) -> Self {
        Initializer { store: Some(store), restorer: Some(restorer) }
    }

    /// An initializer without a store (`--storage-provider` unset in the server): a valid data
    /// dir is kept, anything else becomes a fresh start, as in the reference.
    pub fn without_store() -> Self {
        Initializer { store: None, restorer: None }
    }

    /// Validates `opts.plan.data_dir` and acts on the verdict; see the module docs.
    pub async fn initialize(&self, opts: &InitOptions) -> Result<Outcome, InitError> {
        let span = info_span!("initialize", data_dir = %opts.plan.data_dir.display(), mode = %opts.mode);
        self.run(opts).instrument(span).await
    }

    async fn run(&self, opts: &InitOptions) -> Result<Outcome, InitError> {
        let plan = &opts.plan;
        if !matches!(plan.target, Target::Latest) {
            return Err(CoreError::Refused {
                why: "initialize restores the latest backup only; use `etcdbrctl restore` for a point in time".into(),
            }
            .into());
        }
        let members = plan.cluster.members.len();
        let multi = members > 1;
        // As the reference's initializer: the size of the cluster the flags describe.
        brcore::metrics::metrics().cluster_size.set(members as f64);

        // The latest backed-up revision, unless there is no store or no backup.
        let (backup_revision, no_backups, chain_error) = match &self.store {
            None => (None, true, None),
            Some(store) => match chain::list_chain(store.as_ref(), &plan.prefix, Target::Latest).await {
                Ok(chain) => {
                    let rev =
                        chain.deltas.last().map(|d| d.name.last_revision).unwrap_or(chain.full.name.last_revision);
                    info!(full = %chain.full.key, deltas = chain.deltas.len(), revision = rev, "latest backup");
                    (Some(rev as i64), false, None)
                }
                Err(CoreError::NotFound { what }) => {
                    info!("no backup in the store ({what})");
                    (None, true, None)
                }
                // Unreachable store: without knowing the backups nothing may be decided.
                Err(e @ CoreError::Store(_)) => return Err(e.into()),
                // Damaged backups: a valid data dir is still fine; a restore would fail.
                Err(e) => {
                    warn!(error = %e, "the latest backups are unusable; validating without them");
                    (None, false, Some(e))
                }
            },
        };

        let check_opts = Options {
            mode: opts.mode,
            // Several members: followers may trail the leader's backups and resync from it.
            latest_backup_revision: if multi { None } else { backup_revision },
            namespace: opts.namespace.clone(),
        };
        let data_dir = plan.data_dir.clone();
        let validation = tokio::task::spawn_blocking(move || check::validate_with(&data_dir, &check_opts))
            .await
            .map_err(|e| InitError::Validation { path: plan.data_dir.clone(), source: io::Error::other(e) })?
            .map_err(|source| InitError::Validation { path: plan.data_dir.clone(), source })?;

        let verdict = validation.verdict.clone();
        // As the reference: succeeded = the data dir was found valid.
        brcore::metrics::metrics()
            .validation_duration_seconds
            .with_label_values(&[brcore::metrics::succeeded(verdict.is_valid())])
            .observe(validation.elapsed.as_secs_f64());
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
        if let Some(e) = chain_error {
            return Err(e.into());
        }

        warn!(status = verdict.reference_status(), "the data dir is not usable: {verdict}");
        let set_aside = set_aside_member(&plan.data_dir)?;

        let (Some(restorer), false) = (&self.restorer, no_backups) else {
            warn!(
                set_aside = set_aside.as_ref().map(|p| p.display().to_string()),
                "no backups to restore from: etcd will start empty, as a new member"
            );
            return Ok(Outcome { validation, action: Action::FreshStart, set_aside, after: None });
        };

        let progress: Arc<dyn Progress> = Arc::new(NoProgress);
        let started = std::time::Instant::now();
        let restored = restorer.restore(plan, progress).await;
        // The reference's label: a single member restored from the backups.
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
        info!(revision = report.stats.revision, full = %report.full, deltas = report.deltas.len(), "restored the data dir");

        let after_opts = Options { mode: Mode::Sanity, latest_backup_revision: backup_revision, namespace: None };
        let data_dir = plan.data_dir.clone();
        let after = tokio::task::spawn_blocking(move || check::validate_with(&data_dir, &after_opts))
            .await
            .map_err(|e| InitError::Validation { path: plan.data_dir.clone(), source: io::Error::other(e) })?
            .map_err(|source| InitError::Validation { path: plan.data_dir.clone(), source })?;
        if !after.verdict.is_valid() {
            return Err(InitError::RestoredInvalid { verdict: after.verdict });
        }

        let kept = match set_aside {
            Some(aside) if opts.remove_set_aside => {
                info!(dir = %aside.display(), "deleting the invalid member dir, as asked");
                fs::remove_dir_all(&aside).map_err(|e| CoreError::io(&aside, e))?;
                None
            }
            other => other,
        };
        Ok(Outcome { validation, action: Action::Restored(Box::new(report)), set_aside: kept, after: Some(after) })
    }
}

/// Renames `<data-dir>/member` to `<data-dir>/member.<unix-seconds>.bak` (with a counter if that
/// exists) and returns the new path; `None` if there is no member dir.
pub fn set_aside_member(data_dir: &Path) -> Result<Option<PathBuf>, InitError> {
    let member = data_dir.join("member");
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
    let member = data_dir.join("member");
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
