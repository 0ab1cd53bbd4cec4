//! The one read → transform → bulk-write pass behind restore, compact and verify.
//!
//! [`rebuild_db`] reads a source db (a full snapshot) bucket by bucket in key order and writes a
//! fresh, compact db: every bucket is copied as it is, except
//! - `key`: the source's revisions, then every delta event appended with its original main
//!   revision and its sub-revision (its position within its revision); tombstones for deletes.
//!   Delta revisions are all above the source's, so this is a pure append in key order.
//! - `lease`: the source's leases, plus a record for each lease that a key written by the deltas
//!   still references but the source does not hold (the TTL comes from [`LeasePolicy`]).
//! - `meta`, `members`, `members_removed`: as [`Membership`] says (a restore writes the new
//!   cluster's; compact keeps the source's).
//!
//! The pass is sync and streaming: the source is read through bbolt's cursor, events arrive as
//! an iterator, and the writer emits pages as they fill. Memory is bounded by one page per tree
//! level plus the set of keys the deltas touched (for lease bookkeeping).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Seek, Write};

use bbolt::{BulkWriter, Db, Entry, WriterOptions};
use etcd_format::lease::Lease;
use etcd_format::meta;
use etcd_format::mvcc::{
    self, KeyValueRef, MEMBERS_BUCKET as MEMBERS, MEMBERS_REMOVED_BUCKET as MEMBERS_REMOVED, RevKey, Revision,
};

use crate::delta::{Event, EventBatch, EventKind, EventRef};
use crate::error::Error;

/// What to do with the cluster membership stored in the db.
#[derive(Debug, Clone)]
pub enum Membership {
    /// Keep `members`, `members_removed` and the raft fields of `meta` as the source has them
    /// (compact: the result is a snapshot, a later restore sets the membership).
    Keep,
    /// Write a new cluster's membership (restore).
    Replace {
        /// `members` bucket entries: member id in lowercase hex → member JSON, sorted by key.
        members: Vec<(Vec<u8>, Vec<u8>)>,
        /// `meta/consistent_index`: the number of members, the index of the WAL's snapshot.
        consistent_index: u64,
        /// `meta/term`.
        term: u64,
        /// `meta/confState` JSON (`{"voters":[..],"auto_leave":false}`), read by etcd 3.6.
        conf_state_json: Vec<u8>,
    },
}

/// How a lease referenced by a restored key but absent from the full snapshot gets its TTL.
///
/// Deltas carry lease ids but never TTLs (a grant makes no watch event). Without a record the
/// key would never expire, so a record is written with a TTL from outside the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeasePolicy {
    /// The largest TTL among the source's leases, or the given fallback when it has none.
    MaxOfSourceOr(i64),
    /// Always this TTL, in seconds.
    Fixed(i64),
    /// Write no records: such keys keep their lease id but never expire (etcd logs
    /// "lease not found" at boot).
    None,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        // One hour: Kubernetes' node leases use 40 s, events 1 h; an hour never shortens a lease
        // that came from the same cluster and keeps orphaned keys from living forever.
        LeasePolicy::MaxOfSourceOr(3600)
    }
}

/// Options of one rebuild pass: [`RebuildOptions::new`], then set what differs.
/// Fields may be added in any release (the struct is `#[non_exhaustive]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RebuildOptions {
    /// Apply events up to and including this revision; `None` = all.
    pub to_revision: Option<i64>,
    /// Apply only revisions whose first event happened at or before this time (unix
    /// nanoseconds); `None` = no time bound.
    pub to_time_nanos: Option<i128>,
    /// The membership to write.
    pub membership: Membership,
    /// TTLs for leases the deltas reference.
    pub lease_policy: LeasePolicy,
    /// `--bump-revision N --mark-compacted`: add an empty key at `last + N` and schedule a
    /// compaction there, as `etcdutl snapshot restore` does, so watchers must re-list.
    pub bump_revision: Option<i64>,
    /// Go past this revision: when the replay ends below it (a restore back in time while the
    /// store holds newer revisions), the bump is `bump_past - revision` plus `bump_revision`
    /// (or [`DEFAULT_BUMP_MARGIN`]), so the result's revision is above every revision the store
    /// holds (see [`bump_for`]).
    pub bump_past: Option<i64>,
    /// bbolt page size and fill of the written db.
    pub writer: WriterOptions,
    /// TTLs (seconds) of leases granted after the full snapshot, as the snapshotter recorded
    /// them beside the deltas; they win over `lease_policy`.
    pub known_lease_ttls: HashMap<i64, i64>,
}

impl RebuildOptions {
    /// Every revision, written with `membership`, the default lease policy and writer options,
    /// no bump.
    pub fn new(membership: Membership) -> RebuildOptions {
        RebuildOptions {
            to_revision: None,
            to_time_nanos: None,
            membership,
            lease_policy: LeasePolicy::default(),
            bump_revision: None,
            bump_past: None,
            writer: WriterOptions::default(),
            known_lease_ttls: HashMap::new(),
        }
    }
}

/// Revisions added on top of the store's newest when a restore goes back in time and bumps past
/// it: etcd's own advice for restoring Kubernetes (`--bump-revision 1000000000`), so revisions
/// that the old etcd served but no backup holds are passed too.
pub const DEFAULT_BUMP_MARGIN: i64 = 1_000_000_000;

/// The bump for a replay that ended at `revision`: past `bump_past` (when the replay ended below
/// it) by `explicit` or [`DEFAULT_BUMP_MARGIN`], else `explicit`.
pub fn bump_for(explicit: Option<i64>, bump_past: Option<i64>, revision: i64) -> Option<i64> {
    match bump_past {
        Some(past) if revision < past => Some(past - revision + explicit.unwrap_or(DEFAULT_BUMP_MARGIN)),
        _ => explicit,
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildStats {
    /// etcd's current revision of the source db (max of its last key revision and its
    /// finished compaction): events at or below it were already in the source.
    pub base_revision: i64,
    /// The current revision of the written db.
    pub revision: i64,
    /// The compaction revision of the written db (0 when never compacted).
    pub compact_revision: i64,
    /// Revisions in the written db's `key` bucket.
    pub key_revisions: u64,
    /// Events taken from the deltas.
    pub events_applied: u64,
    /// Events skipped because the source already held their revision (overlap).
    pub events_skipped: u64,
    /// Main revisions appended.
    pub revisions_applied: u64,
    /// Lease records added for keys that the deltas attached to leases missing from the source.
    pub leases_added: u64,
    /// Whether the events ended before the requested `to_revision`.
    pub ended_early: bool,
    /// Revisions added by the bump (0: none).
    pub bumped_by: i64,
}

/// Rebuilds `source` plus `events` into a fresh db written to `out`.
///
/// `events` must come in the order the deltas hold them. Their main revisions must continue
/// the source's without a gap; a gap is [`Error::Gap`], a revision that goes backwards or a key
/// that appears twice in one revision is [`Error::Corrupt`].
pub fn rebuild_db<W, I>(source: &Db, events: I, opts: &RebuildOptions, out: W) -> Result<(W, RebuildStats), Error>
where
    W: Write + Seek,
    I: IntoIterator<Item = Result<Event, Error>>,
{
    rebuild(source, opts, out, |append| {
        for event in events {
            append.push(event?.view())?;
        }
        Ok(())
    })
}

/// [`rebuild_db`] with the events in batches, as the restore's streaming decoders hand them
/// out ([`crate::delta::DeltaDecoder`]).
pub fn rebuild_db_batches<W, I>(
    source: &Db,
    batches: I,
    opts: &RebuildOptions,
    out: W,
) -> Result<(W, RebuildStats), Error>
where
    W: Write + Seek,
    I: IntoIterator<Item = Result<EventBatch, Error>>,
{
    rebuild(source, opts, out, |append| {
        for batch in batches {
            for event in batch?.iter() {
                append.push(event)?;
            }
        }
        Ok(())
    })
}

fn rebuild<W, F>(source: &Db, opts: &RebuildOptions, out: W, feed: F) -> Result<(W, RebuildStats), Error>
where
    W: Write + Seek,
    F: FnOnce(&mut Appender<'_, W>) -> Result<(), Error>,
{
    let revs = meta::DbRevisions::read(source).map_err(|e| Error::corrupt("full snapshot", e))?;
    let base = revs.current_revision;
    let mut stats = RebuildStats { base_revision: base, revision: base, ..Default::default() };
    stats.compact_revision = revs.compact_revision.unwrap_or(0);
    if let Some(to) = opts.to_revision
        && to < base
    {
        return Err(Error::Refused {
            why: format!(
                "the target revision {to} is older than the full snapshot (revision {base}); \
                 pick a revision at or above {base}, or restore from an older full snapshot"
            ),
        });
    }

    let mut writer = BulkWriter::new(out, opts.writer).map_err(Error::db_write)?;
    let names = bucket_names(source, &opts.membership)?;
    let mut feed = Some(feed);
    let mut delta_leases: HashMap<Vec<u8>, i64> = HashMap::new();

    for name in &names {
        writer.begin_bucket(name).map_err(Error::db_write)?;
        match name.as_slice() {
            mvcc::KEY_BUCKET => {
                stats.key_revisions = copy_bucket(source, name, &mut writer)?;
                let mut append = Appender::new(opts, &mut writer, &mut stats, &mut delta_leases);
                if let Some(feed) = feed.take() {
                    feed(&mut append)?;
                }
                append.finish();
                if let Some(bump) = bump_for(opts.bump_revision, opts.bump_past, stats.revision) {
                    let rev = stats.revision + bump;
                    stats.bumped_by = bump;
                    writer.put(&RevKey::put(Revision::new(rev, 0)).to_bytes(), &[]).map_err(Error::db_write)?;
                    stats.key_revisions += 1;
                    stats.revision = rev;
                    stats.compact_revision = rev;
                }
            }
            mvcc::LEASE_BUCKET => {
                stats.leases_added =
                    write_leases(source, &delta_leases, opts.lease_policy, &opts.known_lease_ttls, &mut writer)?;
            }
            meta::META_BUCKET => write_meta(source, opts, &stats, &mut writer)?,
            MEMBERS | MEMBERS_REMOVED => match &opts.membership {
                Membership::Keep => {
                    copy_bucket(source, name, &mut writer)?;
                }
                Membership::Replace { members, .. } => {
                    if name.as_slice() == MEMBERS {
                        for (k, v) in members {
                            writer.put(k, v).map_err(Error::db_write)?;
                        }
                    }
                }
            },
            _ => {
                copy_bucket(source, name, &mut writer)?;
            }
        }
        writer.end_bucket().map_err(Error::db_write)?;
    }
    let (out, _) = writer.finish().map_err(Error::db_write)?;
    Ok((out, stats))
}

/// The top-level buckets to write: the source's, plus those etcd expects that it lacks.
fn bucket_names(source: &Db, membership: &Membership) -> Result<Vec<Vec<u8>>, Error> {
    let mut names = BTreeSet::new();
    for entry in source.root().iter() {
        match entry.map_err(|e| Error::corrupt("full snapshot", e))? {
            Entry::Bucket { name } => {
                names.insert(name.to_vec());
            }
            Entry::Value { key, .. } => {
                return Err(Error::corrupt(
                    "full snapshot",
                    format!("the root bucket holds a plain key {:?}, not an etcd db", String::from_utf8_lossy(key)),
                ));
            }
        }
    }
    for required in [mvcc::KEY_BUCKET, meta::META_BUCKET, mvcc::LEASE_BUCKET] {
        names.insert(required.to_vec());
    }
    if matches!(membership, Membership::Replace { .. }) {
        names.insert(MEMBERS.to_vec());
        names.insert(MEMBERS_REMOVED.to_vec());
    }
    Ok(names.into_iter().collect())
}

/// Bytes read from the source between two [`Db::release_pages`] calls: bounds the resident
/// set of a rebuild of a large db to about this much of the mapped source. At 16 MiB the 1M
/// revision restore peaked at 147 MiB RSS against 218 at 64 MiB, in the same time.
const RELEASE_EVERY: usize = 16 << 20;

/// Copies bucket `name` of `source` as it is; returns the number of entries copied.
fn copy_bucket<W: Write + Seek>(source: &Db, name: &[u8], writer: &mut BulkWriter<W>) -> Result<u64, Error> {
    let Some(bucket) = source.bucket(name).map_err(|e| Error::corrupt("full snapshot", e))? else {
        return Ok(0);
    };
    let (mut n, mut since_release) = (0u64, 0usize);
    for entry in bucket.iter() {
        match entry.map_err(|e| Error::corrupt("full snapshot", e))? {
            Entry::Value { key, value } => {
                writer.put(key, value).map_err(Error::db_write)?;
                n += 1;
                since_release += key.len() + value.len();
                if since_release >= RELEASE_EVERY {
                    source.release_pages();
                    since_release = 0;
                }
            }
            Entry::Bucket { name: nested } => {
                return Err(Error::corrupt(
                    "full snapshot",
                    format!(
                        "bucket {:?} holds a nested bucket {:?}; etcd never writes those",
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(nested)
                    ),
                ));
            }
        }
    }
    // What is left mapped would stay resident while the deltas are applied after it.
    source.release_pages();
    Ok(n)
}

/// Appends the events above the base revision to the `key` bucket being written, one by one.
struct Appender<'a, W: Write + Seek> {
    opts: &'a RebuildOptions,
    writer: &'a mut BulkWriter<W>,
    stats: &'a mut RebuildStats,
    delta_leases: &'a mut HashMap<Vec<u8>, i64>,
    base: i64,
    /// The last main revision written.
    current: i64,
    sub: i64,
    keys_in_rev: KeysInRevision,
    value_buf: Vec<u8>,
    stopped: bool,
}

impl<'a, W: Write + Seek> Appender<'a, W> {
    fn new(
        opts: &'a RebuildOptions,
        writer: &'a mut BulkWriter<W>,
        stats: &'a mut RebuildStats,
        delta_leases: &'a mut HashMap<Vec<u8>, i64>,
    ) -> Self {
        let base = stats.base_revision;
        Appender {
            opts,
            writer,
            stats,
            delta_leases,
            base,
            current: base,
            sub: 0,
            keys_in_rev: KeysInRevision::default(),
            value_buf: Vec::with_capacity(256),
            stopped: false,
        }
    }

    fn push(&mut self, event: EventRef<'_>) -> Result<(), Error> {
        let rev = event.mod_revision;
        if rev <= self.base {
            self.stats.events_skipped += 1;
            return Ok(());
        }
        if self.stopped {
            // Drain the rest so every delta is still fetched and verified.
            return Ok(());
        }
        if rev == self.current && self.current > self.base {
            self.sub += 1;
        } else {
            if rev < self.current {
                return Err(Error::corrupt(
                    "delta chain",
                    format!("revision goes backwards from {} to {rev}", self.current),
                ));
            }
            if self.opts.to_revision.is_some_and(|to| rev > to)
                || self.opts.to_time_nanos.is_some_and(|t| event.time_nanos().is_some_and(|et| et > t))
            {
                self.stopped = true;
                return Ok(());
            }
            if rev != self.current + 1 {
                return Err(Error::Gap { from: self.current + 1, to: rev - 1, detail: String::new() });
            }
            self.current = rev;
            self.sub = 0;
            self.keys_in_rev.clear();
            self.stats.revisions_applied += 1;
        }
        if self.keys_in_rev.contains(event.key) {
            return Err(Error::corrupt(
                "delta chain",
                format!("key {:?} changes twice in revision {rev}", String::from_utf8_lossy(event.key)),
            ));
        }
        let revision = Revision::new(rev, self.sub);
        self.value_buf.clear();
        let (rev_key, lease) = match event.kind {
            EventKind::Put => {
                KeyValueRef {
                    key: event.key,
                    create_revision: event.create_revision,
                    mod_revision: rev,
                    version: event.version,
                    value: event.value,
                    lease: event.lease,
                }
                .encode_to(&mut self.value_buf);
                (RevKey::put(revision), event.lease)
            }
            EventKind::Delete => {
                // A tombstone's value is the key alone (etcd fills mod_revision in only on the
                // watch copy): `0a <len> key`.
                KeyValueRef { key: event.key, create_revision: 0, mod_revision: 0, version: 0, value: &[], lease: 0 }
                    .encode_to(&mut self.value_buf);
                (RevKey::tombstone(revision), 0)
            }
        };
        self.writer.put(&rev_key.to_bytes(), &self.value_buf).map_err(Error::db_write)?;
        // Lease bookkeeping only for keys that have or had a lease: most keys never do.
        if lease != 0 {
            self.delta_leases.insert(event.key.to_vec(), lease);
        } else if !self.delta_leases.is_empty()
            && let Some(slot) = self.delta_leases.get_mut(event.key)
        {
            *slot = 0;
        }
        self.keys_in_rev.insert(event.key);
        self.stats.events_applied += 1;
        self.stats.key_revisions += 1;
        Ok(())
    }

    fn finish(self) {
        self.stats.revision = self.current;
        self.stats.ended_early = self.opts.to_revision.is_some_and(|to| self.current < to);
    }
}

/// The keys changed in the current revision, to refuse a key changing twice in one revision.
/// Almost every revision changes one key, so a few keys in one reused buffer serve them; a
/// range delete of many keys moves to a set so the check stays linear.
#[derive(Default)]
struct KeysInRevision {
    /// The first few keys, back to back; `ends` marks where each ends.
    few: Vec<u8>,
    ends: Vec<usize>,
    many: std::collections::HashSet<Vec<u8>>,
}

impl KeysInRevision {
    const FEW: usize = 16;

    fn clear(&mut self) {
        self.few.clear();
        self.ends.clear();
        if !self.many.is_empty() {
            self.many.clear();
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        let mut start = 0;
        for &end in &self.ends {
            if &self.few[start..end] == key {
                return true;
            }
            start = end;
        }
        !self.many.is_empty() && self.many.contains(key)
    }

    fn insert(&mut self, key: &[u8]) {
        if self.ends.len() < Self::FEW {
            self.few.extend_from_slice(key);
            self.ends.push(self.few.len());
        } else {
            self.many.insert(key.to_vec());
        }
    }
}

fn write_leases<W: Write + Seek>(
    source: &Db,
    delta_leases: &HashMap<Vec<u8>, i64>,
    policy: LeasePolicy,
    known_ttls: &HashMap<i64, i64>,
    writer: &mut BulkWriter<W>,
) -> Result<u64, Error> {
    let mut records: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut max_ttl = 0;
    if let Some(bucket) = source.bucket(mvcc::LEASE_BUCKET).map_err(|e| Error::corrupt("full snapshot", e))? {
        for entry in bucket.iter() {
            if let Entry::Value { key, value } = entry.map_err(|e| Error::corrupt("full snapshot", e))? {
                if let Ok(lease) = Lease::decode(value) {
                    max_ttl = max_ttl.max(lease.ttl);
                }
                records.insert(key.to_vec(), value.to_vec());
            }
        }
    }
    let ttl = match policy {
        LeasePolicy::None => None,
        LeasePolicy::Fixed(ttl) => Some(ttl),
        LeasePolicy::MaxOfSourceOr(fallback) => Some(if max_ttl > 0 { max_ttl } else { fallback }),
    };
    let mut added = 0;
    let in_use: BTreeSet<i64> = delta_leases.values().copied().filter(|&id| id != 0).collect();
    for id in in_use {
        let Some(ttl) = known_ttls.get(&id).copied().filter(|&t| t > 0).or(ttl) else {
            continue;
        };
        // A TTL of 0 would make etcd expire the lease (and delete its keys) seconds after boot.
        let ttl = ttl.max(1);
        let key = Lease::bucket_key(id).to_vec();
        if let std::collections::btree_map::Entry::Vacant(slot) = records.entry(key) {
            slot.insert(Lease { id, ttl, remaining_ttl: 0 }.encode());
            added += 1;
        }
    }
    for (k, v) in &records {
        writer.put(k, v).map_err(Error::db_write)?;
    }
    Ok(added)
}

fn write_meta<W: Write + Seek>(
    source: &Db,
    opts: &RebuildOptions,
    stats: &RebuildStats,
    writer: &mut BulkWriter<W>,
) -> Result<(), Error> {
    let mut entries: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    if let Some(bucket) = source.bucket(meta::META_BUCKET).map_err(|e| Error::corrupt("full snapshot", e))? {
        for entry in bucket.iter() {
            if let Entry::Value { key, value } = entry.map_err(|e| Error::corrupt("full snapshot", e))? {
                entries.insert(key.to_vec(), value.to_vec());
            }
        }
    }
    if let Membership::Replace { consistent_index, term, conf_state_json, .. } = &opts.membership {
        // consistent_index must equal the WAL's snapshot index: a larger value (the source's)
        // makes etcd skip the first raft entries and every write hangs; 0 makes it panic.
        entries.insert(meta::CONSISTENT_INDEX.to_vec(), consistent_index.to_be_bytes().to_vec());
        entries.insert(meta::TERM.to_vec(), term.to_be_bytes().to_vec());
        entries.insert(meta::CONF_STATE.to_vec(), conf_state_json.clone());
    }
    if stats.bumped_by > 0 {
        // Mark compacted: etcd resumes the scheduled compaction at boot, so watchers that ask
        // for an older revision get "compacted" and re-list.
        let at = RevKey::put(Revision::new(stats.revision, 0)).to_bytes();
        entries.insert(meta::SCHEDULED_COMPACT_REV.to_vec(), at.to_vec());
    }
    for (k, v) in &entries {
        writer.put(k, v).map_err(Error::db_write)?;
    }
    Ok(())
}
