//! The Lease client and the reference's rules against the Kubernetes API stand-in
//! (`testsupport::kube`: no kube-apiserver can be installed here), over HTTPS through a
//! kubeconfig.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use brcore::name::{Compression, Layout, Snapshot, SnapshotKind, SnapshotName};
use k8s::snapshot::FullRenewal;
use k8s::{LeaseClient, LeaseError, MemberIdentity, MemberLease, SnapshotLeases};
use serde_json::json;
use testsupport::kube::{DEFAULT_TOKEN, KubeApi};

const NS: &str = "shoot--dev--a";

async fn client(api: &KubeApi) -> LeaseClient {
    LeaseClient::from_kubeconfig(&api.kubeconfig(NS, DEFAULT_TOKEN), NS).await.expect("client")
}

fn full(revision: u64, created_on: i64) -> Snapshot {
    let name = SnapshotName {
        kind: SnapshotKind::Full,
        start_revision: 0,
        last_revision: revision,
        created_on,
        compression: Compression::Gzip,
        is_final: false,
    };
    Snapshot { key: name.key_v2("p"), name, prefix: "p".into(), size: 1, layout: Layout::V2, is_chunk: false }
}

#[tokio::test]
async fn reads_and_merge_patches_a_lease_through_a_kubeconfig() {
    let api = KubeApi::start();
    api.create_lease(NS, "etcd-main-0");
    let c = client(&api).await;
    let lease = c.get("etcd-main-0").await.unwrap();
    assert_eq!(lease.metadata.name.as_deref(), Some("etcd-main-0"));
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), None, "druid creates it without a holder");
    let patched = c
        .patch("etcd-main-0", &json!({"spec": {"holderIdentity": "x", "renewTime": "2026-01-02T03:04:05.678901Z"}}))
        .await
        .unwrap();
    assert_eq!(patched.spec.as_ref().and_then(|s| s.holder_identity.as_deref()), Some("x"));
    let stored = api.lease(NS, "etcd-main-0").unwrap();
    assert_eq!(stored["spec"]["renewTime"], "2026-01-02T03:04:05.678901Z");
    assert_eq!(stored["metadata"]["labels"]["app.kubernetes.io/managed-by"], "etcd-druid", "other fields are kept");
    let last = api.requests().pop().unwrap();
    assert_eq!((last.method.as_str(), last.status), ("PATCH", 200));
    assert_eq!(last.content_type.as_deref(), Some("application/merge-patch+json"));
    assert!(
        last.path.starts_with(&format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/etcd-main-0")),
        "{}",
        last.path
    );
    // The API server refuses a time without microseconds, and the client says so.
    let e = c.patch("etcd-main-0", &json!({"spec": {"renewTime": "2026-01-02T03:04:05Z"}})).await.unwrap_err();
    assert!(matches!(&e, LeaseError::Api { code: 400, .. }), "{e:?}");
}

#[tokio::test]
async fn errors_keep_their_kind() {
    let mut api = KubeApi::start();
    api.create_lease(NS, "l");
    let c = client(&api).await;
    assert_eq!(c.get("missing").await.unwrap_err(), LeaseError::NotFound { name: "missing".into() });
    let wrong = LeaseClient::from_kubeconfig(&api.kubeconfig(NS, "stolen"), NS).await.unwrap();
    assert!(matches!(wrong.get("l").await.unwrap_err(), LeaseError::Denied { code: 401, .. }));
    api.forbid("patch");
    let e = c.patch("l", &json!({"spec": {"holderIdentity": "1"}})).await.unwrap_err();
    match &e {
        LeaseError::Denied { code: 403, message, .. } => {
            assert!(message.contains("cannot patch resource \"leases\""), "{message}")
        }
        other => panic!("{other:?}"),
    }
    api.permit_all();
    let e = c
        .patch("l", &json!({"metadata": {"resourceVersion": "0"}, "spec": {"holderIdentity": "1"}}))
        .await
        .unwrap_err();
    assert_eq!(e, LeaseError::Conflict { name: "l".into() });
    // Gone: connection refused. Hanging: the request times out.
    api.stop();
    assert!(matches!(c.get("l").await.unwrap_err(), LeaseError::Unreachable { .. }));
    api.start_again();
    assert!(c.get("l").await.is_ok(), "the same client reaches the API once it is back");
    api.stall(true);
    let short = c.clone().with_timeout(Duration::from_millis(500));
    let t = Instant::now();
    let e = short.get("l").await.unwrap_err();
    assert!(matches!(&e, LeaseError::Unreachable { message, .. } if message.contains("no answer")), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(20));
    api.stall(false);
    // A kubeconfig that names no API is a configuration error.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), "apiVersion: v1\nkind: Config\n").unwrap();
    assert!(matches!(
        LeaseClient::from_kubeconfig(&dir.path().join("k"), NS).await.unwrap_err(),
        LeaseError::Config(_)
    ));
}

#[tokio::test]
async fn the_snapshot_leases_follow_the_references_rules() {
    let api = KubeApi::start();
    api.create_lease(NS, "full");
    api.create_lease(NS, "delta");
    let leases = SnapshotLeases::new(client(&api).await, "full", "delta");
    // Before any delta: 0.
    leases.renew_delta(None).await.unwrap();
    let d = api.lease(NS, "delta").unwrap();
    assert_eq!(d["spec"]["holderIdentity"], "0");
    assert!(testsupport::kube::micro_time_utc(d["spec"]["renewTime"].as_str().unwrap()).is_some());
    assert_eq!(leases.renew_full(&full(166, 1_795_607_409)).await.unwrap(), FullRenewal::Renewed);
    let f = api.lease(NS, "full").unwrap();
    assert_eq!(f["spec"]["holderIdentity"], "166");
    assert_eq!(f["spec"]["renewTime"], "2026-11-25T11:50:09.000000Z", "the snapshot's creation time");
    let sent = api
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH" && r.path.split('?').next().unwrap().ends_with("/leases/full"))
        .unwrap();
    assert!(sent.json()["metadata"]["resourceVersion"].is_string(), "conditional on what was read: {}", sent.body);
    // The compaction Job stored a newer revision: it stays, and nothing is written.
    api.set_lease_spec(NS, "full", json!({"holderIdentity": "500", "renewTime": "2026-11-25T12:00:00.000000Z"}));
    let writes = api.requests().len();
    assert_eq!(leases.renew_full(&full(400, 1_795_607_500)).await.unwrap(), FullRenewal::Newer);
    assert_eq!(api.lease(NS, "full").unwrap()["spec"]["holderIdentity"], "500");
    assert!(api.requests()[writes..].iter().all(|r| r.method == "GET"));
    // Deltas: the newest one's revision, never lower than what the Lease holds.
    leases.renew_delta(Some(180)).await.unwrap();
    assert_eq!(api.lease(NS, "delta").unwrap()["spec"]["holderIdentity"], "180");
    leases.renew_delta(None).await.unwrap();
    assert_eq!(api.lease(NS, "delta").unwrap()["spec"]["holderIdentity"], "180", "a round without a delta keeps it");
    // A missing Lease is an error; the sidecar never creates one.
    api.delete_lease(NS, "delta");
    assert_eq!(leases.renew_delta(Some(190)).await.unwrap_err(), LeaseError::NotFound { name: "delta".into() });
    assert!(api.lease(NS, "delta").is_none());
}

#[tokio::test]
async fn a_conflicting_writer_makes_the_full_snapshot_update_read_again() {
    let api = KubeApi::start();
    api.create_lease(NS, "full");
    let leases = SnapshotLeases::new(client(&api).await, "full", "delta");
    // Another writer changes the Lease right after each of our next two reads.
    api.interfere_after_get(NS, "full", 2);
    assert_eq!(leases.renew_full(&full(10, 1_795_607_409)).await.unwrap(), FullRenewal::Renewed);
    let statuses: Vec<(String, u16)> = api.requests().into_iter().map(|r| (r.method, r.status)).collect();
    let want: Vec<(String, u16)> =
        [("GET", 200), ("PATCH", 409), ("GET", 200), ("PATCH", 409), ("GET", 200), ("PATCH", 200)]
            .into_iter()
            .map(|(m, s)| (m.to_string(), s))
            .collect();
    assert_eq!(statuses, want);
    let f = api.lease(NS, "full").unwrap();
    assert_eq!(f["spec"]["holderIdentity"], "10");
    assert_eq!(f["metadata"]["annotations"]["stand-in/other-writer"], "2", "the other writer's change is kept");
    // A writer that never stops: four attempts, then the conflict is reported.
    api.interfere_after_get(NS, "full", 100);
    let e = leases.renew_full(&full(11, 1_795_607_410)).await.unwrap_err();
    assert_eq!(e, LeaseError::Conflict { name: "full".into() });
}

#[tokio::test]
async fn the_member_lease_is_renewed_every_period_with_the_identity_and_annotation() {
    let api = KubeApi::start();
    api.create_lease(NS, "etcd-main-1");
    let annotations: BTreeMap<String, String> = [(k8s::TLS_ENABLED_ANNOTATION.to_string(), "true".to_string())].into();
    let lease = MemberLease::new(client(&api).await, "etcd-main-1", annotations);
    let answers = std::sync::Arc::new(std::sync::Mutex::new(0u32));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let counter = answers.clone();
    let task = tokio::spawn(lease.run(
        Duration::from_millis(200),
        move || {
            let counter = counter.clone();
            async move {
                let mut n = counter.lock().unwrap();
                *n += 1;
                match *n {
                    // etcd down, then a cluster without a leader: no renewal.
                    3 => Err("connection refused".to_string()),
                    4 => Ok(None),
                    n => Ok(Some(MemberIdentity {
                        member_id: 0x8e9e05c52164694d,
                        cluster_id: 0xcdf818194e3a8c32,
                        leader: n < 5,
                    })),
                }
            }
        },
        async {
            let _ = stopped.await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while *answers.lock().unwrap() < 7 {
        assert!(Instant::now() < deadline, "the heartbeat did not run 7 times");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    task.await.unwrap();
    let patches: Vec<serde_json::Value> =
        api.requests().into_iter().filter(|r| r.method == "PATCH").map(|r| r.json()).collect();
    // 7 heartbeats (maybe an 8th began before the stop), 2 of them skipped.
    assert!((5..=6).contains(&patches.len()), "{patches:?}");
    assert_eq!(patches[0]["spec"]["holderIdentity"], "8e9e05c52164694d:cdf818194e3a8c32:Leader");
    assert_eq!(patches[0]["metadata"]["annotations"][k8s::TLS_ENABLED_ANNOTATION], "true");
    assert_eq!(patches[1].get("metadata"), None, "an annotation already set is not sent again");
    assert_eq!(patches[2]["spec"]["holderIdentity"], "8e9e05c52164694d:cdf818194e3a8c32:Member", "leadership moved");
    let renew: Vec<&str> = patches.iter().map(|p| p["spec"]["renewTime"].as_str().unwrap()).collect();
    assert!(renew.windows(2).all(|w| w[0] < w[1]), "renewTime moves forward: {renew:?}");
    let stored = api.lease(NS, "etcd-main-1").unwrap();
    assert_eq!(stored["spec"]["holderIdentity"], "8e9e05c52164694d:cdf818194e3a8c32:Member");
    assert_eq!(stored["spec"]["renewTime"], *renew.last().unwrap());
}

/// A projected service-account token rotates: the client reads the token file again (kube
/// re-reads it about once a minute), so this test takes up to a minute.
#[tokio::test]
async fn a_rotated_token_file_is_read_again() {
    let api = KubeApi::start();
    api.create_lease(NS, "l");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first").unwrap();
    api.accept_tokens(&["first"]);
    let c = LeaseClient::from_kubeconfig(&api.kubeconfig_with_token_file(NS, &token), NS).await.unwrap();
    c.get("l").await.unwrap();
    std::fs::write(&token, "second").unwrap();
    api.accept_tokens(&["second"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match c.get("l").await {
            Ok(_) => break,
            Err(LeaseError::Denied { code: 401, .. }) => {
                assert!(Instant::now() < deadline, "the rotated token was never read");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// The stand-in's PUT (the client under test only reads and patches): a stale
/// `resourceVersion` is a conflict, a current one replaces the Lease, a missing Lease is not
/// created.
#[tokio::test]
async fn the_stand_in_replaces_leases_with_resource_version_preconditions() {
    use k8s::Lease;
    let api = KubeApi::start();
    api.create_lease(NS, "l");
    let kubeconfig = kube::config::Kubeconfig::read_from(api.kubeconfig(NS, DEFAULT_TOKEN)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    // LeaseClient installs the crypto provider kube needs; make one first.
    let _ = client(&api).await;
    let leases: kube::Api<Lease> = kube::Api::namespaced(kube::Client::try_from(config).unwrap(), NS);
    let mut lease = leases.get("l").await.unwrap();
    let read_at = lease.metadata.resource_version.clone().unwrap();
    api.set_lease_spec(NS, "l", json!({"holderIdentity": "someone else"}));
    lease.spec.get_or_insert_default().holder_identity = Some("me".into());
    let e = leases.replace("l", &Default::default(), &lease).await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 409), "{e:?}");
    let mut fresh = leases.get("l").await.unwrap();
    assert_ne!(fresh.metadata.resource_version.as_deref(), Some(read_at.as_str()));
    fresh.spec.get_or_insert_default().holder_identity = Some("me".into());
    let replaced = leases.replace("l", &Default::default(), &fresh).await.unwrap();
    assert_eq!(replaced.spec.unwrap().holder_identity.as_deref(), Some("me"));
    assert_eq!(api.lease(NS, "l").unwrap()["spec"]["holderIdentity"], "me");
    let mut other = fresh.clone();
    other.metadata.name = Some("nobody".into());
    other.metadata.resource_version = None;
    let e = leases.replace("nobody", &Default::default(), &other).await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 404), "{e:?}");
    assert!(api.lease(NS, "nobody").is_none());
}
