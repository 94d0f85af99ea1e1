//! SplitMix64, the one deterministic generator of the crate: the Half-Space Trees' splits, the
//! evaluation simulator's world, the tests' random traffic. The same seed gives the same
//! numbers on every machine, so a replay and an evaluation are reproducible.

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A SplitMix64 generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// From a seed (mixed first, so that seeds 0, 1, 2... start far apart).
    pub fn new(seed: u64) -> Self {
        Self(seed ^ GOLDEN)
    }
    /// From a raw state, as is.
    pub fn from_state(state: u64) -> Self {
        Self(state)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_splitmix64s() {
        // The reference sequence of SplitMix64 from state 0 (Vigna's splitmix64.c).
        let mut r = Rng::from_state(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(
            Rng::new(7).next_u64(),
            Rng::from_state(7 ^ GOLDEN).next_u64()
        );
        assert_eq!(r.below(0), 0);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[r.range(3, 5) as usize - 3] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert!((0..1000).map(|_| r.unit()).all(|u| (0.0..1.0).contains(&u)));
    }
}
