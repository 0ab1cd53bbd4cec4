//! Byte-level decoding of pages, elements and meta pages, with every offset bounds-checked.
//!
//! Nothing here trusts the file: each read goes through `slice::get`, and every failure becomes a
//! [`Corrupt`] value that says which page and offset were bad. The hot paths (element lookups)
//! do a handful of comparisons and no allocation.

use crate::check::FindingKind;
use crate::error::Error;

/// Size of the header at the start of every page and every inline bucket page.
pub const PAGE_HEADER_SIZE: usize = 16;
/// Size of one branch or leaf element.
pub const ELEMENT_SIZE: usize = 16;
/// Size of a bucket header (`root` pgid + `sequence`), the start of a bucket value.
pub const BUCKET_HEADER_SIZE: usize = 16;
/// bbolt's magic number, as read little-endian from meta offset 16.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The magic as it reads from a file written on a big-endian host.
pub(crate) const SWAPPED_MAGIC: u32 = 0xEDDA_0CED;
/// The only file format version bbolt has ever written.
pub const VERSION: u32 = 2;
/// `meta.freelist` value that means "no freelist persisted" (etcd's `NoFreelistSync`).
pub const PGID_NO_FREELIST: u64 = u64::MAX;
/// bbolt's `MaxKeySize`.
pub const MAX_KEY_SIZE: usize = 32768;
/// bbolt's `MaxValueSize`.
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;
/// Smallest page size this crate accepts (a power of two).
pub const MIN_PAGE_SIZE: u32 = 512;
/// Largest page size this crate accepts (a power of two; real files use 4 KiB to 64 KiB).
pub const MAX_PAGE_SIZE: u32 = 1 << 20;

/// Page header flag of a branch page.
pub const FLAG_BRANCH: u16 = 0x01;
/// Page header flag of a leaf page.
pub const FLAG_LEAF: u16 = 0x02;
/// Page header flag of a meta page.
pub const FLAG_META: u16 = 0x04;
/// Page header flag of the freelist page.
pub const FLAG_FREELIST: u16 = 0x10;
/// Leaf element flag: the value is a nested bucket.
pub const BUCKET_LEAF_FLAG: u32 = 0x01;
/// Offset of the magic in meta pages 0 and 1: the meta's first field, right after the page
/// header.
pub const META_MAGIC_OFFSET: usize = PAGE_HEADER_SIZE;
/// Offset of the format version in a meta page (the meta's second field).
pub const META_VERSION_OFFSET: usize = PAGE_HEADER_SIZE + 4;
/// Offset of the page size in a meta page (the meta's third field).
pub const META_PAGE_SIZE_OFFSET: usize = PAGE_HEADER_SIZE + 8;
/// Bytes of meta page 0 that give the page size (header, magic, version, page size): what a
/// reader of the file as a stream needs before it can find the page boundaries.
pub const META_PAGE_SIZE_END: usize = META_PAGE_SIZE_OFFSET + 4;
/// Byte length of the meta fields covered by the checksum (magic..txid).
const META_SUM_LEN: usize = 56;
/// Bytes from the page start to the end of the meta struct (header, fields, checksum): what a
/// reader must have of page 0 or 1 to decode it with [`Meta::decode`].
pub const META_END: usize = PAGE_HEADER_SIZE + META_SUM_LEN + 8;

/// A detected structural problem, before it becomes an [`Error`] or a check finding.
#[derive(Debug, Clone)]
pub(crate) struct Corrupt {
    pub kind: FindingKind,
    pub page: Option<u64>,
    pub offset: Option<u64>,
    pub what: String,
}

impl Corrupt {
    pub(crate) fn new(kind: FindingKind, page: Option<u64>, offset: Option<u64>, what: impl Into<String>) -> Corrupt {
        Corrupt { kind, page, offset, what: what.into() }
    }
}

impl From<Corrupt> for Error {
    fn from(c: Corrupt) -> Error {
        Error::Corrupted { page: c.page, offset: c.offset, what: c.what }
    }
}

pub(crate) fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

pub(crate) fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

pub(crate) fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

/// FNV-1a, 64 bit: bbolt's meta checksum.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One of the two meta pages, decoded.
///
/// The meta says where the root bucket lives, whether a freelist is persisted, how many pages
/// the file has (its high-water mark) and which transaction wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Which meta page this is (0 or 1).
    pub slot: u8,
    /// The page size of the file.
    pub page_size: u32,
    /// `meta.flags`, unused by bbolt (0).
    pub flags: u32,
    /// The root page of the root bucket.
    pub root: u64,
    /// The root bucket's sequence (0 in practice).
    pub sequence: u64,
    /// The freelist page, or `None` when the freelist is not persisted (etcd's `NoFreelistSync`).
    pub freelist: Option<u64>,
    /// The high-water mark: one past the last allocated page.
    pub pgid: u64,
    /// The transaction id that wrote this meta.
    pub txid: u64,
    /// The stored FNV-1a checksum (verified).
    pub checksum: u64,
}

impl Meta {
    /// Decodes and validates (magic, version, checksum) the meta at the start of `page`, the
    /// bytes of page `slot` (0 or 1); `None` if it does not validate. For readers that see the
    /// file's bytes one page at a time (a stream) rather than through [`Db`](crate::Db); the
    /// page flag and the page size are the caller's to check.
    pub fn decode(page: &[u8], slot: u8) -> Option<Meta> {
        parse_meta(page, slot).ok()
    }
}

/// Why a meta page did not validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetaError {
    TooShort,
    SwappedMagic,
    BadMagic(u32),
    BadVersion(u32),
    BadChecksum { stored: u64, computed: u64 },
    PageSize(u32),
}

impl std::fmt::Display for MetaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaError::TooShort => write!(f, "meta page lies beyond the end of the file"),
            MetaError::SwappedMagic => write!(f, "byte-swapped magic: the file was written on a big-endian host"),
            MetaError::BadMagic(m) => write!(f, "bad magic {m:#010x}"),
            MetaError::BadVersion(v) => write!(f, "unsupported version {v}"),
            MetaError::BadChecksum { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")
            }
            MetaError::PageSize(ps) => write!(f, "page size {ps} disagrees with the meta's position in the file"),
        }
    }
}

/// Decodes and validates the meta at the start of `page` in bbolt's order: magic, version,
/// checksum. The page size is checked by the caller, which knows where the page was found.
pub(crate) fn parse_meta(page: &[u8], slot: u8) -> Result<Meta, MetaError> {
    let m = page.get(PAGE_HEADER_SIZE..META_END).ok_or(MetaError::TooShort)?;
    let u32_at = |o: usize| le_u32(m, o).unwrap_or(0);
    let u64_at = |o: usize| le_u64(m, o).unwrap_or(0);
    let magic = u32_at(META_MAGIC_OFFSET - PAGE_HEADER_SIZE);
    if magic == SWAPPED_MAGIC {
        return Err(MetaError::SwappedMagic);
    }
    if magic != MAGIC {
        return Err(MetaError::BadMagic(magic));
    }
    let version = u32_at(META_VERSION_OFFSET - PAGE_HEADER_SIZE);
    if version != VERSION {
        return Err(MetaError::BadVersion(version));
    }
    let stored = u64_at(56);
    let computed = fnv1a64(&m[..META_SUM_LEN]);
    if stored != computed {
        return Err(MetaError::BadChecksum { stored, computed });
    }
    let freelist = u64_at(32);
    Ok(Meta {
        slot,
        page_size: u32_at(META_PAGE_SIZE_OFFSET - PAGE_HEADER_SIZE),
        flags: u32_at(12),
        root: u64_at(16),
        sequence: u64_at(24),
        freelist: (freelist != PGID_NO_FREELIST).then_some(freelist),
        pgid: u64_at(40),
        txid: u64_at(48),
        checksum: stored,
    })
}

/// Encodes a meta page of `page_size` bytes (header, meta, checksum, zero padding).
pub(crate) fn encode_meta(meta: &Meta, page_size: usize) -> Vec<u8> {
    let mut p = vec![0u8; page_size];
    p[0..8].copy_from_slice(&u64::from(meta.slot).to_le_bytes());
    p[8..10].copy_from_slice(&FLAG_META.to_le_bytes());
    let m = &mut p[PAGE_HEADER_SIZE..META_END];
    m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    m[4..8].copy_from_slice(&VERSION.to_le_bytes());
    m[8..12].copy_from_slice(&meta.page_size.to_le_bytes());
    m[12..16].copy_from_slice(&meta.flags.to_le_bytes());
    m[16..24].copy_from_slice(&meta.root.to_le_bytes());
    m[24..32].copy_from_slice(&meta.sequence.to_le_bytes());
    m[32..40].copy_from_slice(&meta.freelist.unwrap_or(PGID_NO_FREELIST).to_le_bytes());
    m[40..48].copy_from_slice(&meta.pgid.to_le_bytes());
    m[48..56].copy_from_slice(&meta.txid.to_le_bytes());
    let sum = fnv1a64(&m[..META_SUM_LEN]);
    m[56..64].copy_from_slice(&sum.to_le_bytes());
    p
}

/// The data region of a file (`[0, pgid*pageSize)`) with its geometry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [u8],
    pub ps: u32,
    pub hwm: u64,
}

/// A page header as stored: the page's id, its type flags ([`FLAG_BRANCH`], [`FLAG_LEAF`], …),
/// its element count and how many overflow pages follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    /// The id the page gives itself.
    pub id: u64,
    /// Its type flags.
    pub flags: u16,
    /// Its element count.
    pub count: u16,
    /// How many pages after it belong to it.
    pub overflow: u32,
}

impl PageHeader {
    /// Decodes the header at the start of `page` without checking it; `None` if `page` is
    /// shorter than [`PAGE_HEADER_SIZE`]. For readers that see pages one at a time.
    pub fn decode(page: &[u8]) -> Option<PageHeader> {
        Some(PageHeader {
            id: le_u64(page, 0)?,
            flags: le_u16(page, 8)?,
            count: le_u16(page, 10)?,
            overflow: le_u32(page, 12)?,
        })
    }
}

/// The offset of element `i`'s header in a branch or leaf page.
pub fn element_offset(i: usize) -> usize {
    PAGE_HEADER_SIZE + ELEMENT_SIZE * i
}

/// A leaf element's header as stored; its key starts `pos` bytes after the header's own
/// offset ([`element_offset`]) and its value right after the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafElementHeader {
    /// [`BUCKET_LEAF_FLAG`] when the value is a nested bucket.
    pub flags: u32,
    /// Distance from the element header to the key.
    pub pos: u32,
    /// Key length.
    pub ksize: u32,
    /// Value length.
    pub vsize: u32,
}

impl LeafElementHeader {
    /// Decodes the header of element `i` of the leaf page `page`, unchecked; `None` if it lies
    /// beyond `page`.
    pub fn decode(page: &[u8], i: usize) -> Option<LeafElementHeader> {
        let e = element_offset(i);
        Some(LeafElementHeader {
            flags: le_u32(page, e)?,
            pos: le_u32(page, e + 4)?,
            ksize: le_u32(page, e + 8)?,
            vsize: le_u32(page, e + 12)?,
        })
    }
}

/// A branch element's header as stored; its key starts `pos` bytes after the header's own
/// offset ([`element_offset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BranchElementHeader {
    /// Distance from the element header to the key.
    pub pos: u32,
    /// Key length.
    pub ksize: u32,
    /// The child page.
    pub child: u64,
}

impl BranchElementHeader {
    /// Decodes the header of element `i` of the branch page `page`, unchecked; `None` if it
    /// lies beyond `page`.
    pub fn decode(page: &[u8], i: usize) -> Option<BranchElementHeader> {
        let e = element_offset(i);
        Some(BranchElementHeader { pos: le_u32(page, e)?, ksize: le_u32(page, e + 4)?, child: le_u64(page, e + 8)? })
    }
}

impl<'a> View<'a> {
    /// Reads the header of page `pgid` and checks that the page and its overflow run lie below
    /// the high-water mark.
    pub(crate) fn header(&self, pgid: u64) -> Result<PageHeader, Corrupt> {
        if pgid >= self.hwm {
            return Err(Corrupt::new(
                FindingKind::OutOfBounds,
                Some(pgid),
                None,
                format!("page {pgid} is beyond the high-water mark {}", self.hwm),
            ));
        }
        // pgid < hwm and hwm*ps <= data.len(), so the multiplication cannot overflow.
        let off = pgid * u64::from(self.ps);
        let start = off as usize;
        let h = self.data.get(start..start + PAGE_HEADER_SIZE).ok_or_else(|| {
            Corrupt::new(FindingKind::OutOfBounds, Some(pgid), Some(off), "page header beyond the end of the data")
        })?;
        let hdr = PageHeader::decode(h).unwrap_or(PageHeader { id: 0, flags: 0, count: 0, overflow: 0 });
        if pgid + u64::from(hdr.overflow) >= self.hwm {
            return Err(Corrupt::new(
                FindingKind::OutOfBounds,
                Some(pgid),
                Some(off),
                format!(
                    "page {pgid} claims {} overflow pages, running past the high-water mark {}",
                    hdr.overflow, self.hwm
                ),
            ));
        }
        Ok(hdr)
    }

    /// The bytes of page `pgid` including its overflow pages, given its header.
    pub(crate) fn span(&self, pgid: u64, hdr: &PageHeader) -> &'a [u8] {
        let ps = self.ps as usize;
        let start = pgid as usize * ps;
        let end = start + (hdr.overflow as usize + 1) * ps;
        self.data.get(start..end).unwrap_or(&[])
    }

    /// Loads a branch or leaf page of a bucket tree, verifying its self id, its type and that its
    /// element array fits.
    pub(crate) fn tree_page(&self, pgid: u64) -> Result<PageRef<'a>, Corrupt> {
        let hdr = self.header(pgid)?;
        let off = pgid * u64::from(self.ps);
        if hdr.id != pgid {
            return Err(Corrupt::new(
                FindingKind::PageIdMismatch,
                Some(pgid),
                Some(off),
                format!("page {pgid} identifies itself as page {}", hdr.id),
            ));
        }
        if hdr.flags != FLAG_BRANCH && hdr.flags != FLAG_LEAF {
            return Err(Corrupt::new(
                FindingKind::InvalidPageType,
                Some(pgid),
                Some(off),
                format!("page {pgid} has flags {:#06x} where a branch or leaf page was expected", hdr.flags),
            ));
        }
        PageRef::new(self.span(pgid, &hdr), pgid, off, hdr, false)
    }
}

/// A branch or leaf page (or an inline bucket's fake page) whose element array is known to fit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageRef<'a> {
    /// The page, for error messages (for an inline page: the page that holds it).
    pub pgid: u64,
    /// Absolute file offset of `buf[0]`.
    pub at: u64,
    pub flags: u16,
    pub count: u16,
    pub inline: bool,
    pub buf: &'a [u8],
}

/// A leaf element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeafElem<'a> {
    pub flags: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// Absolute file offset of `value[0]`.
    pub value_at: u64,
}

/// A branch element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BranchElem<'a> {
    pub key: &'a [u8],
    pub child: u64,
}

impl<'a> PageRef<'a> {
    pub(crate) fn new(
        buf: &'a [u8],
        pgid: u64,
        at: u64,
        hdr: PageHeader,
        inline: bool,
    ) -> Result<PageRef<'a>, Corrupt> {
        let need = PAGE_HEADER_SIZE + ELEMENT_SIZE * usize::from(hdr.count);
        if need > buf.len() {
            return Err(Corrupt::new(
                FindingKind::BadElement,
                Some(pgid),
                Some(at),
                format!("{} elements need {need} bytes but the page has {}", hdr.count, buf.len()),
            ));
        }
        Ok(PageRef { pgid, at, flags: hdr.flags, count: hdr.count, inline, buf })
    }

    /// Decodes the fake page that follows an inline bucket's 16-byte header.
    pub(crate) fn inline(value: &'a [u8], value_at: u64, host: u64) -> Result<PageRef<'a>, Corrupt> {
        let buf = value.get(BUCKET_HEADER_SIZE..).unwrap_or(&[]);
        let at = value_at + BUCKET_HEADER_SIZE as u64;
        if buf.len() < PAGE_HEADER_SIZE {
            return Err(Corrupt::new(
                FindingKind::BadBucketValue,
                Some(host),
                Some(at),
                format!("inline bucket value of {} bytes is too short for a page header", value.len()),
            ));
        }
        let hdr = PageHeader::decode(buf).unwrap_or(PageHeader { id: 0, flags: 0, count: 0, overflow: 0 });
        if hdr.flags != FLAG_LEAF {
            return Err(Corrupt::new(
                FindingKind::BadBucketValue,
                Some(host),
                Some(at),
                format!("inline bucket page has flags {:#06x}, not a leaf", hdr.flags),
            ));
        }
        PageRef::new(buf, host, at, hdr, true)
    }

    pub(crate) fn is_leaf(&self) -> bool {
        self.flags == FLAG_LEAF
    }

    fn elem_error(&self, i: usize, what: String) -> Corrupt {
        let off = self.at + (PAGE_HEADER_SIZE + ELEMENT_SIZE * i) as u64;
        let place = if self.inline { " of an inline bucket" } else { "" };
        Corrupt::new(FindingKind::BadElement, Some(self.pgid), Some(off), format!("element {i}{place}: {what}"))
    }

    /// The `i`th leaf element; its key and value must lie inside the page.
    pub(crate) fn leaf(&self, i: usize) -> Result<LeafElem<'a>, Corrupt> {
        let e = element_offset(i);
        let Some(LeafElementHeader { flags, pos, ksize, vsize }) = LeafElementHeader::decode(self.buf, i) else {
            return Err(self.elem_error(i, "element header beyond the page".into()));
        };
        let kstart = e as u64 + u64::from(pos);
        let kend = kstart + u64::from(ksize);
        let vend = kend + u64::from(vsize);
        if vend > self.buf.len() as u64 {
            return Err(
                self.elem_error(i, format!("key/value [{kstart}, {vend}) exceed the page length {}", self.buf.len()))
            );
        }
        let (kstart, kend, vend) = (kstart as usize, kend as usize, vend as usize);
        Ok(LeafElem {
            flags,
            key: &self.buf[kstart..kend],
            value: &self.buf[kend..vend],
            value_at: self.at + kend as u64,
        })
    }

    /// The `i`th branch element; its key must lie inside the page.
    pub(crate) fn branch(&self, i: usize) -> Result<BranchElem<'a>, Corrupt> {
        let e = element_offset(i);
        let Some(BranchElementHeader { pos, ksize, child }) = BranchElementHeader::decode(self.buf, i) else {
            return Err(self.elem_error(i, "element header beyond the page".into()));
        };
        let kstart = e as u64 + u64::from(pos);
        let kend = kstart + u64::from(ksize);
        if kend > self.buf.len() as u64 {
            return Err(
                self.elem_error(i, format!("key [{kstart}, {kend}) exceeds the page length {}", self.buf.len()))
            );
        }
        Ok(BranchElem { key: &self.buf[kstart as usize..kend as usize], child })
    }

    /// The key of element `i`, for binary searches.
    pub(crate) fn key(&self, i: usize) -> Result<&'a [u8], Corrupt> {
        if self.is_leaf() { self.leaf(i).map(|e| e.key) } else { self.branch(i).map(|e| e.key) }
    }

    /// Binary search: the index of the first element whose key is `>= key` and whether it is equal.
    pub(crate) fn search(&self, key: &[u8]) -> Result<(usize, bool), Corrupt> {
        let (mut lo, mut hi) = (0usize, usize::from(self.count));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid)?.cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Equal => return Ok((mid, true)),
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok((lo, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn meta_round_trips_and_detects_damage() {
        let meta = Meta {
            slot: 1,
            page_size: 4096,
            flags: 0,
            root: 7,
            sequence: 0,
            freelist: None,
            pgid: 9,
            txid: 5,
            checksum: 0,
        };
        let page = encode_meta(&meta, 4096);
        let back = parse_meta(&page, 1).expect("valid meta");
        assert_eq!(back.root, 7);
        assert_eq!(back.freelist, None);
        assert_eq!(back.txid, 5);
        let mut bad = page.clone();
        bad[40] ^= 1;
        assert!(matches!(parse_meta(&bad, 1), Err(MetaError::BadChecksum { .. })));
        let mut swapped = page.clone();
        swapped[16..20].copy_from_slice(&MAGIC.to_be_bytes());
        assert_eq!(parse_meta(&swapped, 1), Err(MetaError::SwappedMagic));
        assert_eq!(parse_meta(&page[..40], 1), Err(MetaError::TooShort));
    }

    #[test]
    fn leaf_element_bounds_are_checked() {
        // One element whose value runs past the page.
        let mut buf = vec![0u8; 64];
        buf[8..10].copy_from_slice(&FLAG_LEAF.to_le_bytes());
        buf[10..12].copy_from_slice(&1u16.to_le_bytes());
        buf[16 + 4..16 + 8].copy_from_slice(&16u32.to_le_bytes());
        buf[16 + 8..16 + 12].copy_from_slice(&4u32.to_le_bytes());
        buf[16 + 12..16 + 16].copy_from_slice(&100u32.to_le_bytes());
        let hdr = PageHeader { id: 0, flags: FLAG_LEAF, count: 1, overflow: 0 };
        let p = PageRef::new(&buf, 3, 0, hdr, false).expect("array fits");
        assert!(p.leaf(0).is_err());
        let hdr = PageHeader { id: 0, flags: FLAG_LEAF, count: 4, overflow: 0 };
        assert!(PageRef::new(&buf, 3, 0, hdr, false).is_err());
    }
}
