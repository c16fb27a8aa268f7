//! The softmax steps of the training kernels over a row of f32 values: its maximum, and
//! `exp(x − shift)` in place with the row's sum (attention probabilities, the LM head's log-sum-exp and
//! its gradient). libm's scalar `expf` runs one value at a time; over the `[tokens,
//! 49152]` logits and the `[t, t]` attention scores of every head that was a tenth of a
//! training step. On x86-64 with AVX-512 this runs 16 values at a time (chosen at run
//! time); elsewhere it is the scalar loop.
//!
//! The vector `exp` splits `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (ln 2 in two parts, so
//! `r` is exact to f32 rounding), evaluates the degree-7 Taylor polynomial of `e^r`
//! (truncation error below 1e-8 relative) and scales by `2^n` with `vscalefps`, which
//! gives 0 for large negative `x` as `expf` does. Results are within a few ulp of libm.

/// The largest of `xs` (`-inf` when empty), over 16 independent lanes so the loop
/// vectorises (a plain `fold(f32::max)` runs one value at a time).
pub(super) fn row_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    tail.iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `x ← exp(x − shift)` for every element; returns `Σ exp(x − shift)` in f32.
pub(super) fn exp_shifted(xs: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // Safety: the CPU has the feature the function is compiled for.
        return unsafe { avx512::exp_shifted(xs, shift) };
    }
    exp_shifted_portable(xs, shift)
}

/// `Σ exp(x − shift)` in f64 without writing the values (a log-sum-exp over a long row,
/// where an f32 total would lose ~1e-5 of its value).
pub(super) fn sum_exp_shifted_f64(xs: &[f32], shift: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // Safety: as above.
        return unsafe { avx512::sum_exp_shifted_f64(xs, shift) };
    }
    xs.iter().map(|&x| (x - shift).exp() as f64).sum()
}

/// `x ← exp(x − shift) · factor` for every element (a softmax scaled in one pass).
pub(super) fn exp_shifted_scaled(xs: &mut [f32], shift: f32, factor: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // Safety: as above.
        return unsafe { avx512::exp_shifted_scaled(xs, shift, factor) };
    }
    xs.iter_mut().for_each(|x| *x = (*x - shift).exp() * factor);
}

fn exp_shifted_portable(xs: &mut [f32], shift: f32) -> f32 {
    let mut sum = 0f32;
    for x in xs.iter_mut() {
        *x = (*x - shift).exp();
        sum += *x;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `e^x` lane by lane (see the module's doc).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        // Below this e^x is 0 in f32 and n stays in scalef's range.
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        // Horner over 1/k! for k = 7 down to 0.
        const INV_FACTORIALS: [f32; 8] = [
            1.0,
            1.0,
            1.0 / 2.0,
            1.0 / 6.0,
            1.0 / 24.0,
            1.0 / 120.0,
            1.0 / 720.0,
            1.0 / 5040.0,
        ];
        let mut p = _mm512_set1_ps(INV_FACTORIALS[7]);
        for &c in INV_FACTORIALS[..7].iter().rev() {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// The first `len` (< 16) lanes load from `xs`, the rest are masked off.
    fn tail_mask(len: usize) -> __mmask16 {
        ((1u32 << len) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted(xs: &mut [f32], shift: f32) -> f32 {
        let shift_v = _mm512_set1_ps(shift);
        let mut acc = _mm512_setzero_ps();
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            let p = c.as_mut_ptr();
            let e = exp(_mm512_sub_ps(_mm512_loadu_ps(p), shift_v));
            _mm512_storeu_ps(p, e);
            acc = _mm512_add_ps(acc, e);
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let (m, p) = (tail_mask(rest.len()), rest.as_mut_ptr());
            let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p), shift_v));
            let e = _mm512_maskz_mov_ps(m, e);
            _mm512_mask_storeu_ps(p, m, e);
            acc = _mm512_add_ps(acc, e);
        }
        _mm512_reduce_add_ps(acc)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted_scaled(xs: &mut [f32], shift: f32, factor: f32) {
        let (shift_v, factor_v) = (_mm512_set1_ps(shift), _mm512_set1_ps(factor));
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            let p = c.as_mut_ptr();
            let e = exp(_mm512_sub_ps(_mm512_loadu_ps(p), shift_v));
            _mm512_storeu_ps(p, _mm512_mul_ps(e, factor_v));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let (m, p) = (tail_mask(rest.len()), rest.as_mut_ptr());
            let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p), shift_v));
            _mm512_mask_storeu_ps(p, m, _mm512_mul_ps(e, factor_v));
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum_exp_shifted_f64(xs: &[f32], shift: f32) -> f64 {
        let shift_v = _mm512_set1_ps(shift);
        let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        let mut add = |e: __m512| {
            lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
            let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)));
            hi = _mm512_add_pd(hi, _mm512_cvtps_pd(upper));
        };
        let mut chunks = xs.chunks_exact(16);
        for c in &mut chunks {
            add(exp(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), shift_v)));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let m = tail_mask(rest.len());
            let e = exp(_mm512_sub_ps(
                _mm512_maskz_loadu_ps(m, rest.as_ptr()),
                shift_v,
            ));
            add(_mm512_maskz_mov_ps(m, e));
        }
        _mm512_reduce_add_pd(_mm512_add_pd(lo, hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arguments over the whole useful range, the underflow edge and the tails of every
    /// length up to a vector.
    fn arguments() -> Vec<f32> {
        let mut xs: Vec<f32> = (0..4000).map(|i| -110.0 + i as f32 * 0.0297).collect();
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -87.3,
            -88.7,
            -103.9,
            -150.0,
            f32::NEG_INFINITY,
            3.5,
        ]);
        xs
    }

    fn assert_close(got: f32, want: f32, what: &str) {
        let tol = want.abs() * 4.0 * f32::EPSILON + f32::MIN_POSITIVE;
        assert!((got - want).abs() <= tol, "{what}: {got} vs libm {want}");
    }

    #[test]
    fn row_max_is_the_largest_value() {
        let xs = arguments();
        for len in [1, 15, 16, 17, 100, xs.len()] {
            let want = xs[..len].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(row_max(&xs[..len]), want, "{len} values");
        }
        assert_eq!(row_max(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn exp_matches_libm_with_every_tail() {
        let xs = arguments();
        for len in [xs.len(), 1, 15, 16, 17, 33] {
            for shift in [0.0f32, 2.5] {
                let mut got = xs[..len].to_vec();
                let sum = exp_shifted(&mut got, shift);
                let want: Vec<f32> = xs[..len].iter().map(|x| (x - shift).exp()).collect();
                for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
                    assert_close(*g, *w, &format!("exp({x} - {shift})"));
                }
                let want_sum: f64 = want.iter().map(|&w| w as f64).sum();
                assert!(
                    (sum as f64 - want_sum).abs() <= want_sum * 1e-5,
                    "sum of {len}"
                );
                let wide = sum_exp_shifted_f64(&xs[..len], shift);
                assert!(
                    (wide - want_sum).abs() <= want_sum * 1e-6,
                    "f64 sum of {len}"
                );
                let mut scaled = xs[..len].to_vec();
                exp_shifted_scaled(&mut scaled, shift, -0.25);
                for (s, w) in scaled.iter().zip(&want) {
                    assert_close(*s, w * -0.25, "scaled");
                }
            }
        }
    }
}
