//! `etcdbrctl server`: the HTTP API of the reference's sidecar (initialization, snapshots on
//! demand, `/config`, `/healthz`, `/metrics`, a status page), plus the snapshotter whenever
//! etcd is reachable, until SIGTERM or ctrl-c.
//!
//! This file is flags → setup → run: the flags (the reference's), their checks, and the
//! [`SidecarConfig`] they amount to. The supervision (the snapshotter's restarts around
//! initializations and leadership changes, `/healthz`, the hand-over between leaders, peer URL
//! updates) is `httpd::sidecar`'s, so an embedder of `httpd` gets it too.
//!
//! Without `--storage-provider` there is no store: initialization keeps a valid data dir or
//! lets etcd start empty, the snapshot endpoints answer 405, and `/healthz` follows etcd.
//! Followers find the leader's sidecar through `--sidecar-endpoints`, else the leader's client
//! URL host and this server's port, as the reference.
//!
//! With `--enable-snapshot-lease-renewal` and `--enable-member-lease-renewal` the Kubernetes
//! Leases etcd-druid reads are kept beside all this ([`super::leases`]): every snapshotter the
//! sidecar starts reports what it stored to the snapshot-Lease task, and the member Lease is
//! renewed on its own heartbeat. Neither ever holds up a snapshot.
//!
//! The cluster is one view for every decision ([`SidecarCluster`]: `$ETCD_CONF` as etcd-druid
//! writes it, else the flags): initialization rejoins a member that lost its data as a learner,
//! the elector promotes it, `/config` trims `initial-cluster` to the running members.
//!
//! Over 700 lines only with its unit tests (about 320 lines: the flags' defaults and checks,
//! and two runs of the whole command against real etcd); the code is under 400.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use brcore::cluster::ClusterAccess;
use brcore::etcd::EtcdClient;
use brcore::restore::RestorePlan;
use brcore::secondary::SyncConfig;
use brcore::verify::{Verifier, VerifyPlan};
use clap::{ArgAction, Args};
use httpd::leader::{ClusterView, EtcdClusterView};
use httpd::sidecar::{SidecarConfig, SidecarSnapshots};
use httpd::{
    ClusterSettings, FlagCluster, Initialization, LeaderElector, LiveSnapshots, Server, ServerConfig, SidecarCluster,
    SidecarLocator, SnapshotControl, StoreSnapshots, TlsFiles, VerificationFeed,
};
use tokio::sync::watch;
use tracing::{info, warn};
use validator::{InitOptions, Initializer};

use super::initialize::ValidationArgs;
use super::leases::{LeaseEnv, ServerLeases};
use super::snapshot::{SnapshotArgs, SnapshotPlan};
use crate::flags::{MemberLeaseArgs, RestorationArgs, RestoreArgs, SecondaryStoreArgs, SnapshotLeaseArgs};

/// Limit for each request about the cluster's members (the reference's `EtcdTimeout`).
const MEMBER_TIMEOUT: Duration = Duration::from_secs(5);

/// `etcdbrctl server`: the reference's flags, names and defaults.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Port of the HTTP API (all interfaces).
    #[arg(short = 'p', long, default_value_t = 8080)]
    pub server_port: u16,
    /// Certificate (PEM) to serve HTTPS with (with --server-key).
    #[arg(long, requires = "server_key")]
    pub server_cert: Option<PathBuf>,
    /// Private key (PEM) of --server-cert.
    #[arg(long, requires = "server_cert")]
    pub server_key: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on the endpoints that change state
    /// (/initialization/start, /snapshot/full, /snapshot/delta); reads stay open.
    #[arg(long, env = "ETCDBR_SERVER_AUTH_TOKEN", hide_env_values = true)]
    pub server_auth_token: Option<Token>,
    /// Validation depth when /initialization/start names no mode, and what becomes of an
    /// invalid member dir: the flags of `etcdbrctl initialize`.
    #[command(flatten)]
    pub validation: ValidationArgs,
    /// etcd connection, snapshotter, store, compression and defragmentation flags: those of
    /// `etcdbrctl snapshot`.
    #[command(flatten)]
    pub snapshot: Box<SnapshotArgs>,
    /// The data dir and how to restore it: the flags of `etcdbrctl restore` (the store flags
    /// are shared with the snapshotter).
    #[command(flatten)]
    pub restore: Box<RestorationArgs>,
    /// The Go tool's component config (YAML): its settings replace the Go tool's flags, as in
    /// the Go tool (etcdbr's own flags and --log-level still apply).
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// No-op: the Go tool serves Go's pprof profiles at /debug/pprof; there is no Go runtime
    /// here to profile (use `perf` or the tracing output instead).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub enable_profiling: bool,
    /// After this member's peer URLs in the cluster were set to the configured ones (after a
    /// restore, or a switch to peer TLS), restart etcd through etcd-wrapper (`POST /stop` on
    /// port 9095 of --endpoints' host), as the Go tool; without it, a warning says to restart.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub use_etcd_wrapper: bool,
    /// How often the local etcd member is asked whether it leads (only the leader's sidecar
    /// snapshots); at least 1s.
    #[arg(long, default_value = "5s", value_parser = crate::pflag::go_duration)]
    pub reelection_period: Duration,
    /// Limit for each leader-election request to etcd.
    #[arg(long, default_value = "5s", value_parser = crate::pflag::go_duration)]
    pub etcd_connection_timeout_leader_election: Duration,
    /// Where each member's sidecar listens, `member-name=url` pairs, comma separated: followers
    /// forward snapshot requests there. Members not named: the host of the member's client URL
    /// and this server's --server-port (the reference's rule; needs one sidecar per host).
    #[arg(long, default_value = "")]
    pub sidecar_endpoints: String,
    /// Client URLs that reach the cluster's ready members (etcd-druid: the client Service),
    /// comma separated: member changes (a learner joining, a promotion) and the member list go
    /// there first, then to every member's advertised client URL and --endpoints.
    #[arg(long)]
    pub service_endpoints: Option<String>,
    /// The full- and delta-snapshot Leases (Kubernetes).
    #[command(flatten)]
    pub snapshot_leases: SnapshotLeaseArgs,
    /// This member's Lease heartbeat (Kubernetes).
    #[command(flatten)]
    pub member_lease: MemberLeaseArgs,
    /// Backup sync to a secondary store.
    #[command(flatten)]
    pub secondary: SecondaryStoreArgs,
    /// Verify the backups on this period (etcdbr's own; 0: off): on the leader's sidecar only,
    /// the newest chain is fetched, rebuilt offline in --snapstore-temp-directory (which needs
    /// room for the db) and its HashKV compared with etcd's, as `etcdbrctl verify`. Results at
    /// /snapshot/verify/latest, on the status page and in the etcdbr_verification_* metrics.
    #[arg(long, default_value = "0s", value_parser = crate::pflag::go_duration)]
    pub verification_period: Duration,
}

/// The bearer token of `--server-auth-token`; its `Debug` output is redacted so printing the
/// flags never shows it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl std::str::FromStr for Token {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Token, Self::Err> {
        Ok(Token(s.to_string()))
    }
}

impl ServerArgs {
    /// The `restore` flags these amount to, for `restore::plan`.
    fn restore_args(&self) -> RestoreArgs {
        RestoreArgs {
            store: self.snapshot.store.clone(),
            restoration: (*self.restore).clone(),
            to_revision: None,
            to_time: None,
            bump_revision: None,
            keep_revision: false,
            mark_compacted: false,
            dry_run: false,
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Everything a server run needs, checked.
struct Setup {
    /// What `httpd::sidecar::run` serves and supervises.
    sidecar: SidecarConfig,
    /// Port of the HTTP API (all interfaces).
    port: u16,
    /// The Kubernetes Lease tasks (none unless their flags turn them on; see [`run`]).
    leases: ServerLeases,
    /// Who this member is, for the member Lease (the leader elector's question, asked apart).
    member_view: Arc<dyn ClusterView>,
}

/// The flag values the server refuses, checked at start (see `crate::validate`) and again by
/// `setup`, which uses what they amount to.
pub(crate) fn check_flags(
    args: &ServerArgs,
) -> anyhow::Result<(std::collections::HashMap<String, String>, RestorePlan, SnapshotPlan)> {
    if !args.verification_period.is_zero() && !args.snapshot.store.has_provider() {
        bail!("--verification-period needs a store to verify (--storage-provider)");
    }
    if args.reelection_period < Duration::from_secs(1)
        || args.etcd_connection_timeout_leader_election < Duration::from_secs(1)
    {
        bail!("--reelection-period and --etcd-connection-timeout-leader-election must be at least 1s");
    }
    args.snapshot_leases.check().map_err(anyhow::Error::msg)?;
    args.member_lease.check().map_err(anyhow::Error::msg)?;
    args.secondary.check(&args.snapshot.store).map_err(anyhow::Error::msg)?;
    let sidecars = SidecarLocator::parse_endpoints(&args.sidecar_endpoints)
        .map_err(|e| anyhow::anyhow!("--sidecar-endpoints: {e}"))?;
    let plan = super::restore::plan(&args.restore_args())?;
    let snap = super::snapshot::plan(&args.snapshot)?;
    Ok((sidecars, plan, snap))
}

fn setup(args: &ServerArgs) -> anyhow::Result<Setup> {
    let (sidecars, plan, snap) = check_flags(args)?;
    // What a killed restore left goes now, whether or not an initialization restores later.
    brcore::restore::remove_unfinished_restore(&plan.data_dir)?;
    // The size of the cluster --initial-cluster describes, until the cluster view below says.
    brcore::metrics::metrics().cluster_size.set(plan.cluster.members.len() as f64);
    let mode = args.validation.validation_mode.mode();
    let etcd = Arc::new(EtcdClient::new(snap.etcd.clone()));
    let metrics = brcore::metrics::metrics().clone();
    let tls = match (&args.server_cert, &args.server_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert: cert.clone(), key: key.clone() }),
        _ => None,
    };
    let locator = SidecarLocator::new(sidecars, args.server_port, tls.is_some());
    let sidecar_client = httpd::leader::sidecar_client(args.snapshot.auth.cacert.as_deref())
        .map_err(|e| anyhow::anyhow!("--cacert: {e}"))?;
    // The one view of the cluster: $ETCD_CONF (druid's), else the flags.
    let cluster: Arc<dyn ClusterAccess> = Arc::new(SidecarCluster::new(ClusterSettings {
        etcd_conf: env("ETCD_CONF").map(PathBuf::from),
        pod_name: env("POD_NAME"),
        flags: FlagCluster {
            initial_cluster: args.restore.initial_cluster.clone(),
            name: args.restore.name.clone(),
            token: args.restore.initial_cluster_token.clone(),
        },
        etcd: snap.etcd.clone(),
        service_endpoints: args
            .service_endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect(),
        timeout: MEMBER_TIMEOUT,
        locator: locator.clone(),
        client: sidecar_client.clone(),
    }));
    match cluster.spec() {
        Ok(spec) => {
            metrics.cluster_size.set(spec.members.len() as f64);
            info!(member = %spec.this, members = spec.members.len(), origin = %spec.origin, "cluster");
        }
        // Not fatal: the configuration may appear or be fixed before the first initialization.
        Err(e) => warn!(error = %e, "cannot read the cluster's configuration yet"),
    }
    let (initializer, control, snapshotting) = if !args.snapshot.store.has_provider() {
        (Initializer::without_store(), None, None)
    } else {
        let store = super::open_store(&args.snapshot.store)?;
        let options = snap.snapshotter.full_options();
        let direct = StoreSnapshots::new(etcd.clone(), store.clone(), options, metrics.clone());
        let live = Arc::new(LiveSnapshots::new(direct));
        let control: Arc<dyn SnapshotControl> = live.clone();
        (Initializer::new(store.clone()), Some(control), Some((store, live)))
    };
    let initializer = initializer.with_cluster(cluster.clone());
    // Also without a store: it promotes this member while it is a learner.
    let view = Arc::new(EtcdClusterView::new(snap.etcd.clone(), args.etcd_connection_timeout_leader_election));
    let elector = LeaderElector::new(view, locator, args.reelection_period).with_promotion(cluster.clone());
    // Verification runs beside the snapshotter, so on the leader's sidecar only.
    let verifier = match (&snapshotting, args.verification_period.is_zero()) {
        (Some((store, _)), false) => {
            let mut plan =
                VerifyPlan::new(snap.snapshotter.prefix.clone(), args.snapshot.store.snapstore_temp_directory.clone());
            plan.max_fetchers = args.restore.max_fetchers.max(1);
            plan.skip_hash_check = args.restore.skip_hash_check;
            plan.memory_budget = args.restore.restore_memory_budget;
            Some(Arc::new(Verifier::new(store.clone(), etcd.clone(), plan, metrics.clone())))
        }
        _ => None,
    };
    let mut config = ServerConfig::default();
    config.verification =
        verifier.as_ref().map(|v| VerificationFeed { period: args.verification_period, results: v.subscribe() });
    config.leadership = Some(elector.subscribe());
    config.cluster = Some(cluster.clone());
    config.peer_cacert = args.snapshot.auth.cacert.clone();
    config.tls = tls;
    config.auth_token = args.server_auth_token.as_ref().map(|t| t.0.clone()).filter(|t| !t.is_empty());
    config.etcd_conf = env("ETCD_CONF").map(PathBuf::from);
    config.config_output = env("HOME").map(|h| PathBuf::from(h).join("etcd.conf.yaml"));
    config.pod_name = env("POD_NAME");
    config.default_mode = mode;
    let init = Initialization {
        initializer,
        options: {
            let mut options = InitOptions::new(mode, plan);
            options.namespace = env("POD_NAMESPACE");
            options.remove_set_aside = args.validation.delete_invalid_member_dir;
            options
        },
    };
    let server = Server::new(config, init, control, metrics);
    let secondary = match args.secondary.store_config() {
        Some(config) => {
            // The secondary store holds the same backups, so it is encrypted with the same keys.
            let keys =
                super::encryption_keys(args.snapshot.store.encryption_key_file.as_deref(), "--encryption-key-file")?;
            let store = super::open_encrypted(&config, keys).context("cannot open the secondary backup store")?;
            let s = &snap.snapshotter;
            let mut sync =
                SyncConfig::new(s.prefix.clone(), config.prefix.clone(), args.secondary.secondary_backup_sync_period);
            sync.write = brcore::WriteOptions::new(config.max_parallel_chunk_uploads.max(1), config.min_chunk_size);
            sync.gc_period = s.gc_period;
            sync.gc_policy = s.gc_policy;
            sync.gc_options.delta_retention_secs = s.delta_retention.as_secs() as i64;
            Some((store, sync))
        }
        None => {
            if args.secondary.secondary_store_container.is_some()
                || !args.secondary.secondary_storage_provider.is_empty()
            {
                warn!(
                    "--secondary-* store flags are given but --secondary-backup-sync-enabled is false: no secondary store is used"
                );
            }
            None
        }
    };
    let member_view: Arc<dyn ClusterView> =
        Arc::new(EtcdClusterView::new(snap.etcd.clone(), snap.etcd.connection_timeout));
    let role = elector.subscribe();
    let mut sidecar = SidecarConfig::new(server, etcd, cluster);
    sidecar.snapshots = snapshotting.map(|(store, live)| {
        let mut s =
            SidecarSnapshots::new(store, snap.snapshotter, live, role, args.reelection_period, sidecar_client.clone());
        s.secondary = secondary;
        s.verifier = verifier.map(|v| (v, args.verification_period));
        s
    });
    sidecar.elector = Some(elector);
    sidecar.etcd_wrapper = args.use_etcd_wrapper.then(|| sidecar_client.clone());
    Ok(Setup { sidecar, port: args.server_port, leases: ServerLeases::default(), member_view })
}

/// Runs the server until SIGTERM or ctrl-c.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let mut setup = setup(&args)?;
    setup.leases = ServerLeases::new(&args.snapshot_leases, &args.member_lease, &LeaseEnv::from_env()).await?;
    let listener =
        httpd::sidecar::listen(setup.port).await.with_context(|| format!("cannot listen on port {}", setup.port))?;
    serve(setup, listener, super::stop_signal()).await
}

/// The Lease tasks beside `httpd::sidecar::run`, until `stop`.
async fn serve(
    mut setup: Setup,
    listener: tokio::net::TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let (lease_tasks, progress) = setup.leases.spawn(setup.member_view, stop_rx.clone());
    setup.sidecar.progress = progress;
    let result = httpd::sidecar::run(setup.sidecar, listener, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    })
    .await;
    for t in lease_tasks {
        let _ = t.await;
    }
    result.context("the HTTP server failed")
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Instant;

    use clap::Parser;
    use testsupport::{Etcd, EtcdVersion};

    use super::*;
    use crate::cmd::initialize::ValidationMode;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServerArgs,
    }

    fn parse(argv: &[&str]) -> Result<ServerArgs, clap::Error> {
        let mut full = vec!["etcdbrctl"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|c| c.args)
    }

    #[test]
    fn defaults_are_the_references() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.server_port, 8080);
        assert_eq!(a.validation.validation_mode, ValidationMode::Full);
        assert_eq!(a.restore.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(a.snapshot.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(a.snapshot.defragmentation_schedule, "0 0 */3 * *");
        let s = setup(&a).unwrap();
        assert!(s.sidecar.snapshots.is_none(), "no --storage-provider, no store");
        assert_eq!(s.port, 8080);
    }

    #[test]
    fn flags_are_checked() {
        assert!(parse(&["--server-cert", "/c.pem"]).is_err(), "a certificate needs its key");
        assert!(parse(&["--validation-mode", "deep"]).is_err());
        let a = parse(&["-p", "9000", "--name", "m1", "--initial-cluster", "m0=http://a:2380"]).unwrap();
        let e = setup(&a).err().expect("--name must be in --initial-cluster").to_string();
        assert!(e.contains("m1"), "{e}");
        let a = parse(&["--use-etcd-wrapper", "--enable-profiling=false", "--server-auth-token", "s3cret"]).unwrap();
        assert!(!format!("{a:?}").contains("s3cret"), "the token stays out of debug output");
        assert!(setup(&a).is_ok(), "compatibility flags are accepted");
        for bad in [
            &["--reelection-period", "500ms"][..],
            &["--etcd-connection-timeout-leader-election", "0s"],
            &["--sidecar-endpoints", "m0"],
            &["--sidecar-endpoints", "m0=host:8080"],
            &["--verification-period", "1h"],
        ] {
            let a = parse(bad).unwrap();
            assert!(setup(&a).is_err(), "{bad:?} must be refused");
        }
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().to_str().unwrap();
        let a =
            parse(&["--storage-provider", "Local", "--store-container", store, "--sidecar-endpoints", "m0=http://a:1"])
                .unwrap();
        let s = setup(&a).unwrap();
        assert!(s.sidecar.elector.is_some() && s.sidecar.snapshots.is_some(), "a store brings the leader elector");
        assert_eq!(a.reelection_period, Duration::from_secs(5), "the reference's default");
    }

    /// druid's lease flags parse (as pflag: `=true|false`, a bare flag) with the Go defaults.
    #[test]
    fn lease_flags_parse_with_the_go_defaults() {
        let a = parse(&[]).unwrap();
        assert!(!a.snapshot_leases.enable_snapshot_lease_renewal);
        assert_eq!(a.snapshot_leases.full_snapshot_lease_name, "full-snapshot-revisions");
        assert_eq!(a.snapshot_leases.delta_snapshot_lease_name, "delta-snapshot-revisions");
        assert!(!a.member_lease.enable_member_lease_renewal);
        assert_eq!(a.member_lease.k8s_heartbeat_duration, Duration::from_secs(30));
        let a = parse(&[
            "--enable-snapshot-lease-renewal=true",
            "--full-snapshot-lease-name=etcd-main-full-snap",
            "--delta-snapshot-lease-name=etcd-main-delta-snap",
            "--enable-member-lease-renewal",
            "--k8s-heartbeat-duration=10s",
        ])
        .unwrap();
        assert!(a.snapshot_leases.enable_snapshot_lease_renewal && a.member_lease.enable_member_lease_renewal);
        assert_eq!(a.snapshot_leases.full_snapshot_lease_name, "etcd-main-full-snap");
        assert_eq!(a.snapshot_leases.delta_snapshot_lease_name, "etcd-main-delta-snap");
        assert_eq!(a.member_lease.k8s_heartbeat_duration, Duration::from_secs(10));
        assert!(setup(&a).is_ok());
        let a = parse(&["--enable-snapshot-lease-renewal=false", "--enable-member-lease-renewal=F"]).unwrap();
        assert!(!a.snapshot_leases.enable_snapshot_lease_renewal && !a.member_lease.enable_member_lease_renewal);
        assert!(parse(&["--enable-member-lease-renewal=maybe"]).is_err());
        for bad in [
            &["--k8s-heartbeat-duration=0s"][..],
            &["--k8s-heartbeat-duration=-5s"],
            &["--enable-snapshot-lease-renewal", "--full-snapshot-lease-name="],
            &["--enable-snapshot-lease-renewal", "--delta-snapshot-lease-name="],
        ] {
            let e = setup(&parse(bad).unwrap()).err().unwrap_or_else(|| panic!("{bad:?} must be refused"));
            assert!(e.to_string().contains("lease") || e.to_string().contains("heartbeat"), "{e}");
        }
    }

    /// `GET path` over HTTP/1.0: (status code, body).
    fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((code, body))
    }

    /// The whole command against a real etcd and a Local store: the snapshotter starts once
    /// etcd answers, `/healthz` follows it, its first full snapshot is listed, and the server
    /// stops cleanly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_and_snapshots_a_real_etcd() {
        let tmp = tempfile::tempdir().unwrap();
        let etcd = Etcd::start(EtcdVersion::V3_5);
        etcd.etcdctl(&["put", "k", "v"]);
        let port = testsupport::free_port();
        let store = tmp.path().join("store");
        let data = tmp.path().join("data");
        let tmpdir = tmp.path().join("tmp");
        let argv = [
            "-p",
            &port.to_string(),
            "--endpoints",
            &etcd.endpoint(),
            "--storage-provider",
            "Local",
            "--store-container",
            store.to_str().unwrap(),
            "--snapstore-temp-directory",
            tmpdir.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        let args = parse(&argv).unwrap();
        let setup = setup(&args).unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(serve(setup, listener, async {
            let _ = rx.await;
        }));
        let revision = etcd.revision();
        let deadline = Instant::now() + Duration::from_secs(60);
        let latest = loop {
            let got = tokio::task::spawn_blocking(move || http_get(port, "/snapshot/latest")).await.unwrap();
            if let Some((200, body)) = got
                && body.contains(&format!("Full-00000000-{revision:08}-"))
            {
                break body;
            }
            assert!(Instant::now() < deadline, "no full snapshot listed within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(latest.contains("\"fullSnapshot\":{\"kind\":\"Full\""), "{latest}");
        let health = tokio::task::spawn_blocking(move || http_get(port, "/healthz")).await.unwrap();
        assert_eq!(health, Some((200, "{\"health\":true}".into())));
        // On-demand deltas reach the running snapshotter (through the handle the supervisor attached).
        etcd.etcdctl(&["put", "k2", "v2"]);
        let target = etcd.revision();
        loop {
            let got = tokio::task::spawn_blocking(move || http_get(port, "/snapshot/delta")).await.unwrap();
            if let Some((200, body)) = &got
                && body.contains(&format!("\"lastRevision\":{target},"))
            {
                break;
            }
            assert!(Instant::now() < deadline, "no on-demand delta reached revision {target}: {got:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tx.send(()).unwrap();
        run.await.unwrap().unwrap();
        assert!(http_get(port, "/healthz").is_none(), "the port is closed after stopping");
    }

    fn full_snapshots(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.retain(|n| n.starts_with("Full-"));
        v.sort();
        v
    }

    #[test]
    fn secondary_flags_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("p");
        let store = store.to_str().unwrap();
        let a = parse(&[]).unwrap();
        assert!(!a.secondary.secondary_backup_sync_enabled);
        assert_eq!(a.secondary.secondary_backup_sync_period, Duration::from_secs(3600), "the Go default");
        assert!(a.secondary.store_config().is_none(), "disabled: no secondary store");
        for (bad, why) in [
            (
                &["--secondary-backup-sync-enabled", "--secondary-storage-provider=Local"][..],
                "storage-provider is missing",
            ),
            (
                &["--storage-provider=Local", "--store-container", store, "--secondary-backup-sync-enabled"],
                "--secondary-storage-provider",
            ),
            (
                &[
                    "--storage-provider=Local",
                    "--store-container",
                    store,
                    "--secondary-backup-sync-enabled",
                    "--secondary-storage-provider=Local",
                    "--secondary-backup-sync-period=0s",
                ],
                "period",
            ),
        ] {
            let e = setup(&parse(bad).unwrap()).err().unwrap_or_else(|| panic!("{bad:?} must be refused")).to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(parse(&["--secondary-min-chunk-size=1024"]).is_err(), "Go: at least 5 MiB");
        let a = parse(&[
            "--storage-provider=Local",
            "--store-container",
            store,
            "--secondary-backup-sync-enabled=true",
            "--secondary-storage-provider=S3",
            "--secondary-store-container=b",
            "--secondary-store-prefix=q",
        ])
        .unwrap();
        let c = a.secondary.store_config().unwrap();
        assert_eq!(
            (c.provider, c.container.as_deref(), c.prefix.as_str(), c.env_prefix.as_str()),
            (snapstore::Provider::S3, Some("b"), "q", "SECONDARY_")
        );
    }

    /// The Go v0.43.0 backup sync: the snapshotting sidecar copies the primary store's backups to
    /// the secondary (at once, then every period) and garbage-collects the secondary with the
    /// primary's policy; the copy restores like the primary.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backups_are_synced_to_the_secondary_store_and_collected_there() {
        let tmp = tempfile::tempdir().unwrap();
        let etcd = Etcd::start(EtcdVersion::V3_5);
        etcd.etcdctl(&["put", "k", "v"]);
        let port = testsupport::free_port();
        let (primary, secondary) = (tmp.path().join("primary"), tmp.path().join("secondary"));
        let data_dir = tmp.path().join("data");
        let argv = [
            "-p",
            &port.to_string(),
            "--endpoints",
            &etcd.endpoint(),
            "--storage-provider=Local",
            "--store-container",
            primary.to_str().unwrap(),
            "--store-prefix=main",
            "--delta-snapshot-period=1s",
            "--garbage-collection-policy=LimitBased",
            "--max-backups=1",
            "--garbage-collection-period=2s",
            "--secondary-backup-sync-enabled=true",
            "--secondary-backup-sync-period=1s",
            "--secondary-storage-provider=Local",
            "--secondary-store-container",
            secondary.to_str().unwrap(),
            "--secondary-store-prefix=copy",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ];
        let setup = setup(&parse(&argv).unwrap()).unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(serve(setup, listener, async {
            let _ = rx.await;
        }));
        let (p_dir, s_dir) = (primary.join("main/v2"), secondary.join("copy/v2"));
        let deadline = Instant::now() + Duration::from_secs(90);
        // The first full snapshot reaches the secondary store.
        while full_snapshots(&s_dir).is_empty() {
            assert!(Instant::now() < deadline, "no full snapshot synced: {:?}", full_snapshots(&p_dir));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Two more full snapshots (each a new set): the secondary ends up with the newest set
        // only, as the primary does (LimitBased, 1), with every delta of it.
        for i in 0..2 {
            etcd.etcdctl(&["put", &format!("k{i}"), "v"]);
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let got = tokio::task::spawn_blocking(move || http_get(port, "/snapshot/full")).await.unwrap();
            assert!(matches!(got, Some((200, _))), "{got:?}");
        }
        etcd.etcdctl(&["put", "last", "v"]);
        let revision = etcd.revision();
        loop {
            let (p, s) = (full_snapshots(&p_dir), full_snapshots(&s_dir));
            let s_all: Vec<String> = std::fs::read_dir(&s_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            if p.len() == 1
                && s == p
                && s_all.iter().any(|n| n.starts_with("Incr-") && n.contains(&format!("-{revision:08}-")))
            {
                break;
            }
            assert!(Instant::now() < deadline, "primary {p:?}, secondary {s_all:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tx.send(()).unwrap();
        run.await.unwrap().unwrap();
        // The secondary's set restores to what etcd serves.
        let data = tmp.path().join("restored");
        let peer = testsupport::free_port();
        let peer_url = format!("http://127.0.0.1:{peer}");
        let restore = crate::flags::Cli::try_parse_from([
            "etcdbrctl",
            "restore",
            "--storage-provider=Local",
            "--store-container",
            secondary.to_str().unwrap(),
            "--store-prefix=copy",
            "--data-dir",
            data.to_str().unwrap(),
            "--name=n1",
            &format!("--initial-cluster=n1={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
        ])
        .unwrap();
        crate::cmd::run(restore.command.unwrap()).await.unwrap();
        let hash = etcd.hashkv(revision).0;
        let back = Etcd::start_on(EtcdVersion::V3_5, &data, "n1", peer, testsupport::free_port());
        assert_eq!(back.hashkv(revision).0, hash);
    }
}
