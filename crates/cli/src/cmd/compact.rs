//! `etcdbrctl compact`: fold the latest full snapshot and its deltas into a new full snapshot.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use brcore::compact::{CompactPlan, compact};
use brcore::name::Compression;
use brcore::rebuild::LeasePolicy;
use clap::{ArgAction, Args};

use super::store_config;
use crate::flags::{SnapshotLeaseArgs, StoreArgs};

/// `etcdbrctl compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// The store to compact (read, and the new full snapshot written to it).
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where the temporary full snapshot and rebuilt db are kept.
    #[arg(long, default_value = "/tmp")]
    pub restoration_temp_snapshots_dir: PathBuf,
    /// Deltas downloaded at once.
    #[arg(long, default_value_t = 6)]
    pub max_fetchers: usize,
    /// Compress the new full snapshot (default: as the newest object folded). etcdbr's own
    /// flag here (the Go tool's `compact` always compresses with gzip).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub compress_snapshots: Option<bool>,
    /// gzip, lzw or zlib.
    #[arg(long)]
    pub compression_policy: Option<String>,
    /// TTL in seconds for leases the deltas reference but the full snapshot lacks.
    #[arg(long)]
    pub lease_ttl: Option<i64>,
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
}

pub async fn run(args: CompactArgs) -> anyhow::Result<()> {
    args.snapshot_leases.check().map_err(anyhow::Error::msg)?;
    let compression = match (args.compress_snapshots, args.compression_policy.as_deref()) {
        (Some(false), _) => Some(Compression::None),
        (_, Some(policy)) => Some(
            Compression::from_policy(policy)
                .with_context(|| format!("--compression-policy {policy}: expected gzip, lzw or zlib"))?,
        ),
        (Some(true), None) => Some(Compression::Gzip),
        (None, None) => None,
    };
    let store = snapstore::open(&store_config(&args.store)).context("cannot open the backup store")?;
    let plan = CompactPlan {
        prefix: args.store.store_prefix.clone(),
        temp_dir: args.restoration_temp_snapshots_dir.clone(),
        compression,
        write: brcore::WriteOptions {
            max_parallel_parts: args.store.max_parallel_chunk_uploads.max(1),
            part_size: args.store.min_chunk_size,
        },
        max_fetchers: args.max_fetchers.max(1),
        lease_policy: match args.lease_ttl {
            Some(ttl) if ttl > 0 => LeasePolicy::Fixed(ttl),
            Some(_) => anyhow::bail!("--lease-ttl must be positive"),
            None => LeasePolicy::default(),
        },
    };
    let report = compact(store, &plan, Arc::new(brcore::restore::NoProgress)).await?;
    println!(
        "compacted {} objects into {} (revision {}, {} bytes) in {:.3} s",
        report.folded.len(),
        report.snapshot.key,
        report.stats.revision,
        report.snapshot.size,
        report.seconds
    );
    Ok(())
}
