//! `etcdbrctl copy`: copy backups from a source store to a destination store.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use brcore::copy::{CopyPlan, copy, wait_for_final_full};
use brcore::error::Error as CoreError;
use clap::{ArgAction, Args};
use tracing::info;

use super::store_config;
use crate::flags::StoreArgs;
use crate::pflag::GoDuration;

/// How often the source is looked at for a final full snapshot (the reference's interval).
const FINAL_SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// `etcdbrctl copy`: the store flags name the destination; `--source-*` the source, which
/// inherits the destination's provider and prefix when not given (as in the reference); its
/// endpoint override, container and credentials are its own.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The destination store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The source's provider (default: the destination's).
    #[arg(long, value_parser = crate::flags::provider_name)]
    pub source_storage_provider: Option<String>,
    /// The source's bucket / container (or `SOURCE_STORAGE_CONTAINER`).
    #[arg(long, env = "SOURCE_STORAGE_CONTAINER")]
    pub source_store_container: Option<String>,
    /// The source's prefix (default: the destination's).
    #[arg(long)]
    pub source_store_prefix: Option<String>,
    /// The source's endpoint override (default: none; never the destination's).
    #[arg(long)]
    pub source_store_endpoint_override: Option<String>,
    /// No-op: the source is only read, so no part is uploaded to it (checked as the Go tool
    /// checks it: at least 1).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub source_max_parallel_chunk_uploads: u64,
    /// No-op: the source is only read, so no part is uploaded to it (checked as the Go tool
    /// checks it: at least 5 MiB).
    #[arg(long, default_value_t = 5 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(5 * 1024 * 1024..))]
    pub source_min_chunk_size: u64,
    /// Temp directory for the source's transfers (created; nothing is spooled there).
    #[arg(long, default_value = "/tmp")]
    pub source_snapstore_temp_directory: PathBuf,
    /// Copy only the newest this many backup sets (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub max_backups_to_copy: i64,
    /// Copy only backup sets younger than this many days (-1: any age).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub max_backup_age: i64,
    /// Objects copied at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_parallel_copy_operations: u64,
    /// Before copying, wait until the source holds a final full snapshot (`.final`, the one the
    /// sidecar takes when it is told to stop) among its newest four full snapshots, looking
    /// every 15 s.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = crate::pflag::go_bool)]
    pub wait_for_final_snapshot: bool,
    /// How long to wait for the final full snapshot; then what there is gets copied (0: no
    /// limit; negative values are refused, as the Go tool does).
    #[arg(long, default_value = "0s", value_parser = crate::pflag::go_duration_signed, allow_hyphen_values = true)]
    pub wait_for_final_snapshot_timeout: GoDuration,
    /// etcdbr's own: the age identity file to decrypt the source with (default:
    /// --encryption-key-file). With both, the copies are re-encrypted to --encryption-key-file's
    /// first key: a copy to another key, or a store moved to a new key. Refused without
    /// --encryption-key-file, which would write the backups decrypted.
    #[arg(long, env = "ETCDBR_SOURCE_ENCRYPTION_KEY_FILE")]
    pub source_encryption_key_file: Option<PathBuf>,
}

/// The source store's config: the destination's provider and prefix when not given, its own
/// container, endpoint override and (`SOURCE_`-prefixed) credentials.
pub(crate) fn source_config(args: &CopyArgs, dest: &snapstore::StoreConfig) -> anyhow::Result<snapstore::StoreConfig> {
    let mut source = dest.clone();
    if let Some(provider) = args.source_storage_provider.as_deref().filter(|p| !p.trim().is_empty()) {
        source.provider = provider.parse().with_context(|| format!("--source-storage-provider {provider}"))?;
    }
    source.container = args.source_store_container.clone();
    if let Some(prefix) = &args.source_store_prefix {
        source.prefix = prefix.clone();
    }
    source.endpoint_override = args.source_store_endpoint_override.clone().filter(|e| !e.trim().is_empty());
    source.temp_dir = args.source_snapstore_temp_directory.clone();
    // Credentials of the source come from the SOURCE_-prefixed variables, as in the reference.
    source.env_prefix = "SOURCE_".to_string();
    Ok(source)
}

/// The flag values `run` refuses, checked at start (see `crate::validate`); returns the source
/// store's config.
pub(crate) fn check_flags(args: &CopyArgs) -> anyhow::Result<snapstore::StoreConfig> {
    if args.wait_for_final_snapshot_timeout.negative {
        bail!("--wait-for-final-snapshot-timeout must not be less than 0");
    }
    if args.source_encryption_key_file.is_some() && args.store.encryption_key_file.is_none() {
        bail!(
            "--source-encryption-key-file given without --encryption-key-file: the copies would be \
             written decrypted; give --encryption-key-file with the key to encrypt them to"
        );
    }
    super::encryption_keys(args.source_encryption_key_file.as_deref(), "--source-encryption-key-file")?;
    source_config(args, &store_config(&args.store))
}

pub async fn run(args: CopyArgs) -> anyhow::Result<()> {
    let source_config = check_flags(&args)?;
    let dest_config = store_config(&args.store);
    let dest_keys = super::encryption_keys(args.store.encryption_key_file.as_deref(), "--encryption-key-file")?;
    let source_keys = match &args.source_encryption_key_file {
        Some(file) => super::encryption_keys(Some(file), "--source-encryption-key-file")?,
        None => dest_keys.clone(),
    };
    let source = super::open_encrypted(&source_config, source_keys).context("cannot open the source store")?;
    let dest = super::open_encrypted(&dest_config, dest_keys).context("cannot open the destination store")?;
    if args.wait_for_final_snapshot {
        let timeout = args.wait_for_final_snapshot_timeout.magnitude;
        info!(timeout = ?timeout, "waiting for a final full snapshot in the source");
        let wait = wait_for_final_full(
            source.as_ref(),
            &source_config.prefix,
            FINAL_SNAPSHOT_CHECK_INTERVAL,
            (!timeout.is_zero()).then_some(timeout),
        );
        match wait.await.context("could not wait for a final full snapshot")? {
            Some(final_full) => println!("final full snapshot found: {}", final_full.key),
            None => println!("no final full snapshot within {timeout:?}: copying what there is"),
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64;
    let mut plan = CopyPlan::new(source_config.prefix.clone(), dest_config.prefix.clone(), now);
    plan.max_backups = usize::try_from(args.max_backups_to_copy).ok();
    plan.max_age_secs = (args.max_backup_age >= 0).then(|| args.max_backup_age * 24 * 3600);
    plan.parallel = usize::try_from(args.max_parallel_copy_operations).unwrap_or(usize::MAX).max(1);
    plan.write = brcore::WriteOptions::new(args.store.max_parallel_chunk_uploads.max(1), args.store.min_chunk_size);
    let report = match copy(source, dest, &plan).await {
        Ok(report) => report,
        // As the Go tool: no source backups, nothing to copy, exit 0.
        Err(CoreError::NotFound { what }) => {
            println!("nothing to copy: {what}");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "copied {} objects ({} bytes); {} already in the destination",
        report.copied.len(),
        report.bytes,
        report.skipped.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> CopyArgs {
        crate::cmd::parse_args(argv).unwrap()
    }

    /// The source inherits the destination's provider and prefix, never its endpoint override
    /// or container (the Go tool's `MergeWith`).
    #[test]
    fn the_source_has_its_own_endpoint_override() {
        let a = parse(&[
            "--storage-provider=S3",
            "--store-container=dest",
            "--store-prefix=p",
            "--store-endpoint-override=http://minio:9000",
            "--source-store-container=src",
        ]);
        let dest = store_config(&a.store);
        let source = source_config(&a, &dest).unwrap();
        assert_eq!(source.endpoint_override, None, "not the destination's");
        assert_eq!(source.provider, snapstore::Provider::S3);
        assert_eq!(source.prefix, "p");
        assert_eq!(source.container.as_deref(), Some("src"));
        assert_eq!(source.env_prefix, "SOURCE_");
        let a = parse(&[
            "--storage-provider=S3",
            "--store-container=dest",
            "--source-storage-provider=GCS",
            "--source-store-prefix=q",
            "--source-store-endpoint-override=http://fake-gcs:4443",
        ]);
        let source = source_config(&a, &store_config(&a.store)).unwrap();
        assert_eq!(source.endpoint_override.as_deref(), Some("http://fake-gcs:4443"));
        assert_eq!(source.provider, snapstore::Provider::GCS);
        assert_eq!(source.prefix, "q");
    }

    #[test]
    fn the_go_checks_hold() {
        let a = parse(&["--wait-for-final-snapshot", "--wait-for-final-snapshot-timeout=1m30s"]);
        assert!(a.wait_for_final_snapshot);
        assert_eq!(a.wait_for_final_snapshot_timeout.magnitude, Duration::from_secs(90));
        assert!(parse(&["--wait-for-final-snapshot-timeout=-1s"]).wait_for_final_snapshot_timeout.negative);
        for bad in [
            &["--max-backups-to-copy=-2"][..],
            &["--max-backup-age=-2"],
            &["--max-parallel-copy-operations=0"],
            &["--source-min-chunk-size=1024"],
            &["--source-max-parallel-chunk-uploads=0"],
            &["--source-storage-provider=Dropbox"],
        ] {
            assert!(crate::cmd::parse_args::<CopyArgs>(bad).is_err(), "{bad:?}");
        }
    }
}
