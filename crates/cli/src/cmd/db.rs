//! `etcdbrctl db status|hashkv|check FILE`: offline inspection of a db or snapshot file.

use std::fmt;
use std::path::Path;

use anyhow::Context;

use crate::flags::{DbCommand, OutputFormat};

/// `db check` found problems; they were printed already.
#[derive(Debug)]
pub struct FindingsError {
    count: usize,
}

impl fmt::Display for FindingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) found: the file is corrupt; restore from a backup", self.count)
    }
}

impl std::error::Error for FindingsError {}

pub fn run(cmd: DbCommand) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Status { file, write_out } => {
            let db = open(&file)?;
            let status = etcd_format::status::snapshot_status(&db)
                .with_context(|| format!("{} is not a readable etcd db", file.display()))?;
            match write_out {
                OutputFormat::Json => println!("{}", serde_json::to_string(&status)?),
                OutputFormat::Simple => println!(
                    "hash {:08x}, revision {}, total keys {}, total size {}",
                    status.hash, status.revision, status.total_key, status.total_size
                ),
            }
        }
        DbCommand::Hashkv { file, rev, write_out } => {
            let db = open(&file)?;
            let h = etcd_format::hashkv::hash_kv(&db, rev)
                .with_context(|| format!("cannot compute HashKV of {}", file.display()))?;
            match write_out {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({"hash": h.hash, "compact_revision": h.compact_revision, "revision": h.revision})
                ),
                OutputFormat::Simple => {
                    println!("hash {}, revision {}, compact revision {}", h.hash, h.revision, h.compact_revision)
                }
            }
        }
        DbCommand::Check { file } => {
            let db = open(&file)?;
            let report = db.check();
            for finding in &report.findings {
                println!("{finding}");
            }
            if !report.is_ok() {
                return Err(FindingsError { count: report.findings.len() }.into());
            }
            println!("{}: ok", file.display());
        }
    }
    Ok(())
}

/// Opens the db file. A damaged file (bad meta pages, shorter than its meta says, a layout we do
/// not read) is a finding and exits with `EXIT_CORRUPT`; a file that cannot be read at all (missing,
/// no permission) is an ordinary failure, so that a typo in the path is not reported as corruption.
fn open(file: &Path) -> anyhow::Result<bbolt::Db> {
    bbolt::Db::open(file)
        .map_err(|e| match e {
            bbolt::Error::Corrupted { .. } | bbolt::Error::Truncated { .. } | bbolt::Error::Unsupported { .. } => {
                anyhow::Error::new(FindingsError { count: 1 }).context(e.to_string())
            }
            other => anyhow::Error::new(other),
        })
        .with_context(|| format!("cannot open {}", file.display()))
}
