//! No store flag is ever ignored: `--store-container` or `--store-prefix` without
//! `--storage-provider` is a usage error (exit 2) naming the missing flag, for every command,
//! before anything runs; so is a command that needs a store and names none.

mod common;

use common::run as etcdbrctl;
use std::process::Output;

fn assert_usage_error(out: &Output, must_name: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    for name in must_name {
        assert!(stderr.contains(name), "the message must name {name}: {stderr}");
    }
    assert!(out.stdout.is_empty(), "nothing ran: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn initialize_and_server_refuse_a_container_or_prefix_without_a_provider() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let container = tmp.path().join("store");
    let container = container.to_str().unwrap();
    for command in ["initialize", "server"] {
        let out = etcdbrctl(&[command, "--store-container", container, "--data-dir", data.to_str().unwrap()]);
        assert_usage_error(&out, &["--storage-provider", "--store-container"]);
        let out = etcdbrctl(&[command, "--store-prefix", "etcd-main", "--data-dir", data.to_str().unwrap()]);
        assert_usage_error(&out, &["--storage-provider", "--store-prefix"]);
        // An empty provider given explicitly is the same as none.
        let out = etcdbrctl(&[command, "--storage-provider", "", "--store-container", container]);
        assert_usage_error(&out, &["--storage-provider", "--store-container"]);
    }
    assert!(!data.exists(), "initialize must not have touched the data dir");
    assert!(!tmp.path().join("store").exists(), "no store was created");

    // STORAGE_CONTAINER (druid's way of passing the container) counts as the flag.
    let out = common::etcdbrctl()
        .args(["initialize", "--data-dir", data.to_str().unwrap()])
        .env("STORAGE_CONTAINER", container)
        .output()
        .unwrap();
    assert_usage_error(&out, &["--storage-provider", "STORAGE_CONTAINER"]);
}

#[test]
fn commands_that_need_a_store_refuse_to_run_without_a_provider() {
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("store");
    let container = container.to_str().unwrap();
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    for args in [
        vec!["restore", "--store-container", container, "--data-dir", data],
        vec!["restore", "--data-dir", data],
        vec!["snapshot", "--store-prefix", "p", "--endpoints", "http://127.0.0.1:1"],
        vec!["snapshot", "--endpoints", "http://127.0.0.1:1"],
        vec!["compact", "--store-container", container],
        vec!["copy", "--store-container", container, "--source-store-container", container],
    ] {
        let out = etcdbrctl(&args);
        assert_usage_error(&out, &["--storage-provider"]);
    }
    assert!(!tmp.path().join("data").exists() && !tmp.path().join("store").exists());
}

#[test]
fn initialize_without_any_store_flag_still_means_no_store() {
    // The reference's reading, kept: no provider and no other store flag is "no store".
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = etcdbrctl(&["initialize", "--data-dir", data.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("etcd will start empty"), "{stdout}");
}
