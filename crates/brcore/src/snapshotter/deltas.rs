//! The delta pipeline: watch events buffered, cut into deltas (at the period, at the memory
//! limit, on request), stored one at a time in the background with their lease sidecars, put
//! back in front on failure, and drained at shutdown.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::leases::{self, LeaseRecord};
use super::{DRAIN_LIMIT, LoopState, Snapshotter, error_class, unix_now};
use crate::compress::Encoder;
use crate::delta::{Event, EventKind, encode_events};
use crate::error::Error;
use crate::etcd::WatchStream;
use crate::metrics::KIND_DELTA;
use crate::name::{Compression, Snapshot, SnapshotKind, SnapshotName};
use crate::store::{Snapstore, WriteOptions};

/// Leases seen since the last full snapshot and those the buffered events introduce.
#[derive(Debug, Default)]
pub(super) struct LeaseTracker {
    pub(super) known: HashSet<i64>,
    pub(super) pending: Vec<LeaseRecord>,
}

impl LeaseTracker {
    /// A full snapshot at `revision` holds every lease alive there, so records of leases first
    /// seen at or below it are no longer needed; records of leases first seen above it belong
    /// to buffered events the full snapshot does not cover (the watch may run ahead of the
    /// snapshot's completion) and are kept, with their leases still known.
    pub(super) fn after_full(&mut self, revision: u64) {
        self.pending.retain(|l| l.first_revision.max(0) as u64 > revision);
        self.known = self.pending.iter().map(|l| l.id).collect();
    }
}

impl Snapshotter {
    /// Buffers a batch's new events, looking up leases not seen since the last full snapshot.
    pub(super) async fn accept(&self, core: &mut LoopState, events: Vec<Event>) {
        // A batch holds whole revisions, so a revision is either entirely new or entirely seen.
        let seen = core.watched;
        for e in events {
            let rev = e.mod_revision.max(0) as u64;
            if seen.is_some_and(|w| rev <= w) {
                continue; // already buffered or stored (a resumed watch repeats them)
            }
            if e.kind == EventKind::Put && e.lease != 0 && core.leases.known.insert(e.lease) {
                let (granted, remaining) = match self.source.lease_ttl(e.lease).await {
                    Ok(Some(t)) => (Some(t.granted_ttl), Some(t.remaining_ttl)),
                    Ok(None) => (None, None),
                    Err(err) => {
                        warn!(lease = e.lease, error = %err, "cannot look up a lease's TTL; recording it as unknown");
                        (None, None)
                    }
                };
                core.leases.pending.push(LeaseRecord {
                    id: e.lease,
                    granted_ttl: granted,
                    remaining_ttl: remaining,
                    first_revision: e.mod_revision,
                });
            }
            core.pending_json += e.json_len() + 1;
            core.watched = Some(rev);
            core.pending.push(e);
        }
    }

    /// Stores the buffered events as a delta (and their lease sidecar first), waiting for it.
    /// A delta already being stored in the background is waited for first, so deltas stay in
    /// order. Does nothing when nothing is buffered or no chain exists yet. On failure the
    /// events stay buffered and a retry is scheduled.
    pub(super) async fn flush(&self, core: &mut LoopState) -> Result<Option<Snapshot>, Error> {
        self.settle_flush(core).await;
        match self.take_delta(core) {
            Some(job) => {
                let outcome = store_delta(self.delta_context(), job).await;
                self.delta_finished(core, Ok(outcome))
            }
            None => Ok(None),
        }
    }

    /// Starts storing the buffered events as a delta in the background, unless one is being
    /// stored already: the watch keeps being read meanwhile. etcd drops a watcher that stops
    /// reading into a catch-up mode that sends at most 1,000 revisions per 100 ms, so a watch
    /// that pauses for every upload falls behind a busy etcd for good.
    ///
    /// While one is being stored, the buffered events are cut into a queued delta instead, so
    /// every delta stays near the memory limit; queued deltas are stored one after another.
    pub(super) fn start_flush(&self, core: &mut LoopState) {
        if let Some(job) = self.take_delta(core) {
            core.queued_json += job.json;
            core.queued.push_back(job);
        }
        self.store_next(core);
    }

    /// Starts storing the oldest queued delta, unless one is being stored.
    fn store_next(&self, core: &mut LoopState) {
        if core.flush_task.is_some() {
            return;
        }
        if let Some(job) = core.queued.pop_front() {
            core.queued_json -= job.json;
            core.storing = Some(job.name.last_revision);
            core.flush_task = Some(tokio::spawn(store_delta(self.delta_context(), job)));
        }
    }

    /// Waits until the deltas being stored and queued are stored (or one failed, which puts
    /// them all back into the buffer), taking each into account.
    pub(super) async fn settle_flush(&self, core: &mut LoopState) {
        while let Some(task) = core.flush_task.take() {
            let outcome = task.await;
            let _ = self.delta_finished(core, outcome);
        }
    }

    fn delta_context(&self) -> DeltaContext {
        DeltaContext {
            store: self.store.clone(),
            store_lock: self.store_lock.clone(),
            compression: self.config.compression,
            write: self.config.write.clone(),
            timeout: self.config.delta_upload_timeout,
            prefix: self.config.prefix.clone(),
        }
    }

    /// Moves the buffered events and lease records into a delta to store.
    fn take_delta(&self, core: &mut LoopState) -> Option<DeltaJob> {
        // A delta starts after the last one cut, stored or not.
        let chain = core.queued.back().map(|j| j.name.last_revision).or(core.storing).or(core.chain)?;
        let Some(last) = core.pending.last().map(|e| e.mod_revision.max(0) as u64) else {
            debug!("no events since the last snapshot; no delta");
            return None;
        };
        let name = SnapshotName {
            kind: SnapshotKind::Incr,
            start_revision: chain + 1,
            last_revision: last,
            created_on: unix_now(),
            compression: self.config.compression,
            is_final: false,
        };
        Some(DeltaJob {
            key: name.key_v2(&self.config.prefix),
            name,
            chain,
            events: std::mem::take(&mut core.pending),
            json: std::mem::take(&mut core.pending_json),
            leases: std::mem::take(&mut core.leases.pending),
            started: std::time::Instant::now(),
        })
    }

    /// Takes a stored delta into account, or puts a failed one's events back in front of those
    /// buffered since.
    pub(super) fn delta_finished(
        &self,
        core: &mut LoopState,
        outcome: Result<(DeltaJob, Result<u64, Error>), tokio::task::JoinError>,
    ) -> Result<Option<Snapshot>, Error> {
        core.storing = None;
        let (mut job, result) = match outcome {
            Ok(done) => done,
            // Only a panic in the encoder gets here. Its events are gone with the task, so no
            // later delta can follow on: a new chain starts with a full snapshot.
            Err(e) => {
                let e = Error::task_failed("the delta task", e);
                error!(error = %e, "a delta was lost; starting a new chain with a full snapshot");
                core.forget_chain();
                return Err(self.flush_failed(core, e));
            }
        };
        let last = job.name.last_revision;
        match result {
            Ok(size) => {
                let secs = job.started.elapsed().as_secs_f64();
                info!(object = %job.key, events = job.events.len(), size, leases = job.leases.len(), "delta snapshot stored");
                self.metrics.observe_snapshot(KIND_DELTA, true, secs, last, job.name.created_on);
                core.flush_backoff.reset();
                core.flush_retry_at = None;
                core.report.delta_snapshots += 1;
                // A full snapshot that finished while this delta was stored may already cover
                // it; the chain never moves back.
                let extends = core.chain.is_some_and(|c| last > c);
                if extends {
                    core.chain = Some(last);
                    core.deltas_since_full += 1;
                    core.revisions_since_full += last - job.chain;
                    self.metrics.snapstore_latest_deltas_total.set(core.deltas_since_full as f64);
                    self.metrics.snapstore_latest_deltas_revisions_total.set(core.revisions_since_full as f64);
                }
                self.store_next(core);
                let snapshot = Snapshot::new_v2(&self.config.prefix, job.name, size);
                // A delta a full snapshot already covers is not newer than that full snapshot.
                self.progress.delta_round(extends.then_some(&snapshot));
                Ok(Some(snapshot))
            }
            Err(e) => {
                // This delta and the queued ones go back in front of what arrived since, minus
                // what a full snapshot taken meanwhile covers; the next attempt cuts them again.
                let covered = core.chain.unwrap_or(0);
                for mut queued in std::mem::take(&mut core.queued) {
                    job.events.append(&mut queued.events);
                    job.leases.append(&mut queued.leases);
                }
                core.queued_json = 0;
                job.events.retain(|ev| ev.mod_revision.max(0) as u64 > covered);
                job.events.append(&mut core.pending);
                core.pending = job.events;
                core.pending_json = core.pending.iter().map(|ev| ev.json_len() + 1).sum();
                job.leases.retain(|l| l.first_revision.max(0) as u64 > covered);
                job.leases.append(&mut core.leases.pending);
                core.leases.pending = job.leases;
                self.metrics.observe_snapshot(KIND_DELTA, false, job.started.elapsed().as_secs_f64(), 0, 0);
                Err(self.flush_failed(core, e))
            }
        }
    }

    fn flush_failed(&self, core: &mut LoopState, e: Error) -> Error {
        let wait = core.flush_backoff.step();
        warn!(error = %e, events = core.pending.len(), retry_in = ?wait, "storing a delta failed; keeping its events");
        self.metrics.failure(error_class(&e));
        core.flush_retry_at = Some(Instant::now() + wait);
        e
    }

    /// Reads the watch until it has delivered etcd's current revision, within [`DRAIN_LIMIT`].
    pub(super) async fn drain(&self, core: &mut LoopState, watch: &mut WatchStream) {
        let target = match tokio::time::timeout(DRAIN_LIMIT, self.source.status()).await {
            Ok(Ok(s)) => s.revision.max(0) as u64,
            _ => return,
        };
        let deadline = Instant::now() + DRAIN_LIMIT;
        while core.watched.is_some_and(|w| w < target) {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Ok(Some(Ok(batch))) => {
                    self.accept(core, batch.events).await;
                    if core.pending_json >= self.config.delta_memory_limit && self.flush(core).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    }
}

/// A delta on its way to the store: the buffered events it took, to be put back on failure.
pub(super) struct DeltaJob {
    name: SnapshotName,
    key: String,
    /// The chain's last revision when the delta was cut (its start revision minus one).
    chain: u64,
    events: Vec<Event>,
    /// Their JSON bytes, as counted against the memory limit.
    json: usize,
    leases: Vec<LeaseRecord>,
    started: std::time::Instant,
}

/// What storing a delta needs, owned, so it can run as a task of its own.
struct DeltaContext {
    store: Arc<dyn Snapstore>,
    store_lock: Arc<tokio::sync::Mutex<()>>,
    compression: Compression,
    write: WriteOptions,
    timeout: Duration,
    prefix: String,
}

/// Encodes and compresses a delta off the async threads, then writes its lease sidecar (if
/// any) and the delta, holding the store lock so garbage collection never sees the one
/// without the other. Hands the job back with the result.
async fn store_delta(ctx: DeltaContext, job: DeltaJob) -> (DeltaJob, Result<u64, Error>) {
    let compression = ctx.compression;
    let events = job.events;
    let encoded = tokio::task::spawn_blocking(move || {
        let content = encode_events(&events);
        let r = Encoder::new(compression, Vec::with_capacity(content.len() / 4)).and_then(|mut enc| {
            std::io::Write::write_all(&mut enc, &content)?;
            enc.finish()
        });
        (events, r)
    })
    .await;
    let (events, compressed) = match encoded {
        Ok((events, Ok(bytes))) => (events, bytes),
        Ok((events, Err(e))) => {
            // The encoder writes into memory: only a bug of ours fails it.
            return (DeltaJob { events, ..job }, Err(Error::internal(format!("compressing a delta: {e}"))));
        }
        Err(e) => {
            return (DeltaJob { events: Vec::new(), ..job }, Err(Error::task_failed("the delta encoder", e)));
        }
    };
    let job = DeltaJob { events, ..job };
    let result = {
        let _guard = ctx.store_lock.lock().await;
        let write = async {
            if !job.leases.is_empty() {
                let body = leases::encode(&job.name, &job.leases);
                let sidecar = leases::sidecar_key(&ctx.prefix, &job.name);
                let data: crate::ByteStream = Box::pin(futures::stream::iter([Ok(bytes::Bytes::from(body))]));
                ctx.store.write(&sidecar, data, &ctx.write).await?;
            }
            let data: crate::ByteStream = Box::pin(futures::stream::iter([Ok(bytes::Bytes::from(compressed))]));
            ctx.store.write(&job.key, data, &ctx.write).await
        };
        match tokio::time::timeout(ctx.timeout, write).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Store(crate::StoreError::Other {
                key: job.key.clone(),
                retryable: true,
                source: format!("no answer within {:?}", ctx.timeout).into(),
            })),
        }
    };
    (job, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: i64, first_revision: i64) -> LeaseRecord {
        LeaseRecord { id, granted_ttl: Some(60), remaining_ttl: Some(59), first_revision }
    }

    #[test]
    fn a_full_snapshot_keeps_the_records_of_leases_first_seen_above_it() {
        let mut t = LeaseTracker { known: [7, 8, 9].into(), pending: vec![record(7, 1), record(8, 2), record(9, 3)] };
        t.after_full(1);
        assert_eq!(t.pending.iter().map(|l| (l.id, l.first_revision)).collect::<Vec<_>>(), [(8, 2), (9, 3)]);
        assert_eq!(t.known, [8, 9].into(), "lease 7 is in the full snapshot; 8 and 9 are recorded already");
        t.after_full(3);
        assert!(t.pending.is_empty() && t.known.is_empty());
    }
}
