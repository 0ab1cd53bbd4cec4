//! A stable, fixed-seed mutation test of the WAL and snap readers on real etcd 3.5 files: the
//! first 4 KiB of a live member's WAL segment (cut at a frame boundary, zero tail after it) and
//! the `.snap` file `etcdutl snapshot restore` writes. Thousands of mutated copies must never
//! make a reader panic, and every mutation of bytes the CRC protects must be reported.

mod common;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_format::snap::decode_snap_file;
use etcd_format::wal::{FIRST_SEGMENT, WalContents, WalError, read_wal_segments};
use testsupport::{Etcd, EtcdVersion};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn nonzero_byte(&mut self) -> u8 {
        (self.next() % 255) as u8 + 1
    }
}

/// What a byte of a WAL segment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Class {
    /// The 8-byte frame length field.
    LenField,
    /// The record's type field (tag and value).
    Type,
    /// The record's CRC field (tag and value).
    Crc,
    /// The data field: tag, length and the data the CRC covers.
    Data,
    /// Padding after a record.
    Pad,
    /// The zero tail after the last record.
    Tail,
}

fn varint_len(b: &[u8]) -> usize {
    b.iter().position(|x| x & 0x80 == 0).map_or(b.len(), |p| p + 1)
}

/// Classifies every byte of `seg` by parsing the frames independently of the crate's reader.
fn classify(seg: &[u8]) -> Vec<Class> {
    let mut c = vec![Class::Tail; seg.len()];
    for (off, len, pad) in common::frames(seg) {
        c[off..off + 8].fill(Class::LenField);
        let rec = off + 8;
        // Record: 08 <type> 10 <crc> [1a <len> <data>]
        let t = 1 + varint_len(&seg[rec + 1..]);
        c[rec..rec + t].fill(Class::Type);
        let k = 1 + varint_len(&seg[rec + t + 1..]);
        c[rec + t..rec + t + k].fill(Class::Crc);
        c[rec + t + k..rec + len].fill(Class::Data);
        c[rec + len..rec + len + pad].fill(Class::Pad);
    }
    c
}

fn read(seg: &[u8]) -> Result<WalContents, WalError> {
    read_wal_segments([(PathBuf::from(FIRST_SEGMENT), seg)])
}

/// A live etcd 3.5's WAL prefix and the `.snap` etcdutl writes for a restore of its snapshot.
fn real_files(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let mut etcd = Etcd::start(EtcdVersion::V3_5);
    for i in 0..30 {
        etcd.etcdctl(&["put", &format!("k{i}"), &format!("value-{i}")]);
    }
    let snap_db = dir.join("s.db");
    etcd.etcdctl(&["snapshot", "save", snap_db.to_str().unwrap()]);
    etcd.stop();
    let seg = fs::read(etcd.data_dir().join("member/wal").join(FIRST_SEGMENT)).unwrap();

    // Cut at the last frame boundary within 4 KiB, then zeros: a valid short segment.
    let classes = classify(&seg[..8192]);
    let mut cut = 0;
    let mut off = 0;
    while off < 4096 {
        if classes[off] == Class::Tail {
            break;
        }
        let lf = u64::from_le_bytes(seg[off..off + 8].try_into().unwrap());
        let next =
            off + 8 + (lf & 0x00ff_ffff_ffff_ffff) as usize + if lf >> 63 == 1 { ((lf >> 56) & 7) as usize } else { 0 };
        if next > 4096 {
            break;
        }
        cut = next;
        off = next;
    }
    let mut prefix = seg[..cut].to_vec();
    prefix.resize(4096, 0);

    let data = dir.join("restored");
    let out = Command::new(EtcdVersion::V3_5.etcdutl_bin())
        .args(["snapshot", "restore", snap_db.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
        .args(["--name", "m1", "--initial-cluster", "m1=http://127.0.0.1:2380"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snap = fs::read(data.join("member/snap/0000000000000001-0000000000000001.snap")).unwrap();
    (prefix, snap)
}

#[test]
fn mutated_real_wal_and_snap_never_panic_and_crc_bytes_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let (seg, snap) = real_files(tmp.path());
    let base = read(&seg).expect("the unmutated prefix reads");
    assert!(base.entries >= 5, "{base:?}");
    let classes = classify(&seg);
    let records_end = base.segments[0].end_offset as usize;
    assert_eq!(classes[records_end], Class::Tail);

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // (class, detected) counts for single-byte mutations.
    let mut stats = std::collections::BTreeMap::<Class, (u32, u32)>::new();
    for round in 0..4000 {
        let mut m = seg.clone();
        let hits = if round % 4 == 3 { 1 + rng.below(4) } else { 1 };
        let mut touched = Vec::new();
        for _ in 0..hits {
            // Mostly inside the records, sometimes in the tail just after them.
            let at = rng.below(records_end + 16);
            m[at] ^= rng.nonzero_byte();
            touched.push(at);
        }
        let result = catch_unwind(AssertUnwindSafe(|| read(&m)))
            .unwrap_or_else(|_| panic!("reader panicked on round {round}, mutated offsets {touched:?}"));
        if hits == 1 {
            let class = classes[touched[0]];
            let e = stats.entry(class).or_default();
            e.0 += 1;
            e.1 += u32::from(result.is_err());
            if matches!(class, Class::Data | Class::Crc) {
                assert!(result.is_err(), "round {round}: {class:?} byte at {} changed undetected", touched[0]);
            }
        }
    }
    for (class, (n, detected)) in &stats {
        println!("WAL {class:?}: {detected}/{n} single-byte mutations detected");
    }
    let (n, d) = stats[&Class::LenField];
    assert!(d * 10 >= n * 9, "length-field mutations: only {d}/{n} detected");

    assert!(decode_snap_file(&snap).is_ok());
    let mut undetected = 0;
    for round in 0..3000 {
        let mut m = snap.clone();
        let hits = if round % 3 == 2 { 1 + rng.below(4) } else { 1 };
        for _ in 0..hits {
            let at = rng.below(m.len());
            m[at] ^= rng.nonzero_byte();
        }
        if round % 50 == 0 {
            m.truncate(rng.below(m.len()));
        }
        let result = catch_unwind(AssertUnwindSafe(|| decode_snap_file(&m)))
            .unwrap_or_else(|_| panic!("snap decoder panicked on round {round}"));
        undetected += u32::from(result.is_ok());
    }
    println!("snap: {undetected}/3000 mutated copies undetected");
    assert_eq!(undetected, 0, "every mutation of a snap file changes CRC-covered or framing bytes");
}
