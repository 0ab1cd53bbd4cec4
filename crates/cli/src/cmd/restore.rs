//! `etcdbrctl restore`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use brcore::chain::Target;
use brcore::error::Error as CoreError;
use brcore::rebuild::LeasePolicy;
use brcore::restore::{OfflineRestorer, Progress, RestorePlan, RestoreReport, Restorer};
use etcd_format::membership::Cluster;
use indicatif::{ProgressBar, ProgressStyle};

use crate::flags::RestoreArgs;

pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    let store = super::open_store(&args.store)?;
    let progress: Arc<dyn Progress> =
        if std::io::stderr().is_terminal() { Arc::new(Bar::new()) } else { Arc::new(brcore::restore::NoProgress) };
    let report = match OfflineRestorer::new(store).restore(&plan, progress).await {
        Ok(report) => report,
        // As the Go tool: with no base snapshot there is nothing to restore, and that is not a
        // failure (exit 0). A point in time without a backup (etcdbr's own flags) stays one.
        Err(CoreError::NotFound { what }) if matches!(plan.target, Target::Latest) => {
            println!("nothing to restore: {what}; the data dir was not created");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    print_summary(&report, args.dry_run);
    Ok(())
}

pub(crate) fn plan(args: &RestoreArgs) -> anyhow::Result<RestorePlan> {
    if args.bump_revision.is_some_and(|b| b <= 0) {
        bail!("--bump-revision must be positive");
    }
    if args.bump_revision.is_some() && !args.mark_compacted {
        bail!("--bump-revision needs --mark-compacted (watchers must re-list past the bumped revisions)");
    }
    let cluster =
        Cluster::from_initial_cluster(&args.restoration.initial_cluster, &args.restoration.initial_cluster_token)
            .context("invalid --initial-cluster")?;
    let me = cluster
        .member_by_name(&args.restoration.name)
        .with_context(|| format!("--name {} must be one of --initial-cluster's names", args.restoration.name))?;
    let mut mine: Vec<String> = me.peer_urls.clone();
    let mut advertised = args
        .restoration
        .initial_advertise_peer_urls
        .iter()
        .map(|u| etcd_format::membership::canonical_url(u))
        .collect::<Result<Vec<_>, _>>()
        .context("invalid --initial-advertise-peer-urls")?;
    mine.sort();
    advertised.sort();
    if mine != advertised {
        bail!(
            "--initial-advertise-peer-urls {} does not match {}'s entry in --initial-cluster ({})",
            advertised.join(","),
            args.restoration.name,
            mine.join(",")
        );
    }
    let target = match (args.to_revision, &args.to_time) {
        (Some(rev), _) => Target::Revision(rev),
        (None, Some(t)) => Target::Time(parse_time(t)?),
        (None, None) => Target::Latest,
    };
    let lease_policy = match args.restoration.lease_ttl {
        Some(ttl) if ttl > 0 => LeasePolicy::Fixed(ttl),
        Some(_) => bail!("--lease-ttl must be positive: a lease with TTL 0 expires at boot"),
        None => LeasePolicy::default(),
    };
    Ok(RestorePlan::new(
        args.store.store_prefix.clone(),
        args.restoration.data_dir.clone(),
        cluster,
        args.restoration.name.clone(),
    )
    .with_temp_dir(args.restoration.restoration_temp_snapshots_dir.clone())
    .with_target(target)
    .with_max_fetchers(args.restoration.max_fetchers)
    .with_memory_budget(args.restoration.restore_memory_budget)
    .with_skip_hash_check(args.restoration.skip_hash_check)
    .with_quota_bytes(Some(args.restoration.embedded_etcd_quota_bytes))
    .with_bump_revision(args.bump_revision)
    .with_keep_revision(args.keep_revision)
    .with_lease_policy(lease_policy)
    .with_dry_run(args.dry_run))
}

/// RFC 3339 or unix seconds, as unix seconds.
fn parse_time(t: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = t.parse::<i64>() {
        return Ok(secs);
    }
    let time = humantime::parse_rfc3339_weak(t)
        .with_context(|| format!("--to-time {t}: expected RFC 3339 (2026-11-25T13:00:00Z) or unix seconds"))?;
    Ok(time.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0))
}

fn print_summary(report: &RestoreReport, dry_run: bool) {
    let s = &report.stats;
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let verb = if dry_run { "verified (dry run, nothing written)" } else { "restored" };
    println!(
        "{verb}: revision {} from {} + {} deltas ({} events, {} revisions applied, {} skipped as overlap)",
        s.revision,
        report.full,
        report.deltas.len(),
        s.events_applied,
        s.revisions_applied,
        s.events_skipped
    );
    println!(
        "db: {} bytes, {} key revisions, compact revision {}, {} lease records added",
        report.db_size, s.key_revisions, s.compact_revision, s.leases_added
    );
    if s.bumped_by > 0 {
        println!(
            "revision bumped by {} from {} to {} and marked compacted{}",
            s.bumped_by,
            s.revision - s.bumped_by,
            s.revision,
            if report.new_history {
                ": the store holds newer revisions, so this restore begins a new history above them"
            } else {
                ""
            }
        );
    }
    println!(
        "took {:.3} s: {:.1} MB/s fetched, {:.0} revisions/s applied",
        secs,
        report.bytes_fetched as f64 / 1e6 / secs,
        s.revisions_applied as f64 / secs
    );
    for (key, why) in &report.left_out {
        println!("left out {key}: {why}");
    }
    if let Some(hash) = report.hashkv {
        println!("hashkv at revision {}: {hash} (compare: etcdctl endpoint hashkv --rev {})", s.revision, s.revision);
    }
    if let Some(dir) = &report.data_dir {
        println!("data dir: {}", dir.display());
    }
}

/// A progress bar on stderr, for terminals.
pub(crate) struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub(crate) fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar { bar }
    }
}

impl Progress for Bar {
    fn start(&self, full_bytes: u64, deltas: usize) {
        self.bar.set_length(full_bytes);
        self.bar.set_message(format!("full snapshot, then {deltas} deltas"));
    }
    fn full_bytes(&self, n: u64) {
        self.bar.inc(n);
    }
    fn delta_applied(&self, name: &str, events: usize) {
        self.bar.set_message(format!("{name}: {events} events"));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
