//! Snapshots on demand: the [`SnapshotControl`] trait the server calls, the reference's JSON
//! shape of a snapshot ([`SnapshotJson`]), and [`StoreSnapshots`], an implementation that takes
//! full snapshots itself and lists the store for `/snapshot/latest`.

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use brcore::Snapstore;
use brcore::chain::{self, Target};
use brcore::error::Error as CoreError;
use brcore::etcd::EtcdSource;
use brcore::metrics::{KIND_FULL, Metrics};
use brcore::name::{Layout, Snapshot};
use brcore::snapshotter::full::{FullOptions, take_full_snapshot};
use brcore::snapshotter::{RequestError, SnapshotterHandle};
use serde::Serialize;
use tracing::info;

use crate::error::Error;

/// The newest snapshot set in the store: what a restore would use now.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    /// The newest full snapshot, if any.
    pub full: Option<Snapshot>,
    /// The deltas after it, in order.
    pub deltas: Vec<Snapshot>,
}

/// What the server asks of whoever takes snapshots: the running snapshotter, or
/// [`StoreSnapshots`] when none runs.
///
/// # Contract
///
/// - [`full`](SnapshotControl::full) stores one full snapshot now and returns it once the
///   store has it; an error leaves nothing in the store.
/// - [`delta`](SnapshotControl::delta) stores the events buffered so far as a delta, `Ok(None)`
///   when there were none; an implementation that cannot do this on demand answers
///   [`Error::Unavailable`].
/// - [`latest`](SnapshotControl::latest) reads the store afresh (never a cached answer).
/// - Every method may be called concurrently; an implementation that can run only one full
///   snapshot at a time answers the second caller with [`Error::Busy`].
#[async_trait]
pub trait SnapshotControl: Send + Sync + std::fmt::Debug {
    /// Takes and stores a full snapshot, marked `.final` if `is_final`.
    async fn full(&self, is_final: bool) -> Result<Snapshot, Error>;
    /// Stores the buffered events as a delta snapshot.
    async fn delta(&self) -> Result<Option<Snapshot>, Error>;
    /// Lists the newest full snapshot and its deltas.
    async fn latest(&self) -> Result<Latest, Error>;
}

/// A snapshot as the reference's `brtypes.Snapshot` serializes it, field names and all
/// (`immutabilityExpriyTime` and `versionID` are left out, as v0.28 did, because no store here
/// reports them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotJson {
    /// `Full` or `Incr`.
    pub kind: String,
    /// First revision covered (0 for a full snapshot).
    pub start_revision: u64,
    /// Last revision covered.
    pub last_revision: u64,
    /// Creation time, RFC 3339 in UTC.
    pub created_on: String,
    /// The v1 backup directory, empty for the v2 layout.
    pub snap_dir: String,
    /// The object's name.
    pub snap_name: String,
    /// Whether this is a part of a multi-part upload.
    pub is_chunk: bool,
    /// The store prefix before the layout directory.
    pub prefix: String,
    /// `.gz`, `.Z`, `.zlib` or empty.
    pub compression_suffix: String,
    /// Whether this is the last full snapshot before a planned shutdown.
    pub is_final: bool,
}

impl From<&Snapshot> for SnapshotJson {
    fn from(s: &Snapshot) -> Self {
        let secs = u64::try_from(s.name.created_on).unwrap_or(0);
        SnapshotJson {
            kind: s.name.kind.as_str().to_string(),
            start_revision: s.name.start_revision,
            last_revision: s.name.last_revision,
            created_on: humantime::format_rfc3339(UNIX_EPOCH + Duration::from_secs(secs)).to_string(),
            snap_dir: match &s.layout {
                Layout::V1 { backup_dir } => backup_dir.clone(),
                Layout::V2 => String::new(),
            },
            snap_name: s.name.to_string(),
            is_chunk: s.is_chunk,
            prefix: s.prefix.clone(),
            compression_suffix: s.name.compression.suffix().to_string(),
            is_final: s.name.is_final,
        }
    }
}

/// The body of `/snapshot/latest`: `{"fullSnapshot": …|null, "deltaSnapshots": […]|null}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatestJson {
    /// The newest full snapshot.
    pub full_snapshot: Option<SnapshotJson>,
    /// Its deltas; `null` when there are none, as the reference's nil slice.
    pub delta_snapshots: Option<Vec<SnapshotJson>>,
}

impl From<&Latest> for LatestJson {
    fn from(l: &Latest) -> Self {
        LatestJson {
            full_snapshot: l.full.as_ref().map(SnapshotJson::from),
            delta_snapshots: (!l.deltas.is_empty()).then(|| l.deltas.iter().map(SnapshotJson::from).collect()),
        }
    }
}

/// [`SnapshotControl`] without a running snapshotter: full snapshots are taken here with
/// brcore's `take_full_snapshot` (the same code the snapshotter runs), the latest set is listed
/// from the store, and deltas are refused because only the snapshotter's watch has events.
#[derive(Debug)]
pub struct StoreSnapshots {
    source: Arc<dyn EtcdSource>,
    store: Arc<dyn Snapstore>,
    options: FullOptions,
    metrics: Metrics,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl StoreSnapshots {
    /// Snapshots of `source` into `store` under `options.prefix`, recorded in `metrics`
    /// (`options.is_final` is replaced per request).
    pub fn new(source: Arc<dyn EtcdSource>, store: Arc<dyn Snapstore>, options: FullOptions, metrics: Metrics) -> Self {
        StoreSnapshots { source, store, options, metrics, one_at_a_time: tokio::sync::Mutex::new(()) }
    }
}

#[async_trait]
impl SnapshotControl for StoreSnapshots {
    async fn full(&self, is_final: bool) -> Result<Snapshot, Error> {
        // A second snapshot at the same time would only duplicate the first (reference #313).
        let Ok(_guard) = self.one_at_a_time.try_lock() else {
            return Err(Error::Busy("a full snapshot is already being taken; try again when it is stored".into()));
        };
        let mut options = self.options.clone();
        options.is_final = is_final;
        let started = Instant::now();
        let result = take_full_snapshot(self.source.as_ref(), self.store.as_ref(), &options).await;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(full) => {
                let name = &full.snapshot.name;
                self.metrics.observe_snapshot(KIND_FULL, true, seconds, name.last_revision, name.created_on);
                info!(snapshot = %full.snapshot.key, bytes = full.stream_bytes, "out-of-schedule full snapshot stored");
                Ok(full.snapshot)
            }
            Err(e) => {
                self.metrics.observe_snapshot(KIND_FULL, false, seconds, 0, 0);
                Err(e.into())
            }
        }
    }

    async fn delta(&self) -> Result<Option<Snapshot>, Error> {
        Err(Error::Unavailable(
            "delta snapshots run on their own schedule: this server has no snapshotter watching etcd".into(),
        ))
    }

    async fn latest(&self) -> Result<Latest, Error> {
        latest_in(self.store.as_ref(), &self.options.prefix).await
    }
}

/// [`SnapshotControl`] in front of the running snapshotter, which is started and stopped with
/// etcd (and around every initialization): while one is attached, full and delta snapshots are
/// asked of it, so they join its chain and its one-at-a-time scheduling; while none is, full
/// snapshots are taken directly by the [`StoreSnapshots`] behind it and deltas answer 503.
/// `/snapshot/latest` always lists the store.
#[derive(Debug)]
pub struct LiveSnapshots {
    current: std::sync::RwLock<Option<SnapshotterHandle>>,
    direct: StoreSnapshots,
}

impl LiveSnapshots {
    /// No snapshotter attached yet; `direct` serves meanwhile.
    pub fn new(direct: StoreSnapshots) -> Self {
        LiveSnapshots { current: std::sync::RwLock::new(None), direct }
    }

    /// Routes requests to the snapshotter `handle` belongs to (call once it runs).
    pub fn attach(&self, handle: SnapshotterHandle) {
        if let Ok(mut c) = self.current.write() {
            *c = Some(handle);
        }
    }

    /// Stops routing requests to the snapshotter (call when it stops).
    pub fn detach(&self) {
        if let Ok(mut c) = self.current.write() {
            *c = None;
        }
    }

    fn handle(&self) -> Option<SnapshotterHandle> {
        self.current.read().ok().and_then(|c| c.clone())
    }
}

fn from_request(e: RequestError) -> Error {
    match e {
        RequestError::NotRunning => {
            Error::Unavailable("the snapshotter is not running (etcd is not reachable yet); try again later".into())
        }
        RequestError::DeltasDisabled => Error::Unavailable(e.to_string()),
        other => Error::SnapshotFailed(other.to_string()),
    }
}

#[async_trait]
impl SnapshotControl for LiveSnapshots {
    async fn full(&self, is_final: bool) -> Result<Snapshot, Error> {
        match self.handle() {
            Some(h) => h.full_snapshot(is_final).await.map_err(from_request),
            None => self.direct.full(is_final).await,
        }
    }

    async fn delta(&self) -> Result<Option<Snapshot>, Error> {
        match self.handle() {
            Some(h) => h.delta_snapshot().await.map_err(from_request),
            None => Err(Error::Unavailable(
                "delta snapshots need the snapshotter, which is not running (etcd is not reachable yet)".into(),
            )),
        }
    }

    async fn latest(&self) -> Result<Latest, Error> {
        self.direct.latest().await
    }
}

/// The newest full snapshot and its deltas under `prefix` in `store`; an empty [`Latest`] when
/// the store holds no full snapshot.
pub async fn latest_in(store: &dyn Snapstore, prefix: &str) -> Result<Latest, Error> {
    match chain::list_chain(store, prefix, Target::Latest).await {
        Ok(c) => Ok(Latest { full: Some(c.full), deltas: c.deltas }),
        Err(CoreError::NotFound { .. }) => Ok(Latest::default()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_references_shape() {
        let s = Snapshot::parse_key("etcd-main/v2/Incr-00000009-00000009-1795606904.gz", 10).unwrap();
        let v = serde_json::to_value(SnapshotJson::from(&s)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "kind": "Incr", "startRevision": 9, "lastRevision": 9,
                "createdOn": "2026-11-25T11:41:44Z", "snapDir": "",
                "snapName": "Incr-00000009-00000009-1795606904.gz", "isChunk": false,
                "prefix": "etcd-main", "compressionSuffix": ".gz", "isFinal": false
            })
        );
        let f = Snapshot::parse_key("v1/Backup-1/Full-00000000-00000166-1795607409.final", 1).unwrap();
        let j = SnapshotJson::from(&f);
        assert_eq!((j.snap_dir.as_str(), j.is_final, j.compression_suffix.as_str()), ("Backup-1", true, ""));
    }

    #[test]
    fn latest_without_snapshots_is_null_and_null() {
        let v = serde_json::to_value(LatestJson::from(&Latest::default())).unwrap();
        assert_eq!(v, serde_json::json!({"fullSnapshot": null, "deltaSnapshots": null}));
    }
}
