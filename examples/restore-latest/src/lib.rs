//! Embedding etcdbr: restore the latest backup (the newest full snapshot and every delta after
//! it) into a new etcd data dir, offline, reporting progress.
//!
//! [`brcore::restore::OfflineRestorer`] does the work: it reads the chain from any
//! [`brcore::Snapstore`], rebuilds etcd's bbolt db with the deltas' original revisions, writes
//! the WAL and snap files a one-member cluster boots from, and renames `member/` into place only
//! when everything is complete and fsynced. The store is only read.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use brcore::Snapstore;
use brcore::restore::{OfflineRestorer, Progress, RestorePlan, RestoreReport, Restorer};
use etcd_format::membership::Cluster;

/// Progress as lines on stderr: the full snapshot's bytes in tenths, then each delta.
#[derive(Debug, Default)]
pub struct PrintProgress {
    full_total: AtomicU64,
    full_seen: AtomicU64,
    deltas_total: AtomicUsize,
    deltas_done: AtomicUsize,
}

impl Progress for PrintProgress {
    fn start(&self, full_bytes: u64, deltas: usize) {
        self.full_total.store(full_bytes, Ordering::Relaxed);
        self.deltas_total.store(deltas, Ordering::Relaxed);
        eprintln!("restoring a full snapshot of {full_bytes} bytes and {deltas} deltas");
    }

    fn full_bytes(&self, n: u64) {
        let total = self.full_total.load(Ordering::Relaxed).max(1);
        let before = self.full_seen.fetch_add(n, Ordering::Relaxed);
        let (was, now) = (before * 10 / total, (before + n) * 10 / total);
        if now > was {
            eprintln!("full snapshot: {}%", (now * 10).min(100));
        }
    }

    fn delta_applied(&self, name: &str, events: usize) {
        let done = self.deltas_done.fetch_add(1, Ordering::Relaxed) + 1;
        eprintln!("delta {done}/{}: {name} ({events} events)", self.deltas_total.load(Ordering::Relaxed));
    }
}

/// Restores the latest backup under `prefix` in `store` into `data_dir`, as the single member
/// `name` reachable by its peers at `peer_url`.
pub async fn restore_latest(
    store: Arc<dyn Snapstore>,
    prefix: &str,
    data_dir: PathBuf,
    name: &str,
    peer_url: &str,
    progress: Arc<dyn Progress>,
) -> Result<RestoreReport, brcore::error::Error> {
    let cluster = Cluster::from_initial_cluster(&format!("{name}={peer_url}"), "etcd-cluster")
        .map_err(|e| brcore::error::Error::Invalid { what: e.to_string() })?;
    let plan = RestorePlan::new(prefix, data_dir, cluster, name);
    OfflineRestorer::new(store).restore(&plan, progress).await
}

/// An S3 bucket (or an S3-compatible store at `endpoint`), with credentials read as the Go
/// etcdbrctl reads them: `AWS_APPLICATION_CREDENTIALS` names a directory of one-value files
/// (`accessKeyID`, `secretAccessKey`, `region`).
pub fn s3_store(bucket: &str, endpoint: Option<&str>) -> Result<Arc<dyn Snapstore>, snapstore::Error> {
    let mut config = snapstore::StoreConfig::new(snapstore::Provider::S3, bucket);
    config.endpoint_override = endpoint.map(str::to_string);
    snapstore::open(&config)
}
