//! Snapshot object names and keys, exactly as the reference `etcdbrctl` writes and parses them.
//!
//! A name is `<Kind>-<start>-<last>-<created_on><compression suffix><final suffix>`, e.g.
//! `Full-00000000-00000166-1795607409.gz` or `Incr-00000167-00000168-1795607413.gz.final`:
//! revisions are zero-padded to at least 8 digits (larger numbers simply get longer, so lexical
//! order is not revision order), `created_on` is unix seconds (UTC), the compression suffix is
//! `.gz`, `.Z` (lzw) or `.zlib` (or nothing), or etcdbr's own `.zst` (zstd, which the Go tool
//! cannot read), and `.final` marks the snapshot taken before a shutdown; it comes after the
//! compression suffix.
//!
//! Keys put the name under a layout directory: `<prefix>/v2/<name>` (current) or
//! `<prefix>/v1/Backup-<unix>/<name>` (legacy, still read). Providers that upload in parts
//! (GCS, Swift) leave part objects `<name>/<part>` next to the object: those are *chunks*,
//! recognised and flagged so they are never mistaken for snapshots.
//!
//! `.lz4` is not a suffix the reference writes or reads (its `IsSnapshotCompressed` knows `.gz`,
//! `.Z`, `.zlib` and none), so it is rejected here too.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// The two kinds of snapshot objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SnapshotKind {
    /// A complete copy of etcd's database (`Full-…`): the bbolt file plus its sha256 trailer.
    Full,
    /// The watch events after the previous snapshot (`Incr-…`): JSON plus its sha256 trailer.
    Incr,
}

impl SnapshotKind {
    /// The word used in names: `Full` or `Incr`.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Full => "Full",
            SnapshotKind::Incr => "Incr",
        }
    }
}

impl fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an object's content is compressed, named by its suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Stored as is (no suffix).
    #[default]
    None,
    /// gzip, suffix `.gz` (the reference's default policy).
    Gzip,
    /// LZW as Go's `compress/lzw` writes it (LSB bit order, literal width 8), suffix `.Z`.
    Lzw,
    /// zlib (RFC 1950), suffix `.zlib`.
    Zlib,
    /// Zstandard (RFC 8878), suffix `.zst`: etcdbr's own opt-in policy, not the reference's. The
    /// Go etcdbrctl cannot read these objects: it parses their names, but its restore stops on
    /// the unknown suffix.
    Zstd,
}

impl Compression {
    /// Every variant, for callers that enumerate them (tests, `--help`).
    pub const ALL: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Lzw, Compression::Zlib, Compression::Zstd];

    /// The suffix appended to names: `""`, `.gz`, `.Z`, `.zlib` or `.zst`.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Lzw => ".Z",
            Compression::Zlib => ".zlib",
            Compression::Zstd => ".zst",
        }
    }

    /// The compression a suffix (including its dot) stands for; `None` for an unknown suffix.
    pub fn from_suffix(suffix: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.suffix() == suffix)
    }

    /// The `--compression-policy` word: the reference's `gzip`, `lzw` or `zlib`, or etcdbr's
    /// `zstd` (`None` has none).
    pub fn policy(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Lzw => Some("lzw"),
            Compression::Zlib => Some("zlib"),
            Compression::Zstd => Some("zstd"),
        }
    }

    /// Parses a `--compression-policy` value (`gzip`, `lzw`, `zlib`, `zstd`), spelled exactly
    /// as [`Compression::policy`] prints it.
    pub fn from_policy(policy: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.policy() == Some(policy))
    }

    /// Whether the Go etcdbrctl reads objects of this compression (every policy but `zstd`).
    pub fn go_readable(self) -> bool {
        self != Compression::Zstd
    }
}

/// The suffix that marks a snapshot taken right before a shutdown.
pub const FINAL_SUFFIX: &str = ".final";

/// A name or key that is not a snapshot object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a snapshot name: {why}")]
pub struct NameError {
    /// The name or key that was parsed.
    pub input: String,
    /// What is wrong with it.
    pub why: String,
}

fn bad(input: &str, why: impl Into<String>) -> NameError {
    NameError { input: input.to_string(), why: why.into() }
}

/// The parsed name of one snapshot object (without its directory).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotName {
    /// Full or delta.
    pub kind: SnapshotKind,
    /// First revision covered: 0 for a full snapshot, previous snapshot's last + 1 for a delta.
    pub start_revision: u64,
    /// Last revision covered: the revision the full snapshot was taken at, or the mod revision of
    /// a delta's last event.
    pub last_revision: u64,
    /// When the object was created, in unix seconds (UTC).
    pub created_on: i64,
    /// How the content is compressed.
    pub compression: Compression,
    /// Whether this is the snapshot taken before a shutdown (`.final`).
    pub is_final: bool,
}

impl SnapshotName {
    /// Parses a name such as `Full-00000000-00000166-1795607409.gz.final`.
    ///
    /// Accepts what the reference's `ParseSnapshot` accepts for the object names it writes:
    /// exactly four `-`-separated fields, kind `Full` or `Incr`, decimal revisions with
    /// `start <= last`, and a decimal timestamp followed by an optional known compression suffix
    /// and an optional `.final`. Fewer than 8 digits are accepted (the padding is a minimum).
    pub fn parse(name: &str) -> Result<SnapshotName, NameError> {
        let fields: Vec<&str> = name.split('-').collect();
        let [kind, start, last, rest] = fields.as_slice() else {
            return Err(bad(name, format!("expected 4 fields separated by '-', found {}", fields.len())));
        };
        let kind = match *kind {
            "Full" => SnapshotKind::Full,
            "Incr" => SnapshotKind::Incr,
            other => {
                return Err(bad(name, format!("unknown kind {other:?} (expected Full or Incr)")));
            }
        };
        let start_revision =
            parse_number(start).ok_or_else(|| bad(name, format!("invalid start revision {start:?}")))?;
        let last_revision = parse_number(last).ok_or_else(|| bad(name, format!("invalid last revision {last:?}")))?;
        if start_revision > last_revision {
            return Err(bad(name, format!("start revision {start_revision} is above last revision {last_revision}")));
        }
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (time, mut suffixes) = rest.split_at(digits);
        let created_on = parse_number(time).ok_or_else(|| bad(name, format!("invalid creation time {time:?}")))?;
        let is_final = match suffixes.strip_suffix(FINAL_SUFFIX) {
            Some(before) => {
                suffixes = before;
                true
            }
            None => false,
        };
        let compression = Compression::from_suffix(suffixes).ok_or_else(|| {
            bad(
                name,
                format!("unknown suffix {suffixes:?} (expected .gz, .Z, .zlib, .zst or none, then optionally .final)"),
            )
        })?;
        Ok(SnapshotName { kind, start_revision, last_revision, created_on: created_on as i64, compression, is_final })
    }

    /// The v2 store key of this name under `prefix` (`<prefix>/v2/<name>`, or `v2/<name>` for an
    /// empty prefix): where new snapshots are uploaded.
    pub fn key_v2(&self, prefix: &str) -> String {
        format!("{}{self}", v2_dir(prefix))
    }
}

/// The directory `dir` under the store prefix `prefix`, with a trailing `/`: `<prefix>/<dir>/`,
/// or `<dir>/` for an empty prefix (a trailing `/` of the prefix is dropped, as the reference's
/// `path.Join` does). Every directory of the layout (`v2`, `v1`, the staging directory) is
/// joined here.
pub fn prefix_dir(prefix: &str, dir: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() { format!("{dir}/") } else { format!("{prefix}/{dir}/") }
}

/// `<prefix>/v2/`: the directory of the reference's layout where snapshots (and our lease
/// sidecars) are written.
pub fn v2_dir(prefix: &str) -> String {
    prefix_dir(prefix, "v2")
}

/// `<prefix>/v1/`: the legacy layout's directory, read but never written.
pub fn v1_dir(prefix: &str) -> String {
    prefix_dir(prefix, "v1")
}

/// Parses a decimal number of at most i64::MAX (what Go's `strconv.ParseInt(s, 10, 64)` accepts,
/// minus signs, which never occur in names the reference writes).
fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|&n| n <= i64::MAX as u64)
}

impl fmt::Display for SnapshotName {
    /// Writes the name as the reference does: `%s-%08d-%08d-%d%s%s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{:08}-{:08}-{}{}{}",
            self.kind,
            self.start_revision,
            self.last_revision,
            self.created_on,
            self.compression.suffix(),
            if self.is_final { FINAL_SUFFIX } else { "" }
        )
    }
}

impl FromStr for SnapshotName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SnapshotName::parse(s)
    }
}

/// Which directory layout an object was found in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Legacy: `<prefix>/v1/<backup_dir>/<name>`, one directory per full snapshot's set.
    V1 {
        /// The set's directory, `Backup-<unix>`.
        backup_dir: String,
    },
    /// Current: `<prefix>/v2/<name>`.
    V2,
}

/// One object found in a store: a snapshot, or a chunk (upload part) of one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Snapshot {
    /// The parsed name (for a chunk: the name of the snapshot it belongs to).
    pub name: SnapshotName,
    /// The full store key, as listed.
    pub key: String,
    /// The store prefix before the layout directory, without a trailing `/`
    /// (`etcd-main` for `etcd-main/v2/Full-…`; empty for `v2/Full-…`).
    pub prefix: String,
    /// Object size in bytes.
    pub size: u64,
    /// v1 or v2 layout.
    pub layout: Layout,
    /// Whether this is a part object `<name>/<part>` left by a multi-part upload (GCS compose
    /// components, Swift segments) rather than a snapshot.
    pub is_chunk: bool,
}

impl Snapshot {
    /// The object just stored as `name` under `prefix` in the v2 layout (at
    /// [`SnapshotName::key_v2`]), `size` bytes long.
    pub fn new_v2(prefix: &str, name: SnapshotName, size: u64) -> Snapshot {
        Snapshot {
            key: name.key_v2(prefix),
            prefix: prefix.trim_end_matches('/').to_string(),
            name,
            size,
            layout: Layout::V2,
            is_chunk: false,
        }
    }

    /// Parses a store key following the reference's `ParseSnapshot`: the last `v1/` or `v2/`
    /// directory splits prefix and name; after `v2/` comes `<name>` or a chunk `<name>/<part>`;
    /// after `v1/` comes `<backup_dir>/<name>` or `<backup_dir>/<name>/<part>`.
    ///
    /// One deliberate difference: the reference matches `v1/` anywhere (also inside `myv1/`) and
    /// prefers any `v1/` over a later `v2/`; here the layout directory must be a whole path
    /// segment and the last one wins, so prefixes such as `etcd-v1/` do not confuse it.
    pub fn parse_key(key: &str, size: u64) -> Result<Snapshot, NameError> {
        let (dir_at, layout_v1) = find_layout_dir(key).ok_or_else(|| bad(key, "no v1/ or v2/ directory in the key"))?;
        let prefix = key[..dir_at].trim_end_matches('/').to_string();
        let rest = &key[dir_at + 3..];
        let parts: Vec<&str> = rest.split('/').collect();
        let (layout, name, is_chunk) = if layout_v1 {
            match parts.as_slice() {
                [dir, name] => (Layout::V1 { backup_dir: dir.to_string() }, *name, false),
                [dir, name, part] if !part.is_empty() => (Layout::V1 { backup_dir: dir.to_string() }, *name, true),
                _ => return Err(bad(key, "a v1 key must be v1/<Backup-dir>/<name>[/<part>]")),
            }
        } else {
            match parts.as_slice() {
                [name] => (Layout::V2, *name, false),
                [name, part] if !part.is_empty() => (Layout::V2, *name, true),
                _ => return Err(bad(key, "a v2 key must be v2/<name>[/<part>]")),
            }
        };
        if let Layout::V1 { backup_dir } = &layout
            && backup_dir.is_empty()
        {
            return Err(bad(key, "empty v1 backup directory"));
        }
        let name = SnapshotName::parse(name).map_err(|e| bad(key, e.why))?;
        Ok(Snapshot { name, key: key.to_string(), prefix, size, layout, is_chunk })
    }

    /// Orders snapshots as the reference's `SnapList.Less` does: by last revision; on a tie
    /// snapshots before chunks, snapshots by creation time. The key breaks remaining ties so the
    /// order is total and deterministic (the reference's unstable sort leaves them arbitrary).
    pub fn reference_order(a: &Snapshot, b: &Snapshot) -> Ordering {
        a.name
            .last_revision
            .cmp(&b.name.last_revision)
            .then(a.is_chunk.cmp(&b.is_chunk))
            .then_with(|| if a.is_chunk { Ordering::Equal } else { a.name.created_on.cmp(&b.name.created_on) })
            .then_with(|| a.key.cmp(&b.key))
    }
}

/// Finds the last `v1/` or `v2/` path segment; returns its byte offset and whether it is v1.
fn find_layout_dir(key: &str) -> Option<(usize, bool)> {
    let bytes = key.as_bytes();
    (0..bytes.len().saturating_sub(2)).rev().find_map(|i| {
        let seg = &bytes[i..i + 3];
        let at_boundary = i == 0 || bytes[i - 1] == b'/';
        match seg {
            b"v1/" if at_boundary => Some((i, true)),
            b"v2/" if at_boundary => Some((i, false)),
            _ => None,
        }
    })
}

/// Parses every key of a listing that is a snapshot or chunk, in the reference's order, and
/// returns the keys that are not (the reference logs and ignores them; so do callers).
pub fn parse_listing<'a>(
    listing: impl IntoIterator<Item = (&'a str, u64)>,
) -> (Vec<Snapshot>, Vec<(String, NameError)>) {
    let mut snaps = Vec::new();
    let mut ignored = Vec::new();
    for (key, size) in listing {
        match Snapshot::parse_key(key, size) {
            Ok(s) => snaps.push(s),
            Err(e) => ignored.push((key.to_string(), e)),
        }
    }
    snaps.sort_by(Snapshot::reference_order);
    (snaps, ignored)
}

/// Checks a store prefix (`--store-prefix`) before anything is read or written under it: the
/// keys are `<prefix>/v2/<name>`, so a prefix must be `/`-separated names without a leading
/// `/`, `.` or `..`, empty segments, or characters object stores and filesystems treat
/// differently. One trailing `/` is allowed (it is dropped, as the reference's `path.Join`
/// does). Returns why not, and the spelling meant where it can tell.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    let suggestion = || {
        let clean: Vec<&str> =
            prefix.split(['/', '\\']).map(str::trim).filter(|s| !s.is_empty() && *s != "." && *s != "..").collect();
        if clean.is_empty() { "no prefix at all".to_string() } else { format!("{:?}", clean.join("/")) }
    };
    if prefix.trim() != prefix {
        return Err(format!("it has spaces around it; did you mean {}?", suggestion()));
    }
    if prefix.chars().any(|c| c.is_control() || c == '\\') {
        return Err("it holds a backslash or a control character".to_string());
    }
    if prefix.starts_with('/') {
        return Err(format!(
            "it starts with '/', which would put a '/' at the start of every object key (an S3 or \
             Azure key differs from the same name without it); did you mean {}?",
            suggestion()
        ));
    }
    let body = prefix.strip_suffix('/').unwrap_or(prefix);
    for segment in body.split('/') {
        match segment {
            "" => return Err(format!("it has an empty path segment ('//'); did you mean {}?", suggestion())),
            "." | ".." => {
                return Err(format!(
                    "it has a {segment:?} path segment, which an object store keeps as a name but a \
                     directory resolves; did you mean {}?",
                    suggestion()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_examples() {
        let n = SnapshotName::parse("Full-00000000-00000009-1795606904.gz.final").unwrap();
        assert_eq!(n.kind, SnapshotKind::Full);
        assert_eq!((n.start_revision, n.last_revision, n.created_on), (0, 9, 1795606904));
        assert_eq!(n.compression, Compression::Gzip);
        assert!(n.is_final);
        let n = SnapshotName::parse("Full-00000000-3607431063-1795606904").unwrap();
        assert_eq!(n.last_revision, 3607431063);
        assert_eq!(n.compression, Compression::None);
        assert!(!n.is_final);
        let n = SnapshotName::parse("Incr-5-8-12.final").unwrap();
        assert_eq!((n.start_revision, n.compression, n.is_final), (5, Compression::None, true));
        assert_eq!(n.to_string(), "Incr-00000005-00000008-12.final");
        assert_eq!(SnapshotName::parse("Incr-1-2-3.Z").unwrap().compression, Compression::Lzw);
        assert_eq!(SnapshotName::parse("Incr-1-2-3.zlib").unwrap().compression, Compression::Zlib);
    }

    #[test]
    fn zstd_names_parse_print_and_stay_apart_from_the_references() {
        let n = SnapshotName::parse("Full-00000000-00000166-1795607409.zst").unwrap();
        assert_eq!(
            (n.kind, n.last_revision, n.compression, n.is_final),
            (SnapshotKind::Full, 166, Compression::Zstd, false)
        );
        assert_eq!(n.to_string(), "Full-00000000-00000166-1795607409.zst");
        let n = SnapshotName::parse("Incr-00000167-00000168-1795607413.zst.final").unwrap();
        assert_eq!((n.kind, n.compression, n.is_final), (SnapshotKind::Incr, Compression::Zstd, true));
        assert_eq!(n.to_string(), "Incr-00000167-00000168-1795607413.zst.final");
        let s = Snapshot::parse_key("p/v2/Incr-00000167-00000168-1795607413.zst", 7).unwrap();
        assert_eq!(s.name.compression, Compression::Zstd);
        // Only the exact suffix, in its place.
        for bad in
            ["Full-0-1-2.zstd", "Full-0-1-2.ZST", "Full-0-1-2.final.zst", "Full-0-1-2.zst.zst", "Full-0-1-2.zst.gz"]
        {
            let e = SnapshotName::parse(bad).unwrap_err();
            assert!(e.why.contains(".zst"), "{bad}: {e}");
        }
        // The policy word and the suffix go together; only zstd is etcdbr's own.
        assert_eq!(Compression::from_policy("zstd"), Some(Compression::Zstd));
        assert_eq!(Compression::from_suffix(".zst"), Some(Compression::Zstd));
        for c in Compression::ALL {
            assert_eq!(c.policy().and_then(Compression::from_policy), c.policy().map(|_| c));
            assert_eq!(c.go_readable(), c != Compression::Zstd);
        }
        for unknown in ["ZSTD", "zst", "lz4", "gzip ", ""] {
            assert_eq!(Compression::from_policy(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_name() {
        for bad in [
            "Full-00000000-00000009",
            "Full-00000000-00000009-1-2",
            "Chunk-00000000-00000009-1795606904",
            "Full-00000010-00000009-1795606904",
            "Full-0000000a-00000009-1795606904",
            "Full-00000000-00000009-",
            "Full-00000000-00000009-17956.lz4",
            "Full-00000000-00000009-17956.final.gz",
            "Full-00000000-00000009-17956.gz.final.final",
            "Full--00000009-17956",
            "Full-00000000-99999999999999999999-1",
        ] {
            assert!(SnapshotName::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn keys_in_both_layouts_and_chunks() {
        let s = Snapshot::parse_key("etcd-main/v2/Full-00000000-00000166-1795607409.gz", 10).unwrap();
        assert_eq!((s.prefix.as_str(), &s.layout, s.is_chunk, s.size), ("etcd-main", &Layout::V2, false, 10));
        let s = Snapshot::parse_key("a/b/v2/Full-00000000-00000166-1795607409.gz/0000000003", 1).unwrap();
        assert_eq!((s.prefix.as_str(), s.is_chunk), ("a/b", true));
        assert_eq!(s.name.last_revision, 166);
        let s = Snapshot::parse_key("p/v1/Backup-1795607000/Incr-00000167-00000168-1795607413", 1).unwrap();
        assert_eq!(s.layout, Layout::V1 { backup_dir: "Backup-1795607000".into() });
        assert!(!s.is_chunk);
        let s = Snapshot::parse_key("p/v1/Backup-1/Full-00000000-00000001-2/0000000001", 1).unwrap();
        assert!(s.is_chunk);
        let s = Snapshot::parse_key("v2/Incr-00000001-00000002-3", 1).unwrap();
        assert_eq!(s.prefix, "");
        // A later v2/ wins over an earlier v1/, and a v1/ inside a segment does not count.
        let s = Snapshot::parse_key("x/v1/y/v2/Full-00000000-00000001-2", 1).unwrap();
        assert_eq!((s.prefix.as_str(), &s.layout), ("x/v1/y", &Layout::V2));
        let s = Snapshot::parse_key("etcd-v1/v2/Full-00000000-00000001-2", 1).unwrap();
        assert_eq!(s.prefix, "etcd-v1");
        for bad in [
            "etcd-main/Full-00000000-00000001-2",
            "p/v2/a/b/Full-00000000-00000001-2",
            "p/v2/Full-00000000-00000001-2/",
            "p/v1/Full-00000000-00000001-2",
            "p/v2/",
            "p/v2/notes.txt",
        ] {
            assert!(Snapshot::parse_key(bad, 0).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn reference_order_sorts_by_last_revision_then_chunks_then_time() {
        let keys = [
            ("p/v2/Incr-00000101-00000200-50", 1u64),
            ("p/v2/Full-00000000-00000100-40/0000000001", 1),
            ("p/v2/Full-00000000-00000100-40", 1),
            ("p/v2/Incr-00000090-00000100-30", 1),
            ("p/v2/Full-00000000-1000000000-60", 1),
            ("p/v2/junk", 1),
        ];
        let (snaps, ignored) = parse_listing(keys.iter().map(|(k, s)| (*k, *s)));
        let order: Vec<&str> = snaps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            order,
            [
                "p/v2/Incr-00000090-00000100-30",
                "p/v2/Full-00000000-00000100-40",
                "p/v2/Full-00000000-00000100-40/0000000001",
                "p/v2/Incr-00000101-00000200-50",
                "p/v2/Full-00000000-1000000000-60",
            ]
        );
        assert_eq!(ignored.len(), 1);
        assert_eq!(ignored[0].0, "p/v2/junk");
    }

    #[test]
    fn v2_keys_for_new_uploads() {
        let n = SnapshotName::parse("Full-00000000-00000001-2.gz").unwrap();
        assert_eq!(n.key_v2("etcd-main"), "etcd-main/v2/Full-00000000-00000001-2.gz");
        assert_eq!(n.key_v2("etcd-main/"), "etcd-main/v2/Full-00000000-00000001-2.gz");
        assert_eq!(n.key_v2(""), "v2/Full-00000000-00000001-2.gz");
    }

    #[test]
    fn prefixes_are_plain_relative_names() {
        for ok in ["", "etcd-main", "etcd-main/", "shoot--a--b/etcd-main", "a.b/c..d"] {
            assert_eq!(check_prefix(ok), Ok(()), "{ok:?}");
        }
        for (bad, meant) in [
            ("/p", "\"p\""),
            ("./p", "\"p\""),
            ("p/.", "\"p\""),
            ("p//q", "\"p/q\""),
            ("../p", "\"p\""),
            ("p/../q", "\"p/q\""),
            (" p", "\"p\""),
            ("/", "no prefix at all"),
        ] {
            let why = check_prefix(bad).expect_err(bad);
            assert!(why.contains(meant), "{bad:?}: {why}");
        }
        assert!(check_prefix("p\\q").is_err());
        assert!(check_prefix("p\nq").is_err());
    }
}
