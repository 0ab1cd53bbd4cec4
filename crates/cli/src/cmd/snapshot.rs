//! `etcdbrctl snapshot`: full snapshots on a schedule, delta snapshots from a watch, garbage
//! collection and defragmentation, until SIGTERM or ctrl-c (then the buffered events are stored
//! as a last delta and the command exits 0).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use brcore::etcd::{EtcdClient, EtcdConfig};
use brcore::gc::Policy;
use brcore::name::Compression;
use brcore::snapshotter::{Schedule, Snapshotter, SnapshotterConfig};
use clap::{ArgAction, Args, ValueEnum};
use tracing::info;

use super::store_config;
use crate::flags::{EtcdAuthArgs, StoreArgs};

/// `--garbage-collection-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GcPolicyArg {
    /// Keep the current hour's full snapshots, then one per hour, day and week.
    #[value(name = "Exponential")]
    Exponential,
    /// Keep the newest `--max-backups` full snapshots.
    #[value(name = "LimitBased")]
    LimitBased,
}

/// `--compression-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    /// `.gz`
    Gzip,
    /// `.Z` (Go's compress/lzw)
    Lzw,
    /// `.zlib`
    Zlib,
    /// `.zst`, etcdbr's own: full snapshots compressed on every core at zstd level 1, about
    /// 3× gzip level 2's speed for the same size. The Go etcdbrctl cannot read these backups.
    Zstd,
}

/// `etcdbrctl snapshot`: the reference's flags, names and defaults.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// etcd client URLs; the first one is asked for status.
    #[arg(short = 'e', long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// When to take full snapshots: a 5-field cron expression (UTC).
    #[arg(short = 's', long, default_value = "0 */1 * * *")]
    pub schedule: String,
    /// How often buffered watch events are stored as a delta snapshot; below 1s disables deltas.
    #[arg(long, default_value = "20s", value_parser = crate::pflag::go_duration)]
    pub delta_snapshot_period: Duration,
    /// Bytes of buffered events (as JSON) that trigger a delta snapshot at once (0: the default).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub delta_snapshot_memory_limit: usize,
    /// How often old snapshots are garbage-collected; 1s or less disables it.
    #[arg(long, default_value = "1m", value_parser = crate::pflag::go_duration)]
    pub garbage_collection_period: Duration,
    /// Which full snapshots garbage collection keeps.
    #[arg(long, value_enum, default_value = "Exponential")]
    pub garbage_collection_policy: GcPolicyArg,
    /// Full snapshots kept by the LimitBased policy.
    #[arg(short = 'm', long, default_value_t = 7)]
    pub max_backups: usize,
    /// Deltas of older snapshot sets younger than this are kept by garbage collection.
    #[arg(long, default_value = "0s", value_parser = crate::pflag::go_duration)]
    pub delta_snapshot_retention_period: Duration,
    /// Compress snapshots (`--compress-snapshots=false` to store them as they are).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub compress_snapshots: bool,
    /// Compression of new snapshots: the reference's gzip, lzw or zlib, or etcdbr's own zstd
    /// (no faster than gzip to write, but smaller and faster to restore; the Go etcdbrctl cannot
    /// read `.zst` objects, nor restore a store that holds them).
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression_policy: CompressionArg,
    /// Deflate level of gzip and zlib full snapshots, 1 (fastest) to 9 (smallest). etcdbr's own
    /// flag. Default: 1 for gzip (ISA-L's igzip: about half the CPU of libdeflate's level 1, the
    /// deflate of levels 2 to 9, for objects within about 7 % of the reference's level 6; it
    /// keeps a large snapshot near etcd's streaming speed), 2 for zlib. zstd is always level 1.
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(u32).range(1..=9))]
    pub compression_level: Option<u32>,
    /// Where snapshots are stored.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Limit for connecting to etcd and for each request.
    #[arg(long, default_value = "30s", value_parser = crate::pflag::go_duration)]
    pub etcd_connection_timeout: Duration,
    /// Limit for one whole full snapshot (stream and upload).
    #[arg(long, default_value = "15m", value_parser = crate::pflag::go_duration)]
    pub etcd_snapshot_timeout: Duration,
    /// Limit for one defragmentation.
    #[arg(long, default_value = "8m", value_parser = crate::pflag::go_duration)]
    pub etcd_defrag_timeout: Duration,
    /// etcd's TLS and credentials.
    #[command(flatten)]
    pub auth: EtcdAuthArgs,
    /// When to defragment etcd (followed by a full snapshot): a 5-field cron expression (UTC).
    #[arg(long, default_value = "0 0 */3 * *")]
    pub defragmentation_schedule: String,
    /// No-op: a failed snapshotter is restarted after 1 s, doubling up to 128 s (the Go tool's
    /// backoff, with its defaults fixed).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub backoff_multiplier: u64,
    /// No-op: the snapshotter is restarted for as long as the command runs.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..))]
    pub backoff_attempt_limit: u64,
    /// No-op: the restart backoff stops growing at 128 s (the Go default is 2m8s).
    #[arg(long, default_value = "2m8s", value_parser = crate::pflag::go_duration)]
    pub backoff_threshold_time: Duration,
}

/// `etcdbrctl snapshot`: the snapshotter flags, and the one connection flag the command takes
/// but does not use.
#[derive(Debug, Args)]
pub struct SnapshotCommand {
    /// The snapshotter.
    #[command(flatten)]
    pub args: SnapshotArgs,
    /// No-op here, as in the Go tool: its `snapshot` command never uses the etcd Service's
    /// endpoints (the server's multi-member handling does).
    #[arg(long, value_delimiter = ',')]
    pub service_endpoints: Vec<String>,
}

/// The checked configuration of a `snapshot` run.
#[derive(Debug)]
pub(crate) struct SnapshotPlan {
    pub etcd: EtcdConfig,
    pub snapshotter: SnapshotterConfig,
}

pub(crate) fn plan(args: &SnapshotArgs) -> anyhow::Result<SnapshotPlan> {
    if args.etcd_connection_timeout.is_zero()
        || args.etcd_snapshot_timeout.is_zero()
        || args.etcd_defrag_timeout.is_zero()
    {
        bail!("--etcd-connection-timeout, --etcd-snapshot-timeout and --etcd-defrag-timeout must be positive");
    }
    if args.etcd_snapshot_timeout < args.etcd_connection_timeout {
        bail!("--etcd-snapshot-timeout must not be shorter than --etcd-connection-timeout");
    }
    let super::EtcdAccess { endpoints, user, tls } = super::etcd_access(&args.endpoints, &args.auth)?;
    if endpoints.is_empty() {
        bail!("--endpoints needs at least one etcd client URL");
    }
    let policy = match args.garbage_collection_policy {
        GcPolicyArg::Exponential => Policy::Exponential,
        GcPolicyArg::LimitBased => {
            if args.max_backups == 0 {
                bail!("--max-backups must be greater than 0 with --garbage-collection-policy LimitBased");
            }
            Policy::LimitBased { max_backups: args.max_backups }
        }
    };
    let compression = if !args.compress_snapshots {
        Compression::None
    } else {
        match args.compression_policy {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Lzw => Compression::Lzw,
            CompressionArg::Zlib => Compression::Zlib,
            CompressionArg::Zstd => Compression::Zstd,
        }
    };
    let full_schedule = Schedule::parse(&args.schedule).context("invalid --schedule")?;
    let defrag_schedule =
        Schedule::parse(&args.defragmentation_schedule).context("invalid --defragmentation-schedule")?;
    let memory_limit =
        if args.delta_snapshot_memory_limit == 0 { 10 * 1024 * 1024 } else { args.delta_snapshot_memory_limit };
    let store = store_config(&args.store);
    let mut s = SnapshotterConfig::new(args.store.store_prefix.clone());
    s.full_schedule = full_schedule;
    s.delta_period = (args.delta_snapshot_period >= Duration::from_secs(1)).then_some(args.delta_snapshot_period);
    s.delta_memory_limit = memory_limit;
    s.max_pending_bytes = memory_limit.saturating_mul(4);
    s.gc_period = (args.garbage_collection_period > Duration::from_secs(1)).then_some(args.garbage_collection_period);
    s.gc_policy = policy;
    s.delta_retention = args.delta_snapshot_retention_period;
    s.compression = compression;
    s.write = brcore::WriteOptions::new(store.max_parallel_chunk_uploads.max(1), store.min_chunk_size);
    s.compression_level = args.compression_level;
    s.snapshot_timeout = args.etcd_snapshot_timeout;
    s.defrag_schedule = Some(defrag_schedule);
    let mut etcd = EtcdConfig::new(endpoints);
    etcd.connection_timeout = args.etcd_connection_timeout;
    etcd.snapshot_timeout = args.etcd_snapshot_timeout;
    etcd.defrag_timeout = args.etcd_defrag_timeout;
    etcd.user = user;
    etcd.tls = tls;
    Ok(SnapshotPlan { etcd, snapshotter: s })
}

/// Runs the snapshotter until SIGTERM or ctrl-c.
pub async fn run(command: SnapshotCommand) -> anyhow::Result<()> {
    let args = command.args;
    let plan = plan(&args)?;
    let store = super::open_store(&args.store)?;
    info!(
        endpoints = ?plan.etcd.endpoints,
        schedule = plan.snapshotter.full_schedule.as_str(),
        delta_period = ?plan.snapshotter.delta_period,
        "starting the snapshotter"
    );
    let source = Arc::new(EtcdClient::new(plan.etcd));
    let metrics = brcore::metrics::metrics().clone();
    let report = Snapshotter::new(source, store, plan.snapshotter, metrics).run(super::stop_signal()).await?;
    info!(
        full_snapshots = report.full_snapshots,
        delta_snapshots = report.delta_snapshots,
        last_revision = report.last_revision,
        "snapshotter stopped"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> SnapshotArgs {
        crate::cmd::parse_args(argv).unwrap()
    }

    #[test]
    fn negative_durations_disable_as_zero_does() {
        let p = plan(&parse(&["--delta-snapshot-period=-1s", "--garbage-collection-period=-1m"])).unwrap();
        assert_eq!(p.snapshotter.delta_period, None, "Go: below 1s disables deltas");
        assert_eq!(p.snapshotter.gc_period, None, "Go: 1s or less disables garbage collection");
        assert!(plan(&parse(&["--etcd-connection-timeout=-30s"])).is_err(), "Go: must be greater than zero");
    }

    #[test]
    fn defaults_are_the_references() {
        let a = parse(&[]);
        let p = plan(&a).unwrap();
        assert_eq!(p.etcd.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(p.etcd.connection_timeout, Duration::from_secs(30));
        assert_eq!(p.etcd.snapshot_timeout, Duration::from_secs(900));
        assert!(p.etcd.tls.is_none());
        let s = p.snapshotter;
        assert_eq!(s.full_schedule.as_str(), "0 */1 * * *");
        assert_eq!(s.delta_period, Some(Duration::from_secs(20)));
        assert_eq!(s.delta_memory_limit, 10 * 1024 * 1024);
        assert_eq!(s.gc_period, Some(Duration::from_secs(60)));
        assert_eq!(s.gc_policy, Policy::Exponential);
        assert_eq!(s.compression, Compression::Gzip);
        assert_eq!(s.write.max_parallel_parts, 5);
        assert_eq!(s.write.part_size, 5 * 1024 * 1024);
        assert_eq!(s.defrag_schedule.unwrap().as_str(), "0 0 */3 * *");
    }

    #[test]
    fn flags_map_onto_the_config() {
        let a = parse(&[
            "-e",
            "http://a:2379,http://b:2379",
            "-s",
            "*/5 * * * *",
            "--delta-snapshot-period=500ms",
            "--garbage-collection-period",
            "1s",
            "--garbage-collection-policy",
            "LimitBased",
            "-m",
            "3",
            "--compress-snapshots=false",
            "--compression-policy",
            "lzw",
            "--store-prefix",
            "etcd-main",
            "--etcd-username",
            "root",
            "--etcd-password",
            "secret",
            "--cacert",
            "/ca.pem",
        ]);
        let p = plan(&a).unwrap();
        assert_eq!(p.etcd.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(p.etcd.user, Some(("root".into(), "secret".into())));
        assert!(p.etcd.tls.is_some(), "a certificate flag turns TLS on");
        assert!(!format!("{:?}", p.etcd).contains("secret"), "the password stays out of logs");
        let s = p.snapshotter;
        assert_eq!(s.delta_period, None, "below 1 s disables deltas");
        assert_eq!(s.gc_period, None, "1 s or less disables garbage collection");
        assert_eq!(s.gc_policy, Policy::LimitBased { max_backups: 3 });
        assert_eq!(s.compression, Compression::None, "--compress-snapshots=false wins over the policy");
        assert_eq!(s.prefix, "etcd-main");
        let a = parse(&["--compression-policy", "zlib", "--insecure-transport=false"]);
        let p = plan(&a).unwrap();
        assert_eq!(p.snapshotter.compression, Compression::Zlib);
        assert!(p.etcd.tls.is_some(), "--insecure-transport=false means TLS with system roots");
        let p = plan(&parse(&["--compression-policy", "zstd"])).unwrap();
        assert_eq!(p.snapshotter.compression, Compression::Zstd);
        let p = plan(&parse(&["--compression-policy=gzip"])).unwrap();
        assert_eq!(p.snapshotter.compression, Compression::Gzip, "the reference's spellings stay");
    }

    #[test]
    fn inconsistent_flags_are_refused() {
        for argv in [
            &["--schedule", "every hour"][..],
            &["--etcd-username", "root"],
            &["--cert", "/c.pem"],
            &["--garbage-collection-policy", "LimitBased", "-m", "0"],
            &["--etcd-snapshot-timeout", "1s", "--etcd-connection-timeout", "2s"],
        ] {
            assert!(plan(&parse(argv)).is_err(), "{argv:?}");
        }
    }
}
