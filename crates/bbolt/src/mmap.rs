//! The one place that maps a file into memory.
//!
//! Mapping is `unsafe` because another process could truncate or rewrite the file while it is
//! mapped, which would change bytes behind a `&[u8]` (or raise SIGBUS). This crate only maps
//! files it opened read-only, and the product never writes a file while a [`crate::Db`] over it
//! is alive: snapshots are immutable once downloaded, and restore writes to a different path.

#![allow(unsafe_code)]

use std::fs::File;

/// Maps `file` read-only.
pub(crate) fn map(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the file was opened read-only by `Db::open`, and the crate's contract (documented
    // on `Db::open`) is that nobody modifies or truncates it while the mapping lives. Every read
    // of the mapped bytes is bounds-checked against the length captured at open time.
    unsafe { memmap2::Mmap::map(file) }
}

/// Drops the mapping's pages from this process's resident set; they stay in the page cache, and
/// the next access faults them back in from the file, unchanged.
pub(crate) fn release(map: &memmap2::Mmap) -> std::io::Result<()> {
    // SAFETY: MADV_DONTNEED on a read-only, file-backed shared mapping only discards this
    // process's page table entries: later reads fault the same bytes back from the file (which
    // nobody modifies while the mapping lives, see `map`), so outstanding `&[u8]` stay valid and
    // see the same contents.
    unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) }
}
