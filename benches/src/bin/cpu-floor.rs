//! The CPU's floor of a restore, a row of the benchmark beside the disk's (`dd`): what every
//! restore of a gzip store computes whatever else it does, on every core of the machine. It
//! inflates the full snapshot's gzip block members and every delta in one call each, with the
//! restore's own functions (ISA-L's igzip, the fastest inflate in the workspace), and checks
//! every delta's JSON against its sha256 trailer with the restore's own
//! `brcore::delta::verify_hash`. Nothing is parsed or written; the objects are read into memory
//! before the clock starts.
//!
//! `cpu-floor --store DIR [--threads N]`: DIR is a store's `v2` folder (a full snapshot in
//! etcdbr's block members and gzipped deltas, as `gen-store` writes `stores/ebr`); prints one
//! line of `key=value` on stdout.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use brcore::compress::blocks::{MemberHeader, inflate_member_into, inflate_single_member_into};
use clap::Parser;

/// Command-line flags.
#[derive(Debug, Parser)]
struct Args {
    /// A store's `v2` folder.
    #[arg(long)]
    store: PathBuf,
    /// Threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// One piece of work: a block member of the full snapshot, or a whole delta.
enum Work<'a> {
    Member(&'a [u8]),
    Delta(&'a str, &'a [u8]),
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut names: Vec<String> = std::fs::read_dir(&a.store)
        .with_context(|| format!("listing {}", a.store.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    let mut objects = Vec::new();
    for name in &names {
        objects.push((name.as_str(), std::fs::read(a.store.join(name))?));
    }
    let mut work = Vec::new();
    for (name, bytes) in &objects {
        if name.starts_with("Full-") {
            let mut at = 0;
            while at < bytes.len() {
                let Some(h) = MemberHeader::parse(&bytes[at..]) else {
                    bail!("{name}: no block member at byte {at} (cpu-floor reads etcdbr's block members only)");
                };
                work.push(Work::Member(&bytes[at..at + h.member_len as usize]));
                at += h.member_len as usize;
            }
        } else if name.starts_with("Incr-") && name.ends_with(".gz") {
            work.push(Work::Delta(name, bytes));
        }
    }
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let plain_bytes: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<u64> {
                    let (mut plain, mut total) = (Vec::new(), 0u64);
                    while let Some(item) = work.get(next.fetch_add(1, Ordering::Relaxed)) {
                        match item {
                            Work::Member(member) => inflate_member_into(member, &mut plain)?,
                            Work::Delta(name, gz) => {
                                if !inflate_single_member_into(gz, usize::MAX, &mut plain) {
                                    bail!("{name}: not one gzip member");
                                }
                                brcore::delta::verify_hash(&plain, name)?;
                            }
                        }
                        total += plain.len() as u64;
                    }
                    Ok(total)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker panicked")).sum::<Result<u64>>()
    })?;
    let seconds = started.elapsed().as_secs_f64();
    println!("seconds={seconds:.3} threads={threads} items={} plain_bytes={plain_bytes}", work.len());
    Ok(())
}
