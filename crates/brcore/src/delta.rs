//! Delta (`Incr`) snapshot content: etcd watch events as JSON, followed by their sha256.
//!
//! The decompressed content of a delta object is `json || sha256(json)` (32 raw bytes), where
//! `json` is what the reference's Go code writes: `[` + events joined by `,` + `]`, each event
//! being Go `encoding/json` of `{etcdEvent: *clientv3.Event, time: time.Time}`:
//!
//! ```text
//! {"etcdEvent":{"type":1,"kv":{"key":B64,"create_revision":N,"mod_revision":N,"version":N,"value":B64,"lease":N}},"time":"RFC3339Nano"}
//! ```
//!
//! Every protobuf field is `omitempty`: PUT events have no `type`, a DELETE's kv holds only `key`
//! and `mod_revision`, an empty value and lease 0 are absent. Keys and values are standard
//! base64 with padding. Lease IDs exceed 2^53, so numbers are parsed as `i64`, never via `f64`.
//!
//! **Memory**: the restore decodes deltas as they stream ([`stream::DeltaDecoder`]), so a
//! delta of any size costs a few MiB. [`read_events`] (for tests and small tools) reads one
//! delta's JSON whole, then decodes it. That is bounded by
//! the reference's `--delta-snapshot-memory-limit` (10 MiB by default, 100 MB in common
//! deployments), which caps the JSON of one delta (plus one watch response). As a guard against
//! damaged or hostile objects, more than [`DEFAULT_MAX_DELTA_BYTES`] of decompressed content is
//! refused.
//!
//! [`DeltaWriter`] writes byte-identical JSON to the reference's, which the tests prove by
//! re-encoding every delta written by real `etcdbrctl` binaries.
//!
//! (The file passes 700 lines only with its unit tests, kept beside the code they pin.)

use std::io::{self, Read};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::Error;

pub mod stream;

pub use stream::{BatchPool, DeltaDecoder, EventBatch, EventRef};

/// Length of the sha256 trailer after the JSON.
pub const HASH_LEN: usize = 32;

/// The largest decompressed delta [`read_events`] accepts: 1 GiB, ten times the largest
/// `--delta-snapshot-memory-limit` seen in deployments, so only damaged or hostile objects hit it.
pub const DEFAULT_MAX_DELTA_BYTES: u64 = 1 << 30;

/// What Go's `time.Time{}` marshals to; used when an event has no `time` field.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Whether an event wrote or removed a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A key was created or updated (`type` absent or 0).
    Put,
    /// A key was deleted (`type` 1); the event carries only the key and the revision.
    Delete,
}

/// One etcd watch event as stored in a delta snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key.
    pub key: Vec<u8>,
    /// The new value (empty for deletes and for puts of an empty value).
    pub value: Vec<u8>,
    /// Revision of the key's creation (0 for deletes).
    pub create_revision: i64,
    /// Revision of this change.
    pub mod_revision: i64,
    /// The key's version after this change (0 for deletes).
    pub version: i64,
    /// The lease the key is attached to (0 for none).
    pub lease: i64,
    /// When the snapshotter received the event, RFC 3339 with nanoseconds, exactly as stored
    /// (kept as text so re-encoding reproduces the bytes).
    pub time: String,
}

impl Event {
    /// The event's `time` as nanoseconds since the unix epoch, or `None` if it does not parse.
    pub fn time_nanos(&self) -> Option<i128> {
        parse_rfc3339_nanos(&self.time)
    }
}

/// Reads the decompressed content of the delta `object` (a store key, for messages): verifies
/// the sha256 trailer and decodes every event, in order.
///
/// Errors are [`Error::Corrupt`] naming `object` (missing or wrong hash, invalid JSON, an event
/// without `kv` or with an unknown type, revisions going backwards) or [`Error::Io`] for a read
/// failure of the underlying stream (a decompression error arrives as `InvalidData`/`UnexpectedEof`
/// and is reported as corruption too).
pub fn read_events(reader: impl Read, object: &str) -> Result<Vec<Event>, Error> {
    read_events_limited(reader, object, DEFAULT_MAX_DELTA_BYTES)
}

/// [`read_events`] with an explicit limit on the decompressed size.
pub fn read_events_limited(reader: impl Read, object: &str, max_bytes: u64) -> Result<Vec<Event>, Error> {
    let mut content = Vec::new();
    reader.take(max_bytes.saturating_add(1)).read_to_end(&mut content).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            Error::corrupt(object, format!("it does not decompress: {e}"))
        }
        _ => Error::io(object, e),
    })?;
    if content.len() as u64 > max_bytes {
        return Err(Error::corrupt(
            object,
            format!("it decompresses to more than {max_bytes} bytes, far beyond any delta the snapshotter writes"),
        ));
    }
    decode_content(&content, object)
}

/// Verifies and decodes the decompressed content of a delta held in memory.
pub fn decode_content(content: &[u8], object: &str) -> Result<Vec<Event>, Error> {
    let json = verify_hash(content, object)?;
    decode_json(json, object)
}

/// Checks the sha256 trailer and returns the JSON before it.
pub fn verify_hash<'a>(content: &'a [u8], object: &str) -> Result<&'a [u8], Error> {
    if content.len() <= HASH_LEN {
        return Err(Error::corrupt(
            object,
            format!("delta snapshot is missing its hash ({} bytes of content)", content.len()),
        ));
    }
    let (json, trailer) = content.split_at(content.len() - HASH_LEN);
    let digest = Sha256::digest(json);
    if digest.as_slice() != trailer {
        return Err(Error::corrupt(
            object,
            format!(
                "sha256 of its {} bytes of JSON is {}, but the trailer says {}",
                json.len(),
                hex(digest.as_slice()),
                hex(trailer)
            ),
        ));
    }
    Ok(json)
}

/// Decodes the JSON array of a delta (without the trailer).
pub fn decode_json(json: &[u8], object: &str) -> Result<Vec<Event>, Error> {
    let records: Vec<RawRecord> =
        serde_json::from_slice(json).map_err(|e| Error::corrupt(object, format!("its JSON does not parse: {e}")))?;
    let mut events = Vec::with_capacity(records.len());
    let mut previous = i64::MIN;
    for (i, record) in records.into_iter().enumerate() {
        let event = record_to_event(record, i, object)?;
        if event.mod_revision <= 0 {
            return Err(Error::corrupt(object, format!("event #{i} has no mod_revision")));
        }
        if event.mod_revision < previous {
            return Err(Error::corrupt(
                object,
                format!("event #{i} has mod_revision {} after {previous}: revisions go backwards", event.mod_revision),
            ));
        }
        previous = event.mod_revision;
        events.push(event);
    }
    Ok(events)
}

/// One parsed record (event #`i` of `object`) as an [`Event`]; the checks that need no other
/// event (a known type, a `kv`).
fn record_to_event(record: RawRecord, i: usize, object: &str) -> Result<Event, Error> {
    let Some(ev) = record.etcd_event else {
        return Err(Error::corrupt(object, format!("event #{i} has no etcdEvent")));
    };
    let kind = match ev.kind {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        other => {
            return Err(Error::corrupt(object, format!("event #{i} has unknown type {other}")));
        }
    };
    let Some(kv) = ev.kv else {
        return Err(Error::corrupt(object, format!("event #{i} has no kv")));
    };
    Ok(Event {
        kind,
        key: kv.key.0,
        value: kv.value.0,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
        time: record.time.unwrap_or_else(|| GO_ZERO_TIME.to_string()),
    })
}

/// An iterator over the events of one delta, verified up front (see [`read_events`]).
#[derive(Debug)]
pub struct DeltaReader {
    events: std::vec::IntoIter<Event>,
}

impl DeltaReader {
    /// Reads, verifies and decodes the decompressed content of the delta `object`.
    pub fn new(reader: impl Read, object: &str) -> Result<DeltaReader, Error> {
        Ok(DeltaReader { events: read_events(reader, object)?.into_iter() })
    }
}

impl Iterator for DeltaReader {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        self.events.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.events.size_hint()
    }
}

impl ExactSizeIterator for DeltaReader {}

#[derive(Deserialize)]
struct RawRecord {
    #[serde(rename = "etcdEvent", default)]
    etcd_event: Option<RawEvent>,
    #[serde(default)]
    time: Option<String>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type", default)]
    kind: i32,
    #[serde(default)]
    kv: Option<RawKv>,
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: Base64Bytes,
    #[serde(default)]
    create_revision: i64,
    #[serde(default)]
    mod_revision: i64,
    #[serde(default)]
    version: i64,
    #[serde(default)]
    value: Base64Bytes,
    #[serde(default)]
    lease: i64,
}

/// Go's JSON form of `[]byte`: standard base64 with padding, or `null`.
#[derive(Default)]
struct Base64Bytes(Vec<u8>);

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Option<std::borrow::Cow<'de, str>> = Option::deserialize(d)?;
        match s {
            None => Ok(Base64Bytes(Vec::new())),
            Some(s) => B64
                .decode(s.as_bytes())
                .map(Base64Bytes)
                .map_err(|e| serde::de::Error::custom(format!("invalid base64 {s:?}: {e}"))),
        }
    }
}

/// Builds the content of a delta object event by event, as the reference's snapshotter does:
/// the JSON grows in memory. The memory limit (`--delta-snapshot-memory-limit`) is compared
/// with the JSON's length, which [`DeltaWriter::json_len`] gives for the events pushed and
/// [`Event::json_len`] for events still buffered.
#[derive(Debug, Clone)]
pub struct DeltaWriter {
    json: Vec<u8>,
    events: usize,
    first_revision: Option<i64>,
    last_revision: Option<i64>,
}

impl Default for DeltaWriter {
    fn default() -> Self {
        DeltaWriter::new()
    }
}

impl DeltaWriter {
    /// An empty delta.
    pub fn new() -> DeltaWriter {
        DeltaWriter { json: b"[".to_vec(), events: 0, first_revision: None, last_revision: None }
    }

    /// Appends one event.
    pub fn push(&mut self, event: &Event) {
        if self.events > 0 {
            self.json.push(b',');
        }
        write_event(&mut self.json, event);
        self.events += 1;
        self.first_revision.get_or_insert(event.mod_revision);
        self.last_revision = Some(event.mod_revision);
    }

    /// Events appended so far.
    pub fn len(&self) -> usize {
        self.events
    }

    /// Whether no event was appended (the reference skips such deltas).
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Bytes of JSON so far (without the closing `]` and the hash).
    pub fn json_len(&self) -> usize {
        self.json.len()
    }

    /// The mod revision of the first event appended.
    pub fn first_revision(&self) -> Option<i64> {
        self.first_revision
    }

    /// The mod revision of the last event appended: the delta's last revision in its name.
    pub fn last_revision(&self) -> Option<i64> {
        self.last_revision
    }

    /// Closes the array and appends the sha256 trailer: the content to compress and upload.
    pub fn finish(mut self) -> Vec<u8> {
        self.json.push(b']');
        let digest = Sha256::digest(&self.json);
        self.json.extend_from_slice(&digest);
        self.json
    }
}

/// The content of a delta holding `events`: JSON exactly as the reference writes it, plus the
/// sha256 trailer.
pub fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut w = DeltaWriter::new();
    for e in events {
        w.push(e);
    }
    w.finish()
}

/// Where [`write_event`] puts an event's JSON: the bytes themselves (a `Vec<u8>`), or only
/// their count ([`JsonLen`]), so that [`Event::json_len`] is the writer's length by
/// construction.
trait JsonOut {
    fn raw(&mut self, bytes: &[u8]);
    /// A `[]byte` field's value: standard base64 with padding, quoted.
    fn base64(&mut self, bytes: &[u8]);
    /// A string field's value, as Go writes the strings that occur here (RFC 3339 times hold
    /// none of the characters Go escapes differently from serde_json: `<`, `>`, `&`, U+2028,
    /// U+2029).
    fn string(&mut self, s: &str);
}

impl JsonOut for Vec<u8> {
    fn raw(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn base64(&mut self, bytes: &[u8]) {
        self.push(b'"');
        self.extend_from_slice(B64.encode(bytes).as_bytes());
        self.push(b'"');
    }

    fn string(&mut self, s: &str) {
        // serde_json cannot fail writing a &str into a Vec.
        let _ = serde_json::to_writer(&mut *self, s);
    }
}

/// Counts what [`write_event`] would write.
#[derive(Default)]
struct JsonLen(usize);

impl JsonOut for JsonLen {
    fn raw(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }

    fn base64(&mut self, bytes: &[u8]) {
        self.0 += bytes.len().div_ceil(3) * 4 + 2;
    }

    fn string(&mut self, s: &str) {
        let _ = serde_json::to_writer(&mut *self, s);
    }
}

impl std::io::Write for JsonLen {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Event {
    /// The length of this event's JSON in a delta, as [`DeltaWriter::push`] writes it (without
    /// the `,` between events): what the snapshotter's memory limit counts, without writing it.
    pub fn json_len(&self) -> usize {
        let mut len = JsonLen::default();
        write_event(&mut len, self);
        len.0
    }
}

/// Writes one event as Go's `encoding/json` writes the reference's `brtypes.Event`.
fn write_event(out: &mut impl JsonOut, e: &Event) {
    out.raw(b"{\"etcdEvent\":{");
    if e.kind == EventKind::Delete {
        out.raw(b"\"type\":1,");
    }
    out.raw(b"\"kv\":{");
    // Go leaves out the fields at their zero value.
    let mut first = true;
    if !e.key.is_empty() {
        write_field_name(out, &mut first, "key");
        out.base64(&e.key);
    }
    for (name, n) in [("create_revision", e.create_revision), ("mod_revision", e.mod_revision), ("version", e.version)]
    {
        if n != 0 {
            write_field_name(out, &mut first, name);
            out.raw(n.to_string().as_bytes());
        }
    }
    if !e.value.is_empty() {
        write_field_name(out, &mut first, "value");
        out.base64(&e.value);
    }
    if e.lease != 0 {
        write_field_name(out, &mut first, "lease");
        out.raw(e.lease.to_string().as_bytes());
    }
    out.raw(b"}},\"time\":");
    out.string(&e.time);
    out.raw(b"}");
}

/// `"name":`, after a `,` unless it is the object's first field.
fn write_field_name(out: &mut impl JsonOut, first: &mut bool, name: &str) {
    if !std::mem::take(first) {
        out.raw(b",");
    }
    out.raw(b"\"");
    out.raw(name.as_bytes());
    out.raw(b"\":");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats a unix time in nanoseconds as Go's `time.Time` marshals a UTC time (RFC 3339 with
/// up to nine fraction digits, trailing zeros dropped, `Z`): the `time` of new events.
pub fn format_rfc3339_nanos(unix_nanos: i128) -> String {
    let secs = unix_nanos.div_euclid(1_000_000_000) as i64;
    let nanos = unix_nanos.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", tod / 3600, tod % 3600 / 60, tod % 60);
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// The current time in the form of [`format_rfc3339_nanos`].
pub fn now_rfc3339_nanos() -> String {
    let now = std::time::SystemTime::now();
    let nanos = match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    format_rfc3339_nanos(nanos)
}

/// Parses RFC 3339 (`2026-11-25T11:40:06.177924044Z`, or with a `+hh:mm`/`-hh:mm` offset as Go
/// writes local times) into unix nanoseconds.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i128 = 0;
    if b[i] == b'.' {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start || end - start > 9 {
            return None;
        }
        let digits = num(start..end)? as i128;
        nanos = digits * 10i128.pow((9 - (end - start)) as u32);
        i = end;
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let off = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    Some(secs as i128 * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Delta JSON that both decoders (this module's and [`stream`]'s) refuse although its hash
/// matches (a writer's bug, not damage), each with a word of the error it must give.
#[cfg(test)]
pub(crate) const MALFORMED: [(&[u8], &str); 8] = [
    (br#"[{"etcdEvent":{"type":2,"kv":{"key":"YQ==","mod_revision":3}}}]"#, "unknown type 2"),
    (br#"[{"etcdEvent":{}}]"#, "no kv"),
    (br#"[{"time":"x"}]"#, "no etcdEvent"),
    (br#"[{"etcdEvent":{"kv":{"key":"YQ=="}}}]"#, "no mod_revision"),
    (br#"[{"etcdEvent":{"kv":{"key":"!!","mod_revision":3}}}]"#, "base64"),
    (br#"[{"etcdEvent":{"kv":{"key":"YQ==","mod_revision":3,"lease":1.5}}}]"#, "parse"),
    (
        br#"[{"etcdEvent":{"kv":{"key":"YQ==","mod_revision":3}}},{"etcdEvent":{"kv":{"key":"YQ==","mod_revision":2}}}]"#,
        "backwards",
    ),
    (b"[", "parse"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, key: &[u8], value: &[u8], rev: i64, lease: i64) -> Event {
        Event {
            kind,
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: if kind == EventKind::Put { rev - 1 } else { 0 },
            mod_revision: rev,
            version: if kind == EventKind::Put { 3 } else { 0 },
            lease,
            time: "2026-11-25T11:40:06.17792404Z".into(),
        }
    }

    #[test]
    fn the_computed_json_length_is_what_the_delta_writer_writes() {
        let events = [
            ev(EventKind::Put, b"k", b"v", 5, 0),
            ev(EventKind::Put, b"key2", b"", 1234567, -3),
            ev(EventKind::Delete, b"abc", b"", 99, 0),
            ev(EventKind::Put, &[0u8; 100], &[7u8; 1001], 10, 7_587_883_020_383_514_628),
            ev(EventKind::Put, b"", b"x", 2, 0),
        ];
        let mut w = DeltaWriter::new();
        let mut sum = 1; // '['
        for (i, e) in events.iter().enumerate() {
            w.push(e);
            sum += e.json_len() + usize::from(i > 0);
            assert_eq!(w.json_len(), sum, "event {i}");
        }
    }

    fn put(key: &str, value: &str, rev: i64, lease: i64) -> Event {
        Event {
            kind: EventKind::Put,
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease,
            time: "2026-11-25T11:40:06.177924044Z".into(),
        }
    }

    #[test]
    fn encodes_the_documented_example_exactly() {
        // The observed delta body quoted in the reference study (§3.1), times made equal.
        let t = "2026-11-25T11:40:06.177924044Z";
        let del = Event {
            kind: EventKind::Delete,
            key: b"a".to_vec(),
            value: vec![],
            create_revision: 0,
            mod_revision: 7,
            version: 0,
            lease: 0,
            time: t.into(),
        };
        let events = [put("k2", "v2", 5, 0), del, put("leased", "x", 8, 4111120235222229260)];
        let content = encode_events(&events);
        let json = std::str::from_utf8(&content[..content.len() - 32]).unwrap();
        let expected = format!(
            "[{{\"etcdEvent\":{{\"kv\":{{\"key\":\"azI=\",\"create_revision\":5,\"mod_revision\":5,\"version\":1,\"value\":\"djI=\"}}}},\"time\":\"{t}\"}},\
             {{\"etcdEvent\":{{\"type\":1,\"kv\":{{\"key\":\"YQ==\",\"mod_revision\":7}}}},\"time\":\"{t}\"}},\
             {{\"etcdEvent\":{{\"kv\":{{\"key\":\"bGVhc2Vk\",\"create_revision\":8,\"mod_revision\":8,\"version\":1,\"value\":\"eA==\",\"lease\":4111120235222229260}}}},\"time\":\"{t}\"}}]"
        );
        assert_eq!(json, expected);
        assert_eq!(decode_content(&content, "x").unwrap(), events);
    }

    #[test]
    fn lenient_where_go_is_lenient() {
        let json = br#"[{"etcdEvent":{"kv":{"key":"YQ==","mod_revision":3,"value":null}}},{"etcdEvent":{"type":0,"kv":{"key":"Yg==","mod_revision":3,"extra":1}},"time":"x","other":true}]"#;
        let ev = decode_json(json, "o").unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].kind, EventKind::Put);
        assert!(ev[0].value.is_empty());
        assert_eq!(ev[0].time, GO_ZERO_TIME);
        assert_eq!(ev[1].key, b"b");
        assert_eq!(decode_json(b"[]", "o").unwrap(), vec![]);
    }

    #[test]
    fn corruption_is_reported_with_the_object() {
        let good = encode_events(&[put("a", "b", 2, 0)]);
        let mut bad_hash = good.clone();
        *bad_hash.last_mut().unwrap() ^= 1;
        let mut bad_json = good.clone();
        bad_json[3] = b'#';
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bad_hash, "sha256"),
            (bad_json, "sha256"),
            (good[..20].to_vec(), "missing its hash"),
            (Vec::new(), "missing its hash"),
        ];
        for (content, why) in cases {
            let err = read_events(io::Cursor::new(content), "p/v2/Incr-1-2-3.gz").unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, Error::Corrupt { .. }) && msg.contains("p/v2/Incr-1-2-3.gz") && msg.contains(why),
                "{msg}"
            );
        }
        for (json, why) in MALFORMED {
            let mut content = json.to_vec();
            content.extend_from_slice(&Sha256::digest(json));
            let msg = decode_content(&content, "obj").unwrap_err().to_string();
            assert!(msg.contains(why) && msg.contains("obj"), "{msg}");
        }
    }

    #[test]
    fn size_limit_refuses_bombs() {
        let content = encode_events(&[put("a", &"v".repeat(1000), 2, 0)]);
        assert!(read_events_limited(io::Cursor::new(content.clone()), "o", 500).is_err());
        assert_eq!(read_events_limited(io::Cursor::new(content), "o", 5000).unwrap().len(), 1);
    }

    #[test]
    fn writer_tracks_what_the_snapshotter_needs() {
        let mut w = DeltaWriter::new();
        assert!(w.is_empty());
        w.push(&put("a", "1", 10, 0));
        let after_one = w.json_len();
        w.push(&put("b", "2", 12, 0));
        assert_eq!((w.len(), w.first_revision(), w.last_revision()), (2, Some(10), Some(12)));
        assert!(w.json_len() > after_one);
        let json_len = w.json_len();
        let content = w.finish();
        assert_eq!(content.len(), json_len + 1 + HASH_LEN);
        assert_eq!(DeltaReader::new(io::Cursor::new(content), "o").unwrap().count(), 2);
        assert_eq!(&encode_events(&[])[..2], b"[]");
    }

    #[test]
    fn times_round_trip_like_go() {
        for (s, nanos) in [
            ("1970-01-01T00:00:00Z", 0i128),
            ("2026-11-25T11:40:06.177924044Z", 1_795_606_806_177_924_044),
            ("2026-11-25T11:50:13.83564043Z", 1_795_607_413_835_640_430),
            ("2000-02-29T23:59:59.5Z", 951_868_799_500_000_000),
            (GO_ZERO_TIME, -62_135_596_800_000_000_000),
        ] {
            assert_eq!(parse_rfc3339_nanos(s), Some(nanos), "{s}");
            assert_eq!(format_rfc3339_nanos(nanos), s);
        }
        assert_eq!(parse_rfc3339_nanos("2026-11-25T12:40:06.5+01:00"), parse_rfc3339_nanos("2026-11-25T11:40:06.5Z"));
        assert_eq!(parse_rfc3339_nanos("2026-11-25T10:40:06-01:00"), parse_rfc3339_nanos("2026-11-25T11:40:06Z"));
        for bad in
            ["", "x", "2026-11-25 11:40:06Z", "2026-13-25T11:40:06Z", "2026-11-25T11:40:06", "2026-11-25T11:40:06.Z"]
        {
            assert_eq!(parse_rfc3339_nanos(bad), None, "{bad}");
        }
        let now = now_rfc3339_nanos();
        assert!(parse_rfc3339_nanos(&now).is_some(), "{now}");
        // Every day of 400 years maps back and forth.
        for day in (-146_097 * 2..146_097).step_by(7) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }
}
