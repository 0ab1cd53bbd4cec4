//! Every flag value checked at start, in one place: before the runtime starts, before any
//! connection to etcd or a store and before any file is created. A wrong value is a usage error
//! (exit 2) whose message names the flag.
//!
//! [`check`] runs, for the sub-command:
//! - the store flags' combination (`Command::check_store_flags`);
//! - each store's config (`snapstore::StoreConfig::validate`: prefix spelling, bucket and
//!   container names, chunk sizes, endpoint URL), and for a Local store that its directory is not
//!   a file;
//! - the local paths: a data dir, a temp dir or a Local container that exists must be a
//!   directory, and so must the nearest existing ancestor of one that does not;
//! - the sub-command's own checks of flag values that go together (`restore::plan`,
//!   `snapshot::plan`, `server::check_flags`, …), which `run` repeats to get what they amount to.
//!
//! A new flag that can be wrong on its face gets its check here (or in the sub-command's
//! `check_flags`/`plan`, which this calls).

use std::path::Path;

use crate::cmd;
use crate::flags::{Command, RestorationArgs, StoreArgs};

/// Checks `command`'s flags; the message of a usage error on failure.
pub(crate) fn check(command: &Command) -> Result<(), String> {
    command.check_store_flags()?;
    let plan = |r: anyhow::Result<()>| r.map_err(|e| cmd::render_error(&e));
    match command {
        Command::Restore(a) => {
            store(&a.store)?;
            restoration(&a.restoration)?;
            plan(cmd::restore::plan(a).map(drop))
        }
        Command::Initialize(a) => {
            store(&a.restore.store)?;
            restoration(&a.restore.restoration)?;
            plan(cmd::initialize::check_flags(a).map(drop))
        }
        Command::Snapshot(a) => {
            store(&a.args.store)?;
            plan(cmd::snapshot::plan(&a.args).map(drop))
        }
        Command::Server(a) => {
            store(&a.snapshot.store)?;
            restoration(&a.restore)?;
            plan(cmd::server::check_flags(a).map(drop))
        }
        Command::Compact(a) => {
            store(&a.store)?;
            restoration(&a.restoration)?;
            plan(cmd::compact::settings(a).map(drop))
        }
        Command::Copy(a) => {
            store(&a.store)?;
            let source = cmd::copy::check_flags(a).map_err(|e| cmd::render_error(&e))?;
            store_config(&source)
        }
        Command::Status(a) => {
            store(&a.store)?;
            plan(cmd::status::check_flags(a))
        }
        Command::Verify(a) => {
            store(&a.store)?;
            directory("--temp-dir", &a.temp_dir)?;
            plan(cmd::live_etcd(&a.etcd).map(drop))
        }
        Command::Db(_) => Ok(()),
    }
}

/// A store's flags, when a store is configured.
fn store(args: &StoreArgs) -> Result<(), String> {
    if !args.has_provider() {
        return Ok(());
    }
    cmd::encryption_keys(args.encryption_key_file.as_deref(), "--encryption-key-file").map_err(|e| e.to_string())?;
    store_config(&cmd::store_config(args))
}

fn store_config(config: &snapstore::StoreConfig) -> Result<(), String> {
    let named = |e: snapstore::Error| match &e {
        snapstore::Error::Setting { setting, why } => format!("{} {why}", store_flag(config, *setting)),
        _ => e.to_string(),
    };
    config.validate().map_err(named)?;
    if let Some(root) = config.local_root().map_err(named)? {
        directory(&flag(config, "store-container"), &root)?;
    }
    directory(&flag(config, "snapstore-temp-directory"), &config.temp_dir)
}

/// The flag that sets `name` for this store: `--store-prefix`, or `--source-store-prefix` for
/// `copy`'s source (`SOURCE_` variables), `--secondary-store-prefix` for the secondary store.
fn flag(config: &snapstore::StoreConfig, name: &str) -> String {
    format!("--{}{name}", config.env_prefix.to_ascii_lowercase().replace('_', "-"))
}

/// The flag behind a store setting.
fn store_flag(config: &snapstore::StoreConfig, setting: snapstore::Setting) -> String {
    use snapstore::Setting;
    match setting {
        Setting::Container => flag(config, "store-container"),
        Setting::Prefix => flag(config, "store-prefix"),
        Setting::EndpointOverride => flag(config, "store-endpoint-override"),
        Setting::MaxParallelChunkUploads => flag(config, "max-parallel-chunk-uploads"),
        Setting::MinChunkSize => flag(config, "min-chunk-size"),
        // Settings added later: the library's own words name the field.
        _ => format!("the {setting}"),
    }
}

/// The restoration paths: the data dir and the temp dir for the full snapshot.
fn restoration(args: &RestorationArgs) -> Result<(), String> {
    directory("--data-dir", &args.data_dir)?;
    if let Some(temp) = &args.restoration_temp_snapshots_dir {
        directory("--restoration-temp-snapshots-dir", temp)?;
    }
    Ok(())
}

/// `path` (the value of `flag`) must be a directory if it exists; if not, the nearest existing
/// ancestor must be one (else nothing can be created there).
fn directory(flag: &str, path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err(format!("{flag} is empty: name a directory"));
    }
    let mut p = path;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) if p == path => {
                return Err(format!(
                    "{flag} {}: it is a file, not a directory; name a directory (it is created if missing)",
                    path.display()
                ));
            }
            Ok(_) => {
                return Err(format!(
                    "{flag} {}: {} is a file, so no directory can be created under it",
                    path.display(),
                    p.display()
                ));
            }
            Err(_) => match p.parent().filter(|q| !q.as_os_str().is_empty()) {
                Some(q) => p = q,
                None => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_is_a_file_is_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(directory("--data-dir", dir.path()), Ok(()));
        assert_eq!(directory("--data-dir", &dir.path().join("new/deeper")), Ok(()));
        let e = directory("--data-dir", &file).unwrap_err();
        assert!(e.starts_with(&format!("--data-dir {}: it is a file", file.display())), "{e}");
        let e = directory("--restoration-temp-snapshots-dir", &file.join("sub")).unwrap_err();
        assert!(e.contains(&format!("{} is a file", file.display())), "{e}");
        assert!(directory("--data-dir", Path::new("")).is_err());
    }

    #[test]
    fn a_store_setting_is_named_by_the_flag_of_its_store() {
        let source = snapstore::StoreConfig::default().with_prefix("/p").with_env_prefix("SOURCE_");
        let e = store_config(&source).unwrap_err();
        assert!(e.starts_with("--source-store-prefix \"/p\": "), "{e}");
        let primary = snapstore::StoreConfig::new(snapstore::Provider::S3, "b/p");
        let e = store_config(&primary).unwrap_err();
        assert!(e.starts_with("--store-container \"b/p\": S3 bucket names"), "{e}");
        let secondary =
            snapstore::StoreConfig::default().with_uploads(0, snapstore::MIN_CHUNK_SIZE).with_env_prefix("SECONDARY_");
        let e = store_config(&secondary).unwrap_err();
        assert!(e.starts_with("--secondary-max-parallel-chunk-uploads 0: "), "{e}");
    }
}
