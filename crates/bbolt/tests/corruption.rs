//! Damaged files: every kind of damage must end in an `Err` from `open` or in findings from
//! `check()`, never in a panic, a hang or silently wrong data where bbolt's structure can tell.

mod common;

use bbolt::fuzzing::open_and_check;
use bbolt::{Db, Error, FindingKind, WriterOptions};

/// The 3.4.23 Full snapshot without its sha256 trailer.
fn real_db() -> Vec<u8> {
    let mut b = common::gunzip(&common::full_snapshots()[0]);
    b.truncate(b.len() - 32);
    b
}

const PS: usize = 4096;

fn findings(bytes: Vec<u8>) -> Result<Vec<FindingKind>, Error> {
    let db = Db::from_bytes(bytes)?;
    Ok(db.check().findings.iter().map(|f| f.kind).collect())
}

#[test]
fn corrupted_page_headers_are_detected_on_reachable_pages_and_ignored_on_free_ones() {
    let clean = real_db();
    let report = Db::from_bytes(clean.clone()).unwrap().check();
    assert!(report.is_ok());
    let pages = clean.len() / PS;
    let mut free = 0;
    for p in 0..pages {
        // A page is in use iff breaking its type byte is noticed.
        let mut b = clean.clone();
        b[p * PS + 8] ^= 0xFF;
        let in_use = !matches!(findings(b), Ok(f) if f.is_empty());
        if !in_use {
            free += 1;
        }
        for off in 0..16 {
            for mask in [0x01u8, 0x80, 0xFF] {
                let mut b = clean.clone();
                b[p * PS + off] ^= mask;
                let outcome = findings(b.clone());
                assert!(open_and_check(&b) <= 200, "no more entries than there are");
                let detected = !matches!(&outcome, Ok(f) if f.is_empty());
                // The id (0..8) and flags (8..10) of a page in use are always checked.
                if in_use && off < 10 {
                    assert!(detected, "page {p} header byte {off} ^ {mask:#x} went unnoticed");
                }
                if !in_use {
                    assert!(!detected, "free page {p} byte {off}: {outcome:?}");
                }
            }
        }
    }
    assert_eq!(free, report.free_pages, "the probe found exactly the free pages");
}

#[test]
fn corrupted_bytes_anywhere_in_every_page_never_panic() {
    let clean = real_db();
    let pages = clean.len() / PS;
    let mut detected = 0;
    let mut runs = 0;
    for p in 0..pages {
        // Element arrays, keys and values: every 61st byte of the page, three masks.
        for off in (16..PS).step_by(61) {
            for mask in [0x01u8, 0x40, 0xFF] {
                let mut b = clean.clone();
                b[p * PS + off] ^= mask;
                open_and_check(&b);
                runs += 1;
                if !matches!(findings(b), Ok(f) if f.is_empty()) {
                    detected += 1;
                }
            }
        }
    }
    // Most flips hit values or free pages, which no structure check can see; some must not.
    assert!(detected > 0 && detected < runs, "{detected} of {runs}");
}

#[test]
fn corrupted_meta_zero_falls_back_to_meta_one() {
    let clean = real_db();
    let want = common::dump(&Db::from_bytes(clean.clone()).unwrap());
    for slot in [0usize, 1] {
        let mut b = clean.clone();
        b[slot * PS..(slot + 1) * PS].fill(0);
        let db = Db::from_bytes(b).expect("one valid meta is enough");
        assert_eq!(db.meta().slot as usize, 1 - slot);
        assert_eq!(db.page_size() as usize, PS, "page size discovered from meta 1 when meta 0 is gone");
        let report = db.check();
        assert!(report.findings.iter().any(|f| f.kind == FindingKind::MetaInvalid && f.page == Some(slot as u64)));
        assert_eq!(common::dump(&db), want);
    }
    // A single flipped checksum byte is enough to drop a meta.
    let mut b = clean.clone();
    b[PS + 72] ^= 1;
    assert!(matches!(Db::from_bytes(b).unwrap().metas()[1], Err(ref e) if e.contains("checksum")));
}

#[test]
fn corrupted_both_metas_refuse_to_open() {
    let mut b = real_db();
    b[..2 * PS].fill(0);
    assert!(matches!(Db::from_bytes(b), Err(Error::Corrupted { .. })));
    let mut b = real_db();
    b[20] ^= 1; // meta 0 version
    b[PS + 50] ^= 1; // meta 1 root, caught by the checksum
    assert!(matches!(Db::from_bytes(b), Err(Error::Corrupted { .. })));
}

#[test]
fn corrupted_big_endian_magic_is_refused_as_unsupported() {
    let mut b = real_db();
    b[16..20].copy_from_slice(&bbolt::MAGIC.to_be_bytes());
    assert!(matches!(Db::from_bytes(b), Err(Error::Unsupported { .. })));
}

#[test]
fn truncated_files_are_refused_at_open() {
    let clean = real_db();
    for len in [0, 1, 79, 80, 4095, PS, 2 * PS, 2 * PS + 1, clean.len() / 2, clean.len() - PS, clean.len() - 1] {
        let r = Db::from_bytes(clean[..len].to_vec());
        assert!(r.is_err(), "{len} bytes opened");
        open_and_check(&clean[..len]);
    }
    assert!(matches!(Db::from_bytes(clean[..clean.len() - 1].to_vec()), Err(Error::Truncated { .. })));
    // On disk too (the mmap path and the small-file path).
    let dir = tempfile::tempdir().unwrap();
    for len in [0, 100, clean.len() - 1] {
        let f = dir.path().join(format!("t{len}"));
        std::fs::write(&f, &clean[..len]).unwrap();
        assert!(Db::open(&f).is_err());
    }
    assert!(matches!(Db::open(&dir.path().join("missing")), Err(Error::Io { path: Some(_), .. })));
}

#[test]
fn corrupted_page_cycles_end_iteration_and_lookups_with_an_error() {
    // A db whose key bucket has branches, then one branch made to point at itself.
    let mut w =
        bbolt::BulkWriter::new(std::io::Cursor::new(Vec::new()), WriterOptions::default().with_page_size(512)).unwrap();
    w.begin_bucket(b"b").unwrap();
    for i in 0..2000u32 {
        w.put(&i.to_be_bytes(), b"v").unwrap();
    }
    w.end_bucket().unwrap();
    let (out, _) = w.finish().unwrap();
    let mut bytes = out.into_inner();
    let db = Db::from_bytes(bytes.clone()).unwrap();
    let root = db.bucket(b"b").unwrap().unwrap().root_page().unwrap() as usize;
    drop(db);
    let ps = 512;
    assert_eq!(u16::from_le_bytes([bytes[root * ps + 8], bytes[root * ps + 9]]), 1, "root is a branch");
    // Element 1's child := the root itself; element 0's too in a second variant.
    for elem in [0usize, 1] {
        let mut b = bytes.clone();
        let at = root * ps + 16 + 16 * elem + 8;
        b[at..at + 8].copy_from_slice(&(root as u64).to_le_bytes());
        let db = Db::from_bytes(b.clone()).unwrap();
        let bucket = db.bucket(b"b").unwrap().unwrap();
        let results: Vec<_> = bucket.iter().collect();
        assert!(results.last().is_some_and(Result::is_err), "iteration ends with an error");
        assert!(results.len() <= 2001);
        for i in [0u32, 1000, 1999] {
            let _ = bucket.get(&i.to_be_bytes());
        }
        let report = db.check();
        assert!(report.findings.iter().any(|f| f.kind == FindingKind::MultipleReferences), "{report}");
        open_and_check(&b);
    }
    // And a leaf bucket value whose root points at the root bucket's page.
    let meta_root = Db::from_bytes(bytes.clone()).unwrap().meta().root as usize;
    let leaf = meta_root * ps;
    let pos = u32::from_le_bytes(bytes[leaf + 20..leaf + 24].try_into().unwrap()) as usize;
    let ksize = u32::from_le_bytes(bytes[leaf + 24..leaf + 28].try_into().unwrap()) as usize;
    let v = leaf + 16 + pos + ksize;
    bytes[v..v + 8].copy_from_slice(&(meta_root as u64).to_le_bytes());
    let db = Db::from_bytes(bytes.clone()).unwrap();
    assert!(!db.check().is_ok());
    let b = db.bucket(b"b").unwrap().unwrap();
    assert_eq!(b.iter().filter_map(Result::ok).count(), 1, "the bucket now lists itself");
    open_and_check(&bytes);
}
