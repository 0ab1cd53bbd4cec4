//! The bulk writer: a fresh, compact bbolt file from sorted input, streamed page by page
//! (`docs/formats.md` §1.5).
//!
//! (The file passes 700 lines only with its unit tests, kept beside the code they pin.)

use std::io::{BufWriter, Seek, SeekFrom, Write};

use crate::error::Error;
use crate::page::{
    BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, ELEMENT_SIZE, FLAG_BRANCH, FLAG_FREELIST, FLAG_LEAF, MAX_KEY_SIZE,
    MAX_PAGE_SIZE, MAX_VALUE_SIZE, MIN_PAGE_SIZE, Meta, PAGE_HEADER_SIZE, encode_meta,
};

/// Most elements one page may hold: bbolt's `node.write` refuses 0xFFFF or more.
const MAX_ELEMENTS: usize = 0xFFFE;
/// Elements a leaf holds before it may be closed for size: bbolt's `minKeysPerPage`. bbolt's
/// split leaves at least two elements on every page, so values larger than half a page are
/// packed two to a run of pages (two 16 KiB values: 9 pages together, 10 apart) and an etcd db
/// of large values is as small as bbolt makes it.
const MIN_KEYS_PER_PAGE: usize = 2;
/// Two elements share a leaf only up to this size together; a larger element is streamed to a
/// page of its own instead of being buffered (etcd's values are at most its request size
/// limit, 1.5 MiB by default, so this only bounds the memory of absurd input).
const PACK_LIMIT: usize = 16 << 20;
/// Size of the output buffer: large sequential writes, few syscalls.
const OUT_BUFFER: usize = 1 << 20;
/// The txids the two metas get (page `i` holds a txid of parity `i`, so bbolt's next commit,
/// txid 3, goes to page 1 and leaves the newest meta intact).
const META_TXIDS: [u64; 2] = [2, 1];

/// Whether the written file persists a (necessarily empty) freelist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FreelistMode {
    /// An empty freelist page at pgid 2, referenced by the metas: the most portable form
    /// (old boltdb, `bbolt check`). etcd drops it on its first commit (`NoFreelistSync`).
    #[default]
    Page,
    /// No freelist (`meta.freelist = 0xFFFF…FF`), as etcd itself writes; data starts at pgid 2.
    None,
}

/// Options of [`BulkWriter`]: the defaults and the `with_*` setters. Fields may be added in any
/// release (`#[non_exhaustive]`).
///
/// ```
/// use bbolt::{FreelistMode, WriterOptions};
///
/// let opts = WriterOptions::default().with_page_size(16384).with_fill(0.9).with_freelist(FreelistMode::None);
/// assert_eq!(opts.page_size, 16384);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct WriterOptions {
    /// The page size, a power of two from 512 to 1 MiB. 4096 unless a source file's must be kept.
    pub page_size: u32,
    /// How full pages are packed, clamped to `[0.1, 1.0]` like bbolt's `FillPercent`.
    ///
    /// The default is 1.0, the most compact file. Nothing is lost by filling pages completely:
    /// the `key` bucket is append-only, so new revisions land on a fresh page after a single
    /// split at bbolt's own threshold, exactly as in a live etcd; random inserts into the small
    /// buckets (lease, members) split a page in two at 1.0 or 0.9 alike. 0.9 reproduces etcd's
    /// defrag layout (`defragdb` sets `FillPercent = 0.9`), at a real cost: with ~1.2 KiB
    /// values, 0.9 fits two per 4 KiB page where 1.0 fits three, a 50% larger file.
    pub fill: f64,
    /// Whether to persist an empty freelist page.
    pub freelist: FreelistMode,
    /// Bytes gathered before they are written to the output, 1 MiB by default. 0 hands every
    /// page to the output as it is made, with no copy between: for an output that gathers its
    /// writes itself (a `BufWriter`, or brcore's I/O thread, which hands 1 MiB chunks to the
    /// kernel).
    pub out_buffer: usize,
}

impl WriterOptions {
    /// Sets [`WriterOptions::page_size`].
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }

    /// Sets [`WriterOptions::fill`].
    pub fn with_fill(mut self, fill: f64) -> Self {
        self.fill = fill;
        self
    }

    /// Sets [`WriterOptions::freelist`].
    pub fn with_freelist(mut self, freelist: FreelistMode) -> Self {
        self.freelist = freelist;
        self
    }

    /// Sets [`WriterOptions::out_buffer`].
    pub fn with_out_buffer(mut self, bytes: usize) -> Self {
        self.out_buffer = bytes;
        self
    }
}

impl Default for WriterOptions {
    fn default() -> WriterOptions {
        WriterOptions { page_size: 4096, fill: 1.0, freelist: FreelistMode::Page, out_buffer: OUT_BUFFER }
    }
}

/// What [`BulkWriter::finish`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteStats {
    /// The high-water mark: pages in the file, metas included.
    pub pages: u64,
    /// The file length, `pages * page_size`.
    pub bytes: u64,
    /// The root page of the root bucket.
    pub root: u64,
    /// Buckets written (nested ones included, the root bucket excluded).
    pub buckets: u64,
    /// Of those, how many were stored inline.
    pub inline_buckets: u64,
    /// Plain key/value entries written.
    pub entries: u64,
    /// Leaf pages (each counted once, however many overflow pages it spans).
    pub leaf_pages: u64,
    /// Branch pages.
    pub branch_pages: u64,
    /// Overflow pages (the extra pages of large leaves and branches).
    pub overflow_pages: u64,
}

/// A streaming writer of a fresh, compact bbolt file.
///
/// Buckets are written one after another with keys in strictly increasing order. Leaf pages go
/// to the output as soon as they are full; only one page per open bucket plus one
/// `(first key, pgid)` pair per written leaf stay in memory, and branch levels are built from
/// those when the bucket ends. Oversized values are streamed straight into overflow pages.
///
/// A bucket becomes inline exactly when bbolt would make it so: no sub-buckets and
/// `16 + Σ(16 + key + value) ≤ pageSize/4`. The metas are written last, so a file whose
/// [`finish`](BulkWriter::finish) never ran has two zero meta pages and cannot be mistaken for a
/// valid database. The caller fsyncs.
///
/// `begin_bucket` inside an open bucket creates a nested bucket, which etcd never uses but bbolt
/// supports. After an I/O error the writer refuses further calls.
pub struct BulkWriter<W: Write + Seek> {
    sink: Sink<W>,
    /// Open buckets; `stack[0]` is the root bucket.
    stack: Vec<Tree>,
    freelist: FreelistMode,
    poisoned: bool,
}

impl<W: Write + Seek> std::fmt::Debug for BulkWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkWriter")
            .field("page_size", &self.sink.ps)
            .field("next_pgid", &self.sink.next_pgid)
            .field("open_buckets", &(self.stack.len() - 1))
            .finish()
    }
}

/// Where pages go: the buffered output and the page allocator.
struct Sink<W: Write> {
    out: BufWriter<W>,
    start: u64,
    ps: usize,
    limit: usize,
    next_pgid: u64,
    scratch: Vec<u8>,
    stats: WriteStats,
}

/// The elements of the page being filled.
#[derive(Default)]
struct LeafBuf {
    /// (flags, key length, value length) per element; keys and values are packed in `data`.
    elems: Vec<(u32, u32, u32)>,
    data: Vec<u8>,
    /// `16 + Σ(16 + k + v)`, bbolt's node size.
    size: usize,
}

impl LeafBuf {
    fn new() -> LeafBuf {
        LeafBuf { size: PAGE_HEADER_SIZE, ..LeafBuf::default() }
    }
    fn push(&mut self, flags: u32, key: &[u8], value: &[u8]) {
        self.elems.push((flags, key.len() as u32, value.len() as u32));
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
        self.size += ELEMENT_SIZE + key.len() + value.len();
    }
    fn clear(&mut self) {
        self.elems.clear();
        self.data.clear();
        self.size = PAGE_HEADER_SIZE;
    }
    fn first_key(&self) -> &[u8] {
        match self.elems.first() {
            Some(&(_, k, _)) => &self.data[..k as usize],
            None => &[],
        }
    }
    /// Writes the elements and packed data as they appear after a page header.
    fn encode_body(&self, out: &mut Vec<u8>) {
        let n = self.elems.len();
        let mut data_off = ELEMENT_SIZE * n;
        for (i, &(flags, k, v)) in self.elems.iter().enumerate() {
            let pos = (data_off - ELEMENT_SIZE * i) as u32;
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&pos.to_le_bytes());
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
            data_off += (k + v) as usize;
        }
        out.extend_from_slice(&self.data);
    }
}

/// `(first key, pgid)` per child page, keys packed in one buffer.
#[derive(Default)]
struct KeyList {
    keys: Vec<u8>,
    ends: Vec<usize>,
    pgids: Vec<u64>,
}

impl KeyList {
    fn push(&mut self, key: &[u8], pgid: u64) {
        self.keys.extend_from_slice(key);
        self.ends.push(self.keys.len());
        self.pgids.push(pgid);
    }
    fn len(&self) -> usize {
        self.pgids.len()
    }
    fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.keys[start..self.ends[i]]
    }
}

/// One open bucket.
struct Tree {
    name: Vec<u8>,
    leaf: LeafBuf,
    /// The leaves written so far.
    firsts: KeyList,
    /// Still small enough, and without sub-buckets, to end up inline.
    inline_possible: bool,
    last_key: Vec<u8>,
    has_last: bool,
}

impl Tree {
    fn new(name: &[u8], inline_possible: bool) -> Tree {
        Tree {
            name: name.to_vec(),
            leaf: LeafBuf::new(),
            firsts: KeyList::default(),
            inline_possible,
            last_key: Vec::new(),
            has_last: false,
        }
    }
}

impl<W: Write + Seek> BulkWriter<W> {
    /// Starts a file at the current position of `out` (normally an empty file), reserving the
    /// meta pages (and the freelist page) with zeros.
    pub fn new(out: W, opts: WriterOptions) -> Result<Self, Error> {
        let ps = opts.page_size;
        if !ps.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&ps) {
            return Err(Error::misuse(format!(
                "page size {ps}: must be a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}"
            )));
        }
        if opts.fill.is_nan() {
            return Err(Error::misuse("fill is NaN"));
        }
        let fill = opts.fill.clamp(0.1, 1.0);
        let ps = ps as usize;
        let mut out = BufWriter::with_capacity(opts.out_buffer, out);
        let start = out.stream_position()?;
        let reserved: u64 = match opts.freelist {
            FreelistMode::Page => 3,
            FreelistMode::None => 2,
        };
        let mut sink = Sink {
            out,
            start,
            ps,
            limit: ((ps as f64) * fill) as usize,
            next_pgid: reserved,
            scratch: Vec::with_capacity(ps),
            stats: WriteStats::default(),
        };
        sink.zeros(reserved as usize * ps)?;
        Ok(BulkWriter { sink, stack: vec![Tree::new(b"", false)], freelist: opts.freelist, poisoned: false })
    }

    fn guard(&self) -> Result<(), Error> {
        if self.poisoned {
            return Err(Error::misuse("an earlier I/O error left the output incomplete"));
        }
        Ok(())
    }

    /// Records an I/O failure so later calls refuse to continue on a half-written file.
    fn io<T>(&mut self, r: Result<T, Error>) -> Result<T, Error> {
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    fn check_key(tree: &Tree, key: &[u8], what: &str) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::misuse(format!("empty {what}")));
        }
        if key.len() > MAX_KEY_SIZE {
            return Err(Error::misuse(format!("{what} of {} bytes exceeds bbolt's {MAX_KEY_SIZE}", key.len())));
        }
        if tree.has_last && key <= tree.last_key.as_slice() {
            return Err(Error::misuse(format!(
                "{what} {:?} is not greater than the previous key {:?} in bucket {:?}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(&tree.last_key),
                String::from_utf8_lossy(&tree.name)
            )));
        }
        Ok(())
    }

    /// Opens bucket `name`: top-level when no bucket is open, nested otherwise. Names must be
    /// strictly increasing among the keys of the enclosing bucket.
    pub fn begin_bucket(&mut self, name: &[u8]) -> Result<(), Error> {
        self.guard()?;
        let parent = self.stack.last_mut().ok_or_else(|| Error::misuse("writer already finished"))?;
        Self::check_key(parent, name, "bucket name")?;
        parent.last_key.clear();
        parent.last_key.extend_from_slice(name);
        parent.has_last = true;
        self.stack.push(Tree::new(name, true));
        Ok(())
    }

    /// Adds a plain key/value to the open bucket. Keys must be non-empty and strictly increasing.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.guard()?;
        if self.stack.len() < 2 {
            return Err(Error::misuse("put outside of a bucket (the root bucket holds only buckets)"));
        }
        let tree = self.stack.last_mut().ok_or_else(|| Error::misuse("writer already finished"))?;
        Self::check_key(tree, key, "key")?;
        if value.len() > MAX_VALUE_SIZE {
            return Err(Error::misuse(format!("value of {} bytes exceeds bbolt's {MAX_VALUE_SIZE}", value.len())));
        }
        tree.last_key.clear();
        tree.last_key.extend_from_slice(key);
        tree.has_last = true;
        let r = self.sink.add(tree, 0, key, value);
        self.sink.stats.entries += 1;
        self.io(r)
    }

    /// Closes the innermost open bucket, writing its branch levels (or making it inline) and
    /// adding it to its parent.
    pub fn end_bucket(&mut self) -> Result<(), Error> {
        self.guard()?;
        if self.stack.len() < 2 {
            return Err(Error::misuse("end_bucket without an open bucket"));
        }
        let Some(tree) = self.stack.pop() else {
            return Err(Error::misuse("end_bucket without an open bucket"));
        };
        let r = self.close_bucket(tree);
        self.io(r)
    }

    fn close_bucket(&mut self, mut tree: Tree) -> Result<(), Error> {
        let value = if tree.inline_possible {
            let mut v = Vec::with_capacity(BUCKET_HEADER_SIZE + tree.leaf.size);
            v.extend_from_slice(&[0u8; BUCKET_HEADER_SIZE]);
            v.extend_from_slice(&0u64.to_le_bytes());
            v.extend_from_slice(&FLAG_LEAF.to_le_bytes());
            v.extend_from_slice(&(tree.leaf.elems.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u32.to_le_bytes());
            tree.leaf.encode_body(&mut v);
            self.sink.stats.inline_buckets += 1;
            v
        } else {
            let root = self.sink.finish_tree(&mut tree)?;
            let mut v = Vec::with_capacity(BUCKET_HEADER_SIZE);
            v.extend_from_slice(&root.to_le_bytes());
            v.extend_from_slice(&0u64.to_le_bytes());
            v
        };
        self.sink.stats.buckets += 1;
        let parent = self.stack.last_mut().ok_or_else(|| Error::misuse("no parent bucket"))?;
        self.sink.add(parent, BUCKET_LEAF_FLAG, &tree.name, &value)
    }

    /// Ends the file: writes the root bucket, then the freelist page and both metas at the
    /// start, and returns the output positioned at the end. All buckets must be closed.
    pub fn finish(mut self) -> Result<(W, WriteStats), Error> {
        self.guard()?;
        if self.stack.len() != 1 {
            return Err(Error::misuse(format!("finish with {} bucket(s) still open", self.stack.len() - 1)));
        }
        let Some(mut root_tree) = self.stack.pop() else {
            return Err(Error::misuse("writer already finished"));
        };
        let root = self.sink.finish_tree(&mut root_tree)?;
        let s = &mut self.sink;
        let hwm = s.next_pgid;
        let ps = s.ps;
        let freelist = match self.freelist {
            FreelistMode::Page => Some(2),
            FreelistMode::None => None,
        };
        s.out.seek(SeekFrom::Start(s.start))?;
        for (slot, txid) in META_TXIDS.iter().enumerate() {
            let meta = Meta {
                slot: slot as u8,
                page_size: ps as u32,
                flags: 0,
                root,
                sequence: 0,
                freelist,
                pgid: hwm,
                txid: *txid,
                checksum: 0,
            };
            s.out.write_all(&encode_meta(&meta, ps))?;
        }
        if freelist.is_some() {
            let mut page = vec![0u8; ps];
            page[0..8].copy_from_slice(&2u64.to_le_bytes());
            page[8..10].copy_from_slice(&FLAG_FREELIST.to_le_bytes());
            s.out.write_all(&page)?;
        }
        let end = s.start + hwm * ps as u64;
        s.out.seek(SeekFrom::Start(end))?;
        s.out.flush()?;
        let mut stats = s.stats;
        stats.pages = hwm;
        stats.bytes = hwm * ps as u64;
        stats.root = root;
        let out = self.sink.out.into_inner().map_err(|e| Error::from(e.into_error()))?;
        Ok((out, stats))
    }
}

impl<W: Write> Sink<W> {
    fn zeros(&mut self, mut n: usize) -> Result<(), Error> {
        const Z: [u8; 4096] = [0; 4096];
        while n > 0 {
            let k = n.min(Z.len());
            self.out.write_all(&Z[..k])?;
            n -= k;
        }
        Ok(())
    }

    /// Writes `scratch` (header space + body) followed by `tail` as one logical page of
    /// `ceil(len/ps)` physical pages, padding with zeros. Returns the pgid.
    fn emit(&mut self, flags: u16, count: usize, tail: &[u8]) -> Result<u64, Error> {
        let len = self.scratch.len() + tail.len();
        let pages = len.div_ceil(self.ps).max(1);
        let pgid = self.next_pgid;
        let overflow = (pages - 1) as u32;
        self.scratch[0..8].copy_from_slice(&pgid.to_le_bytes());
        self.scratch[8..10].copy_from_slice(&flags.to_le_bytes());
        self.scratch[10..12].copy_from_slice(&(count as u16).to_le_bytes());
        self.scratch[12..16].copy_from_slice(&overflow.to_le_bytes());
        self.out.write_all(&self.scratch)?;
        self.out.write_all(tail)?;
        self.zeros(pages * self.ps - len)?;
        self.next_pgid += pages as u64;
        if flags == FLAG_LEAF {
            self.stats.leaf_pages += 1;
        } else {
            self.stats.branch_pages += 1;
        }
        self.stats.overflow_pages += u64::from(overflow);
        Ok(pgid)
    }

    fn flush_leaf(&mut self, tree: &mut Tree) -> Result<(), Error> {
        self.scratch.clear();
        self.scratch.resize(PAGE_HEADER_SIZE, 0);
        tree.leaf.encode_body(&mut self.scratch);
        let pgid = self.emit(FLAG_LEAF, tree.leaf.elems.len(), &[])?;
        tree.firsts.push(tree.leaf.first_key(), pgid);
        tree.leaf.clear();
        Ok(())
    }

    /// Adds an element to `tree`, writing out its current leaf when the element does not fit.
    fn add(&mut self, tree: &mut Tree, flags: u32, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let e = ELEMENT_SIZE + key.len() + value.len();
        if tree.inline_possible {
            if flags & BUCKET_LEAF_FLAG == 0 && tree.leaf.size + e <= self.ps / 4 {
                tree.leaf.push(flags, key, value);
                return Ok(());
            }
            // Too big (or a sub-bucket): re-add what was held back under the paging rules.
            tree.inline_possible = false;
            let held = std::mem::replace(&mut tree.leaf, LeafBuf::new());
            let mut off = 0;
            for &(f, k, v) in &held.elems {
                let (k, v) = (k as usize, v as usize);
                let kv = &held.data[off..off + k + v];
                self.add_paged(tree, f, &kv[..k], &kv[k..])?;
                off += k + v;
            }
        }
        self.add_paged(tree, flags, key, value)
    }

    fn add_paged(&mut self, tree: &mut Tree, flags: u32, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let e = ELEMENT_SIZE + key.len() + value.len();
        let n = tree.leaf.elems.len();
        let fits = tree.leaf.size + e <= self.limit;
        let packs = n < MIN_KEYS_PER_PAGE && tree.leaf.size + e <= PACK_LIMIT;
        if n > 0 && (!(fits || packs) || n >= MAX_ELEMENTS) {
            self.flush_leaf(tree)?;
        }
        if tree.leaf.elems.is_empty() && PAGE_HEADER_SIZE + e > PACK_LIMIT {
            // A page of its own: stream the value instead of buffering it.
            self.scratch.clear();
            self.scratch.resize(PAGE_HEADER_SIZE, 0);
            let pos = ELEMENT_SIZE as u32;
            for x in [flags, pos, key.len() as u32, value.len() as u32] {
                self.scratch.extend_from_slice(&x.to_le_bytes());
            }
            self.scratch.extend_from_slice(key);
            let pgid = self.emit(FLAG_LEAF, 1, value)?;
            tree.firsts.push(key, pgid);
            return Ok(());
        }
        tree.leaf.push(flags, key, value);
        Ok(())
    }

    /// Writes the rest of a page-based tree and its branch levels; returns the root pgid.
    fn finish_tree(&mut self, tree: &mut Tree) -> Result<u64, Error> {
        if !tree.leaf.elems.is_empty() || tree.firsts.len() == 0 {
            // An empty page-based bucket (the root bucket of an empty db) is one empty leaf.
            self.flush_leaf(tree)?;
        }
        let mut level = std::mem::take(&mut tree.firsts);
        while level.len() > 1 {
            let mut next = KeyList::default();
            let mut i = 0;
            while i < level.len() {
                // Greedy like the leaves, but at least two children per branch so that every
                // level shrinks and the loop ends.
                let mut size = PAGE_HEADER_SIZE;
                let mut j = i;
                while j < level.len() {
                    let e = ELEMENT_SIZE + level.key(j).len();
                    if j - i >= 2 && (size + e > self.limit || j - i >= MAX_ELEMENTS) {
                        break;
                    }
                    size += e;
                    j += 1;
                }
                let pgid = self.write_branch(&level, i..j)?;
                next.push(level.key(i), pgid);
                i = j;
            }
            level = next;
        }
        Ok(level.pgids[0])
    }

    fn write_branch(&mut self, level: &KeyList, range: std::ops::Range<usize>) -> Result<u64, Error> {
        self.scratch.clear();
        self.scratch.resize(PAGE_HEADER_SIZE, 0);
        let n = range.len();
        let mut data_off = ELEMENT_SIZE * n;
        for (idx, i) in range.clone().enumerate() {
            let k = level.key(i).len();
            let pos = (data_off - ELEMENT_SIZE * idx) as u32;
            self.scratch.extend_from_slice(&pos.to_le_bytes());
            self.scratch.extend_from_slice(&(k as u32).to_le_bytes());
            self.scratch.extend_from_slice(&level.pgids[i].to_le_bytes());
            data_off += k;
        }
        for i in range {
            self.scratch.extend_from_slice(level.key(i));
        }
        self.emit(FLAG_BRANCH, n, &[])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Cursor;

    use super::*;
    use crate::{Bucket, Db, Entry};

    type Model = BTreeMap<Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>>;

    fn write(model: &Model, opts: WriterOptions) -> (Vec<u8>, WriteStats) {
        let mut w = BulkWriter::new(Cursor::new(Vec::new()), opts).expect("writer");
        for (name, kvs) in model {
            w.begin_bucket(name).expect("begin");
            for (k, v) in kvs {
                w.put(k, v).expect("put");
            }
            w.end_bucket().expect("end");
        }
        let (out, stats) = w.finish().expect("finish");
        (out.into_inner(), stats)
    }

    fn read_bucket(b: &Bucket<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
        b.iter()
            .map(|e| match e.expect("iterate") {
                Entry::Value { key, value } => (key.to_vec(), value.to_vec()),
                Entry::Bucket { name } => panic!("unexpected nested bucket {name:?}"),
            })
            .collect()
    }

    /// Writes `model`, reopens it, checks it clean and compares every entry; returns the db.
    fn round_trip(model: &Model, opts: WriterOptions) -> (Db, WriteStats) {
        let (bytes, stats) = write(model, opts);
        assert_eq!(bytes.len() as u64, stats.bytes, "file length = pgid * page size");
        assert_eq!(stats.bytes, stats.pages * u64::from(opts.page_size));
        let db = Db::from_bytes(bytes).expect("open");
        let report = db.check();
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.buckets as usize, model.len());
        assert_eq!(report.entries as usize, model.values().map(Vec::len).sum::<usize>());
        assert_eq!(db.meta().root, stats.root);
        let names: Vec<Vec<u8>> = db.root().iter().map(|e| e.expect("root").key().to_vec()).collect();
        assert_eq!(names, model.keys().cloned().collect::<Vec<_>>());
        for (name, kvs) in model {
            let b = db.bucket(name).expect("lookup").expect("bucket");
            assert_eq!(&read_bucket(&b), kvs);
            for (k, v) in kvs {
                assert_eq!(b.get(k).expect("get"), Some(v.as_slice()));
            }
        }
        (db, stats)
    }

    use testsupport::XorShift as Rng;

    fn revision_keys(n: u64, value_len: usize, rng: &mut Rng) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let mut k = (i + 2).to_be_bytes().to_vec();
                k.push(b'_');
                k.extend_from_slice(&0u64.to_be_bytes());
                (k, rng.bytes(value_len))
            })
            .collect()
    }

    #[test]
    fn many_keys_round_trip_with_default_options() {
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        let mut model = Model::new();
        model.insert(b"key".to_vec(), revision_keys(20_000, 60, &mut rng));
        model.insert(b"meta".to_vec(), vec![(b"consistent_index".to_vec(), 5u64.to_be_bytes().to_vec())]);
        let (db, stats) = round_trip(&model, WriterOptions::default());
        assert!(stats.branch_pages >= 1);
        assert_eq!(stats.entries, 20_001);
        assert!(db.bucket(b"meta").unwrap().unwrap().is_inline());
        assert_eq!(db.meta().freelist, Some(2));
        let [m0, m1] = db.metas();
        assert_eq!((m0.unwrap().txid, m1.unwrap().txid), (2, 1));
    }

    #[test]
    fn big_values_span_overflow_pages() {
        let mut rng = Rng::new(7);
        let mut kvs = Vec::new();
        for (i, len) in [10usize, 5000, 3, 4080, 4081, 100_000, 0, 12_288, 70].iter().enumerate() {
            kvs.push((format!("k{i:03}").into_bytes(), rng.bytes(*len)));
        }
        let model: Model = [(b"big".to_vec(), kvs)].into_iter().collect();
        let (_, stats) = round_trip(&model, WriterOptions::default());
        assert!(stats.overflow_pages >= 24 + 2 + 2, "{stats:?}");
        // Big keys too: a branch page of maximal keys overflows.
        let kvs: Vec<_> = (0..6u8).map(|i| (vec![i; MAX_KEY_SIZE], vec![i])).collect();
        let model: Model = [(b"bigkeys".to_vec(), kvs)].into_iter().collect();
        let (_, stats) = round_trip(&model, WriterOptions { page_size: 512, ..WriterOptions::default() });
        assert!(stats.branch_pages >= 1 && stats.overflow_pages > 6 * 64, "{stats:?}");
    }

    #[test]
    fn values_larger_than_half_a_page_are_packed_two_to_a_leaf_as_bbolt_splits() {
        // 101 values of 16 KiB (etcd's revision keys are 17 bytes): bbolt's split puts two on
        // every page, 16 + 2 * (16 + 17 + 16384) = 32850 bytes, 9 pages; the last value alone.
        let mut rng = Rng::new(9);
        let model: Model = [(b"key".to_vec(), revision_keys(101, 16384, &mut rng))].into_iter().collect();
        let (_, stats) = round_trip(&model, WriterOptions::default());
        // 51 leaves and the root bucket's.
        assert_eq!(stats.leaf_pages, 52, "{stats:?}");
        // 50 leaves of 9 pages and one of 5 (16 + 16 + 17 + 16384 bytes).
        assert_eq!(stats.overflow_pages, 50 * 8 + 4, "{stats:?}");
        // A value too large to buffer still gets a page run of its own, and its neighbours
        // are packed around it.
        let kvs = vec![
            (b"a".to_vec(), rng.bytes(10)),
            (b"b".to_vec(), rng.bytes(PACK_LIMIT)),
            (b"c".to_vec(), rng.bytes(20_000)),
            (b"d".to_vec(), rng.bytes(20_000)),
        ];
        let model: Model = [(b"huge".to_vec(), kvs)].into_iter().collect();
        let (_, stats) = round_trip(&model, WriterOptions::default());
        assert_eq!(stats.leaf_pages, 1 + 3, "the root bucket's, then a | b | c d: {stats:?}");
    }

    #[test]
    fn small_pages_and_low_fill_build_multi_level_branches() {
        let mut rng = Rng::new(42);
        for (ps, fill) in [(512, 0.1), (512, 1.0), (1024, 0.5), (4096, 0.1)] {
            let mut model = Model::new();
            model.insert(b"a".to_vec(), revision_keys(3000, 8, &mut rng));
            model.insert(b"b".to_vec(), revision_keys(700, 40, &mut rng));
            let opts = WriterOptions { page_size: ps, fill, freelist: FreelistMode::None, out_buffer: OUT_BUFFER };
            let (db, stats) = round_trip(&model, opts);
            assert!(stats.branch_pages > 1, "ps {ps} fill {fill}: {stats:?}");
            assert_eq!(db.meta().freelist, None);
            // Two or more branch levels: the key bucket's root is a branch whose first child is one too.
            let root = db.bucket(b"a").unwrap().unwrap().root_page().unwrap();
            let v = db.view();
            let p = v.tree_page(root).unwrap();
            assert!(!p.is_leaf());
            assert!(!v.tree_page(p.branch(0).unwrap().child).unwrap().is_leaf(), "ps {ps} fill {fill}");
        }
    }

    #[test]
    fn inline_exactly_when_bbolt_would_inline() {
        let ps = 4096usize;
        // One element with 16 + (16 + k + v) == ps/4 is inline; one byte more is not.
        let fits = ps / 4 - 32 - 1;
        let mut model = Model::new();
        model.insert(b"empty".to_vec(), vec![]);
        model.insert(b"fits".to_vec(), vec![(b"k".to_vec(), vec![1; fits])]);
        model.insert(b"over".to_vec(), vec![(b"k".to_vec(), vec![1; fits + 1])]);
        // Many small elements together crossing ps/4 (and the 0.1 fill limit on the way).
        model.insert(b"many".to_vec(), (0..60u8).map(|i| (vec![b'k', i], vec![i; 8])).collect());
        for fill in [0.1, 0.9] {
            let (db, stats) = round_trip(&model, WriterOptions { fill, ..WriterOptions::default() });
            let b = |n: &[u8]| db.bucket(n).unwrap().unwrap();
            assert!(b(b"empty").is_inline() && b(b"fits").is_inline());
            assert!(!b(b"over").is_inline() && !b(b"many").is_inline());
            assert_eq!(stats.inline_buckets, 2);
            // The empty inline bucket is the 32 bytes etcd writes.
            let raw = db.root().find(b"empty").unwrap().unwrap();
            assert_eq!(
                raw.value,
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
            );
        }
    }

    #[test]
    fn empty_database_has_an_empty_page_based_root() {
        let (db, stats) = round_trip(&Model::new(), WriterOptions::default());
        assert_eq!(stats.pages, 4);
        assert_eq!(db.meta().root, 3);
        assert_eq!(db.root().iter().count(), 0);
    }

    #[test]
    fn nested_buckets_round_trip() {
        let mut w = BulkWriter::new(Cursor::new(Vec::new()), WriterOptions::default()).unwrap();
        w.begin_bucket(b"outer").unwrap();
        w.put(b"a", b"1").unwrap();
        w.begin_bucket(b"b-inner").unwrap();
        w.put(b"x", b"y").unwrap();
        w.end_bucket().unwrap();
        w.put(b"c", b"3").unwrap();
        w.end_bucket().unwrap();
        let (out, stats) = w.finish().unwrap();
        assert_eq!(stats.buckets, 2);
        let db = Db::from_bytes(out.into_inner()).unwrap();
        assert!(db.check().is_ok(), "{}", db.check());
        let outer = db.bucket(b"outer").unwrap().unwrap();
        assert!(!outer.is_inline(), "a bucket with sub-buckets is never inline");
        let keys: Vec<Entry<'_>> = outer.iter().map(Result::unwrap).collect();
        assert_eq!(
            keys,
            [
                Entry::Value { key: b"a", value: b"1" },
                Entry::Bucket { name: b"b-inner" },
                Entry::Value { key: b"c", value: b"3" }
            ]
        );
        assert_eq!(outer.get(b"b-inner").unwrap(), None, "get does not return buckets");
        let inner = outer.bucket(b"b-inner").unwrap().unwrap();
        assert!(inner.is_inline());
        assert_eq!(inner.get(b"x").unwrap(), Some(&b"y"[..]));
        assert!(outer.bucket(b"a").unwrap().is_none(), "a plain key is not a bucket");
    }

    #[test]
    fn random_models_round_trip_in_every_geometry() {
        let mut rng = Rng::new(0xDEAD_BEEF);
        for round in 0..15 {
            let ps = [512u32, 1024, 4096, 16384, 65536][round % 5];
            let fill = [0.1, 0.5, 0.9, 1.0][round % 4];
            let mut model = Model::new();
            for _ in 0..(1 + rng.next() % 6) {
                let n = 1 + (rng.next() % 12) as usize;
                let name = rng.bytes(n);
                let mut keys = BTreeMap::new();
                for _ in 0..(rng.next() % 400) {
                    let klen = 1 + (rng.next() % 40) as usize;
                    let vlen = match rng.next() % 20 {
                        0 => (rng.next() % 20_000) as usize,
                        _ => (rng.next() % 100) as usize,
                    };
                    let (k, v) = (rng.bytes(klen), rng.bytes(vlen));
                    keys.insert(k, v);
                }
                model.insert(name, keys.into_iter().collect());
            }
            let freelist = if round % 2 == 0 { FreelistMode::Page } else { FreelistMode::None };
            let opts = WriterOptions { page_size: ps, fill, freelist, out_buffer: OUT_BUFFER };
            round_trip(&model, opts);
            if round % 3 == 0 {
                assert!(
                    write(&model, opts.with_out_buffer(0)).0 == write(&model, opts).0,
                    "unbuffered: the same bytes"
                );
            }
        }
    }

    #[test]
    fn contract_violations_are_errors_not_corrupt_files() {
        let new = || BulkWriter::new(Cursor::new(Vec::new()), WriterOptions::default()).unwrap();
        let mut w = new();
        assert!(matches!(w.put(b"k", b"v"), Err(Error::Misuse { .. })), "put outside a bucket");
        assert!(matches!(w.end_bucket(), Err(Error::Misuse { .. })));
        w.begin_bucket(b"b").unwrap();
        assert!(w.begin_bucket(b"a").is_ok(), "a nested bucket is allowed");
        w.end_bucket().unwrap();
        w.put(b"k2", b"v").unwrap();
        assert!(matches!(w.put(b"k2", b"v"), Err(Error::Misuse { .. })), "duplicate key");
        assert!(matches!(w.put(b"k1", b"v"), Err(Error::Misuse { .. })), "decreasing key");
        assert!(matches!(w.put(b"", b"v"), Err(Error::Misuse { .. })), "empty key");
        assert!(matches!(w.put(&vec![1; MAX_KEY_SIZE + 1], b"v"), Err(Error::Misuse { .. })));
        w.put(b"k3", b"v").unwrap();
        w.end_bucket().unwrap();
        assert!(matches!(w.begin_bucket(b"a"), Err(Error::Misuse { .. })), "bucket names increase");
        let mut w2 = new();
        w2.begin_bucket(b"open").unwrap();
        assert!(matches!(w2.finish(), Err(Error::Misuse { .. })), "finish with an open bucket");
        for ps in [0, 256, 3000, 1 << 21] {
            let opts = WriterOptions { page_size: ps, ..WriterOptions::default() };
            assert!(BulkWriter::new(Cursor::new(Vec::new()), opts).is_err(), "page size {ps}");
        }
        let (out, _) = w.finish().unwrap();
        let db = Db::from_bytes(out.into_inner()).unwrap();
        assert!(db.check().is_ok());
        assert_eq!(db.bucket(b"b").unwrap().unwrap().iter().count(), 3, "bucket a, k2, k3");
    }

    #[test]
    fn writes_at_the_current_position_of_the_output() {
        let mut cur = Cursor::new(vec![0xAB; 100]);
        cur.set_position(100);
        let mut w = BulkWriter::new(cur, WriterOptions::default()).unwrap();
        w.begin_bucket(b"x").unwrap();
        w.end_bucket().unwrap();
        let (out, stats) = w.finish().unwrap();
        assert_eq!(out.position(), 100 + stats.bytes);
        let bytes = out.into_inner();
        assert!(bytes[..100].iter().all(|&b| b == 0xAB));
        let db = Db::from_bytes(bytes[100..].to_vec()).unwrap();
        assert!(db.check().is_ok());
    }
}
