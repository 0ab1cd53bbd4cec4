//! Writes an etcd-like db of a given size with the BulkWriter, then opens, checks and iterates
//! it, printing the time and throughput of each step.
//!
//! `cargo run --release -p bbolt --example bulk_bench -- /tmp/bench.db 1024` (path, size in MiB).
//! Compare the write figure with the disk's sequential speed, e.g.
//! `dd if=/dev/zero of=/tmp/dd.bin bs=1M count=1024 conv=fsync`.

use std::time::Instant;

use bbolt::{BulkWriter, Db, Entry, WriterOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/bbolt-bench.db".into()));
    let mib: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let target = mib << 20;

    // Values of 200..2200 bytes cut from a fixed pseudo-random pool: etcd-sized KeyValues.
    let mut pool = vec![0u8; 1 << 16];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for b in pool.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }

    let t = Instant::now();
    let file = std::fs::File::create(&path)?;
    let mut w = BulkWriter::new(file, WriterOptions::default())?;
    for name in [&b"alarm"[..], b"auth", b"authRoles", b"authUsers", b"cluster"] {
        w.begin_bucket(name)?;
        w.end_bucket()?;
    }
    w.begin_bucket(b"key")?;
    let (mut written, mut rev) = (0u64, 2u64);
    while written < target {
        let mut key = [0u8; 17];
        key[..8].copy_from_slice(&rev.to_be_bytes());
        key[8] = b'_';
        let len = 200 + (rev as usize * 7919) % 2000;
        let off = (rev as usize * 104_729) % (pool.len() - len);
        w.put(&key, &pool[off..off + len])?;
        written += 33 + len as u64;
        rev += 1;
    }
    w.end_bucket()?;
    for name in [&b"lease"[..], b"members", b"members_removed", b"meta"] {
        w.begin_bucket(name)?;
        w.end_bucket()?;
    }
    let (file, stats) = w.finish()?;
    let t_write = t.elapsed();
    file.sync_all()?;
    let t_sync = t.elapsed();
    let gib = stats.bytes as f64 / (1u64 << 30) as f64;
    println!(
        "write: {} keys, {} pages, {:.3} GiB in {:.2?} ({:.0} MiB/s), with fsync {:.2?} ({:.0} MiB/s)",
        rev - 2,
        stats.pages,
        gib,
        t_write,
        stats.bytes as f64 / 1048576.0 / t_write.as_secs_f64(),
        t_sync,
        stats.bytes as f64 / 1048576.0 / t_sync.as_secs_f64()
    );

    let t = Instant::now();
    let db = Db::open(&path)?;
    let report = db.check();
    let t_check = t.elapsed();
    println!("check: {report}\n  in {t_check:.2?} ({:.2} s/GiB)", t_check.as_secs_f64() / gib);

    let t = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    for e in db.bucket(b"key")?.ok_or("no key bucket")?.iter() {
        if let Entry::Value { key, value } = e? {
            n += 1;
            bytes += (key.len() + value.len()) as u64;
        }
    }
    let t_iter = t.elapsed();
    println!(
        "iterate key bucket: {n} entries, {bytes} bytes in {t_iter:.2?} ({:.2} s/GiB)",
        t_iter.as_secs_f64() / gib
    );
    Ok(())
}
