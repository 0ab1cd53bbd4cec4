//! Any byte string read as one WAL segment (`0000000000000000-0000000000000000.wal`) must give
//! `Ok` or a `WalError`, never a panic or a hang. A successful read must be self-consistent: its
//! one segment summary ends inside the input. Seeds: the first segment of a live etcd's
//! `member/wal/` cut to its used length, and the segment `etcdbrctl restore` writes.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let segment = (PathBuf::from("0000000000000000-0000000000000000.wal"), data);
    if let Ok(contents) = etcd_format::wal::read_wal_segments([segment]) {
        assert_eq!(contents.segments.len(), 1, "one segment in, one summary out");
        let end = contents.segments[0].end_offset;
        assert!(end <= data.len() as u64, "segment end {end} beyond the {} input bytes", data.len());
    }
});
