//! Greedy decoding's next token without the full exact LM head.
//!
//! A greedy step needs only the first index of the maximum of each row's exact logits
//! (`exact_product`), yet the head is 49,152 rows for SmolLM2 and computing them all in
//! f32 is a fifth of the exact path's projection work per token. Here the int8 copy of
//! the head (`quant`, several times faster) gives approximate logits `a_v` for every
//! row `v`, each with a rigorous bound `B_v ≥ |e_v − a_v|` on its distance from the exact
//! kernel's value `e_v`. The best lower bound `L* = max_v (a_v − B_v)` is at most the
//! largest exact logit, so every row that may hold it, or tie with it at a lower index,
//! has `a_v + B_v ≥ L*`: those candidates, usually a few dozen, get their exact logits
//! from `exact_product` and the first index of their maximum is the full head's answer.
//! Each exact logit is one dot product summed in a fixed order whatever else is computed
//! with it (`exact_product`'s batch invariance), so a candidate's value is the full
//! head's value bit for bit. A row with a non-finite value, or more than
//! `MAX_CANDIDATES` candidates, is left to the full head.
//!
//! The bound, for input row `x` (`n` values, `b` blocks of 32) and head row `w`, with
//! `x̂`, `ŵ` the int8 copies' real values (`q · scale`), `u = 2⁻²⁴`, `γ_m = m·u / (1 −
//! m·u)` and `P_b` an upper bound on both `Σ|w_i|` and `Σ|ŵ_i|` over block `b`
//! (precomputed per head row): `|e − a| ≤ |e − x·w| + |x·w − x̂·ŵ| + |x̂·ŵ − a|`, and
//! * (a) activations: `|Σ (x_i − x̂_i) ŵ_i| ≤ Σ_b max_b|x − x̂| · P_b`, the error measured
//!   per block from the input's int8 values `y = fl(q·scale)` (`Int8Weight::pack` makes
//!   them with the recipe `Int8Rows::quantize` uses): `|x − x̂| ≤ |x − y| + 2u|y|`;
//! * (b) weights: `|Σ x_i (w_i − ŵ_i)| ≤ min(max|x| · Σ|w − ŵ|, Σ|x| · max|w − ŵ|)`, both
//!   measured once per head row against the int8 copy (0, up to the rounding of
//!   `q·scale`, where the copy reproduces the weight, as for a Q8_0 file's);
//! * (c) int8 kernel: `≤ γ_{b+1} Σ_b max_b|x̂| · P_b`, as it sums each block exactly in
//!   integers (below 2²⁴, so exact in f32 too), rounds the product of the two scales
//!   once and adds each block with one fused multiply-add;
//! * (d) exact kernel: `|e − x·w| ≤ γ_K Σ|x_i w_i| ≤ γ_K Σ_b max_b|x| · P_b`, each product
//!   passing through at most `K = ⌈n/16⌉ + 4` roundings in `exact_product` (one fused
//!   add per 16-input chunk of its lane, then the four levels of the lane tree).
//!
//! Underflow adds at most 2⁻¹⁴⁹ per rounding, covered by an absolute `TINY`; activation
//! blocks whose largest magnitude is below 2⁻¹⁰⁰ (where the scale itself would be
//! subnormal) send the row to the full head. The bounds are computed in f64 and widened
//! by `SLACK`, far more than that arithmetic and the f64 comparisons can round away
//! (the (d) term alone is ≥ 40u·|x·w|).

use super::exact_product::{self, WeightRows};
use super::quant::{Int8Rows, Int8Weight, BLOCK};
use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, Storage, Tensor, TensorId};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Most candidates a row may leave; past it the row goes to the full head (a near-flat
/// distribution). Their exact logits then cost 2% of the full head's for SmolLM2.
pub const MAX_CANDIDATES: usize = 1024;

/// The unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;
/// Absolute slack covering every underflow of both kernels (each ≤ 2⁻¹⁴⁹ per rounding,
/// amplified at most 2¹⁹ by an integer block sum).
const TINY: f64 = 1e-30;
/// Relative widening of every bound: covers the f64 arithmetic that computes it and the
/// comparisons made with it.
const SLACK: f64 = 1.0 + 1.0 / (1u64 << 20) as f64;
/// Activation blocks whose largest magnitude is nonzero but below this go to the full
/// head: their scale would leave f32's normal range.
const SMALLEST_BLOCK_MAX: f32 = 7.888_609e-31; // 2⁻¹⁰⁰

fn gamma(m: usize) -> f64 {
    let mu = m as f64 * U;
    mu / (1.0 - mu)
}

/// Whether this CPU runs the int8 kernel fast enough for screening to pay: the AVX512-VNNI
/// kernel of `quant`. Elsewhere its portable kernel is slower than the exact head.
pub fn int8_is_fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// An LM head's int8 copy with the per-row weight statistics its bounds need.
pub struct ScreenedHead {
    out: usize,
    inp: usize,
    blocks: usize,
    int8: Arc<Int8Weight>,
    /// `[out][blocks]`: upper bounds on both Σ|w| and Σ|ŵ| over each block of each row.
    block_sums: Vec<f64>,
    /// Per row, upper bounds on Σ|w − ŵ| and max|w − ŵ|.
    err_sum: Vec<f64>,
    err_max: Vec<f64>,
    /// The largest of each statistic over the rows: one bound for every row at once.
    most_block_sums: Vec<f64>,
    most_err_sum: f64,
    most_err_max: f64,
    /// Whether every statistic is finite; if not, every input row goes to the full head.
    finite: bool,
}

/// One input row's share of the bound: `B_v = Σ_b k_b · P_{v,b} + min(max|x| · Σ|w −
/// ŵ|, Σ|x| · max|w − ŵ|)`, widened, where `P_{v,b}` bounds both Σ|w| and Σ|ŵ| over block
/// `b` of head row `v`.
#[derive(Debug, Clone)]
struct InputBound {
    /// `k_b`: the largest activation error (term (a)), `γ_{b+1}` times the largest `|x̂|`
    /// (term (c)) and `γ_K` times the largest `|x|` (term (d)), per block.
    per_block: Vec<f64>,
    abs_sum: f64,
    abs_max: f64,
}

impl InputBound {
    /// The bound of input row `x`, given `y`, its int8 values as `fl(q·scale)`. `None`
    /// for a row with a non-finite value or a block too small to bound.
    fn of(x: &[f32], y: &[f32]) -> Option<Self> {
        let blocks = x.len().div_ceil(BLOCK);
        let (gamma_int8, gamma_exact) = (gamma(blocks + 1), gamma(x.len().div_ceil(16) + 4));
        let (mut abs_sum, mut abs_max) = (0f64, 0f32);
        let mut per_block = Vec::with_capacity(blocks);
        for (x, y) in x.chunks(BLOCK).zip(y.chunks(BLOCK)) {
            let largest = |v: &[f32]| v.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (x_max, y_max) = (largest(x), largest(y));
            if x.iter().chain(y).any(|v| !v.is_finite())
                || (x_max > 0.0 && x_max < SMALLEST_BLOCK_MAX)
            {
                return None;
            }
            abs_max = abs_max.max(x_max);
            abs_sum += x.iter().map(|v| v.abs() as f64).sum::<f64>();
            let (x_max, y_max) = (x_max as f64, y_max as f64);
            // |x − x̂| ≤ |x − y| + |y − x̂|, the first exact in f64.
            let quantized = x
                .iter()
                .zip(y)
                .map(|(&x, &y)| (x as f64 - y as f64).abs())
                .fold(0f64, f64::max);
            let err = quantized + 2.0 * U * y_max;
            // |x̂| ≤ |y|(1 + 2u).
            let kernel = gamma_int8 * y_max * (1.0 + 2.0 * U);
            per_block.push(err + kernel + gamma_exact * x_max);
        }
        Some(Self {
            per_block,
            abs_sum: abs_sum * SLACK,
            abs_max: abs_max as f64,
        })
    }

    /// The bound `B ≥ |e − a|` for one head row's per-block sums and weight errors.
    fn against(&self, block_sums: &[f64], err_sum: f64, err_max: f64) -> f64 {
        let blocks: f64 = self
            .per_block
            .iter()
            .zip(block_sums)
            .map(|(k, p)| k * p)
            .sum();
        let weight_err = (self.abs_max * err_sum).min(self.abs_sum * err_max);
        (blocks + weight_err) * SLACK + TINY
    }
}

impl ScreenedHead {
    /// Statistics of the head `w` (`[out, inp]` row-major f32) against its int8 copy.
    pub fn new(w: &[f32], int8: Arc<Int8Weight>) -> Self {
        let (out, inp) = int8.shape();
        assert!(inp > 0, "screened head: no inputs");
        assert_eq!(
            w.len(),
            out * inp,
            "screened head: weight is not [{out}, {inp}]"
        );
        let blocks = inp.div_ceil(BLOCK);
        const ROWS: usize = 64;
        let stats: Vec<(Vec<f64>, f64, f64)> = w
            .par_chunks(ROWS * inp)
            .enumerate()
            .flat_map_iter(|(chunk, rows)| {
                let first = chunk * ROWS;
                let mut hat = vec![0f32; rows.len()];
                int8.dequantize(first..first + rows.len() / inp, 0..inp, &mut hat);
                rows.chunks(inp)
                    .zip(hat.chunks(inp))
                    .map(|(w, hat)| row_stats(w, hat))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut most_block_sums = vec![0f64; blocks];
        let (mut most_err_sum, mut most_err_max) = (0f64, 0f64);
        for (sums, err_sum, err_max) in &stats {
            for (m, s) in most_block_sums.iter_mut().zip(sums) {
                *m = m.max(*s);
            }
            most_err_sum = most_err_sum.max(*err_sum);
            most_err_max = most_err_max.max(*err_max);
        }
        let finite = stats.iter().all(|(sums, err_sum, err_max)| {
            sums.iter().chain([err_sum, err_max]).all(|v| v.is_finite())
        });
        Self {
            out,
            inp,
            blocks,
            int8,
            block_sums: stats.iter().flat_map(|s| s.0.iter().copied()).collect(),
            err_sum: stats.iter().map(|s| s.1).collect(),
            err_max: stats.iter().map(|s| s.2).collect(),
            most_block_sums,
            most_err_sum,
            most_err_max,
            finite,
        }
    }

    /// The bound `B_v` of head row `v` for an input row.
    fn bound(&self, input: &InputBound, v: usize) -> f64 {
        let sums = &self.block_sums[v * self.blocks..][..self.blocks];
        input.against(sums, self.err_sum[v], self.err_max[v])
    }

    /// For each of `rows` input rows `x` (`[rows, inp]`), the first index of the maximum
    /// of its exact logits `x · wᵀ` over the head `w` (the f32 weight this head was made
    /// from), skipping the ids in `exclude[r]`; `None` for a row the screen cannot
    /// decide, which the full head must.
    pub fn greedy(
        &self,
        w: &[f32],
        x: &[f32],
        rows: usize,
        exclude: &[&[u32]],
    ) -> Vec<Option<u32>> {
        self.screen(w, x, rows, exclude)
            .into_iter()
            .map(|screened| {
                let (candidates, exact) = screened?;
                let mut best: Option<(u32, f32)> = None;
                for (v, e) in candidates.into_iter().zip(exact) {
                    if !e.is_finite() {
                        return None;
                    }
                    // Strictly greater: the first index of the maximum stays.
                    if best.is_none_or(|(_, b)| e > b) {
                        best = Some((v, e));
                    }
                }
                best.map(|(v, _)| v)
            })
            .collect()
    }

    /// The approximate logits `[rows, out]` of the int8 head and each row's bound
    /// statistics (`None`: the row goes to the full head).
    fn approximate(&self, x: &[f32], rows: usize) -> (Vec<f32>, Vec<Option<InputBound>>) {
        let inp = self.inp;
        // The input's int8 values as the kernel sees them: `Int8Weight::pack` quantizes
        // with the same per-block recipe (`quant::quantize_block`) as `Int8Rows::quantize`.
        let mut y = vec![0f32; rows * inp];
        Int8Weight::pack(x, rows, inp).dequantize(0..rows, 0..inp, &mut y);
        let bounds = x
            .chunks(inp)
            .zip(y.chunks(inp))
            .map(|(x, y)| InputBound::of(x, y))
            .collect();
        let approx = self.int8.matmul(&Int8Rows::quantize(x, rows, inp));
        (approx, bounds)
    }

    /// Each row's candidates (ascending) with their exact logits, or `None` for a row
    /// that goes to the full head.
    fn screen(
        &self,
        w: &[f32],
        x: &[f32],
        rows: usize,
        exclude: &[&[u32]],
    ) -> Vec<Option<(Vec<u32>, Vec<f32>)>> {
        let (out, inp) = (self.out, self.inp);
        assert_eq!(
            w.len(),
            out * inp,
            "screened head: weight is not [{out}, {inp}]"
        );
        assert_eq!(
            x.len(),
            rows * inp,
            "screened head: input is not [{rows}, {inp}]"
        );
        assert_eq!(
            exclude.len(),
            rows,
            "screened head: one exclusion list per row"
        );
        let (approx, bounds) = self.approximate(x, rows);
        approx
            .par_chunks(out.max(1))
            .zip(x.par_chunks(inp))
            .zip(bounds.par_iter())
            .zip(exclude.par_iter())
            .map(|(((a, x), bound), exclude)| {
                let candidates = self.candidates(a, bound.as_ref()?, exclude)?;
                let mut gathered = Vec::with_capacity(candidates.len() * inp);
                for &v in &candidates {
                    gathered.extend_from_slice(&w[v as usize * inp..][..inp]);
                }
                let exact = match candidates.is_empty() {
                    true => Vec::new(),
                    false => {
                        exact_product::products(x, 1, inp, &[WeightRows::F32(&gathered)]).remove(0)
                    }
                };
                Some((candidates, exact))
            })
            .collect()
    }

    /// The head rows whose exact logit may be the first maximum, given approximate
    /// logits `a` of an input row, ascending; `None` when the row goes to the full head.
    fn candidates(&self, a: &[f32], bound: &InputBound, exclude: &[u32]) -> Option<Vec<u32>> {
        if !self.finite || !all_finite(a) {
            return None;
        }
        let excluded = |v: usize| exclude.contains(&(v as u32));
        let top = match exclude.is_empty() {
            true => largest(a),
            false => a
                .iter()
                .enumerate()
                .filter(|&(v, _)| !excluded(v))
                .fold(f32::NEG_INFINITY, |top, (_, &av)| top.max(av)),
        };
        if top == f32::NEG_INFINITY {
            return None;
        }
        // With `M` the largest bound of any row, `L* ≥ top − M`, and a row needs `a_v ≥
        // L* − B_v ≥ top − 2M` to be a candidate: only those get their own bound.
        let widest = bound.against(&self.most_block_sums, self.most_err_sum, self.most_err_max);
        let floor = round_down(top as f64 - 2.0 * widest);
        let mut near = at_least(a, floor);
        near.retain(|&v| !excluded(v));
        let bounds: Vec<f64> = near.iter().map(|&v| self.bound(bound, v)).collect();
        let best_lower = near
            .iter()
            .zip(&bounds)
            .map(|(&v, b)| a[v] as f64 - b)
            .fold(f64::NEG_INFINITY, f64::max);
        if !best_lower.is_finite() {
            return None;
        }
        let picked: Vec<u32> = near
            .iter()
            .zip(&bounds)
            .filter(|&(&v, b)| a[v] as f64 + b >= best_lower)
            .map(|(&v, _)| v as u32)
            .collect();
        (picked.len() <= MAX_CANDIDATES).then_some(picked)
    }
}

// The three scans below read a whole row of approximate logits (the vocabulary, 49,152
// for SmolLM2) for every sequence of every step; written as fixed-width lane loops so
// that they compile to vector compares instead of a branch per logit.

const LANES: usize = 16;

fn all_finite(a: &[f32]) -> bool {
    let (chunks, rest) = a.as_chunks::<LANES>();
    let exponent = |x: f32| x.to_bits() & 0x7f80_0000;
    // An all-ones exponent: infinite or NaN.
    let mut non_finite = [false; LANES];
    for chunk in chunks {
        for (bad, &x) in non_finite.iter_mut().zip(chunk) {
            *bad |= exponent(x) == 0x7f80_0000;
        }
    }
    !non_finite.contains(&true) && rest.iter().all(|x| x.is_finite())
}

/// The largest of `a` (finite values).
fn largest(a: &[f32]) -> f32 {
    let (chunks, rest) = a.as_chunks::<LANES>();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// The indices of `a` whose value is at least `floor`, ascending.
fn at_least(a: &[f32], floor: f32) -> Vec<usize> {
    let mut found = Vec::new();
    for (c, chunk) in a.chunks(LANES).enumerate() {
        let any = chunk.iter().fold(false, |any, &x| any | (x >= floor));
        if any {
            let hits = chunk.iter().enumerate().filter(|&(_, &x)| x >= floor);
            found.extend(hits.map(|(i, _)| c * LANES + i));
        }
    }
    found
}

/// The largest f32 at most `v`.
fn round_down(v: f64) -> f32 {
    let r = v as f32;
    if r as f64 > v {
        r.next_down()
    } else {
        r
    }
}

/// One head row's statistics from its f32 values `w` and its int8 copy's `hat`
/// (`fl(q · scale)`, within `2u·|hat|` of `q · scale`): per block an upper bound on
/// both Σ|w| and Σ|ŵ|, then Σ|w − ŵ| and max|w − ŵ|.
fn row_stats(w: &[f32], hat: &[f32]) -> (Vec<f64>, f64, f64) {
    let (mut err_sum, mut err_max) = (0f64, 0f64);
    let mut sums = Vec::with_capacity(w.len().div_ceil(BLOCK));
    for (w, hat) in w.chunks(BLOCK).zip(hat.chunks(BLOCK)) {
        let (mut w_sum, mut hat_sum) = (0f64, 0f64);
        for (&w, &h) in w.iter().zip(hat) {
            let (w, h) = (w as f64, h as f64);
            let err = (w - h).abs() + 2.0 * U * h.abs();
            w_sum += w.abs();
            hat_sum += h.abs() * (1.0 + 2.0 * U);
            err_sum += err;
            err_max = err_max.max(err);
        }
        sums.push(w_sum.max(hat_sum) * SLACK);
    }
    (sums, err_sum * SLACK, err_max * SLACK + TINY)
}

/// The first index of the maximum of `logits` once the ids in `exclude` are set to −∞:
/// what the greedy sampler picks from a full row.
pub fn first_argmax(logits: &mut [f32], exclude: &[u32]) -> u32 {
    for &v in exclude {
        if let Some(l) = logits.get_mut(v as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// A head's `ScreenedHead`, built on first use and rebuilt when the weight tensor is
/// replaced (keyed by its id, as `quant::Int8Cache` is).
#[derive(Default)]
pub struct ScreenCache(Mutex<Option<(TensorId, Arc<ScreenedHead>)>>);

impl ScreenCache {
    /// The screened form of `weight` (a CPU f32 `[out, in]` tensor), made from its int8
    /// copy `int8`.
    pub fn get(&self, weight: &Tensor, int8: Arc<Int8Weight>) -> Result<Arc<ScreenedHead>> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, head)) = slot.as_ref() {
            if *id == weight.id() && Arc::ptr_eq(&head.int8, &int8) {
                return Ok(head.clone());
            }
        }
        *slot = None;
        let head = Arc::new(with_f32(weight, |w| ScreenedHead::new(w, int8))?);
        *slot = Some((weight.id(), head.clone()));
        Ok(head)
    }
}

/// Runs `f` on a contiguous CPU f32 tensor's values.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        bail!(
            "screened head: expected a CPU f32 tensor, got {:?}",
            t.dtype()
        );
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    else {
        bail!("screened head: expected a contiguous CPU f32 tensor");
    };
    Ok(f(&v[start..end]))
}

#[cfg(test)]
mod tests {
    use super::super::exact_blocks::tests::dequantized;
    use super::super::exact_blocks::BlockWeight;
    use super::*;
    use candle_core::quantized::GgmlDType;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn screened(w: &[f32], out: usize, inp: usize) -> ScreenedHead {
        ScreenedHead::new(w, Arc::new(Int8Weight::pack(w, out, inp)))
    }

    fn exact_logits(w: &[f32], x: &[f32], rows: usize, inp: usize) -> Vec<f32> {
        exact_product::products(x, rows, inp, &[WeightRows::F32(w)]).remove(0)
    }

    /// Hidden-state-like rows: mostly within ±2, one large outlier dimension per row, as
    /// real final hidden states have.
    fn hidden(rows: usize, inp: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let mut x: Vec<f32> = (0..rows * inp)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect();
        for row in x.chunks_mut(inp) {
            row[rng.random_range(0..inp)] *= 40.0;
        }
        x
    }

    /// Heads as the loader gives them: from a Q8_0 file (the int8 copy reproduces them),
    /// a Q4_1 file, and plain f32 values with one outlier row.
    fn heads(out: usize, inp: usize, seed: u64) -> Vec<(&'static str, Vec<f32>)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut plain: Vec<f32> = (0..out * inp)
            .map(|_| rng.random_range(-0.1f32..0.1))
            .collect();
        plain[inp..2 * inp].iter_mut().for_each(|v| *v *= 40.0);
        let mut heads = vec![("f32", plain)];
        if inp.is_multiple_of(32) {
            heads.push((
                "q8_0",
                dequantized(GgmlDType::Q8_0, out, inp, seed).unwrap(),
            ));
            heads.push((
                "q4_1",
                dequantized(GgmlDType::Q4_1, out, inp, seed).unwrap(),
            ));
        }
        heads
    }

    /// Every row's exact logit lies within its bound of the two-pass int8 approximation,
    /// for every head row; and the bound is not so loose that it would decide nothing.
    #[test]
    fn bounds_cover_the_distance_to_the_exact_logits() {
        let mut worst_ratio = 0f64;
        for (out, inp) in [(700, 576), (300, 100)] {
            for (name, w) in heads(out, inp, 3) {
                let head = screened(&w, out, inp);
                let rows = 9;
                let x = hidden(rows, inp, &mut ChaCha8Rng::seed_from_u64(4));
                let exact = exact_logits(&w, &x, rows, inp);
                let (approx, bounds) = head.approximate(&x, rows);
                for r in 0..rows {
                    let bound = bounds[r].as_ref().expect("finite, normal rows");
                    for v in 0..out {
                        let (a, e) = (approx[r * out + v] as f64, exact[r * out + v] as f64);
                        let b = head.bound(bound, v);
                        assert!(
                            (a - e).abs() <= b,
                            "{name} [{out}, {inp}] row {r}, head row {v}: approx {a}, exact {e}, bound {b}"
                        );
                        worst_ratio = worst_ratio.max((a - e).abs() / b);
                    }
                }
            }
        }
        eprintln!("worst |approx − exact| / bound: {worst_ratio:.4}");
        assert!(worst_ratio > 1e-3, "worst ratio {worst_ratio}");
    }

    /// The screened pick is the first index of the maximum of the full exact logits, on
    /// random hidden states, with and without an excluded token; most rows are decided
    /// without the full head.
    #[test]
    fn screened_argmax_is_the_full_exact_argmax() {
        for (out, inp) in [(3000, 576), (1000, 100)] {
            for (name, w) in heads(out, inp, 5) {
                let head = screened(&w, out, inp);
                let rows = 24;
                let x = hidden(rows, inp, &mut ChaCha8Rng::seed_from_u64(6));
                let exact = exact_logits(&w, &x, rows, inp);
                let want = |r: usize, exclude: &[u32]| {
                    first_argmax(&mut exact[r * out..][..out].to_vec(), exclude)
                };
                let winners: Vec<u32> = (0..rows).map(|r| want(r, &[])).collect();
                // Odd rows may not pick their winner: the runner-up must come out.
                let excluded: Vec<Vec<u32>> = (0..rows)
                    .map(|r| if r % 2 == 1 { vec![winners[r]] } else { vec![] })
                    .collect();
                let exclude: Vec<&[u32]> = excluded.iter().map(Vec::as_slice).collect();
                let picks = head.greedy(&w, &x, rows, &exclude);
                let mut decided = 0;
                for (r, pick) in picks.iter().enumerate() {
                    if let Some(t) = pick {
                        assert_eq!(*t, want(r, exclude[r]), "{name} [{out}, {inp}] row {r}");
                        decided += 1;
                    }
                }
                eprintln!("{name} [{out}, {inp}]: {decided}/{rows} rows decided by the screen");
                assert!(decided * 2 >= rows, "{name}: {decided}/{rows} decided");
            }
        }
    }

    /// Near-ties: a duplicated maximum (the first index wins), a copy differing in one
    /// ulp of one weight, a copy whose logit differs by about 1e-6; each decided as the
    /// full head decides it. More tied rows than `MAX_CANDIDATES` go to the full head.
    #[test]
    fn near_ties_resolve_as_the_full_head() {
        let (out, inp) = (2500, 576);
        for (name, base) in heads(out, inp, 7) {
            let mut rng = ChaCha8Rng::seed_from_u64(8);
            let norm = |v: usize| base[v * inp..][..inp].iter().map(|w| w * w).sum::<f32>();
            // The input points along the row of largest norm, which then leads by far.
            let lead = (1..out - 100)
                .max_by(|&a, &b| norm(a).total_cmp(&norm(b)))
                .unwrap();
            let x: Vec<f32> = base[lead * inp..][..inp]
                .iter()
                .map(|w| w * 30.0 + rng.random_range(-1e-4f32..1e-4))
                .collect();
            let full = |w: &[f32]| first_argmax(&mut exact_logits(w, &x, 1, inp), &[]);
            assert_eq!(full(&base), lead as u32, "{name}: the lead row");
            let k = (0..inp)
                .max_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()))
                .unwrap();
            let copy = |w: &mut Vec<f32>, to: usize| {
                let row = w[lead * inp..][..inp].to_vec();
                w[to * inp..][..inp].copy_from_slice(&row);
            };
            let (before, after) = (lead - 1, out - 1);
            let mut cases: Vec<(&str, Vec<f32>)> = Vec::new();
            let mut w = base.clone();
            copy(&mut w, after);
            cases.push(("duplicate after", w.clone()));
            w[after * inp + k] = w[lead * inp + k].next_up();
            cases.push(("one ulp up", w.clone()));
            w[after * inp + k] = w[lead * inp + k].next_down();
            cases.push(("one ulp down", w.clone()));
            w[after * inp + k] = w[lead * inp + k] + 1e-6 / x[k];
            cases.push(("1e-6 apart", w.clone()));
            copy(&mut w, before);
            cases.push(("duplicate before", w.clone()));
            for (case, w) in cases {
                let pick = screened(&w, out, inp).greedy(&w, &x, 1, &[&[]]);
                assert_eq!(pick, vec![Some(full(&w))], "{name}: {case}");
            }
            assert_eq!(
                screened(&w, out, inp).greedy(&w, &x, 1, &[&[]]),
                vec![Some(before as u32)],
                "{name}: the first of two equal maxima"
            );
            let mut w = base.clone();
            for to in out - 1 - MAX_CANDIDATES..out {
                copy(&mut w, to);
            }
            let pick = screened(&w, out, inp).greedy(&w, &x, 1, &[&[]]);
            assert_eq!(pick, vec![None], "{name}: too many tied rows");
        }
    }

    /// A candidate's exact logit is the full head's value bit for bit, whether the full
    /// head reads the f32 weight or its block form (as the decoder's does when decoding).
    #[test]
    fn candidates_get_the_full_heads_bits() {
        let (out, inp) = (900, 576);
        let w = dequantized(GgmlDType::Q8_0, out, inp, 9).unwrap();
        let blocks = BlockWeight::encode(&w, out, inp).expect("a block form");
        let head = screened(&w, out, inp);
        let rows = 11;
        let x = hidden(rows, inp, &mut ChaCha8Rng::seed_from_u64(10));
        let exclude = vec![&[][..]; rows];
        let screened = head.screen(&w, &x, rows, &exclude);
        let mut compared = 0;
        for full in [
            exact_logits(&w, &x, rows, inp),
            exact_product::products(&x, rows, inp, &[WeightRows::Blocks(&blocks)]).remove(0),
        ] {
            for (r, row) in screened.iter().enumerate() {
                let (candidates, exact) = row.as_ref().expect("a decided row");
                for (&v, got) in candidates.iter().zip(exact) {
                    let want = full[r * out + v as usize];
                    assert_eq!(got.to_bits(), want.to_bits(), "row {r}, head row {v}");
                    compared += 1;
                }
            }
        }
        assert!(compared >= 2 * rows, "{compared} values compared");
    }

    /// Rows with a non-finite value go to the full head.
    #[test]
    fn non_finite_rows_go_to_the_full_head() {
        let (out, inp) = (200, 64);
        let (_, w) = heads(out, inp, 11).remove(0);
        let head = screened(&w, out, inp);
        let mut x = hidden(2, inp, &mut ChaCha8Rng::seed_from_u64(12));
        x[5] = f32::NAN;
        x[inp + 9] = f32::INFINITY;
        assert_eq!(head.greedy(&w, &x, 2, &[&[], &[]]), vec![None, None]);
    }

    /// The lane-wise scans answer as the plain loops they replaced, at every length
    /// around the lane width and wherever a non-finite value or the maximum falls.
    #[test]
    fn row_scans_match_the_plain_loops() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        for len in [1, 15, 16, 17, 33, 100, 49_152] {
            let a: Vec<f32> = (0..len).map(|_| rng.random_range(-8.0..8.0)).collect();
            let plain_max = a.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(largest(&a), plain_max, "len {len}");
            for floor in [plain_max, plain_max - 1.0, -9.0] {
                let plain: Vec<usize> = (0..len).filter(|&v| a[v] >= floor).collect();
                assert_eq!(at_least(&a, floor), plain, "len {len}, floor {floor}");
            }
            assert!(all_finite(&a));
            for at in [0, len / 2, len - 1] {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut b = a.clone();
                    b[at] = bad;
                    assert!(!all_finite(&b), "len {len}: {bad} at {at}");
                }
            }
        }
    }
}
