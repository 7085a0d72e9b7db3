//! A small seeded pseudo-random number generator for simulations and tests.
//!
//! The core must stay deterministic and dependency-light, so instead of the `rand` crate it
//! carries its own generator: xoshiro256** (Blackman & Vigna, 2018) seeded through SplitMix64.
//! Everything that needs randomness — the heartbeat trace generator ([`crate::trace`]), the QoS
//! comparison ([`crate::qos`]), chaos schedules — takes an explicit seed, so every run can be
//! replayed bit for bit. This generator is **not** cryptographically secure; never use it for
//! tokens, keys or anything an adversary may want to predict.

/// One step of SplitMix64: advances `state` and returns the next output. Used to expand a 64-bit
/// seed into xoshiro's 256-bit state, because xoshiro must not start from a state with few bits
/// set (and never from all zeros), and SplitMix64 turns even seeds like 0, 1, 2 into
/// well-mixed, distinct states.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic xoshiro256** generator. The same seed always yields the same sequence, on
/// every platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Rng { s }
    }

    /// An independent generator for sub-stream `stream` of `seed` (e.g. trace number `i` of a
    /// run). Streams of the same seed do not overlap in practice, and adding a stream never
    /// changes what the other streams produce — unlike drawing sub-seeds from one shared
    /// generator, where inserting a draw shifts everything after it.
    pub fn stream(seed: u64, stream: u64) -> Self {
        // Hash the stream number before combining so that neighbouring (seed, stream) pairs do
        // not land on neighbouring SplitMix64 states.
        let mut h = stream;
        let mixed = splitmix64(&mut h);
        Rng::new(seed ^ mixed)
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform float in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits are the best-mixed ones for xoshiro256**; 2^-53 scales them into
        // [0, 1) so every representable result is equally likely.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform float in `(0, 1]`: safe to pass to `ln` or to raise to a negative power.
    fn next_f64_open0(&mut self) -> f64 {
        1.0 - self.next_f64()
    }

    /// A uniform integer in `0..n`, without modulo bias (Lemire's multiply-and-reject method).
    /// Returns 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // The high half of x * n is uniform in 0..n except for a sliver of x values; reject
        // exactly those (threshold = 2^64 mod n) so the result is unbiased.
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniform integer in `lo..hi` (empty range: returns `lo`).
    pub fn range_u64(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.below(hi - lo)
        }
    }

    /// A uniform float in `[lo, hi)` (returns `lo` when `hi <= lo`).
    pub fn range_f64(&mut self, lo: f64, hi: f64) -> f64 {
        if hi <= lo {
            lo
        } else {
            lo + (hi - lo) * self.next_f64()
        }
    }

    /// `true` with probability `p` (clamped to `[0, 1]`: `p <= 0` is never, `p >= 1` always).
    pub fn bernoulli(&mut self, p: f64) -> bool {
        // Always draw, even for p = 0 or 1, so that changing a probability in a config does not
        // shift the rest of the random sequence.
        let u = self.next_f64();
        u < p
    }

    /// A normally distributed value (Box–Muller). Only one of the pair Box–Muller produces is
    /// used: caching the other would make the generator's output depend on call history beyond
    /// its 256-bit state, and simulations here are nowhere near bound by this cost.
    pub fn normal(&mut self, mean: f64, std_dev: f64) -> f64 {
        let u1 = self.next_f64_open0();
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        mean + std_dev * r * (std::f64::consts::TAU * u2).cos()
    }

    /// An exponentially distributed value with the given mean (inverse-CDF method).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.next_f64_open0().ln()
    }

    /// A Pareto (type I) value: at least `scale`, with tail `P(X > x) = (scale / x)^shape`.
    /// Small `shape` (1–2) gives the heavy tails seen in network delays and GC pauses: most
    /// values sit near `scale`, a few are many times larger.
    pub fn pareto(&mut self, scale: f64, shape: f64) -> f64 {
        scale / self.next_f64_open0().powf(1.0 / shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_reference_output() {
        // Reference values of SplitMix64 started from 0 (Vigna's splitmix64.c).
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(&mut s), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn xoshiro256starstar_matches_reference_output() {
        // Reference sequence of xoshiro256** from state [1, 2, 3, 4].
        let mut r = Rng { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(got, [11520, 0, 1_509_978_240, 1_215_971_899_390_074_240]);
    }

    #[test]
    fn same_seed_same_sequence_and_streams_differ() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..8).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(Rng::new(42).next_u64(), Rng::new(43).next_u64());
        assert_ne!(Rng::stream(42, 0).next_u64(), Rng::stream(42, 1).next_u64());
        assert_eq!(Rng::stream(7, 3), Rng::stream(7, 3));
    }

    #[test]
    fn uniform_helpers_stay_in_range() {
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(r.below(7) < 7);
            let x = r.range_u64(10, 13);
            assert!((10..13).contains(&x));
            let y = r.range_f64(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&y));
            assert!(r.pareto(5.0, 1.5) >= 5.0);
            assert!(r.exponential(2.0) >= 0.0);
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range_u64(5, 5), 5);
    }

    #[test]
    fn below_is_unbiased_enough() {
        let mut r = Rng::new(9);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[r.below(3) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn distributions_have_the_right_moments() {
        let mut r = Rng::new(2024);
        let n = 200_000;
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for _ in 0..n {
            let x = r.normal(3.0, 2.0);
            sum += x;
            sum_sq += x * x;
        }
        let mean = sum / f64::from(n);
        let var = sum_sq / f64::from(n) - mean * mean;
        assert!((mean - 3.0).abs() < 0.03, "normal mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.03, "normal std {}", var.sqrt());

        let exp_mean = (0..n).map(|_| r.exponential(4.0)).sum::<f64>() / f64::from(n);
        assert!((exp_mean - 4.0).abs() < 0.06, "exponential mean {exp_mean}");

        let hits = (0..n).filter(|_| r.bernoulli(0.05)).count();
        let rate = hits as f64 / f64::from(n);
        assert!((rate - 0.05).abs() < 0.003, "bernoulli rate {rate}");
        assert!(!(0..1000).any(|_| r.bernoulli(0.0)));
        assert!((0..1000).all(|_| r.bernoulli(1.0)));

        // Pareto with shape 3 has mean scale * 3 / 2.
        let p_mean = (0..n).map(|_| r.pareto(2.0, 3.0)).sum::<f64>() / f64::from(n);
        assert!((p_mean - 3.0).abs() < 0.05, "pareto mean {p_mean}");
    }
}
