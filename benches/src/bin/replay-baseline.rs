//! The Go tool's restore algorithm, run against real etcd, as the baseline of the benchmark:
//! `etcdutl snapshot restore` of the full, start etcd on it (`--unsafe-no-fsync` as the Go
//! tool's embedded etcd), replay every delta's events with one txn per revision (puts without
//! their lease, as the Go tool does), check the revision after each delta with a `Get`, compact
//! every 10 deltas, stop etcd.
//!
//! `--exact` replays the same history without the Go tool's losses, as the judge of a restore's
//! HashKV: puts keep their lease (the leases the snapshot does not hold are granted first, with
//! their ids and a TTL of ten years) and nothing is compacted, so etcd ends up holding every
//! revision the deltas hold. It is not the Go tool's algorithm; its timings are not a baseline.
//!
//! `replay-baseline --dataset DIR --work DIR [--exact] [--etcd PATH --etcdutl PATH]`; prints one line of
//! `key=value` timings (seconds) on stdout.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use brcore::delta::EventKind;
use clap::Parser;
use etcd_client::{Client, CompactionOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp};
use etcdbr_benches::etcd::{EtcdConfig, EtcdProc, free_port, snapshot_restore};
use etcdbr_benches::{DatasetInfo, ETCD_3_5_30_DIR};

/// Command-line flags.
#[derive(Debug, Parser)]
struct Args {
    /// A dataset directory made by `gen-store`.
    #[arg(long)]
    dataset: PathBuf,
    /// An empty scratch directory (the data dir is created inside).
    #[arg(long)]
    work: PathBuf,
    /// etcd binary.
    #[arg(long, default_value_t = format!("{ETCD_3_5_30_DIR}/etcd"))]
    etcd: String,
    /// etcdutl binary.
    #[arg(long, default_value_t = format!("{ETCD_3_5_30_DIR}/etcdutl"))]
    etcdutl: String,
    /// Keep the leases and every revision (see the module docs).
    #[arg(long)]
    exact: bool,
}

/// The TTL of the leases `--exact` grants: ten years, so none expires during a benchmark.
const EXACT_LEASE_TTL: i64 = 10 * 365 * 24 * 3600;

fn main() -> Result<()> {
    let a = Args::parse();
    let info: DatasetInfo = serde_json::from_slice(&std::fs::read(a.dataset.join("info.json"))?)?;
    let objects = a.dataset.join("stores/gz/v2");
    let started = Instant::now();

    let data_dir = a.work.join("replay.etcd");
    let peer_port = free_port()?;
    snapshot_restore(PathBuf::from(&a.etcdutl).as_path(), &a.dataset.join("snapshot.db"), &data_dir, "n1", peer_port)?;
    let restored = started.elapsed().as_secs_f64();

    let etcd = EtcdProc::start(&EtcdConfig {
        bin: a.etcd.clone().into(),
        data_dir: data_dir.clone(),
        name: "n1".into(),
        peer_port,
        no_fsync: true,
    })?;
    let booted = started.elapsed().as_secs_f64();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (revisions, events) = rt.block_on(async {
        let mut c = Client::connect([etcd.endpoint()], None).await?;
        let (mut revisions, mut events) = (0u64, 0u64);
        let mut leases: HashSet<i64> = HashSet::new();
        if a.exact {
            leases.extend(c.leases().await?.leases().iter().map(|l| l.id()));
        }
        for (i, name) in info.deltas.iter().enumerate() {
            // Fetch, decompress, verify and decode just before applying, as the Go tool does.
            let path = objects.join(name);
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let evs = brcore::delta::read_events(flate2::read::GzDecoder::new(BufReader::new(file)), name)?;
            if a.exact {
                for e in evs.iter().filter(|e| e.lease != 0) {
                    if leases.insert(e.lease) {
                        c.lease_grant(EXACT_LEASE_TTL, Some(LeaseGrantOptions::new().with_id(e.lease))).await?;
                    }
                }
            }
            let mut j = 0;
            while j < evs.len() {
                let rev = evs[j].mod_revision;
                let mut ops = Vec::new();
                while j < evs.len() && evs[j].mod_revision == rev {
                    let e = &evs[j];
                    ops.push(match e.kind {
                        EventKind::Put if a.exact && e.lease != 0 => {
                            TxnOp::put(e.key.clone(), e.value.clone(), Some(PutOptions::new().with_lease(e.lease)))
                        }
                        EventKind::Put => TxnOp::put(e.key.clone(), e.value.clone(), None),
                        EventKind::Delete => TxnOp::delete(e.key.clone(), None),
                    });
                    j += 1;
                }
                events += ops.len() as u64;
                c.txn(Txn::new().and_then(ops)).await?;
                revisions += 1;
            }
            let last = evs.last().map_or(0, |e| e.mod_revision);
            let got = c.get("foo", None).await?.header().map_or(0, |h| h.revision());
            if got != last {
                bail!("mismatched event revision while applying delta snapshot, expected {last} but applied {got}");
            }
            if !a.exact && (i + 1) % 10 == 0 {
                c.compact(got, Some(CompactionOptions::new().with_physical())).await?;
            }
        }
        anyhow::Ok((revisions, events))
    })?;
    let replayed = started.elapsed().as_secs_f64();
    etcd.stop()?;
    let total = started.elapsed().as_secs_f64();
    println!(
        "restore_s={restored:.3} boot_s={:.3} replay_s={:.3} stop_s={:.3} total_s={total:.3} revisions={revisions} events={events} revisions_per_s={:.0}",
        booted - restored,
        replayed - booted,
        total - replayed,
        revisions as f64 / (replayed - booted)
    );
    Ok(())
}
