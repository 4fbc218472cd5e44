//! A small deterministic generator for unit tests (xorshift), so a failing
//! sequence replays from its seed.

/// Xorshift state; the seed must not be zero.
pub(crate) struct Random(pub(crate) u64);

impl Random {
    /// The next number below `n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
