//! `server --config-file`: the Go tool's component config (YAML, the JSON field names of its
//! `BackupRestoreComponentConfig`, matched case-insensitively as Go's `encoding/json` matches
//! them) turned into the flags it stands for.
//!
//! As in the Go tool, the file replaces the Go tool's flags: settings it leaves out take their
//! defaults, and such flags given beside it are ignored (with a warning). `--log-level` and
//! etcdbr's own flags (not in the Go config) still come from the command line.

use std::path::Path;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use serde_json::Value;

/// One config key and the flag it sets.
struct Key {
    /// The JSON path, e.g. `etcdConnectionConfig.endpoints`.
    path: &'static str,
    /// The flag's long name, `None` for keys with no flag (accepted and unused, as in the Go
    /// tool's server).
    flag: Option<&'static str>,
}

const fn k(path: &'static str, flag: &'static str) -> Key {
    Key { path, flag: Some(flag) }
}

const fn unused(path: &'static str) -> Key {
    Key { path, flag: None }
}

/// Every key of the Go v0.43.0 config (pkg/server/types.go and the types it embeds).
const KEYS: &[Key] = &[
    k("etcdConnectionConfig.endpoints", "endpoints"),
    k("etcdConnectionConfig.serviceEndpoints", "service-endpoints"),
    k("etcdConnectionConfig.username", "etcd-username"),
    k("etcdConnectionConfig.password", "etcd-password"),
    k("etcdConnectionConfig.connectionTimeout", "etcd-connection-timeout"),
    k("etcdConnectionConfig.snapshotTimeout", "etcd-snapshot-timeout"),
    k("etcdConnectionConfig.defragTimeout", "etcd-defrag-timeout"),
    unused("etcdConnectionConfig.maxCallSendMsgSize"),
    k("etcdConnectionConfig.insecureTransport", "insecure-transport"),
    k("etcdConnectionConfig.insecureSkipVerify", "insecure-skip-tls-verify"),
    k("etcdConnectionConfig.certFile", "cert"),
    k("etcdConnectionConfig.keyFile", "key"),
    k("etcdConnectionConfig.caFile", "cacert"),
    k("serverConfig.server-cert", "server-cert"),
    k("serverConfig.server-key", "server-key"),
    k("serverConfig.port", "server-port"),
    k("serverConfig.enableProfiling", "enable-profiling"),
    k("snapshotterConfig.schedule", "schedule"),
    k("snapshotterConfig.garbageCollectionPolicy", "garbage-collection-policy"),
    k("snapshotterConfig.deltaSnapshotPeriod", "delta-snapshot-period"),
    k("snapshotterConfig.deltaSnapshotMemoryLimit", "delta-snapshot-memory-limit"),
    k("snapshotterConfig.garbageCollectionPeriod", "garbage-collection-period"),
    k("snapshotterConfig.maxBackups", "max-backups"),
    k("snapshotterConfig.deltaSnapshotRetentionPeriod", "delta-snapshot-retention-period"),
    k("snapstoreConfig.provider", "storage-provider"),
    k("snapstoreConfig.container", "store-container"),
    k("snapstoreConfig.endpointOverride", "store-endpoint-override"),
    k("snapstoreConfig.prefix", "store-prefix"),
    k("snapstoreConfig.tempDir", "snapstore-temp-directory"),
    unused("snapstoreConfig.envPrefix"),
    k("snapstoreConfig.maxParallelChunkUploads", "max-parallel-chunk-uploads"),
    k("snapstoreConfig.minChunkSize", "min-chunk-size"),
    unused("snapstoreConfig.isSource"),
    k("secondarySnapstoreConfig.StoreConfig.provider", "secondary-storage-provider"),
    k("secondarySnapstoreConfig.StoreConfig.container", "secondary-store-container"),
    k("secondarySnapstoreConfig.StoreConfig.endpointOverride", "secondary-store-endpoint-override"),
    k("secondarySnapstoreConfig.StoreConfig.prefix", "secondary-store-prefix"),
    k("secondarySnapstoreConfig.StoreConfig.tempDir", "secondary-snapstore-temp-directory"),
    unused("secondarySnapstoreConfig.StoreConfig.envPrefix"),
    k("secondarySnapstoreConfig.StoreConfig.maxParallelChunkUploads", "secondary-max-parallel-chunk-uploads"),
    k("secondarySnapstoreConfig.StoreConfig.minChunkSize", "secondary-min-chunk-size"),
    unused("secondarySnapstoreConfig.StoreConfig.isSource"),
    k("secondarySnapstoreConfig.backupSyncEnabled", "secondary-backup-sync-enabled"),
    k("secondarySnapstoreConfig.syncPeriod", "secondary-backup-sync-period"),
    k("compressionConfig.enabled", "compress-snapshots"),
    k("compressionConfig.policy", "compression-policy"),
    k("restorationConfig.initialCluster", "initial-cluster"),
    k("restorationConfig.initialClusterToken", "initial-cluster-token"),
    k("restorationConfig.dataDir", "data-dir"),
    k("restorationConfig.tempDir", "restoration-temp-snapshots-dir"),
    k("restorationConfig.name", "name"),
    k("restorationConfig.autoCompactionRetention", "auto-compaction-retention"),
    k("restorationConfig.autoCompactionMode", "auto-compaction-mode"),
    k("restorationConfig.initialAdvertisePeerURLs", "initial-advertise-peer-urls"),
    k("restorationConfig.MaxTxnOps", "max-txn-ops"),
    k("restorationConfig.MaxRequestBytes", "max-request-bytes"),
    k("restorationConfig.maxCallSendMsgSize", "max-call-send-message-size"),
    k("restorationConfig.embeddedEtcdQuotaBytes", "embedded-etcd-quota-bytes"),
    k("restorationConfig.maxFetchers", "max-fetchers"),
    k("restorationConfig.skipHashCheck", "skip-hash-check"),
    k("healthConfig.fullSnapshotLeaseName", "full-snapshot-lease-name"),
    k("healthConfig.deltaSnapshotLeaseName", "delta-snapshot-lease-name"),
    k("healthConfig.heartbeatDuration", "k8s-heartbeat-duration"),
    k("healthConfig.snapshotLeaseRenewalEnabled", "enable-snapshot-lease-renewal"),
    k("healthConfig.memberLeaseRenewalEnabled", "enable-member-lease-renewal"),
    k("leaderElectionConfig.reelectionPeriod", "reelection-period"),
    k("leaderElectionConfig.etcdConnectionTimeout", "etcd-connection-timeout-leader-election"),
    k("exponentialBackoffConfig.multiplier", "backoff-multiplier"),
    k("exponentialBackoffConfig.attemptLimit", "backoff-attempt-limit"),
    k("exponentialBackoffConfig.thresholdTime", "backoff-threshold-time"),
    k("defragmentationSchedule", "defragmentation-schedule"),
    k("useEtcdWrapper", "use-etcd-wrapper"),
];

/// The `server` flags the Go config cannot set: taken from the command line even with a config
/// file (`--log-level` is global and stays where it is).
const OWN_FLAGS: &[&str] = &[
    "server_auth_token",
    "validation_mode",
    "delete_invalid_member_dir",
    "sidecar_endpoints",
    "compression_level",
    "lease_ttl",
    // without it the server would write plaintext backups where the operator asked for encryption
    "encryption_key_file",
];

/// Reads the config file and returns the `server` flags it amounts to, `--flag=value` each.
/// Unknown keys are logged and skipped, as Go's JSON decoding skips them.
pub fn flags_from_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read --config-file {}", path.display()))?;
    flags_from_yaml(&text).with_context(|| format!("--config-file {}", path.display()))
}

fn flags_from_yaml(text: &str) -> anyhow::Result<Vec<String>> {
    let root: Value = if text.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("not valid YAML: {e}"))?
    };
    if !root.is_object() {
        bail!("the config must be a YAML mapping (the Go tool's BackupRestoreComponentConfig)");
    }
    let mut flags = Vec::new();
    let mut seen = Vec::new();
    walk(&root, "", &mut flags, &mut seen)?;
    Ok(flags)
}

/// Walks the mapping, turning every known key into a flag.
fn walk(value: &Value, path: &str, flags: &mut Vec<String>, seen: &mut Vec<String>) -> anyhow::Result<()> {
    let Value::Object(map) = value else { return Ok(()) };
    for (name, v) in map {
        let here = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
        if let Some(key) = KEYS.iter().find(|k| k.path.eq_ignore_ascii_case(&here)) {
            if let Some(flag) = key.flag
                && let Some(arg) = flag_value(flag, v).with_context(|| here.clone())?
            {
                flags.push(arg);
            }
            seen.push(here);
        } else if v.is_object()
            && KEYS.iter().any(|k| k.path.to_ascii_lowercase().starts_with(&format!("{}.", here.to_ascii_lowercase())))
        {
            walk(v, &here, flags, seen)?;
        } else {
            tracing::warn!(key = %here, "--config-file: unknown key, ignored (as the Go tool ignores it)");
        }
    }
    Ok(())
}

/// `--flag=value` for one config value; `None` for a null (the default stays).
fn flag_value(flag: &str, v: &Value) -> anyhow::Result<Option<String>> {
    let value = match v {
        Value::Null => return Ok(None),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let mut parts = Vec::new();
            for item in items {
                match item {
                    Value::String(s) => parts.push(s.clone()),
                    Value::Number(n) => parts.push(n.to_string()),
                    other => bail!("expected a list of strings, found {other}"),
                }
            }
            parts.join(",")
        }
        Value::Object(_) => bail!("expected a value, found a mapping"),
    };
    Ok(Some(format!("--{flag}={value}")))
}

/// The command line to parse when `server --config-file` is given: the program, `--log-level`
/// if given, `server`, etcdbr's own flags from the command line, then the file's flags. Returns
/// `None` when no config file is given. Other Go flags beside the file are named in a warning
/// (the caller logs it once logging is up).
pub fn server_argv(matches: &clap::ArgMatches) -> anyhow::Result<Option<(Vec<String>, Vec<String>)>> {
    let Some(("server", sub)) = matches.subcommand() else { return Ok(None) };
    let Some(path) = sub.get_raw("config_file").and_then(|mut v| v.next()) else { return Ok(None) };
    let path = std::path::PathBuf::from(path);
    let mut argv = vec!["etcdbrctl".to_string()];
    if let Some(level) = matches.get_raw("log_level").and_then(|mut v| v.next())
        && matches.value_source("log_level") == Some(ValueSource::CommandLine)
    {
        argv.push(format!("--log-level={}", level.to_string_lossy()));
    }
    argv.push("server".into());
    let mut ignored = Vec::new();
    for id in sub.ids() {
        let id = id.as_str();
        if sub.value_source(id) != Some(ValueSource::CommandLine) || id == "config_file" || id == "log_level" {
            continue;
        }
        let long = id.replace('_', "-");
        if OWN_FLAGS.contains(&id) {
            for raw in sub.get_raw(id).into_iter().flatten() {
                argv.push(format!("--{long}={}", raw.to_string_lossy()));
            }
        } else {
            ignored.push(format!("--{long}"));
        }
    }
    argv.extend(flags_from_file(&path)?);
    Ok(Some((argv, ignored)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Go repository's example/00-backup-restore-server-config.yaml (v0.43.0), as written.
    const GO_EXAMPLE: &str = r#"etcdConnectionConfig:
  endpoints:
  - "http://localhost:2379"
  # username: admin
  connectionTimeout: 10s
  snapshotTimeout: 8m
  defragTimeout: 8m

serverConfig:
  port: 8080

snapshotterConfig:
  schedule: "0 */1 * * *"
  deltaSnapshotPeriod: 20s

snapstoreConfig:
  provider: "Local"
  maxParallelChunkUploads: 5
  tempDir: "/tmp"

restorationConfig:
  initialCluster: "default=http://localhost:2380"
  initialClusterToken: "etcd-cluster"
  restoreDataDir: "default.etcd"
  initialAdvertisePeerURLs:
    - "http://localhost:2380"
  name: "default"
  skipHashCheck: false
  maxFetchers: 6
  embeddedEtcdQuotaBytes: 8589934592
  autoCompactionMode: "periodic"
  autoCompactionRetention: "30m"

defragmentationSchedule: "0 0 */3 * *"
useEtcdWrapper: false

compressionConfig:
   enabled: true
   policy: "gzip"

leaderElectionConfig:
  reelectionPeriod: "5s"
  etcdConnectionTimeout: "5s"

healthConfig:
  snapshotLeaseRenewalEnabled: false
  memberLeaseRenewalEnabled: false
  heartbeatDuration: "30s"
  fullSnapshotLeaseName: "full-snapshot-revisions"
  deltaSnapshotLeaseName: "delta-snapshot-revisions"

exponentialBackoffConfig:
  multiplier: 2
  attemptLimit: 6
  thresholdTime: 128s
"#;

    #[test]
    fn the_go_example_config_becomes_flags() {
        let flags = flags_from_yaml(GO_EXAMPLE).unwrap();
        for expected in [
            "--endpoints=http://localhost:2379",
            "--etcd-connection-timeout=10s",
            "--etcd-snapshot-timeout=8m",
            "--server-port=8080",
            "--schedule=0 */1 * * *",
            "--delta-snapshot-period=20s",
            "--storage-provider=Local",
            "--max-parallel-chunk-uploads=5",
            "--initial-advertise-peer-urls=http://localhost:2380",
            "--skip-hash-check=false",
            "--embedded-etcd-quota-bytes=8589934592",
            "--use-etcd-wrapper=false",
            "--compress-snapshots=true",
            "--reelection-period=5s",
            "--k8s-heartbeat-duration=30s",
            "--backoff-threshold-time=128s",
        ] {
            assert!(flags.contains(&expected.to_string()), "{expected} in {flags:?}");
        }
        // `restoreDataDir` is no key of the Go config: ignored, as Go's JSON decoding does.
        assert!(!flags.iter().any(|f| f.starts_with("--data-dir")), "{flags:?}");
    }

    #[test]
    fn keys_match_case_insensitively_and_nested_secondary_store_works() {
        let mut flags = flags_from_yaml(
            "restorationconfig:\n  maxTxnOps: 100\nsecondarySnapstoreConfig:\n  StoreConfig:\n    provider: S3\n    \
             container: b\n  backupSyncEnabled: true\n  syncPeriod: 5m\n",
        )
        .unwrap();
        flags.sort();
        assert_eq!(
            flags,
            [
                "--max-txn-ops=100",
                "--secondary-backup-sync-enabled=true",
                "--secondary-backup-sync-period=5m",
                "--secondary-storage-provider=S3",
                "--secondary-store-container=b",
            ]
        );
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(flags_from_yaml("- a list").is_err());
        assert!(flags_from_yaml("etcdConnectionConfig:\n  endpoints:\n  - {a: b}\n").is_err());
        assert!(flags_from_yaml("serverConfig: {port: {x: 1}}\n").is_err());
        assert!(flags_from_yaml("").unwrap().is_empty());
    }

    #[test]
    fn the_encryption_key_file_is_kept_beside_a_config_file() {
        use clap::CommandFactory;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "serverConfig:\n  port: 8080\n").unwrap();
        let matches = crate::flags::Cli::command().get_matches_from([
            "etcdbrctl",
            "server",
            "--config-file",
            file.to_str().unwrap(),
            "--encryption-key-file",
            "/etc/etcdbr/backup.key",
        ]);
        let (argv, ignored) = server_argv(&matches).unwrap().unwrap();
        assert!(argv.contains(&"--encryption-key-file=/etc/etcdbr/backup.key".to_string()), "{argv:?}");
        assert!(!ignored.iter().any(|f| f.contains("encryption")), "{ignored:?}");
    }
}
