//! Requests to a running snapshotter: [`SnapshotterHandle`] sends them, the loop answers.

use tokio::sync::{mpsc, oneshot};

use crate::name::Snapshot;

/// Why a request to a snapshotter failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The snapshotter is not running (not started yet, or stopped).
    #[error("the snapshotter is not running")]
    NotRunning,
    /// Delta snapshots are disabled (no delta period, or one below 1 s).
    #[error("delta snapshots are disabled (no delta period of 1 s or more)")]
    DeltasDisabled,
    /// The operation ran and failed.
    #[error("{0}")]
    Failed(String),
}

/// What a [`SnapshotterHandle`] asks for.
#[derive(Debug)]
pub(super) enum Request {
    Full { is_final: bool, reply: oneshot::Sender<Result<Snapshot, RequestError>> },
    Delta { reply: oneshot::Sender<Result<Option<Snapshot>, RequestError>> },
    Defragment { reply: oneshot::Sender<Result<(), RequestError>> },
}

/// Asks a running [`Snapshotter`](super::Snapshotter) for an out-of-schedule snapshot or defragmentation (what the
/// HTTP API's `/snapshot/full`, `/snapshot/delta` and a defragmentation trigger call). Cheap to
/// clone; requests are served in order by the snapshotter's loop.
#[derive(Debug, Clone)]
pub struct SnapshotterHandle {
    pub(super) tx: mpsc::Sender<Request>,
}

impl SnapshotterHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Request,
    ) -> Result<T, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| RequestError::NotRunning)?;
        answer.await.map_err(|_| RequestError::NotRunning)?
    }

    /// Takes a full snapshot now (started after this call, so it holds every write acknowledged
    /// before it) and returns it; `is_final` names it `.final`.
    pub async fn full_snapshot(&self, is_final: bool) -> Result<Snapshot, RequestError> {
        self.ask(|reply| Request::Full { is_final, reply }).await
    }

    /// Stores the buffered events as a delta now; `None` when there were none.
    pub async fn delta_snapshot(&self) -> Result<Option<Snapshot>, RequestError> {
        self.ask(|reply| Request::Delta { reply }).await
    }

    /// Defragments etcd now; a full snapshot follows, as after a scheduled defragmentation.
    pub async fn defragment(&self) -> Result<(), RequestError> {
        self.ask(|reply| Request::Defragment { reply }).await
    }
}
