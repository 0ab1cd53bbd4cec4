//! What the snapshotter has stored, published for whoever reports it elsewhere (the Kubernetes
//! Leases etcd-druid reads: `crates/k8s`).
//!
//! The snapshotter only writes into a [`tokio::sync::watch`] channel, which never waits and
//! keeps only the newest value: a slow or unreachable observer never delays a snapshot, and
//! one that wakes late sees the newest state at once.

use std::sync::Arc;

use tokio::sync::watch;

use crate::name::Snapshot;

/// The snapshots stored so far, as the reference's lease updater sees them
/// (`pkg/health/heartbeat`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The newest full snapshot stored.
    pub full: Option<Snapshot>,
    /// The newest delta stored after [`Progress::full`]; `None` before the first one.
    pub delta: Option<Snapshot>,
    /// Delta rounds completed: a delta stored, or a delta period (or an on-demand delta) that
    /// found no events to store while a chain existed. The reference renews the delta Lease
    /// after each, so an idle etcd still shows a live backup.
    pub delta_rounds: u64,
}

/// The sending side of the [`Progress`] channel. Cheap to clone; one sender can serve several
/// snapshotter runs in turn (the server starts a new one at each leadership term), so
/// observers live as long as the process.
#[derive(Debug, Clone)]
pub struct ProgressSender(Arc<watch::Sender<Progress>>);

impl Default for ProgressSender {
    fn default() -> ProgressSender {
        ProgressSender::new()
    }
}

impl ProgressSender {
    /// A new channel, with no snapshot stored yet.
    pub fn new() -> ProgressSender {
        ProgressSender(Arc::new(watch::channel(Progress::default()).0))
    }

    /// A receiver of the newest [`Progress`].
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.0.subscribe()
    }

    /// The newest value.
    pub fn current(&self) -> Progress {
        self.0.borrow().clone()
    }

    /// A full snapshot was stored: it becomes the newest, and no delta follows it yet.
    pub fn full_stored(&self, snapshot: &Snapshot) {
        self.0.send_modify(|p| {
            p.full = Some(snapshot.clone());
            p.delta = None;
        });
    }

    /// A delta round completed; `stored` is the delta it stored after the newest full
    /// snapshot, if any.
    pub fn delta_round(&self, stored: Option<&Snapshot>) {
        self.0.send_modify(|p| {
            if let Some(s) = stored {
                p.delta = Some(s.clone());
            }
            p.delta_rounds += 1;
        });
    }
}
