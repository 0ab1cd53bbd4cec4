//! A small deterministic PRNG (xorshift64*), so a dataset is the same on every run for the
//! same seed without pulling in a random-number crate.

/// xorshift64* generator; good enough to pick keys and operations, not for cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (0 is replaced, xorshift must not start at 0).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`; 0 yields 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Percent chance: true with probability `p`/100.
    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// A value of about `len` bytes that compresses like Kubernetes objects do (~3×): a
    /// repeated JSON-ish skeleton with random alphanumeric fields in between.
    pub fn value(&mut self, len: usize) -> Vec<u8> {
        const SKELETON: &[u8] = b"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"\",\"namespace\":\"default\",\"labels\":{\"app\":\"\"}},\"spec\":{\"containers\":[{\"image\":\"registry.k8s.io/pause:3.9\",\"name\":\"\"}]}}";
        const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let take = SKELETON.len().min(len - out.len()).min(40 + self.below(60) as usize);
            let start = self.below((SKELETON.len() - take + 1) as u64) as usize;
            out.extend_from_slice(&SKELETON[start..start + take]);
            let random = (len - out.len()).min(20 + self.below(60) as usize);
            for _ in 0..random {
                out.push(ALNUM[self.below(ALNUM.len() as u64) as usize]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_values_have_the_asked_length() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        for len in [0, 1, 50, 1600] {
            assert_eq!(a.value(len).len(), len);
        }
        assert!(a.below(10) < 10);
    }
}
