//! Compaction of backups: the latest full snapshot and its deltas folded into one new full
//! snapshot, so the next restore reads one object instead of a long chain.
//!
//! The same rebuild as a restore ([`crate::restore::rebuild_chain`]), with the db's membership
//! kept as it is; the result is uploaded as `Full-00000000-<revision>-<time of listing>` in the configured
//! compression, with etcd's sha256 trailer, exactly like a full snapshot taken from etcd. The
//! objects it was made from are left in place: garbage collection removes them later.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use etcd_format::snapshot_file::TrailerWriter;
use tracing::info;

use crate::bridge::{ChannelWriter, receiver_stream};
use crate::chain::{self, Target};
use crate::compress::Encoder;
use crate::error::Error;
use crate::name::{Compression, Snapshot, SnapshotKind, SnapshotName};
use crate::rebuild::{LeasePolicy, Membership, RebuildOptions, RebuildStats};
use crate::restore::{FetchOptions, Progress, rebuild_chain};
use crate::store::{ByteStream, Snapstore, StoreError, WriteOptions};

/// What to compact and how to store the result: [`CompactPlan::new`], then set what differs from
/// its defaults. Fields may be added in any release (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CompactPlan {
    /// The store prefix (`--store-prefix`).
    pub prefix: String,
    /// The scratch directory (`--data-dir` of `etcdbrctl compact`, where the reference runs its
    /// embedded etcd): the db is rebuilt in a fresh directory inside it, removed afterwards.
    pub temp_dir: PathBuf,
    /// Where the decompressed full snapshot is kept while it is read
    /// (`--restoration-temp-snapshots-dir`); default: the scratch directory.
    pub snapshot_temp_dir: Option<PathBuf>,
    /// Accept a full snapshot without etcd's sha256 trailer (`--skip-hash-check`).
    pub skip_hash_check: bool,
    /// Refuse a rebuilt db larger than this many bytes (`--embedded-etcd-quota-bytes`: the
    /// reference's embedded etcd fails with NOSPACE past it).
    pub quota_bytes: Option<u64>,
    /// Compression of the new full snapshot; `None`: that of the newest object folded, as the
    /// reference does.
    pub compression: Option<Compression>,
    /// Upload parts.
    pub write: WriteOptions,
    /// Deltas fetched at once.
    pub max_fetchers: usize,
    /// Memory for deltas read and decoded ahead of the writer (`--restore-memory-budget`).
    pub memory_budget: u64,
    /// TTL of leases the deltas reference but the full snapshot lacks: the new full snapshot
    /// holds a record for each, so later restores keep them.
    pub lease_policy: LeasePolicy,
}

impl CompactPlan {
    /// Compacts the newest chain under `prefix`, rebuilding in `temp_dir`, with the reference's
    /// defaults: hash checked, no quota, the folded objects' compression, 6 fetchers, the
    /// default memory budget, default upload parts and lease policy.
    pub fn new(prefix: impl Into<String>, temp_dir: impl Into<PathBuf>) -> CompactPlan {
        CompactPlan {
            prefix: prefix.into(),
            temp_dir: temp_dir.into(),
            snapshot_temp_dir: None,
            skip_hash_check: false,
            quota_bytes: None,
            compression: None,
            write: WriteOptions::default(),
            max_fetchers: 6,
            memory_budget: crate::deltafeed::DEFAULT_BUDGET,
            lease_policy: LeasePolicy::default(),
        }
    }
}

/// How a compaction ended.
#[derive(Debug, Clone)]
pub enum CompactOutcome {
    /// A new full snapshot holds the latest full snapshot and its deltas.
    Compacted(CompactReport),
    /// The latest full snapshot has no deltas after it: nothing to fold, nothing written.
    AlreadyCompact {
        /// The latest full snapshot, which already is the whole latest backup set.
        full: Snapshot,
    },
}

impl CompactOutcome {
    /// The latest full snapshot once the compaction is done: the new one, or the one that was
    /// already compact.
    pub fn latest_full(&self) -> &Snapshot {
        match self {
            CompactOutcome::Compacted(r) => &r.snapshot,
            CompactOutcome::AlreadyCompact { full } => full,
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone)]
pub struct CompactReport {
    /// The new full snapshot.
    pub snapshot: Snapshot,
    /// The objects it replaces (the old full snapshot and its deltas).
    pub folded: Vec<String>,
    /// The rebuild's numbers.
    pub stats: RebuildStats,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Folds the latest full snapshot and its deltas into a new full snapshot in the same store.
///
/// With no deltas after the latest full snapshot there is nothing to fold:
/// [`CompactOutcome::AlreadyCompact`]. With no full snapshot at all: [`Error::NotFound`]. The
/// new full snapshot is final (`.final`) when the one it folds is, as the reference's.
pub async fn compact(
    store: Arc<dyn Snapstore>,
    plan: &CompactPlan,
    progress: Arc<dyn Progress>,
) -> Result<CompactOutcome, Error> {
    let started = Instant::now();
    // The new object is named after the time the chain was listed, like a full snapshot after
    // the time its stream began: an object created in an earlier second is part of the state it
    // holds, so it never looks like a new history going back (see `chain::Histories`).
    let begun = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let chain = chain::list_chain(store.as_ref(), &plan.prefix, Target::Latest).await?;
    if chain.deltas.is_empty() {
        info!(object = %chain.full.key, "the latest full snapshot has no deltas after it: nothing to compact");
        return Ok(CompactOutcome::AlreadyCompact { full: chain.full });
    }
    std::fs::create_dir_all(&plan.temp_dir).map_err(|e| Error::io(&plan.temp_dir, e))?;
    let work = tempfile::Builder::new()
        .prefix("etcdbr-compact-")
        .tempdir_in(&plan.temp_dir)
        .map_err(|e| Error::io(&plan.temp_dir, e))?;
    let db_path = work.path().join("db");
    let opts = RebuildOptions {
        to_revision: None,
        to_time_nanos: None,
        membership: Membership::Keep,
        lease_policy: plan.lease_policy,
        bump_revision: None,
        bump_past: None,
        writer: bbolt::WriterOptions::default(),
        known_lease_ttls: crate::restore::lease_sidecars(store.as_ref(), &plan.prefix, &chain).await?,
    };
    let fetch = FetchOptions {
        max_fetchers: plan.max_fetchers,
        skip_hash_check: plan.skip_hash_check,
        memory_budget: plan.memory_budget,
        // The db is read back at once: keep it in the page cache.
        direct_io: false,
    };
    let snapshot_temp = plan.snapshot_temp_dir.as_deref().unwrap_or(work.path());
    let (stats, _) = rebuild_chain(store.clone(), &chain, opts, &db_path, snapshot_temp, fetch, progress).await?;
    let db_size = std::fs::metadata(&db_path).map_err(|e| Error::io(&db_path, e))?.len();
    if let Some(quota) = plan.quota_bytes
        && db_size > quota
    {
        return Err(Error::Refused {
            why: format!(
                "the compacted db is {db_size} bytes, above the quota of {quota} bytes: a restore of it \
                 would raise etcd's NOSPACE alarm; raise the quota (and etcd's backend quota with it)"
            ),
        });
    }

    let compression = plan.compression.unwrap_or(chain.deltas.last().unwrap_or(&chain.full).name.compression);
    let name = SnapshotName {
        kind: SnapshotKind::Full,
        start_revision: 0,
        last_revision: stats.revision as u64,
        created_on: begun,
        compression,
        is_final: chain.full.name.is_final,
    };
    let key = name.key_v2(&plan.prefix);
    let data = snapshot_stream(db_path, compression, key.clone());
    let size = store.write(&key, data, &plan.write).await?;
    let folded: Vec<String> = chain.objects().map(|s| s.key.clone()).collect();
    info!(object = %key, revision = stats.revision, folded = folded.len(), size, "compacted full snapshot stored");
    Ok(CompactOutcome::Compacted(CompactReport {
        snapshot: Snapshot::new_v2(&plan.prefix, name, size),
        folded,
        stats,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// Streams the db at `path` as etcd's snapshot format (the db, then the sha256 of it),
/// compressed, for [`Snapstore::write`]. The file is read once, by a blocking thread; memory is
/// bounded by the channel's few chunks.
pub fn snapshot_stream(path: PathBuf, compression: Compression, key: String) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(4);
    tokio::task::spawn_blocking(move || {
        let result = encode_snapshot(&path, compression, ChannelWriter::new(tx.clone(), 1 << 20));
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(StoreError::Other {
                key,
                retryable: false,
                source: format!("reading {}: {e}", path.display()).into(),
            }));
        }
    });
    receiver_stream(rx)
}

fn encode_snapshot(path: &Path, compression: Compression, out: ChannelWriter) -> io::Result<()> {
    let mut file = File::open(path)?;
    let enc = Encoder::new(compression, out)?;
    let mut snapshot = TrailerWriter::new(enc);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        snapshot.write_all(&buf[..n])?;
    }
    snapshot.finish()?.finish()?.flush()
}
