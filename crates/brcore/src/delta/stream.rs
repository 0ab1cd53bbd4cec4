//! Streaming decode of delta content: plain bytes in, [`EventBatch`]es out, never the whole
//! object in memory.
//!
//! [`DeltaDecoder::feed`] takes the decompressed bytes of one delta as they arrive, in pieces of
//! any size. It hashes them (all but the last 32, the sha256 trailer), parses every complete
//! event and appends it to the current batch; [`DeltaDecoder::next_batch`] hands out a batch
//! once it holds [`DeltaDecoder::batch_bytes`] of event data. [`DeltaDecoder::finish`] checks
//! that the array closed and that the trailer matches.
//!
//! The parser has a fast path for the exact shape Go's `encoding/json` writes (see
//! [`super`]): fields in struct order, no whitespace, base64 without escapes. Anything else (an
//! older writer's field order, whitespace, `null`, unknown fields) is cut out as one JSON value
//! and decoded by serde_json with the same rules as [`super::decode_json`], so the two paths
//! accept exactly the same input.
//!
//! A damaged object is reported as its hash mismatch whenever the hash is wrong: after a parse
//! error the decoder keeps hashing what follows, and [`DeltaDecoder::finish`] prefers the hash's
//! verdict. Events before the damage may already have been handed out; the caller fails the
//! whole restore, so they never reach a data dir.
//!
//! (Over 700 lines only with its unit tests, about 145 lines that feed the decoder in pieces of
//! every size; the code is about 590.)

use sha2::{Digest, Sha256};

use super::{Event, EventKind, HASH_LEN, RawRecord};
use crate::error::Error;

mod scan;
use scan::{Fast, fast_event, skip_ws, value_end};

/// Event bytes (keys, values, times) per batch unless configured: large enough that a batch
/// crosses the channel rarely, small enough that a few per delta in flight cost a few MiB.
pub const DEFAULT_BATCH_BYTES: usize = 1 << 20;

/// One event of a batch: numbers inline, bytes as ranges of the batch's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    kind: EventKind,
    key: (usize, usize),
    value: (usize, usize),
    time: (usize, usize),
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
}

/// Events of a delta in one buffer: what the restore's decoders hand to the db writer.
#[derive(Debug, Default, Clone)]
pub struct EventBatch {
    data: Vec<u8>,
    slots: Vec<Slot>,
    /// Where the buffers go back when the batch is dropped (decoders' batches).
    pool: Option<BatchPool>,
}

impl Drop for EventBatch {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.put(std::mem::take(&mut self.data), std::mem::take(&mut self.slots));
        }
    }
}

/// Buffers of dropped [`EventBatch`]es, for the decoders' next batches: the writer drops each
/// batch once applied, and a buffer used again costs no page faults, no zeroing by the kernel
/// and no growing by doubling. Shared by the decoders of one restore; holds a few buffers at
/// most.
#[derive(Debug, Clone, Default)]
pub struct BatchPool(std::sync::Arc<std::sync::Mutex<Vec<Buffers>>>);

/// The buffers of one batch: its event bytes and its slots.
type Buffers = (Vec<u8>, Vec<Slot>);

impl BatchPool {
    /// Idle buffers kept at most.
    const KEEP: usize = 8;

    /// An empty pool.
    pub fn new() -> BatchPool {
        BatchPool::default()
    }

    fn put(&self, mut data: Vec<u8>, mut slots: Vec<Slot>) {
        if data.capacity() == 0 {
            return;
        }
        data.clear();
        slots.clear();
        if let Ok(mut idle) = self.0.lock()
            && idle.len() < Self::KEEP
        {
            idle.push((data, slots));
        }
    }

    /// An empty batch whose buffers come back here, reused or sized for `bytes` of events.
    fn batch(&self, bytes: usize) -> EventBatch {
        let reused = self.0.lock().ok().and_then(|mut idle| idle.pop());
        let (data, slots) = reused.unwrap_or_else(|| (Vec::with_capacity(bytes + bytes / 4), Vec::new()));
        EventBatch { data, slots, pool: Some(self.clone()) }
    }
}

/// A borrowed view of one event (of an [`EventBatch`] or an [`Event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// Put or delete.
    pub kind: EventKind,
    /// The key.
    pub key: &'a [u8],
    /// The value (empty for deletes).
    pub value: &'a [u8],
    /// Revision of the key's creation.
    pub create_revision: i64,
    /// Revision of this change.
    pub mod_revision: i64,
    /// The key's version after this change.
    pub version: i64,
    /// The key's lease (0 for none).
    pub lease: i64,
    /// The event's time as stored (RFC 3339).
    pub time: &'a str,
}

impl EventRef<'_> {
    /// The event's time as unix nanoseconds, if it parses.
    pub fn time_nanos(&self) -> Option<i128> {
        super::parse_rfc3339_nanos(self.time)
    }

    /// An owned copy.
    pub fn to_event(&self) -> Event {
        Event {
            kind: self.kind,
            key: self.key.to_vec(),
            value: self.value.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
            time: self.time.to_string(),
        }
    }
}

impl Event {
    /// A borrowed view of this event.
    pub fn view(&self) -> EventRef<'_> {
        EventRef {
            kind: self.kind,
            key: &self.key,
            value: &self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
            time: &self.time,
        }
    }
}

impl EventBatch {
    /// An empty batch.
    pub fn new() -> EventBatch {
        EventBatch::default()
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes the batch holds in memory (its buffers' capacities).
    pub fn memory(&self) -> usize {
        self.data.capacity() + self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    /// Appends a copy of `event`.
    pub fn push(&mut self, event: EventRef<'_>) {
        let slot = self.copy_in(event);
        self.slots.push(slot);
    }

    /// Copies `event`'s bytes into the batch's buffer; the slot that describes it there (not yet
    /// one of the batch's events).
    fn copy_in(&mut self, event: EventRef<'_>) -> Slot {
        let key = self.append(event.key);
        let value = self.append(event.value);
        let time = self.append(event.time.as_bytes());
        Slot {
            kind: event.kind,
            key,
            value,
            time,
            create_revision: event.create_revision,
            mod_revision: event.mod_revision,
            version: event.version,
            lease: event.lease,
        }
    }

    fn append(&mut self, bytes: &[u8]) -> (usize, usize) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        (start, self.data.len())
    }

    /// The events, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = EventRef<'_>> + '_ {
        self.slots.iter().map(move |s| self.view(s))
    }

    fn view(&self, s: &Slot) -> EventRef<'_> {
        view(&self.data, s)
    }

    /// Keeps the events for which `keep` says true (the bytes of the others stay in the
    /// buffer until the batch is dropped).
    pub fn retain(&mut self, mut keep: impl FnMut(EventRef<'_>) -> bool) {
        let data = &self.data;
        self.slots.retain(|s| keep(view(data, s)));
    }
}

fn view<'a>(data: &'a [u8], s: &Slot) -> EventRef<'a> {
    EventRef {
        kind: s.kind,
        key: &data[s.key.0..s.key.1],
        value: &data[s.value.0..s.value.1],
        create_revision: s.create_revision,
        mod_revision: s.mod_revision,
        version: s.version,
        lease: s.lease,
        // Times are checked to be UTF-8 when parsed; an empty str stands in otherwise.
        time: std::str::from_utf8(&data[s.time.0..s.time.1]).unwrap_or_default(),
    }
}

/// Parser state between feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the `[`.
    Start,
    /// After `[`: an event or `]` comes next.
    First,
    /// After an event: `,` or `]` comes next.
    Next,
    /// After `]`: only the trailer (and whitespace before it) may follow.
    Closed,
}

/// Decodes one delta's content as it streams (see the module docs).
#[derive(Debug)]
pub struct DeltaDecoder {
    object: String,
    /// Plain bytes not yet parsed, from stream offset `base`: `buf[..filled]` (the rest is
    /// room to read into, initialized once, so reads need no zeroing).
    buf: Vec<u8>,
    filled: usize,
    base: u64,
    /// Parse position in `buf`.
    pos: usize,
    /// Bytes fed so far, and how many of them are hashed (all but the last `HASH_LEN`).
    total: u64,
    hashed: u64,
    hasher: Sha256,
    state: State,
    /// Where the JSON ended (the stream offset after `]` and any whitespace).
    json_end: Option<u64>,
    /// The first parse error; the hash decides at `finish` whether it is reported.
    failed: Option<Error>,
    /// Do not try to parse again before `buf` holds this many bytes (an event that spans
    /// feeds is parsed once it is whole, not once per feed).
    wait_for: usize,
    index: usize,
    previous: i64,
    batch: EventBatch,
    batch_bytes: usize,
    events: u64,
    pool: Option<BatchPool>,
    /// `buf` holds the whole delta, handed over by [`DeltaDecoder::feed_whole`]: parsed where
    /// it lies, never moved down.
    whole: bool,
}

impl DeltaDecoder {
    /// A decoder for the delta `object` (a store key, for messages).
    pub fn new(object: &str) -> DeltaDecoder {
        DeltaDecoder {
            object: object.to_string(),
            buf: Vec::new(),
            filled: 0,
            base: 0,
            pos: 0,
            total: 0,
            hashed: 0,
            hasher: Sha256::new(),
            state: State::Start,
            json_end: None,
            failed: None,
            wait_for: 0,
            index: 0,
            previous: i64::MIN,
            batch: EventBatch::new(),
            batch_bytes: DEFAULT_BATCH_BYTES,
            events: 0,
            pool: None,
            whole: false,
        }
    }

    /// Takes the batches' buffers from `pool` (and they go back there once dropped).
    pub fn with_pool(mut self, pool: BatchPool) -> DeltaDecoder {
        self.batch = pool.batch(self.batch_bytes);
        self.pool = Some(pool);
        self
    }

    /// Sets the event bytes after which a batch is ready (at least one event per batch).
    pub fn batch_bytes(mut self, bytes: usize) -> DeltaDecoder {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// Events decoded so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Plain bytes fed so far.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Takes the next plain bytes of the delta (call [`DeltaDecoder::next_batch`] after it).
    pub fn feed(&mut self, data: &[u8]) {
        self.room(data.len())[..data.len()].copy_from_slice(data);
        self.fed(data.len());
    }

    /// Takes the delta's plain bytes whole, as the first and only input: the decoder parses them
    /// where they are, with none of the copying of [`DeltaDecoder::feed`] and
    /// [`DeltaDecoder::read_from`], and [`DeltaDecoder::finish_returning`] hands the buffer back
    /// for the next delta. After other input, `whole` is fed as `feed` would.
    pub fn feed_whole(&mut self, whole: Vec<u8>) {
        if self.total != 0 {
            return self.feed(&whole);
        }
        let n = whole.len();
        self.buf = whole;
        self.whole = true;
        self.fed(n);
    }

    /// Reads the next plain bytes of the delta from `from`, at most `max`, straight into the
    /// decoder's buffer (no copy, as [`DeltaDecoder::feed`] makes); returns how many (0 at the
    /// end). Call [`DeltaDecoder::next_batch`] after it.
    pub fn read_from(&mut self, from: &mut dyn std::io::Read, max: usize) -> std::io::Result<usize> {
        let n = from.read(self.room(max))?;
        self.fed(n);
        Ok(n)
    }

    /// Room for `n` more bytes after the filled part.
    fn room(&mut self, n: usize) -> &mut [u8] {
        let end = self.filled + n;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        &mut self.buf[self.filled..end]
    }

    /// `n` bytes were put in the room.
    fn fed(&mut self, n: usize) {
        self.filled += n;
        self.total += n as u64;
        self.hash_ready();
        if self.failed.is_some() {
            // Only the hash matters now: keep the last HASH_LEN bytes for the trailer.
            let keep = self.filled.min(HASH_LEN);
            self.drop_front(self.filled - keep);
            self.pos = 0;
        }
    }

    /// Drops the first `n` bytes of the filled part.
    fn drop_front(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
        self.base += n as u64;
    }

    /// Parses what was fed; returns a batch once one holds the batch size of event bytes.
    /// `None`: the bytes fed so far are used up (the events parsed wait in the next batch). A
    /// parse error is kept for [`DeltaDecoder::finish`].
    pub fn next_batch(&mut self) -> Option<EventBatch> {
        if self.failed.is_none() && self.filled >= self.wait_for {
            self.wait_for = 0;
            if let Err(e) = self.parse(false) {
                self.failed = Some(e);
            }
        }
        self.compact();
        if self.failed.is_none() && self.batch.data.len() >= self.batch_bytes {
            let next = match &self.pool {
                Some(pool) => pool.batch(self.batch_bytes),
                None => EventBatch::new(),
            };
            return Some(std::mem::replace(&mut self.batch, next));
        }
        None
    }

    /// Hashes every byte that is certainly not part of the trailer.
    fn hash_ready(&mut self) {
        let upto = self.total.saturating_sub(HASH_LEN as u64);
        if upto > self.hashed {
            let from = (self.hashed - self.base) as usize;
            let to = (upto - self.base) as usize;
            self.hasher.update(&self.buf[from..to]);
            self.hashed = upto;
        }
    }

    /// Drops the bytes that are both parsed and hashed.
    fn compact(&mut self) {
        let hashed_in_buf = (self.hashed - self.base) as usize;
        let drop = self.pos.min(hashed_in_buf);
        // Move the rest down only when it is worth it: the parsed prefix is at least half, and
        // more input will come after it (a whole delta is all there already).
        if drop > 0 && drop * 2 >= self.filled && !self.whole {
            self.drop_front(drop);
            self.pos -= drop;
        }
    }

    /// Ends the stream: parses what is left, checks the trailer, and returns the last batch
    /// (possibly empty).
    pub fn finish(mut self) -> Result<EventBatch, Error> {
        self.end()
    }

    /// [`DeltaDecoder::finish`], and the decoder's buffer back (with what it held: the one given
    /// to [`DeltaDecoder::feed_whole`], for the next delta).
    pub fn finish_returning(mut self) -> (Result<EventBatch, Error>, Vec<u8>) {
        let ended = self.end();
        (ended, std::mem::take(&mut self.buf))
    }

    fn end(&mut self) -> Result<EventBatch, Error> {
        if self.failed.is_none()
            && let Err(e) = self.parse(true)
        {
            self.failed = Some(e);
        }
        if self.total <= HASH_LEN as u64 {
            return Err(Error::corrupt(
                &self.object,
                format!("delta snapshot is missing its hash ({} bytes of content)", self.total),
            ));
        }
        let trailer_at = (self.total - HASH_LEN as u64 - self.base) as usize;
        let trailer = &self.buf[trailer_at..self.filled];
        let json_len = self.total - HASH_LEN as u64;
        let digest = std::mem::take(&mut self.hasher).finalize();
        if digest.as_slice() != trailer {
            return Err(Error::corrupt(
                &self.object,
                format!(
                    "sha256 of its {json_len} bytes of JSON is {}, but the trailer says {}",
                    super::hex(digest.as_slice()),
                    super::hex(trailer)
                ),
            ));
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        match self.json_end {
            Some(end) if end == json_len => Ok(std::mem::take(&mut self.batch)),
            _ => Err(self.syntax("trailing characters after the JSON array")),
        }
    }

    fn syntax(&self, why: impl std::fmt::Display) -> Error {
        Error::corrupt(&self.object, format!("its JSON does not parse: {why}"))
    }

    /// The bytes that may still be JSON: at the end, everything but the trailer.
    fn json_limit(&self, at_end: bool) -> usize {
        if at_end { (self.total.saturating_sub(HASH_LEN as u64) - self.base) as usize } else { self.filled }
    }

    /// Parses as far as the bytes go, or until the batch is full. At the end (`at_end`),
    /// everything left is parsed and running out of bytes is an error.
    fn parse(&mut self, at_end: bool) -> Result<(), Error> {
        let limit = self.json_limit(at_end);
        if self.pos > limit {
            return Err(self.syntax("EOF while parsing a list"));
        }
        loop {
            if !at_end && self.batch.data.len() >= self.batch_bytes {
                return Ok(());
            }
            let b = &self.buf[..limit];
            let i = skip_ws(b, self.pos);
            match self.state {
                State::Closed => {
                    // Before the end the trailer's bytes may already be in the buffer.
                    if !at_end {
                        return Ok(());
                    }
                    if i < b.len() {
                        return Err(self.syntax(format!("trailing characters at byte {}", self.base + i as u64)));
                    }
                    self.json_end = Some(self.base + i as u64);
                    return Ok(());
                }
                _ if i == b.len() => {
                    if at_end {
                        return Err(self.syntax("EOF while parsing a list"));
                    }
                    return Ok(());
                }
                State::Start => {
                    if b[i] != b'[' {
                        return Err(self.syntax(format!("expected `[` at byte {}", self.base + i as u64)));
                    }
                    self.pos = i + 1;
                    self.state = State::First;
                }
                State::First | State::Next => {
                    if b[i] == b']' {
                        self.pos = i + 1;
                        self.state = State::Closed;
                        continue;
                    }
                    let mut j = i;
                    if self.state == State::Next {
                        if b[i] != b',' {
                            return Err(self.syntax(format!("expected `,` or `]` at byte {}", self.base + i as u64)));
                        }
                        j = skip_ws(b, i + 1);
                        if j == b.len() {
                            if at_end {
                                return Err(self.syntax("EOF while parsing a value"));
                            }
                            return Ok(());
                        }
                    }
                    match self.event_at(j, limit)? {
                        Some(end) => {
                            self.pos = end;
                            self.state = State::Next;
                        }
                        None if at_end => return Err(self.syntax("EOF while parsing a value")),
                        None => {
                            // Not whole yet: try again once the buffer has grown by half.
                            self.wait_for = self.filled + (self.filled - self.pos) / 2 + 1;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Parses the event starting at `i`; `None` if it is not whole within `limit`.
    fn event_at(&mut self, i: usize, limit: usize) -> Result<Option<usize>, Error> {
        let b = &self.buf[..limit];
        let mark = self.batch.data.len();
        match fast_event(b, i, &mut self.batch.data) {
            Fast::Done(end, slot) => {
                self.accept(slot)?;
                return Ok(Some(end));
            }
            Fast::More => {
                self.batch.data.truncate(mark);
                return Ok(None);
            }
            Fast::Slow => self.batch.data.truncate(mark),
        }
        let Some(end) = value_end(b, i) else { return Ok(None) };
        let record: RawRecord = serde_json::from_slice(&b[i..end]).map_err(|e| self.syntax(e))?;
        let event = super::record_to_event(record, self.index, &self.object)?;
        let slot = self.batch.copy_in(event.view());
        self.accept(slot)?;
        Ok(Some(end))
    }

    /// Checks what every event must satisfy and adds it to the batch.
    fn accept(&mut self, slot: Slot) -> Result<(), Error> {
        let i = self.index;
        if slot.mod_revision <= 0 {
            return Err(Error::corrupt(&self.object, format!("event #{i} has no mod_revision")));
        }
        if slot.mod_revision < self.previous {
            return Err(Error::corrupt(
                &self.object,
                format!(
                    "event #{i} has mod_revision {} after {}: revisions go backwards",
                    slot.mod_revision, self.previous
                ),
            ));
        }
        self.previous = slot.mod_revision;
        self.index += 1;
        self.events += 1;
        self.batch.slots.push(slot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode_json, encode_events};
    use super::*;

    fn put(key: &str, value: &[u8], rev: i64, lease: i64) -> Event {
        Event {
            kind: EventKind::Put,
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            create_revision: rev - 1,
            mod_revision: rev,
            version: 2,
            lease,
            time: "2026-11-25T11:40:06.177924044Z".into(),
        }
    }

    fn decode_in_pieces(content: &[u8], piece: usize, batch: usize) -> Result<Vec<Event>, Error> {
        let mut d = DeltaDecoder::new("obj").batch_bytes(batch);
        let mut out = Vec::new();
        for chunk in content.chunks(piece.max(1)) {
            d.feed(chunk);
            while let Some(b) = d.next_batch() {
                out.extend(b.iter().map(|e| e.to_event()));
            }
        }
        let last = d.finish()?;
        out.extend(last.iter().map(|e| e.to_event()));
        Ok(out)
    }

    fn sample() -> Vec<Event> {
        let mut events = Vec::new();
        for r in 2..60 {
            let value: Vec<u8> = (0..(r * 37 % 300)).map(|i| (i * r) as u8).collect();
            events.push(put(&format!("/registry/k{r}"), &value, r, if r % 7 == 0 { 0x7fff_0000_0000 + r } else { 0 }));
            if r % 5 == 0 {
                events.push(Event {
                    kind: EventKind::Delete,
                    key: format!("/registry/k{}", r - 1).into_bytes(),
                    value: vec![],
                    create_revision: 0,
                    mod_revision: r,
                    version: 0,
                    lease: 0,
                    time: "2026-11-25T11:40:06Z".into(),
                });
            }
        }
        events.push(put("", b"", 61, -5));
        events
    }

    #[test]
    fn any_piece_size_and_batch_size_gives_the_same_events() {
        let events = sample();
        let content = encode_events(&events);
        for piece in [1, 2, 7, 31, 32, 33, 100, 4096, content.len()] {
            for batch in [1, 100, 1 << 20] {
                assert_eq!(decode_in_pieces(&content, piece, batch).unwrap(), events, "piece {piece} batch {batch}");
            }
        }
    }

    #[test]
    fn what_go_does_not_write_goes_the_general_way_with_the_same_result() {
        // Whitespace, another field order, explicit type 0, nulls and unknown fields: serde_json
        // accepts them, so the streaming decoder must too, and agree with decode_json.
        let json = br#" [ {"time":"t1","etcdEvent":{"kv":{"mod_revision":3,"key":"YQ==","value":null},"type":0}} ,
            {"etcdEvent":{"type":1,"kv":{"key":"Yg==","mod_revision":4,"extra":[1,{"a":"}"}]}},"time":"t\"2"},
            {"etcdEvent":{"kv":{"key":"Yw==","create_revision":5,"mod_revision":5,"version":1,"value":"eA==","lease":-9223372036854775808}}} ] "#;
        let mut content = json.to_vec();
        content.extend_from_slice(&Sha256::digest(json));
        let expected = decode_json(json, "o").unwrap();
        assert_eq!(expected.len(), 3);
        for piece in [1, 5, 64, content.len()] {
            assert_eq!(decode_in_pieces(&content, piece, 1).unwrap(), expected, "piece {piece}");
        }
    }

    #[test]
    fn damage_is_reported_as_the_hash_when_the_hash_is_wrong() {
        let content = encode_events(&sample());
        let mut bad = content.clone();
        bad[40] = b'#';
        let msg = decode_in_pieces(&bad, 64, 100).unwrap_err().to_string();
        assert!(msg.contains("sha256") && msg.contains("obj"), "{msg}");
        // A parse error with a matching hash (a writer's bug, not damage) is reported as such.
        for (json, why) in super::super::MALFORMED.into_iter().chain([(&b"[]x"[..], "parse"), (b"{}", "parse")]) {
            let mut content = json.to_vec();
            content.extend_from_slice(&Sha256::digest(json));
            for piece in [1, 1000] {
                let msg = decode_in_pieces(&content, piece, 1).unwrap_err().to_string();
                assert!(msg.contains(why) && msg.contains("obj"), "{piece}: {msg}");
            }
        }
        for short in [&content[..0], &content[..20]] {
            let msg = decode_in_pieces(short, 7, 1).unwrap_err().to_string();
            assert!(msg.contains("missing its hash") || msg.contains("sha256"), "{msg}");
        }
    }

    /// Decodes `content` handed over whole; returns the events (or the error) and the buffer
    /// the decoder gave back.
    fn decode_whole(content: &[u8], batch: usize) -> (Result<Vec<Event>, Error>, Vec<u8>) {
        let mut d = DeltaDecoder::new("obj").batch_bytes(batch);
        let mut out = Vec::new();
        d.feed_whole(content.to_vec());
        while let Some(b) = d.next_batch() {
            out.extend(b.iter().map(|e| e.to_event()));
        }
        let (last, buf) = d.finish_returning();
        (last.map(|last| out.into_iter().chain(last.iter().map(|e| e.to_event())).collect()), buf)
    }

    #[test]
    fn a_delta_fed_whole_is_parsed_in_place_and_its_buffer_comes_back() {
        let events = sample();
        let content = encode_events(&events);
        for batch in [1, 100, 1 << 20] {
            let (got, buf) = decode_whole(&content, batch);
            assert!(got.unwrap() == events, "batch {batch}");
            assert!(buf == content, "the buffer comes back as it was given (nothing moved down)");
        }
        // The buffer given is the one parsed: it comes back at the same address.
        let mut d = DeltaDecoder::new("obj");
        let given = content.clone();
        let at = given.as_ptr();
        d.feed_whole(given);
        while d.next_batch().is_some() {}
        let (last, buf) = d.finish_returning();
        assert!(last.is_ok() && buf.as_ptr() == at);
        // Damage is found by the hash, as in pieces; the buffer still comes back.
        let mut bad = content.clone();
        bad[40] = b'#';
        let (got, buf) = decode_whole(&bad, 100);
        let msg = got.unwrap_err().to_string();
        assert!(msg.contains("sha256") && msg.contains("obj"), "{msg}");
        assert!(buf.capacity() >= 32, "{}", buf.capacity());
        assert!(decode_whole(&content[..20], 1).0.unwrap_err().to_string().contains("missing its hash"));
        // After other input, a whole buffer is only more input.
        let mut d = DeltaDecoder::new("obj");
        d.feed(&content[..50]);
        d.feed_whole(content[50..].to_vec());
        let mut got = Vec::new();
        while let Some(b) = d.next_batch() {
            got.extend(b.iter().map(|e| e.to_event()));
        }
        got.extend(d.finish().unwrap().iter().map(|e| e.to_event()));
        assert!(got == events);
    }

    #[test]
    fn batches_hold_about_the_batch_size() {
        let events = sample();
        let content = encode_events(&events);
        let mut d = DeltaDecoder::new("o").batch_bytes(1000);
        let mut sizes = Vec::new();
        d.feed(&content);
        while let Some(b) = d.next_batch() {
            sizes.push(b.len());
        }
        let rest = d.finish().unwrap();
        assert!(sizes.len() > 3, "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>() + rest.len(), events.len());
        let mut batch = EventBatch::new();
        events.iter().for_each(|e| batch.push(e.view()));
        batch.retain(|e| e.mod_revision > 30);
        assert!(batch.iter().all(|e| e.mod_revision > 30) && !batch.is_empty());
    }

    #[test]
    fn reading_in_place_with_a_pool_gives_the_same_events_and_reuses_the_buffers() {
        let events = sample();
        let content = encode_events(&events);
        let pool = BatchPool::new();
        for piece in [7, 100, 1 << 20] {
            let mut d = DeltaDecoder::new("obj").batch_bytes(1000).with_pool(pool.clone());
            let mut reader = std::io::Cursor::new(&content);
            let mut got = Vec::new();
            let mut batches = 0;
            while d.read_from(&mut reader, piece).unwrap() > 0 {
                while let Some(b) = d.next_batch() {
                    got.extend(b.iter().map(|e| e.to_event()));
                    batches += 1;
                }
            }
            got.extend(d.finish().unwrap().iter().map(|e| e.to_event()));
            assert!(batches > 3, "{batches} batches");
            assert!(got == events, "piece {piece}");
            // Every batch dropped gave its buffers back (up to what the pool keeps).
            let idle = pool.0.lock().unwrap();
            assert!(!idle.is_empty() && idle.iter().all(|(data, slots)| data.is_empty() && slots.is_empty()));
        }
    }
}
