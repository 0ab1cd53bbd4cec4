//! The status page at `/`: one self-contained HTML document (inline CSS, no scripts, no
//! external assets) for an operator with a browser or `curl`.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brcore::name::{Snapshot, SnapshotKind};
use brcore::verify::{Comparison, Outcome, Verification};

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
    /// Scheduled backup verification.
    pub verification: VerificationState<'a>,
}

/// What the page says about scheduled backup verification (`--verification-period`).
#[derive(Debug)]
pub enum VerificationState<'a> {
    /// Not configured.
    Off,
    /// On, but it runs on the leader's sidecar (named), not here.
    Elsewhere(String),
    /// On here; no run has finished yet.
    Pending {
        /// How often it runs.
        period: Duration,
    },
    /// The newest run.
    Done {
        /// How often it runs.
        period: Duration,
        /// What it found.
        run: &'a Verification,
    },
}

fn every(period: Duration) -> String {
    humantime::format_duration(period).to_string()
}

/// The verification section: when it last ran and what it found.
fn verification(h: &mut String, v: &VerificationState<'_>) {
    h.push_str("<h2>Backup verification</h2>");
    match v {
        VerificationState::Off => h.push_str(
            "<p class=\"muted\" id=\"verification\">Off (<code>--verification-period</code>); \
             <code>etcdbrctl verify</code> runs one by hand.</p>",
        ),
        VerificationState::Elsewhere(leader) => {
            let _ = write!(
                h,
                "<p class=\"muted\" id=\"verification\">Runs on the leader's sidecar ({}); see its page or \
                 <code>/snapshot/verify/latest</code>.</p>",
                escape(leader)
            );
        }
        VerificationState::Pending { period } => {
            let _ = write!(
                h,
                "<p class=\"muted\" id=\"verification\">Every {}; no run has finished yet.</p>",
                escape(&every(*period))
            );
        }
        VerificationState::Done { period, run } => {
            let (cls, word, detail) = match (&run.report, &run.error) {
                (Some(r), _) => {
                    let end = r.end();
                    let hash = end.map_or(String::new(), |c| format!(" (hashkv {})", c.hash));
                    match r.outcome {
                        Outcome::BitExact => ("ok", "bit-exact", format!("with etcd at revision {}{hash}", r.revision)),
                        Outcome::Differs => (
                            "bad",
                            "differs",
                            match &r.difference {
                                Some(d) => format!("from etcd at {d}"),
                                None => "from etcd".to_string(),
                            },
                        ),
                        Outcome::CannotCompare => (
                            "ok",
                            "restorable",
                            format!(
                                "to revision {}{hash}; cannot compare with etcd: {}",
                                r.revision,
                                end.map_or(String::new(), |c| match &c.comparison {
                                    Comparison::CannotCompare { reason } => reason.clone(),
                                    _ => String::new(),
                                })
                            ),
                        ),
                        Outcome::NotCompared => ("ok", "restorable", format!("to revision {}{hash}", r.revision)),
                        Outcome::EtcdUnreachable => (
                            "bad",
                            "not compared",
                            format!("restorable to revision {}{hash}, but etcd did not answer", r.revision),
                        ),
                    }
                }
                (None, Some(e)) => ("bad", "failed", e.clone()),
                (None, None) => ("bad", "failed", String::new()),
            };
            let _ = write!(
                h,
                "<p>Last run: {} ({}), every {}: <span class=\"{cls}\" id=\"verification\">{word}</span> {}</p>",
                time(run.finished_at),
                ago(run.finished_at),
                escape(&every(*period)),
                escape(&detail)
            );
            if let Some(r) = &run.report {
                let _ = write!(
                    h,
                    "<p class=\"muted\">{} + {} deltas fetched and checked ({}), rebuilt offline into a {} db with a clean bbolt check, in {:.2} s.</p>",
                    escape(r.full.rsplit('/').next().unwrap_or(&r.full)),
                    r.deltas.len(),
                    size(r.bytes_fetched),
                    size(r.db_size),
                    r.seconds
                );
            }
        }
    }
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

/// Deltas the timeline draws individually; older ones collapse into one "earlier" block, so
/// hours of 20-second deltas still take a line or two.
const TIMELINE_DELTAS: usize = 12;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:70em}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}td.when{white-space:nowrap}td.what{overflow-wrap:anywhere}\
.ok{color:#176317;font-weight:bold}.bad{color:#a31515;font-weight:bold}\
.muted{color:#777}summary{cursor:pointer;margin:.4em 0}code{font-family:ui-monospace,monospace}\
.timeline{display:flex;flex-wrap:wrap;align-items:stretch;gap:4px;margin:.8em 0 1em}\
.seg{flex:0 0 auto;padding:.35em .6em;border-radius:4px;font-size:.85em;line-height:1.4;white-space:nowrap}\
.seg.full{background:#dce8fb;border:1px solid #6b93d6}\
.seg.incr{background:#e2f3df;border:1px solid #79b570}\
.seg.gap{background:repeating-linear-gradient(135deg,#f4f4f4 0 6px,#e9e9e9 6px 12px);border:1px dashed #bbb;color:#555}\
.seg.now{flex:0 0 auto;background:none;border:none;border-left:3px solid #222;border-radius:0;color:#222}\
.seg small{color:#555}";

/// A byte count the way an operator reads it: `872 B`, `1.5 KiB`, `203.4 MiB`.
fn size(bytes: u64) -> String {
    brcore::error::human_bytes_short(bytes)
}

/// One block of the timeline: a snapshot's kind, revisions and age; the name in the tooltip.
fn segment(h: &mut String, s: &Snapshot) {
    let (class, label) = match s.name.kind {
        SnapshotKind::Full => ("full", "Full"),
        SnapshotKind::Incr => ("incr", "Delta"),
    };
    let _ = write!(
        h,
        "<div class=\"seg {class}\" title=\"{}\"><b>{label}</b> <small>{}</small><br>rev {}–{}<br><small>{}</small></div>",
        escape(&s.name.to_string()),
        size(s.size),
        s.name.start_revision,
        s.name.last_revision,
        ago(s.name.created_on)
    );
}

/// The chain from the full snapshot to the newest delta, oldest left, ending at "now": what a
/// restore replays, in order.
fn timeline(h: &mut String, latest: &Latest, full: &Snapshot) {
    h.push_str("<div class=\"timeline\" id=\"timeline\">");
    segment(h, full);
    let hidden = latest.deltas.len().saturating_sub(TIMELINE_DELTAS);
    if let (Some(first), Some(last)) = (latest.deltas.first(), hidden.checked_sub(1).and_then(|i| latest.deltas.get(i)))
    {
        let _ = write!(
            h,
            "<div class=\"seg gap\" title=\"{hidden} earlier deltas, listed in the table below\"><b>{hidden} earlier</b><br>rev {}–{}<br><small>deltas</small></div>",
            first.name.start_revision, last.name.last_revision
        );
    }
    for d in latest.deltas.iter().skip(hidden) {
        segment(h, d);
    }
    h.push_str("<div class=\"seg now\"><b>now</b></div></div>");
}

/// Renders the page.
pub fn render(d: &PageData<'_>) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>etcdbr{}</title><style>{STYLE}</style></head><body>",
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
                timeline(&mut h, latest, full);
                let last = latest.deltas.last().map_or(full.name.last_revision, |d| d.name.last_revision);
                let deltas = match latest.deltas.len() {
                    0 => "No delta snapshot".to_string(),
                    1 => "1 delta snapshot".to_string(),
                    n => format!("{n} delta snapshots"),
                };
                let _ = write!(h, "<p>{deltas} after the full snapshot; a restore now reaches revision {last}.</p>");
                // A long chain's table is folded: the timeline already shows the newest part.
                let fold = latest.deltas.len() > TIMELINE_DELTAS;
                if fold {
                    let _ = write!(h, "<details><summary>All {} snapshots</summary>", latest.deltas.len() + 1);
                }
                h.push_str("<table><tr><th>kind</th><th>name</th><th>revisions</th><th>created</th><th>size</th></tr>");
                for s in std::iter::once(full).chain(latest.deltas.iter()) {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td><code>{}</code></td><td>{}–{}</td><td>{} ({})</td><td class=\"num\">{}</td></tr>",
                        s.name.kind.as_str(),
                        escape(&s.name.to_string()),
                        s.name.start_revision,
                        s.name.last_revision,
                        time(s.name.created_on),
                        ago(s.name.created_on),
                        size(s.size)
                    );
                }
                h.push_str("</table>");
                if fold {
                    h.push_str("</details>");
                }
            }
        },
    }

    verification(&mut h, &d.verification);

    h.push_str("<h2>Recent errors</h2>");
    if d.errors.is_empty() {
        h.push_str("<p class=\"muted\">None since the server started.</p>");
    } else {
        h.push_str("<table><tr><th>when</th><th>what</th></tr>");
        for (at, what) in d.errors.iter().rev() {
            let _ = write!(
                h,
                "<tr><td class=\"when\">{} ({})</td><td class=\"what\">{}</td></tr>",
                time(*at),
                ago(*at),
                escape(what)
            );
        }
        h.push_str("</table>");
    }
    h.push_str(
        "<h2>Endpoints</h2><p><code>/initialization/start?mode=full|sanity</code> · <code>/initialization/status</code> · \
         <code>/snapshot/full?final=true</code> · <code>/snapshot/delta</code> · <code>/snapshot/latest</code> · <code>/snapshot/verify/latest</code> · \
         <code>/config</code> · <code>/healthz</code> · <code>/metrics</code></p></body></html>\n",
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

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
            verification: VerificationState::Elsewhere("<m2>".into()),
        });
        assert!(page.contains("follower of &lt;m2&gt;"));
        assert!(page.contains("Full-00000000-00000010-1795606904.gz"));
        assert!(page.contains("Incr-00000011-00000015-1795606964.gz"));
        assert!(page.contains("reaches revision 15"));
        assert!(page.contains("store said &lt;no&gt;") && page.contains("restored &lt;revision&gt; 15"));
        assert!(!page.contains("<no>") && !page.contains("src=") && !page.contains("<script"));
    }

    fn chain(deltas: u64) -> Latest {
        let full = Snapshot::parse_key("v2/Full-00000000-00000100-1795606904.gz", 3 * 1024 * 1024 / 2).unwrap();
        let deltas = (0..deltas)
            .map(|i| {
                let key = format!("v2/Incr-{:08}-{:08}-{}.gz", 101 + i * 10, 110 + i * 10, 1795606924 + i * 20);
                Snapshot::parse_key(&key, 500 + i).unwrap()
            })
            .collect();
        Latest { full: Some(full), deltas }
    }

    fn page(latest: Latest) -> String {
        render(&PageData {
            init_status: "Successful",
            last_initialization: None,
            healthy: false,
            latest: Some(Ok(latest)),
            errors: Vec::new(),
            member: None,
            role: None,
            verification: VerificationState::Off,
        })
    }

    fn report(outcome: Outcome, difference: Option<brcore::verify::Difference>) -> brcore::verify::VerifyReport {
        brcore::verify::VerifyReport {
            prefix: "p".into(),
            started_at: 1795606900,
            full: "p/v2/Full-00000000-00000100-1795606904.gz".into(),
            deltas: vec!["p/v2/Incr-00000101-00000110-1795606924.gz".into()],
            left_out: Vec::new(),
            base_revision: 100,
            revision: 110,
            compact_revision: -1,
            key_revisions: 110,
            events_applied: 10,
            bytes_fetched: 2048,
            db_size: 3 << 20,
            seconds: 0.25,
            endpoint: Some("http://e:2379".into()),
            checks: vec![brcore::verify::RevisionCheck {
                revision: 110,
                hash: 4242,
                compact_revision: -1,
                comparison: Comparison::BitExact { live_hash: 4242, live_compact_revision: 50 },
            }],
            difference,
            outcome,
        }
    }

    fn run(report: Option<brcore::verify::VerifyReport>, error: Option<&str>) -> Verification {
        Verification {
            started_at: 1795606900,
            finished_at: 1795606901,
            succeeded: report.as_ref().is_some_and(|r| r.outcome.is_success()),
            report,
            error: error.map(String::from),
        }
    }

    fn section(v: VerificationState<'_>) -> String {
        let mut h = String::new();
        verification(&mut h, &v);
        h
    }

    #[test]
    fn the_verification_section_says_what_the_last_run_found() {
        assert!(section(VerificationState::Off).contains("Off (<code>--verification-period</code>)"));
        assert!(section(VerificationState::Elsewhere("m<1>".into())).contains("leader's sidecar (m&lt;1&gt;)"));
        let p = section(VerificationState::Pending { period: Duration::from_secs(600) });
        assert!(p.contains("Every 10m; no run has finished yet."), "{p}");
        let ok = run(Some(report(Outcome::BitExact, None)), None);
        let h = section(VerificationState::Done { period: Duration::from_secs(3600), run: &ok });
        assert!(
            h.contains(
                r#"<span class="ok" id="verification">bit-exact</span> with etcd at revision 110 (hashkv 4242)"#
            ),
            "{h}"
        );
        assert!(
            h.contains("every 1h")
                && h.contains("Full-00000000-00000100-1795606904.gz + 1 deltas")
                && h.contains("3.0 MiB db"),
            "{h}"
        );
        let d = brcore::verify::Difference { revision: 105, object: "p/v2/Incr-<x>".into(), exact: true };
        let bad = run(Some(report(Outcome::Differs, Some(d))), None);
        let h = section(VerificationState::Done { period: Duration::from_secs(60), run: &bad });
        assert!(h.contains(r#"<span class="bad" id="verification">differs</span> from etcd at revision 105, held by p/v2/Incr-&lt;x&gt;"#), "{h}");
        let failed = run(None, Some("store <down>"));
        let h = section(VerificationState::Done { period: Duration::from_secs(60), run: &failed });
        assert!(h.contains(r#"id="verification">failed</span> store &lt;down&gt;"#), "{h}");
    }

    #[test]
    fn sizes_read_like_an_operator_reads_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
        assert_eq!(size(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn the_timeline_draws_the_chain_in_order_and_ends_at_now() {
        let p = page(chain(2));
        let tl = &p[p.find("id=\"timeline\"").unwrap()..];
        let full = tl.find("title=\"Full-00000000-00000100-1795606904.gz\"").unwrap();
        let d1 = tl.find("title=\"Incr-00000101-00000110-1795606924.gz\"").unwrap();
        let d2 = tl.find("title=\"Incr-00000111-00000120-1795606944.gz\"").unwrap();
        let now = tl.find("<b>now</b>").unwrap();
        assert!(full < d1 && d1 < d2 && d2 < now);
        assert!(tl.contains("<b>Full</b> <small>1.5 MiB</small>"));
        assert!(p.contains("2 delta snapshots after the full snapshot; a restore now reaches revision 120."));
        assert!(!p.contains("earlier") && !p.contains("<details>"));
        assert!(!p.contains("1 delta snapshot after"));
        assert!(
            page(chain(1)).contains("1 delta snapshot after the full snapshot; a restore now reaches revision 110.")
        );
        assert!(
            page(chain(0)).contains("No delta snapshot after the full snapshot; a restore now reaches revision 100.")
        );
    }

    #[test]
    fn a_long_chain_collapses_its_older_deltas_on_the_timeline_but_not_in_the_table() {
        let n = TIMELINE_DELTAS as u64 + 30;
        let p = page(chain(n));
        let tl = &p[p.find("id=\"timeline\"").unwrap()..p.find("<table>").unwrap()];
        assert_eq!(tl.matches("class=\"seg incr\"").count(), TIMELINE_DELTAS);
        // The 30 oldest deltas, revisions 101 to 400, are one block before the drawn ones.
        assert!(tl.contains("<b>30 earlier</b><br>rev 101–400<br>"), "{tl}");
        assert!(!tl.contains("Incr-00000391-00000400"));
        assert!(tl.contains("title=\"Incr-00000401-00000410-"));
        // The table still lists every snapshot, folded.
        assert!(p.contains(&format!("<details><summary>All {} snapshots</summary><table>", n + 1)));
        assert_eq!(p.matches("<tr><td>Incr</td>").count(), n as usize);
        let last = 110 + (n - 1) * 10;
        assert!(
            p.contains(&format!("{n} delta snapshots after the full snapshot; a restore now reaches revision {last}."))
        );
    }
}
