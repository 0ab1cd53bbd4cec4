//! Cron schedules as the reference reads them: [`Schedule`].
//!
//! `--schedule` and `--defragmentation-schedule` are standard 5-field cron expressions (minute,
//! hour, day of month, month, day of week; robfig/cron's `ParseStandard`), plus the `@hourly`,
//! `@daily`… descriptors. Times are evaluated in UTC, the time zone of the containers the
//! reference runs in.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed cron schedule.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

/// A schedule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron schedule {text:?}: {why} (expected 5 fields: minute hour day-of-month month day-of-week)")]
pub struct ScheduleError {
    /// The expression.
    pub text: String,
    /// The parser's complaint.
    pub why: String,
}

impl Schedule {
    /// Parses a 5-field cron expression or descriptor.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let fields = text.split_whitespace().count();
        if !text.trim_start().starts_with('@') && fields != 5 {
            return Err(ScheduleError { text: text.to_string(), why: format!("{fields} fields") });
        }
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let cron = parser.parse(text).map_err(|e| ScheduleError { text: text.to_string(), why: e.to_string() })?;
        // An expression that never fires (30 February) is refused now rather than at run time.
        let s = Schedule { text: text.to_string(), cron };
        if s.next_after(SystemTime::now()).is_none() {
            return Err(ScheduleError { text: text.to_string(), why: "it never fires".into() });
        }
        Ok(s)
    }

    /// The expression as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time strictly after `t` the schedule fires, or `None` if it never does again.
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let at: DateTime<Utc> = t.into();
        let next = self.cron.find_next_occurrence(&at, false).ok()?;
        Some(next.into())
    }

    /// How long from `now` until the schedule next fires (zero if that is in the past).
    pub fn until_next(&self, now: SystemTime) -> Option<Duration> {
        let next = self.next_after(now)?;
        Some(next.duration_since(now).unwrap_or(Duration::ZERO))
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc).into()
    }

    fn next(expr: &str, from: &str) -> String {
        let t = Schedule::parse(expr).unwrap().next_after(at(from)).unwrap();
        DateTime::<Utc>::from(t).to_rfc3339()
    }

    #[test]
    fn the_reference_defaults_fire_when_robfig_cron_does() {
        // --schedule default: every hour on the hour.
        assert_eq!(next("0 */1 * * *", "2026-11-25T13:20:00Z"), "2026-11-25T14:00:00+00:00");
        assert_eq!(next("0 */1 * * *", "2026-11-25T14:00:00Z"), "2026-11-25T15:00:00+00:00");
        // --defragmentation-schedule default: 00:00 on every third day of the month (1, 4, 7…).
        assert_eq!(next("0 0 */3 * *", "2026-11-25T13:20:00Z"), "2026-11-28T00:00:00+00:00");
        assert_eq!(next("*/5 * * * *", "2026-11-25T13:21:00Z"), "2026-11-25T13:25:00+00:00");
    }

    #[test]
    fn a_restricted_weekday_with_any_day_of_month_fires_only_on_that_weekday() {
        // 2026-11-25 is a Wednesday; the next Monday is 30 November.
        assert_eq!(next("0 0 * * 1", "2026-11-25T13:20:00Z"), "2026-11-30T00:00:00+00:00");
        assert_eq!(next("0 0 * * MON", "2026-11-25T13:20:00Z"), "2026-11-30T00:00:00+00:00");
        assert_eq!(next("@daily", "2026-11-25T13:20:00Z"), "2026-11-26T00:00:00+00:00");
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in ["", "* * * *", "0 0 * * * *", "61 * * * *", "0 0 31 2 *", "nonsense"] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?}");
        }
    }
}
