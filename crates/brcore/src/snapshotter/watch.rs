//! The watch the deltas come from: opened at `watched + 1` with backoff, read into the
//! buffer, reopened when lost, and a new chain begun when its start revision was compacted or
//! etcd went back in time.

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{LoopState, Snapshotter};
use crate::etcd::{EtcdError, WatchBatch, WatchStream};

impl Snapshotter {
    /// Opens the watch whose backoff has passed; `None` (and a longer backoff) if etcd refuses.
    pub(super) async fn reopen_watch(&self, core: &mut LoopState) -> Option<WatchStream> {
        match self.open_watch(core).await {
            Ok(w) => Some(w),
            Err(e) => {
                let wait = core.watch_backoff.step();
                warn!(error = %e, retry_in = ?wait, "cannot watch etcd");
                self.metrics.failure("etcd");
                core.watch_retry_at = Instant::now() + wait;
                None
            }
        }
    }

    /// What the watch delivered; `watch` is closed when it failed or etcd went back.
    pub(super) async fn on_watch(
        &self,
        core: &mut LoopState,
        item: Option<Result<WatchBatch, EtcdError>>,
        watch: &mut Option<WatchStream>,
    ) {
        match item {
            Some(Ok(batch))
                if batch.events.is_empty()
                    && batch.header_revision > 0
                    && core.watched.is_some_and(|w| (batch.header_revision as u64) < w) =>
            {
                // etcd is behind revisions it already delivered: it was restored from an older
                // backup. Its history differs from the chain's.
                warn!(
                    etcd_revision = batch.header_revision,
                    watched = core.watched,
                    "etcd's revision went backwards (restored from a backup?); starting a new chain"
                );
                *watch = None;
                self.restart_chain(core, false).await;
            }
            Some(Ok(batch)) => {
                core.watch_backoff.reset();
                self.accept(core, batch.events).await;
                self.cut_at_memory_limit(core);
            }
            Some(Err(EtcdError::Compacted { requested, compact_revision })) => {
                *watch = None;
                self.compacted(core, requested, compact_revision).await;
            }
            Some(Err(e)) => {
                *watch = None;
                self.watch_lost(core, &e.to_string());
            }
            None => {
                *watch = None;
                self.watch_lost(core, "watch stream ended");
            }
        }
    }

    /// Opens the watch at `watched + 1`, learning etcd's revision first when there is no
    /// position yet (start, or after a compaction).
    pub(super) async fn open_watch(&self, core: &mut LoopState) -> Result<WatchStream, EtcdError> {
        let from = match core.watched {
            Some(w) => w,
            None => {
                let rev = self.source.status().await?.revision.max(0) as u64;
                core.watched = Some(rev);
                if core.chain.is_none() {
                    core.floor = Some(rev);
                }
                rev
            }
        };
        let w = self.source.watch(from as i64 + 1).await?;
        debug!(from = from + 1, "watching etcd");
        Ok(w)
    }

    pub(super) fn watch_lost(&self, core: &mut LoopState, why: &str) {
        let wait = core.watch_backoff.step();
        warn!(reason = why, resume_at = core.watched.map(|w| w + 1), retry_in = ?wait, "etcd watch lost; resuming");
        self.metrics.failure("etcd");
        core.report.watch_reconnects += 1;
        core.watch_retry_at = Instant::now() + wait;
    }

    pub(super) async fn compacted(&self, core: &mut LoopState, requested: i64, compact_revision: i64) {
        warn!(requested, compact_revision, "etcd compacted the revisions the watch needs; taking a full snapshot");
        self.metrics.failure("compacted");
        core.report.compactions_seen += 1;
        self.restart_chain(core, true).await;
    }

    /// Forgets the chain and takes a full snapshot to start a new one; the watch reopens at
    /// etcd's current revision. `keep_buffered` first stores the events received so far (they
    /// belong to the old chain and are still valid).
    pub(super) async fn restart_chain(&self, core: &mut LoopState, keep_buffered: bool) {
        if keep_buffered && let Err(e) = self.flush(core).await {
            warn!(error = %e, "could not store the events received before the compaction; the full snapshot covers them");
        }
        // A delta of the old chain still being stored finishes before the chain is forgotten.
        self.settle_flush(core).await;
        core.forget_chain();
    }
}
