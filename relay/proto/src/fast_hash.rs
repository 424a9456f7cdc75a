//! A small keyed hasher for the relay-path map (5-tuple -> allocation; peer packets find
//! theirs by `RelayHandle`, an index, without hashing). SipHash costs more than the rest of
//! the ChannelData path together; these keys are short and fixed-size, and only authenticated
//! allocations insert them (bounded by the quotas), so a fast multiply-mix with a random
//! per-server seed is enough.

use std::hash::{BuildHasher, Hasher};

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// Builds `FastHasher`s with this map's random seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FastHash {
    seed: u64,
}

impl Default for FastHash {
    fn default() -> Self {
        Self {
            seed: rand::random(),
        }
    }
}

impl BuildHasher for FastHash {
    type Hasher = FastHasher;

    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher { state: self.seed }
    }
}

/// Multiply-rotate mixing per word, a 128-bit multiply fold at the end.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FastHasher {
    state: u64,
}

impl FastHasher {
    #[inline]
    fn mix(&mut self, v: u64) {
        self.state = (self.state ^ v).wrapping_mul(K).rotate_left(29);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let full = u128::from(self.state) * u128::from(K ^ self.state.rotate_left(17));
        (full as u64) ^ ((full >> 64) as u64)
    }
}

/// A `HashMap` with `FastHash`.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, FastHash>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::Hash;
    use std::net::SocketAddr;

    fn hash_of(b: &FastHash, v: impl Hash) -> u64 {
        b.hash_one(v)
    }

    #[test]
    fn distinct_addresses_spread_over_buckets() {
        let b = FastHash::default();
        let mut low_bits = HashSet::new();
        for port in 0..4096u16 {
            let a = SocketAddr::new([192, 0, 2, 1].into(), port);
            low_bits.insert(hash_of(&b, a) & 0xFFF);
        }
        // 4096 keys into 4096 buckets: a decent hash fills well over half of them.
        assert!(low_bits.len() > 2400, "{}", low_bits.len());
        assert_ne!(
            hash_of(&b, "[::1]:1".parse::<SocketAddr>().unwrap()),
            hash_of(&b, "[::1]:2".parse::<SocketAddr>().unwrap())
        );
    }
}
