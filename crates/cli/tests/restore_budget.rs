//! `--restore-memory-budget`: a restore in a small budget gives the same data dir as one in a
//! large budget, whether the deltas fit in it (read ahead, decoded ahead within the budget) or
//! one is larger than the whole budget (decoded as it streams, alone). Memory itself is
//! measured by the benchmarks (README), not asserted here.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use brcore::delta::{Event, EventKind, encode_events};
use testsupport::go_testdata;

const STORE: &str = "etcdbrctl-0.43.0-etcd-3.5.30";

/// A writable copy of the Go-made store, plus `deltas` more deltas of `events` new keys each
/// (values of `value_len` bytes that gzip cannot shrink) after its last revision.
fn store_with_more_deltas(deltas: usize, events: usize, value_len: usize) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("store");
    let v2 = container.join("v2");
    fs::create_dir_all(&v2).unwrap();
    let mut last = 0u64;
    for entry in fs::read_dir(go_testdata().join(STORE).join("store/v2")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("Incr-") {
            last = last.max(name.split('-').nth(2).unwrap().parse().unwrap());
        }
        fs::copy(entry.path(), v2.join(&name)).unwrap();
    }
    let mut x = testsupport::XorShift::new(0x9e37_79b9_7f4a_7c15);
    let mut rev = last as i64;
    for d in 0..deltas {
        let first = rev + 1;
        let batch: Vec<Event> = (0..events)
            .map(|i| {
                rev += 1;
                let value = (0..value_len).map(|_| x.next() as u8).collect();
                Event {
                    kind: EventKind::Put,
                    key: format!("/budget/{d:03}/{i:06}").into_bytes(),
                    value,
                    create_revision: rev,
                    mod_revision: rev,
                    version: 1,
                    lease: 0,
                    time: "2026-11-25T12:00:00.5Z".into(),
                }
            })
            .collect();
        let name = format!("Incr-{first:08}-{rev:08}-{}.gz", 1_795_611_500 + d);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&encode_events(&batch)).unwrap();
        fs::write(v2.join(name), gz.finish().unwrap()).unwrap();
    }
    (tmp, container)
}

fn restore(container: &Path, data_dir: &Path, budget: u64) {
    let out = common::restore_local(container, data_dir)
        .args(["--restore-memory-budget", &budget.to_string(), "--max-fetchers", "6"])
        .output()
        .expect("run etcdbrctl");
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn same_result_in_both_budgets(container: &Path, small: u64) {
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("small"), work.path().join("large"));
    restore(container, &a, small);
    restore(container, &b, 1 << 30);
    let (ta, tb) = (common::files(&a), common::files(&b));
    assert!(ta.contains_key(Path::new("member/snap/db")), "{:?}", ta.keys());
    assert!(ta == tb, "the data dirs differ");
    // The new keys are in: the db holds every value written (they do not compress).
    let db = &ta[Path::new("member/snap/db")];
    assert!(db.len() > 4 << 20, "db is only {} bytes", db.len());
}

#[test]
fn many_deltas_in_a_small_budget_restore_exactly() {
    // 16 deltas of ~0.3 MiB, 4.8 MB decoded: more than the half of the budget that events
    // decoded ahead may take, so decoders wait for it.
    let (_tmp, container) = store_with_more_deltas(16, 300, 1000);
    same_result_in_both_budgets(&container, 8 << 20);
}

#[test]
fn a_delta_larger_than_the_budget_restores_streaming() {
    // A delta of ~5 MiB compressed, the budget 8 MiB (half of it for compressed objects).
    let (_tmp, container) = store_with_more_deltas(1, 2600, 2000);
    same_result_in_both_budgets(&container, 8 << 20);
}
