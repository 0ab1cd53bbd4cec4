//! `/config`: the etcd YAML config (`$ETCD_CONF`) made concrete for this member.
//!
//! etcd-druid writes one config for all members of a StatefulSet, with the advertise URLs as
//! maps from member name to URL list; the reference's `/config` picks this member's entries,
//! flattens them to the comma-separated strings etcd expects, sets `name` and
//! `initial-cluster-state`, and serves the result to the etcd container's start script.
//!
//! In a cluster of several members it also trims `initial-cluster` to the members the running
//! cluster lists and says `initial-cluster-state: existing` while a learner joins
//! ([`render_for_member`]), and [`cluster_spec`] reads the cluster the file describes for every
//! other decision of the sidecar.
//!
//! Only a small YAML subset is read, the one etcd config files use: top-level `key: value`
//! entries whose value is a scalar, a flow list `[a, b]`, a block list, or a one-level map of
//! scalars and lists. Entries that are not rewritten are copied as written, comments included,
//! so everything else in the file (TLS sections, quotas) reaches etcd unchanged. A full YAML
//! library was not worth a dependency (`serde_yaml` is deprecated and `serde_yml` has an open
//! RustSec advisory).

use brcore::cluster::{ClusterSpec, LiveCluster, MemberSpec};

/// A value of the YAML subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A scalar (quotes removed).
    Scalar(String),
    /// A list of scalars.
    List(Vec<String>),
    /// A map of scalars or lists, in file order.
    Map(Vec<(String, Value)>),
    /// `key:` with nothing after it.
    Empty,
}

/// One top-level entry: its key (`None` for lines before the first key) and its raw lines.
#[derive(Debug, Clone)]
struct Entry {
    key: Option<String>,
    lines: Vec<String>,
    replaced: Option<String>,
}

/// An etcd YAML config, parsed enough to read and replace top-level entries.
#[derive(Debug, Clone)]
pub struct EtcdConf {
    entries: Vec<Entry>,
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Splits `key: rest` (the key possibly quoted); `None` if the line is not a mapping entry.
fn split_key(line: &str) -> Option<(String, &str)> {
    let t = line.trim_start();
    let (key, rest) = if let Some(q) = t.strip_prefix('"').or_else(|| t.strip_prefix('\'')) {
        let quote = if t.starts_with('"') { '"' } else { '\'' };
        let end = q.find(quote)?;
        let after = q[end + 1..].strip_prefix(':')?;
        (q[..end].to_string(), after)
    } else {
        let colon = t
            .char_indices()
            .find(|&(i, c)| c == ':' && t[i + 1..].chars().next().is_none_or(|n| n == ' ' || n == '\t'))?;
        (t[..colon.0].trim_end().to_string(), &t[colon.0 + 1..])
    };
    if key.is_empty() || key.starts_with('#') || key.starts_with("- ") {
        return None;
    }
    Some((key, rest))
}

/// Removes a trailing ` # comment` from a plain scalar.
fn strip_comment(s: &str) -> &str {
    let mut prev_space = true;
    for (i, c) in s.char_indices() {
        if c == '#' && prev_space {
            return &s[..i];
        }
        prev_space = c == ' ' || c == '\t';
    }
    s
}

/// Parses an inline value: a quoted or plain scalar, or a flow list.
fn inline_value(raw: &str) -> Result<Value, String> {
    let t = raw.trim();
    if t.is_empty() || t.starts_with('#') {
        return Ok(Value::Empty);
    }
    if let Some(inner) = t.strip_prefix('[') {
        let inner = strip_comment(inner).trim_end();
        let inner = inner.strip_suffix(']').ok_or_else(|| format!("unterminated flow list {t:?}"))?;
        let items =
            inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(scalar).collect::<Result<Vec<_>, _>>()?;
        return Ok(Value::List(items));
    }
    if t.starts_with('{') {
        return Err(format!("flow maps are not supported: {t:?}"));
    }
    Ok(Value::Scalar(scalar(t)?))
}

/// A scalar without its quotes (and for a plain one, without a trailing comment).
fn scalar(t: &str) -> Result<String, String> {
    if let Some(rest) = t.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Ok(out),
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => break,
                },
                c => out.push(c),
            }
        }
        return Err(format!("unterminated quoted string {t:?}"));
    }
    if let Some(rest) = t.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    out.push('\'');
                } else {
                    return Ok(out);
                }
            } else {
                out.push(c);
            }
        }
        return Err(format!("unterminated quoted string {t:?}"));
    }
    Ok(strip_comment(t).trim_end().to_string())
}

/// Parses the lines after `key:` when nothing followed the colon: a block list or a map.
fn block_value(lines: &[String]) -> Result<Value, String> {
    let content: Vec<&String> = lines.iter().filter(|l| !is_blank_or_comment(l)).collect();
    let Some(first) = content.first() else {
        return Ok(Value::Empty);
    };
    if first.trim_start().starts_with('-') {
        let items = content
            .iter()
            .map(|l| {
                let t = l.trim_start();
                let item = t.strip_prefix('-').ok_or_else(|| format!("expected a list item, found {t:?}"))?;
                scalar(item.trim())
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Value::List(items));
    }
    let map_indent = indent_of(first);
    let mut map: Vec<(String, Value)> = Vec::new();
    for line in content {
        let t = line.trim_start();
        let ind = indent_of(line);
        if ind == map_indent && !t.starts_with('-') {
            let (k, rest) = split_key(line).ok_or_else(|| format!("expected `key: value`, found {t:?}"))?;
            map.push((k, inline_value(rest)?));
        } else if let Some(item) = t.strip_prefix('-') {
            let Some((_, v)) = map.last_mut() else {
                return Err(format!("list item {t:?} outside a key"));
            };
            let item = scalar(item.trim())?;
            match v {
                Value::Empty => *v = Value::List(vec![item]),
                Value::List(items) => items.push(item),
                _ => return Err(format!("list item {t:?} after a scalar value")),
            }
        } else {
            return Err(format!("nesting deeper than one map level is not supported: {t:?}"));
        }
    }
    Ok(Value::Map(map))
}

/// Writes a scalar so YAML reads it back as the same string: plain when that is unambiguous,
/// double-quoted otherwise.
pub fn quote(s: &str) -> String {
    let safe_chars = s.chars().all(|c| c.is_ascii_alphanumeric() || "._/:=,@%+-".contains(c));
    let safe_start = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '/');
    let reserved =
        matches!(s.to_ascii_lowercase().as_str(), "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n");
    if safe_chars && safe_start && !reserved && !s.contains(": ") {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl EtcdConf {
    /// Splits `text` into top-level entries. Fails on a line that is neither an entry, part of
    /// one, a comment nor a document marker.
    pub fn parse(text: &str) -> Result<EtcdConf, String> {
        let mut entries: Vec<Entry> = vec![Entry { key: None, lines: Vec::new(), replaced: None }];
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim_start_matches(' ').starts_with('\t') {
                return Err(format!("line {}: tabs are not allowed for indentation in YAML", n + 1));
            }
            let top_level = !line.starts_with(' ') && !is_blank_or_comment(line) && !line.starts_with('-');
            if top_level {
                if line == "---" || line == "..." {
                    entries.push(Entry { key: None, lines: vec![line.to_string()], replaced: None });
                    continue;
                }
                let (key, _) = split_key(line).ok_or_else(|| format!("line {}: expected `key: value`", n + 1))?;
                entries.push(Entry { key: Some(key), lines: vec![line.to_string()], replaced: None });
            } else if let Some(last) = entries.last_mut() {
                last.lines.push(line.to_string());
            }
        }
        Ok(EtcdConf { entries })
    }

    /// The value of the top-level `key`, if present (the last one wins, as in most YAML readers).
    pub fn get(&self, key: &str) -> Result<Option<Value>, String> {
        let Some(entry) = self.entries.iter().rev().find(|e| e.key.as_deref() == Some(key)) else {
            return Ok(None);
        };
        if let Some(r) = &entry.replaced {
            return Ok(Some(Value::Scalar(r.clone())));
        }
        let (_, rest) = split_key(&entry.lines[0]).ok_or_else(|| format!("{key}: not an entry"))?;
        let v = inline_value(rest).map_err(|e| format!("{key}: {e}"))?;
        if v != Value::Empty {
            return Ok(Some(v));
        }
        block_value(&entry.lines[1..]).map(Some).map_err(|e| format!("{key}: {e}"))
    }

    /// The top-level `key` as one string: a scalar as it is, a list joined with commas.
    pub fn get_string(&self, key: &str) -> Result<Option<String>, String> {
        Ok(match self.get(key)? {
            Some(Value::Scalar(s)) => Some(s),
            Some(Value::List(items)) => Some(items.join(",")),
            Some(Value::Empty) | None => None,
            Some(Value::Map(_)) => return Err(format!("{key}: expected a string, found a map")),
        })
    }

    /// Sets the top-level `key` to the scalar `value`, in place of its old entry (keeping the
    /// comments that followed it) or at the end.
    pub fn set(&mut self, key: &str, value: &str) {
        match self.entries.iter_mut().rev().find(|e| e.key.as_deref() == Some(key)) {
            Some(e) => e.replaced = Some(value.to_string()),
            None => self.entries.push(Entry {
                key: Some(key.to_string()),
                lines: vec![format!("{key}:")],
                replaced: Some(value.to_string()),
            }),
        }
    }

    /// The config as YAML text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            match (&e.key, &e.replaced) {
                (Some(key), Some(value)) => {
                    out.push_str(&format!("{}: {}\n", quote(key), quote(value)));
                    // Comments and blank lines after the old value belong to what follows.
                    let trailing = e.lines[1..].iter().rev().take_while(|l| is_blank_or_comment(l)).count();
                    for l in &e.lines[e.lines.len() - trailing..] {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
                _ => {
                    for l in &e.lines {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

/// This member's name, as the reference computes it: `<member-name-prefix>-<pod_name>` when
/// the config sets `member-name-prefix`, else `pod_name` (`POD_NAME`); without a pod name, the
/// config's own `name`.
pub fn member_name(conf: &EtcdConf, pod_name: Option<&str>) -> Result<String, String> {
    match pod_name.filter(|n| !n.is_empty()) {
        Some(pod) => Ok(match conf.get_string("member-name-prefix")?.filter(|p| !p.is_empty()) {
            Some(prefix) => format!("{prefix}-{pod}"),
            None => pod.to_string(),
        }),
        None => conf
            .get_string("name")?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| "no member name: set POD_NAME or `name` in the config".to_string()),
    }
}

/// `key`'s URLs for `member`: from a map keyed by member name, or the value itself when it is a
/// list or a comma-separated string. `None` when the key is absent or the map lacks the member.
fn urls_for(conf: &EtcdConf, key: &str, member: &str) -> Result<Option<Vec<String>>, String> {
    let split = |s: &str| s.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect::<Vec<_>>();
    Ok(match conf.get(key)? {
        None | Some(Value::Empty) => None,
        Some(Value::Scalar(s)) => Some(split(&s)),
        Some(Value::List(items)) => Some(items),
        Some(Value::Map(members)) => match members.into_iter().find(|(k, _)| k == member) {
            Some((_, Value::Scalar(s))) => Some(split(&s)),
            Some((_, Value::List(items))) => Some(items),
            _ => None,
        },
    })
}

/// The cluster an etcd config describes, seen from the member `pod_name` (see
/// [`member_name`]): the members of `initial-cluster` with their peer URLs (this member's from
/// `initial-advertise-peer-urls` when given, as the reference adds it with those), their client
/// URLs from `advertise-client-urls` (a map from member name to URLs, as etcd-druid writes), and
/// `initial-cluster-token` (etcd's default `etcd-cluster` when absent).
pub fn cluster_spec(text: &str, pod_name: Option<&str>, origin: &str) -> Result<ClusterSpec, String> {
    let conf = EtcdConf::parse(text)?;
    let this = member_name(&conf, pod_name)?;
    let initial = conf.get_string("initial-cluster")?.ok_or("the config has no initial-cluster")?;
    let token =
        conf.get_string("initial-cluster-token")?.filter(|t| !t.is_empty()).unwrap_or_else(|| "etcd-cluster".into());
    let mut members = Vec::new();
    for (name, mut peer_urls) in brcore::cluster::parse_initial_cluster(&initial)? {
        if name == this
            && let Some(advertised) = urls_for(&conf, "initial-advertise-peer-urls", &name)?
            && !advertised.is_empty()
        {
            peer_urls = advertised;
        }
        // A plain string or list of client URLs belongs to this member only.
        let client_urls = match conf.get("advertise-client-urls")? {
            Some(Value::Map(_)) => urls_for(&conf, "advertise-client-urls", &name)?.unwrap_or_default(),
            _ if name == this => urls_for(&conf, "advertise-client-urls", &name)?.unwrap_or_default(),
            _ => Vec::new(),
        };
        members.push(MemberSpec { name, peer_urls, client_urls });
    }
    ClusterSpec::new(&this, members, &token, origin).map_err(|e| match e {
        brcore::cluster::ClusterError::Config { why, .. } => why,
        other => other.to_string(),
    })
}

/// Makes `text` (an etcd config) concrete for the member `pod_name` (see [`member_name`]), as
/// the reference's `/config`: sets `name`, flattens `initial-advertise-peer-urls` and
/// `advertise-client-urls` (a map from member name to URLs, a list, or a string) to comma
/// strings, and sets `initial-cluster` and `initial-cluster-state` from `live`, the running
/// cluster's member list when a quorum answered:
///
/// - with more than one live member, `initial-cluster` keeps only the entries of members that
///   are in the list (by name, or this member), so that a member joining an existing cluster
///   names exactly its current members (etcd refuses a mismatch);
/// - `initial-cluster-state` is `existing` when that cluster has several members and a learner
///   is present (this member joining as one), else `new`; etcd ignores both once the data dir
///   holds a member.
pub fn render_for_member(text: &str, pod_name: Option<&str>, live: Option<&LiveCluster>) -> Result<String, String> {
    let mut conf = EtcdConf::parse(text)?;
    let name = member_name(&conf, pod_name)?;
    for key in ["initial-advertise-peer-urls", "advertise-client-urls"] {
        if conf.get(key)?.is_none_or(|v| v == Value::Empty) {
            continue;
        }
        let urls = urls_for(&conf, key, &name)?.ok_or_else(|| format!("{key} has no URLs for member {name:?}"))?;
        conf.set(key, &urls.join(","));
    }
    conf.set("name", &name);
    let mut initial = conf.get_string("initial-cluster")?.unwrap_or_default();
    let live = live.filter(|l| l.members.len() > 1);
    if let Some(live) = live {
        let kept: Vec<&str> = initial
            .split(',')
            .map(str::trim)
            .filter(|entry| {
                let member = entry.split_once('=').map_or(*entry, |(n, _)| n);
                member == name || live.members.iter().any(|m| m.name == member)
            })
            .collect();
        initial = kept.join(",");
        conf.set("initial-cluster", &initial);
    }
    let size = brcore::cluster::parse_initial_cluster(&initial)?.len();
    let existing = size > 1 && live.is_some_and(LiveCluster::has_learner);
    conf.set("initial-cluster-state", if existing { "existing" } else { "new" });
    Ok(conf.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRUID: &str = "\
# Human-readable name for this member.
name: etcd-main
data-dir: /var/etcd/data/new.etcd  # the data dir
quota-backend-bytes: 8589934592
listen-client-urls: http://0.0.0.0:2379
advertise-client-urls:
  etcd-main-0:
  - http://etcd-main-0.etcd-main-peer.shoot.svc:2379
  etcd-main-1:
  - http://etcd-main-1.etcd-main-peer.shoot.svc:2379
initial-advertise-peer-urls:
  etcd-main-0:
    - http://etcd-main-0.etcd-main-peer.shoot.svc:2380
    - http://10.0.0.1:2380

# cluster
initial-cluster: etcd-main-0=http://etcd-main-0.etcd-main-peer.shoot.svc:2380
initial-cluster-token: 'etcd-cluster'
auto-compaction-retention: \"30m\"
client-transport-security:
  cert-file: /var/etcd/ssl/server/tls.crt
  client-cert-auth: true
listen-metrics-urls: [http://0.0.0.0:2381, 'http://127.0.0.1:2382']
";

    #[test]
    fn reads_the_subset_etcd_configs_use() {
        let c = EtcdConf::parse(DRUID).unwrap();
        assert_eq!(c.get_string("data-dir").unwrap().as_deref(), Some("/var/etcd/data/new.etcd"));
        assert_eq!(c.get_string("initial-cluster-token").unwrap().as_deref(), Some("etcd-cluster"));
        assert_eq!(c.get_string("auto-compaction-retention").unwrap().as_deref(), Some("30m"));
        assert_eq!(
            c.get("listen-metrics-urls").unwrap(),
            Some(Value::List(vec!["http://0.0.0.0:2381".into(), "http://127.0.0.1:2382".into()]))
        );
        let Some(Value::Map(m)) = c.get("client-transport-security").unwrap() else { panic!("a map") };
        assert_eq!(m[1], ("client-cert-auth".into(), Value::Scalar("true".into())));
        assert_eq!(c.get("missing").unwrap(), None);
    }

    #[test]
    fn renders_this_members_config() {
        let out = render_for_member(DRUID, Some("etcd-main-0"), None).unwrap();
        let c = EtcdConf::parse(&out).unwrap();
        assert_eq!(c.get_string("name").unwrap().as_deref(), Some("etcd-main-0"));
        assert_eq!(
            c.get_string("advertise-client-urls").unwrap().as_deref(),
            Some("http://etcd-main-0.etcd-main-peer.shoot.svc:2379")
        );
        assert_eq!(
            c.get_string("initial-advertise-peer-urls").unwrap().as_deref(),
            Some("http://etcd-main-0.etcd-main-peer.shoot.svc:2380,http://10.0.0.1:2380")
        );
        assert_eq!(c.get_string("initial-cluster-state").unwrap().as_deref(), Some("new"));
        // Untouched entries and comments come through as written.
        assert!(out.contains("client-transport-security:\n  cert-file: /var/etcd/ssl/server/tls.crt\n"), "{out}");
        assert!(out.contains("\n# cluster\ninitial-cluster: "), "{out}");
        assert!(out.starts_with("# Human-readable name for this member.\nname: etcd-main-0\n"), "{out}");
    }

    /// etcd-druid with `spec.memberNamePrefix`: the URL maps and initial-cluster are keyed by
    /// `<prefix>-<pod>` (druid configmap/etcdconfig.go), and the member is named so.
    #[test]
    fn member_name_prefix_names_the_member() {
        let conf = "\
name: etcd-main
member-name-prefix: shoot--foo
advertise-client-urls:
  shoot--foo-etcd-main-0:
  - https://etcd-main-0.etcd-main-peer.shoot--foo.svc:2379
initial-advertise-peer-urls:
  shoot--foo-etcd-main-0:
  - https://etcd-main-0.etcd-main-peer.shoot--foo.svc:2380
initial-cluster: shoot--foo-etcd-main-0=https://etcd-main-0.etcd-main-peer.shoot--foo.svc:2380
";
        let out = render_for_member(conf, Some("etcd-main-0"), None).unwrap();
        let c = EtcdConf::parse(&out).unwrap();
        assert_eq!(c.get_string("name").unwrap().as_deref(), Some("shoot--foo-etcd-main-0"));
        assert_eq!(
            c.get_string("advertise-client-urls").unwrap().as_deref(),
            Some("https://etcd-main-0.etcd-main-peer.shoot--foo.svc:2379")
        );
        assert_eq!(
            c.get_string("initial-advertise-peer-urls").unwrap().as_deref(),
            Some("https://etcd-main-0.etcd-main-peer.shoot--foo.svc:2380")
        );
        // An empty prefix is no prefix.
        let plain = conf.replace("member-name-prefix: shoot--foo", "member-name-prefix: \"\"");
        let e = render_for_member(&plain, Some("etcd-main-0"), None).unwrap_err();
        assert!(e.contains("\"etcd-main-0\""), "{e}");
    }

    #[test]
    fn a_member_missing_from_the_url_maps_is_an_error() {
        let e = render_for_member(DRUID, Some("etcd-main-7"), None).unwrap_err();
        assert!(e.contains("etcd-main-7"), "{e}");
        // Without POD_NAME the config's own name is the member.
        let e = render_for_member(DRUID, None, None).unwrap_err();
        assert!(e.contains("\"etcd-main\""), "{e}");
    }

    /// Three members as etcd-druid writes them (sigs.k8s.io/yaml: keys sorted, lists at the
    /// map's indent), with a member-name prefix.
    const DRUID_HA: &str = "\
advertise-client-urls:
  etcd-main-0:
  - https://etcd-main-0.etcd-main-peer.shoot.svc:2379
  etcd-main-1:
  - https://etcd-main-1.etcd-main-peer.shoot.svc:2379
  etcd-main-2:
  - https://etcd-main-2.etcd-main-peer.shoot.svc:2379
data-dir: /var/etcd/data/new.etcd
initial-advertise-peer-urls:
  etcd-main-0:
  - https://etcd-main-0.etcd-main-peer.shoot.svc:2380
  etcd-main-1:
  - https://etcd-main-1.etcd-main-peer.shoot.svc:2380
  - https://10.0.0.11:2380
  etcd-main-2:
  - https://etcd-main-2.etcd-main-peer.shoot.svc:2380
initial-cluster: etcd-main-0=https://etcd-main-0.etcd-main-peer.shoot.svc:2380,etcd-main-1=https://etcd-main-1.etcd-main-peer.shoot.svc:2380,etcd-main-1=https://10.0.0.11:2380,etcd-main-2=https://etcd-main-2.etcd-main-peer.shoot.svc:2380
initial-cluster-state: new
initial-cluster-token: etcd-cluster
name: etcd-config
";

    fn live(members: &[(&str, bool)]) -> LiveCluster {
        LiveCluster {
            cluster_id: 7,
            leader_id: 1,
            members: members
                .iter()
                .enumerate()
                .map(|(i, (name, learner))| brcore::cluster::LiveMember {
                    id: i as u64 + 1,
                    name: name.to_string(),
                    peer_urls: vec![format!("https://p{i}:2380")],
                    client_urls: vec![],
                    is_learner: *learner,
                })
                .collect(),
            endpoint: "e".into(),
        }
    }

    #[test]
    fn the_cluster_comes_from_the_config_and_the_pod_name() {
        let s = cluster_spec(DRUID_HA, Some("etcd-main-1"), "etcd config test").unwrap();
        assert_eq!(s.this, "etcd-main-1");
        assert_eq!(s.token, "etcd-cluster");
        assert_eq!(s.members.len(), 3);
        let me = s.this_member();
        assert_eq!(me.peer_urls, ["https://etcd-main-1.etcd-main-peer.shoot.svc:2380", "https://10.0.0.11:2380"]);
        assert_eq!(s.members[2].client_urls, ["https://etcd-main-2.etcd-main-peer.shoot.svc:2379"]);
        let e = cluster_spec(DRUID_HA, None, "etcd config test").unwrap_err();
        assert!(e.contains("\"etcd-config\" is not one of"), "{e}");
        // A prefix names the members `<prefix>-<pod>`.
        let prefixed = DRUID_HA.replace("etcd-main-", "shoot-etcd-main-") + "member-name-prefix: shoot\n";
        let s = cluster_spec(&prefixed, Some("etcd-main-2"), "x").unwrap();
        assert_eq!(s.this, "shoot-etcd-main-2");
        let conf = EtcdConf::parse(&prefixed).unwrap();
        assert_eq!(member_name(&conf, Some("etcd-main-0")).unwrap(), "shoot-etcd-main-0");
        let out = render_for_member(&prefixed, Some("etcd-main-2"), None).unwrap();
        assert!(out.contains("name: shoot-etcd-main-2\n"), "{out}");
        // One member, flags style: a plain string of client URLs is this member's.
        let single = "name: m0\ninitial-cluster: m0=http://a:2380\nadvertise-client-urls: http://a:2379\n";
        let s = cluster_spec(single, None, "x").unwrap();
        assert!(!s.is_multi_member());
        assert_eq!(s.this_member().client_urls, ["http://a:2379"]);
    }

    #[test]
    fn initial_cluster_and_state_follow_the_running_cluster() {
        let get = |out: &str, key: &str| EtcdConf::parse(out).unwrap().get_string(key).unwrap().unwrap();
        // No quorum answered (a bootstrap): the config's cluster, state new.
        let out = render_for_member(DRUID_HA, Some("etcd-main-0"), None).unwrap();
        assert_eq!(get(&out, "initial-cluster").matches('=').count(), 4);
        assert_eq!(get(&out, "initial-cluster-state"), "new");
        assert_eq!(
            get(&out, "initial-advertise-peer-urls"),
            "https://etcd-main-0.etcd-main-peer.shoot.svc:2380",
            "this member's entry of the map"
        );
        // Scale-up 1 -> 3: etcd-main-0 runs, etcd-main-1 was just added as a learner (no name yet).
        let out = render_for_member(DRUID_HA, Some("etcd-main-1"), Some(&live(&[("etcd-main-0", false), ("", true)])))
            .unwrap();
        assert_eq!(
            get(&out, "initial-cluster"),
            "etcd-main-0=https://etcd-main-0.etcd-main-peer.shoot.svc:2380,\
             etcd-main-1=https://etcd-main-1.etcd-main-peer.shoot.svc:2380,etcd-main-1=https://10.0.0.11:2380"
        );
        assert_eq!(get(&out, "initial-cluster-state"), "existing");
        // All three run, no learner: the whole cluster, state new (etcd ignores both then).
        let all = live(&[("etcd-main-0", false), ("etcd-main-1", false), ("etcd-main-2", false)]);
        let out = render_for_member(DRUID_HA, Some("etcd-main-2"), Some(&all)).unwrap();
        assert_eq!(get(&out, "initial-cluster").matches('=').count(), 4);
        assert_eq!(get(&out, "initial-cluster-state"), "new");
        // A one-member live list (before a scale-up's first learner): left as configured.
        let out = render_for_member(DRUID_HA, Some("etcd-main-1"), Some(&live(&[("etcd-main-0", false)]))).unwrap();
        assert_eq!(get(&out, "initial-cluster").matches('=').count(), 4);
        assert_eq!(get(&out, "initial-cluster-state"), "new");
    }

    #[test]
    fn quoting_keeps_strings_strings() {
        assert_eq!(quote("http://a:2379,http://b:2379"), "http://a:2379,http://b:2379");
        assert_eq!(quote("true"), "\"true\"");
        assert_eq!(quote("123"), "\"123\"");
        assert_eq!(quote("a: b"), "\"a: b\"");
        assert_eq!(quote("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(scalar(&quote("say \"hi\" \\ ok")).unwrap(), "say \"hi\" \\ ok");
        assert_eq!(quote(""), "\"\"");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in ["just text", "a: [x, y", "a: \"open", "a:\n  b:\n    c: d\n", "a: {x: 1}"] {
            let r = EtcdConf::parse(bad).and_then(|c| c.get("a").map(|_| ()));
            assert!(r.is_err(), "{bad:?}");
        }
        assert!(EtcdConf::parse("").unwrap().get("a").unwrap().is_none());
    }
}
