//! Snapshot names: every name real `etcdbrctl` binaries wrote, and round trips over many
//! generated names in every shape the reference can produce.

use std::fs;

use brcore::name::{Compression, Layout, Snapshot, SnapshotKind, SnapshotName};

/// A small deterministic generator (64-bit LCG), so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 ^ (self.0 >> 29)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A number with a random count of decimal digits (1 to 19), within i64.
    fn number(&mut self) -> u64 {
        let digits = 1 + self.below(19) as u32;
        let max = 10u64.saturating_pow(digits).min(i64::MAX as u64);
        self.below(max)
    }
}

#[test]
fn every_real_object_name_parses_and_prints_back_identically() {
    let mut seen = 0;
    for store in fs::read_dir(testsupport::go_testdata()).unwrap() {
        let v2 = store.unwrap().path().join("store/v2");
        if !v2.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&v2).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            let name = SnapshotName::parse(&file).unwrap();
            assert_eq!(name.to_string(), file);
            assert_eq!(name.compression, Compression::Gzip);
            assert!(!name.is_final);
            let key = format!("etcd-main/v2/{file}");
            let snap = Snapshot::parse_key(&key, 42).unwrap();
            assert_eq!(
                (snap.prefix.as_str(), &snap.layout, snap.is_chunk, snap.size),
                ("etcd-main", &Layout::V2, false, 42)
            );
            assert_eq!(snap.name, name);
            assert_eq!(name.key_v2("etcd-main"), key);
            match name.kind {
                SnapshotKind::Full => assert_eq!(name.start_revision, 0),
                SnapshotKind::Incr => assert!(name.start_revision > 166),
            }
            seen += 1;
        }
    }
    assert!(seen >= 21, "only {seen} objects found under {}", testsupport::go_testdata().display());
}

#[test]
fn generated_names_round_trip_in_every_shape() {
    let mut rng = Lcg(0x5eed);
    for _ in 0..20_000 {
        let kind = if rng.below(2) == 0 { SnapshotKind::Full } else { SnapshotKind::Incr };
        let a = rng.number();
        let b = rng.number();
        let (start, last) = match kind {
            SnapshotKind::Full => (0, a.max(b)),
            SnapshotKind::Incr => (a.min(b), a.max(b)),
        };
        let name = SnapshotName {
            kind,
            start_revision: start,
            last_revision: last,
            created_on: rng.number() as i64,
            compression: Compression::ALL[rng.below(Compression::ALL.len() as u64) as usize],
            is_final: rng.below(3) == 0,
        };
        let text = name.to_string();
        // The reference's format: %s-%08d-%08d-%d%s%s.
        let expected = format!(
            "{}-{:08}-{:08}-{}{}{}",
            kind.as_str(),
            start,
            last,
            name.created_on,
            name.compression.suffix(),
            if name.is_final { ".final" } else { "" }
        );
        assert_eq!(text, expected);
        assert_eq!(SnapshotName::parse(&text).unwrap(), name, "{text}");

        // The same name in every key shape.
        let prefix = ["", "etcd-main", "a/b/c", "shoot--x--y/etcd-events"][rng.below(4) as usize];
        let join = |rest: &str| {
            if prefix.is_empty() { rest.to_string() } else { format!("{prefix}/{rest}") }
        };
        let v2 = Snapshot::parse_key(&join(&format!("v2/{text}")), 1).unwrap();
        assert_eq!((v2.name.clone(), v2.prefix.as_str(), v2.is_chunk), (name.clone(), prefix, false));
        let chunk = Snapshot::parse_key(&join(&format!("v2/{text}/{:010}", rng.below(10_000))), 1).unwrap();
        assert!(chunk.is_chunk && chunk.name == name);
        let v1 = Snapshot::parse_key(&join(&format!("v1/Backup-{}/{text}", name.created_on)), 1).unwrap();
        assert_eq!(v1.layout, Layout::V1 { backup_dir: format!("Backup-{}", name.created_on) });
        assert!(!v1.is_chunk && v1.name == name && v1.prefix == prefix);
        let v1chunk = Snapshot::parse_key(&join(&format!("v1/Backup-1/{text}/0000000001")), 1).unwrap();
        assert!(v1chunk.is_chunk);
    }
}

#[test]
fn mangled_names_are_rejected_without_panicking() {
    let mut rng = Lcg(7);
    let base = "Incr-00000167-00000168-1795607413.gz.final";
    let alphabet = b"-./0123456789FIZcfgilnrsuxz\xc3\xa9";
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut bytes = base.as_bytes().to_vec();
        for _ in 0..1 + rng.below(3) {
            let pos = rng.below(bytes.len() as u64 + 1) as usize;
            match rng.below(3) {
                0 if pos < bytes.len() => {
                    bytes.remove(pos);
                }
                1 if pos < bytes.len() => bytes[pos] = alphabet[rng.below(alphabet.len() as u64) as usize],
                _ => bytes.insert(pos, alphabet[rng.below(alphabet.len() as u64) as usize]),
            }
        }
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        for candidate in [text.clone(), format!("p/v2/{text}"), format!("p/v1/{text}")] {
            let parsed = if candidate == text {
                SnapshotName::parse(&candidate).ok()
            } else {
                Snapshot::parse_key(&candidate, 0).ok().map(|s| s.name)
            };
            if let Some(name) = parsed {
                // Whatever is accepted is a real name: it prints as a canonical name that parses
                // to the same value, and its revisions are ordered.
                assert!(name.start_revision <= name.last_revision, "{candidate}");
                assert_eq!(SnapshotName::parse(&name.to_string()).unwrap(), name, "{candidate}");
                accepted += 1;
            }
        }
    }
    assert!(accepted > 0, "some mutations (e.g. digit changes) stay valid");
}
