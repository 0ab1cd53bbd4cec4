//! Command-line flags, spelled and defaulted as the Go etcdbrctl spells them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// etcd backup and restore: snapshots to an object store, offline restore, data-dir validation.
///
/// Flags read as the Go tool's (spf13/pflag) read them: the last of a repeated flag wins,
/// booleans take `--flag`, `--flag=true` or `--flag=false`, durations are Go's (`1m30s`).
#[derive(Debug, Parser)]
#[command(name = "etcdbrctl", version, about, long_about = None, disable_version_flag = true, args_override_self = true)]
pub struct Cli {
    /// Print the version and exit.
    #[arg(short = 'v', long, action = ArgAction::Version)]
    pub version: Option<bool>,
    /// Log level: logrus' numbers as the Go tool takes them (0 panic, 1 fatal, 2 error, 3 warn,
    /// 4 info, 5 debug, 6 trace), their names, or a tracing filter; RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", value_parser = crate::pflag::log_level)]
    pub log_level: String,

    /// What to do (none: print the usage and exit 0, as the Go tool exits 0).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Rebuild a data dir from the latest full snapshot and every later delta, offline.
    Restore(RestoreArgs),
    /// Inspect an etcd db file or snapshot file offline.
    #[command(subcommand)]
    Db(DbCommand),
    /// Validate the data dir and restore it from the latest backups if it is missing, corrupt or stale.
    Initialize(crate::cmd::initialize::InitializeArgs),
    /// Take full snapshots on a schedule and delta snapshots from a watch until SIGTERM.
    Snapshot(crate::cmd::snapshot::SnapshotCommand),
    /// Serve the HTTP API (initialization, snapshots on demand, /config, /healthz, /metrics) and run the snapshotter while etcd is up.
    Server(crate::cmd::server::ServerArgs),
    /// Fold the latest full snapshot and its deltas into a new full snapshot in the same store.
    Compact(crate::cmd::compact::CompactArgs),
    /// Copy backups from a source store to a destination store.
    Copy(crate::cmd::copy::CopyArgs),
    /// Show the chain a restore would use now, whether it is continuous, and (with --endpoints)
    /// how far it lags etcd; the exit code says healthy or what is wrong (see the README).
    Status(crate::cmd::status::StatusArgs),
    /// Prove the backups restorable without a restore: fetch and check every object, rebuild the
    /// chain offline in a temp dir, and (with --endpoints) compare its HashKV with etcd's.
    Verify(crate::cmd::verify::VerifyArgs),
}

/// Where backups live (`--storage-provider` and friends).
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Object store: Local, S3, ABS, GCS, Swift, OSS, ECS, OCS. Required by restore, snapshot,
    /// compact and copy; initialize and server without it use no store, and then refuse
    /// --store-container and --store-prefix.
    #[arg(long, default_value = "", value_parser = provider_name)]
    pub storage_provider: String,
    /// Bucket / container; for Local a directory (relative ones live under $HOME).
    #[arg(long, env = "STORAGE_CONTAINER")]
    pub store_container: Option<String>,
    /// Prefix of the backups inside the container; the layout appends `v2`.
    #[arg(long, default_value = "")]
    pub store_prefix: String,
    /// Endpoint of an S3-compatible, Azure or GCS emulator or private store.
    #[arg(long)]
    pub store_endpoint_override: Option<String>,
    /// Parts uploaded at once.
    #[arg(long, default_value_t = 5)]
    pub max_parallel_chunk_uploads: usize,
    /// Size of one uploaded part, in bytes (at least 5 MiB).
    #[arg(long, default_value_t = 5 * 1024 * 1024)]
    pub min_chunk_size: usize,
    /// Temp directory for store transfers.
    #[arg(long, default_value = "/tmp")]
    pub snapstore_temp_directory: PathBuf,
    /// etcdbr's own: client-side encryption. An age identity file (`age-keygen -o FILE`): objects
    /// written are encrypted to its first key (names end in `.age`), objects read are decrypted
    /// with any of its keys (rotate by putting the new key first). The store never sees plaintext;
    /// the Go tool cannot read such objects.
    #[arg(long, env = "ETCDBR_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
}

impl StoreArgs {
    /// Whether a store is configured: `--storage-provider` is given.
    pub fn has_provider(&self) -> bool {
        !self.storage_provider.trim().is_empty()
    }

    /// Every command reads an empty `--storage-provider` the same way: no store. A container
    /// (flag or `STORAGE_CONTAINER`) or a prefix without a provider would be silently ignored,
    /// so it is refused; so is a command that needs a store (`store_required`) without one.
    /// Returns the message for a usage error (exit 2).
    pub fn check(&self, command: &str, store_required: bool) -> Result<(), String> {
        if self.has_provider() {
            return Ok(());
        }
        let mut given = Vec::new();
        if self.store_container.as_deref().is_some_and(|c| !c.trim().is_empty()) {
            given.push("--store-container (or STORAGE_CONTAINER)");
        }
        if !self.store_prefix.trim().is_empty() {
            given.push("--store-prefix");
        }
        if self.encryption_key_file.is_some() {
            given.push("--encryption-key-file (or ETCDBR_ENCRYPTION_KEY_FILE)");
        }
        if !given.is_empty() {
            return Err(format!(
                "{} given without --storage-provider: name the store's provider (--storage-provider \
                 Local, S3, ABS, GCS, Swift, OSS, ECS or OCS); without one `{command}` would use \
                 no store and ignore {}",
                given.join(" and "),
                if given.len() == 1 { "it" } else { "them" }
            ));
        }
        if store_required {
            return Err(format!(
                "`{command}` needs a store: the missing flag is --storage-provider (Local, S3, ABS, GCS, \
                 Swift, OSS, ECS or OCS), with --store-container and --store-prefix"
            ));
        }
        Ok(())
    }
}

impl Command {
    /// Checks the store flags of the sub-command before anything runs (see
    /// [`StoreArgs::check`]); the error is a usage error.
    pub fn check_store_flags(&self) -> Result<(), String> {
        match self {
            Command::Restore(a) => a.store.check("restore", true),
            Command::Db(_) => Ok(()),
            Command::Initialize(a) => a.restore.store.check("initialize", false),
            Command::Snapshot(a) => a.args.store.check("snapshot", true),
            Command::Server(a) => a.snapshot.store.check("server", false),
            Command::Compact(a) => a.store.check("compact", true),
            Command::Copy(a) => a.store.check("copy", true),
            Command::Status(a) => a.store.check("status", true),
            Command::Verify(a) => a.store.check("verify", true),
        }
    }
}

/// The Go tool's secondary store (`server`, v0.43.0): with `--secondary-backup-sync-enabled`,
/// the leading sidecar copies every backup of the primary store to this one every
/// `--secondary-backup-sync-period` and garbage-collects it with the primary's policy. Its
/// credentials come from the `SECONDARY_`-prefixed variables.
#[derive(Debug, Clone, Args)]
pub struct SecondaryStoreArgs {
    /// Copy the backups to the secondary store (needs --storage-provider and
    /// --secondary-storage-provider).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub secondary_backup_sync_enabled: bool,
    /// How often the backups are copied (the first copy is made when the sidecar starts
    /// snapshotting); must be positive.
    #[arg(long, default_value = "1h", value_parser = crate::pflag::go_duration)]
    pub secondary_backup_sync_period: Duration,
    /// The secondary store's provider: Local, S3, ABS, GCS, Swift, OSS, ECS, OCS.
    #[arg(long, default_value = "", value_parser = provider_name)]
    pub secondary_storage_provider: String,
    /// The secondary store's bucket / container (or `SECONDARY_STORAGE_CONTAINER`).
    #[arg(long, env = "SECONDARY_STORAGE_CONTAINER")]
    pub secondary_store_container: Option<String>,
    /// The secondary store's prefix (its own; default none); the layout appends `v2`.
    #[arg(long, default_value = "")]
    pub secondary_store_prefix: String,
    /// The secondary store's endpoint override.
    #[arg(long)]
    pub secondary_store_endpoint_override: Option<String>,
    /// Parts uploaded at once to the secondary store.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub secondary_max_parallel_chunk_uploads: u64,
    /// Size of one part uploaded to the secondary store, in bytes (at least 5 MiB).
    #[arg(long, default_value_t = 5 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(5 * 1024 * 1024..))]
    pub secondary_min_chunk_size: u64,
    /// Temp directory for the secondary store's transfers.
    #[arg(long, default_value = "/tmp")]
    pub secondary_snapstore_temp_directory: PathBuf,
}

impl SecondaryStoreArgs {
    /// The secondary store's config, when sync is enabled.
    pub fn store_config(&self) -> Option<snapstore::StoreConfig> {
        self.secondary_backup_sync_enabled.then(|| {
            let mut config = snapstore::StoreConfig::default()
                .with_prefix(self.secondary_store_prefix.clone())
                .with_uploads(
                    usize::try_from(self.secondary_max_parallel_chunk_uploads).unwrap_or(usize::MAX),
                    usize::try_from(self.secondary_min_chunk_size).unwrap_or(usize::MAX),
                )
                .with_temp_dir(self.secondary_snapstore_temp_directory.clone())
                .with_env_prefix("SECONDARY_");
            config.provider = self.secondary_storage_provider.parse().unwrap_or(snapstore::Provider::Local);
            config.container = self.secondary_store_container.clone();
            config.endpoint_override = self.secondary_store_endpoint_override.clone().filter(|e| !e.trim().is_empty());
            config
        })
    }

    /// With sync enabled: a primary store, a secondary provider and a positive period (the Go
    /// tool fails on the first two only once it leads, and its ticker panics on the third).
    pub fn check(&self, primary: &StoreArgs) -> Result<(), String> {
        if !self.secondary_backup_sync_enabled {
            return Ok(());
        }
        if !primary.has_provider() {
            return Err(
                "--secondary-backup-sync-enabled copies the primary store's backups: --storage-provider is missing"
                    .into(),
            );
        }
        if self.secondary_storage_provider.trim().is_empty() {
            return Err("--secondary-backup-sync-enabled needs --secondary-storage-provider (Local, S3, ABS, GCS, Swift, OSS, ECS or OCS)".into());
        }
        if self.secondary_backup_sync_period.is_zero() {
            return Err("--secondary-backup-sync-period must be greater than zero".into());
        }
        Ok(())
    }
}

/// The Go tool's snapshot-Lease flags (its `HealthConfig` on `server`, `CompactorConfig` on
/// `compact`): Kubernetes Leases whose `holderIdentity` carries the latest full and delta
/// snapshot revisions, which etcd-druid reads to report backups and schedule compaction.
#[derive(Debug, Clone, Args)]
pub struct SnapshotLeaseArgs {
    /// Renew the full- and delta-snapshot Leases after each snapshot (`compact`: the
    /// full-snapshot Lease after the compacted snapshot is stored).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub enable_snapshot_lease_renewal: bool,
    /// Name of the full-snapshot Lease (in `$POD_NAMESPACE`).
    #[arg(long, default_value = "full-snapshot-revisions")]
    pub full_snapshot_lease_name: String,
    /// Name of the delta-snapshot Lease (in `$POD_NAMESPACE`).
    #[arg(long, default_value = "delta-snapshot-revisions")]
    pub delta_snapshot_lease_name: String,
}

impl SnapshotLeaseArgs {
    /// The Go tool's checks: with renewal on, both Lease names are needed.
    pub fn check(&self) -> Result<(), String> {
        if self.enable_snapshot_lease_renewal {
            if self.full_snapshot_lease_name.trim().is_empty() {
                return Err("--full-snapshot-lease-name must not be empty with --enable-snapshot-lease-renewal".into());
            }
            if self.delta_snapshot_lease_name.trim().is_empty() {
                return Err("--delta-snapshot-lease-name must not be empty with --enable-snapshot-lease-renewal".into());
            }
        }
        Ok(())
    }
}

/// The Go tool's member-Lease flags (`server`): a Lease named `$POD_NAME` whose
/// `holderIdentity` says this member's id, cluster id and role, renewed on a heartbeat.
#[derive(Debug, Clone, Args)]
pub struct MemberLeaseArgs {
    /// Renew this member's Lease (`$POD_NAME` in `$POD_NAMESPACE`) every --k8s-heartbeat-duration.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub enable_member_lease_renewal: bool,
    /// How often the member Lease is renewed; must be positive.
    #[arg(long, default_value = "30s", value_parser = crate::pflag::go_duration)]
    pub k8s_heartbeat_duration: Duration,
}

impl MemberLeaseArgs {
    /// The Go tool's check: the heartbeat must be positive (checked whether or not renewal is on).
    pub fn check(&self) -> Result<(), String> {
        if self.k8s_heartbeat_duration.is_zero() {
            return Err("--k8s-heartbeat-duration must be greater than zero".into());
        }
        Ok(())
    }
}

/// The member(s) a restore creates and how it reads the backups: the reference's restoration
/// flags, shared by `restore`, `initialize` and `server`.
#[derive(Debug, Clone, Args)]
pub struct RestorationArgs {
    /// The data dir to create; it must not hold `member/`.
    #[arg(short = 'd', long, default_value = "default.etcd")]
    pub data_dir: PathBuf,
    /// Where the decompressed full snapshot is kept while it is read (default: inside
    /// `<data-dir>.part`, on the data dir's file system and removed with it; the Go tool's
    /// default is `default.restoration.tmp` in the working directory).
    #[arg(long)]
    pub restoration_temp_snapshots_dir: Option<PathBuf>,
    /// The restored member's name.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The cluster: name=peer-url pairs, comma separated.
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// The cluster token that seeds member and cluster ids.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs; must match its entry in --initial-cluster.
    #[arg(long, value_delimiter = ',', default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Accept a full snapshot that carries no sha256 trailer.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub skip_hash_check: bool,
    /// Deltas downloaded at once.
    #[arg(long, default_value_t = 6)]
    pub max_fetchers: usize,
    /// Bytes of memory a restore may use for deltas read and decoded ahead of the db writer
    /// (etcdbr's own flag). A delta larger than half of it is decoded as it streams, alone.
    /// More lets more deltas decode in parallel; the db writer and the mapped full snapshot
    /// (together about 60 MiB) and the deltas inflated whole in one call (up to 6, at most
    /// 16 MiB of JSON each) come on top.
    #[arg(long, default_value_t = brcore::deltafeed::DEFAULT_BUDGET,
          value_parser = clap::value_parser!(u64).range(8 << 20..))]
    pub restore_memory_budget: u64,
    /// Refuse a restored db larger than this (etcd's --quota-backend-bytes).
    #[arg(long, default_value_t = 8 * 1024 * 1024 * 1024)]
    pub embedded_etcd_quota_bytes: u64,
    /// TTL in seconds for leases the deltas reference but the full snapshot lacks
    /// (default: the largest TTL in the full snapshot, or 3600).
    #[arg(long)]
    pub lease_ttl: Option<i64>,
    /// No-op: the Go tool's embedded etcd setting; the offline restore starts no etcd.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub max_request_bytes: u64,
    /// No-op: the Go tool's embedded etcd setting; the offline restore starts no etcd.
    #[arg(long, default_value_t = 10240)]
    pub max_txn_ops: u64,
    /// No-op: the Go tool's embedded etcd client setting; the offline restore starts no etcd.
    #[arg(long, default_value_t = 10 * 1024 * 1024, allow_negative_numbers = true)]
    pub max_call_send_message_size: i64,
    /// No-op: the Go tool's embedded etcd setting (periodic or revision); the offline restore
    /// starts no etcd.
    #[arg(long, default_value = "periodic", value_parser = ["periodic", "revision"])]
    pub auto_compaction_mode: String,
    /// No-op: the Go tool's embedded etcd setting; the offline restore starts no etcd.
    #[arg(long, default_value = "30m")]
    pub auto_compaction_retention: String,
}

/// `etcdbrctl restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The store to read backups from (never written to).
    #[command(flatten)]
    pub store: StoreArgs,
    /// The new member and how to read the backups.
    #[command(flatten)]
    pub restoration: RestorationArgs,
    /// Restore the state at this revision instead of the latest.
    #[arg(long, conflicts_with = "to_time")]
    pub to_revision: Option<u64>,
    /// Restore the state at this time (RFC 3339, e.g. 2026-11-25T13:00:00Z, or unix seconds).
    #[arg(long)]
    pub to_time: Option<String>,
    /// Add this many revisions on top (with --mark-compacted), so Kubernetes watch caches
    /// re-list; when the store holds newer revisions than the restored one, on top of the
    /// store's newest.
    #[arg(long, requires = "mark_compacted")]
    pub bump_revision: Option<i64>,
    /// Keep the restored revision even when the store holds newer revisions. By default such a
    /// restore (back in time) begins a new history: its revision is bumped past the store's
    /// newest (by --bump-revision, or 1000000000) and marked compacted, so the backups taken
    /// after it sort above the old ones for this tool and the Go tool alike. With this flag the
    /// Go etcdbrctl may later restore the old history, or mix both.
    #[arg(long)]
    pub keep_revision: bool,
    /// Schedule a compaction at the bumped revision (required by --bump-revision).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub mark_compacted: bool,
    /// Fetch and verify the whole chain and print what would be restored; leave no data dir.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub dry_run: bool,
}

/// How `status` and `verify` reach the live etcd they compare the backups with: the
/// snapshotter's connection flags, but no endpoint by default (the store alone).
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd client URLs to compare the backups with; none: look at the store alone.
    #[arg(short = 'e', long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Limit for connecting to etcd and for each request.
    #[arg(long, default_value = "30s", value_parser = crate::pflag::go_duration)]
    pub etcd_connection_timeout: std::time::Duration,
    /// etcd's TLS and credentials.
    #[command(flatten)]
    pub auth: EtcdAuthArgs,
}

/// How etcdbr authenticates to etcd and checks etcd's certificate: the connection flags the
/// snapshotter (`snapshot`, `server`) and `status` and `verify` share (see `cmd::etcd_access`).
#[derive(Debug, Clone, Args)]
pub struct EtcdAuthArgs {
    /// Client certificate (PEM) for etcd.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// CA bundle (PEM) that signs etcd's certificate.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Talk to etcd without TLS unless a certificate flag is given (`=false`: TLS with the
    /// system's roots).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub insecure_transport: bool,
    /// Differs from the Go tool on purpose: etcd's certificate is always verified (with --cacert
    /// or the system's roots); `=true` only warns. (The Go tool's default is true, which skips
    /// verification whenever TLS is on; etcd-druid passes `=false`.)
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub insecure_skip_tls_verify: bool,
    /// etcd user name (with --etcd-password).
    #[arg(long)]
    pub etcd_username: Option<String>,
    /// etcd password (with --etcd-username).
    #[arg(long)]
    pub etcd_password: Option<String>,
}

/// `-w` of `status` and `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WriteOut {
    /// Human-readable.
    Simple,
    /// One JSON document.
    Json,
}

/// `etcdbrctl db ...`: offline inspection of a db or snapshot file.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Revision, compacted revision, keys, size and hash, as `etcdutl snapshot status` prints them.
    Status {
        /// A bbolt db (`member/snap/db`) or an etcd snapshot file.
        file: PathBuf,
        /// Output format.
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: OutputFormat,
    },
    /// etcd's HashKV of the file at a revision, computed offline.
    Hashkv {
        /// A bbolt db or an etcd snapshot file.
        file: PathBuf,
        /// The revision (default: the latest).
        #[arg(long)]
        rev: Option<i64>,
        /// Output format.
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: OutputFormat,
    },
    /// Check the file's bbolt structure; exit 0 when clean, 3 with the findings otherwise.
    Check {
        /// A bbolt db or an etcd snapshot file.
        file: PathBuf,
    },
}

/// How `db` sub-commands print.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable.
    Simple,
    /// JSON, as etcdutl's `-w json`.
    Json,
}

/// Accepts the reference's provider names (and the empty string), keeping the spelling: the
/// server and initializer read an empty provider as "no store".
pub(crate) fn provider_name(s: &str) -> Result<String, String> {
    s.parse::<snapstore::Provider>().map(|_| s.to_string()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    fn parse(argv: &[&str]) -> Result<Command, clap::Error> {
        let mut full = vec!["etcdbrctl"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|c| c.command.expect("a sub-command"))
    }

    fn restore(argv: &[&str]) -> RestoreArgs {
        let mut full = vec!["restore"];
        full.extend_from_slice(argv);
        match parse(&full).unwrap() {
            Command::Restore(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn server(argv: &[&str]) -> crate::cmd::server::ServerArgs {
        let mut full = vec!["server"];
        full.extend_from_slice(argv);
        match parse(&full).unwrap() {
            Command::Server(a) => a,
            other => panic!("{other:?}"),
        }
    }

    /// pflag keeps the last value of a repeated flag; clap would refuse it by default.
    #[test]
    fn the_last_of_a_repeated_flag_wins() {
        let a =
            restore(&["--store-prefix", "a", "--store-prefix=b", "--name", "x", "--name", "y", "-d", "d1", "-d", "d2"]);
        assert_eq!(a.store.store_prefix, "b");
        assert_eq!(a.restoration.name, "y");
        assert_eq!(a.restoration.data_dir, PathBuf::from("d2"));
        let a = restore(&["--skip-hash-check", "--skip-hash-check=false"]);
        assert!(!a.restoration.skip_hash_check);
        let s = server(&[
            "--server-port=1",
            "-p",
            "2",
            "--enable-snapshot-lease-renewal=false",
            "--enable-snapshot-lease-renewal",
        ]);
        assert_eq!(s.server_port, 2);
        assert!(s.snapshot_leases.enable_snapshot_lease_renewal);
        // List flags (pflag StringSlice and StringArray) accumulate, as pflag's do.
        let s = server(&["--endpoints", "http://a:2379", "--endpoints=http://b:2379,http://c:2379"]);
        assert_eq!(s.snapshot.endpoints, ["http://a:2379", "http://b:2379", "http://c:2379"]);
    }

    /// Every boolean takes `--flag`, `--flag=true|false` and strconv.ParseBool's spellings.
    #[test]
    fn every_boolean_takes_pflag_forms() {
        let cases: &[(&str, &[&str])] = &[
            ("restore", &["skip-hash-check", "mark-compacted", "dry-run"]),
            (
                "initialize",
                &["skip-hash-check", "delete-invalid-member-dir", "insecure-transport", "insecure-skip-tls-verify"],
            ),
            (
                "server",
                &[
                    "skip-hash-check",
                    "delete-invalid-member-dir",
                    "compress-snapshots",
                    "insecure-transport",
                    "insecure-skip-tls-verify",
                    "enable-profiling",
                    "use-etcd-wrapper",
                    "enable-snapshot-lease-renewal",
                    "enable-member-lease-renewal",
                ],
            ),
            ("snapshot", &["compress-snapshots", "insecure-transport", "insecure-skip-tls-verify"]),
            ("compact", &["compress-snapshots", "defragment", "enable-snapshot-lease-renewal"]),
            ("status", &["insecure-transport", "insecure-skip-tls-verify"]),
        ];
        for (command, flags) in cases {
            for flag in *flags {
                for form in [
                    format!("--{flag}"),
                    format!("--{flag}=true"),
                    format!("--{flag}=false"),
                    format!("--{flag}=T"),
                    format!("--{flag}=0"),
                ] {
                    let parsed = parse(&[command, &form]);
                    assert!(parsed.is_ok(), "{command} {form}: {}", parsed.unwrap_err());
                }
                assert!(parse(&[command, &format!("--{flag}=yes")]).is_err(), "{command} --{flag}=yes");
            }
        }
        let a = restore(&["--skip-hash-check=true"]);
        assert!(a.restoration.skip_hash_check);
        let a = restore(&["--skip-hash-check"]);
        assert!(a.restoration.skip_hash_check);
        let a = restore(&["--skip-hash-check=False"]);
        assert!(!a.restoration.skip_hash_check);
    }

    /// Go durations, negative ones included: every duration flag reads a negative value as zero
    /// (what the Go tool does with it: disabled, immediate, or refused as not positive).
    #[test]
    fn durations_are_go_durations() {
        let s = server(&["--delta-snapshot-period=-1s", "--k8s-heartbeat-duration=1m30s", "--reelection-period=1.5s"]);
        assert_eq!(s.snapshot.delta_snapshot_period, Duration::ZERO);
        assert_eq!(s.member_lease.k8s_heartbeat_duration, Duration::from_secs(90));
        assert_eq!(s.reelection_period, Duration::from_millis(1500));
        assert!(parse(&["server", "--garbage-collection-period=1d"]).is_err(), "Go has no day unit");
    }

    #[test]
    fn no_op_flags_take_the_go_types_and_defaults() {
        let a = restore(&[]);
        assert_eq!(a.restoration.max_request_bytes, 10 * 1024 * 1024);
        assert_eq!(a.restoration.max_txn_ops, 10240);
        assert_eq!(a.restoration.max_call_send_message_size, 10 * 1024 * 1024);
        assert_eq!(a.restoration.auto_compaction_mode, "periodic");
        assert_eq!(a.restoration.auto_compaction_retention, "30m");
        assert!(parse(&["restore", "--auto-compaction-mode=hourly"]).is_err(), "Go: periodic or revision");
        assert!(parse(&["restore", "--max-txn-ops=many"]).is_err());
        let s = server(&[]);
        assert_eq!(s.snapshot.backoff_multiplier, 2);
        assert_eq!(s.snapshot.backoff_attempt_limit, 6);
        assert_eq!(s.snapshot.backoff_threshold_time, Duration::from_secs(128));
        assert!(parse(&["snapshot", "--service-endpoints=http://etcd-main-client:2379"]).is_ok());
        assert!(
            parse(&[
                "initialize",
                "--etcd-username=u",
                "--etcd-password=p",
                "--cert=/c",
                "--key=/k",
                "--cacert=/ca",
                "--etcd-snapshot-timeout=15m",
                "--etcd-defrag-timeout=8m",
                "--insecure-transport",
                "-e",
                "http://a:2379"
            ])
            .is_ok()
        );
    }

    /// docs/flags.md lists every flag of the Go tool's six commands (203 pairs): each one must
    /// be accepted by that command here, with the Go short name, and no row may say "missing".
    #[test]
    fn every_go_flag_in_the_docs_table_is_accepted() {
        use clap::CommandFactory;
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/flags.md")).unwrap();
        let mut cli = Cli::command();
        cli.build(); // propagates the global flags (--log-level) to the sub-commands
        let mut command: Option<&clap::Command> = None;
        let mut pairs = 0;
        for line in doc.lines() {
            if let Some(name) = line.strip_prefix("## `").and_then(|l| l.split('`').next()) {
                command = cli.find_subcommand(name);
                assert!(command.is_some(), "docs/flags.md names an unknown command {name}");
                continue;
            }
            let Some(cmd) = command else { continue };
            let Some(first) = line.strip_prefix("| `-").map(|l| l.split(" |").next().unwrap_or_default()) else {
                continue;
            };
            assert!(!line.to_ascii_lowercase().contains("missing"), "{line}");
            let cell = format!("`-{first}");
            let names: Vec<&str> = cell.split(", ").map(|n| n.trim_matches('`')).collect();
            let long = names.iter().find_map(|n| n.strip_prefix("--")).expect("a long name");
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .unwrap_or_else(|| panic!("`{}` does not accept --{long}", cmd.get_name()));
            if let Some(short) = names.iter().find_map(|n| n.strip_prefix('-').filter(|s| !s.starts_with('-'))) {
                assert_eq!(arg.get_short().map(String::from), Some(short.to_string()), "{line}");
            }
            assert!(!arg.is_hide_set(), "--{long} of `{}` must show in --help", cmd.get_name());
            pairs += 1;
        }
        assert_eq!(pairs, 203, "the Go tool's 203 command/flag pairs");
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn version_is_minus_v_and_no_sub_command_is_allowed() {
        let e = Cli::try_parse_from(["etcdbrctl", "-v"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        let e = Cli::try_parse_from(["etcdbrctl", "--version"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        assert!(Cli::try_parse_from(["etcdbrctl"]).unwrap().command.is_none());
        let c = Cli::try_parse_from(["etcdbrctl", "server", "--log-level=4"]).unwrap();
        assert_eq!(c.log_level, "info");
        let c = Cli::try_parse_from(["etcdbrctl", "server", "--log-level", "5"]).unwrap();
        assert_eq!(c.log_level, "debug");
    }
}
