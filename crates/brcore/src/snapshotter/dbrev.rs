//! etcd's revision, read from a bbolt db while its bytes stream past: [`RevisionScanner`].
//!
//! A full snapshot is named after the revision of the db it holds. The reference asks etcd for
//! the revision in a separate call before the snapshot, which can be lower than the db's own
//! (its issue #1044). The only exact source is the db itself, so the scanner reads it from the
//! snapshot stream as it passes, in one forward pass and without keeping the db:
//!
//! 1. Pages 0 and 1 are bbolt's meta pages: page size, root bucket page, transaction id.
//! 2. Every later page boundary may start a branch or leaf page. For each such page the scanner
//!    keeps a summary of a few words: for branch pages the last child and the child that would
//!    hold each name it may have to look up (`key`, `meta`, `finishedCompactRev`,
//!    `scheduledCompactRev`); for leaf pages the revision in their last key (when it has the
//!    shape of an etcd revision key) and any of those names they hold.
//! 3. At the end it walks from the newest valid meta page through the summaries: root bucket →
//!    `key` bucket → rightmost leaf → last key, and root bucket → `meta` bucket → the compaction
//!    marks. The db's revision is the larger of the last key's main revision and the compaction
//!    revisions (etcd does the same when it opens a db: a compaction can delete the newest key
//!    when it was a tombstone).
//!
//! Only pages reached from the meta page are used, so stale pages that bbolt freed but never
//! overwrote (and a page-shaped run of bytes inside another page's overflow) do no harm: they
//! are summarised and never looked at. Memory is about 16 bytes per leaf page of the db (32 MiB
//! for an 8 GiB db of 4 KiB pages) plus one page being read.
//!
//! (The file passes 700 lines only with its unit tests, kept beside the code they pin.)

use std::collections::HashMap;

use bbolt::{
    BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, BranchElementHeader, FLAG_BRANCH, FLAG_LEAF, FLAG_META, LeafElementHeader,
    MAGIC, MAX_PAGE_SIZE, META_END, META_MAGIC_OFFSET, META_PAGE_SIZE_END, META_PAGE_SIZE_OFFSET, META_VERSION_OFFSET,
    MIN_PAGE_SIZE, Meta, PAGE_HEADER_SIZE, PageHeader, VERSION, element_offset,
};
use etcd_format::meta::{FINISHED_COMPACT_REV, SCHEDULED_COMPACT_REV};
use etcd_format::mvcc::{KEY_BUCKET, MARKED_REV_BYTES_LEN, META_BUCKET, REV_BYTES_LEN};

/// Bytes of the stream needed to learn the page size: meta 0's header, magic, version and
/// page size.
const HEAD_LEN: usize = META_PAGE_SIZE_END;
/// Largest prefix of one page run kept to read its element headers and in-page keys. Longer
/// element arrays only occur in damaged pages; such a page is marked unreadable.
const MAX_COLLECT: usize = 256 * 1024;
/// Deepest tree the walk follows before it decides the db is damaged (bbolt trees are a few
/// levels deep; a cycle in a damaged db must not loop forever).
const MAX_DEPTH: usize = 64;

/// Names the walk may look up. Indexes into the per-page arrays below.
const TARGETS: [&[u8]; 4] = [KEY_BUCKET, META_BUCKET, FINISHED_COMPACT_REV, SCHEDULED_COMPACT_REV];
const T_KEY: usize = 0;
const T_META: usize = 1;
const T_FINISHED: usize = 2;
const T_SCHEDULED: usize = 3;

/// A child pointer that could not be read (its key lay outside what the scanner kept).
const UNKNOWN_CHILD: u64 = u64::MAX;

/// What the scanner learnt about a db.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbRevision {
    /// etcd's revision of the db: what etcd reports after opening it (at least 1).
    pub revision: u64,
    /// The main revision of the newest key in the `key` bucket (0 if it is empty).
    pub last_key_revision: u64,
    /// The largest compaction mark (finished or scheduled), if any.
    pub compact_revision: Option<u64>,
    /// The bbolt transaction id of the meta page used.
    pub txid: u64,
    /// bbolt's page size.
    pub page_size: u32,
    /// Bytes of db scanned.
    pub db_size: u64,
}

/// Why no revision could be read from a db stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The bytes are not a bbolt db or are damaged where the scanner must read.
    #[error("not a readable bbolt db at offset {offset}: {why}")]
    Malformed {
        /// Byte offset in the db where the problem was found (0 when it concerns the whole db).
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// The db ended before a page the scanner had started to read.
    #[error("db ends at {size} bytes, inside page {pgid}")]
    Truncated {
        /// The page being read.
        pgid: u64,
        /// Bytes seen.
        size: u64,
    },
    /// The walk reached a page that the scanner could not summarise (a key or element array
    /// beyond what it keeps).
    #[error("page {pgid} is needed but could not be read while streaming ({why})")]
    Unreadable {
        /// The page.
        pgid: u64,
        /// Why.
        why: &'static str,
    },
}

/// The last key of a leaf page, as far as the scanner could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastKey {
    /// The page holds no element.
    Empty,
    /// An etcd revision key with this main revision.
    Rev(u64),
    /// Some other key (the page is not part of the `key` bucket).
    Other,
    /// The key lies outside the part of the page that was kept and was not captured.
    Unknown,
}

/// Where a bucket's content lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BucketRef {
    /// A bucket with its own page tree, rooted at this page.
    Root(u64),
    /// An inline bucket: its single leaf is stored in the parent's value.
    Inline(Box<LeafInfo>),
    /// The bucket value could not be read.
    Unknown,
}

/// What a leaf page (or an inline bucket's leaf) holds that a walk may need.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeafInfo {
    last: LastKey,
    /// Bucket entries named `key` and `meta` (only meaningful in the root bucket).
    buckets: [Option<BucketRef>; 2],
    /// Main revision stored under `finishedCompactRev` and `scheduledCompactRev` (only
    /// meaningful in the `meta` bucket).
    compact: [Option<u64>; 2],
}

impl LeafInfo {
    fn is_plain(&self) -> bool {
        matches!(self.last, LastKey::Rev(_))
            && self.buckets.iter().all(Option::is_none)
            && self.compact.iter().all(Option::is_none)
    }
}

/// A page summary kept for the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PageInfo {
    Branch {
        /// The rightmost child.
        last: u64,
        /// The child that would hold each of [`TARGETS`].
        child: [u64; 4],
    },
    Leaf(Box<LeafInfo>),
    /// A branch or leaf page the scanner could not summarise.
    Unreadable(&'static str),
}

/// One page run being read: its prefix is collected until `want` bytes are there.
#[derive(Debug)]
struct Collector {
    pgid: u64,
    start: u64,
    want: usize,
    header_done: bool,
    buf: Vec<u8>,
}

/// A leaf's last key that lies beyond the collected prefix of its run.
#[derive(Debug)]
struct Deferred {
    pgid: u64,
    start: u64,
    len: usize,
    buf: Vec<u8>,
    info: LeafInfo,
}

/// Reads etcd's revision from a bbolt db streamed through [`RevisionScanner::feed`].
///
/// Feed the db's bytes in order (without etcd's 32-byte sha256 trailer), then call
/// [`RevisionScanner::finish`].
#[derive(Debug, Default)]
pub struct RevisionScanner {
    offset: u64,
    page_size: u64,
    head: Vec<u8>,
    /// The meta pages that validated.
    metas: [Option<Meta>; 2],
    collectors: Vec<Collector>,
    deferred: Vec<Deferred>,
    /// Leaves whose only interesting content is a revision-shaped last key, in page order.
    plain: Vec<(u64, u64)>,
    /// Every other summarised page.
    special: HashMap<u64, PageInfo>,
    error: Option<ScanError>,
}

impl RevisionScanner {
    /// A scanner at the start of a db.
    pub fn new() -> RevisionScanner {
        RevisionScanner::default()
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.offset + self.head.len() as u64
    }

    /// Reads the next bytes of the db.
    pub fn feed(&mut self, mut data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.page_size == 0 {
            let take = (HEAD_LEN - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.head.len() < HEAD_LEN {
                return;
            }
            let head = std::mem::take(&mut self.head);
            match page_size_of(&head) {
                Ok(ps) => self.page_size = ps,
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
            self.feed_pages(&head);
        }
        self.feed_pages(data);
    }

    fn feed_pages(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.error.is_none() {
            let in_page = (self.offset % self.page_size) as usize;
            if in_page == 0 {
                let pgid = self.offset / self.page_size;
                let want = if pgid < 2 { META_END } else { PAGE_HEADER_SIZE };
                self.collectors.push(Collector {
                    pgid,
                    start: self.offset,
                    want,
                    header_done: false,
                    buf: Vec::with_capacity(want),
                });
            }
            let n = data.len().min(self.page_size as usize - in_page);
            let piece = &data[..n];
            self.push_piece(piece);
            self.offset += n as u64;
            data = &data[n..];
        }
    }

    /// Hands `piece` (starting at `self.offset`, never crossing a page boundary) to every
    /// collector and deferred key capture, and finishes those that are complete.
    fn push_piece(&mut self, piece: &[u8]) {
        let mut i = 0;
        while i < self.collectors.len() {
            let mut done = false;
            {
                let c = &mut self.collectors[i];
                let mut rest = piece;
                loop {
                    let need = c.want - c.buf.len();
                    let take = need.min(rest.len());
                    c.buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if c.buf.len() < c.want {
                        break;
                    }
                    if c.pgid < 2 || c.header_done {
                        done = true;
                        break;
                    }
                    // The page header is in: decide whether and how much to keep.
                    c.header_done = true;
                    match run_want(&c.buf, c.pgid, self.page_size) {
                        Some(want) if want > c.buf.len() => c.want = want,
                        Some(_) => {
                            done = true;
                            break;
                        }
                        None => {
                            c.want = 0;
                            done = true;
                            break;
                        }
                    }
                }
            }
            if done {
                let c = self.collectors.swap_remove(i);
                self.finish_collector(c);
            } else {
                i += 1;
            }
        }
        let end = self.offset + piece.len() as u64;
        let mut j = 0;
        while j < self.deferred.len() {
            let d = &mut self.deferred[j];
            let from = d.start + d.buf.len() as u64;
            if from >= self.offset && from < end {
                let at = (from - self.offset) as usize;
                let take = (d.len - d.buf.len()).min(piece.len() - at);
                d.buf.extend_from_slice(&piece[at..at + take]);
            }
            if d.buf.len() == d.len {
                let mut d = self.deferred.swap_remove(j);
                d.info.last = classify_last_key(&d.buf);
                self.store_leaf(d.pgid, d.info);
            } else {
                j += 1;
            }
        }
    }

    fn finish_collector(&mut self, c: Collector) {
        if c.pgid < 2 {
            self.metas[c.pgid as usize] = parse_meta(&c.buf, c.pgid as u8);
            return;
        }
        if c.want == 0 {
            return; // not a branch or leaf page
        }
        let Some(header) = PageHeader::decode(&c.buf) else { return };
        let run_len = run_len(&header, self.page_size);
        if header.flags & FLAG_BRANCH != 0 {
            self.special.insert(c.pgid, summarise_branch(&c.buf));
        } else {
            let (info, pending) = summarise_leaf(&c.buf, run_len);
            match pending {
                Some((pos, len)) => self.deferred.push(Deferred {
                    pgid: c.pgid,
                    start: c.start + pos as u64,
                    len,
                    buf: Vec::with_capacity(len),
                    info,
                }),
                None => self.store_leaf(c.pgid, info),
            }
        }
    }

    fn store_leaf(&mut self, pgid: u64, info: LeafInfo) {
        match info.last {
            LastKey::Rev(rev) if info.is_plain() => {
                // Pages arrive in order, except deferred ones; keep the vector sorted.
                match self.plain.last() {
                    Some(&(last, _)) if last > pgid => {
                        let at = self.plain.partition_point(|&(p, _)| p < pgid);
                        self.plain.insert(at, (pgid, rev));
                    }
                    _ => self.plain.push((pgid, rev)),
                }
            }
            _ => {
                self.special.insert(pgid, PageInfo::Leaf(Box::new(info)));
            }
        }
    }

    fn page(&self, pgid: u64) -> Option<PageInfo> {
        if let Some(info) = self.special.get(&pgid) {
            return Some(info.clone());
        }
        let at = self.plain.binary_search_by_key(&pgid, |&(p, _)| p).ok()?;
        let rev = self.plain[at].1;
        Some(PageInfo::Leaf(Box::new(LeafInfo {
            last: LastKey::Rev(rev),
            buckets: [None, None],
            compact: [None, None],
        })))
    }

    /// Ends the db and returns its revision.
    pub fn finish(self) -> Result<DbRevision, ScanError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.page_size == 0 {
            return Err(ScanError::Malformed {
                offset: 0,
                why: format!("only {} bytes, no meta page", self.head.len()),
            });
        }
        if !self.offset.is_multiple_of(self.page_size) {
            return Err(ScanError::Truncated { pgid: self.offset / self.page_size, size: self.offset });
        }
        if let Some(c) = self.collectors.first() {
            return Err(ScanError::Truncated { pgid: c.pgid, size: self.offset });
        }
        if let Some(d) = self.deferred.first() {
            return Err(ScanError::Truncated { pgid: d.pgid, size: self.offset });
        }
        let meta = self
            .metas
            .iter()
            .flatten()
            .filter(|m| m.page_size as u64 == self.page_size)
            .max_by_key(|m| m.txid)
            .copied()
            .ok_or_else(|| ScanError::Malformed { offset: 0, why: "neither meta page is valid".into() })?;
        if meta.pgid.saturating_mul(self.page_size) > self.offset {
            return Err(ScanError::Truncated { pgid: meta.pgid, size: self.offset });
        }
        let key = self.find_bucket(meta.root, T_KEY)?.ok_or_else(|| ScanError::Malformed {
            offset: 0,
            why: "no bucket \"key\" in the root bucket: not an etcd db".into(),
        })?;
        let last_key_revision = self.last_revision(&key)?;
        // A db without a `meta` bucket has never been compacted.
        let compact_revision = match self.find_bucket(meta.root, T_META)? {
            Some(meta_bucket) => {
                let finished = self.lookup(&meta_bucket, T_FINISHED)?;
                let scheduled = self.lookup(&meta_bucket, T_SCHEDULED)?;
                finished.max(scheduled)
            }
            None => None,
        };
        Ok(DbRevision {
            // etcd's store starts at revision 1 before the first write, so a db without keys or
            // compaction marks is at revision 1 (etcd reports 1 after opening it), not 0.
            revision: last_key_revision.max(compact_revision.unwrap_or(0)).max(1),
            last_key_revision,
            compact_revision,
            txid: meta.txid,
            page_size: self.page_size as u32,
            db_size: self.offset,
        })
    }

    /// Follows branch pages from `pgid` towards `target` and returns the leaf reached.
    fn leaf_for(&self, mut pgid: u64, target: Option<usize>) -> Result<LeafInfo, ScanError> {
        for _ in 0..MAX_DEPTH {
            match self.page(pgid) {
                Some(PageInfo::Branch { last, child }) => {
                    let next = match target {
                        Some(t) => child[t],
                        None => last,
                    };
                    if next == UNKNOWN_CHILD {
                        return Err(ScanError::Unreadable { pgid, why: "branch key beyond the kept prefix" });
                    }
                    pgid = next;
                }
                Some(PageInfo::Leaf(info)) => return Ok(*info),
                Some(PageInfo::Unreadable(why)) => return Err(ScanError::Unreadable { pgid, why }),
                None => {
                    return Err(ScanError::Malformed {
                        offset: pgid.saturating_mul(self.page_size),
                        why: format!("page {pgid} is referenced but is not a branch or leaf page"),
                    });
                }
            }
        }
        Err(ScanError::Malformed { offset: 0, why: format!("tree deeper than {MAX_DEPTH} levels (a cycle?)") })
    }

    fn find_bucket(&self, root: u64, target: usize) -> Result<Option<BucketRef>, ScanError> {
        let leaf = self.leaf_for(root, Some(target))?;
        match &leaf.buckets[target] {
            Some(BucketRef::Unknown) => {
                Err(ScanError::Unreadable { pgid: root, why: "bucket value beyond the kept prefix" })
            }
            other => Ok(other.clone()),
        }
    }

    fn last_revision(&self, bucket: &BucketRef) -> Result<u64, ScanError> {
        let (leaf, pgid) = match bucket {
            BucketRef::Inline(info) => ((**info).clone(), 0),
            BucketRef::Root(root) => (self.leaf_for(*root, None)?, *root),
            BucketRef::Unknown => return Err(ScanError::Unreadable { pgid: 0, why: "bucket value unreadable" }),
        };
        match leaf.last {
            LastKey::Empty => Ok(0),
            LastKey::Rev(rev) => Ok(rev),
            LastKey::Other => Err(ScanError::Malformed {
                offset: 0,
                why: format!("the last key of the key bucket (tree at page {pgid}) is not a revision"),
            }),
            LastKey::Unknown => Err(ScanError::Unreadable { pgid, why: "last key beyond the kept prefix" }),
        }
    }

    fn lookup(&self, bucket: &BucketRef, target: usize) -> Result<Option<u64>, ScanError> {
        let leaf = match bucket {
            BucketRef::Inline(info) => (**info).clone(),
            BucketRef::Root(root) => self.leaf_for(*root, Some(target))?,
            BucketRef::Unknown => return Err(ScanError::Unreadable { pgid: 0, why: "bucket value unreadable" }),
        };
        Ok(leaf.compact[target - T_FINISHED])
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

fn page_size_of(head: &[u8]) -> Result<u64, ScanError> {
    let magic = u32_at(head, META_MAGIC_OFFSET);
    let version = u32_at(head, META_VERSION_OFFSET);
    let ps = u32_at(head, META_PAGE_SIZE_OFFSET);
    if magic != MAGIC {
        return Err(ScanError::Malformed { offset: META_MAGIC_OFFSET as u64, why: format!("bad magic {magic:#x}") });
    }
    if version != VERSION {
        return Err(ScanError::Malformed {
            offset: META_VERSION_OFFSET as u64,
            why: format!("unsupported version {version}"),
        });
    }
    if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps) || !ps.is_power_of_two() {
        return Err(ScanError::Malformed {
            offset: META_PAGE_SIZE_OFFSET as u64,
            why: format!("implausible page size {ps}"),
        });
    }
    Ok(ps as u64)
}

/// Meta page `slot` if it validates (bbolt's magic, version, checksum) and says it is one.
fn parse_meta(buf: &[u8], slot: u8) -> Option<Meta> {
    let header = PageHeader::decode(buf)?;
    Meta::decode(buf, slot).filter(|_| header.flags & FLAG_META != 0)
}

fn run_len(header: &PageHeader, page_size: u64) -> u64 {
    (header.overflow as u64 + 1).saturating_mul(page_size)
}

/// How many bytes of the run starting with `header` to keep, or `None` if it is not a branch
/// or leaf page of this position.
fn run_want(header: &[u8], pgid: u64, page_size: u64) -> Option<usize> {
    let header = PageHeader::decode(header)?;
    if header.id != pgid || (header.flags != FLAG_BRANCH && header.flags != FLAG_LEAF) {
        return None;
    }
    let count = header.count as usize;
    let run = run_len(&header, page_size);
    let elems = element_offset(count);
    let want = (page_size as usize).max(elems).min(MAX_COLLECT);
    Some((want as u64).min(run) as usize)
}

fn classify_last_key(key: &[u8]) -> LastKey {
    // etcd's revision keys: 8-byte big-endian main revision, '_', 8-byte sub revision, and a
    // trailing 't' for a tombstone.
    if (key.len() == REV_BYTES_LEN || (key.len() == MARKED_REV_BYTES_LEN && key[REV_BYTES_LEN] == b't'))
        && key[8] == b'_'
    {
        let mut a = [0u8; 8];
        a.copy_from_slice(&key[..8]);
        LastKey::Rev(u64::from_be_bytes(a))
    } else {
        LastKey::Other
    }
}

/// Summarises a branch page from the kept prefix of its run.
fn summarise_branch(buf: &[u8]) -> PageInfo {
    let count = PageHeader::decode(buf).map_or(0, |h| h.count as usize);
    if count == 0 {
        return PageInfo::Unreadable("empty branch page");
    }
    if element_offset(count) > buf.len() {
        return PageInfo::Unreadable("element array beyond the kept prefix");
    }
    // The element array is within `buf`, so every element header decodes.
    let elem =
        |i: usize| BranchElementHeader::decode(buf, i).unwrap_or(BranchElementHeader { pos: 0, ksize: 0, child: 0 });
    let last = elem(count - 1).child;
    let mut child = [UNKNOWN_CHILD; 4];
    for (t, target) in TARGETS.iter().enumerate() {
        // bbolt's search: the last element whose key is <= target, or the first one.
        let mut chosen = Some(elem(0).child);
        for i in 0..count {
            let e = elem(i);
            let (pos, ksize) = (e.pos as usize, e.ksize as usize);
            let Some(key) = element_offset(i).checked_add(pos).and_then(|s| buf.get(s..s.checked_add(ksize)?)) else {
                chosen = None;
                break;
            };
            if key <= *target {
                chosen = Some(e.child);
            } else {
                break;
            }
        }
        if let Some(c) = chosen {
            child[t] = c;
        }
    }
    PageInfo::Branch { last, child }
}

/// Summarises a leaf page (or an inline bucket's page) from `buf`, the kept prefix of a run of
/// `run_len` bytes. Returns the summary and, if the last key lies beyond `buf`, its position and
/// length within the run so it can be captured as it streams past.
fn summarise_leaf(buf: &[u8], run_len: u64) -> (LeafInfo, Option<(usize, usize)>) {
    let mut info = LeafInfo { last: LastKey::Empty, buckets: [None, None], compact: [None, None] };
    let count = PageHeader::decode(buf).map_or(0, |h| h.count as usize);
    if count == 0 {
        return (info, None);
    }
    if element_offset(count) > buf.len() {
        info.last = LastKey::Unknown;
        return (info, None);
    }
    for i in 0..count {
        // The element array is within `buf`, so every element header decodes.
        let Some(e) = LeafElementHeader::decode(buf, i) else { break };
        let (flags, pos, ksize, vsize) = (e.flags, e.pos as usize, e.ksize as usize, e.vsize as usize);
        let kstart = element_offset(i).saturating_add(pos);
        let key = buf.get(kstart..kstart.saturating_add(ksize));
        let value = buf.get(kstart.saturating_add(ksize)..kstart.saturating_add(ksize).saturating_add(vsize));
        if i == count - 1 {
            info.last = match key {
                Some(k) => classify_last_key(k),
                None if ksize != REV_BYTES_LEN && ksize != MARKED_REV_BYTES_LEN => LastKey::Other,
                None if (kstart as u64).saturating_add(ksize as u64) <= run_len => {
                    return (info, Some((kstart, ksize)));
                }
                None => LastKey::Unknown,
            };
        }
        let Some(key) = key else { continue };
        let Some(t) = TARGETS.iter().position(|t| *t == key) else { continue };
        if t <= T_META {
            if flags & BUCKET_LEAF_FLAG == 0 {
                continue;
            }
            info.buckets[t] = Some(match value {
                Some(v) if v.len() >= BUCKET_HEADER_SIZE => {
                    let root = u64_at(v, 0);
                    if root == 0 {
                        let inline_page = &v[BUCKET_HEADER_SIZE..];
                        let (inline, pending) = summarise_leaf(inline_page, inline_page.len() as u64);
                        if pending.is_some() { BucketRef::Unknown } else { BucketRef::Inline(Box::new(inline)) }
                    } else {
                        BucketRef::Root(root)
                    }
                }
                _ => BucketRef::Unknown,
            });
        } else if flags & BUCKET_LEAF_FLAG == 0
            && let Some(v) = value.filter(|v| v.len() >= 8)
        {
            let mut a = [0u8; 8];
            a.copy_from_slice(&v[..8]);
            info.compact[t - T_FINISHED] = Some(u64::from_be_bytes(a));
        }
    }
    (info, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: usize = 4096;

    /// Builds bbolt pages by hand: enough of the format to exercise the scanner's walk.
    struct Db {
        pages: Vec<Vec<u8>>,
    }

    fn page(id: u64, flags: u16, count: u16, overflow: u32, body: &[u8], size: usize) -> Vec<u8> {
        let mut p = vec![0u8; size];
        p[0..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&flags.to_le_bytes());
        p[10..12].copy_from_slice(&count.to_le_bytes());
        p[12..16].copy_from_slice(&overflow.to_le_bytes());
        p[16..16 + body.len()].copy_from_slice(body);
        p
    }

    fn leaf_body(entries: &[(u32, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let n = entries.len();
        let mut elems = Vec::new();
        let mut data = Vec::new();
        for (i, (flags, k, v)) in entries.iter().enumerate() {
            let pos = (n - i) * bbolt::ELEMENT_SIZE + data.len();
            elems.extend_from_slice(&flags.to_le_bytes());
            elems.extend_from_slice(&(pos as u32).to_le_bytes());
            elems.extend_from_slice(&(k.len() as u32).to_le_bytes());
            elems.extend_from_slice(&(v.len() as u32).to_le_bytes());
            data.extend_from_slice(k);
            data.extend_from_slice(v);
        }
        elems.extend_from_slice(&data);
        elems
    }

    fn branch_body(entries: &[(Vec<u8>, u64)]) -> Vec<u8> {
        let n = entries.len();
        let mut elems = Vec::new();
        let mut data = Vec::new();
        for (i, (k, pgid)) in entries.iter().enumerate() {
            let pos = (n - i) * bbolt::ELEMENT_SIZE + data.len();
            elems.extend_from_slice(&(pos as u32).to_le_bytes());
            elems.extend_from_slice(&(k.len() as u32).to_le_bytes());
            elems.extend_from_slice(&pgid.to_le_bytes());
            data.extend_from_slice(k);
        }
        elems.extend_from_slice(&data);
        elems
    }

    fn rev_key(main: u64, sub: u64, tomb: bool) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&sub.to_be_bytes());
        if tomb {
            k.push(b't');
        }
        k
    }

    fn bucket_value(root: u64) -> Vec<u8> {
        let mut v = root.to_le_bytes().to_vec();
        v.extend_from_slice(&0u64.to_le_bytes());
        v
    }

    fn meta_page(id: u64, root: u64, hwm: u64, txid: u64) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&MAGIC.to_le_bytes());
        m.extend_from_slice(&VERSION.to_le_bytes());
        m.extend_from_slice(&(PS as u32).to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&root.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        m.extend_from_slice(&2u64.to_le_bytes()); // freelist
        m.extend_from_slice(&hwm.to_le_bytes());
        m.extend_from_slice(&txid.to_le_bytes());
        let sum = bbolt::fnv1a64(&m);
        m.extend_from_slice(&sum.to_le_bytes());
        page(id, FLAG_META, 0, 0, &m, PS)
    }

    impl Db {
        fn bytes(&self) -> Vec<u8> {
            self.pages.concat()
        }
    }

    fn scan(bytes: &[u8], chunk: usize) -> Result<DbRevision, ScanError> {
        let mut s = RevisionScanner::new();
        for c in bytes.chunks(chunk) {
            s.feed(c);
        }
        s.finish()
    }

    /// Root bucket leaf at page 3 with `key` at page 4 (a branch) and `meta` inline.
    fn sample(compact: Option<u64>, last_rev: u64, tomb: bool) -> Db {
        let mut meta_entries = vec![(0, b"consistent_index".to_vec(), 9u64.to_be_bytes().to_vec())];
        if let Some(c) = compact {
            meta_entries.push((0, b"finishedCompactRev".to_vec(), rev_key(c, 0, false)));
            meta_entries.push((0, b"scheduledCompactRev".to_vec(), rev_key(c, 0, false)));
        }
        meta_entries.sort_by(|a, b| a.1.cmp(&b.1));
        let inline_leaf = page(0, FLAG_LEAF, meta_entries.len() as u16, 0, &leaf_body(&meta_entries), 16 + 400);
        let mut meta_value = bucket_value(0);
        meta_value.extend_from_slice(&inline_leaf);
        let root = leaf_body(&[
            (BUCKET_LEAF_FLAG, b"key".to_vec(), bucket_value(4)),
            (BUCKET_LEAF_FLAG, b"lease".to_vec(), bucket_value(7)),
            (BUCKET_LEAF_FLAG, b"meta".to_vec(), meta_value),
        ]);
        let key_branch = branch_body(&[(rev_key(1, 0, false), 5), (rev_key(50, 0, false), 6)]);
        let leaf5 = leaf_body(&[(0, rev_key(1, 0, false), b"a".to_vec()), (0, rev_key(2, 0, false), b"b".to_vec())]);
        let leaf6 =
            leaf_body(&[(0, rev_key(50, 0, false), b"c".to_vec()), (0, rev_key(last_rev, 0, tomb), b"d".to_vec())]);
        // A stale leaf whose last key is a much higher revision: freed, never referenced.
        let stale = leaf_body(&[(0, rev_key(999_999, 0, false), b"x".to_vec())]);
        let lease = leaf_body(&[(0, 7u64.to_be_bytes().to_vec(), b"lease".to_vec())]);
        Db {
            pages: vec![
                meta_page(0, 3, 9, 10),
                meta_page(1, 3, 9, 9),
                page(2, 0x10, 0, 0, &[], PS),
                page(3, FLAG_LEAF, 3, 0, &root, PS),
                page(4, FLAG_BRANCH, 2, 0, &key_branch, PS),
                page(5, FLAG_LEAF, 2, 0, &leaf5, PS),
                page(6, FLAG_LEAF, 2, 0, &leaf6, PS),
                page(7, FLAG_LEAF, 1, 0, &lease, PS),
                page(8, FLAG_LEAF, 1, 0, &stale, PS),
            ],
        }
    }

    #[test]
    fn walks_from_the_meta_page_to_the_last_key() {
        let db = sample(None, 77, false);
        for chunk in [1, 7, 100, 4096, 32 * 1024] {
            let r = scan(&db.bytes(), chunk).unwrap();
            assert_eq!(r.revision, 77, "chunk {chunk}");
            assert_eq!(r.last_key_revision, 77);
            assert_eq!(r.compact_revision, None);
            assert_eq!(r.txid, 10);
            assert_eq!(r.db_size, 9 * PS as u64);
        }
    }

    #[test]
    fn a_db_without_keys_is_at_revision_1() {
        // A brand-new etcd: `key` is an empty inline bucket, no compaction marks. etcd reports
        // revision 1 for it, and the snapshot must be named so (not 0, below the watch position).
        let mut empty_key = bucket_value(0);
        empty_key.extend_from_slice(&page(0, FLAG_LEAF, 0, 0, &[], 16));
        let root = leaf_body(&[(BUCKET_LEAF_FLAG, b"key".to_vec(), empty_key)]);
        let db = Db {
            pages: vec![
                meta_page(0, 3, 4, 4),
                meta_page(1, 3, 4, 3),
                page(2, 0x10, 0, 0, &[], PS),
                page(3, FLAG_LEAF, 1, 0, &root, PS),
            ],
        };
        let r = scan(&db.bytes(), 4096).unwrap();
        assert_eq!((r.revision, r.last_key_revision, r.compact_revision), (1, 0, None));
    }

    #[test]
    fn a_tombstone_key_counts_and_compaction_raises_the_revision() {
        let r = scan(&sample(None, 80, true).bytes(), 512).unwrap();
        assert_eq!(r.revision, 80);
        // The newest tombstone was compacted away: etcd's revision is the compaction's.
        let r = scan(&sample(Some(90), 80, false).bytes(), 512).unwrap();
        assert_eq!((r.revision, r.last_key_revision, r.compact_revision), (90, 80, Some(90)));
        let r = scan(&sample(Some(60), 80, false).bytes(), 512).unwrap();
        assert_eq!(r.revision, 80);
    }

    #[test]
    fn a_damaged_newer_meta_falls_back_to_the_older_one() {
        let mut db = sample(None, 77, false);
        db.pages[0][40] ^= 0xff; // breaks page 0's checksum
        let r = scan(&db.bytes(), 4096).unwrap();
        assert_eq!(r.txid, 9);
        db.pages[1][40] ^= 0xff;
        assert!(matches!(scan(&db.bytes(), 4096), Err(ScanError::Malformed { .. })));
    }

    #[test]
    fn the_last_key_in_an_overflow_page_is_captured_as_it_streams_past() {
        let mut db = sample(None, 77, false);
        // Page 6 becomes a two-page run whose last key sits in the overflow page.
        let big = vec![b'v'; PS];
        let leaf6 = leaf_body(&[(0, rev_key(50, 0, false), big), (0, rev_key(123, 4, false), b"d".to_vec())]);
        let mut run = vec![0u8; 2 * PS];
        run[..16 + leaf6.len()].copy_from_slice(&page(6, FLAG_LEAF, 2, 1, &leaf6, 16 + leaf6.len()));
        db.pages[6] = run;
        db.pages.remove(7); // the run covers pages 6 and 7; lease page moves to 8
        db.pages[7] = page(8, FLAG_LEAF, 1, 0, &leaf_body(&[(0, 7u64.to_be_bytes().to_vec(), b"l".to_vec())]), PS);
        let mut root = db.pages[3].clone();
        // Point the lease bucket at page 8 (its value's root pgid).
        let at = root.windows(5).position(|w| w == b"lease").unwrap() + 5;
        root[at..at + 8].copy_from_slice(&8u64.to_le_bytes());
        db.pages[3] = root;
        for chunk in [3, 4096, 10_000] {
            assert_eq!(scan(&db.bytes(), chunk).unwrap().revision, 123, "chunk {chunk}");
        }
    }

    #[test]
    fn truncated_and_foreign_input_is_refused() {
        let bytes = sample(None, 77, false).bytes();
        assert!(matches!(scan(&bytes[..bytes.len() - 100], 4096), Err(ScanError::Truncated { .. })));
        assert!(matches!(scan(&bytes[..6 * PS], 4096), Err(ScanError::Truncated { .. })));
        assert!(matches!(scan(&[0u8; 10], 4096), Err(ScanError::Malformed { .. })));
        assert!(matches!(scan(&vec![7u8; 3 * PS], 4096), Err(ScanError::Malformed { .. })));
    }

    #[test]
    fn a_missing_page_on_the_path_is_an_error_not_a_guess() {
        let mut db = sample(None, 77, false);
        db.pages[6] = vec![0u8; PS]; // the rightmost leaf is gone
        assert!(matches!(scan(&db.bytes(), 4096), Err(ScanError::Malformed { .. })));
    }
}
