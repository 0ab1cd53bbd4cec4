//! The reference's credential sources: a JSON file named by `<PROVIDER>_APPLICATION_CREDENTIALS_JSON`,
//! or a directory named by `<PROVIDER>_APPLICATION_CREDENTIALS` holding a `*.json` or one-value
//! files, read into [`Fields`]; and the [`fingerprint`] of the files read, to notice a change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::Error;
use crate::config::Provider;

/// A snapshot of what the watched files looked like: (path, (mtime, size, inode)) each.
pub(crate) type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64, u64)>)>;

/// Stats every watched path (following symlinks, so a Kubernetes `..data` swap shows up).
pub(crate) fn fingerprint(watched: &[PathBuf]) -> Fingerprint {
    watched
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok().map(|m| {
                #[cfg(unix)]
                let ino = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let ino = 0;
                (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), ino)
            });
            (p.clone(), m)
        })
        .collect()
}

/// Key/value pairs from one credential source (JSON object or directory of files).
#[derive(Debug, Default)]
pub(super) struct Fields {
    pub(super) values: BTreeMap<String, String>,
    /// Where they came from, for error messages.
    pub(super) origin: String,
    /// The directory when read from one-value files (S3's `token` is a path into it).
    pub(super) dir: Option<PathBuf>,
}

impl Fields {
    pub(super) fn get(&self, key: &str) -> Option<String> {
        self.values.get(key).cloned().filter(|v| !v.is_empty())
    }

    pub(super) fn require(&self, provider: Provider, key: &str) -> Result<String, Error> {
        self.get(key)
            .ok_or_else(|| Error::Credentials { provider, reason: format!("{key} is missing in {}", self.origin) })
    }

    pub(super) fn bool(&self, provider: Provider, key: &str) -> Result<Option<bool>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_bool(&v).map(Some).ok_or_else(|| Error::Credentials {
                provider,
                reason: format!("{key} in {} is not a boolean", self.origin),
            }),
        }
    }
}

/// Go's `strconv.ParseBool`.
pub(super) fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

pub(super) fn read_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::CredentialFile { path: path.to_path_buf(), source })
}

fn json_fields(provider: Provider, path: &Path) -> Result<Fields, Error> {
    let text = read_file(path)?;
    // serde_json's error names only a line and column, never the content.
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Credentials { provider, reason: format!("{} is not valid JSON: {e}", path.display()) })?;
    let obj = value.as_object().ok_or_else(|| Error::Credentials {
        provider,
        reason: format!("{} must hold a JSON object", path.display()),
    })?;
    let mut values = BTreeMap::new();
    for (k, v) in obj {
        let s = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => continue,
        };
        values.insert(k.clone(), s);
    }
    Ok(Fields { values, origin: path.display().to_string(), dir: None })
}

fn dir_fields(path: &Path, watched: &mut Vec<PathBuf>) -> Result<Fields, Error> {
    let mut values = BTreeMap::new();
    let entries =
        std::fs::read_dir(path).map_err(|source| Error::CredentialFile { path: path.to_path_buf(), source })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::CredentialFile { path: path.to_path_buf(), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Kubernetes secret volumes hold `..data` and timestamped dirs; the keys are symlinks.
        if name.starts_with('.') {
            continue;
        }
        let p = entry.path();
        if p.is_file() {
            names.push((name, p));
        }
    }
    names.sort();
    for (name, p) in names {
        values.insert(name, read_file(&p)?.trim().to_string());
        watched.push(p);
    }
    Ok(Fields { values, origin: format!("directory {}", path.display()), dir: Some(path.to_path_buf()) })
}

/// The first `*.json` in `dir` by name (the reference takes the first `os.ReadDir` returns,
/// which is sorted by name).
fn first_json_in(dir: &Path) -> Result<Option<PathBuf>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::CredentialFile { path: dir.to_path_buf(), source })?;
    let mut jsons: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    jsons.sort();
    Ok(jsons.into_iter().next())
}

/// Reads `<prefix><base>_JSON`, else `<prefix><base>` (a `*.json` in it first, then its files).
/// `Ok(None)` when neither variable is set.
pub(super) fn read_source(
    provider: Provider,
    env: &dyn Fn(&str) -> Option<String>,
    env_prefix: &str,
    base: &str,
    watched: &mut Vec<PathBuf>,
) -> Result<Option<Fields>, Error> {
    if let Some(file) = env(&format!("{env_prefix}{base}_JSON")).filter(|f| !f.is_empty()) {
        let path = PathBuf::from(file);
        let fields = json_fields(provider, &path)?;
        watched.push(path);
        return Ok(Some(fields));
    }
    if let Some(dir) = env(&format!("{env_prefix}{base}")).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        watched.push(dir.clone());
        if let Some(json) = first_json_in(&dir)? {
            let fields = json_fields(provider, &json)?;
            watched.push(json);
            return Ok(Some(fields));
        }
        return dir_fields(&dir, watched).map(Some);
    }
    Ok(None)
}
