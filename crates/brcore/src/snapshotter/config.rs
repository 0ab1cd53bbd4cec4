//! What a snapshotter is told ([`SnapshotterConfig`]) and what a run reports ([`RunReport`]).

use std::time::Duration;

use super::full::FullOptions;
use super::schedule::Schedule;
use crate::gc::Policy;
use crate::name::{Compression, Snapshot};
use crate::store::WriteOptions;

/// Everything the snapshotter needs to know (the `snapshot` sub-command's flags, checked):
/// [`SnapshotterConfig::new`], then set what differs from its defaults. Fields may be added in
/// any release (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SnapshotterConfig {
    /// Store prefix (`--store-prefix`); objects go to `<prefix>/v2/`.
    pub prefix: String,
    /// When to take full snapshots (`--schedule`).
    pub full_schedule: Schedule,
    /// How often buffered events become a delta (`--delta-snapshot-period`); `None` disables
    /// deltas and the watch (the reference does so below 1 s).
    pub delta_period: Option<Duration>,
    /// JSON bytes of buffered events that trigger a delta at once (`--delta-snapshot-memory-limit`).
    pub delta_memory_limit: usize,
    /// Buffered JSON bytes above which the watch is no longer read while the store fails.
    pub max_pending_bytes: usize,
    /// How often garbage is collected (`--garbage-collection-period`); `None` disables it.
    pub gc_period: Option<Duration>,
    /// Which full snapshots garbage collection keeps (`--garbage-collection-policy`, `--max-backups`).
    pub gc_policy: Policy,
    /// Deltas of older streams younger than this are kept (`--delta-snapshot-retention-period`).
    pub delta_retention: Duration,
    /// Compression of new objects (`--compress-snapshots`, `--compression-policy`).
    pub compression: Compression,
    /// Upload parts (`--max-parallel-chunk-uploads`, `--min-chunk-size`).
    pub write: WriteOptions,
    /// Deflate level of gzip and zlib full snapshots (`--compression-level`); `None`: the
    /// policy's default ([`crate::compress::blocks::default_level`]).
    pub compression_level: Option<u32>,
    /// Limit for one full snapshot (`--etcd-snapshot-timeout`).
    pub snapshot_timeout: Duration,
    /// Limit for storing one delta before it is retried.
    pub delta_upload_timeout: Duration,
    /// When to defragment etcd, followed by a full snapshot (`--defragmentation-schedule`).
    pub defrag_schedule: Option<Schedule>,
}

impl SnapshotterConfig {
    /// The reference's defaults, for the store prefix `prefix`.
    pub fn new(prefix: impl Into<String>) -> SnapshotterConfig {
        let limit = 10 * 1024 * 1024;
        SnapshotterConfig {
            prefix: prefix.into(),
            // The reference's default schedule; a constant that parses.
            full_schedule: Schedule::parse("0 */1 * * *").expect("valid default schedule"),
            delta_period: Some(Duration::from_secs(20)),
            delta_memory_limit: limit,
            max_pending_bytes: 4 * limit,
            gc_period: Some(Duration::from_secs(60)),
            gc_policy: Policy::Exponential,
            delta_retention: Duration::ZERO,
            compression: Compression::Gzip,
            write: WriteOptions::default(),
            compression_level: None,
            snapshot_timeout: Duration::from_secs(15 * 60),
            delta_upload_timeout: Duration::from_secs(120),
            defrag_schedule: None,
        }
    }

    /// How each full snapshot of a run is taken and stored (not `.final`: a request says so).
    pub fn full_options(&self) -> FullOptions {
        FullOptions {
            prefix: self.prefix.clone(),
            compression: self.compression,
            write: self.write.clone(),
            compression_level: self.compression_level,
            timeout: self.snapshot_timeout,
            is_final: false,
        }
    }
}

/// What a run did, returned when it stops.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Full snapshots stored.
    pub full_snapshots: usize,
    /// Delta snapshots stored (including the last one).
    pub delta_snapshots: usize,
    /// The last revision stored when the run stopped.
    pub last_revision: Option<u64>,
    /// The delta stored at shutdown, if there were events to store.
    pub final_delta: Option<Snapshot>,
    /// Times the watch had to be reopened.
    pub watch_reconnects: usize,
    /// Times the watch found its start revision compacted.
    pub compactions_seen: usize,
}
