//! `etcdbrctl copy`: copy backups from a source store to a destination store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use brcore::copy::{CopyPlan, copy};
use clap::Args;

use super::store_config;
use crate::flags::StoreArgs;

/// `etcdbrctl copy`: the store flags name the destination; `--source-*` the source, which
/// inherits the destination's provider and prefix when not given (as in the reference).
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The destination store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The source's provider (default: the destination's).
    #[arg(long)]
    pub source_storage_provider: Option<String>,
    /// The source's bucket / container (or `SOURCE_STORAGE_CONTAINER`).
    #[arg(long, env = "SOURCE_STORAGE_CONTAINER")]
    pub source_store_container: Option<String>,
    /// The source's prefix (default: the destination's).
    #[arg(long)]
    pub source_store_prefix: Option<String>,
    /// The source's endpoint override.
    #[arg(long)]
    pub source_store_endpoint_override: Option<String>,
    /// Copy only the newest this many backup sets (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub max_backups_to_copy: i64,
    /// Copy only backup sets younger than this many days (-1: any age).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub max_backup_age: i64,
    /// Objects copied at once.
    #[arg(long, default_value_t = 10)]
    pub max_parallel_copy_operations: usize,
}

pub async fn run(args: CopyArgs) -> anyhow::Result<()> {
    let dest_config = store_config(&args.store);
    let mut source_config = dest_config.clone();
    if let Some(provider) = &args.source_storage_provider {
        source_config.provider = provider.parse().with_context(|| format!("--source-storage-provider {provider}"))?;
    }
    source_config.container = args.source_store_container.clone();
    if let Some(prefix) = &args.source_store_prefix {
        source_config.prefix = prefix.clone();
    }
    source_config.endpoint_override = args.source_store_endpoint_override.clone().or(source_config.endpoint_override);
    // Credentials of the source come from the SOURCE_-prefixed variables, as in the reference.
    source_config.env_prefix = "SOURCE_".to_string();
    let source = snapstore::open(&source_config).context("cannot open the source store")?;
    let dest = snapstore::open(&dest_config).context("cannot open the destination store")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() as i64;
    let plan = CopyPlan {
        source_prefix: source_config.prefix.clone(),
        dest_prefix: dest_config.prefix.clone(),
        max_backups: usize::try_from(args.max_backups_to_copy).ok(),
        max_age_secs: (args.max_backup_age >= 0).then(|| args.max_backup_age * 24 * 3600),
        parallel: args.max_parallel_copy_operations.max(1),
        write: brcore::WriteOptions {
            max_parallel_parts: args.store.max_parallel_chunk_uploads.max(1),
            part_size: args.store.min_chunk_size,
        },
        now,
    };
    let report = copy(source, dest, &plan).await?;
    println!(
        "copied {} objects ({} bytes); {} already in the destination",
        report.copied.len(),
        report.bytes,
        report.skipped.len()
    );
    Ok(())
}
