//! The initializer against real etcd 3.4 and 3.5 data dirs and a real Local store.
//!
//! Per etcd version one "golden" run makes three things (once, shared by every case):
//! - `early`: the data dir of a stopped etcd at revision R1;
//! - a Local store holding a full snapshot (`etcdctl snapshot save`, gzipped, named as the
//!   reference names it) at revision R2 > R1;
//! - `late`: the same data dir after more writes, at revision R3 > R2, stopped.
//!
//! Each case copies one of them, damages it, runs the initializer and checks the verdict, the
//! logged reason, that the old member dir was kept aside, and that real etcd boots the result
//! and serves revision R2 with the backed-up keys.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use brcore::Snapstore;
use brcore::restore::RestorePlan;
use etcd_format::membership::Cluster;
use testsupport::{Etcd, EtcdVersion, free_port};
use validator::{Action, InitError, InitOptions, Initializer, Mode, Outcome, Severity, Verdict, validate};

struct Golden {
    version: EtcdVersion,
    early: PathBuf,
    late: PathBuf,
    /// The Local store's container (a directory) and the prefix inside it.
    container: PathBuf,
    prefix: String,
    r1: i64,
    r2: i64,
    r3: i64,
    /// `(key, value, create, mod, version)` of every key at R2.
    kvs_at_r2: Vec<(String, String, i64, i64, i64)>,
}

fn init_logs() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for ent in fs::read_dir(from).unwrap() {
        let ent = ent.unwrap();
        let target = to.join(ent.file_name());
        if ent.file_type().unwrap().is_dir() {
            copy_dir(&ent.path(), &target);
        } else {
            fs::copy(ent.path(), &target).unwrap();
        }
    }
}

fn kv_tuples(kvs: &[serde_json::Value]) -> Vec<(String, String, i64, i64, i64)> {
    // etcdctl prints keys and values base64-encoded in JSON; comparing the encoded text is enough.
    kvs.iter()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap_or_default().to_string(),
                kv["value"].as_str().unwrap_or_default().to_string(),
                kv["create_revision"].as_i64().unwrap_or(0),
                kv["mod_revision"].as_i64().unwrap_or(0),
                kv["version"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn peer_port(etcd: &Etcd) -> u16 {
    etcd.peer_url().rsplit(':').next().unwrap().parse().unwrap()
}

fn put_many(etcd: &Etcd, from: usize, to: usize) {
    // Values of 300 bytes so the key bucket spans real pages, not an inline bucket.
    let value = "v".repeat(300);
    for i in from..to {
        etcd.etcdctl(&["put", &format!("/registry/k{:03}", i % 40), &format!("{i}-{value}")]);
    }
}

fn make_golden(version: EtcdVersion) -> Golden {
    // A fixed name per version: each run replaces the previous run's files instead of piling up.
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("validator-golden-{version:?}"));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();

    let mut etcd = Etcd::start(version);
    put_many(&etcd, 0, 30);
    etcd.etcdctl(&["del", "/registry/k005"]);
    let r1 = etcd.revision();

    // While etcd runs, its db is locked: validation must say so and touch nothing.
    let live = validate(etcd.data_dir(), Mode::Sanity, None).unwrap();
    assert!(matches!(live.verdict, Verdict::InUse { .. }), "{:?}", live.verdict);
    assert_eq!(live.verdict.reference_status(), "FailToOpenBoltDBError");

    etcd.stop();
    let early = root.join("early");
    copy_dir(etcd.data_dir(), &early);
    // The temp dir goes with the value: continue on a copy, as the same member.
    let data_dir = root.join("work");
    copy_dir(etcd.data_dir(), &data_dir);
    let (pp, cp) = (peer_port(&etcd), free_port());
    drop(etcd);

    let mut etcd = Etcd::start_on(version, &data_dir, "default", pp, cp);
    put_many(&etcd, 30, 60);
    let r2 = etcd.revision();
    let (kvs, rev) = etcd.get_all(0);
    assert_eq!(rev, r2);
    let kvs_at_r2 = kv_tuples(&kvs);

    // The backup, as the reference lays it out: <container>/<prefix>/v2/Full-00000000-<rev>-<unix>.gz.
    let container = root.join("store");
    let prefix = "etcd-main".to_string();
    let v2 = container.join(&prefix).join("v2");
    fs::create_dir_all(&v2).unwrap();
    let raw = root.join("snapshot.db");
    etcd.etcdctl(&["snapshot", "save", raw.to_str().unwrap()]);
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let gz = fs::File::create(v2.join(format!("Full-00000000-{r2:08}-{unix}.gz"))).unwrap();
    let mut enc = flate2::write::GzEncoder::new(gz, flate2::Compression::fast());
    enc.write_all(&fs::read(&raw).unwrap()).unwrap();
    enc.finish().unwrap().sync_all().unwrap();
    fs::remove_file(&raw).unwrap();

    put_many(&etcd, 60, 70);
    let r3 = etcd.revision();
    etcd.stop();
    let late = root.join("late");
    copy_dir(&data_dir, &late);
    drop(etcd);
    assert!(r1 < r2 && r2 < r3);
    Golden { version, early, late, container, prefix, r1, r2, r3, kvs_at_r2 }
}

fn golden(version: EtcdVersion) -> &'static Golden {
    static G34: OnceLock<Golden> = OnceLock::new();
    static G35: OnceLock<Golden> = OnceLock::new();
    match version {
        EtcdVersion::V3_4 => G34.get_or_init(|| make_golden(version)),
        _ => G35.get_or_init(|| make_golden(version)),
    }
}

fn store_at(container: &Path) -> Arc<dyn Snapstore> {
    let cfg = snapstore::StoreConfig::local(container);
    snapstore::open(&cfg).unwrap()
}

/// A case: a copy of a golden data dir, a plan for member `default` on fresh ports.
struct Case {
    _tmp: tempfile::TempDir,
    data_dir: PathBuf,
    peer_port: u16,
    client_port: u16,
}

impl Case {
    fn from(dir: Option<&Path>) -> Case {
        let tmp = tempfile::Builder::new().prefix("validator-case-").tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        if let Some(dir) = dir {
            copy_dir(dir, &data_dir);
        }
        Case { _tmp: tmp, data_dir, peer_port: free_port(), client_port: free_port() }
    }

    fn member(&self) -> PathBuf {
        self.data_dir.join("member")
    }

    fn options(&self, prefix: &str, mode: Mode) -> InitOptions {
        let cluster =
            Cluster::from_initial_cluster(&format!("default=http://127.0.0.1:{}", self.peer_port), "etcd-cluster")
                .unwrap();
        InitOptions::new(
            mode,
            RestorePlan::new(prefix.to_string(), self.data_dir.clone(), cluster, "default").with_max_fetchers(2),
        )
    }

    async fn initialize(&self, g: &Golden, mode: Mode) -> Result<Outcome, InitError> {
        Initializer::new(store_at(&g.container)).initialize(&self.options(&g.prefix, mode)).await
    }

    /// Boots real etcd on the restored data dir and checks it serves the backed-up state.
    fn assert_boots_at_backup(&self, g: &Golden) {
        let etcd = Etcd::start_on(g.version, &self.data_dir, "default", self.peer_port, self.client_port);
        assert_eq!(etcd.revision(), g.r2, "{:?}: etcd serves the last backed-up revision", g.version);
        let (kvs, _) = etcd.get_all(0);
        assert_eq!(kv_tuples(&kvs), g.kvs_at_r2, "{:?}: the backed-up keys", g.version);
    }
}

/// Restored, with the reason found and the old member dir kept aside holding `old_file`.
fn assert_restored(case: &Case, g: &Golden, outcome: &Outcome, reason: &str, old_file: &str) {
    for f in &outcome.validation.findings {
        eprintln!("{:?} finding: {f}", g.version);
    }
    assert!(outcome.validation.verdict.needs_restore(), "{:?}", outcome.validation.verdict);
    let text = format!("{} {:?}", outcome.validation.verdict, outcome.validation.findings);
    assert!(text.contains(reason), "{:?}: expected {reason:?} in {text}", g.version);
    match &outcome.action {
        Action::Restored(r) => assert_eq!(r.stats.revision, g.r2),
        other => panic!("{:?}: expected a restore, got {other:?}", g.version),
    }
    let after = outcome.after.as_ref().expect("a validation after the restore");
    assert!(after.verdict.is_valid(), "{:?}", after.verdict);
    if !old_file.is_empty() {
        let aside = outcome.set_aside.as_ref().expect("the old member dir is kept");
        assert!(
            aside.starts_with(&case.data_dir) && aside.file_name().unwrap().to_str().unwrap().starts_with("member.")
        );
        assert!(aside.join(old_file).exists(), "{} kept in {}", old_file, aside.display());
    }
    case.assert_boots_at_backup(g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_dir_deleted_is_restored() {
    init_logs();
    for v in EtcdVersion::ALL {
        let g = golden(v);
        let case = Case::from(Some(&g.late));
        fs::remove_dir_all(case.member()).unwrap();
        let out = case.initialize(g, Mode::Sanity).await.unwrap();
        assert_eq!(out.validation.verdict.reference_status(), "DataDirectoryInvStruct");
        assert!(out.set_aside.is_none(), "there was nothing to keep");
        assert_restored(&case, g, &out, "member does not exist", "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_db_is_restored_and_kept() {
    init_logs();
    for v in EtcdVersion::ALL {
        let g = golden(v);
        let case = Case::from(Some(&g.late));
        let db = case.member().join("snap/db");
        // bbolt grows files ahead of use; cut inside the pages in use, not the slack past them.
        let used = bbolt::Db::open(&db).unwrap().size();
        let len = used / 2;
        let f = fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.set_len(len).unwrap();
        let out = case.initialize(g, Mode::Full).await.unwrap();
        assert_restored(&case, g, &out, "truncated", "snap/db");
        assert_eq!(fs::metadata(out.set_aside.unwrap().join("snap/db")).unwrap().len(), len);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_page_is_found_by_full_validation() {
    init_logs();
    for v in EtcdVersion::ALL {
        let g = golden(v);
        let case = Case::from(Some(&g.late));
        let db_path = case.member().join("snap/db");
        // Flip every bit of the key bucket's root page: reachable, so bbolt's check must see it.
        let (page, ps) = {
            let db = bbolt::Db::open(&db_path).unwrap();
            let key = db.bucket(b"key").unwrap().unwrap();
            (key.root_page().expect("the key bucket is not inline"), u64::from(db.page_size()))
        };
        let mut bytes = fs::read(&db_path).unwrap();
        for b in &mut bytes[(page * ps) as usize..((page + 1) * ps) as usize] {
            *b ^= 0xff;
        }
        fs::write(&db_path, &bytes).unwrap();
        let report = validate(&case.data_dir, Mode::Full, Some(g.r2)).unwrap();
        assert!(matches!(report.verdict, Verdict::Corrupt { .. }), "{:?}", report.verdict);
        let out = case.initialize(g, Mode::Full).await.unwrap();
        assert_restored(&case, g, &out, "bbolt", "snap/db");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeroed_meta_page_is_restored() {
    init_logs();
    for v in EtcdVersion::ALL {
        let g = golden(v);
        let case = Case::from(Some(&g.late));
        let db_path = case.member().join("snap/db");
        let (slot, ps) = {
            let db = bbolt::Db::open(&db_path).unwrap();
            (u64::from(db.meta().slot), u64::from(db.page_size()))
        };
        let mut bytes = fs::read(&db_path).unwrap();
        for b in &mut bytes[(slot * ps) as usize..((slot + 1) * ps) as usize] {
            *b = 0;
        }
        fs::write(&db_path, &bytes).unwrap();
        let out = case.initialize(g, Mode::Full).await.unwrap();
        assert_restored(&case, g, &out, &format!("meta page {slot} is invalid"), "snap/db");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_wal_is_detected_and_restored() {
    init_logs();
    for v in EtcdVersion::ALL {
        let g = golden(v);
        let case = Case::from(Some(&g.late));
        let wal_dir = case.member().join("wal");
        let contents = etcd_format::wal::read_wal_dir(&wal_dir).unwrap();
        let last = contents.segments.last().unwrap();
        let f = fs::OpenOptions::new().write(true).open(&last.file).unwrap();
        f.set_len(last.end_offset / 2 + 3).unwrap();
        // Sanity mode does not read a WAL when the db is not behind: it finds nothing.
        assert!(validate(&case.data_dir, Mode::Sanity, Some(g.r2)).unwrap().verdict.is_valid());
        let out = case.initialize(g, Mode::Full).await.unwrap();
        assert_restored(&case, g, &out, "the end of the raft log is lost", "wal");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_data_dir_is_restored() {
    init_logs();
    for v in EtcdVersion::ALL {
        let g = golden(v);
        let case = Case::from(Some(&g.early));
        let out = case.initialize(g, Mode::Sanity).await.unwrap();
        match &out.validation.verdict {
            Verdict::Stale { db_revision, backup_revision, .. } => {
                assert_eq!((*db_revision, *backup_revision), (g.r1, g.r2));
            }
            other => panic!("{v:?}: expected stale, got {other}"),
        }
        assert_restored(&case, g, &out, "stale", "snap/db");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_ahead_of_backups_is_valid_and_untouched() {
    init_logs();
    for v in EtcdVersion::ALL {
        let g = golden(v);
        let case = Case::from(Some(&g.late));
        let before: Vec<_> = fs::read_dir(&case.data_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        let db_before = fs::read(case.member().join("snap/db")).unwrap();
        for mode in [Mode::Sanity, Mode::Full] {
            let out = case.initialize(g, mode).await.unwrap();
            assert_eq!(
                out.validation.verdict,
                Verdict::Ahead { db_revision: g.r3, backup_revision: g.r2 },
                "{v:?} {mode}: {:?}",
                out.validation.findings
            );
            assert!(out.validation.damage().next().is_none());
            assert!(matches!(out.action, Action::Nothing));
        }
        let after: Vec<_> = fs::read_dir(&case.data_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(before, after, "nothing added or moved");
        assert_eq!(db_before, fs::read(case.member().join("snap/db")).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_store_and_no_data_dir_is_a_fresh_start() {
    init_logs();
    let empty = tempfile::tempdir().unwrap();
    let case = Case::from(None);
    let out =
        Initializer::new(store_at(empty.path())).initialize(&case.options("etcd-main", Mode::Full)).await.unwrap();
    assert_eq!(out.validation.verdict.reference_status(), "DataDirectoryNotExist");
    assert!(matches!(out.action, Action::FreshStart), "{:?}", out.action);
    assert!(!case.member().exists());
    // And etcd does start empty on it.
    let etcd = Etcd::start_on(EtcdVersion::V3_5, &case.data_dir, "default", case.peer_port, case.client_port);
    assert_eq!(etcd.revision(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_data_without_backups_is_set_aside_for_a_fresh_start() {
    init_logs();
    let g = golden(EtcdVersion::V3_4);
    let case = Case::from(Some(&g.late));
    fs::write(case.member().join("snap/db"), b"corrupt file..").unwrap();
    let out = Initializer::without_store().initialize(&case.options("etcd-main", Mode::Sanity)).await.unwrap();
    assert!(matches!(out.validation.verdict, Verdict::Corrupt { .. }), "{:?}", out.validation.verdict);
    assert!(matches!(out.action, Action::FreshStart));
    let aside = out.set_aside.expect("kept aside");
    assert_eq!(fs::read(aside.join("snap/db")).unwrap(), b"corrupt file..");
    assert!(!case.member().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_member_invalid_data_dir_is_refused_untouched() {
    init_logs();
    let g = golden(EtcdVersion::V3_4);
    let case = Case::from(Some(&g.early));
    fs::remove_dir_all(case.member().join("wal")).unwrap();
    let mut opts = case.options(&g.prefix, Mode::Sanity);
    opts.plan.cluster = Cluster::from_initial_cluster(
        "default=http://127.0.0.1:2380,other=http://127.0.0.2:2380,third=http://127.0.0.3:2380",
        "etcd-cluster",
    )
    .unwrap();
    let err = Initializer::new(store_at(&g.container)).initialize(&opts).await.unwrap_err();
    assert!(matches!(err, InitError::MultiMember { members: 3, .. }), "{err}");
    assert!(err.to_string().contains("learner"), "{err}");
    assert!(case.member().join("snap/db").exists(), "nothing moved");
    // A multi-member data dir behind the backups is not stale: followers resync from the leader.
    let case = Case::from(Some(&g.early));
    opts.plan.data_dir = case.data_dir.clone();
    let out = Initializer::new(store_at(&g.container)).initialize(&opts).await.unwrap();
    assert!(matches!(out.action, Action::Nothing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_volume_is_refused() {
    init_logs();
    let g = golden(EtcdVersion::V3_4);
    let case = Case::from(Some(&g.late));
    fs::remove_dir_all(case.member()).unwrap();
    fs::write(case.data_dir.parent().unwrap().join("safe_guard"), "shoot--other").unwrap();
    let mut opts = case.options(&g.prefix, Mode::Sanity);
    opts.namespace = Some("shoot--mine".into());
    let err = Initializer::new(store_at(&g.container)).initialize(&opts).await.unwrap_err();
    match err {
        InitError::Untouchable { verdict: Verdict::WrongVolume { expected, found, .. } } => {
            assert_eq!((expected.as_str(), found.as_str()), ("shoot--mine", "shoot--other"));
        }
        other => panic!("{other}"),
    }
    assert!(!case.member().exists(), "no restore happened");
}

#[test]
fn garbage_never_panics_and_sanity_stays_quiet_on_a_healthy_dir() {
    init_logs();
    let g = golden(EtcdVersion::V3_5);
    for mode in [Mode::Sanity, Mode::Full] {
        let r = validate(&g.late, mode, Some(g.r3)).unwrap();
        assert_eq!(r.verdict, Verdict::Valid, "{mode}: {:?}", r.findings);
        assert!(r.findings.iter().all(|f| f.severity == Severity::Note), "{:?}", r.findings);
        assert_eq!(r.db_revision, Some(g.r3));
    }
    // Every file of the member dir replaced by garbage, one at a time.
    let files = ["snap/db", "wal/0000000000000000-0000000000000000.wal"];
    for file in files {
        for garbage in [vec![], vec![0u8; 4096], (0..20000u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>()] {
            let case = Case::from(Some(&g.late));
            fs::write(case.member().join(file), &garbage).unwrap();
            let r = validate(&case.data_dir, Mode::Full, Some(g.r2)).unwrap();
            assert!(matches!(r.verdict, Verdict::Corrupt { .. }), "{file} {}: {:?}", garbage.len(), r.verdict);
        }
    }
}

#[test]
fn a_db_behind_its_own_wal_after_a_crash_is_not_stale() {
    init_logs();
    for v in EtcdVersion::ALL {
        let mut etcd = Etcd::start(v);
        put_many(&etcd, 0, 40);
        let rev = etcd.revision();
        // SIGKILL: etcd commits bbolt in batches, so the db usually misses the last entries,
        // which only the WAL holds. A backup taken at `rev` must not make this dir "stale".
        etcd.kill();
        for mode in [Mode::Sanity, Mode::Full] {
            let r = validate(etcd.data_dir(), mode, Some(rev)).unwrap();
            assert!(r.verdict.is_valid(), "{v:?} {mode}: {} {:?}", r.verdict, r.findings);
            let db_rev = r.db_revision.unwrap();
            if db_rev < rev {
                assert!(
                    r.findings.iter().any(|f| f.reason.contains("trusting the WAL")),
                    "{v:?}: the db at {db_rev} trails {rev}: {:?}",
                    r.findings
                );
            }
            eprintln!("{v:?} {mode}: db at {db_rev}, etcd had {rev}: {}", r.verdict);
        }
        // And etcd agrees: it boots and serves every write.
        let dir = etcd.data_dir().to_path_buf();
        let etcd2 = Etcd::start_on(v, &dir, "default", peer_port(&etcd), free_port());
        assert_eq!(etcd2.revision(), rev);
    }
}
