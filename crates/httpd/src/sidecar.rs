//! The sidecar beside etcd (`etcdbrctl server`): the [`Server`] plus everything that keeps it
//! in step with etcd, supervised until told to stop ([`run`]).
//!
//! The snapshotter runs whenever etcd is reachable. It is stopped while an initialization runs
//! (the data dir is being replaced) and started again once etcd answers; `/healthz` is 200 only
//! while it runs, as in the reference. Without a store ([`SidecarConfig::snapshots`] `None`)
//! there is no snapshotter: `/healthz` follows etcd.
//!
//! In a multi-member cluster only the sidecar of the raft leader snapshots (the reference's
//! leader elector): a [`LeaderElector`] asks the local member every `--reelection-period`; the
//! snapshotter runs while this member leads and stops, storing its buffered events as a last
//! delta, when leadership moves. A new leader first waits (bounded, [`HANDOFF_GRACE`]) for the
//! previous leader's sidecar to finish that last delta, then starts its own chain with a full
//! snapshot, so the two never upload at the same time. Followers forward `/snapshot/full` and
//! `/snapshot/delta` to the leader's sidecar and answer `/snapshot/latest` from the shared
//! store themselves; their `/healthz` is 503, as the reference's non-leaders.
//!
//! Beside the snapshotter, and for as long as it runs (on the leader's sidecar only): the
//! secondary store's sync ([`brcore::secondary::run`]) and scheduled verification
//! ([`Verifier::run`]). Every snapshotter started reports what it stored to
//! [`SidecarConfig::progress`] (etcdbrctl's Kubernetes snapshot Leases follow it).
//!
//! The cluster is one view for every decision ([`ClusterAccess`], e.g. [`crate::SidecarCluster`]):
//! the snapshotter's defragmentation covers every member ([`ClusterEtcd`]), and this member's
//! peer URLs are set to the configured ones once etcd answers and after every initialization
//! (then etcd is restarted through etcd-wrapper when [`SidecarConfig::etcd_wrapper`] is set).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use brcore::etcd::{EtcdClient, EtcdConfig};
//! use brcore::restore::RestorePlan;
//! use etcd_format::membership::Cluster;
//! use httpd::sidecar::{self, SidecarConfig};
//! use httpd::{ClusterSettings, FlagCluster, Initialization, Server, ServerConfig, SidecarCluster, SidecarLocator};
//! use validator::{InitOptions, Initializer, Mode};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // A sidecar without a store: initialization keeps a valid data dir or lets etcd start
//! // empty, /healthz follows etcd, the snapshot endpoints answer 405.
//! let etcd_config = EtcdConfig::new(["http://127.0.0.1:2379"]);
//! let flags = FlagCluster {
//!     initial_cluster: "default=http://localhost:2380".into(),
//!     name: "default".into(),
//!     token: "etcd-cluster".into(),
//! };
//! let client = httpd::leader::sidecar_client(None)?;
//! let cluster = Arc::new(SidecarCluster::new(ClusterSettings {
//!     etcd_conf: None,
//!     pod_name: None,
//!     flags,
//!     etcd: etcd_config.clone(),
//!     service_endpoints: Vec::new(),
//!     timeout: Duration::from_secs(5),
//!     locator: SidecarLocator::new(Default::default(), 8080, false),
//!     client,
//! }));
//! let plan = RestorePlan::new(
//!     String::new(),
//!     "default.etcd".into(),
//!     Cluster::from_initial_cluster("default=http://localhost:2380", "etcd-cluster")?,
//!     "default",
//! );
//! let init = Initialization {
//!     initializer: Initializer::without_store().with_cluster(cluster.clone()),
//!     options: InitOptions::new(Mode::Full, plan),
//! };
//! let metrics = brcore::metrics::metrics().clone();
//! let server = Server::new(ServerConfig::default(), init, None, metrics);
//! let config = SidecarConfig::new(server, Arc::new(EtcdClient::new(etcd_config)), cluster);
//! let listener = sidecar::listen(8080).await?;
//! sidecar::run(config, listener, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use brcore::Snapstore;
use brcore::cluster::{ClusterAccess, ClusterEtcd};
use brcore::etcd::{EtcdClient, EtcdSource};
use brcore::secondary::SyncConfig;
use brcore::snapshotter::{ProgressSender, Snapshotter, SnapshotterConfig};
use brcore::verify::Verifier;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::leader::{LeaderElector, Role, wait_for_handoff};
use crate::server::{InitStatus, Server, ServerHandle};
use crate::snapshots::LiveSnapshots;

/// How often etcd is asked whether it is up while the snapshotter waits for it.
const ETCD_POLL: Duration = Duration::from_secs(2);
/// How long a new leader waits for the previous leader's sidecar beyond one reelection period:
/// the snapshotter's shutdown drain (5 s) and its last delta's upload.
pub const HANDOFF_GRACE: Duration = Duration::from_secs(15);
/// etcd-wrapper's port, where `POST /stop` restarts etcd (the reference's `etcdWrapperPort`).
pub const ETCD_WRAPPER_PORT: u16 = 9095;

/// Everything [`run`] supervises. [`SidecarConfig::new`] takes what every sidecar needs; set
/// the optional parts after. Fields may be added in any release (the struct is
/// `#[non_exhaustive]`).
#[derive(Debug)]
#[non_exhaustive]
pub struct SidecarConfig {
    /// The HTTP API.
    pub server: Server,
    /// The local etcd member: asked whether it is up, and the snapshotter's source.
    pub etcd: Arc<EtcdClient>,
    /// The one view of the cluster (defragmentation of every member, peer URL updates).
    pub cluster: Arc<dyn ClusterAccess>,
    /// Decides who snapshots and promotes this member while it is a learner; run until stop.
    pub elector: Option<LeaderElector>,
    /// The snapshotter and what runs beside it; `None` without a store.
    pub snapshots: Option<SidecarSnapshots>,
    /// After this member's peer URLs were updated, restart etcd through etcd-wrapper
    /// (`POST /stop` on port [`ETCD_WRAPPER_PORT`] of the local member's host) with this client;
    /// `None`: a warning says to restart the member.
    pub etcd_wrapper: Option<reqwest::Client>,
    /// Where every snapshotter started reports what it stored (for the snapshot Leases).
    pub progress: Option<ProgressSender>,
}

impl SidecarConfig {
    /// A sidecar serving `server` beside the member `etcd` of `cluster`: no leader elector, no
    /// store, no etcd-wrapper, no progress reports.
    pub fn new(server: Server, etcd: Arc<EtcdClient>, cluster: Arc<dyn ClusterAccess>) -> SidecarConfig {
        SidecarConfig { server, etcd, cluster, elector: None, snapshots: None, etcd_wrapper: None, progress: None }
    }
}

/// What the snapshotter needs, and where the HTTP API reaches it.
#[derive(Debug)]
#[non_exhaustive]
pub struct SidecarSnapshots {
    /// The backup store.
    pub store: Arc<dyn Snapstore>,
    /// The snapshotter's configuration.
    pub snapshotter: SnapshotterConfig,
    /// Where the HTTP API reaches the running snapshotter (the one the [`Server`] was given).
    pub live: Arc<LiveSnapshots>,
    /// This sidecar's role; the snapshotter runs while it is [`Role::Leader`].
    pub role: watch::Receiver<Role>,
    /// How long a new leader waits for the previous leader's sidecar to stop.
    pub handoff_limit: Duration,
    /// The secondary store and how it is kept in sync, while the snapshotter runs.
    pub secondary: Option<(Arc<dyn Snapstore>, SyncConfig)>,
    /// Scheduled verification and its period, while the snapshotter runs.
    pub verifier: Option<(Arc<Verifier>, Duration)>,
    /// The client for other sidecars (see [`crate::leader::sidecar_client`]).
    pub sidecar_client: reqwest::Client,
}

impl SidecarSnapshots {
    /// A snapshotter over `store` with `snapshotter`'s configuration, reached through `live`,
    /// running while `role` is [`Role::Leader`] (checked every `reelection_period`: a new
    /// leader waits up to that plus [`HANDOFF_GRACE`] for the previous one). No secondary store,
    /// no verification.
    pub fn new(
        store: Arc<dyn Snapstore>,
        snapshotter: SnapshotterConfig,
        live: Arc<LiveSnapshots>,
        role: watch::Receiver<Role>,
        reelection_period: Duration,
        sidecar_client: reqwest::Client,
    ) -> SidecarSnapshots {
        SidecarSnapshots {
            store,
            snapshotter,
            live,
            role,
            handoff_limit: reelection_period + HANDOFF_GRACE,
            secondary: None,
            verifier: None,
            sidecar_client,
        }
    }
}

/// Listens on `port` of all interfaces: IPv6 and IPv4 where the system allows both on one
/// socket, IPv4 alone otherwise.
pub async fn listen(port: u16) -> std::io::Result<TcpListener> {
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], port));
            warn!(error = %e, "cannot listen on {addr}; trying {v4}");
            TcpListener::bind(v4).await
        }
    }
}

/// Serves `config.server` on `listener` and supervises the rest (see the module docs) until
/// `stop` completes, then waits for everything to end. Fails only when the HTTP server does
/// (see [`Server::serve`]).
pub async fn run(
    config: SidecarConfig,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::Error> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let handle = config.server.handle();
    let elector = config.elector.map(|e| tokio::spawn(e.run(stopped(stop_rx.clone()))));
    let server = tokio::spawn(config.server.serve(listener, stopped(stop_rx.clone())));
    let reconciler = tokio::spawn(reconcile_peer_urls(
        handle.clone(),
        config.etcd.clone(),
        config.cluster.clone(),
        config.etcd_wrapper,
        stop_rx.clone(),
    ));
    supervise(&handle, config.etcd, config.cluster, config.snapshots, config.progress, stop_rx).await;
    reconciler.abort();
    if let Some(e) = elector {
        let _ = e.await;
    }
    match server.await {
        Ok(result) => result,
        Err(e) => Err(crate::Error::Internal(format!("the HTTP server task died: {e}"))),
    }
}

/// Waits until `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Waits until etcd answers (and no initialization runs); `false` if told to stop first.
async fn wait_for_etcd(etcd: &EtcdClient, handle: &ServerHandle, stop: &watch::Receiver<bool>) -> bool {
    loop {
        if *stop.borrow() {
            return false;
        }
        if handle.init_status() != InitStatus::Progress {
            match etcd.status().await {
                Ok(_) => return true,
                Err(e) => tracing::debug!(error = %e, "etcd is not reachable yet"),
            }
        }
        tokio::select! {
            _ = stopped(stop.clone()) => return false,
            _ = tokio::time::sleep(ETCD_POLL) => {}
        }
    }
}

/// Waits until this sidecar leads; `None` if told to stop first, else the sidecar of the leader
/// seen last before (the one to hand off from). Not leading, `/healthz` answers 503.
async fn wait_for_leadership(
    role: &mut watch::Receiver<Role>,
    handle: &ServerHandle,
    stop: &watch::Receiver<bool>,
) -> Option<Option<String>> {
    let mut previous = None;
    let mut told = false;
    loop {
        if *stop.borrow() {
            return None;
        }
        let now = role.borrow_and_update().clone();
        match now {
            Role::Leader => return Some(previous),
            Role::Follower { sidecar, leader_name, .. } => {
                if !told {
                    info!(leader = leader_name, "this etcd member does not lead: the leader's sidecar snapshots");
                    told = true;
                }
                previous = sidecar;
            }
            Role::Unknown => {}
        }
        handle.set_healthy(false);
        tokio::select! {
            _ = stopped(stop.clone()) => return None,
            changed = role.changed() => if changed.is_err() { return None },
        }
    }
}

/// Once etcd answers, and again after every initialization: makes this member's peer URLs in
/// the cluster what the configuration says (after a restore, or a switch to peer TLS), as the
/// reference's sidecar does when it starts; with `etcd_wrapper`, etcd is then restarted
/// through etcd-wrapper (`POST /stop` on port 9095 of the local member's host) to use them.
async fn reconcile_peer_urls(
    handle: ServerHandle,
    etcd: Arc<EtcdClient>,
    cluster: Arc<dyn ClusterAccess>,
    etcd_wrapper: Option<reqwest::Client>,
    stop: watch::Receiver<bool>,
) {
    let mut starts = handle.initialization_starts();
    loop {
        if !wait_for_etcd(&etcd, &handle, &stop).await {
            return;
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            match brcore::cluster::reconcile_peer_urls(cluster.as_ref()).await {
                Ok(None) => break,
                Ok(Some(old)) => {
                    info!(previous = ?old, "updated this member's peer URLs to the configured ones");
                    if let Some(client) = &etcd_wrapper {
                        restart_etcd_wrapper(client, &etcd.endpoint()).await;
                    } else {
                        warn!(
                            "etcd uses the new peer URLs after a restart; restart this member \
                             (https://etcd.io/docs/v3.5/op-guide/runtime-configuration/#update-advertise-peer-urls)"
                        );
                    }
                    break;
                }
                Err(e) if attempts < 5 => {
                    info!(error = %e, "cannot check this member's peer URLs yet; trying again in 5 s");
                    tokio::select! {
                        _ = stopped(stop.clone()) => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot check this member's peer URLs; trying again after the next initialization");
                    break;
                }
            }
        }
        tokio::select! {
            _ = stopped(stop.clone()) => return,
            changed = starts.changed() => if changed.is_err() { return },
        }
    }
}

/// Asks etcd-wrapper beside `endpoint`'s host to restart etcd (the reference's
/// `RestartEtcdWrapper`).
async fn restart_etcd_wrapper(client: &reqwest::Client, endpoint: &str) {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let url = format!("{scheme}://{host}:{ETCD_WRAPPER_PORT}/stop");
    match client.post(&url).timeout(Duration::from_secs(10)).send().await {
        Ok(r) => info!(%url, status = r.status().as_u16(), "asked etcd-wrapper to restart etcd"),
        Err(e) => error!(%url, error = %e, "cannot ask etcd-wrapper to restart etcd; restart this member"),
    }
}

/// Completes when `role` is no longer [`Role::Leader`] (or its elector is gone).
async fn leadership_lost(mut role: watch::Receiver<Role>) {
    loop {
        let leading = *role.borrow_and_update() == Role::Leader;
        if !leading || role.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps the snapshotter running while etcd is up, this member leads and no initialization
/// runs, and `/healthz` in step with it, until `stop`.
async fn supervise(
    handle: &ServerHandle,
    etcd: Arc<EtcdClient>,
    cluster: Arc<dyn ClusterAccess>,
    snapshots: Option<SidecarSnapshots>,
    progress: Option<ProgressSender>,
    stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if !wait_for_etcd(&etcd, handle, &stop).await {
            return;
        }
        let Some(SidecarSnapshots {
            store,
            snapshotter: config,
            live,
            role,
            handoff_limit,
            secondary,
            verifier,
            sidecar_client,
        }) = &snapshots
        else {
            // No store: healthy while etcd answers.
            handle.set_healthy(true);
            tokio::select! {
                _ = stopped(stop.clone()) => return,
                _ = tokio::time::sleep(ETCD_POLL) => {}
            }
            if etcd.status().await.is_err() {
                handle.set_healthy(false);
            }
            continue;
        };
        // Only the raft leader's sidecar snapshots.
        let mut role = role.clone();
        let Some(previous) = wait_for_leadership(&mut role, handle, &stop).await else {
            return;
        };
        if let Some(previous) = previous {
            info!(
                previous = previous.as_str(),
                "leadership moved here: waiting for the previous leader's sidecar to stop"
            );
            tokio::select! {
                _ = stopped(stop.clone()) => return,
                _ = wait_for_handoff(sidecar_client, &previous, *handoff_limit) => {}
            }
        }
        info!(endpoints = ?etcd.config().endpoints, schedule = config.full_schedule.as_str(), "starting the snapshotter");
        handle.set_healthy(true);
        // Subscribed before the snapshotter starts, so no initialization can slip past it.
        let mut starts = handle.initialization_starts();
        if handle.init_status() == InitStatus::Progress {
            continue;
        }
        let until = {
            let stop = stop.clone();
            async move {
                tokio::select! {
                    _ = stopped(stop) => {}
                    _ = starts.changed() => info!("initialization started: stopping the snapshotter"),
                    _ = leadership_lost(role) => info!("leadership moved away: stopping the snapshotter"),
                }
            }
        };
        // Defragmentation covers every member when the cluster has several.
        let source: Arc<dyn EtcdSource> =
            Arc::new(ClusterEtcd::new(etcd.clone(), cluster.clone(), brcore::metrics::metrics().clone()));
        let mut snapshotter =
            Snapshotter::new(source, store.clone(), config.clone(), brcore::metrics::metrics().clone());
        if let Some(p) = &progress {
            // The snapshot Leases follow every snapshotter this server runs.
            snapshotter = snapshotter.report_progress_to(p.clone());
        }
        // The snapshotter rides out etcd outages by itself; /healthz follows etcd meanwhile.
        let checker = {
            let (etcd, handle) = (etcd.clone(), handle.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ETCD_POLL).await;
                    let up = etcd.status().await.is_ok();
                    if handle.init_status() != InitStatus::Progress {
                        handle.set_healthy(up);
                    }
                }
            })
        };
        // The secondary store is kept in sync by the snapshotting sidecar only (the reference's
        // leader callbacks), for as long as its snapshotter runs.
        let sync = secondary.as_ref().map(|(secondary, config)| {
            tokio::spawn(brcore::secondary::run(
                store.clone(),
                secondary.clone(),
                config.clone(),
                brcore::metrics::metrics().clone(),
                std::future::pending(),
            ))
        });
        // So is scheduled verification: against the leader's etcd, of the chain it uploads.
        let verifying = verifier.as_ref().map(|(verifier, period)| {
            let (verifier, period) = (verifier.clone(), *period);
            info!(period = ?period, "scheduled verification on");
            tokio::spawn(async move { verifier.run(period, std::future::pending()).await })
        });
        live.attach(snapshotter.handle());
        let result = snapshotter.run(until).await;
        live.detach();
        checker.abort();
        if let Some(sync) = sync {
            sync.abort();
        }
        if let Some(verifying) = verifying {
            verifying.abort();
        }
        handle.set_healthy(false);
        match result {
            Ok(report) => {
                backoff = Duration::from_secs(1);
                info!(
                    full_snapshots = report.full_snapshots,
                    delta_snapshots = report.delta_snapshots,
                    last_revision = report.last_revision,
                    "snapshotter stopped"
                );
            }
            Err(e) => {
                error!(error = %e, retry_in = ?backoff, "the snapshotter failed");
                tokio::select! {
                    _ = stopped(stop.clone()) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(128));
            }
        }
        if *stop.borrow() {
            return;
        }
    }
}
