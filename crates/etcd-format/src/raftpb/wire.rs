//! The protobuf wire encoding shared by every message in [`super`]: varints, tags,
//! length-delimited fields, and a strict field reader.

use super::ProtoError;

/// Wire type of varint fields.
pub const VARINT: u8 = 0;
/// Wire type of length-delimited fields (bytes, strings, embedded messages, packed lists).
pub const LEN: u8 = 2;

/// Appends `v` as a base-128 varint.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends a varint field (tag then value); zero values are written too, as gogo does.
pub fn put_uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(VARINT));
    put_varint(buf, v);
}

/// Appends a length-delimited field.
pub fn put_bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(LEN));
    put_varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// A value read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A varint field.
    Varint(u64),
    /// A length-delimited field's payload.
    Bytes(&'a [u8]),
    /// A fixed 64-bit field (wire type 1), little-endian.
    Fixed64(u64),
    /// A fixed 32-bit field (wire type 5), little-endian.
    Fixed32(u32),
}

/// A bounds-checked cursor over an encoded message.
#[derive(Debug)]
pub struct Reader<'a> {
    message: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading `buf` as an encoding of `message` (the name is used in errors).
    pub fn new(message: &'static str, buf: &'a [u8]) -> Self {
        Reader { message, buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(ProtoError::Truncated { message: self.message, offset: self.pos });
            };
            self.pos += 1;
            // The tenth byte may only carry the single remaining bit.
            if i == 9 && b > 1 {
                return Err(ProtoError::VarintOverflow { message: self.message, offset: start });
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(ProtoError::VarintOverflow { message: self.message, offset: start })
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], ProtoError> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining as u64 {
            return Err(ProtoError::Truncated { message: self.message, offset: self.buf.len() });
        }
        let n = n as usize;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next field as (field number, wire type, offset of its tag, value), or `None` at the end.
    pub fn next_field(&mut self) -> Result<Option<(u64, u8, usize, Value<'a>)>, ProtoError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let tag = self.varint()?;
        let field = tag >> 3;
        let wire_type = (tag & 7) as u8;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(ProtoError::InvalidTag { message: self.message, tag, offset: at });
        }
        let value = match wire_type {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Value::Fixed64(u64::from_le_bytes(a))
            }
            2 => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                Value::Fixed32(u32::from_le_bytes(a))
            }
            _ => {
                return Err(ProtoError::InvalidTag { message: self.message, tag, offset: at });
            }
        };
        Ok(Some((field, wire_type, at, value)))
    }

    /// The error for a field the caller does not accept.
    pub fn unexpected(&self, field: u64, wire_type: u8, offset: usize) -> ProtoError {
        ProtoError::UnexpectedField { message: self.message, field, wire_type, offset }
    }

    /// Appends the values of a repeated `uint64` field, accepting the unpacked form gogo writes
    /// for these messages and the packed form any protobuf decoder must also accept.
    pub fn repeated_u64(
        &self,
        out: &mut Vec<u64>,
        field: u64,
        value: Value<'a>,
        offset: usize,
    ) -> Result<(), ProtoError> {
        match value {
            Value::Varint(v) => out.push(v),
            Value::Bytes(b) => {
                let mut inner = Reader::new(self.message, b);
                while inner.pos < b.len() {
                    out.push(inner.varint()?);
                }
            }
            Value::Fixed64(_) => return Err(self.unexpected(field, 1, offset)),
            Value::Fixed32(_) => return Err(self.unexpected(field, 5, offset)),
        }
        Ok(())
    }
}
