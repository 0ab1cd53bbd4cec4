//! Generates a Local backup store the way a real deployment fills one: a full snapshot taken
//! from a real etcd (via the Maintenance snapshot stream, exactly what the Go tool uploads)
//! and delta objects holding the watch events that would follow it.
//!
//! The full comes from a real etcd 3.5 so its db layout (page fill after random inserts,
//! freelist, buckets) is etcd's own. The deltas are synthesised but consistent with the full:
//! each event's `create_revision`, `version` and `mod_revision` are what etcd would assign
//! (the generator tracks the live keys read back from the snapshot), revisions are contiguous,
//! several events share a revision for a transaction, and some keys carry leases (some held by
//! the full, some not). They are encoded with `brcore::delta`'s encoder, byte-identical to the
//! Go tool's JSON, plus the sha256 trailer, gzip-compressed like its default policy.
//!
//! Layout under [`Dataset::dir`] (one container, four store prefixes):
//! - `snapshot.db`: the snapshot stream as received (db + sha256), what `etcdutl` restores;
//! - `db`: the same without the trailer, for benches that open it directly;
//! - `stores/gz/v2/`: `Full-…gz` + `Incr-…gz` (the realistic store);
//! - `stores/raw/v2/`: the full uncompressed (no suffix) + the same deltas;
//! - `stores/full-gz/v2/`, `stores/full-raw/v2/`: the full alone;
//! - `stores/ebr/v2/`, `stores/full-ebr/v2/`: the full gzipped as `etcdbrctl snapshot` writes it
//!   (block members at the default level, [`brcore::compress::blocks`]), with the same deltas
//!   and alone;
//! - `info.json`: [`DatasetInfo`].

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use brcore::delta::{Event, EventKind, encode_events, format_rfc3339_nanos};
use brcore::name::{Compression, SnapshotKind, SnapshotName};
use etcd_client::{Client, PutOptions};
use flate2::Compression as Level;
use flate2::write::GzEncoder;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::etcd::{EtcdConfig, EtcdProc, free_port};
use crate::rng::Rng;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetParams {
    /// Keys written into the full snapshot (some are later updated or deleted).
    pub keys: u64,
    /// Average value size in bytes of the full's keys (sizes vary ±50%).
    pub value_size: usize,
    /// Revisions in the deltas after the full.
    pub revisions: u64,
    /// About this many events per delta object (a revision is never split).
    pub events_per_delta: u64,
    /// Average value size in the deltas (sizes vary ±50%).
    pub delta_value_size: usize,
    /// PRNG seed.
    pub seed: u64,
}

impl Default for DatasetParams {
    /// The reference size: a 165 MB full (64k keys of ~1.6 KB: after etcd's random
    /// inserts its pages hold ~2.6 KB per key), 60,000 revisions in deltas of ~1000 events
    /// with ~1 KB values.
    fn default() -> Self {
        DatasetParams {
            keys: 64_000,
            value_size: 1600,
            revisions: 60_000,
            events_per_delta: 1000,
            delta_value_size: 1000,
            seed: 1,
        }
    }
}

impl DatasetParams {
    /// The cache directory name: every parameter, so different sizes never collide.
    pub fn dir_name(&self) -> String {
        format!(
            "g3-k{}-v{}-r{}-e{}-dv{}-s{}",
            self.keys, self.value_size, self.revisions, self.events_per_delta, self.delta_value_size, self.seed
        )
    }
}

/// What was generated (stored as `info.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// The parameters.
    pub params: DatasetParams,
    /// etcd's revision in the full snapshot.
    pub base_revision: i64,
    /// The last revision of the last delta.
    pub last_revision: i64,
    /// Bytes of the snapshot file (db + 32-byte sha256).
    pub snapshot_bytes: u64,
    /// Bytes of the gzip-compressed full object.
    pub full_gz_bytes: u64,
    /// The full object's name (with `.gz`).
    pub full_name: String,
    /// The delta object names, in order.
    pub deltas: Vec<String>,
    /// Events in all deltas.
    pub events: u64,
    /// Compressed bytes of all deltas.
    pub deltas_gz_bytes: u64,
    /// Live keys after the last delta.
    pub live_keys_at_end: u64,
    /// Seconds the generation took.
    pub generation_seconds: f64,
}

/// A generated dataset on disk.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Its directory.
    pub dir: PathBuf,
    /// Its description.
    pub info: DatasetInfo,
}

impl Dataset {
    /// The snapshot file (db + sha256 trailer) as the Maintenance stream delivered it.
    pub fn snapshot_file(&self) -> PathBuf {
        self.dir.join("snapshot.db")
    }

    /// The bare db (the snapshot file without its trailer), what `bbolt::Db::open` reads.
    pub fn db_file(&self) -> PathBuf {
        self.dir.join("db")
    }

    /// The container of the Local stores (`--store-container`).
    pub fn container(&self) -> PathBuf {
        self.dir.join("stores")
    }

    /// The directory of the gzip store's objects (`<container>/gz/v2`).
    pub fn gz_objects(&self) -> PathBuf {
        self.container().join("gz/v2")
    }

    /// Opens or generates the dataset for `params` under `root`; `etcd_bin` writes the full.
    pub fn open_or_generate(root: &Path, params: &DatasetParams, etcd_bin: &Path) -> Result<Dataset> {
        let dir = root.join(params.dir_name());
        let info_path = dir.join("info.json");
        if let Ok(text) = fs::read_to_string(&info_path) {
            let info: DatasetInfo = serde_json::from_str(&text).context("parsing info.json")?;
            if &info.params == params {
                return Ok(Dataset { dir, info });
            }
        }
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing the unfinished {}", dir.display()))?;
        }
        fs::create_dir_all(&dir)?;
        let info = generate(&dir, params, etcd_bin)?;
        fs::write(&info_path, serde_json::to_vec_pretty(&info)?)?;
        Ok(Dataset { dir, info })
    }

    /// Reads and decodes every delta of the gzip store, in order (the events a restore applies).
    pub fn read_events(&self) -> Result<Vec<Event>> {
        let mut events = Vec::with_capacity(self.info.events as usize);
        for name in &self.info.deltas {
            let path = self.gz_objects().join(name);
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let decoder = flate2::read::GzDecoder::new(BufReader::new(file));
            events.extend(brcore::delta::read_events(decoder, name)?);
        }
        Ok(events)
    }
}

fn generate(dir: &Path, params: &DatasetParams, etcd_bin: &Path) -> Result<DatasetInfo> {
    let started = Instant::now();
    let snapshot = dir.join("snapshot.db");
    eprintln!("gen: writing {} keys of ~{} B into {}", params.keys, params.value_size, etcd_bin.display());
    write_full_with_etcd(dir, params, etcd_bin, &snapshot)?;
    eprintln!("gen: snapshot {} bytes after {:.1?}", fs::metadata(&snapshot)?.len(), started.elapsed());

    let data = fs::read(&snapshot)?;
    if data.len() <= 32 {
        bail!("the snapshot stream delivered only {} bytes", data.len());
    }
    let db_bytes = &data[..data.len() - 32];
    fs::write(dir.join("db"), db_bytes)?;
    let db = bbolt::Db::from_bytes(db_bytes.to_vec()).context("reading the snapshot's db")?;
    let base = etcd_format::meta::DbRevisions::read(&db)?.current_revision;
    let live = etcd_format::mvcc::keys_at(&db, base)?;
    drop(db);
    drop(data);
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;

    let stores = dir.join("stores");
    let dirs: Vec<PathBuf> =
        ["gz", "raw", "full-gz", "full-raw", "ebr", "full-ebr"].iter().map(|p| stores.join(p).join("v2")).collect();
    for d in &dirs {
        fs::create_dir_all(d)?;
    }
    let full = |compression| SnapshotName {
        kind: SnapshotKind::Full,
        start_revision: 0,
        last_revision: base as u64,
        created_on: unix,
        compression,
        is_final: false,
    };
    let full_gz = full(Compression::Gzip).to_string();
    let full_raw = full(Compression::None).to_string();
    {
        let mut enc = GzEncoder::new(BufWriter::new(File::create(dirs[0].join(&full_gz))?), Level::default());
        std::io::copy(&mut File::open(&snapshot)?, &mut enc)?;
        enc.finish()?.flush()?;
    }
    let full_gz_bytes = fs::metadata(dirs[0].join(&full_gz))?.len();
    fs::hard_link(dirs[0].join(&full_gz), dirs[2].join(&full_gz))?;
    fs::hard_link(&snapshot, dirs[1].join(&full_raw))?;
    fs::hard_link(&snapshot, dirs[3].join(&full_raw))?;
    write_blocks(&snapshot, &dirs[4].join(&full_gz))?;
    fs::hard_link(dirs[4].join(&full_gz), dirs[5].join(&full_gz))?;

    let mut state = LiveKeys::default();
    let mut leases_in_full = HashSet::new();
    for (key, kv) in live {
        if kv.lease != 0 {
            leases_in_full.insert(kv.lease);
        }
        state.insert(key, kv.create_revision, kv.version);
    }
    let mut leases: Vec<i64> = leases_in_full.into_iter().collect();
    leases.sort_unstable();
    // Leases granted after the full: the deltas reference them, the full has no record.
    leases.extend((0..16).map(|i| 0x6d5a_0000_0000_0000_i64 + i));

    let mut rng = Rng::new(params.seed ^ 0xde17a);
    let mut deltas = Vec::new();
    let (mut events_total, mut deltas_gz_bytes) = (0u64, 0u64);
    let mut batch: Vec<Event> = Vec::new();
    let mut start = base + 1;
    let mut next_new_key = 0u64;
    let time0 = (unix as i128 + 1) * 1_000_000_000;
    let last = base + params.revisions as i64;
    for rev in base + 1..=last {
        let time = format_rfc3339_nanos(time0 + (rev - base) as i128 * 1_000_000);
        let ops = if rng.percent(10) { 2 + rng.below(4) } else { 1 };
        let mut touched: HashSet<Vec<u8>> = HashSet::new();
        for _ in 0..ops {
            let roll = rng.below(100);
            let event = if roll < 15 && state.len() > 1000 {
                let key = state.pick(&mut rng);
                if !touched.insert(key.clone()) {
                    continue;
                }
                state.remove(&key);
                Event {
                    kind: EventKind::Delete,
                    key,
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: rev,
                    version: 0,
                    lease: 0,
                    time: time.clone(),
                }
            } else {
                let create = roll < 45 || state.len() < 1000;
                let key = if create {
                    next_new_key += 1;
                    format!("/registry/events/ns-{:02}/ev-{next_new_key:08}", next_new_key % 40).into_bytes()
                } else {
                    state.pick(&mut rng)
                };
                if !touched.insert(key.clone()) {
                    continue;
                }
                let (create_revision, version) = state.put(&key, rev);
                let lease = if rng.percent(8) { leases[rng.below(leases.len() as u64) as usize] } else { 0 };
                let len = params.delta_value_size / 2 + rng.below(params.delta_value_size as u64 + 1) as usize;
                Event {
                    kind: EventKind::Put,
                    key,
                    value: rng.value(len),
                    create_revision,
                    mod_revision: rev,
                    version,
                    lease,
                    time: time.clone(),
                }
            };
            batch.push(event);
        }
        if batch.len() as u64 >= params.events_per_delta || rev == last {
            let name = SnapshotName {
                kind: SnapshotKind::Incr,
                start_revision: start as u64,
                last_revision: rev as u64,
                created_on: unix + 1 + (rev - base) / 1000,
                compression: Compression::Gzip,
                is_final: false,
            }
            .to_string();
            let content = encode_events(&batch);
            let path = dirs[0].join(&name);
            let mut enc = GzEncoder::new(BufWriter::new(File::create(&path)?), Level::default());
            enc.write_all(&content)?;
            enc.finish()?.flush()?;
            fs::hard_link(&path, dirs[1].join(&name))?;
            fs::hard_link(&path, dirs[4].join(&name))?;
            deltas_gz_bytes += fs::metadata(&path)?.len();
            events_total += batch.len() as u64;
            batch.clear();
            deltas.push(name);
            start = rev + 1;
        }
    }
    eprintln!("gen: {} deltas, {events_total} events, done after {:.1?}", deltas.len(), started.elapsed());
    Ok(DatasetInfo {
        params: params.clone(),
        base_revision: base,
        last_revision: last,
        snapshot_bytes: fs::metadata(&snapshot)?.len(),
        full_gz_bytes,
        full_name: full_gz,
        deltas,
        events: events_total,
        deltas_gz_bytes,
        live_keys_at_end: state.len() as u64,
        generation_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes `snapshot` gzipped as `etcdbrctl snapshot` does: block members at the default level.
fn write_blocks(snapshot: &Path, out: &Path) -> Result<()> {
    use brcore::compress::blocks::{BLOCK_SIZE, BlockFormat, DEFAULT_GZIP_LEVEL};
    let format = BlockFormat::new(Compression::Gzip, DEFAULT_GZIP_LEVEL).context("gzip blocks")?;
    let data = fs::read(snapshot)?;
    let mut w = BufWriter::new(File::create(out)?);
    w.write_all(&format.header())?;
    let mut stream = format.stream();
    for block in data.chunks(BLOCK_SIZE) {
        let b = format.compress(block)?;
        stream.add(&b);
        w.write_all(b.bytes())?;
    }
    w.write_all(&stream.trailer())?;
    w.flush()?;
    Ok(())
}

/// The live keys with what etcd tracks per key: creation revision and version.
#[derive(Default)]
struct LiveKeys {
    keys: Vec<Vec<u8>>,
    info: HashMap<Vec<u8>, (usize, i64, i64)>,
}

impl LiveKeys {
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn insert(&mut self, key: Vec<u8>, create: i64, version: i64) {
        self.info.insert(key.clone(), (self.keys.len(), create, version));
        self.keys.push(key);
    }

    fn pick(&self, rng: &mut Rng) -> Vec<u8> {
        self.keys[rng.below(self.keys.len() as u64) as usize].clone()
    }

    /// Records a put at `rev`; returns the key's create revision and new version.
    fn put(&mut self, key: &[u8], rev: i64) -> (i64, i64) {
        if let Some((_, create, version)) = self.info.get_mut(key) {
            *version += 1;
            return (*create, *version);
        }
        self.insert(key.to_vec(), rev, 1);
        (rev, 1)
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some((idx, _, _)) = self.info.remove(key) {
            self.keys.swap_remove(idx);
            if let Some(moved) = self.keys.get(idx)
                && let Some(entry) = self.info.get_mut(moved)
            {
                entry.0 = idx;
            }
        }
    }
}

/// Starts a fresh etcd, writes the keys (10% updated again, 2% deleted, 5% on leases) and saves
/// its snapshot stream to `snapshot`.
fn write_full_with_etcd(dir: &Path, params: &DatasetParams, etcd_bin: &Path, snapshot: &Path) -> Result<()> {
    let data_dir = dir.join("etcd-gen");
    let cfg = EtcdConfig {
        bin: etcd_bin.to_path_buf(),
        data_dir: data_dir.clone(),
        name: "gen".into(),
        peer_port: free_port()?,
        no_fsync: true,
    };
    let etcd = EtcdProc::start(&cfg)?;
    let endpoint = etcd.endpoint().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let mut client = Client::connect([endpoint.as_str()], None).await?;
        let mut leases = Vec::new();
        for _ in 0..8 {
            leases.push(client.lease_grant(10 * 365 * 86_400, None).await?.id());
        }
        let mut rng = Rng::new(params.seed);
        let key = |i: u64| format!("/registry/pods/ns-{:02}/pod-{i:08}", i % 50);
        let mut ops: Vec<(String, Option<Vec<u8>>, i64)> = Vec::with_capacity(params.keys as usize * 11 / 10);
        let vlen = |rng: &mut Rng| params.value_size / 2 + rng.below(params.value_size as u64 + 1) as usize;
        for i in 0..params.keys {
            let lease = if rng.percent(5) { leases[rng.below(leases.len() as u64) as usize] } else { 0 };
            let len = vlen(&mut rng);
            ops.push((key(i), Some(rng.value(len)), lease));
        }
        for _ in 0..params.keys / 10 {
            let len = vlen(&mut rng);
            ops.push((key(rng.below(params.keys)), Some(rng.value(len)), 0));
        }
        for _ in 0..params.keys / 50 {
            ops.push((key(rng.below(params.keys)), None, 0));
        }
        // Writes in order per phase but 64 in flight, as many API-server clients would.
        let results: Vec<Result<(), etcd_client::Error>> =
            futures::stream::iter(ops.into_iter().map(|(k, v, lease)| {
                let mut c = client.clone();
                async move {
                    match v {
                        Some(v) => {
                            let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                            c.put(k, v, opts).await.map(|_| ())
                        }
                        None => c.delete(k, None).await.map(|_| ()),
                    }
                }
            }))
            .buffered(64)
            .collect()
            .await;
        for r in results {
            r?;
        }
        let mut stream = client.snapshot().await?;
        let mut out = BufWriter::new(File::create(snapshot)?);
        while let Some(msg) = stream.message().await? {
            out.write_all(msg.blob())?;
        }
        out.flush()?;
        anyhow::Ok(())
    })?;
    etcd.stop()?;
    let _ = fs::remove_dir_all(&data_dir);
    match etcd_format::snapshot_file::verify_snapshot_file(snapshot)? {
        etcd_format::snapshot_file::TrailerStatus::Verified => Ok(()),
        other => bail!("the snapshot stream's sha256 trailer is not valid: {other:?}"),
    }
}

/// Reads a whole file, for benches that want the bytes in memory.
pub fn read_all(path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path).with_context(|| format!("opening {}", path.display()))?.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_track_versions_and_survive_removal_in_the_middle() {
        let mut live = LiveKeys::default();
        live.insert(b"a".to_vec(), 5, 2);
        assert_eq!(live.put(b"a", 10), (5, 3));
        assert_eq!(live.put(b"b", 11), (11, 1));
        assert_eq!(live.put(b"c", 12), (12, 1));
        live.remove(b"a");
        assert_eq!(live.len(), 2);
        // "c" moved into "a"'s slot; its bookkeeping follows.
        live.remove(b"c");
        assert_eq!(live.keys, vec![b"b".to_vec()]);
        assert_eq!(live.info[b"b".as_slice()].0, 0);
        // A key created again after its delete starts over.
        assert_eq!(live.put(b"a", 13), (13, 1));
        let mut rng = Rng::new(1);
        assert!(live.info.contains_key(&live.pick(&mut rng)));
    }
}
