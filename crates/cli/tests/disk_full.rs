//! A full local disk during `etcdbrctl restore`: the error says the disk is full, names the
//! file it could not write and its filesystem's size and free space, exits with the local-I/O
//! code (9), never says "please report this", and leaves nothing behind (no `member/`, no
//! `.part`, an empty temp dir). Each case runs on a real 20 MiB tmpfs. (A data dir too small for
//! the WAL is `restore_faults.rs`'s `full_disk_fails_cleanly`.)

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use testsupport::{Etcd, EtcdVersion, Tmpfs};

const EXIT_LOCAL_IO: i32 = 9;

/// A Local store whose one full snapshot, gzipped, holds a db of about 30 MiB of barely
/// compressible values (written by real etcd), so neither the decompressed temp copy nor the
/// restored db fits in 20 MiB. Returns (temp dir holding it, container).
fn big_store() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V3_5);
    let mut x = testsupport::XorShift::new(0x9E37_79B9_7F4A_7C15);
    for i in 0..30 {
        // 1 MiB of characters from a 64-letter alphabet: 6 random bits a byte.
        let value: String = (0..1 << 20)
            .map(|_| {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-"[(x.next() >> 58) as usize] as char
            })
            .collect();
        etcd.etcdctl_stdin(&["put", &format!("/big/{i:02}")], &value);
    }
    let rev = etcd.revision();
    let raw = tmp.path().join("snapshot.db");
    etcd.etcdctl(&["snapshot", "save", raw.to_str().unwrap()]);
    let container = tmp.path().join("store");
    fs::create_dir_all(container.join("v2")).unwrap();
    let full = container.join("v2").join(format!("Full-00000000-{rev:08}-1795607409.gz"));
    let mut gz = flate2::write::GzEncoder::new(fs::File::create(&full).unwrap(), flate2::Compression::fast());
    gz.write_all(&fs::read(&raw).unwrap()).unwrap();
    gz.finish().unwrap();
    fs::remove_file(&raw).unwrap();
    (tmp, container)
}

fn restore(container: &Path, data_dir: &Path, temp_dir: Option<&Path>) -> Output {
    let mut cmd = common::restore_local(container, data_dir);
    if let Some(t) = temp_dir {
        cmd.arg("--restoration-temp-snapshots-dir").arg(t);
    }
    cmd.output().expect("run etcdbrctl")
}

/// Checks the failure: exit 9, "no space left" naming a file under `fs_root` and the 20 MiB
/// filesystem's free space, no panic or "please report", nothing left behind.
fn expect_disk_full(out: &Output, fs_root: &Path, data_dir: &Path) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(EXIT_LOCAL_IO), "exit code; stderr: {stderr}");
    let expected = format!("no space left on the filesystem of {}/", fs_root.display());
    assert!(stderr.contains(&expected), "stderr should say {expected:?}: {stderr}");
    assert!(stderr.contains("free of 20.0 MiB"), "stderr should give the filesystem's size and free space: {stderr}");
    assert!(!stderr.contains("please report"), "{stderr}");
    assert!(!stderr.contains("internal error"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!data_dir.join("member").exists(), "a member dir was left where etcd would boot from it");
    let part = data_dir.with_file_name(format!("{}.part", data_dir.file_name().unwrap().to_string_lossy()));
    assert!(!part.exists(), "the unfinished restore was not cleaned up: {}", part.display());
    stderr
}

#[test]
fn a_full_temp_dir_and_a_full_data_dir_name_the_disk_that_is_full() {
    let (_store_dir, container) = big_store();

    // The temp dir (--restoration-temp-snapshots-dir) on 20 MiB: the decompressed copy of the
    // full snapshot does not fit.
    {
        let small = Tmpfs::mount(20);
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().join("new.etcd");
        let out = restore(&container, &data_dir, Some(small.path()));
        let stderr = expect_disk_full(&out, small.path(), &data_dir);
        assert!(stderr.contains("full-snapshot-"), "the temp copy of the full snapshot is the file named: {stderr}");
        assert_eq!(small.entries(), Vec::<PathBuf>::new(), "the temp copy was left in the temp dir");
    }

    // The data dir on 20 MiB, the temp dir elsewhere: the restored db does not fit.
    {
        let small = Tmpfs::mount(20);
        let temp = tempfile::tempdir().unwrap();
        let data_dir = small.join("new.etcd");
        let out = restore(&container, &data_dir, Some(temp.path()));
        let stderr = expect_disk_full(&out, small.path(), &data_dir);
        assert!(stderr.contains("new.etcd.part/member/snap/db"), "the db being written is the file named: {stderr}");
        assert_eq!(small.entries(), Vec::<PathBuf>::new(), "the unfinished restore was left on the data dir's disk");
    }

    // The data dir on 20 MiB with the default temp dir (inside `<data-dir>.part`): the first
    // file that does not fit is named, whichever it is.
    {
        let small = Tmpfs::mount(20);
        let data_dir = small.join("new.etcd");
        let out = restore(&container, &data_dir, None);
        expect_disk_full(&out, small.path(), &data_dir);
        assert_eq!(small.entries(), Vec::<PathBuf>::new());
    }
}
