//! The HTTP server role of etcdbrctl (`etcdbrctl server`): [`Server`].
//!
//! The endpoints are the reference's (`pkg/server/httpAPI.go`), with its paths, status codes
//! and bodies, so the etcd side's start script and existing probes work unchanged:
//!
//! | path | answer |
//! |---|---|
//! | `/initialization/start[?mode=full\|sanity]` | starts validation (and a restore if needed) in the background when the status is `New`; `200`, empty body; unknown mode `400` |
//! | `/initialization/status` | `200`, `New`, `Progress`, `Successful` or `Failed`; reading a final state resets it to `New` |
//! | `/snapshot/full[?final=true]` | `200` + the snapshot as JSON; `400` bad `final`; `405` without a store; `409` while initializing; `500` on failure |
//! | `/snapshot/delta` | `200` + JSON or `null`; `503` when no snapshotter watches etcd or deltas are disabled |
//! | `/snapshot/latest` | `200` `{"fullSnapshot":…,"deltaSnapshots":…}` listed from the store |
//! | `/snapshot/verify/latest` | etcdbr's own: `200` + the newest scheduled verification as JSON (`null` before the first); a follower forwards it to the leader's sidecar, which verifies; `404` when `--verification-period` is off |
//! | (follower) `/snapshot/full`, `/snapshot/delta` | forwarded to the leader's sidecar after checking its `/healthz`, answer passed through; `503` when it is not ready, no leader is known or the request was already forwarded; `502` when it does not answer |
//! | `/config` | the etcd config from `$ETCD_CONF` made concrete for this member (see [`etcdconf`]): with several members, `initial-cluster` trimmed to the running members and `initial-cluster-state: existing` while a learner joins |
//! | `/member/data` | etcdbr's own, read-only: what this member's data dir holds, as JSON (see `validator::member_data`), for the other members' sidecars |
//! | `/healthz` | `200 {"health":true}` or `503 {"health":false}` |
//! | `/metrics` | the `etcdbr_*` metrics, Prometheus text format |
//! | `/` | a status page: initialization, latest full snapshot and deltas, recent errors |
//!
//! Methods ([`allowed_methods`]): the endpoints that act (`/initialization/start`,
//! `/snapshot/full`, `/snapshot/delta`) answer `GET` and `POST`; `/initialization/status` and
//! `/config`, whose `GET` changes state, answer `GET`; the rest `GET` and `HEAD`. Any other
//! method, and `HEAD` on an endpoint that acts, is `405` with `Allow`, and nothing happens (the
//! reference runs every handler for any method, so a `HEAD` or `DELETE` started an
//! initialization).
//!
//! Differences from the reference, on purpose: an unknown `mode` is a `400` instead of a silent
//! full validation; a snapshot requested while initialization runs is a `409` instead of a
//! `405`/proxy; an optional bearer token ([`ServerConfig::auth_token`]) guards the endpoints
//! that change state; POD_NAME and POD_NAMESPACE are used when present, never required.
//!
//! In a multi-member cluster only the raft leader's sidecar snapshots: a [`LeaderElector`]
//! publishes this sidecar's [`Role`] ([`ServerConfig::leadership`]); followers forward snapshot
//! requests to the leader's sidecar, found by a [`SidecarLocator`], and answer
//! `/snapshot/latest` from the shared store themselves (see [`leader`]).
//!
//! The cluster this member belongs to is [`SidecarCluster`], the one view every decision uses
//! (see [`cluster`] and `brcore::cluster`).
//!
//! [`sidecar::run`] serves the [`Server`] and supervises what runs beside it (the snapshotter
//! while etcd is up, this member leads and no initialization runs; `/healthz` in step with it;
//! the hand-over between leaders; peer URL updates): everything `etcdbrctl server` does after
//! reading its flags.
//!
//! Snapshots go through the [`SnapshotControl`] trait: [`LiveSnapshots`] asks the running
//! snapshotter (through its handle) and falls back to [`StoreSnapshots`] (full snapshots taken
//! here, deltas refused) while none runs.

#![warn(missing_docs)]

pub mod cluster;
mod error;
pub mod etcdconf;
pub mod leader;
pub mod page;
mod server;
pub mod sidecar;
pub mod snapshots;
mod tls;

pub use cluster::{ClusterSettings, FlagCluster, SidecarCluster};
pub use error::Error;
pub use leader::{LeaderElector, Role, SidecarLocator};
pub use server::{
    DEFAULT_ETCD_CONF, InitStatus, Initialization, Server, ServerConfig, ServerHandle, TlsFiles, VerificationFeed,
    allowed_methods,
};
pub use snapshots::{Latest, LiveSnapshots, SnapshotControl, SnapshotJson, StoreSnapshots};
