//! Writes to a running etcd as fast as it takes it, for `scripts/bench-snapshot.sh`.
//!
//! `etcd-load fill --endpoint URL --bytes N [--value-size B] [--concurrency C] [--seed S]`
//! writes about `N` bytes of values under `/bench/fill/` (distinct keys, Kubernetes-like values
//! that compress ~3×) to grow the db; `etcd-load burst --endpoint URL --seconds S [--value-size B]
//! [--concurrency C]` puts over a small key set for `S` seconds, as an API server under load
//! would. Both keep `C` requests in flight on one connection and print one JSON line: puts,
//! bytes, seconds, the first and last revision written and revisions per second.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use etcd_client::Client;
use etcdbr_benches::rng::Rng;
use futures::StreamExt;

/// Command-line flags.
#[derive(Debug, Parser)]
struct Args {
    /// What to write.
    #[command(subcommand)]
    mode: Mode,
}

/// The two load shapes.
#[derive(Debug, Subcommand)]
enum Mode {
    /// Grow the db to about `--bytes` of values with distinct keys.
    Fill {
        /// etcd client URL.
        #[arg(long)]
        endpoint: String,
        /// Bytes of values to write.
        #[arg(long)]
        bytes: u64,
        /// Size of each value.
        #[arg(long, default_value_t = 16 * 1024)]
        value_size: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// PRNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Put over `--keys` keys as fast as etcd takes it for `--seconds`.
    Burst {
        /// etcd client URL.
        #[arg(long)]
        endpoint: String,
        /// How long to write.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Size of each value.
        #[arg(long, default_value_t = 1024)]
        value_size: usize,
        /// Distinct keys written in turn.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Requests in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// PRNG seed.
        #[arg(long, default_value_t = 2)]
        seed: u64,
    },
}

/// Revisions seen in put responses.
#[derive(Debug, Default)]
struct Seen {
    puts: u64,
    bytes: u64,
    first: i64,
    last: i64,
}

impl Seen {
    fn add(&mut self, rev: i64, bytes: usize) {
        self.puts += 1;
        self.bytes += bytes as u64;
        self.first = if self.first == 0 { rev } else { self.first.min(rev) };
        self.last = self.last.max(rev);
    }
}

/// Puts `(key, value)` pairs from `ops` with `concurrency` in flight until `ops` ends.
async fn put_all(client: &Client, ops: impl Iterator<Item = (String, Vec<u8>)>, concurrency: usize) -> Result<Seen> {
    let mut results = futures::stream::iter(ops.map(|(k, v)| {
        let mut c = client.clone();
        async move {
            let len = v.len();
            let resp = c.put(k, v, None).await?;
            let rev = resp.header().map_or(0, |h| h.revision());
            Ok::<_, etcd_client::Error>((rev, len))
        }
    }))
    .buffer_unordered(concurrency.max(1));
    let mut seen = Seen::default();
    while let Some(r) = results.next().await {
        let (rev, len) = r.context("put")?;
        seen.add(rev, len);
    }
    Ok(seen)
}

fn report(mode: &str, seen: &Seen, seconds: f64) {
    let revisions = if seen.puts == 0 { 0 } else { seen.last - seen.first + 1 };
    println!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "puts": seen.puts,
            "bytes": seen.bytes,
            "seconds": seconds,
            "first_revision": seen.first,
            "last_revision": seen.last,
            "revisions_per_second": revisions as f64 / seconds,
            "mib_per_second": seen.bytes as f64 / seconds / (1024.0 * 1024.0),
        })
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        match args.mode {
            Mode::Fill { endpoint, bytes, value_size, concurrency, seed } => {
                if value_size == 0 {
                    bail!("--value-size must be positive");
                }
                let client = Client::connect([endpoint.as_str()], None).await?;
                let count = bytes.div_ceil(value_size as u64);
                let mut rng = Rng::new(seed);
                // Values are made as they are sent, so memory stays at `concurrency` values.
                let ops = (0..count).map(move |i| (format!("/bench/fill/{i:010}"), rng.value(value_size)));
                let started = Instant::now();
                let seen = put_all(&client, ops, concurrency).await?;
                report("fill", &seen, started.elapsed().as_secs_f64());
            }
            Mode::Burst { endpoint, seconds, value_size, keys, concurrency, seed } => {
                if keys == 0 {
                    bail!("--keys must be positive");
                }
                let client = Client::connect([endpoint.as_str()], None).await?;
                let mut rng = Rng::new(seed);
                let started = Instant::now();
                let limit = std::time::Duration::from_secs_f64(seconds);
                let ops = (0u64..)
                    .take_while(move |_| started.elapsed() < limit)
                    .map(move |i| (format!("/bench/burst/{:08}", i % keys), rng.value(value_size)));
                let seen = put_all(&client, ops, concurrency).await?;
                report("burst", &seen, started.elapsed().as_secs_f64());
            }
        }
        Ok(())
    })
}
