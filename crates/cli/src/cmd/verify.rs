//! `etcdbrctl verify`: the backups proven restorable without a restore (see `brcore::verify`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use brcore::chain::Target;
use brcore::etcd::EtcdSource;
use brcore::restore::Progress;
use brcore::verify::{Comparison, Outcome, VerifyPlan, VerifyReport};
use clap::Args;

use super::status::size;
use super::{EXIT_CORRUPT, EXIT_UNAVAILABLE};
use crate::flags::{EtcdArgs, StoreArgs, WriteOut};

/// `etcdbrctl verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The store to verify (only read).
    #[command(flatten)]
    pub store: StoreArgs,
    /// The live etcd to compare with (optional).
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Verify the state at this revision instead of the latest.
    #[arg(long)]
    pub to_revision: Option<u64>,
    /// Revisions hashed (and compared with etcd): the chain's end, plus N-1 spread over the
    /// chain's full snapshot and deltas.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub samples: u32,
    /// Deltas downloaded at once.
    #[arg(long, default_value_t = 6)]
    pub max_fetchers: usize,
    /// Accept a full snapshot that carries no sha256 trailer.
    #[arg(long)]
    pub skip_hash_check: bool,
    /// Bytes of memory for deltas read and decoded ahead of the db writer, as `restore`'s.
    #[arg(long, default_value_t = brcore::deltafeed::DEFAULT_BUDGET,
          value_parser = clap::value_parser!(u64).range(8 << 20..))]
    pub restore_memory_budget: u64,
    /// Where the chain is rebuilt (in a temp dir removed at the end); needs room for the db.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    pub temp_dir: PathBuf,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
    pub write_out: WriteOut,
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let live = super::live_etcd(&args.etcd)?;
    let store = super::open_store(&args.store)?;
    let mut plan = VerifyPlan::new(args.store.store_prefix.clone(), args.temp_dir.clone());
    plan.target = args.to_revision.map_or(Target::Latest, Target::Revision);
    plan.max_fetchers = args.max_fetchers.max(1);
    plan.skip_hash_check = args.skip_hash_check;
    plan.memory_budget = args.restore_memory_budget;
    plan.samples = args.samples as usize;
    let progress: Arc<dyn Progress> = if std::io::stderr().is_terminal() && args.write_out == WriteOut::Simple {
        Arc::new(super::restore::Bar::new())
    } else {
        Arc::new(brcore::restore::NoProgress)
    };
    let source = live.as_ref().map(|l| l as &dyn EtcdSource);
    let report = brcore::verify::verify(store, &plan, source, progress).await?;
    match args.write_out {
        WriteOut::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        WriteOut::Simple => print!("{}", render(&report)),
    }
    verdict(&report)
}

fn verdict(r: &VerifyReport) -> anyhow::Result<()> {
    let (code, message) = match r.outcome {
        Outcome::BitExact | Outcome::CannotCompare | Outcome::NotCompared => return Ok(()),
        Outcome::Differs => (
            EXIT_CORRUPT,
            match &r.difference {
                Some(d) => {
                    format!(
                        "the backup differs from etcd at {d}: do not restore from it past revision {}",
                        d.revision - 1
                    )
                }
                None => "the backup differs from etcd".to_string(),
            },
        ),
        Outcome::EtcdUnreachable => (
            EXIT_UNAVAILABLE,
            "the backup verified offline, but etcd did not answer, so it was not compared".to_string(),
        ),
    };
    Err(super::Verdict { code, message }.into())
}

fn render(r: &VerifyReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let newest = r.deltas.last().map_or(String::new(), |d| format!(" (newest {})", short(d)));
    let _ = writeln!(out, "chain:     {} + {} deltas{newest}", short(&r.full), r.deltas.len());
    for l in &r.left_out {
        let _ = writeln!(out, "left out:  {}: {}", short(&l.key), l.why);
    }
    let _ = writeln!(
        out,
        "fetched:   {} from the store; every object decompressed, its sha256 checked and its events decoded in order",
        size(r.bytes_fetched)
    );
    let _ = writeln!(
        out,
        "rebuilt:   revisions {}..={} offline in {:.2} s: db {}, {} key revisions, bbolt check clean",
        r.base_revision,
        r.revision,
        r.seconds,
        size(r.db_size),
        r.key_revisions
    );
    for c in &r.checks {
        let compared = match &c.comparison {
            Comparison::NotCompared => "not compared (give --endpoints to compare with etcd)".to_string(),
            Comparison::BitExact { live_compact_revision, .. } if *live_compact_revision > 0 => {
                format!("etcd's equal: BIT-EXACT, hashed as compacted at {live_compact_revision} like etcd")
            }
            Comparison::BitExact { .. } => "etcd's equal: BIT-EXACT".to_string(),
            Comparison::Differs { live_hash, offline_hash, live_compact_revision } => format!(
                "DIFFERS: etcd's is {live_hash}, the backup's as compacted at {live_compact_revision} is {offline_hash}"
            ),
            Comparison::CannotCompare { reason } => format!("cannot compare: {reason}"),
            Comparison::EtcdUnreachable { error } => format!("etcd did not answer: {error}"),
        };
        let _ = writeln!(out, "hashkv:    revision {}: {} ({compared})", c.revision, c.hash);
    }
    if let Some(d) = &r.difference {
        let _ = writeln!(out, "first difference: {d}");
    }
    let end = r.end();
    let result = match r.outcome {
        Outcome::BitExact => format!("BIT-EXACT with etcd at revision {}", r.revision),
        Outcome::Differs => "DIFFERS from etcd".to_string(),
        Outcome::CannotCompare => format!(
            "restorable; cannot compare with etcd at revision {}: keep the hash {} (a member restored from this chain reports it: etcdctl endpoint hashkv --rev {})",
            r.revision,
            end.map_or(0, |c| c.hash),
            r.revision
        ),
        Outcome::NotCompared => format!(
            "restorable; hashkv {} at revision {} (compare: etcdctl endpoint hashkv --rev {} on a member that never compacted past the full snapshot, or give --endpoints)",
            end.map_or(0, |c| c.hash),
            r.revision,
            r.revision
        ),
        Outcome::EtcdUnreachable => "restorable; etcd did not answer".to_string(),
    };
    let _ = writeln!(out, "result:    {result}");
    out
}

/// The object name without the prefix and layout directory.
fn short(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}
