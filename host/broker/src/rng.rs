//! A tiny deterministic pseudo-random generator (Marsaglia's xorshift64), for choices that need
//! spread, not secrecy: evicting cache entries, generating test cases that replay the same way
//! on every run. Never for keys, tokens or anything an attacker could gain by predicting.

/// Marsaglia's xorshift64: `next` gives every non-zero `u64` once per period (2^64 - 1).
#[derive(Clone, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator starting from `seed` (zero, its one fixed point, is replaced).
    pub fn new(seed: u64) -> XorShift64 {
        XorShift64(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next value.
    #[allow(clippy::should_implement_trait)] // not an Iterator: it never ends
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (`0` when `n` is 0; slightly biased for huge `n`, fine for spread).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next().checked_rem(n).unwrap_or(0)
    }

    /// An index into a slice of `len` items (`0` when it is empty).
    pub fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    /// One of `items` (`None` when there are none).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.index(items.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift64;

    #[test]
    fn replays_the_same_sequence_and_spreads_over_a_range() {
        let mut a = XorShift64::new(7);
        let mut b = XorShift64::new(7);
        let first: Vec<u64> = (0..100).map(|_| a.next()).collect();
        assert_eq!(first, (0..100).map(|_| b.next()).collect::<Vec<_>>());
        assert!(first.iter().all(|&x| x != 0));
        let mut counts = [0u32; 10];
        let mut r = XorShift64::new(0);
        for _ in 0..10_000 {
            counts[r.index(10)] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        assert_eq!(r.below(0), 0);
        assert_eq!(r.pick::<u8>(&[]), None);
        assert_eq!(r.pick(&[5]), Some(&5));
    }
}
