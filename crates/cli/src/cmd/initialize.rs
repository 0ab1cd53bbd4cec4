//! `etcdbrctl initialize`: validate the data dir and restore it from the latest backups when it
//! is missing, corrupt or behind them (see `validator::initializer` for the decisions).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use brcore::chain::Target;
use brcore::restore::RestorePlan;
use clap::{ArgAction, Args, ValueEnum};
use validator::{Action, InitError, InitOptions, Initializer, Mode, Outcome};

use crate::flags::RestoreArgs;

/// `--validation-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValidationMode {
    /// Layout, db meta pages and revision, revision against the latest backup (milliseconds).
    Sanity,
    /// Sanity plus every bbolt page, the whole WAL and every snap file (reads the data dir).
    Full,
}

impl ValidationMode {
    /// The validator's mode.
    pub(crate) fn mode(self) -> Mode {
        match self {
            ValidationMode::Sanity => Mode::Sanity,
            ValidationMode::Full => Mode::Full,
        }
    }
}

/// How a data dir is validated and what becomes of an invalid member dir: the flags of
/// `initialize` and of the server's initializations.
#[derive(Debug, Args)]
pub struct ValidationArgs {
    /// How deep to validate (`server`: when /initialization/start names no mode): `full` after
    /// a crash, `sanity` after a clean shutdown.
    #[arg(long, value_enum, default_value = "full")]
    pub validation_mode: ValidationMode,
    /// Delete the invalid member dir after a successful restore instead of keeping it as
    /// `<data-dir>/member.<unix-seconds>.bak`.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub delete_invalid_member_dir: bool,
}

/// `etcdbrctl initialize`.
#[derive(Debug, Args)]
pub struct InitializeArgs {
    /// How deep to validate and what to do with an invalid member dir.
    #[command(flatten)]
    pub validation: ValidationArgs,
    /// The data dir, the store and how to restore: the flags of `etcdbrctl restore`.
    #[command(flatten)]
    pub restore: RestoreArgs,
    /// etcd connection flags of the Go tool's initializer, which uses them only to add a
    /// member to a running multi-member cluster; `initialize` here works on the data dir alone,
    /// so they are accepted with the Go defaults and unused.
    #[command(flatten)]
    pub etcd: UnusedEtcdConnectionArgs,
}

/// The Go tool's etcd connection flags, accepted by `initialize` and unused (see
/// [`InitializeArgs::etcd`]).
#[derive(Debug, Args)]
pub struct UnusedEtcdConnectionArgs {
    /// No-op here: etcd client URLs (the Go initializer's multi-member handling).
    #[arg(short = 'e', long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// No-op here: the etcd Service's client URLs (the Go initializer's multi-member handling).
    #[arg(long, value_delimiter = ',')]
    pub service_endpoints: Vec<String>,
    /// No-op here: etcd user name.
    #[arg(long)]
    pub etcd_username: Option<String>,
    /// No-op here: etcd password.
    #[arg(long)]
    pub etcd_password: Option<String>,
    /// No-op here: etcd connection timeout.
    #[arg(long, default_value = "30s", value_parser = crate::pflag::go_duration)]
    pub etcd_connection_timeout: Duration,
    /// No-op here: etcd snapshot timeout.
    #[arg(long, default_value = "15m", value_parser = crate::pflag::go_duration)]
    pub etcd_snapshot_timeout: Duration,
    /// No-op here: etcd defragmentation timeout.
    #[arg(long, default_value = "8m", value_parser = crate::pflag::go_duration)]
    pub etcd_defrag_timeout: Duration,
    /// No-op here: talk to etcd without TLS.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub insecure_transport: bool,
    /// No-op here: skip etcd's certificate verification.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub insecure_skip_tls_verify: bool,
    /// No-op here: etcd client certificate.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// No-op here: etcd client key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// No-op here: CA bundle for etcd.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
}

/// The flag values `initialize` refuses, checked at start (see `crate::validate`); returns the
/// restore plan they amount to.
pub(crate) fn check_flags(args: &InitializeArgs) -> anyhow::Result<RestorePlan> {
    if args.restore.to_revision.is_some() || args.restore.to_time.is_some() {
        bail!("initialize restores the latest backup; --to-revision and --to-time belong to `etcdbrctl restore`");
    }
    if args.restore.dry_run {
        bail!("--dry-run belongs to `etcdbrctl restore`; initialize either leaves the data dir alone or restores it");
    }
    super::restore::plan(&args.restore)
}

pub async fn run(args: InitializeArgs) -> anyhow::Result<()> {
    let plan = check_flags(&args)?;
    // What a killed restore left goes now, whether or not this run restores.
    brcore::restore::remove_unfinished_restore(&plan.data_dir)?;
    debug_assert!(matches!(plan.target, Target::Latest));
    let mode = args.validation.validation_mode.mode();
    // As in the reference's initializer, no provider means no store: the data dir is kept if
    // valid, and otherwise etcd starts fresh. So does a store without backups.
    let initializer = if !args.restore.store.has_provider() {
        Initializer::without_store()
    } else {
        let store = super::open_store(&args.restore.store)?;
        Initializer::new(store)
    };
    let mut opts = InitOptions::new(mode, plan);
    opts.namespace = std::env::var("POD_NAMESPACE").ok().filter(|n| !n.trim().is_empty());
    opts.remove_set_aside = args.validation.delete_invalid_member_dir;
    let outcome = initializer.initialize(&opts).await.map_err(to_anyhow)?;
    print_outcome(&outcome);
    Ok(())
}

/// Keeps the initializer's error in the chain so the exit code follows its kind (see
/// `cmd::exit_code`).
fn to_anyhow(e: InitError) -> anyhow::Error {
    match e {
        InitError::Backup(core) => anyhow::Error::new(core).context("initialization failed"),
        e @ (InitError::Untouchable { .. } | InitError::MultiMember { .. }) => anyhow::Error::new(e).context("refused"),
        other => anyhow::Error::new(other).context("initialization failed"),
    }
}

fn print_outcome(o: &Outcome) {
    let v = &o.validation;
    println!(
        "validation ({} mode, {:.1} ms): {} [{}]",
        v.mode,
        v.elapsed.as_secs_f64() * 1e3,
        v.verdict,
        v.verdict.reference_status()
    );
    for f in &v.findings {
        println!("  {f}");
    }
    match &o.action {
        Action::Nothing => println!("data dir kept as it is"),
        Action::Restored(r) => {
            println!(
                "restored revision {} from {} + {} deltas into {}",
                r.stats.revision,
                r.full,
                r.deltas.len(),
                v.data_dir.display()
            );
        }
        Action::FreshStart => {
            println!("no backups to restore from: etcd will start empty, as a new member");
        }
        Action::JoinedAsLearner { member_id, removed } => {
            if let Some(old) = removed {
                println!("removed member {old:x} from the cluster");
            }
            println!(
                "added as learner {member_id:x}: start etcd with initial-cluster-state existing; it syncs from the \
                 leader and is promoted once in sync"
            );
        }
    }
    if let Some(aside) = &o.set_aside {
        println!("the previous member dir is kept at {} (delete it once the cluster is healthy)", aside.display());
    }
}
