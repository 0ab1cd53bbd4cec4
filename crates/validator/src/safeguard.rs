//! The guard against a wrong volume: a `safe_guard` file beside the data dir that records which
//! namespace the volume belongs to.
//!
//! The reference writes `<parent of data-dir>/safe_guard` holding `POD_NAMESPACE` the first time it
//! validates a volume, and refuses (`WrongVolumeMounted`) when a later validation in another
//! namespace finds a different name there: a restore would otherwise wipe another cluster's data
//! after a volume mix-up. We keep the same file and content, so a volume moves between the Go tool
//! and this one without a false alarm.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What the safe-guard file says about this volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The file names our namespace (or was just created with it).
    Ours,
    /// The file names another namespace: the wrong volume is mounted.
    Foreign {
        /// The namespace in the file.
        found: String,
        /// The file.
        path: PathBuf,
    },
    /// No namespace is known (`POD_NAMESPACE` unset), so there is nothing to guard.
    Unguarded,
}

/// The safe-guard file for `data_dir`: `safe_guard` in its parent directory, as the reference
/// places it (the data dir sits inside the volume, its parent is the volume's root).
pub fn path_for(data_dir: &Path) -> PathBuf {
    match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join("safe_guard"),
        _ => PathBuf::from("safe_guard"),
    }
}

/// Checks (and on first use writes) the safe-guard file of `data_dir` for `namespace`.
///
/// A missing file is created holding `namespace` (fsynced), as the reference does. An empty or
/// whitespace-only file counts as missing. Errors are I/O failures reading or writing the file.
pub fn check(data_dir: &Path, namespace: Option<&str>) -> io::Result<Guard> {
    let Some(namespace) = namespace.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(Guard::Unguarded);
    };
    let path = path_for(data_dir);
    match fs::read_to_string(&path) {
        Ok(content) if !content.trim().is_empty() => {
            let found = content.trim();
            if found == namespace { Ok(Guard::Ours) } else { Ok(Guard::Foreign { found: found.to_string(), path }) }
        }
        Ok(_) => write(&path, namespace).map(|()| Guard::Ours),
        Err(e) if e.kind() == io::ErrorKind::NotFound => write(&path, namespace).map(|()| Guard::Ours),
        Err(e) => Err(e),
    }
}

fn write(path: &Path, namespace: &str) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let mut f = fs::File::create(path)?;
    f.write_all(namespace.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_check_writes_the_namespace_and_later_ones_compare_it() {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("new.etcd");
        assert_eq!(check(&data_dir, Some("shoot--a")).unwrap(), Guard::Ours);
        assert_eq!(fs::read_to_string(tmp.path().join("safe_guard")).unwrap(), "shoot--a");
        assert_eq!(check(&data_dir, Some("shoot--a")).unwrap(), Guard::Ours);
        match check(&data_dir, Some("shoot--b")).unwrap() {
            Guard::Foreign { found, path } => {
                assert_eq!(found, "shoot--a");
                assert_eq!(path, tmp.path().join("safe_guard"));
            }
            other => panic!("expected a foreign volume, got {other:?}"),
        }
        // The foreign check must not have overwritten the file.
        assert_eq!(fs::read_to_string(tmp.path().join("safe_guard")).unwrap(), "shoot--a");
    }

    #[test]
    fn no_namespace_means_no_guard_and_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("new.etcd");
        assert_eq!(check(&data_dir, None).unwrap(), Guard::Unguarded);
        assert_eq!(check(&data_dir, Some("  ")).unwrap(), Guard::Unguarded);
        assert!(!tmp.path().join("safe_guard").exists());
    }

    #[test]
    fn an_empty_file_is_claimed() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("safe_guard"), "\n").unwrap();
        assert_eq!(check(&tmp.path().join("d"), Some("ns")).unwrap(), Guard::Ours);
        assert_eq!(fs::read_to_string(tmp.path().join("safe_guard")).unwrap(), "ns");
    }
}
