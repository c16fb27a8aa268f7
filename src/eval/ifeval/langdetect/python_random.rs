//! The parts of CPython's `random.Random` that `langdetect` draws from: the MT19937
//! generator seeded as `Random.seed(int)` seeds it, `random()`, `gauss()` and `choice()`,
//! each consuming the generator exactly as CPython does, so a seeded detection takes the
//! same path through the text's n-grams.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

pub struct PyRandom {
    mt: [u32; N],
    index: usize,
    /// `gauss()` produces two normal deviates at a time and caches the second.
    gauss_next: Option<f64>,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative seed below 2**32.
    pub fn new(seed: u32) -> Self {
        let mut rng = PyRandom {
            mt: [0; N],
            index: N,
            gauss_next: None,
        };
        rng.init_by_array(&[seed]);
        rng
    }

    fn init_genrand(&mut self, seed: u32) {
        self.mt[0] = seed;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            let twist = |a: u32, b: u32, far: u32| {
                let y = (a & UPPER_MASK) | (b & LOWER_MASK);
                far ^ (y >> 1) ^ if y & 1 == 1 { MATRIX_A } else { 0 }
            };
            for k in 0..N - M {
                self.mt[k] = twist(self.mt[k], self.mt[k + 1], self.mt[k + M]);
            }
            for k in N - M..N - 1 {
                self.mt[k] = twist(self.mt[k], self.mt[k + 1], self.mt[k + M - N]);
            }
            self.mt[N - 1] = twist(self.mt[N - 1], self.mt[0], self.mt[M - 1]);
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random()`: 53 random bits in [0, 1).
    pub fn random(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `gauss(mu, sigma)`, CPython's Box-Muller variant with its cached second deviate.
    pub fn gauss(&mut self, mu: f64, sigma: f64) -> f64 {
        let z = match self.gauss_next.take() {
            Some(z) => z,
            None => {
                let x2pi = self.random() * std::f64::consts::TAU;
                let g2rad = (-2.0 * (1.0 - self.random()).ln()).sqrt();
                self.gauss_next = Some(x2pi.sin() * g2rad);
                x2pi.cos() * g2rad
            }
        };
        mu + z * sigma
    }

    /// `getrandbits(k)` for 1 <= k <= 32.
    fn getrandbits(&mut self, k: u32) -> u32 {
        self.next_u32() >> (32 - k)
    }

    /// `_randbelow(n)`: rejection sampling on `n.bit_length()` bits.
    fn randbelow(&mut self, n: usize) -> usize {
        let n = u32::try_from(n).expect("langdetect never samples from 2**32 or more n-grams");
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r as usize;
            }
        }
    }

    /// `choice(items)`; `items` must not be empty.
    pub fn choice<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.randbelow(items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values printed by CPython 3.11's random module.
    #[test]
    fn random_matches_cpython() {
        let mut rng = PyRandom::new(0);
        assert_eq!(rng.random(), 0.8444218515250481);
        assert_eq!(rng.random(), 0.7579544029403025);
    }

    #[test]
    fn gauss_matches_cpython() {
        let mut rng = PyRandom::new(0);
        assert_eq!(rng.gauss(0.0, 1.0), 0.9417154046806644);
        assert_eq!(rng.gauss(0.0, 1.0), -1.3965781047011498);
        assert_eq!(rng.gauss(0.0, 1.0), -0.6797144480784211);
    }

    #[test]
    fn choice_matches_cpython() {
        let mut rng = PyRandom::new(0);
        let items: Vec<usize> = (0..1000).collect();
        let picks: Vec<usize> = (0..5).map(|_| *rng.choice(&items)).collect();
        assert_eq!(picks, [864, 394, 776, 911, 430]);
        assert_eq!(
            [rng.getrandbits(7), rng.getrandbits(7), rng.getrandbits(7)],
            [5, 33, 123]
        );
        assert_eq!(*rng.choice(&[0]), 0);
        let mut rng = PyRandom::new(0);
        let small: Vec<usize> = (0..10).map(|_| rng.randbelow(3)).collect();
        assert_eq!(small, [1, 1, 0, 1, 2, 1, 1, 1, 1, 1]);
    }
}
