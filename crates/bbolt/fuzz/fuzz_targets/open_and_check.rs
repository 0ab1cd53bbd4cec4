//! Any byte string: `Db::from_bytes`, `check()` and a full recursive iteration (with a lookup
//! of every key) must return, never panic or hang. Seed the corpus with real snapshots, e.g.
//! `zcat ../../../../testdata/*/store/v2/Full-*.gz` split into files under `corpus/open_and_check/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bbolt::fuzzing::open_and_check(data);
});
