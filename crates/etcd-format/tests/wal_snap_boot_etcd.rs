//! Real etcd boots from our member files: the db comes from etcd's own restore, the WAL and
//! `.snap` from `write_member_files`. For etcd 3.4.23 this is the interesting case, since our
//! WAL's last snapshot record carries the 3.5 `conf_state` field that 3.4 never writes.

use std::fs;
use std::process::Command;

use etcd_format::membership::{Cluster, write_member_files};
use testsupport::{Etcd, EtcdVersion, free_port};

#[test]
fn etcd_boots_from_our_wal_and_snap() {
    for version in [EtcdVersion::V3_4, EtcdVersion::V3_5, EtcdVersion::V3_5Latest] {
        let tmp = tempfile::tempdir().unwrap();
        let mut src = Etcd::start(version);
        src.etcdctl(&["put", "foo", "bar"]);
        let db = tmp.path().join("s.db");
        src.etcdctl(&["snapshot", "save", db.to_str().unwrap()]);
        src.stop();

        let (peer, client) = (free_port(), free_port());
        let ic = format!("m1=http://127.0.0.1:{peer}");
        let theirs = tmp.path().join("theirs");
        let bin = if version == EtcdVersion::V3_4 { version.etcdctl_bin() } else { version.etcdutl_bin() };
        let out = Command::new(bin)
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore", db.to_str().unwrap(), "--data-dir", theirs.to_str().unwrap()])
            .args(["--name", "m1", "--initial-cluster", &ic, "--initial-advertise-peer-urls"])
            .arg(format!("http://127.0.0.1:{peer}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

        let ours = tmp.path().join("ours");
        let cluster = Cluster::from_initial_cluster(&ic, "etcd-cluster").unwrap();
        let files = write_member_files(&ours.join("member"), &cluster, "m1").unwrap();
        fs::copy(theirs.join("member/snap/db"), ours.join("member/snap/db")).unwrap();

        let etcd = Etcd::start_on(version, &ours, "m1", peer, client);
        assert!(etcd.etcdctl(&["get", "foo"]).contains("bar"), "{version:?}");
        let v: serde_json::Value = serde_json::from_str(&etcd.etcdctl(&["member", "list", "-w", "json"])).unwrap();
        assert_eq!(v["header"]["member_id"].as_u64(), Some(files.member_id), "{version:?}");
        assert_eq!(v["header"]["cluster_id"].as_u64(), Some(files.cluster_id), "{version:?}");
        etcd.etcdctl(&["put", "after", "restore"]);
        assert!(etcd.etcdctl(&["get", "after"]).contains("restore"), "{version:?}");
    }
}
