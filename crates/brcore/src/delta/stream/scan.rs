//! Reading delta JSON as bytes, for [`super::DeltaDecoder`]: where a JSON value ends (the
//! general path hands it to serde_json whole), and the fast path that parses one event in the
//! exact shape Go's `encoding/json` writes, or says it needs more bytes or the general path.

use super::Slot;
use crate::delta::EventKind;

pub(super) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end of the JSON value starting at `i` (after whitespace), or `None` if the buffer ends
/// first. Malformed input ends somewhere; serde_json then says what is wrong with it.
pub(super) fn value_end(b: &[u8], i: usize) -> Option<usize> {
    let i = skip_ws(b, i);
    let first = *b.get(i)?;
    if first != b'{' && first != b'[' && first != b'"' {
        // A scalar (or garbage): up to the next delimiter.
        let mut j = i;
        while j < b.len() && !matches!(b[j], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
            j += 1;
        }
        return (j < b.len()).then_some(j);
    }
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'"' => {
                j += 1;
                loop {
                    let k = j + memchr::memchr2(b'"', b'\\', &b[j..])?;
                    if b[k] == b'\\' {
                        j = k + 2;
                        if j > b.len() {
                            return None;
                        }
                    } else {
                        j = k;
                        break;
                    }
                }
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
    None
}

/// What the fast path made of the bytes at a position.
pub(super) enum Fast {
    /// One event in Go's exact shape, ending at the offset.
    Done(usize, Slot),
    /// A prefix of such an event: more bytes are needed.
    More,
    /// Not Go's exact shape: the general path decides.
    Slow,
}

/// A cursor for the fast path; every method answers `Err(Fast)` when the shape ends or breaks.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cur<'_> {
    fn lit(&mut self, lit: &[u8]) -> Result<(), Fast> {
        let rest = &self.b[self.i..];
        if rest.len() < lit.len() {
            return Err(if lit.starts_with(rest) { Fast::More } else { Fast::Slow });
        }
        if &rest[..lit.len()] != lit {
            return Err(Fast::Slow);
        }
        self.i += lit.len();
        Ok(())
    }

    fn peek(&self) -> Result<u8, Fast> {
        self.b.get(self.i).copied().ok_or(Fast::More)
    }

    /// A string up to the next `"`; returns its bytes' range. Whether it holds an escape or a
    /// control character is for the caller to check (base64 decoding refuses both).
    fn string(&mut self) -> Result<(usize, usize), Fast> {
        self.lit(b"\"")?;
        let start = self.i;
        let end = start + memchr::memchr(b'"', &self.b[start..]).ok_or(Fast::More)?;
        self.i = end + 1;
        Ok((start, end))
    }

    /// An integer as Go writes it (no sign but `-`, no leading zeros, no fraction).
    fn int(&mut self) -> Result<i64, Fast> {
        let start = self.i;
        let neg = self.peek()? == b'-';
        if neg {
            self.i += 1;
        }
        let digits = self.i;
        let mut n: i64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            n = n.checked_mul(10).and_then(|n| n.checked_sub(i64::from(c - b'0'))).ok_or(Fast::Slow)?;
            self.i += 1;
        }
        match self.b.get(self.i) {
            None => return Err(Fast::More),
            Some(b',' | b'}') => {}
            Some(_) => return Err(Fast::Slow),
        }
        let len = self.i - digits;
        if len == 0 || (len > 1 && self.b[digits] == b'0') || (neg && n == 0) {
            return Err(Fast::Slow);
        }
        let _ = start;
        // Accumulated negatively so that i64::MIN parses.
        if neg { Ok(n) } else { n.checked_neg().ok_or(Fast::Slow) }
    }
}

/// Parses one event in Go's exact shape at `i`, base64-decoding key and value into `data`.
pub(super) fn fast_event(b: &[u8], i: usize, data: &mut Vec<u8>) -> Fast {
    match fast_event_inner(b, i, data) {
        Ok(done) => done,
        Err(f) => f,
    }
}

fn fast_event_inner(b: &[u8], i: usize, data: &mut Vec<u8>) -> Result<Fast, Fast> {
    let mut c = Cur { b, i };
    c.lit(b"{\"etcdEvent\":{")?;
    let mut kind = EventKind::Put;
    if c.peek()? == b'"' && b.get(c.i + 1) == Some(&b't') {
        c.lit(b"\"type\":1,")?;
        kind = EventKind::Delete;
    }
    c.lit(b"\"kv\":{")?;
    let mut slot = Slot {
        kind,
        key: (0, 0),
        value: (0, 0),
        time: (0, 0),
        create_revision: 0,
        mod_revision: 0,
        version: 0,
        lease: 0,
    };
    // The fields in Go's order; each at most once.
    const FIELDS: [&[u8]; 6] = [b"key", b"create_revision", b"mod_revision", b"version", b"value", b"lease"];
    let mut next_field = 0;
    let mut first = true;
    loop {
        if c.peek()? == b'}' {
            c.i += 1;
            break;
        }
        if !first {
            c.lit(b",")?;
        }
        first = false;
        let (ns, ne) = c.string()?;
        let name = &b[ns..ne];
        let Some(at) = FIELDS[next_field..].iter().position(|f| *f == name) else {
            return Err(Fast::Slow);
        };
        let field = next_field + at;
        next_field = field + 1;
        c.lit(b":")?;
        match field {
            0 | 4 => {
                let (s, e) = c.string()?;
                let start = data.len();
                // Decoded length is at most 3/4 of the text.
                data.resize(start + (e - s).div_ceil(4) * 3, 0);
                // SIMD; anything it refuses goes to the slow path, which names what is wrong.
                let out = base64_simd::Out::from_slice(&mut data[start..]);
                let n = base64_simd::STANDARD.decode(&b[s..e], out).map_err(|_| Fast::Slow)?.len();
                data.truncate(start + n);
                if field == 0 {
                    slot.key = (start, start + n);
                } else {
                    slot.value = (start, start + n);
                }
            }
            1 => slot.create_revision = c.int()?,
            2 => slot.mod_revision = c.int()?,
            3 => slot.version = c.int()?,
            _ => slot.lease = c.int()?,
        }
    }
    c.lit(b"},\"time\":")?;
    let (ts, te) = c.string()?;
    c.lit(b"}")?;
    let time = &b[ts..te];
    if time.iter().any(|&c| c == b'\\' || c < 0x20) || std::str::from_utf8(time).is_err() {
        return Err(Fast::Slow);
    }
    let start = data.len();
    data.extend_from_slice(time);
    slot.time = (start, data.len());
    Ok(Fast::Done(c.i, slot))
}
