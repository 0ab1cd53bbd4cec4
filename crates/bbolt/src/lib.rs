//! Pure-Rust access to bbolt database files, the storage format of etcd's backend: a reader, a
//! checker and a streaming bulk writer.
//!
//! Sync code over files and byte slices: no async runtime, no etcd knowledge. The format is
//! described in the repository's `docs/formats.md` §1; this is the layout as implemented here.
//!
//! # Layout
//!
//! A file is a sequence of pages of `pageSize` bytes; page *n* starts at `n * pageSize`. Every
//! page begins with a 16-byte header: `id` u64 (must equal *n*), `flags` u16 (exactly one of
//! branch 0x01, leaf 0x02, meta 0x04, freelist 0x10), `count` u16 and `overflow` u32, the number
//! of further physical pages the logical page spans (they carry no header).
//!
//! * **Meta pages** 0 and 1 hold, at offset 16: magic `0xED0CDAED`, version 2, page size, flags,
//!   the root bucket's root pgid and sequence, the freelist pgid (`u64::MAX` = not persisted,
//!   which is what etcd writes), the high-water mark `pgid`, the `txid`, and an FNV-1a 64
//!   checksum over bytes 16..72. The page size is taken from meta 0, or found by probing for
//!   meta 1 at 1 KiB..16 MiB (as bbolt ≥ 1.3.7 does). The active meta is the valid one with the
//!   larger txid; [`Db::open`] fails only if both are invalid.
//! * **Branch pages** hold `count` 16-byte elements `(pos u32, ksize u32, child pgid u64)`;
//!   **leaf pages** hold `(flags u32, pos u32, ksize u32, vsize u32)`. `pos` is relative to the
//!   element itself; a leaf's value follows its key. Keys are strictly increasing
//!   (`bytes.Compare` order); a branch key is ≤ every key of its child's subtree and > every key of
//!   the previous child's.
//! * A leaf element with flag 0x01 is a **bucket**: its value is `root` u64 + `sequence` u64. A
//!   root of 0 means **inline**: a fake leaf page (header with id 0, then elements and data)
//!   follows the 16-byte bucket header inside the value.
//! * The **freelist page** lists free pgids (`count`, or 0xFFFF followed by a u64 count).
//!   Without one, the free pages are the pages below the high-water mark that no tree reaches.
//!
//! # Assumptions
//!
//! * Little-endian only. bbolt writes native-endian structs; a file from a big-endian host has a
//!   byte-swapped magic (`0xEDDA0CED`) and is refused with [`Error::Unsupported`].
//! * Page sizes are powers of two from 512 B to 1 MiB.
//! * Only bytes below `meta.pgid * pageSize` are read: a snapshot's trailing sha256 and the
//!   slack bbolt leaves at the end of a live file are ignored. A file shorter than that is
//!   refused ([`Error::Truncated`]) instead of faulting like bbolt's mmap would.
//! * Nothing is trusted: every offset is bounds-checked, and corruption surfaces as
//!   [`Error::Corrupted`] (page, offset, reason) or as a [`Finding`] of [`Db::check`], never as a
//!   panic. Iteration checks key order as it goes, which also stops it on page cycles.
//!
//! # Writing
//!
//! [`BulkWriter`] writes a fresh, compact file from buckets whose keys arrive sorted: leaves are
//! streamed as they fill, branch levels are built bottom-up when a bucket ends, buckets are made
//! inline exactly when bbolt would (`16 + Σ(16+k+v) ≤ pageSize/4`, no sub-buckets), the root
//! bucket is page-based, and both metas (txids 2 and 1) are written last. Real bbolt (etcd's
//! `snapshot status`, which runs `tx.Check()`) accepts the result.

mod check;
mod db;
mod error;
mod mmap;
mod page;
mod writer;

pub use check::{CheckReport, Finding, FindingKind, MAX_FINDINGS};
pub use db::{Bucket, Db, Entry, Iter};
pub use error::Error;
pub use page::{
    BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, BranchElementHeader, ELEMENT_SIZE, FLAG_BRANCH, FLAG_FREELIST, FLAG_LEAF,
    FLAG_META, LeafElementHeader, MAGIC, MAX_KEY_SIZE, MAX_PAGE_SIZE, MAX_VALUE_SIZE, META_END, META_MAGIC_OFFSET,
    META_PAGE_SIZE_END, META_PAGE_SIZE_OFFSET, META_VERSION_OFFSET, MIN_PAGE_SIZE, Meta, PAGE_HEADER_SIZE,
    PGID_NO_FREELIST, PageHeader, VERSION, element_offset, fnv1a64,
};
pub use writer::{BulkWriter, FreelistMode, WriteStats, WriterOptions};

/// Entry points shared by the fuzz target and the stable robustness tests.
#[doc(hidden)]
pub mod fuzzing {
    use crate::{Bucket, Db, Entry};

    /// Opens `data`, checks it and iterates every bucket recursively, looking up each key
    /// again. Returns the number of entries seen. Must never panic or hang, whatever `data` is.
    pub fn open_and_check(data: &[u8]) -> usize {
        let Ok(db) = Db::from_bytes(data.to_vec()) else {
            return 0;
        };
        let report = db.check();
        let _ = report.is_ok();
        let _ = report.to_string();
        let mut seen = 0;
        walk(&db.root(), 0, &mut seen);
        seen
    }

    fn walk(bucket: &Bucket<'_>, depth: usize, seen: &mut usize) {
        if depth > 8 {
            return;
        }
        let mut entries = Vec::new();
        for entry in bucket.iter() {
            match entry {
                Ok(e) => entries.push(e),
                // A damaged tree: lookups may legitimately disagree with the partial iteration.
                Err(_) => return,
            }
        }
        *seen += entries.len();
        for entry in entries {
            match entry {
                Entry::Value { key, value } => {
                    // Iteration proved the tree ordered, so a lookup must find the same value.
                    let found = bucket.get(key);
                    assert!(
                        matches!(found, Ok(Some(v)) if v == value),
                        "get disagrees with iteration for key {key:?}: {found:?}"
                    );
                }
                Entry::Bucket { name } => {
                    if let Ok(Some(child)) = bucket.bucket(name) {
                        walk(&child, depth + 1, seen);
                    }
                }
            }
        }
    }
}
