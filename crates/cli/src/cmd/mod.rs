//! The sub-commands: each turns flags into a checked config and calls the library crates.

pub(crate) mod compact;
pub(crate) mod config_file;
pub(crate) mod copy;
mod db;
pub(crate) mod initialize;
pub(crate) mod leases;
pub(crate) mod restore;
pub(crate) mod server;
pub(crate) mod snapshot;
pub(crate) mod status;
pub(crate) mod verify;

use anyhow::Context as _;

use crate::flags::Command;

/// Any failure not listed below.
pub const EXIT_FAILURE: u8 = 1;
/// Bad flags: clap's own usage errors, and the checks of flag values before any work starts.
pub const EXIT_USAGE: u8 = 2;
/// A backup or db file is damaged, or a chain of backups has a gap.
pub const EXIT_CORRUPT: u8 = 3;
/// The operation was refused to protect data (a data dir that holds `member/`, a quota).
pub const EXIT_REFUSED: u8 = 4;
/// There is no backup to restore from.
pub const EXIT_NO_BACKUP: u8 = 5;
/// The object store (or etcd) could not be reached or refused our credentials.
pub const EXIT_UNAVAILABLE: u8 = 6;
/// `status`: the backups lag etcd by more than `--max-lag`.
pub const EXIT_LAGGING: u8 = 7;
/// `status`: etcd's revision is below the newest backed-up revision (etcd lost data the
/// backups hold, or the store belongs to another cluster).
pub const EXIT_ETCD_BEHIND: u8 = 8;
/// A local file or directory could not be read or written: a full disk, permissions, a
/// read-only filesystem.
pub const EXIT_LOCAL_IO: u8 = 9;

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
        Command::Status(args) => status::run(args).await,
        Command::Verify(args) => verify::run(args).await,
    }
}

/// The one line printed for an error: the context chain, outermost first. A cause whose text
/// its outer error already printed (errors that show their source in their own message) is
/// not repeated.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The flags to look at for an error, where the library's message speaks of values (a quota, a
/// store prefix) that the command line sets through flags. `None` when the message says it all.
pub fn flag_hint(e: &anyhow::Error) -> Option<String> {
    use brcore::error::Error;
    let err = e.chain().find_map(|c| {
        c.downcast_ref::<Error>().or_else(|| match c.downcast_ref::<validator::initializer::InitError>() {
            Some(validator::initializer::InitError::Backup(core)) => Some(core),
            _ => None,
        })
    })?;
    let hint = match err {
        Error::NotFound { .. } => "check --storage-provider, --store-container and --store-prefix".to_string(),
        Error::Conflict { revision, .. } => {
            format!("--to-revision {} restores the state before the conflict", revision - 1)
        }
        Error::Refused { why } if why.contains("quota") => {
            "--embedded-etcd-quota-bytes sets the quota (raise etcd's --quota-backend-bytes with it)".to_string()
        }
        Error::Corrupt { why, .. } if why.contains("no sha256 trailer") => {
            "--skip-hash-check accepts a raw db copied from a data dir".to_string()
        }
        Error::Etcd { message, .. } if message.contains("client certificate") => {
            "--cert and --key must be given together".to_string()
        }
        Error::Etcd { message, .. } if message.contains("did not finish within its timeout") => {
            "--etcd-snapshot-timeout sets that timeout".to_string()
        }
        _ => return None,
    };
    Some(hint)
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
        if let Some(v) = cause.downcast_ref::<Verdict>() {
            return v.code;
        }
        if let Some(err) = cause.downcast_ref::<validator::initializer::InitError>() {
            return init_exit_code(err);
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
        Error::Invalid { .. } => EXIT_USAGE,
        Error::Io { .. } | Error::NoSpace { .. } => EXIT_LOCAL_IO,
        _ => EXIT_FAILURE,
    }
}

fn init_exit_code(err: &validator::initializer::InitError) -> u8 {
    use validator::initializer::InitError;
    match err {
        InitError::Backup(core) => brcore_exit_code(core),
        InitError::Untouchable { .. } | InitError::MultiMember { .. } => EXIT_REFUSED,
        InitError::Validation { .. } | InitError::SetAside { .. } => EXIT_LOCAL_IO,
        _ => EXIT_FAILURE,
    }
}

/// A result that was printed in full and ends the command with `code` (not 0): the error line
/// says why in one sentence.
#[derive(Debug)]
pub struct Verdict {
    /// The exit code.
    pub code: u8,
    /// One sentence for stderr.
    pub message: String,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Verdict {}

/// What [`etcd_access`] makes of the endpoints and [`EtcdAuthArgs`](crate::flags::EtcdAuthArgs).
pub(crate) struct EtcdAccess {
    /// The endpoints, trimmed, empty ones dropped.
    pub endpoints: Vec<String>,
    /// User name and password.
    pub user: Option<(String, String)>,
    /// TLS, or `None` for plain HTTP.
    pub tls: Option<brcore::etcd::EtcdTls>,
}

/// The trimmed endpoints, the user and the TLS setting that `endpoints` and `flags` amount to;
/// errors name the flags that do not go together.
pub(crate) fn etcd_access(endpoints: &[String], flags: &crate::flags::EtcdAuthArgs) -> anyhow::Result<EtcdAccess> {
    use anyhow::bail;
    let endpoints: Vec<String> = endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    let user = match (&flags.etcd_username, &flags.etcd_password) {
        (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), p.clone())),
        (None, None) => None,
        (Some(u), None) if u.is_empty() => None,
        _ => bail!("--etcd-username and --etcd-password must be given together"),
    };
    if flags.cert.is_some() != flags.key.is_some() {
        bail!("--cert and --key must be given together");
    }
    let any_cert = flags.cert.is_some() || flags.key.is_some() || flags.cacert.is_some();
    let tls = (any_cert || !flags.insecure_transport).then(|| brcore::etcd::EtcdTls {
        cert: flags.cert.clone(),
        key: flags.key.clone(),
        cacert: flags.cacert.clone(),
    });
    if flags.insecure_skip_tls_verify && tls.is_some() {
        tracing::warn!(
            "--insecure-skip-tls-verify is not supported: etcd's certificate is verified against --cacert or the system roots"
        );
    }
    Ok(EtcdAccess { endpoints, user, tls })
}

/// The etcd client `status` and `verify` compare the backups with; `None` without endpoints.
pub(crate) fn live_etcd(args: &crate::flags::EtcdArgs) -> anyhow::Result<Option<brcore::etcd::EtcdClient>> {
    if args.etcd_connection_timeout.is_zero() {
        anyhow::bail!("--etcd-connection-timeout must be positive");
    }
    let EtcdAccess { endpoints, user, tls } = etcd_access(&args.endpoints, &args.auth)?;
    if endpoints.is_empty() {
        return Ok(None);
    }
    let mut config = brcore::etcd::EtcdConfig::new(endpoints);
    config.connection_timeout = args.etcd_connection_timeout;
    config.user = user;
    config.tls = tls;
    Ok(Some(brcore::etcd::EtcdClient::new(config)))
}

/// The store config from the store flags.
pub fn store_config(args: &crate::flags::StoreArgs) -> snapstore::StoreConfig {
    let mut config = snapstore::StoreConfig::default()
        .with_prefix(args.store_prefix.clone())
        .with_uploads(args.max_parallel_chunk_uploads, args.min_chunk_size)
        .with_temp_dir(args.snapstore_temp_directory.clone());
    // The flag's value parser accepted only known names.
    config.provider = args.storage_provider.parse().unwrap_or(snapstore::Provider::Local);
    config.container = args.store_container.clone();
    config.endpoint_override = args.store_endpoint_override.clone();
    config
}

/// The keys of `--encryption-key-file` (checked at start by `crate::validate`), if given.
pub fn encryption_keys(file: Option<&std::path::Path>, flag: &str) -> anyhow::Result<Option<brcore::encrypt::Keys>> {
    match file {
        Some(path) => Ok(Some(brcore::encrypt::Keys::from_file(path).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?)),
        None => Ok(None),
    }
}

/// Opens the store `config` names, encrypting and decrypting with `keys` (see
/// `brcore::encrypt`). Every command opens its stores through this, so encrypted objects are
/// listed and read (or refused, naming the key they need) by all of them.
pub fn open_encrypted(
    config: &snapstore::StoreConfig,
    keys: Option<brcore::encrypt::Keys>,
) -> anyhow::Result<std::sync::Arc<dyn brcore::Snapstore>> {
    let store = snapstore::open(config)?;
    Ok(std::sync::Arc::new(brcore::encrypt::EncryptedStore::new(store, keys)))
}

/// Opens the store of `args` with its `--encryption-key-file`.
pub fn open_store(args: &crate::flags::StoreArgs) -> anyhow::Result<std::sync::Arc<dyn brcore::Snapstore>> {
    let keys = encryption_keys(args.encryption_key_file.as_deref(), "--encryption-key-file")?;
    open_encrypted(&store_config(args), keys).context("cannot open the backup store")
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

/// The unit tests' parser for one sub-command's flags: `argv` (without the program name) into
/// `T`, as the binary would parse them after the sub-command's name.
#[cfg(test)]
pub(crate) fn parse_args<T: clap::Args + clap::FromArgMatches>(argv: &[&str]) -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new("etcdbrctl"));
    let mut matches = command.try_get_matches_from(std::iter::once("etcdbrctl").chain(argv.iter().copied()))?;
    T::from_arg_matches_mut(&mut matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_the_message_already_shows_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(28);
        let e = anyhow::Error::new(brcore::error::Error::io("/d/x", io)).context("restore failed");
        let line = render_error(&e);
        assert_eq!(line.matches("os error 28").count(), 1, "{line}");
        assert!(line.starts_with("restore failed: no space left on the filesystem of /d/x"), "{line}");
        assert_eq!(exit_code(&e), EXIT_LOCAL_IO);
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(render_error(&plain), "outer: inner");
    }
}
