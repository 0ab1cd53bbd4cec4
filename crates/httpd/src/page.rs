//! The status page at `/`: one self-contained HTML document (inline CSS, no scripts, no
//! external assets) for an operator with a browser or `curl`.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::snapshots::Latest;

/// Everything the page shows.
#[derive(Debug)]
pub struct PageData<'a> {
    /// `New`, `Progress`, `Successful` or `Failed`.
    pub init_status: &'a str,
    /// What the last initialization did or why it failed.
    pub last_initialization: Option<&'a str>,
    /// `/healthz`'s answer.
    pub healthy: bool,
    /// The latest snapshot set, or why it could not be listed; `None` without a store.
    pub latest: Option<Result<Latest, String>>,
    /// Recent server-side failures: (unix seconds, what).
    pub errors: Vec<(i64, String)>,
    /// The member name, when known.
    pub member: Option<&'a str>,
    /// This sidecar's role in a multi-member cluster (leader, follower of whom), when elected.
    pub role: Option<String>,
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn ago(secs: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let d = (now - secs).max(0) as u64;
    match d {
        0..60 => format!("{d} s ago"),
        60..3600 => format!("{} min ago", d / 60),
        3600..86400 => format!("{} h {} min ago", d / 3600, d % 3600 / 60),
        _ => format!("{} days ago", d / 86400),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:70em}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f3f3f3}.ok{color:#176317;font-weight:bold}.bad{color:#a31515;font-weight:bold}\
.muted{color:#777}code{font-family:ui-monospace,monospace}";

/// Renders the page.
pub fn render(d: &PageData<'_>) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>etcdbr{}</title><style>{STYLE}</style></head><body>",
        d.member.map(|m| format!(" — {}", escape(m))).unwrap_or_default()
    );
    let _ = write!(
        h,
        "<h1>etcdbr backup-restore server{}</h1>",
        d.member.map(|m| format!(": {}", escape(m))).unwrap_or_default()
    );
    let (cls, word) = if d.healthy { ("ok", "healthy") } else { ("bad", "not ready") };
    let _ = write!(h, "<p>Health: <span class=\"{cls}\" id=\"health\">{word}</span></p>");
    if let Some(role) = &d.role {
        let _ = write!(h, "<p>Role: <b id=\"role\">{}</b></p>", escape(role));
    }

    let _ = write!(h, "<h2>Initialization</h2><p>Status: <b id=\"init-status\">{}</b></p>", escape(d.init_status));
    if let Some(last) = d.last_initialization {
        let _ = write!(h, "<p>Last run: {}</p>", escape(last));
    }

    h.push_str("<h2>Latest backup</h2>");
    match &d.latest {
        None => h.push_str("<p class=\"muted\">No store configured (<code>--storage-provider</code>).</p>"),
        Some(Err(e)) => {
            let _ = write!(h, "<p class=\"bad\">Cannot list the store: {}</p>", escape(e));
        }
        Some(Ok(latest)) => match &latest.full {
            None => h.push_str("<p class=\"muted\">The store holds no full snapshot yet.</p>"),
            Some(full) => {
                h.push_str("<table><tr><th>kind</th><th>name</th><th>revisions</th><th>created</th><th>size</th></tr>");
                for s in std::iter::once(full).chain(latest.deltas.iter()) {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td><code>{}</code></td><td>{}–{}</td><td>{} ({})</td><td>{} B</td></tr>",
                        s.name.kind.as_str(),
                        escape(&s.name.to_string()),
                        s.name.start_revision,
                        s.name.last_revision,
                        time(s.name.created_on),
                        ago(s.name.created_on),
                        s.size
                    );
                }
                h.push_str("</table>");
                let last = latest.deltas.last().map_or(full.name.last_revision, |d| d.name.last_revision);
                let _ = write!(
                    h,
                    "<p>{} delta snapshot(s) after the full snapshot; a restore now reaches revision {last}.</p>",
                    latest.deltas.len()
                );
            }
        },
    }

    h.push_str("<h2>Recent errors</h2>");
    if d.errors.is_empty() {
        h.push_str("<p class=\"muted\">None since the server started.</p>");
    } else {
        h.push_str("<table><tr><th>when</th><th>what</th></tr>");
        for (at, what) in d.errors.iter().rev() {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", time(*at), escape(what));
        }
        h.push_str("</table>");
    }
    h.push_str(
        "<h2>Endpoints</h2><p><code>/initialization/start?mode=full|sanity</code> · <code>/initialization/status</code> · \
         <code>/snapshot/full?final=true</code> · <code>/snapshot/delta</code> · <code>/snapshot/latest</code> · \
         <code>/config</code> · <code>/healthz</code> · <code>/metrics</code></p></body></html>\n",
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use brcore::name::Snapshot;

    #[test]
    fn shows_the_chain_and_escapes_text() {
        let full = Snapshot::parse_key("v2/Full-00000000-00000010-1795606904.gz", 1234).unwrap();
        let delta = Snapshot::parse_key("v2/Incr-00000011-00000015-1795606964.gz", 99).unwrap();
        let page = render(&PageData {
            init_status: "New",
            last_initialization: Some("restored <revision> 15"),
            healthy: true,
            latest: Some(Ok(Latest { full: Some(full), deltas: vec![delta] })),
            errors: vec![(1795606904, "store said <no>".into())],
            member: Some("etcd-main-0"),
            role: Some("follower of <m2>".into()),
        });
        assert!(page.contains("follower of &lt;m2&gt;"));
        assert!(page.contains("Full-00000000-00000010-1795606904.gz"));
        assert!(page.contains("Incr-00000011-00000015-1795606964.gz"));
        assert!(page.contains("reaches revision 15"));
        assert!(page.contains("store said &lt;no&gt;") && page.contains("restored &lt;revision&gt; 15"));
        assert!(!page.contains("<no>") && !page.contains("src=") && !page.contains("<script"));
    }
}
