//! The checker: bbolt's `tx.Check()` (`docs/formats.md` §1.4) plus the checks bbolt
//! leaves out (page self ids, exact flags, element bounds, meta checksums, freelist ranges).

use crate::db::MAX_TREE_DEPTH;
use crate::page::{
    BUCKET_LEAF_FLAG, Corrupt, FLAG_FREELIST, FLAG_META, Meta, MetaError, PAGE_HEADER_SIZE, PageRef, View, le_u64,
};

/// At most this many findings are kept; the rest are only counted. A badly damaged multi-GiB
/// file would otherwise produce one finding per page.
pub const MAX_FINDINGS: usize = 1000;

/// Deepest combined nesting (tree levels plus nested buckets) the checker follows.
const MAX_WALK_DEPTH: usize = 2 * MAX_TREE_DEPTH;

/// What kind of problem a [`Finding`] is. Kinds follow bbolt's `tx.Check()` messages where bbolt
/// has one, so a finding can be compared with `bbolt check` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FindingKind {
    /// A meta page fails validation (magic, version, checksum, page size, header). The file still
    /// opens while the other meta is valid, as in bbolt, but a snapshot should have two.
    MetaInvalid,
    /// A page reference (or overflow run) lies at or beyond the high-water mark.
    OutOfBounds,
    /// A page is reachable twice ("multiple references").
    MultipleReferences,
    /// A reachable page is also listed in the freelist ("reachable freed").
    ReachableFreed,
    /// A tree page is neither a branch nor a leaf ("invalid type").
    InvalidPageType,
    /// A page's header id differs from its position.
    PageIdMismatch,
    /// An element, key or value does not fit in its page, or a key is empty.
    BadElement,
    /// Keys are not strictly increasing, or a subtree breaks its parent's bounds.
    KeyOrder,
    /// A bucket value is too short, or an inline bucket is malformed.
    BadBucketValue,
    /// The freelist page is malformed, lists an id twice ("already freed"), or lists ids out of range.
    Freelist,
    /// A page is neither reachable nor free ("unreachable unfreed"; only with a persisted freelist).
    UnreachableUnfreed,
    /// The pages nest deeper than any real tree, i.e. they reference each other in a cycle.
    TreeTooDeep,
}

/// One problem found by [`crate::Db::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The page concerned, if any.
    pub page: Option<u64>,
    /// The kind of problem.
    pub kind: FindingKind,
    /// A human-readable description with offsets.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.page {
            Some(p) => write!(f, "page {p}: {:?}: {}", self.kind, self.message),
            None => write!(f, "{:?}: {}", self.kind, self.message),
        }
    }
}

/// The result of [`crate::Db::check`]: the findings plus what was walked.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CheckReport {
    /// The problems, at most [`MAX_FINDINGS`] of them.
    pub findings: Vec<Finding>,
    /// Findings beyond [`MAX_FINDINGS`] that were counted but not kept.
    pub dropped_findings: u64,
    /// Which meta page was used (0 or 1).
    pub meta_slot: u8,
    /// The high-water mark (pages in use, including free ones).
    pub pages: u64,
    /// Pages reachable from the metas, the freelist and the bucket trees.
    pub reachable_pages: u64,
    /// Free pages: listed in the persisted freelist, or (without one) the unreachable pages.
    pub free_pages: u64,
    /// Buckets, nested ones included, the root bucket excluded.
    pub buckets: u64,
    /// Plain key/value entries in all buckets.
    pub entries: u64,
}

impl CheckReport {
    /// True when there are no findings.
    pub fn is_ok(&self) -> bool {
        self.findings.is_empty() && self.dropped_findings == 0
    }

    fn add(&mut self, kind: crate::check::FindingKind, page: Option<u64>, message: String) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding { page, kind, message });
        } else {
            self.dropped_findings += 1;
        }
    }

    fn corrupt(&mut self, c: Corrupt) {
        let msg = match c.offset {
            Some(o) => format!("{} (byte offset {o:#x})", c.what),
            None => c.what,
        };
        self.add(c.kind, c.page, msg);
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_ok() {
            return write!(
                f,
                "ok: {} pages ({} reachable, {} free), {} buckets, {} entries",
                self.pages, self.reachable_pages, self.free_pages, self.buckets, self.entries
            );
        }
        writeln!(f, "{} problem(s):", self.findings.len() as u64 + self.dropped_findings)?;
        for x in &self.findings {
            writeln!(f, "  {x}")?;
        }
        if self.dropped_findings > 0 {
            writeln!(f, "  ... and {} more", self.dropped_findings)?;
        }
        Ok(())
    }
}

/// A set of page ids below the high-water mark.
struct PageSet(Vec<u64>);

impl PageSet {
    fn new(n: u64) -> PageSet {
        PageSet(vec![0; n.div_ceil(64) as usize])
    }
    fn contains(&self, p: u64) -> bool {
        self.0.get((p / 64) as usize).is_some_and(|w| w & (1 << (p % 64)) != 0)
    }
    /// Inserts `p`; returns false if it was already present.
    fn insert(&mut self, p: u64) -> bool {
        match self.0.get_mut((p / 64) as usize) {
            Some(w) => {
                let had = *w & (1 << (p % 64)) != 0;
                *w |= 1 << (p % 64);
                !had
            }
            None => false,
        }
    }
}

struct Checker<'a> {
    view: View<'a>,
    report: CheckReport,
    reachable: PageSet,
    freed: PageSet,
}

pub(crate) fn check(view: View<'_>, meta: &Meta, metas: &[Result<Meta, MetaError>; 2]) -> CheckReport {
    let mut c = Checker {
        view,
        report: CheckReport { meta_slot: meta.slot, pages: view.hwm, ..CheckReport::default() },
        reachable: PageSet::new(view.hwm),
        freed: PageSet::new(view.hwm),
    };
    for (slot, m) in metas.iter().enumerate() {
        if let Err(e) = m {
            c.report.add(FindingKind::MetaInvalid, Some(slot as u64), format!("meta {slot}: {e}"));
        }
        c.check_meta_header(slot as u64);
        c.reachable.insert(slot as u64);
    }
    if meta.root < 2 {
        c.report.add(FindingKind::OutOfBounds, None, format!("meta root {} points at a meta page", meta.root));
    }
    let persisted = meta.freelist.is_some();
    if let Some(fl) = meta.freelist {
        c.load_freelist(fl);
    }
    c.walk_bucket_tree(meta.root, 0);
    for p in 2..view.hwm {
        let reachable = c.reachable.contains(p);
        if !reachable && !c.freed.contains(p) {
            if persisted {
                c.report.add(FindingKind::UnreachableUnfreed, Some(p), format!("page {p}: unreachable unfreed"));
            } else {
                // With NoFreelistSync the free set *is* the unreachable set.
                c.freed.insert(p);
            }
        }
    }
    c.report.reachable_pages = (0..view.hwm).filter(|&p| c.reachable.contains(p)).count() as u64;
    c.report.free_pages = (0..view.hwm).filter(|&p| c.freed.contains(p)).count() as u64;
    c.report
}

impl<'a> Checker<'a> {
    fn check_meta_header(&mut self, slot: u64) {
        let Ok(h) = self.view.header(slot) else {
            // Only reachable with hwm < 2, which `Db` refuses at open.
            return;
        };
        if h.id != slot || h.flags != FLAG_META || h.overflow != 0 {
            self.report.add(
                FindingKind::MetaInvalid,
                Some(slot),
                format!(
                    "meta page {slot} header has id {} flags {:#06x} overflow {} (expected id {slot}, flags 0x0004, overflow 0)",
                    h.id, h.flags, h.overflow
                ),
            );
        }
    }

    fn load_freelist(&mut self, fl: u64) {
        let hdr = match self.view.header(fl) {
            Ok(h) => h,
            Err(c) => {
                self.report.add(FindingKind::Freelist, Some(fl), format!("freelist page: {}", c.what));
                return;
            }
        };
        for i in 0..=u64::from(hdr.overflow) {
            if fl + i < 2 || !self.reachable.insert(fl + i) {
                self.report.add(
                    FindingKind::MultipleReferences,
                    Some(fl + i),
                    format!("page {}: multiple references (freelist)", fl + i),
                );
            }
        }
        let at = fl * u64::from(self.view.ps);
        if hdr.id != fl {
            self.report.add(
                FindingKind::PageIdMismatch,
                Some(fl),
                format!("freelist page {fl} identifies itself as page {}", hdr.id),
            );
        }
        if hdr.flags != FLAG_FREELIST {
            self.report.add(
                FindingKind::Freelist,
                Some(fl),
                format!("freelist page {fl} has flags {:#06x}, not 0x0010", hdr.flags),
            );
            return;
        }
        let buf = self.view.span(fl, &hdr);
        let (n, start) = if hdr.count == 0xFFFF {
            (le_u64(buf, PAGE_HEADER_SIZE).unwrap_or(u64::MAX), PAGE_HEADER_SIZE + 8)
        } else {
            (u64::from(hdr.count), PAGE_HEADER_SIZE)
        };
        let room = (buf.len().saturating_sub(start) / 8) as u64;
        if n > room {
            self.report.add(
                FindingKind::Freelist,
                Some(fl),
                format!("freelist claims {n} ids but the page has room for {room} (byte offset {at:#x})"),
            );
            return;
        }
        for i in 0..n as usize {
            let id = le_u64(buf, start + 8 * i).unwrap_or(0);
            if id < 2 || id >= self.view.hwm {
                self.report.add(
                    FindingKind::Freelist,
                    Some(fl),
                    format!("freelist lists page {id}, outside [2, {})", self.view.hwm),
                );
            } else if !self.freed.insert(id) {
                self.report.add(FindingKind::Freelist, Some(id), format!("page {id}: already freed"));
            }
        }
    }

    /// Walks a page-based bucket.
    fn walk_bucket_tree(&mut self, root: u64, depth: usize) {
        self.walk_page(root, None, None, depth);
    }

    /// Walks one tree page with the key bounds its parent imposes: keys `>= lo` (the parent's
    /// key for this child) and `< hi` (the parent's next key).
    fn walk_page(&mut self, pgid: u64, lo: Option<&'a [u8]>, hi: Option<&'a [u8]>, depth: usize) {
        if depth > MAX_WALK_DEPTH {
            self.report.add(
                FindingKind::TreeTooDeep,
                Some(pgid),
                format!("pages nest deeper than {MAX_WALK_DEPTH} levels at page {pgid}"),
            );
            return;
        }
        let hdr = match self.view.header(pgid) {
            Ok(h) => h,
            Err(c) => return self.report.corrupt(c),
        };
        let mut seen_twice = false;
        for i in 0..=u64::from(hdr.overflow) {
            if !self.reachable.insert(pgid + i) {
                seen_twice = true;
                self.report.add(
                    FindingKind::MultipleReferences,
                    Some(pgid + i),
                    format!("page {}: multiple references", pgid + i),
                );
            }
        }
        if seen_twice {
            // Walked (or claimed) already: descending again could loop or blow up exponentially.
            return;
        }
        if self.freed.contains(pgid) {
            self.report.add(FindingKind::ReachableFreed, Some(pgid), format!("page {pgid}: reachable freed"));
        }
        let page = match self.view.tree_page(pgid) {
            Ok(p) => p,
            Err(c) => return self.report.corrupt(c),
        };
        if page.is_leaf() {
            self.walk_leaf(&page, lo, hi, depth);
        } else {
            self.walk_branch(&page, lo, hi, depth);
        }
    }

    fn key_order(
        &mut self,
        page: &PageRef<'a>,
        i: usize,
        key: &[u8],
        prev: Option<&[u8]>,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
    ) -> bool {
        let what = if key.is_empty() {
            Some("empty key".to_string())
        } else if prev.is_some_and(|p| key <= p) {
            Some(format!("element {i}: keys are not strictly increasing"))
        } else if prev.is_none() && lo.is_some_and(|l| key < l) {
            Some(format!("element {i}: key is smaller than the parent's key for this page"))
        } else if hi.is_some_and(|h| key >= h) {
            Some(format!("element {i}: key is not below the parent's next key"))
        } else {
            None
        };
        match what {
            Some(w) => {
                let kind = if key.is_empty() { FindingKind::BadElement } else { FindingKind::KeyOrder };
                self.report.add(kind, Some(page.pgid), w);
                false
            }
            None => true,
        }
    }

    fn walk_branch(&mut self, page: &PageRef<'a>, lo: Option<&'a [u8]>, hi: Option<&'a [u8]>, depth: usize) {
        if page.count == 0 {
            self.report.add(FindingKind::BadElement, Some(page.pgid), "branch page with no elements".into());
            return;
        }
        let mut elems = Vec::with_capacity(usize::from(page.count));
        let mut prev: Option<&[u8]> = None;
        for i in 0..usize::from(page.count) {
            match page.branch(i) {
                Ok(e) => {
                    if !self.key_order(page, i, e.key, prev, lo, hi) {
                        return;
                    }
                    prev = Some(e.key);
                    elems.push(e);
                }
                Err(c) => return self.report.corrupt(c),
            }
        }
        for (i, e) in elems.iter().enumerate() {
            let next = elems.get(i + 1).map(|n| n.key).or(hi);
            self.walk_page(e.child, Some(e.key), next, depth + 1);
        }
    }

    fn walk_leaf(&mut self, page: &PageRef<'a>, lo: Option<&'a [u8]>, hi: Option<&'a [u8]>, depth: usize) {
        let mut prev: Option<&[u8]> = None;
        for i in 0..usize::from(page.count) {
            let e = match page.leaf(i) {
                Ok(e) => e,
                Err(c) => return self.report.corrupt(c),
            };
            if !self.key_order(page, i, e.key, prev, lo, hi) {
                return;
            }
            prev = Some(e.key);
            if e.flags & !BUCKET_LEAF_FLAG != 0 {
                self.report.add(
                    FindingKind::BadElement,
                    Some(page.pgid),
                    format!("element {i} has unknown flags {:#x}", e.flags),
                );
            }
            if e.flags & BUCKET_LEAF_FLAG == 0 {
                self.report.entries += 1;
                continue;
            }
            self.report.buckets += 1;
            if page.inline {
                self.report.add(
                    FindingKind::BadBucketValue,
                    Some(page.pgid),
                    format!("inline bucket element {i} is itself a bucket (inline buckets hold no sub-buckets)"),
                );
                continue;
            }
            match crate::db::open_bucket(self.view, &e, page.pgid) {
                Err(c) => self.report.corrupt(c),
                Ok(b) => match (b.root_page(), b.inline_page()) {
                    (Some(root), _) => self.walk_bucket_tree(root, depth + 1),
                    (None, Some(inline)) => self.walk_leaf(&inline, None, None, depth + 1),
                    (None, None) => {}
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::page::{encode_meta, parse_meta};
    use crate::{BulkWriter, Db, FreelistMode, WriterOptions};

    const PS: usize = 4096;

    /// A small db: one bucket with enough keys for a few leaves, written with `mode`.
    fn small_db(mode: FreelistMode) -> Vec<u8> {
        let opts = WriterOptions { page_size: PS as u32, fill: 1.0, freelist: mode, ..Default::default() };
        let mut w = BulkWriter::new(Cursor::new(Vec::new()), opts).unwrap();
        w.begin_bucket(b"b").unwrap();
        for i in 0..300u32 {
            w.put(&i.to_be_bytes(), &[7; 40]).unwrap();
        }
        w.end_bucket().unwrap();
        w.finish().unwrap().0.into_inner()
    }

    /// Rewrites both metas with a new high-water mark (and valid checksums).
    fn set_hwm(b: &mut Vec<u8>, pgid: u64) {
        for slot in 0..2 {
            let mut m = parse_meta(&b[slot * PS..], slot as u8).unwrap();
            m.pgid = pgid;
            b[slot * PS..(slot + 1) * PS].copy_from_slice(&encode_meta(&m, PS));
        }
        b.resize(pgid as usize * PS, 0);
    }

    /// Writes `ids` into the freelist page (pgid 2), in the extended form if asked.
    fn set_freelist(b: &mut [u8], ids: &[u64], extended: bool) {
        let p = &mut b[2 * PS..3 * PS];
        let mut at = 16;
        if extended {
            p[10..12].copy_from_slice(&0xFFFFu16.to_le_bytes());
            p[16..24].copy_from_slice(&(ids.len() as u64).to_le_bytes());
            at = 24;
        } else {
            p[10..12].copy_from_slice(&(ids.len() as u16).to_le_bytes());
        }
        for (i, id) in ids.iter().enumerate() {
            p[at + 8 * i..at + 8 * i + 8].copy_from_slice(&id.to_le_bytes());
        }
    }

    fn kinds(b: Vec<u8>) -> (Vec<FindingKind>, CheckReport) {
        let r = Db::from_bytes(b).unwrap().check();
        (r.findings.iter().map(|f| f.kind).collect(), r)
    }

    #[test]
    fn unreachable_pages_are_free_without_a_freelist_but_findings_with_one() {
        let mut b = small_db(FreelistMode::None);
        let hwm = b.len() as u64 / PS as u64;
        set_hwm(&mut b, hwm + 3);
        let (k, r) = kinds(b);
        assert!(k.is_empty(), "{r}");
        assert_eq!(r.free_pages, 3);

        let mut b = small_db(FreelistMode::Page);
        set_hwm(&mut b, hwm + 1 + 3);
        let (k, r) = kinds(b.clone());
        assert_eq!(k, [FindingKind::UnreachableUnfreed; 3], "{r}");
        // Listing them (extended count form too) makes the file clean again.
        for extended in [false, true] {
            set_freelist(&mut b, &[hwm + 3, hwm + 1, hwm + 2], extended);
            let (k, r) = kinds(b.clone());
            assert!(k.is_empty(), "{r}");
            assert_eq!(r.free_pages, 3);
        }
    }

    #[test]
    fn persisted_freelist_errors_are_reported() {
        let b = small_db(FreelistMode::Page);
        let hwm = b.len() as u64 / PS as u64;
        let root = Db::from_bytes(b.clone()).unwrap().meta().root;
        let cases: [(&[u64], FindingKind); 3] = [
            (&[hwm - 1, hwm - 1], FindingKind::Freelist), // already freed
            (&[1], FindingKind::Freelist),                // a meta page
            (&[root], FindingKind::ReachableFreed),       // in use
        ];
        for (ids, want) in cases {
            let mut b = b.clone();
            set_freelist(&mut b, ids, false);
            let (k, r) = kinds(b);
            assert!(k.contains(&want), "{ids:?}: {r}");
        }
        // A count larger than the page can hold.
        let mut b = b.clone();
        b[2 * PS + 10..2 * PS + 12].copy_from_slice(&600u16.to_le_bytes());
        assert!(kinds(b).0.contains(&FindingKind::Freelist));
    }

    #[test]
    fn findings_are_capped_but_counted() {
        let mut b = small_db(FreelistMode::Page);
        let hwm = b.len() as u64 / PS as u64;
        set_hwm(&mut b, hwm + MAX_FINDINGS as u64 + 50);
        let (k, r) = kinds(b);
        assert_eq!(k.len(), MAX_FINDINGS);
        assert_eq!(r.dropped_findings, 50);
        assert!(!r.is_ok());
        assert!(r.to_string().contains("and 50 more"));
    }

    #[test]
    fn wrong_self_id_and_key_order_are_findings() {
        let b = small_db(FreelistMode::Page);
        let db = Db::from_bytes(b.clone()).unwrap();
        let root = db.bucket(b"b").unwrap().unwrap().root_page().unwrap() as usize;
        let first_leaf = {
            let v = db.view();
            v.tree_page(root as u64).unwrap().branch(0).unwrap().child as usize
        };
        let mut x = b.clone();
        x[first_leaf * PS] ^= 0x40;
        assert!(kinds(x).0.contains(&FindingKind::PageIdMismatch));
        // Swap the first two keys' last bytes: 0,1 -> 1,0.
        let mut x = b.clone();
        let key0 =
            first_leaf * PS + 16 + u32::from_le_bytes(x[first_leaf * PS + 20..][..4].try_into().unwrap()) as usize;
        x[key0 + 3] = 0xFF;
        let (k, r) = kinds(x.clone());
        assert_eq!(k, [FindingKind::KeyOrder], "{r}");
        let db = Db::from_bytes(x).unwrap();
        let bucket = db.bucket(b"b").unwrap().unwrap();
        let mut it = bucket.iter();
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_err(), "iteration stops at the order violation");
        assert!(it.next().is_none());
    }
}
