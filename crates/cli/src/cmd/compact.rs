//! `etcdbrctl compact`: fold the latest full snapshot and its deltas into a new full snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use brcore::compact::{CompactOutcome, CompactPlan, compact};
use brcore::error::Error as CoreError;
use brcore::name::Compression;
use brcore::rebuild::LeasePolicy;
use clap::{ArgAction, Args};
use tracing::info;

use crate::flags::{RestorationArgs, SnapshotLeaseArgs, StoreArgs};

/// `etcdbrctl compact`: the Go tool's flags (its restoration flags, the store flags, its
/// compactor's), the Job etcd-druid runs them in included.
#[derive(Debug, Args)]
#[command(
    mut_arg("data_dir", |a| a.help(
        "Scratch directory: the db is rebuilt in a fresh directory inside it (created if missing), \
         removed afterwards; nothing else in it is touched (the Go tool runs its embedded etcd here)")),
    mut_arg("restoration_temp_snapshots_dir", |a| a.help(
        "Where the decompressed full snapshot is kept while it is read (default: inside the scratch directory)")),
    mut_arg("name", |a| a.help("No-op for compact: the compacted snapshot keeps the backup's own membership")),
    mut_arg("initial_cluster", |a| a.help("No-op for compact: the compacted snapshot keeps the backup's own membership")),
    mut_arg("initial_cluster_token", |a| a.help("No-op for compact: the compacted snapshot keeps the backup's own membership")),
    mut_arg("initial_advertise_peer_urls", |a| a.help("No-op for compact: the compacted snapshot keeps the backup's own membership")),
    mut_arg("embedded_etcd_quota_bytes", |a| a.help(
        "Refuse a compacted db larger than this (the Go tool's embedded etcd fails with NOSPACE past it)")),
)]
pub struct CompactArgs {
    /// The store to compact (read, and the new full snapshot written to it).
    #[command(flatten)]
    pub store: StoreArgs,
    /// The restoration flags: the scratch directory, how the backups are read, the quota.
    #[command(flatten)]
    pub restoration: RestorationArgs,
    /// Compress the new full snapshot (default: as the newest object folded, as the Go tool
    /// does). etcdbr's own flag here.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub compress_snapshots: Option<bool>,
    /// gzip, lzw or zlib, or etcdbr's own zstd, which the Go etcdbrctl cannot read (default: as
    /// the newest object folded). etcdbr's own flag here.
    #[arg(long)]
    pub compression_policy: Option<String>,
    /// No-op: the Go tool defragments its embedded etcd before the snapshot; the db rebuilt
    /// here is written compact.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub defragment: bool,
    /// No-op: the Go tool's limit for snapshotting its embedded etcd; no etcd runs here.
    #[arg(long, default_value = "30m", value_parser = crate::pflag::go_duration)]
    pub etcd_snapshot_timeout: Duration,
    /// No-op: the Go tool's limit for defragmenting its embedded etcd; no etcd runs here.
    #[arg(long, default_value = "8m", value_parser = crate::pflag::go_duration)]
    pub etcd_defrag_timeout: Duration,
    /// The snapshot Leases (Kubernetes): with renewal on, the full-snapshot Lease is renewed
    /// once the compacted snapshot is stored.
    #[command(flatten)]
    pub snapshot_leases: SnapshotLeaseArgs,
    /// How long to wait after a compaction, so that Prometheus can scrape the Job's metrics
    /// (etcd-druid passes it); not when there is no backup at all (as the Go tool).
    #[arg(long, default_value = "0s", value_parser = crate::pflag::go_duration)]
    pub metrics_scrape_wait_duration: Duration,
}

/// The compression and lease policy the flags ask for; an error names the flag (checked at
/// start, see `crate::validate`).
pub(crate) fn settings(args: &CompactArgs) -> anyhow::Result<(Option<Compression>, LeasePolicy)> {
    args.snapshot_leases.check().map_err(anyhow::Error::msg)?;
    let compression = match (args.compress_snapshots, args.compression_policy.as_deref()) {
        (Some(false), _) => Some(Compression::None),
        (_, Some(policy)) => Some(Compression::from_policy(policy).with_context(|| {
            format!("--compression-policy {policy:?}: unknown policy; expected gzip, lzw, zlib or zstd")
        })?),
        (Some(true), None) => Some(Compression::Gzip),
        (None, None) => None,
    };
    let lease_policy = match args.restoration.lease_ttl {
        Some(ttl) if ttl > 0 => LeasePolicy::Fixed(ttl),
        Some(_) => anyhow::bail!("--lease-ttl must be positive"),
        None => LeasePolicy::default(),
    };
    Ok((compression, lease_policy))
}

pub async fn run(args: CompactArgs) -> anyhow::Result<()> {
    let (compression, lease_policy) = settings(&args)?;
    // Before any work, as the reference builds its Kubernetes client first.
    let leases = super::leases::snapshot_leases(&args.snapshot_leases, &super::leases::LeaseEnv::from_env()).await?;
    let r = &args.restoration;
    let store = super::open_store(&args.store)?;
    let scratch = Scratch::new(&r.data_dir)?;
    let mut plan = CompactPlan::new(args.store.store_prefix.clone(), r.data_dir.clone());
    plan.snapshot_temp_dir = r.restoration_temp_snapshots_dir.clone();
    plan.skip_hash_check = r.skip_hash_check;
    plan.quota_bytes = Some(r.embedded_etcd_quota_bytes);
    plan.compression = compression;
    plan.write = brcore::WriteOptions::new(args.store.max_parallel_chunk_uploads.max(1), args.store.min_chunk_size);
    plan.max_fetchers = r.max_fetchers.max(1);
    plan.memory_budget = args.restoration.restore_memory_budget;
    plan.lease_policy = lease_policy;
    let result = compact(store, &plan, Arc::new(brcore::restore::NoProgress)).await;
    scratch.remove();
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(CoreError::NotFound { what }) => {
            // As the Go tool: no base snapshot, nothing to compact, exit 0 (a Job succeeds).
            println!("nothing to compact: {what}");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    match &outcome {
        CompactOutcome::Compacted(report) => println!(
            "compacted {} objects into {} (revision {}, {} bytes) in {:.3} s",
            report.folded.len(),
            report.snapshot.key,
            report.stats.revision,
            report.snapshot.size,
            report.seconds
        ),
        CompactOutcome::AlreadyCompact { full } => {
            println!("nothing to compact: {} has no delta snapshots after it", full.key)
        }
    }
    if let Some(leases) = &leases {
        // The newest full snapshot: the compacted one, or the one that had nothing after it.
        let newest = match &outcome {
            CompactOutcome::Compacted(report) => &report.snapshot,
            CompactOutcome::AlreadyCompact { full } => full,
        };
        super::leases::renew_after_compaction(leases, newest).await;
    }
    if !args.metrics_scrape_wait_duration.is_zero() {
        info!(wait = ?args.metrics_scrape_wait_duration, "waiting for the metrics to be scraped");
        tokio::select! {
            _ = tokio::time::sleep(args.metrics_scrape_wait_duration) => {}
            _ = super::stop_signal() => {}
        }
    }
    Ok(())
}

/// The scratch directory (`--data-dir`): created if missing, and then removed again if it is
/// still empty (the compaction's own directory inside it removes itself).
struct Scratch {
    path: PathBuf,
    created: bool,
}

impl Scratch {
    fn new(path: &Path) -> anyhow::Result<Scratch> {
        let created = !path.exists();
        std::fs::create_dir_all(path).with_context(|| format!("cannot create --data-dir {}", path.display()))?;
        Ok(Scratch { path: path.to_path_buf(), created })
    }

    fn remove(self) {
        if self.created {
            // Only an empty directory: anything else in it is not ours to delete.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}
