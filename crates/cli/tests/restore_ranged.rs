//! A full snapshot larger than one ranged read (8 MiB gzipped) is downloaded as several ranged
//! reads in flight and reassembled in order: the restore must still be bit-exact.

mod common;

use std::io::Write;

use testsupport::{Etcd, EtcdVersion, free_port};

/// Incompressible-ish printable bytes, so the gzipped snapshot stays large.
fn noise(seed: u64, len: usize) -> String {
    let printable: Vec<u8> = (b'!'..b'!' + 90).collect();
    testsupport::XorShift::new(seed | 1).text(len, &printable)
}

#[test]
fn a_large_gzipped_full_snapshot_restores_bit_exact_through_ranged_reads() {
    let source = Etcd::start(EtcdVersion::V3_5);
    for i in 0..16u64 {
        // Too long for an argument (Linux caps one at 128 KiB): etcdctl reads the value from stdin.
        source.etcdctl_stdin(&["put", &format!("/big/{i}")], &noise(i + 1, 1_000_000));
    }
    let rev = source.revision();
    let (hash, _, _) = source.hashkv(rev);
    let tmp = tempfile::tempdir().unwrap();
    let snapshot = tmp.path().join("snap.db");
    source.etcdctl(&["snapshot", "save", snapshot.to_str().unwrap()]);

    let v2 = tmp.path().join("store/v2");
    std::fs::create_dir_all(&v2).unwrap();
    let object = v2.join(format!("Full-00000000-{rev:08}-1795600000.gz"));
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&object).unwrap(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(&snapshot).unwrap()).unwrap();
    gz.finish().unwrap();
    let size = std::fs::metadata(&object).unwrap().len();
    assert!(size > 2 * (8 << 20), "the object must span several ranged reads, it is {size} bytes");

    let data = tmp.path().join("restored");
    let peer = free_port();
    let out = common::restore_one(&tmp.path().join("store"), &data, peer).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored = Etcd::start_on(EtcdVersion::V3_5, &data, "n1", peer, free_port());
    assert_eq!(restored.hashkv(rev).0, hash);
}
