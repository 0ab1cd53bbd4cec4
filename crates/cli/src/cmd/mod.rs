//! The sub-commands: each turns flags into a checked config and calls the library crates.

pub(crate) mod compact;
pub(crate) mod copy;
mod db;
pub(crate) mod initialize;
mod restore;
pub(crate) mod server;
pub(crate) mod snapshot;

use crate::flags::Command;

/// Any failure not listed below.
pub const EXIT_FAILURE: u8 = 1;
/// A backup or db file is damaged, or a chain of backups has a gap.
pub const EXIT_CORRUPT: u8 = 3;
/// The operation was refused to protect data (a data dir that holds `member/`, a quota).
pub const EXIT_REFUSED: u8 = 4;
/// There is no backup to restore from.
pub const EXIT_NO_BACKUP: u8 = 5;
/// The object store (or etcd) could not be reached or refused our credentials.
pub const EXIT_UNAVAILABLE: u8 = 6;

/// Runs one sub-command.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Restore(args) => restore::run(args).await,
        Command::Db(cmd) => db::run(cmd),
        Command::Initialize(args) => initialize::run(args).await,
        Command::Snapshot(args) => snapshot::run(args).await,
        Command::Server(args) => server::run(args).await,
        Command::Compact(args) => compact::run(args).await,
        Command::Copy(args) => copy::run(args).await,
    }
}

/// The one line printed for an error: the context chain, outermost first.
pub fn render_error(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}

/// The exit code for an error, from the first domain error in its chain.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(err) = cause.downcast_ref::<brcore::error::Error>() {
            return brcore_exit_code(err);
        }
        if cause.downcast_ref::<db::FindingsError>().is_some() {
            return EXIT_CORRUPT;
        }
    }
    EXIT_FAILURE
}

fn brcore_exit_code(err: &brcore::error::Error) -> u8 {
    use brcore::error::Error;
    match err {
        Error::Corrupt { .. } | Error::Gap { .. } | Error::Conflict { .. } => EXIT_CORRUPT,
        Error::Refused { .. } => EXIT_REFUSED,
        Error::NotFound { .. } => EXIT_NO_BACKUP,
        Error::Store(_) | Error::Etcd { .. } => EXIT_UNAVAILABLE,
        _ => EXIT_FAILURE,
    }
}

/// The store config from the store flags.
pub fn store_config(args: &crate::flags::StoreArgs) -> snapstore::StoreConfig {
    snapstore::StoreConfig {
        // The flag's value parser accepted only known names.
        provider: args.storage_provider.parse().unwrap_or(snapstore::Provider::Local),
        container: args.store_container.clone(),
        prefix: args.store_prefix.clone(),
        endpoint_override: args.store_endpoint_override.clone(),
        max_parallel_chunk_uploads: args.max_parallel_chunk_uploads,
        min_chunk_size: args.min_chunk_size,
        temp_dir: args.snapstore_temp_directory.clone(),
        env_prefix: String::new(),
    }
}

/// Completes on SIGTERM or ctrl-c.
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on ctrl-c only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
