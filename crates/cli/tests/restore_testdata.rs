//! `etcdbrctl restore` of stores written by the Go etcdbrctl, judged by real etcd: the restored
//! data dir must boot and serve exactly the source's keys, with `hashkv` equal to the source's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::run as etcdbrctl;
use serde_json::Value;
use testsupport::{Etcd, EtcdVersion, free_port, go_testdata};

const STORE_34: &str = "etcdbrctl-0.28.4-etcd-3.4.23";
const STORE_35: &str = "etcdbrctl-0.43.0-etcd-3.5.30";

/// Restores `store` (a testdata folder) into `data_dir` for member `n1` on `peer_port`.
fn restore(store: &str, data_dir: &Path, peer_port: u16, extra: &[&str]) -> Output {
    let container = go_testdata().join(store).join("store");
    common::restore_one(&container, data_dir, peer_port).args(extra).output().expect("run etcdbrctl")
}

fn expect_ok(out: &Output) {
    assert!(
        out.status.success(),
        "etcdbrctl failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json_file(path: PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).expect("json")
}

/// Boots the restored dir on `version` and checks keys and hashkv at `rev` against the files.
fn judge(version: EtcdVersion, data_dir: &Path, peer_port: u16, store: &str, which: &str, rev: i64) {
    let etcd = Etcd::start_on(version, data_dir, "n1", peer_port, free_port());
    let expected = json_file(go_testdata().join(store).join(format!("expected-{which}.json")));
    let (kvs, header_rev) = etcd.get_all(rev);
    let want = expected["kvs"].as_array().expect("kvs");
    assert_eq!(kvs.len(), want.len(), "{version:?} {store} {which}: key count");
    for (got, want) in kvs.iter().zip(want) {
        assert_eq!(got, want, "{version:?} {store} {which}: key differs");
    }
    assert_eq!(header_rev, rev, "{version:?}: the restored cluster's current revision");
    let hashkv = json_file(go_testdata().join(store).join(format!("hashkv-{which}.json")));
    let (hash, compact, _) = etcd.hashkv(rev);
    assert_eq!(hash as u64, hashkv[0]["HashKV"]["hash"].as_u64().unwrap(), "{version:?} {store} {which}: hashkv");
    assert_eq!(compact, hashkv[0]["HashKV"]["compact_revision"].as_i64().unwrap());
    // etcd accepts writes on the restored member, and they get the next revision.
    etcd.etcdctl(&["put", "/after-restore", "x"]);
    assert_eq!(etcd.revision(), rev + 1);
}

fn meta(store: &str) -> (i64, i64) {
    let m = json_file(go_testdata().join(store).join("meta.json"));
    (m["final_revision"].as_i64().unwrap(), m["mid_revision"].as_i64().unwrap())
}

#[test]
fn go_store_from_etcd_34_restores_bit_exact_on_34_and_35() {
    let (final_rev, _) = meta(STORE_34);
    for version in [EtcdVersion::V3_4, EtcdVersion::V3_5, EtcdVersion::V3_5Latest] {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("restored");
        let peer = free_port();
        expect_ok(&restore(STORE_34, &data_dir, peer, &[]));
        judge(version, &data_dir, peer, STORE_34, "final", final_rev);
    }
}

#[test]
fn go_store_from_etcd_34_restores_to_the_mid_revision() {
    let (_, mid) = meta(STORE_34);
    for version in EtcdVersion::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("restored");
        let peer = free_port();
        // --keep-revision: the state at `mid` exactly as etcd had it, revisions and all.
        expect_ok(&restore(STORE_34, &data_dir, peer, &["--to-revision", &mid.to_string(), "--keep-revision"]));
        judge(version, &data_dir, peer, STORE_34, "mid", mid);
    }
}

#[test]
fn a_point_in_time_restore_begins_a_new_history_above_the_store() {
    // By default a restore below the store's newest revision bumps past it and marks it
    // compacted: the same keys and values, at a revision above every object in the store.
    let (final_rev, mid) = meta(STORE_34);
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("restored");
    let peer = free_port();
    let out = restore(STORE_34, &data_dir, peer, &["--to-revision", &mid.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    expect_ok(&out);
    assert!(stdout.contains("begins a new history"), "{stdout}");
    let etcd = Etcd::start_on(EtcdVersion::V3_5, &data_dir, "n1", peer, free_port());
    let bumped = final_rev + brcore::rebuild::DEFAULT_BUMP_MARGIN;
    assert_eq!(etcd.revision(), bumped);
    let expected = json_file(go_testdata().join(STORE_34).join("expected-mid.json"));
    let (kvs, _) = etcd.get_all(0);
    assert_eq!(&kvs, expected["kvs"].as_array().unwrap(), "the state at the mid revision");
    // Marked compacted: a watcher (or read) at an old revision is told to re-list.
    let old = Command::new(EtcdVersion::V3_5.etcdctl_bin())
        .args(["--endpoints", &etcd.endpoint(), "get", "/", "--prefix", "--rev", &mid.to_string()])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    assert!(!old.status.success(), "a read at the old revision {mid} must fail");
    assert!(String::from_utf8_lossy(&old.stderr).contains("compacted"), "{}", String::from_utf8_lossy(&old.stderr));
    // --dry-run never bumps: it reports the state at the target.
    let out = restore(STORE_34, &tmp.path().join("dry"), peer, &["--to-revision", &mid.to_string(), "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    expect_ok(&out);
    assert!(stdout.contains(&format!("revision {mid} ")) && !stdout.contains("bumped"), "{stdout}");
}

#[test]
fn go_store_from_etcd_35_restores_bit_exact_on_35() {
    let (final_rev, mid) = meta(STORE_35);
    for version in [EtcdVersion::V3_5, EtcdVersion::V3_5Latest] {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("restored");
        let peer = free_port();
        expect_ok(&restore(STORE_35, &data_dir, peer, &[]));
        judge(version, &data_dir, peer, STORE_35, "final", final_rev);

        let mid_dir = tmp.path().join("mid");
        expect_ok(&restore(STORE_35, &mid_dir, peer, &["--to-revision", &mid.to_string(), "--keep-revision"]));
        judge(version, &mid_dir, peer, STORE_35, "mid", mid);
    }
}

#[test]
fn restored_lease_granted_after_the_full_snapshot_keeps_its_key_attached() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("restored");
    let peer = free_port();
    expect_ok(&restore(STORE_34, &data_dir, peer, &["--lease-ttl", "600"]));
    let etcd = Etcd::start_on(EtcdVersion::V3_5, &data_dir, "n1", peer, free_port());
    // /registry/leases/kube-node-lease/node-2 was put at revision 235 with a lease granted after
    // the full snapshot (revision 166): the Go tool's restore drops it, ours keeps it.
    let out = etcd.etcdctl(&["lease", "timetolive", "53a0a2128aa785f4", "--keys"]);
    assert!(out.contains("/registry/leases/kube-node-lease/node-2"), "lease lost its key: {out}");
    assert!(out.contains("TTL(600s)"), "lease TTL: {out}");
}

#[test]
fn three_member_restore_forms_a_healthy_cluster_with_identical_hashes() {
    let (final_rev, _) = meta(STORE_34);
    let container = go_testdata().join(STORE_34).join("store");
    let tmp = tempfile::tempdir().unwrap();
    let names = ["m1", "m2", "m3"];
    let peers: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let clients: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let cluster: Vec<String> = names.iter().zip(&peers).map(|(n, p)| format!("{n}=http://127.0.0.1:{p}")).collect();
    let cluster = cluster.join(",");
    let dirs: Vec<PathBuf> = names.iter().map(|n| tmp.path().join(n)).collect();
    for ((name, peer), dir) in names.iter().zip(&peers).zip(&dirs) {
        let peer_url = format!("http://127.0.0.1:{peer}");
        expect_ok(&etcdbrctl(&[
            "restore",
            "--storage-provider",
            "Local",
            "--store-container",
            container.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--name",
            name,
            "--initial-cluster",
            &cluster,
            "--initial-cluster-token",
            "restored-3",
            "--initial-advertise-peer-urls",
            &peer_url,
        ]));
    }
    let members: Vec<(&Path, &str, u16, u16)> =
        (0..3).map(|i| (dirs[i].as_path(), names[i], peers[i], clients[i])).collect();
    let etcds = Etcd::start_cluster(EtcdVersion::V3_5, &members);
    let expected =
        json_file(go_testdata().join(STORE_34).join("hashkv-final.json"))[0]["HashKV"]["hash"].as_u64().unwrap();
    for etcd in &etcds {
        let (hash, _, _) = etcd.hashkv(final_rev);
        assert_eq!(hash as u64, expected, "member {} serves different data", etcd.name());
    }
    let list = etcds[0].etcdctl(&["member", "list", "-w", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["members"].as_array().unwrap().len(), 3, "{list}");
    // A write through one member is replicated to the others.
    etcds[0].etcdctl(&["put", "/replicated", "yes"]);
    for etcd in &etcds {
        assert_eq!(etcd.revision(), final_rev + 1);
    }
}

#[test]
fn dry_run_verifies_the_chain_reports_the_hash_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("restored");
    let out = restore(STORE_34, &data_dir, free_port(), &["--dry-run"]);
    expect_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected =
        json_file(go_testdata().join(STORE_34).join("hashkv-final.json"))[0]["HashKV"]["hash"].as_u64().unwrap();
    assert!(stdout.contains(&format!("hashkv at revision 338: {expected}")), "{stdout}");
    assert!(!data_dir.exists(), "a dry run wrote a data dir");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "a dry run left files behind");
}

/// Every (revision, event time in unix seconds) of the store's deltas.
fn event_times(store: &str) -> Vec<(i64, i64)> {
    let dir = go_testdata().join(store).join("store/v2");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("Incr") {
            continue;
        }
        let file = std::fs::File::open(&path).unwrap();
        let reader = brcore::compress::decoder(brcore::name::Compression::Gzip, file);
        for e in brcore::delta::read_events(reader, &name).unwrap() {
            let nanos = e.time_nanos().expect("event time");
            out.push((e.mod_revision, (nanos / 1_000_000_000) as i64));
        }
    }
    out.sort();
    out
}

fn dry_run_line(out: &Output) -> String {
    expect_ok(out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout.lines().find(|l| l.starts_with("hashkv at revision")).unwrap_or_else(|| panic!("{stdout}")).to_string()
}

#[test]
fn to_time_restores_the_last_revision_at_or_before_that_second() {
    let times = event_times(STORE_34);
    // A second in the middle of the deltas, with later events after it.
    let second = times[times.len() / 2].1;
    let rev = times.iter().filter(|(_, t)| *t <= second).map(|(r, _)| *r).max().unwrap();
    assert!(times.iter().any(|(_, t)| *t > second), "the cut must leave later events out");
    let tmp = tempfile::tempdir().unwrap();
    let by_time = dry_run_line(&restore(
        STORE_34,
        &tmp.path().join("a"),
        free_port(),
        &["--dry-run", "--to-time", &second.to_string()],
    ));
    let by_rev = dry_run_line(&restore(
        STORE_34,
        &tmp.path().join("b"),
        free_port(),
        &["--dry-run", "--to-revision", &rev.to_string()],
    ));
    assert_eq!(by_time, by_rev);
    assert!(by_time.starts_with(&format!("hashkv at revision {rev}:")), "{by_time}");
}

#[test]
fn bump_revision_mark_compacted_boots_at_the_bumped_revision_with_the_same_keys() {
    let (final_rev, _) = meta(STORE_34);
    for version in EtcdVersion::ALL {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("restored");
        let peer = free_port();
        expect_ok(&restore(STORE_34, &data_dir, peer, &["--bump-revision", "1000", "--mark-compacted"]));
        let etcd = Etcd::start_on(version, &data_dir, "n1", peer, free_port());
        assert_eq!(etcd.revision(), final_rev + 1000, "{version:?}");
        let (kvs, _) = etcd.get_all(0);
        let expected = json_file(go_testdata().join(STORE_34).join("expected-final.json"));
        assert_eq!(&kvs, expected["kvs"].as_array().unwrap(), "{version:?}: keys after the bump");
        let (_, compact, _) = etcd.hashkv(0);
        assert_eq!(compact, final_rev + 1000, "{version:?}: watchers must see everything before as compacted");
        etcd.etcdctl(&["put", "/after-bump", "x"]);
        assert_eq!(etcd.revision(), final_rev + 1001);
    }
}
