//! Bad input and provider set-up: wrong credentials, missing buckets, nothing listening,
//! credential rotation (against SeaweedFS and Azurite), and opening GCS, Swift, OSS, ECS and OCS
//! stores from the reference's credential files (no server for those; their requests go to a
//! loopback port where nothing listens, which proves the client is built and fails cleanly).

use std::path::Path;
use std::time::Duration;

use brcore::{ByteStream, Snapstore, StoreError, WriteOptions};
use bytes::Bytes;
use snapstore::{Error, OpendalStore, Provider, StoreConfig};

/// Canary secrets: they must never appear in an error message or a Debug dump.
const CANARY_SECRET: &str = "canary-secret-7f3a9c";

fn one_chunk(b: &'static [u8]) -> ByteStream {
    Box::pin(futures::stream::iter([Ok(Bytes::from_static(b))]))
}

fn write_file(dir: &Path, name: &str, content: &str) {
    std::fs::write(dir.join(name), content).unwrap();
}

fn env_with(name: &'static str, value: String) -> impl Fn(&str) -> Option<String> {
    move |k: &str| (k == name).then(|| value.clone())
}

fn config(provider: Provider, container: &str, endpoint: Option<String>) -> StoreConfig {
    let mut config = StoreConfig::new(provider, container);
    config.endpoint_override = endpoint;
    config
}

/// A loopback URL where nothing listens.
fn dead_endpoint() -> String {
    format!("http://127.0.0.1:{}", testsupport::free_port())
}

/// Lists through `store`, which must fail with a retryable error, within a generous guard so a
/// hang fails the test instead of stalling it.
async fn assert_unreachable(store: &dyn Snapstore) {
    let listed = tokio::time::timeout(Duration::from_secs(120), store.list("v2/"))
        .await
        .expect("a store that is not there must fail in bounded time, not hang");
    match listed {
        Err(e) => assert!(e.is_retryable(), "connection refused must be retryable: {e}"),
        Ok(l) => panic!("nothing listens there, yet list returned {l:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_secret_is_permission_denied_and_rotation_is_picked_up() {
    let seaweed = testsupport::seaweed::SeaweedS3::start();
    let creds = tempfile::tempdir().unwrap();
    write_file(creds.path(), "accessKeyID", seaweed.access_key());
    write_file(creds.path(), "secretAccessKey", CANARY_SECRET);
    write_file(creds.path(), "region", "us-east-1");
    let env = env_with("AWS_APPLICATION_CREDENTIALS", creds.path().display().to_string());
    let store = OpendalStore::open_with_env(&config(Provider::S3, seaweed.bucket(), Some(seaweed.endpoint())), &env)
        .expect("open S3");

    let err = store.list("v2/").await.expect_err("a wrong secret must be refused");
    match &err {
        StoreError::PermissionDenied { message, .. } => {
            assert!(message.contains("SignatureDoesNotMatch"), "the store's reason is kept: {message}");
            assert!(message.contains("credentials"), "the message says what to check: {message}");
        }
        other => panic!("wanted PermissionDenied, got {other}"),
    }
    assert!(!err.is_retryable());
    let opts = WriteOptions::default();
    let werr = store.write("v2/obj", one_chunk(b"data"), &opts).await.expect_err("write with a wrong secret");
    assert!(matches!(werr, StoreError::PermissionDenied { .. }), "{werr}");
    for text in [err.to_string(), format!("{err:?}"), werr.to_string(), format!("{store:?}")] {
        assert!(!text.contains(CANARY_SECRET), "secret leaked: {text}");
    }

    // Rotate the secret in place, as a mounted secret changes: the next call uses the new one.
    write_file(creds.path(), "secretAccessKey", seaweed.secret_key());
    store.write("v2/obj", one_chunk(b"data"), &opts).await.expect("write after rotation");
    assert_eq!(store.list("v2/").await.unwrap().len(), 1);
    assert!(!store.reload_if_changed().unwrap(), "nothing changed since the last call");

    // A credentials file that breaks mid-rotation fails the call (retryable) and is re-read later.
    std::fs::remove_file(creds.path().join("region")).unwrap();
    let broken = store.list("v2/").await.expect_err("incomplete credentials");
    assert!(broken.is_retryable() && broken.to_string().contains("region"), "{broken}");
    write_file(creds.path(), "region", "us-east-1");
    assert_eq!(store.list("v2/").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_not_mistaken_for_missing_objects() {
    let seaweed = testsupport::seaweed::SeaweedS3::start();
    let creds = tempfile::tempdir().unwrap();
    let json = serde_json::json!({
        "accessKeyID": seaweed.access_key(),
        "secretAccessKey": seaweed.secret_key(),
        "region": "us-east-1",
        "s3ForcePathStyle": true,
    });
    write_file(creds.path(), "aws.json", &json.to_string());
    let env = env_with("AWS_APPLICATION_CREDENTIALS_JSON", creds.path().join("aws.json").display().to_string());
    let store = OpendalStore::open_with_env(&config(Provider::S3, "no-such-bucket", Some(seaweed.endpoint())), &env)
        .expect("opening does not contact the store");

    let check = store.check().await.expect_err("check must notice the missing bucket");
    assert!(check.to_string().contains("NoSuchBucket"), "{check}");
    assert!(!check.is_retryable(), "a missing bucket does not appear by retrying: {check}");
    // Listing must not pretend the bucket is merely empty (that would read as "no backups").
    let list = store.list("v2/").await.expect_err("list of a missing bucket");
    assert!(list.to_string().contains("NoSuchBucket") && !list.is_retryable(), "{list}");
    let read = store.read("v2/Full-00000000-00000001-1", None).await.map(|_| ()).expect_err("read");
    assert!(!matches!(read, StoreError::NotFound { .. }), "missing bucket reported as a missing object: {read}");
    // (No write here: SeaweedFS creates a bucket on the first PUT into it, unlike AWS.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_endpoint_with_nothing_listening_fails_retryable_in_bounded_time() {
    let creds = tempfile::tempdir().unwrap();
    write_file(creds.path(), "accessKeyID", "id");
    write_file(creds.path(), "secretAccessKey", CANARY_SECRET);
    write_file(creds.path(), "region", "us-east-1");
    let env = env_with("AWS_APPLICATION_CREDENTIALS", creds.path().display().to_string());
    let store = OpendalStore::open_with_env(&config(Provider::S3, "bucket", Some(dead_endpoint())), &env).unwrap();
    assert_unreachable(&store).await;
    let err = store.write("v2/obj", one_chunk(b"x"), &WriteOptions::default()).await.expect_err("write");
    assert!(err.is_retryable(), "{err}");
    assert!(!format!("{err:?}").contains(CANARY_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_wrong_key_and_missing_container() {
    let azurite = testsupport::azurite::Azurite::start();
    let creds = tempfile::tempdir().unwrap();
    write_file(creds.path(), "storageAccount", azurite.account());
    // A well-formed (base64) key that is not the account's.
    write_file(creds.path(), "storageKey", "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5");
    let env = env_with("AZURE_APPLICATION_CREDENTIALS", creds.path().display().to_string());
    let store =
        OpendalStore::open_with_env(&config(Provider::ABS, azurite.container(), Some(azurite.endpoint())), &env)
            .unwrap();
    let err = store.list("v2/").await.expect_err("a wrong key must be refused");
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "wanted PermissionDenied, got {err}");

    write_file(creds.path(), "storageKey", azurite.key());
    store.check().await.expect("right key after rotation");
    let missing =
        OpendalStore::open_with_env(&config(Provider::ABS, "no-such-container", Some(azurite.endpoint())), &env)
            .unwrap();
    let err = missing.list("v2/").await.expect_err("list of a missing container must fail, not look empty");
    assert!(err.to_string().contains("no-such-container") && !err.is_retryable(), "{err}");
    let err = missing.check().await.expect_err("check of a missing container");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn gcs_opens_from_a_service_account_file_and_in_emulator_mode() {
    let dir = tempfile::tempdir().unwrap();
    let sa = serde_json::json!({
        "type": "service_account",
        "project_id": "etcdbr-test",
        "private_key_id": "0",
        "private_key": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
        "client_email": "etcdbr@etcdbr-test.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    write_file(dir.path(), "serviceaccount.json", &sa.to_string());
    let env = env_with("GOOGLE_APPLICATION_CREDENTIALS", dir.path().join("serviceaccount.json").display().to_string());
    let store = OpendalStore::open_with_env(&config(Provider::GCS, "bucket", None), &env).expect("open GCS");
    assert_eq!(store.provider(), Provider::GCS);

    // No credentials and no emulator: Application Default Credentials, as the reference (see
    // crates/cli/tests/store_credentials.rs for the metadata server being asked). A copy source
    // must name its file.
    let none = |_: &str| None;
    OpendalStore::open_with_env(&config(Provider::GCS, "bucket", None), &none).expect("GCS with ADC");
    let mut source = config(Provider::GCS, "bucket", None);
    source.env_prefix = "SOURCE_".into();
    let err = OpendalStore::open_with_env(&source, &none).unwrap_err();
    assert!(
        matches!(err, Error::Credentials { .. }) && err.to_string().contains("SOURCE_GOOGLE_APPLICATION_CREDENTIALS")
    );
    // An http:// endpoint override is the emulator: no credentials needed.
    let emulated = OpendalStore::open_with_env(&config(Provider::GCS, "bucket", Some(dead_endpoint())), &none)
        .expect("GCS emulator mode");
    assert_unreachable(&emulated).await;
}

#[tokio::test]
async fn swift_opens_with_keystone_credentials_or_a_token() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "authURL", &format!("{}/v3", dead_endpoint()));
    write_file(dir.path(), "username", "u");
    write_file(dir.path(), "password", CANARY_SECRET);
    write_file(dir.path(), "domainName", "default");
    write_file(dir.path(), "tenantName", "t");
    write_file(dir.path(), "region", "RegionOne");
    let env = env_with("OPENSTACK_APPLICATION_CREDENTIALS", dir.path().display().to_string());
    // Keystone is asked at the first operation (tests/keystone_swift.rs has one to ask); here
    // nothing listens, and the failure names Keystone and never the password.
    let store = OpendalStore::open_with_env(&config(Provider::Swift, "container", None), &env).expect("open Swift");
    let err = store.list("v2/").await.expect_err("no Keystone");
    assert!(err.to_string().contains("Keystone") && err.is_retryable(), "{err}");
    assert!(!format!("{err:?}").contains(CANARY_SECRET) && !err.to_string().contains(CANARY_SECRET));

    write_file(dir.path(), "storageURL", &format!("{}/v1/AUTH_test", dead_endpoint()));
    write_file(dir.path(), "token", CANARY_SECRET);
    let store = OpendalStore::open_with_env(&config(Provider::Swift, "container", None), &env).expect("open Swift");
    assert_unreachable(&store).await;
}

#[tokio::test]
async fn oss_ecs_and_ocs_open_from_their_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let oss = serde_json::json!({
        "storageEndpoint": dead_endpoint(),
        "accessKeyID": "id",
        "accessKeySecret": CANARY_SECRET,
    });
    write_file(dir.path(), "oss.json", &oss.to_string());
    let env = env_with("ALICLOUD_APPLICATION_CREDENTIALS_JSON", dir.path().join("oss.json").display().to_string());
    let oss = OpendalStore::open_with_env(&config(Provider::OSS, "bucket", None), &env).expect("open OSS");

    let ecs_endpoint = dead_endpoint();
    let ecs_env = move |k: &str| match k {
        "ECS_ENDPOINT" => Some(ecs_endpoint.clone()),
        "ECS_ACCESS_KEY_ID" => Some("id".to_string()),
        "ECS_SECRET_ACCESS_KEY" => Some(CANARY_SECRET.to_string()),
        _ => None,
    };
    let ecs = OpendalStore::open_with_env(&config(Provider::ECS, "bucket", None), &ecs_env).expect("open ECS");

    let ocs_json = serde_json::json!({
        "endpoint": dead_endpoint(),
        "region": "r",
        "accessKeyID": "id",
        "secretAccessKey": CANARY_SECRET,
    });
    write_file(dir.path(), "ocs.json", &ocs_json.to_string());
    let env = env_with("OPENSHIFT_APPLICATION_CREDENTIALS_JSON", dir.path().join("ocs.json").display().to_string());
    let store = OpendalStore::open_with_env(&config(Provider::OCS, "bucket", None), &env).expect("open OCS");
    // Each waits out its retries; run them together.
    futures::join!(assert_unreachable(&oss), assert_unreachable(&ecs), assert_unreachable(&store));
    assert!(!format!("{store:?}").contains(CANARY_SECRET));
}

#[test]
fn open_refuses_bad_flags_and_missing_containers() {
    let none = |_: &str| None;
    let small = StoreConfig::default().with_uploads(5, 1024);
    assert!(matches!(
        OpendalStore::open_with_env(&small, &none),
        Err(Error::Setting { setting: snapstore::Setting::MinChunkSize, .. })
    ));
    let s3 = {
        let mut s3 = StoreConfig::default();
        s3.provider = Provider::S3;
        s3
    };
    let err = OpendalStore::open_with_env(&s3, &none).unwrap_err();
    assert!(err.to_string().contains("STORAGE_CONTAINER"), "{err}");
    // STORAGE_CONTAINER fills in for --store-container.
    let env = env_with("STORAGE_CONTAINER", "from-env".to_string());
    let store = OpendalStore::open_with_env(&s3, &env).expect("S3 with the default credential chain");
    assert_eq!(store.container(), "from-env");
    assert!("Blob".parse::<Provider>().is_err());
}

#[test]
fn s3_web_identity_sse_c_and_tls_options_open() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "region", "eu-west-1");
    write_file(dir.path(), "roleARN", "arn:aws:iam::123456789012:role/etcd-backup");
    write_file(dir.path(), "token", "header.payload.signature");
    write_file(dir.path(), "sseCustomerKey", "0123456789abcdef0123456789abcdef");
    write_file(dir.path(), "sseCustomerAlgorithm", "AES256");
    write_file(dir.path(), "insecureSkipVerify", "true");
    let env = env_with("AWS_APPLICATION_CREDENTIALS", dir.path().display().to_string());
    let store = OpendalStore::open_with_env(&config(Provider::S3, "bucket", None), &env).expect("web identity");
    assert_eq!(store.provider(), Provider::S3);

    // A trusted CA that is not a certificate is refused at open, not at the first upload.
    write_file(dir.path(), "trustedCaCert", "not a certificate");
    let err = OpendalStore::open_with_env(&config(Provider::S3, "bucket", None), &env).unwrap_err();
    assert!(err.to_string().contains("trustedCaCert"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_sse_c_objects_are_readable_only_with_the_key() {
    let seaweed = testsupport::seaweed::SeaweedS3::start();
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "accessKeyID", seaweed.access_key());
    write_file(dir.path(), "secretAccessKey", seaweed.secret_key());
    write_file(dir.path(), "region", "us-east-1");
    write_file(dir.path(), "sseCustomerKey", "0123456789abcdef0123456789abcdef");
    write_file(dir.path(), "sseCustomerAlgorithm", "AES256");
    let env = env_with("AWS_APPLICATION_CREDENTIALS", dir.path().display().to_string());
    let cfg = config(Provider::S3, seaweed.bucket(), Some(seaweed.endpoint()));
    let store = OpendalStore::open_with_env(&cfg, &env).unwrap();
    // Two parts, so the multipart path carries the SSE-C headers too.
    let data: Bytes = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let stream: ByteStream = Box::pin(futures::stream::iter([Ok(data.clone())]));
    store.write("v2/encrypted", stream, &WriteOptions::default()).await.expect("SSE-C write");
    let mut back = Vec::new();
    let mut s = store.read("v2/encrypted", None).await.expect("SSE-C read");
    while let Some(chunk) = futures::StreamExt::next(&mut s).await {
        back.extend_from_slice(&chunk.unwrap());
    }
    assert!(back == data, "SSE-C round trip differs");

    // Without the key the store refuses to hand the object out.
    std::fs::remove_file(dir.path().join("sseCustomerKey")).unwrap();
    std::fs::remove_file(dir.path().join("sseCustomerAlgorithm")).unwrap();
    let err = store.read("v2/encrypted", None).await.map(|_| ()).expect_err("read without the SSE-C key");
    assert!(!matches!(err, StoreError::NotFound { .. }), "{err}");
}
