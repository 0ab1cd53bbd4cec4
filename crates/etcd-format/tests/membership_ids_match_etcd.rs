//! Member and cluster IDs and member JSON against real etcd: the spec's verified vector, the IDs
//! live etcd 3.4/3.5 servers report for themselves, and the member JSON etcdutl 3.5 puts into
//! the WAL ConfChange contexts (the same `json.Marshal(Member)` it stores in the `members` bucket).

use std::fs;
use std::process::Command;

use etcd_format::membership::Cluster;
use etcd_format::raftpb::{ConfChange, Entry, EntryType, Message, Record};
use etcd_format::wal::{FIRST_SEGMENT, record_type};
use testsupport::{Etcd, EtcdVersion};

#[test]
fn spec_vector() {
    let c = Cluster::from_initial_cluster("n1=http://127.0.0.1:24801", "tok1").unwrap();
    assert_eq!(format!("{:x}", c.members[0].id), "18e0185557c0ce00");
    assert_eq!(format!("{:x}", c.id()), "d02ac130b9ebfd3b");
}

#[test]
fn ids_equal_what_live_etcd_reports() {
    for version in [EtcdVersion::V3_4, EtcdVersion::V3_5, EtcdVersion::V3_5Latest] {
        let etcd = Etcd::start(version);
        let v: serde_json::Value = serde_json::from_str(&etcd.etcdctl(&["member", "list", "-w", "json"])).unwrap();
        let ours =
            Cluster::from_initial_cluster(&format!("{}={}", etcd.name(), etcd.peer_url()), "etcd-cluster").unwrap();
        assert_eq!(v["header"]["member_id"].as_u64(), Some(ours.members[0].id), "{version:?}");
        assert_eq!(v["header"]["cluster_id"].as_u64(), Some(ours.id()), "{version:?}");
    }
}

/// The ConfChange contexts of the entries in a WAL segment, in order.
fn conf_change_contexts(seg: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let lf = u64::from_le_bytes(seg[off..off + 8].try_into().unwrap());
        if lf == 0 {
            return out;
        }
        let len = (lf & 0x00ff_ffff_ffff_ffff) as usize;
        let pad = if lf >> 63 == 1 { ((lf >> 56) & 7) as usize } else { 0 };
        let rec = Record::decode(&seg[off + 8..off + 8 + len]).unwrap();
        if rec.record_type == record_type::ENTRY {
            let e = Entry::decode(rec.data.as_deref().unwrap()).unwrap();
            assert_eq!(e.entry_type, EntryType::ConfChange);
            out.push(ConfChange::decode(e.data.as_deref().unwrap()).unwrap().context.unwrap());
        }
        off += 8 + len + pad;
    }
}

#[test]
fn members_bucket_json_equals_etcdutl_member_json() {
    let tmp = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(EtcdVersion::V3_5);
    let db = tmp.path().join("s.db");
    etcd.etcdctl(&["snapshot", "save", db.to_str().unwrap()]);
    etcd.stop();
    // Names with characters Go escapes, a two-URL member, a custom token.
    let ic = "a<b=http://127.0.0.1:2380,m&n=http://127.0.0.1:2381,m&n=http://10.1.2.3:2381,z=https://127.0.0.3:2382";
    let data = tmp.path().join("restored");
    let out = Command::new(EtcdVersion::V3_5.etcdutl_bin())
        .args(["snapshot", "restore", db.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
        .args(["--name", "z", "--initial-cluster", ic, "--initial-cluster-token", "tok-\"x\""])
        .args(["--initial-advertise-peer-urls", "https://127.0.0.3:2382"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seg = fs::read(data.join("member/wal").join(FIRST_SEGMENT)).unwrap();
    let contexts = conf_change_contexts(&seg);

    let cluster = Cluster::from_initial_cluster(ic, "tok-\"x\"").unwrap();
    let ours: Vec<Vec<u8>> = cluster.members.iter().map(|m| m.to_json().into_bytes()).collect();
    assert_eq!(contexts, ours, "member JSON in ID order");
    assert!(String::from_utf8_lossy(&contexts.concat()).contains("a\\u003cb"));

    let entries = cluster.members_bucket_entries();
    for (k, v) in &entries {
        let m = cluster.members.iter().find(|m| m.id_hex().as_bytes() == &k[..]).unwrap();
        assert_eq!(v, &m.to_json().into_bytes());
    }
}
