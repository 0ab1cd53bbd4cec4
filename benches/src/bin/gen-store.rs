//! Generates (or finds in the cache) a benchmark backup store and prints its directory.
//!
//! `gen-store [--keys N] [--value-size B] [--revisions N] [--events-per-delta N]
//! [--delta-value-size B] [--seed S] [--root DIR] [--etcd PATH]`; the last stdout line is the
//! dataset directory, `info.json` in it describes it.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use etcdbr_benches::{Dataset, DatasetParams, default_data_root};

/// Command-line flags; defaults are the reference size (~165 MB full, 60,000 revisions).
#[derive(Debug, Parser)]
struct Args {
    /// Keys written into the full snapshot.
    #[arg(long, default_value_t = 64_000)]
    keys: u64,
    /// Average value size of the full's keys.
    #[arg(long, default_value_t = 1600)]
    value_size: usize,
    /// Revisions in the deltas.
    #[arg(long, default_value_t = 60_000)]
    revisions: u64,
    /// Events per delta object (about).
    #[arg(long, default_value_t = 1000)]
    events_per_delta: u64,
    /// Average value size in the deltas.
    #[arg(long, default_value_t = 1000)]
    delta_value_size: usize,
    /// PRNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cache root (default `$ETCDBR_BENCH_DATA` or /tmp/etcdbr-bench-data).
    #[arg(long)]
    root: Option<PathBuf>,
    /// The etcd binary that writes the full snapshot.
    #[arg(long, default_value = "/opt/etcdbr-deps/etcd-sid/usr/bin/etcd")]
    etcd: PathBuf,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let params = DatasetParams {
        keys: a.keys,
        value_size: a.value_size,
        revisions: a.revisions,
        events_per_delta: a.events_per_delta,
        delta_value_size: a.delta_value_size,
        seed: a.seed,
    };
    let root = a.root.unwrap_or_else(default_data_root);
    let ds = Dataset::open_or_generate(&root, &params, &a.etcd)?;
    eprintln!(
        "dataset: revision {} → {}, {} deltas, {} events, snapshot {} B, full.gz {} B, deltas.gz {} B",
        ds.info.base_revision,
        ds.info.last_revision,
        ds.info.deltas.len(),
        ds.info.events,
        ds.info.snapshot_bytes,
        ds.info.full_gz_bytes,
        ds.info.deltas_gz_bytes
    );
    println!("{}", ds.dir.display());
    Ok(())
}
