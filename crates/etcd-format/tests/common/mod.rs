//! What the WAL tests share: an oracle for the segment's framing, written from etcd's format
//! (docs/formats.md §5) and independent of the crate's reader.

/// (offset, record length, padding) of every frame before the zero tail: a little-endian u64
/// whose low 56 bits are the record's length and, when its top bit is set, bits 56..59 the
/// padding after it.
pub fn frames(seg: &[u8]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 8 <= seg.len() {
        let lf = u64::from_le_bytes(seg[off..off + 8].try_into().unwrap());
        if lf == 0 {
            break;
        }
        let len = (lf & 0x00ff_ffff_ffff_ffff) as usize;
        let pad = if lf >> 63 == 1 { ((lf >> 56) & 7) as usize } else { 0 };
        out.push((off, len, pad));
        off += 8 + len + pad;
    }
    out
}
