//! Values as spf13/pflag (the Go etcdbrctl's flag parser) reads them, so that argument lists
//! written for the Go tool mean the same here.

use std::time::Duration;

/// Parses a boolean as Go's `strconv.ParseBool` does (pflag's `BoolVar`): `1 t T TRUE true True`
/// and `0 f F FALSE false False`. A bare `--flag` means `true` (each boolean flag sets
/// `default_missing_value = "true"` with `require_equals`, as pflag's `NoOptDefVal`).
pub fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "invalid boolean {s:?}: expected true or false (or 1, t, T, TRUE, True, 0, f, F, FALSE, False)"
        )),
    }
}

/// A Go `time.Duration` as `time.ParseDuration` reads it: a sign and a magnitude.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration {
    /// `-` was given (and the magnitude is not zero).
    pub negative: bool,
    /// The absolute value.
    pub magnitude: Duration,
}

impl GoDuration {
    /// The value for a flag where the Go tool treats a negative duration as zero (timers and
    /// periods that fire at once or disable a feature, timeouts it refuses as "not greater than
    /// zero"): negative reads as [`Duration::ZERO`].
    pub fn or_zero(self) -> Duration {
        if self.negative { Duration::ZERO } else { self.magnitude }
    }
}

/// Parses a Go duration (`20s`, `1m30s`, `500ms`, `1.5h`, `-1m`, `0`) as `time.ParseDuration`
/// does: units ns, us (µs, μs), ms, s, m, h; a leading sign; no unit only for `0`.
pub fn go_duration_signed(s: &str) -> Result<GoDuration, String> {
    let text = s.trim();
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(GoDuration { negative: false, magnitude: Duration::ZERO });
    }
    if rest.is_empty() {
        return Err(format!("invalid duration {s:?}: empty"));
    }
    let mut rest = rest;
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return Err(format!("invalid duration {s:?}: expected a number"));
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("invalid duration {s:?}: missing unit (ns, us, ms, s, m, h)")),
            other => return Err(format!("invalid duration {s:?}: unknown unit {other:?}")),
        };
        nanos += value * scale;
        rest = &rest[unit_end..];
    }
    // Go's Duration is an int64 of nanoseconds: about 292 years.
    if !nanos.is_finite() || nanos > i64::MAX as f64 {
        return Err(format!("invalid duration {s:?}: too long (at most about 2562047h)"));
    }
    let magnitude = Duration::from_nanos(nanos as u64);
    Ok(GoDuration { negative: negative && !magnitude.is_zero(), magnitude })
}

/// Parses a Go duration for a flag where a negative value means what zero means (see
/// [`GoDuration::or_zero`]; the flag's help says what zero does).
pub fn go_duration(s: &str) -> Result<Duration, String> {
    go_duration_signed(s).map(GoDuration::or_zero)
}

/// `--log-level`: logrus' levels as the Go tool's `--log-level` (a number, 4 = info, the
/// default) or their names, or a `tracing` filter (`info,snapstore=debug`). Returns the filter.
pub fn log_level(s: &str) -> Result<String, String> {
    let text = s.trim();
    // logrus.Level: 0 panic, 1 fatal, 2 error, 3 warn, 4 info, 5 debug, 6 trace; a larger
    // number enables everything, as in logrus.
    let named = match text.to_ascii_lowercase().as_str() {
        "0" | "1" | "2" | "panic" | "fatal" | "error" => Some("error"),
        "3" | "warn" | "warning" => Some("warn"),
        "4" | "info" => Some("info"),
        "5" | "debug" => Some("debug"),
        "6" | "trace" => Some("trace"),
        "off" => Some("off"),
        n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Some("trace"),
        _ => None,
    };
    if let Some(level) = named {
        return Ok(level.to_string());
    }
    tracing_subscriber::EnvFilter::try_new(text).map_err(|e| {
        format!(
            "invalid log level {s:?}: expected 0 (panic) .. 6 (trace), a name (error, warn, info, debug, trace) or a tracing filter ({e})"
        )
    })?;
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_parse_as_strconv_parse_bool() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(go_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(go_bool(f), Ok(false), "{f}");
        }
        for bad in ["", "yes", "on", "tRUE", "2"] {
            assert!(go_bool(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_parse_as_time_parse_duration() {
        let d = |s| go_duration(s).unwrap();
        assert_eq!(d("20s"), Duration::from_secs(20));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("1h0m0s"), Duration::from_secs(3600));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("+2m"), Duration::from_secs(120));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("-0"), Duration::ZERO);
        assert_eq!(d("-1m"), Duration::ZERO, "a negative duration reads as zero");
        let neg = go_duration_signed("-1m30s").unwrap();
        assert!(neg.negative);
        assert_eq!(neg.magnitude, Duration::from_secs(90));
        assert!(!go_duration_signed("-0s").unwrap().negative, "minus zero is zero");
        for bad in ["", "-", "20", "s", "3d", "1x", "--1s", "1s-", "3000000h"] {
            assert!(go_duration_signed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn log_levels_are_logrus_numbers_or_names_or_filters() {
        let l = |s| log_level(s).unwrap();
        assert_eq!(l("4"), "info", "logrus' 4 is info, the Go tool's default");
        assert_eq!(l("5"), "debug");
        assert_eq!(l("6"), "trace");
        assert_eq!(l("7"), "trace");
        assert_eq!(l("3"), "warn");
        assert_eq!(l("2"), "error");
        assert_eq!(l("0"), "error", "panic and fatal log through error");
        assert_eq!(l("Warning"), "warn");
        assert_eq!(l("info,snapstore=debug"), "info,snapstore=debug");
        assert!(log_level("info,=[").is_err());
    }
}
