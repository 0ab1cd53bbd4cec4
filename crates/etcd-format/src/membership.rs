//! Cluster membership as etcd's snapshot restore builds it, and the member files it writes.
//!
//! From `--initial-cluster name=url,...` and `--initial-cluster-token` this computes the member
//! and cluster IDs exactly as etcd does (`membership/member.go newMember`, `cluster.go genID`),
//! renders the JSON etcd stores for each member (`json.Marshal(Member)`, Go's escaping included),
//! and the v2 store JSON a restored `.snap` file carries. [`write_member_files`] then writes a new
//! member's WAL and snap file the way `etcdutl snapshot restore` 3.5 does; the restore writes
//! `member/snap/db` itself (before the member files), filling the `members` bucket from
//! [`Cluster::members_bucket_entries`] and `meta` from [`Cluster::restore_meta`], the values the
//! member files carry too ([`MemberFiles`]).
//!
//! URLs must already be in the canonical form Go's `url.URL.String()` would print
//! (`scheme://host:port`, no path, query, fragment or user info): the hash is taken over that
//! string, so accepting anything else could silently give IDs that differ from etcd's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};
use thiserror::Error;

use crate::raftpb::ConfState;
use crate::snap::SnapError;
use crate::wal::WalError;

/// Why a cluster could not be built or its member files written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// A URL etcd would reject, or one whose canonical form differs from the input.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (after trimming spaces).
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `--initial-cluster` string has an entry without a name.
    #[error("invalid initial-cluster entry {entry:?}: {reason}")]
    InvalidInitialCluster {
        /// The offending `name=url` entry.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `--initial-cluster` string names no member at all.
    #[error("the initial cluster names no member")]
    NoMembers,
    /// A member has no peer URL.
    #[error("member {name:?} has no peer URL")]
    NoPeerUrls {
        /// The member's name.
        name: String,
    },
    /// Two members hash to the same ID (same peer URLs), which etcd rejects.
    #[error("members {first:?} and {second:?} have the same ID {id:x} (identical peer URLs?)")]
    DuplicateId {
        /// The ID both members got.
        id: u64,
        /// One member's name.
        first: String,
        /// The other member's name.
        second: String,
    },
    /// A member ID of 0, which etcd reserves for "none".
    #[error("member {name:?} hashes to the reserved ID 0")]
    ZeroId {
        /// The member's name.
        name: String,
    },
    /// The member this data dir is for is not in the cluster.
    #[error("member {name:?} is not in the initial cluster")]
    UnknownMember {
        /// The requested name.
        name: String,
    },
    /// Two members have the same name, which `write_member_files` cannot resolve.
    #[error("more than one member is named {name:?}")]
    AmbiguousName {
        /// The repeated name.
        name: String,
    },
    /// Writing the WAL failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// Writing the snap file failed.
    #[error(transparent)]
    Snap(#[from] SnapError),
    /// Creating a directory failed.
    #[error("creating {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Checks that `raw` (spaces trimmed, as `types.NewURLs` does) is a peer/client URL etcd accepts
/// and that it is already in canonical form, and returns it.
///
/// etcd requires a scheme of http, https, unix or unixs, a `host:port` authority and an empty
/// path. This also rejects what Go would rewrite (an upper-case scheme) and what we do not need
/// (user info, query, fragment, percent escapes), so the hashed string is exactly the input.
pub fn canonical_url(raw: &str) -> Result<String, MembershipError> {
    let url = raw.trim();
    let bad = |reason| MembershipError::InvalidUrl { url: url.to_string(), reason };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("expected scheme://host:port"));
    };
    match scheme {
        "http" | "https" | "unix" | "unixs" => {}
        s if matches!(s.to_ascii_lowercase().as_str(), "http" | "https" | "unix" | "unixs") => {
            return Err(bad("scheme must be lower case (Go would rewrite it)"));
        }
        _ => return Err(bad("URL scheme must be http, https, unix, or unixs")),
    }
    if rest.contains('/') {
        return Err(bad("URL must not contain a path"));
    }
    if rest.contains(['?', '#', '@', '%']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("URL must be plain scheme://host:port (no user info, query, fragment or escapes)"));
    }
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Err(bad("unterminated IPv6 literal"));
        };
        if v6.is_empty() || !v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return Err(bad("invalid IPv6 literal"));
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err(bad("URL address does not have the form \"host:port\""));
        };
        (v6, port)
    } else {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(bad("URL address does not have the form \"host:port\""));
        };
        if host.contains(':') {
            return Err(bad("IPv6 hosts must be in brackets"));
        }
        if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')) {
            return Err(bad("invalid character in host"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if port.is_empty()
        || port.len() > 5
        || !port.bytes().all(|b| b.is_ascii_digit())
        || port.parse::<u32>().map_or(true, |p| p > 65535)
    {
        return Err(bad("port must be a number from 0 to 65535"));
    }
    Ok(url.to_string())
}

/// One etcd member as restore creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `sha1(sorted peer URLs ++ token)[0..8]` read big-endian.
    pub id: u64,
    /// The member's name from `--initial-cluster`.
    pub name: String,
    /// Canonical peer URLs, sorted bytewise (as `types.URLs` sorts them).
    pub peer_urls: Vec<String>,
    /// Client URLs; empty after a restore (a member publishes them when it starts).
    pub client_urls: Vec<String>,
    /// Whether the member is a raft learner; restore only creates voters.
    pub is_learner: bool,
}

impl Member {
    /// Builds a voting member, checking and sorting its peer URLs and computing its ID with the
    /// cluster token, like etcd's `NewMember(name, urls, token, nil)`.
    pub fn new<S: AsRef<str>>(name: &str, peer_urls: &[S], token: &str) -> Result<Member, MembershipError> {
        if peer_urls.is_empty() {
            return Err(MembershipError::NoPeerUrls { name: name.to_string() });
        }
        let mut urls = peer_urls.iter().map(|u| canonical_url(u.as_ref())).collect::<Result<Vec<_>, _>>()?;
        urls.sort();
        let mut h = Sha1::new();
        for u in &urls {
            h.update(u.as_bytes());
        }
        h.update(token.as_bytes());
        let id = first_u64(&h.finalize());
        if id == 0 {
            return Err(MembershipError::ZeroId { name: name.to_string() });
        }
        Ok(Member { id, name: name.to_string(), peer_urls: urls, client_urls: Vec::new(), is_learner: false })
    }

    /// The ID as etcd prints it and keys the `members` bucket: lower-case hex, no padding.
    pub fn id_hex(&self) -> String {
        format!("{:x}", self.id)
    }

    /// `json.Marshal(Member)`: `{"id":<decimal>,"peerURLs":[..],"isLearner":true,"name":"..","clientURLs":[..]}`
    /// with `isLearner`, `name` and `clientURLs` omitted when empty, as etcd writes it into the
    /// `members` bucket and into the ConfChange context of the WAL.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(64);
        let _ = write!(s, "{{\"id\":{},\"peerURLs\":", self.id);
        go_json_string_list(&mut s, &self.peer_urls);
        if self.is_learner {
            s.push_str(",\"isLearner\":true");
        }
        if !self.name.is_empty() {
            s.push_str(",\"name\":");
            go_json_string(&mut s, &self.name);
        }
        if !self.client_urls.is_empty() {
            s.push_str(",\"clientURLs\":");
            go_json_string_list(&mut s, &self.client_urls);
        }
        s.push('}');
        s
    }

    /// `json.Marshal(RaftAttributes)`: `{"peerURLs":[..]}` plus `"isLearner":true` for learners;
    /// the value of `/0/members/<id>/raftAttributes` in the v2 store.
    pub fn raft_attributes_json(&self) -> String {
        let mut s = String::from("{\"peerURLs\":");
        go_json_string_list(&mut s, &self.peer_urls);
        if self.is_learner {
            s.push_str(",\"isLearner\":true");
        }
        s.push('}');
        s
    }
}

/// The members of a cluster being restored, sorted by ID, and the token they were hashed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `--initial-cluster-token`.
    pub token: String,
    /// Members sorted by ascending ID (the order etcd's `Members()` returns).
    pub members: Vec<Member>,
}

impl Cluster {
    /// Parses `--initial-cluster` (`name=url[,name=url...]`; a name may repeat to give a member
    /// several peer URLs) as `types.NewURLsMap` does, and hashes every member with `token`.
    ///
    /// Empty entries (`a=x,,b=y`) are skipped as etcd skips them; an entry without `=` or with an
    /// empty name is an error (etcd would fail later on its empty URL, or accept a nameless member).
    pub fn from_initial_cluster(initial_cluster: &str, token: &str) -> Result<Cluster, MembershipError> {
        let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
        for entry in initial_cluster.split(',') {
            if entry.is_empty() {
                continue;
            }
            let Some((name, url)) = entry.split_once('=') else {
                return Err(MembershipError::InvalidInitialCluster {
                    entry: entry.to_string(),
                    reason: "expected name=url",
                });
            };
            if name.is_empty() {
                return Err(MembershipError::InvalidInitialCluster {
                    entry: entry.to_string(),
                    reason: "empty member name",
                });
            }
            match by_name.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => by_name.push((name.to_string(), vec![url.to_string()])),
            }
        }
        if by_name.is_empty() {
            return Err(MembershipError::NoMembers);
        }
        let members = by_name.iter().map(|(n, urls)| Member::new(n, urls, token)).collect::<Result<Vec<_>, _>>()?;
        Cluster::from_members(token, members)
    }

    /// Builds a cluster from members already made (e.g. with [`Member::new`]); sorts them by ID
    /// and rejects duplicate IDs.
    pub fn from_members(token: &str, mut members: Vec<Member>) -> Result<Cluster, MembershipError> {
        if members.is_empty() {
            return Err(MembershipError::NoMembers);
        }
        members.sort_by_key(|m| m.id);
        for w in members.windows(2) {
            if w[0].id == w[1].id {
                return Err(MembershipError::DuplicateId {
                    id: w[0].id,
                    first: w[0].name.clone(),
                    second: w[1].name.clone(),
                });
            }
        }
        Ok(Cluster { token: token.to_string(), members })
    }

    /// The cluster ID: `sha1(BE64 of every member ID, ascending)[0..8]` read big-endian (`genID`).
    pub fn id(&self) -> u64 {
        let mut h = Sha1::new();
        for m in &self.members {
            h.update(m.id.to_be_bytes());
        }
        first_u64(&h.finalize())
    }

    /// Member IDs in ascending order.
    pub fn member_ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// The member named `name`, if exactly one has that name.
    pub fn member_by_name(&self, name: &str) -> Result<&Member, MembershipError> {
        let mut found = self.members.iter().filter(|m| m.name == name);
        let first = found.next().ok_or_else(|| MembershipError::UnknownMember { name: name.to_string() })?;
        if found.next().is_some() {
            return Err(MembershipError::AmbiguousName { name: name.to_string() });
        }
        Ok(first)
    }

    /// The raft configuration after restore: every member a voter.
    pub fn conf_state(&self) -> ConfState {
        ConfState { voters: self.member_ids(), ..ConfState::default() }
    }

    /// What the restored db's `meta` bucket says of raft: the values [`write_member_files`]
    /// writes into the WAL and snap files, so the db and the files agree.
    pub fn restore_meta(&self) -> RestoreMeta {
        // The snapshot index is the member count (one ConfChange entry per member); etcd
        // 3.5's restore writes term 1.
        RestoreMeta { consistent_index: self.members.len() as u64, term: 1, conf_state: self.conf_state() }
    }

    /// The `members` bucket of the restored db: key = ID in lower-case hex without padding,
    /// value = member JSON, sorted by key bytes (bbolt's order).
    pub fn members_bucket_entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v: Vec<(Vec<u8>, Vec<u8>)> =
            self.members.iter().map(|m| (m.id_hex().into_bytes(), m.to_json().into_bytes())).collect();
        v.sort();
        v
    }

    /// The v2 store JSON (`json.Marshal(store)`) that restore saves in the `.snap` file: member
    /// *i* (1-based, ascending ID) created at raft index *i*, with a create event per member in
    /// the watcher history, byte for byte as etcd 3.4/3.5 write it (`docs/formats.md` §6).
    pub fn v2_store_json(&self) -> String {
        const EXPIRE: &str = "\"ExpireTime\":\"0001-01-01T00:00:00Z\"";
        const HISTORY: usize = 1000;
        let n = self.members.len();
        // Go's encoding/json sorts map keys; the member nodes are a map keyed by ID hex.
        let mut children: BTreeMap<String, (usize, &Member)> = BTreeMap::new();
        for (i, m) in self.members.iter().enumerate() {
            children.insert(m.id_hex(), (i + 1, m));
        }
        let mut s = String::with_capacity(6000 + 600 * n);
        s.push_str("{\"Root\":{\"Path\":\"/\",\"CreatedIndex\":0,\"ModifiedIndex\":0,");
        s.push_str(EXPIRE);
        s.push_str(",\"Value\":\"\",\"Children\":{\"0\":{\"Path\":\"/0\",\"CreatedIndex\":0,\"ModifiedIndex\":0,");
        s.push_str(EXPIRE);
        s.push_str(",\"Value\":\"\",\"Children\":{\"members\":{\"Path\":\"/0/members\",\"CreatedIndex\":1,\"ModifiedIndex\":1,");
        s.push_str(EXPIRE);
        s.push_str(",\"Value\":\"\",\"Children\":{");
        for (k, (hex, (idx, m))) in children.iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            let path = format!("/0/members/{hex}");
            let _ =
                write!(s, "\"{hex}\":{{\"Path\":\"{path}\",\"CreatedIndex\":{idx},\"ModifiedIndex\":{idx},{EXPIRE},");
            let _ = write!(
                s,
                "\"Value\":\"\",\"Children\":{{\"raftAttributes\":{{\"Path\":\"{path}/raftAttributes\",\"CreatedIndex\":{idx},\"ModifiedIndex\":{idx},{EXPIRE},\"Value\":"
            );
            go_json_string(&mut s, &m.raft_attributes_json());
            s.push_str(",\"Children\":null}}}");
        }
        s.push_str("}}}},\"1\":{\"Path\":\"/1\",\"CreatedIndex\":0,\"ModifiedIndex\":0,");
        s.push_str(EXPIRE);
        s.push_str(",\"Value\":\"\",\"Children\":{}}}},");
        s.push_str("\"WatcherHub\":{\"EventHistory\":{\"Queue\":{\"Events\":[");
        for (i, m) in self.members.iter().enumerate() {
            let idx = i + 1;
            let _ = write!(
                s,
                "{{\"action\":\"create\",\"node\":{{\"key\":\"/0/members/{}/raftAttributes\",\"value\":",
                m.id_hex()
            );
            go_json_string(&mut s, &m.raft_attributes_json());
            let _ = write!(s, ",\"modifiedIndex\":{idx},\"createdIndex\":{idx}}}}},");
        }
        for _ in n..HISTORY {
            s.push_str("null,");
        }
        s.pop();
        let _ = write!(
            s,
            "],\"Size\":{n},\"Front\":0,\"Back\":{n},\"Capacity\":{HISTORY}}},\"StartIndex\":1,\"LastIndex\":{n}}}}},\"CurrentIndex\":{n},"
        );
        let _ = write!(
            s,
            "\"Stats\":{{\"getsSuccess\":0,\"getsFail\":0,\"setsSuccess\":0,\"setsFail\":0,\"deleteSuccess\":0,\"deleteFail\":0,\
             \"updateSuccess\":0,\"updateFail\":0,\"createSuccess\":{n},\"createFail\":0,\"compareAndSwapSuccess\":0,\
             \"compareAndSwapFail\":0,\"compareAndDeleteSuccess\":0,\"compareAndDeleteFail\":0,\"expireCount\":0,\"watchers\":0}},\
             \"CurrentVersion\":2}}"
        );
        s
    }
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// Appends `v` as Go's `encoding/json` writes a string with HTML escaping on (the default):
/// `<`, `>`, `&`, U+2028 and U+2029 become `\u003c`-style escapes, and control characters other
/// than `\n`, `\r`, `\t` become `\u00XX` (lower-case hex). Go 1.22+ writes `\b` and `\f` for
/// U+0008 and U+000C; we keep the older `\u0008` form, which decodes the same.
pub fn go_json_string(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn go_json_string_list(out: &mut String, v: &[String]) {
    // A nil slice marshals as `null`; an empty one as `[]`. Ours are never nil.
    out.push('[');
    for (i, s) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        go_json_string(out, s);
    }
    out.push(']');
}

/// The raft values a restored db's `meta` bucket holds ([`Cluster::restore_meta`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreMeta {
    /// `meta/consistent_index`: the snapshot index, = member count. A larger value (the
    /// source's) would make etcd skip the WAL's entries.
    pub consistent_index: u64,
    /// `meta/term` (3.5+): 1.
    pub term: u64,
    /// `meta/confState` (3.5+): every member a voter; [`RestoreMeta::conf_state_json`] gives
    /// its bytes.
    pub conf_state: ConfState,
}

impl RestoreMeta {
    /// The bytes of `meta/confState`, as etcd 3.5+ writes them (Go's JSON of
    /// `raftpb.ConfState`: `{"voters":[<ids ascending>],"auto_leave":false}`); etcd 3.6 reads
    /// them to detect the schema.
    pub fn conf_state_json(&self) -> Vec<u8> {
        crate::meta::ConfState::from(&self.conf_state).to_json()
    }
}

/// What [`write_member_files`] wrote, and what the restore must put into the db's `meta` bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberFiles {
    /// This member's ID (the WAL metadata's NodeID).
    pub member_id: u64,
    /// The cluster ID.
    pub cluster_id: u64,
    /// `meta/consistent_index` must be at least this: the snapshot index, = member count.
    pub consistent_index: u64,
    /// `meta/term` (3.5+): 1.
    pub term: u64,
    /// The raft configuration saved in the snapshot (all members voters).
    pub conf_state: ConfState,
    /// The WAL segment written.
    pub wal_file: PathBuf,
    /// The `.snap` file written.
    pub snap_file: PathBuf,
}

/// Writes a new member's `member/wal/0000000000000000-0000000000000000.wal` and
/// `member/snap/0000000000000001-<N>.snap` exactly as `etcdutl snapshot restore` 3.5 does for
/// `cluster`, with `self_name` as this member (not the db: the restore writes `member/snap/db`).
///
/// `member_dir` is `<data-dir>/member`; it and `member/snap` are created with mode 0700 if
/// missing; `member/wal` must not exist (it is built in `member/wal.tmp` and renamed into place).
/// Both files are fsynced, and so are the directories that received them.
pub fn write_member_files(
    member_dir: &Path,
    cluster: &Cluster,
    self_name: &str,
) -> Result<MemberFiles, MembershipError> {
    let me = cluster.member_by_name(self_name)?;
    let snap_dir = crate::datadir::snap_dir(member_dir);
    for dir in [member_dir, snap_dir.as_path()] {
        crate::wal::create_dir_0700(dir).map_err(|source| MembershipError::Io { path: dir.to_path_buf(), source })?;
    }
    let wal_file = crate::wal::create_restore_wal(&crate::datadir::wal_dir(member_dir), cluster, me.id)?;
    let snapshot = crate::snap::restore_snapshot(cluster);
    let snap_file = crate::snap::write_snap_file(&snap_dir, &snapshot)?;
    // The member dir itself may be new; make its entry in the data dir durable too.
    if let Some(parent) = member_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::wal::sync_dir(parent).map_err(|source| MembershipError::Io { path: parent.to_path_buf(), source })?;
    }
    let RestoreMeta { consistent_index, term, conf_state } = cluster.restore_meta();
    Ok(MemberFiles {
        member_id: me.id,
        cluster_id: cluster.id(),
        consistent_index,
        term,
        conf_state,
        wal_file,
        snap_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_id_vector() {
        // Verified against etcd (`docs/formats.md` §7).
        let c = Cluster::from_initial_cluster("n1=http://127.0.0.1:24801", "tok1").unwrap();
        assert_eq!(c.members[0].id_hex(), "18e0185557c0ce00");
        assert_eq!(format!("{:x}", c.id()), "d02ac130b9ebfd3b");
    }

    #[test]
    fn restore_meta_is_what_etcd_3_5_restores() {
        let c = Cluster::from_initial_cluster("b=http://127.0.0.1:2,a=http://127.0.0.1:1", "t").unwrap();
        let meta = c.restore_meta();
        assert_eq!((meta.consistent_index, meta.term), (2, 1));
        let ids = c.member_ids();
        assert!(ids[0] < ids[1]);
        let want = format!("{{\"voters\":[{},{}],\"auto_leave\":false}}", ids[0], ids[1]);
        assert_eq!(String::from_utf8(meta.conf_state_json()).unwrap(), want);
    }

    #[test]
    fn urls_are_sorted_and_repeated_names_merge() {
        let c = Cluster::from_initial_cluster("a=http://10.0.0.2:2380,,a=http://10.0.0.1:2380, b=x", "t");
        // " b=x" has a name with a leading space and the URL "x" is invalid.
        assert!(matches!(c, Err(MembershipError::InvalidUrl { .. })));
        let c = Cluster::from_initial_cluster("a=http://10.0.0.2:2380,a= http://10.0.0.1:2380", "t").unwrap();
        assert_eq!(c.members.len(), 1);
        assert_eq!(c.members[0].peer_urls, vec!["http://10.0.0.1:2380", "http://10.0.0.2:2380"]);
        let same = Member::new("a", &["http://10.0.0.1:2380", "http://10.0.0.2:2380"], "t").unwrap();
        assert_eq!(c.members[0].id, same.id);
    }

    #[test]
    fn url_checks() {
        for ok in ["http://127.0.0.1:2380", "https://etcd-0.etcd:2380", "http://[::1]:2380", "unix://sock:1"] {
            assert_eq!(canonical_url(ok).unwrap(), ok);
        }
        assert_eq!(canonical_url("  http://a:1 ").unwrap(), "http://a:1");
        for bad in [
            "http://127.0.0.1:2380/",
            "HTTP://a:1",
            "ftp://a:1",
            "http://a",
            "http://:1",
            "http://a:b",
            "http://a:99999",
            "http://u@a:1",
            "http://a:1?x",
            "a:1",
            "http://::1:2380",
            "",
        ] {
            assert!(canonical_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn duplicate_members_and_names() {
        let e = Cluster::from_initial_cluster("a=http://h:1,b=http://h:1", "t").unwrap_err();
        assert!(matches!(e, MembershipError::DuplicateId { .. }), "{e}");
        assert!(matches!(Cluster::from_initial_cluster("", "t"), Err(MembershipError::NoMembers)));
        assert!(matches!(
            Cluster::from_initial_cluster("=http://h:1", "t"),
            Err(MembershipError::InvalidInitialCluster { .. })
        ));
        assert!(matches!(Cluster::from_initial_cluster("a", "t"), Err(MembershipError::InvalidInitialCluster { .. })));
        let c = Cluster::from_initial_cluster("a=http://h:1", "t").unwrap();
        assert!(matches!(c.member_by_name("b"), Err(MembershipError::UnknownMember { .. })));
    }

    #[test]
    fn member_json_matches_go() {
        let mut m = Member::new("n<1>&", &["http://127.0.0.1:23801"], "t").unwrap();
        m.id = 13668033151171901709;
        assert_eq!(
            m.to_json(),
            r#"{"id":13668033151171901709,"peerURLs":["http://127.0.0.1:23801"],"name":"n\u003c1\u003e\u0026"}"#
        );
        m.name = "n1".into();
        m.client_urls = vec!["http://127.0.0.1:23791".into()];
        // The value real etcd 3.4.23 wrote.
        assert_eq!(
            m.to_json(),
            r#"{"id":13668033151171901709,"peerURLs":["http://127.0.0.1:23801"],"name":"n1","clientURLs":["http://127.0.0.1:23791"]}"#
        );
        m.is_learner = true;
        m.name.clear();
        m.client_urls.clear();
        assert_eq!(
            m.to_json(),
            r#"{"id":13668033151171901709,"peerURLs":["http://127.0.0.1:23801"],"isLearner":true}"#
        );
        let mut s = String::new();
        go_json_string(&mut s, "a\"b\\c\n\u{1}\u{2028}\u{7f}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001\\u2028\u{7f}é\"");
    }

    #[test]
    fn v2_store_json_is_valid_and_has_the_members() {
        let c = Cluster::from_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2,b=http://127.0.0.2:2", "x")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&c.v2_store_json()).unwrap();
        let members = &v["Root"]["Children"]["0"]["Children"]["members"]["Children"];
        for (i, m) in c.members.iter().enumerate() {
            let node = &members[m.id_hex()];
            assert_eq!(node["CreatedIndex"], i as u64 + 1);
            let ra = node["Children"]["raftAttributes"]["Value"].as_str().unwrap();
            let ra: serde_json::Value = serde_json::from_str(ra).unwrap();
            assert_eq!(ra["peerURLs"].as_array().unwrap().len(), m.peer_urls.len());
        }
        let events = v["WatcherHub"]["EventHistory"]["Queue"]["Events"].as_array().unwrap();
        assert_eq!(events.len(), 1000);
        assert!(events[2].is_null());
        assert_eq!(v["CurrentIndex"], 2);
        assert_eq!(v["Stats"]["createSuccess"], 2);
        assert_eq!(v["Root"]["Children"]["1"]["Children"], serde_json::json!({}));
    }

    #[test]
    fn write_member_files_refuses_unknown_member_and_existing_wal() {
        let dir = tempfile::tempdir().unwrap();
        let member = dir.path().join("data/member");
        let c = Cluster::from_initial_cluster("a=http://127.0.0.1:1", "t").unwrap();
        assert!(matches!(write_member_files(&member, &c, "b"), Err(MembershipError::UnknownMember { .. })));
        let f = write_member_files(&member, &c, "a").unwrap();
        assert_eq!((f.consistent_index, f.term, f.member_id), (1, 1, c.members[0].id));
        assert!(f.snap_file.ends_with("snap/0000000000000001-0000000000000001.snap"));
        let e = write_member_files(&member, &c, "a").unwrap_err();
        assert!(matches!(e, MembershipError::Wal(WalError::AlreadyExists(_))), "{e}");
    }

    #[test]
    fn members_bucket_entries_are_sorted_by_key_bytes() {
        let c = Cluster::from_initial_cluster("a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3", "x")
            .unwrap();
        let e = c.members_bucket_entries();
        assert_eq!(e.len(), 3);
        assert!(e.windows(2).all(|w| w[0].0 < w[1].0));
        for (k, v) in &e {
            let m: serde_json::Value = serde_json::from_slice(v).unwrap();
            assert_eq!(format!("{:x}", m["id"].as_u64().unwrap()).as_bytes(), &k[..]);
        }
    }
}
