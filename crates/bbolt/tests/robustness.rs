//! The fuzz target's function (`fuzz/fuzz_targets/open_and_check.rs`) on thousands of randomly
//! mutated real and bulk-written files, so that robustness is exercised on stable Rust in CI.

mod common;

use bbolt::fuzzing::open_and_check;
use bbolt::{BulkWriter, Db, WriterOptions};

/// xorshift64: deterministic.
use testsupport::XorShift as Rng;

/// One random mutation of the kinds that hit parsers hardest.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>, ps: usize) {
    let pages = (b.len() / ps).max(1);
    let page = rng.below(pages) * ps;
    match rng.below(6) {
        // A few random bit flips inside one page.
        0 => {
            for _ in 0..1 + rng.below(8) {
                let at = page + rng.below(ps);
                if let Some(x) = b.get_mut(at) {
                    *x ^= 1 << rng.below(8);
                }
            }
        }
        // An interesting value in a header or element field.
        1 | 2 => {
            let vals: [u32; 8] = [0, 1, 2, 0xFFFF, 0xFFFF_FFFF, ps as u32, 0x8000_0000, (b.len() / ps) as u32];
            let v = vals[rng.below(vals.len())];
            let at = page + 8 + 4 * rng.below(20);
            if at + 4 <= b.len() {
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        // One page copied over another (stale pages, wrong self ids, cycles).
        3 => {
            let src = rng.below(pages) * ps;
            if src + ps <= b.len() && page + ps <= b.len() {
                let copy = b[src..src + ps].to_vec();
                b[page..page + ps].copy_from_slice(&copy);
            }
        }
        // A child or bucket root redirected to a random page.
        4 => {
            let at = page + 16 + 16 * rng.below(8) + 8;
            let target = rng.below(pages + 2) as u64;
            if at + 8 <= b.len() {
                b[at..at + 8].copy_from_slice(&target.to_le_bytes());
            }
        }
        // Truncation.
        _ => {
            let len = rng.below(b.len() + 1);
            b.truncate(len);
        }
    }
}

fn small_page_db() -> Vec<u8> {
    let mut w =
        BulkWriter::new(std::io::Cursor::new(Vec::new()), WriterOptions::default().with_page_size(512).with_fill(0.5))
            .unwrap();
    for bucket in [&b"a"[..], b"key", b"meta"] {
        w.begin_bucket(bucket).unwrap();
        for i in 0..300u32 {
            let v = vec![i as u8; if i % 50 == 0 { 1500 } else { 20 }];
            w.put(format!("k{i:05}").as_bytes(), &v).unwrap();
        }
        if bucket == b"a" {
            w.begin_bucket(b"zz-nested").unwrap();
            w.put(b"x", b"y").unwrap();
            w.end_bucket().unwrap();
        }
        w.end_bucket().unwrap();
    }
    w.finish().unwrap().0.into_inner()
}

#[test]
fn randomly_mutated_real_and_written_files_never_panic() {
    let mut real = common::gunzip(&common::full_snapshots()[1]);
    real.truncate(real.len() - 32);
    let written = small_page_db();
    assert!(Db::from_bytes(written.clone()).unwrap().check().is_ok());
    let mut rng = Rng::new(0x5EED_1234_ABCD_0001);
    let mut opened = 0;
    for round in 0..3000 {
        let (base, ps) = if round % 2 == 0 { (&real, 4096) } else { (&written, 512) };
        let mut b = base.clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut b, ps);
        }
        if Db::from_bytes(b.clone()).is_ok() {
            opened += 1;
        }
        open_and_check(&b);
    }
    // Most mutations leave the metas intact, so the checker and iterators did the work.
    assert!(opened > 1500, "only {opened} of 3000 mutated files opened");
}
