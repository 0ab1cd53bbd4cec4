//! The Kubernetes Leases etcdbrctl keeps for etcd-druid, as the Go etcdbrctl keeps them
//! (`pkg/health/heartbeat` at v0.43.0).
//!
//! etcd-druid creates three kinds of `coordination.k8s.io/v1` Lease in the etcd's namespace
//! (`$POD_NAMESPACE`) and reads what the sidecar writes into them:
//!
//! | Lease | `spec.holderIdentity` | `spec.renewTime` | druid reads it for |
//! |---|---|---|---|
//! | full snapshot (`--full-snapshot-lease-name`) | the newest full snapshot's last revision | that snapshot's creation time | `BackupReady`; compaction (delta − full revisions) |
//! | delta snapshot (`--delta-snapshot-lease-name`) | the newest delta's last revision (`0` before any) | the time of each delta round | `BackupReady`; compaction |
//! | member (`[<member-name-prefix>-]$POD_NAME`) | `<member id hex>:<cluster id hex>:Leader\|Member` | each heartbeat | `status.members`, `Ready`, cluster-id mismatch |
//!
//! The sidecar only reads and merge-patches them ([`LeaseClient`]); it never creates one: a
//! missing Lease is an error that is logged and retried, as in the reference. The revisions in
//! the snapshot Leases never go back: a Lease that holds a higher revision (written by the
//! compaction Job, or an earlier leader) keeps it. The full-snapshot Lease is patched with the
//! `resourceVersion` it was read at and re-read on a conflict, because the compaction Job writes
//! it too.
//!
//! [`SnapshotLeases`] follows the snapshotter's [`Progress`](brcore::snapshotter::Progress) in
//! a task of its own and [`MemberLease`] renews on its own timer: a Lease API that is down,
//! slow or refuses never stops or delays a snapshot; its errors are logged and the update is
//! retried.
//!
//! Times are `metav1.MicroTime`: RFC 3339 in UTC with exactly six fractional digits
//! ([`micro_time`]), the only form the API server accepts.

#![warn(missing_docs)]

pub mod client;
pub mod member;
pub mod rules;
pub mod snapshot;

use std::time::SystemTime;

pub use client::LeaseClient;
pub use k8s_openapi::api::coordination::v1::Lease;
pub use member::{MemberIdentity, MemberLease, TLS_ENABLED_ANNOTATION};
pub use snapshot::SnapshotLeases;

/// Why a Lease could not be read or renewed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// No usable Kubernetes configuration (no kubeconfig, not in a pod, unreadable files).
    #[error("Kubernetes configuration: {0}")]
    Config(String),
    /// The Lease does not exist (etcd-druid creates it; the sidecar never does).
    #[error("lease {name:?} not found")]
    NotFound {
        /// The Lease's name.
        name: String,
    },
    /// The API refused our credentials (401) or permissions (403).
    #[error("lease {name:?}: the Kubernetes API refused the request ({code}): {message}")]
    Denied {
        /// The Lease's name.
        name: String,
        /// 401 or 403.
        code: u16,
        /// The API's message.
        message: String,
    },
    /// The Lease changed since it was read (409).
    #[error("lease {name:?} was changed by someone else meanwhile")]
    Conflict {
        /// The Lease's name.
        name: String,
    },
    /// Any other answer of the API.
    #[error("lease {name:?}: the Kubernetes API answered {code}: {message}")]
    Api {
        /// The Lease's name.
        name: String,
        /// The HTTP status.
        code: u16,
        /// The API's message.
        message: String,
    },
    /// No answer: connection refused, TLS failure, timeout.
    #[error("lease {name:?}: the Kubernetes API cannot be reached: {message}")]
    Unreachable {
        /// The Lease's name.
        name: String,
        /// What failed.
        message: String,
    },
    /// A snapshot Lease's `holderIdentity` is not a revision.
    #[error("lease {name:?}: holderIdentity {value:?} is not a revision")]
    BadHolderIdentity {
        /// The Lease's name.
        name: String,
        /// What it holds.
        value: String,
    },
}

impl LeaseError {
    pub(crate) fn from_kube(name: &str, e: kube::Error) -> LeaseError {
        let name = name.to_string();
        match e {
            kube::Error::Api(status) => match status.code {
                404 => LeaseError::NotFound { name },
                409 => LeaseError::Conflict { name },
                401 | 403 => LeaseError::Denied { name, code: status.code, message: status.message },
                code => LeaseError::Api { name, code, message: status.message },
            },
            other => {
                // The whole chain: hyper's top-level message alone says little.
                let mut message = other.to_string();
                let mut source = std::error::Error::source(&other);
                while let Some(s) = source {
                    let text = s.to_string();
                    if !message.contains(&text) {
                        message.push_str(": ");
                        message.push_str(&text);
                    }
                    source = s.source();
                }
                LeaseError::Unreachable { name, message }
            }
        }
    }
}

/// `t` as `metav1.MicroTime` text: `2006-01-02T15:04:05.000000Z` (UTC, microseconds).
pub fn micro_time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}
