//! `etcdbrctl status`: the chain a restore would use now, its continuity, and (with
//! `--endpoints`) the lag behind the live etcd, with an exit code for monitoring.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use brcore::etcd::EtcdSource;
use brcore::status::{BackupStatus, MaxLag, ObjectInfo, Verdict};
use clap::Args;

use super::{EXIT_CORRUPT, EXIT_ETCD_BEHIND, EXIT_LAGGING, EXIT_NO_BACKUP, EXIT_UNAVAILABLE};
use crate::flags::{EtcdArgs, StoreArgs, WriteOut};

/// `etcdbrctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The store to look at (only read).
    #[command(flatten)]
    pub store: StoreArgs,
    /// The live etcd to compare with (optional).
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Exit 7 when the backups lag etcd by more than this: a revision count (`500`) or a Go
    /// duration (`5m`; without --endpoints, the age of the newest backup).
    #[arg(long, value_parser = parse_max_lag)]
    pub max_lag: Option<MaxLag>,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
    pub write_out: WriteOut,
}

/// `--max-lag`: a bare number is revisions, a number with a unit is a duration.
fn parse_max_lag(s: &str) -> Result<MaxLag, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(MaxLag::Revisions(n));
    }
    match crate::pflag::go_duration_signed(t) {
        Ok(d) if !d.negative => Ok(MaxLag::Time(d.magnitude)),
        Ok(_) => Err(format!("{s:?} is negative: expected a revision count (500) or a duration (30s, 5m)")),
        Err(e) => Err(format!("{e}: expected a revision count (500) or a duration (30s, 5m)")),
    }
}

/// The flags that must go together (checked at start, a usage error otherwise).
pub(crate) fn check_flags(args: &StatusArgs) -> anyhow::Result<()> {
    let live = super::live_etcd(&args.etcd)?;
    if matches!(args.max_lag, Some(MaxLag::Revisions(_))) && live.is_none() {
        anyhow::bail!(
            "--max-lag in revisions needs --endpoints (etcd's revision); give a duration (5m) to judge the \
             newest backup's age instead"
        );
    }
    Ok(())
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    check_flags(&args)?;
    let live = super::live_etcd(&args.etcd)?;
    let store = super::open_store(&args.store)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let source = live.as_ref().map(|l| l as &dyn EtcdSource);
    let status = brcore::status::backup_status(store.as_ref(), &args.store.store_prefix, source, args.max_lag, now)
        .await
        .context("cannot read the store")?;
    match args.write_out {
        WriteOut::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        WriteOut::Simple => print!("{}", render(&status)),
    }
    verdict(&status)
}

/// The exit code and its one-line reason.
fn verdict(s: &BackupStatus) -> anyhow::Result<()> {
    let (code, message) = match s.verdict {
        Verdict::Healthy => return Ok(()),
        Verdict::NoBackup => (EXIT_NO_BACKUP, format!("no full snapshot under prefix {:?}", s.prefix)),
        Verdict::ChainBroken => {
            (EXIT_CORRUPT, s.gap.as_ref().map_or_else(|| "the chain is broken".to_string(), |g| g.message.clone()))
        }
        Verdict::EtcdUnreachable => {
            (EXIT_UNAVAILABLE, format!("etcd did not answer: {}", s.etcd_error.as_deref().unwrap_or("unknown error")))
        }
        Verdict::EtcdBehind => (
            EXIT_ETCD_BEHIND,
            format!(
                "etcd is at revision {}, below the newest backed-up revision {}: etcd lost data the backups hold, \
                 or --store-prefix names another cluster's backups",
                s.etcd.as_ref().map_or(0, |e| e.revision),
                s.last_revision.unwrap_or(0)
            ),
        ),
        Verdict::LagAboveLimit => (
            EXIT_LAGGING,
            match s.lag {
                Some(l) => format!(
                    "the backups lag etcd by {} revisions and {} s, above --max-lag {}",
                    l.revisions,
                    l.seconds,
                    s.max_lag.as_deref().unwrap_or("")
                ),
                None => format!(
                    "the newest backup is {} s old, above --max-lag {}",
                    s.newest_backup_age_seconds.unwrap_or(0),
                    s.max_lag.as_deref().unwrap_or("")
                ),
            },
        ),
    };
    Err(super::Verdict { code, message }.into())
}

fn when(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// An age in the largest units that keep it readable: `42 s`, `5 min 3 s`, `2 h 10 min`.
pub(crate) fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// A byte count: `872 B`, `1.5 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    brcore::error::human_bytes_short(bytes)
}

fn object_line(o: &ObjectInfo, now: i64) -> String {
    format!(
        "{}  revisions {}-{}  {}  created {} ({} ago)",
        o.name,
        o.start_revision,
        o.last_revision,
        size(o.size),
        when(o.created_on),
        age(now - o.created_on)
    )
}

/// Deltas listed one per line at most; a longer chain shows its first and newest ones.
const LISTED_DELTAS: usize = 6;

fn render(s: &BackupStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let now = s.checked_at;
    let prefix = if s.prefix.is_empty() { "(none)" } else { s.prefix.as_str() };
    let _ = writeln!(out, "prefix:        {prefix}");
    match &s.full_snapshot {
        None => {
            let _ = writeln!(out, "full snapshot: none: there is nothing to restore from");
        }
        Some(full) => {
            let _ = writeln!(out, "full snapshot: {}", object_line(full, now));
            let n = s.delta_snapshots.len();
            let bytes: u64 = s.delta_snapshots.iter().map(|d| d.size).sum();
            match (s.delta_snapshots.first(), s.delta_snapshots.last()) {
                (Some(first), Some(last)) => {
                    let _ = writeln!(
                        out,
                        "deltas:        {n}, revisions {}-{}, {}",
                        first.start_revision,
                        last.last_revision,
                        size(bytes)
                    );
                    let shown: Vec<usize> = if n <= LISTED_DELTAS {
                        (0..n).collect()
                    } else {
                        (0..LISTED_DELTAS / 2).chain(n - LISTED_DELTAS / 2..n).collect()
                    };
                    for (i, &at) in shown.iter().enumerate() {
                        if i > 0 && at != shown[i - 1] + 1 {
                            let _ = writeln!(out, "               … {} more", at - shown[i - 1] - 1);
                        }
                        let _ = writeln!(out, "               {}", object_line(&s.delta_snapshots[at], now));
                    }
                }
                _ => {
                    let _ = writeln!(out, "deltas:        none");
                }
            }
            for r in &s.redundant {
                let _ = writeln!(out, "left out:      {} (earlier objects hold all its revisions)", r.name);
            }
        }
    }
    match (&s.gap, s.last_revision) {
        (Some(gap), _) => {
            let _ = writeln!(out, "chain:         BROKEN: {}", gap.message);
        }
        (None, Some(last)) => {
            let _ = writeln!(out, "chain:         continuous: a restore now reaches revision {last}");
        }
        (None, None) => {}
    }
    if let Some(e) = &s.etcd {
        let leader = if e.leader.is_empty() {
            "no leader".to_string()
        } else if e.leader == e.member_id {
            format!("leader {} (this member)", e.leader)
        } else {
            format!("leader {}", e.leader)
        };
        let _ = writeln!(
            out,
            "etcd:          {} (etcd {}, member {}, {leader}): revision {}, db {}",
            e.endpoint,
            e.version,
            e.member_id,
            e.revision,
            size(u64::try_from(e.db_size).unwrap_or(0))
        );
    }
    if let Some(err) = &s.etcd_error {
        let _ = writeln!(out, "etcd:          UNREACHABLE: {err}");
    }
    match (s.lag, s.newest_backup_age_seconds) {
        (Some(l), _) if l.revisions < 0 => {
            let _ = writeln!(out, "lag:           etcd is {} revisions BEHIND the backups", -l.revisions);
        }
        (Some(l), _) => {
            let _ = writeln!(
                out,
                "lag:           {} revisions, {} (what a restore now would lose)",
                l.revisions,
                age(l.seconds)
            );
        }
        (None, Some(a)) if s.etcd_error.is_none() => {
            let _ = writeln!(out, "newest backup: {} old (give --endpoints to measure the lag behind etcd)", age(a));
        }
        (None, Some(a)) => {
            let _ = writeln!(out, "newest backup: {} old", age(a));
        }
        (None, None) => {}
    }
    if let Some(m) = &s.max_lag {
        let _ = writeln!(out, "max lag:       {m}");
    }
    let verdict = match s.verdict {
        Verdict::Healthy => "healthy",
        Verdict::NoBackup => "NO BACKUP",
        Verdict::ChainBroken => "CHAIN BROKEN",
        Verdict::EtcdUnreachable => "ETCD UNREACHABLE",
        Verdict::EtcdBehind => "ETCD BEHIND THE BACKUPS",
        Verdict::LagAboveLimit => "LAG ABOVE --max-lag",
    };
    let _ = writeln!(out, "verdict:       {verdict}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_lag_is_revisions_or_a_duration() {
        assert_eq!(parse_max_lag("500").unwrap(), MaxLag::Revisions(500));
        assert_eq!(parse_max_lag("5m").unwrap(), MaxLag::Time(Duration::from_secs(300)));
        assert_eq!(parse_max_lag("1m30s").unwrap(), MaxLag::Time(Duration::from_secs(90)));
        for bad in ["", "-3", "-5m", "5x", "fast"] {
            assert!(parse_max_lag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ages_read_like_an_operator_reads_them() {
        assert_eq!(age(-5), "0 s");
        assert_eq!(age(59), "59 s");
        assert_eq!(age(303), "5 min 3 s");
        assert_eq!(age(7800), "2 h 10 min");
        assert_eq!(age(90000), "1 d 1 h");
        assert_eq!(size(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
