//! Next-token selection for one sequence: repetition penalty, then greedy or
//! temperature sampling restricted by top-k and top-p, from the sequence's own seeded
//! generator (so what else shares the batch never changes its draws).

use super::SamplingParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct Sampler {
    temperature: f32,
    top_p: f32,
    top_k: usize,
    repetition_penalty: f32,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// Sample `sample_index` of a request draws from `seed + sample_index`.
    pub fn new(params: &SamplingParams, sample_index: usize) -> Self {
        Self {
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: params.top_k,
            repetition_penalty: params.repetition_penalty,
            rng: ChaCha8Rng::seed_from_u64(params.seed.wrapping_add(sample_index as u64)),
        }
    }

    /// Whether `sample` is the plain first index of the maximum (greedy, no repetition
    /// penalty), which needs no logits besides the largest.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature <= 0.0 && self.repetition_penalty == 1.0
    }

    /// Picks the next token from `logits` (modified in place). `history` holds the prompt
    /// and the tokens generated so far, for the repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if self.repetition_penalty != 1.0 {
            apply_repetition_penalty(logits, history, self.repetition_penalty);
        }
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / self.temperature;
        let probs: Vec<f32> = logits.iter().map(|&l| ((l - max) * inv_t).exp()).collect();
        let candidates = self.candidates(&probs);
        let total: f32 = candidates.iter().map(|&i| probs[i as usize]).sum();
        let mut u = self.rng.random::<f32>() * total;
        for &i in &candidates {
            u -= probs[i as usize];
            if u <= 0.0 {
                return i;
            }
        }
        *candidates.last().expect("at least one candidate")
    }

    /// Token ids allowed by top-k and top-p, most likely first (ties by id, so the order
    /// is deterministic). Grows a partially sorted prefix instead of sorting the whole
    /// vocabulary, since the nucleus is usually a few dozen tokens.
    fn candidates(&self, probs: &[f32]) -> Vec<u32> {
        let vocab = probs.len();
        let k_limit = if self.top_k > 0 {
            self.top_k.min(vocab)
        } else {
            vocab
        };
        if self.top_p >= 1.0 && k_limit == vocab {
            return (0..vocab as u32).collect();
        }
        let total: f32 = probs.iter().sum();
        let order = |a: &u32, b: &u32| {
            probs[*b as usize]
                .total_cmp(&probs[*a as usize])
                .then(a.cmp(b))
        };
        let mut ids = nucleus_superset(probs, total, self.top_p)
            .unwrap_or_else(|| (0..vocab as u32).collect());
        let k_limit = k_limit.min(ids.len());
        let mut k = k_limit.min(64);
        loop {
            if k < ids.len() {
                ids.select_nth_unstable_by(k - 1, order);
            }
            let head = &mut ids[..k];
            head.sort_unstable_by(order);
            if self.top_p < 1.0 {
                let mut mass = 0.0;
                for (n, &i) in head.iter().enumerate() {
                    mass += probs[i as usize] / total;
                    if mass >= self.top_p {
                        return head[..=n].to_vec();
                    }
                }
            }
            if k >= k_limit {
                return head.to_vec();
            }
            k = (k * 4).min(k_limit);
        }
    }
}

/// The tokens at least 10⁻⁴ as likely as the most likely one, in id order, when they
/// hold clearly more than `top_p` of the mass. Every such token ranks before every other,
/// so the nucleus is a prefix of them, and selecting from them instead of the whole
/// vocabulary gives the same candidates in a fraction of the time. `None` when they do
/// not hold enough (the nucleus may reach further down).
fn nucleus_superset(probs: &[f32], total: f32, top_p: f32) -> Option<Vec<u32>> {
    if top_p >= 1.0 {
        return None;
    }
    let max = probs.iter().fold(0f32, |m, &p| m.max(p));
    let floor = max * 1e-4;
    let ids: Vec<u32> = (0..probs.len() as u32)
        .filter(|&i| probs[i as usize] >= floor)
        .collect();
    let mass: f32 = ids.iter().map(|&i| probs[i as usize]).sum::<f32>() / total;
    // The margin covers summing in another order than `candidates` does.
    (mass >= top_p + 1e-3).then_some(ids)
}

/// CTRL / transformers convention: divide positive logits, multiply negative ones.
fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    let mut seen = vec![false; logits.len()];
    for &t in history {
        let t = t as usize;
        if t < logits.len() && !seen[t] {
            seen[t] = true;
            let l = &mut logits[t];
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// First index of the maximum.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_is_argmax_and_penalty_applies() {
        let mut s = Sampler::new(&params(0.0, 1.0, 0), 0);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9], &[]), 1);
        let mut s = Sampler {
            repetition_penalty: 2.0,
            ..Sampler::new(&params(0.0, 1.0, 0), 0)
        };
        // 3.0 / 2 = 1.5 < 2.9
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9], &[1, 1]), 2);
    }

    #[test]
    fn top_k_and_top_p_restrict_candidates() {
        let logits: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.01).collect();
        for seed in 0..50 {
            let p = SamplingParams {
                seed,
                ..params(1.0, 1.0, 3)
            };
            let t = Sampler::new(&p, 0).sample(&mut logits.clone(), &[]);
            assert!(t < 3, "top-k 3 drew token {t}");
        }
        // Probabilities 0.5, 0.3, 0.2: top-p 0.6 keeps the first two.
        let probs = [0.5f32, 0.3, 0.2];
        let s = Sampler::new(&params(1.0, 0.6, 0), 0);
        assert_eq!(s.candidates(&probs), vec![0, 1]);
        let s = Sampler::new(&params(1.0, 0.5, 0), 0);
        assert_eq!(s.candidates(&probs), vec![0]);
    }

    /// Whole-vocabulary sort, then the top-k cap and the top-p prefix: what `candidates`
    /// must return whether or not it narrows the vocabulary first.
    fn candidates_by_full_sort(probs: &[f32], top_p: f32, top_k: usize) -> Vec<u32> {
        let total: f32 = probs.iter().sum();
        let mut ids: Vec<u32> = (0..probs.len() as u32).collect();
        ids.sort_by(|a, b| {
            probs[*b as usize]
                .total_cmp(&probs[*a as usize])
                .then(a.cmp(b))
        });
        if top_k > 0 {
            ids.truncate(top_k);
        }
        let mut mass = 0.0;
        for (n, &i) in ids.iter().enumerate() {
            mass += probs[i as usize] / total;
            if mass >= top_p {
                return ids[..=n].to_vec();
            }
        }
        ids
    }

    #[test]
    fn candidates_equal_a_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut narrowed = 0;
        for case in 0..60 {
            // Peaked to flat distributions over a 5000-token vocabulary, with ties.
            let spread = [0.3f32, 1.0, 3.0, 10.0][case % 4];
            let probs: Vec<f32> = (0..5000)
                .map(|_| (-(rng.random::<f32>() * spread * 10.0).round() / 10.0 * 3.0).exp())
                .collect();
            let total: f32 = probs.iter().sum();
            for (top_p, top_k) in [(0.95, 0), (0.5, 0), (0.9, 20), (0.999, 0)] {
                narrowed += usize::from(nucleus_superset(&probs, total, top_p).is_some());
                let s = Sampler::new(&params(1.0, top_p, top_k), 0);
                assert_eq!(
                    s.candidates(&probs),
                    candidates_by_full_sort(&probs, top_p, top_k),
                    "case {case}, top-p {top_p}, top-k {top_k}"
                );
            }
        }
        // Both ways were exercised.
        assert!(narrowed > 0 && narrowed < 240, "narrowed {narrowed} of 240");
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |idx| {
            let mut s = Sampler::new(&params(1.0, 0.95, 0), idx);
            (0..20)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(0), draw(0));
        assert_ne!(draw(0), draw(1));
    }
}
