//! Decoding attention on the CPU: the query heads that share one KV head, over that head's
//! cached keys and values (`[positions, head_dim]` each, contiguous).
//!
//! A decode step reads every sequence's whole cache once per layer, so attention is bound
//! by memory, not arithmetic: the keys and values of one KV head are read from memory once
//! for all the query heads that share it (grouped-query attention), as two contiguous
//! streams. With AVX-512 and a head size of 64 or 128, sixteen positions' scores are
//! reduced together (a transposed tree of shuffles instead of one horizontal sum per
//! position and head), and the values are accumulated sixteen positions at a time.
//!
//! The AVX-512 kernel's arithmetic is fixed: each score is the head's `head_dim / 16`
//! partial products lane by lane, added in the tree `((c₀ + c₂) + (c₁ + c₃))`, `cⱼ =
//! (lⱼ + lⱼ₊₈) + (lⱼ₊₄ + lⱼ₊₁₂)` (the order `_mm512_reduce_add_ps` compiles to), times
//! the scale; the probabilities come from a vector `exp`; each output lane sums
//! `pⱼ · vⱼ` in position order. A sequence therefore gets the same bits whatever shares
//! its batch, and the same bits as the per-row kernel this one replaced (tested below).
//! The portable loop (other CPUs, other head sizes) agrees to f32 rounding.

/// How a cache keeps keys and values: `f32` as the projections computed them, or
/// `half::f16`, rounded to nearest (half the bytes attention streams; the kernels
/// widen each value back to f32 exactly before using it).
pub trait CachedValue: Copy + Send + Sync {
    /// One position's `d` values as f32: the row itself when it is f32, else widened
    /// into `buf`.
    fn row_f32<'a>(row: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];
    fn to_f32(self) -> f32;
    /// Sixteen consecutive values, widened.
    ///
    /// # Safety
    /// The CPU has AVX-512F and `p` points at sixteen readable values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl CachedValue for f32 {
    fn row_f32<'a>(row: &'a [Self], _: &'a mut [f32]) -> &'a [f32] {
        row
    }
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

impl CachedValue for half::f16 {
    fn row_f32<'a>(row: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        for (b, x) in buf.iter_mut().zip(row) {
            *b = x.to_f32();
        }
        &buf[..row.len()]
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
}

/// Attention of the `group` query heads `q` (`[group, d]`) over the first `visible`
/// positions of one KV head's keys `k` and values `v` (`[positions, d]`, row-major),
/// written to `out` (`[group, d]`). `scratch` is reused between calls.
#[allow(clippy::too_many_arguments)]
pub fn attend_group<T: CachedValue>(
    q: &[f32],
    (k, v): (&[T], &[T]),
    visible: usize,
    group: usize,
    d: usize,
    scale: f32,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    assert!(
        q.len() >= group * d && out.len() >= group * d,
        "attention: short head buffers"
    );
    assert!(
        k.len() >= visible * d && v.len() >= visible * d,
        "attention: fewer cached positions than visible"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && (d == 64 || d == 128) {
            scratch.clear();
            scratch.resize(group * visible.div_ceil(16) * 16, 0.0);
            // Safety: the CPU has AVX-512F; the slices were checked against the shape.
            unsafe {
                match d {
                    64 => {
                        avx512::attend_group::<T, 4>(q, (k, v), visible, group, scale, scratch, out)
                    }
                    _ => {
                        avx512::attend_group::<T, 8>(q, (k, v), visible, group, scale, scratch, out)
                    }
                }
            }
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // Safety: the CPU supports the features the function is compiled for.
            return unsafe { attend_group_avx2(q, (k, v), visible, group, d, scale, scratch, out) };
        }
    }
    attend_group_portable(q, (k, v), visible, group, d, scale, scratch, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_group_avx2<T: CachedValue>(
    q: &[f32],
    kv: (&[T], &[T]),
    visible: usize,
    group: usize,
    d: usize,
    scale: f32,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_group_portable(q, kv, visible, group, d, scale, scratch, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_group_portable<T: CachedValue>(
    q: &[f32],
    (k, v): (&[T], &[T]),
    visible: usize,
    group: usize,
    d: usize,
    scale: f32,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    scratch.clear();
    scratch.resize(visible + d, 0.0);
    let (scores, row) = scratch.split_at_mut(visible);
    for h in 0..group {
        let qh = &q[h * d..][..d];
        let mut max = f32::NEG_INFINITY;
        for (s, kj) in scores.iter_mut().zip(k.chunks_exact(d)) {
            *s = super::dot::dot_portable(qh, T::row_f32(kj, row)) * scale;
            max = max.max(*s);
        }
        let mut total = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        let oh = &mut out[h * d..][..d];
        oh.fill(0.0);
        for (&p, vj) in scores.iter().zip(v.chunks_exact(d)) {
            let w = p / total;
            for (o, &x) in oh.iter_mut().zip(vj) {
                *o += w * x.to_f32();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::CachedValue;
    use std::arch::x86_64::*;

    /// Positions per score vector.
    const SPAN: usize = 16;

    /// `attend_group` for a head size of 16 · `C`. `scores` holds `group` rows of
    /// `visible` rounded up to 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend_group<T: CachedValue, const C: usize>(
        q: &[f32],
        kv: (&[T], &[T]),
        visible: usize,
        group: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let d = 16 * C;
        let stride = visible.div_ceil(SPAN) * SPAN;
        debug_assert!(scores.len() >= group * stride);
        // Heads in blocks whose accumulators fit the 32 vector registers beside one
        // position's keys or values (C each): 4 heads of 64, 2 of 128.
        let per_block = 16 / C;
        let mut h0 = 0;
        while h0 < group {
            let heads = per_block.min(group - h0);
            let q = &q[h0 * d..];
            let scores = &mut scores[h0 * stride..];
            let out = &mut out[h0 * d..];
            match heads {
                1 => head_block::<T, C, 1>(q, kv, visible, scale, scores, out),
                2 => head_block::<T, C, 2>(q, kv, visible, scale, scores, out),
                3 => head_block::<T, C, 3>(q, kv, visible, scale, scores, out),
                _ => head_block::<T, C, 4>(q, kv, visible, scale, scores, out),
            }
            h0 += heads;
        }
    }

    /// Attention of `H` query heads over one KV head. Each key and each value is loaded
    /// (and widened, for f16) once for all `H` heads: widening a 16-value chunk takes
    /// about two cycles on Zen 4, so widening it again for every head cost a third of a
    /// decode step's attention.
    #[target_feature(enable = "avx512f")]
    unsafe fn head_block<T: CachedValue, const C: usize, const H: usize>(
        q: &[f32],
        (k, v): (&[T], &[T]),
        visible: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let d = 16 * C;
        let stride = visible.div_ceil(SPAN) * SPAN;
        let scale = _mm512_set1_ps(scale);
        let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); H];
        for j0 in (0..visible).step_by(SPAN) {
            let n = SPAN.min(visible - j0);
            let mask = low_mask(n);
            let s = scores16::<T, C, H>(q.as_ptr(), k.as_ptr().add(j0 * d), n);
            for h in 0..H {
                let s = _mm512_mul_ps(s[h], scale);
                _mm512_storeu_ps(scores.as_mut_ptr().add(h * stride + j0), s);
                max[h] = _mm512_mask_max_ps(max[h], mask, max[h], s);
            }
        }
        // Probabilities, already divided by their total.
        for (h, max) in max.iter().enumerate() {
            let row = &mut scores[h * stride..][..visible];
            let total = exp_shifted_in_place(row, _mm512_reduce_max_ps(*max));
            let inv_total = _mm512_set1_ps(1.0 / total);
            for chunk in row.chunks_mut(SPAN) {
                let mask = low_mask(chunk.len());
                let p = _mm512_maskz_loadu_ps(mask, chunk.as_ptr());
                _mm512_mask_storeu_ps(chunk.as_mut_ptr(), mask, _mm512_mul_ps(p, inv_total));
            }
        }
        // Outputs: every output lane adds its terms in position order, from zero.
        let mut o = [[_mm512_setzero_ps(); C]; H];
        for j in 0..visible {
            let vj: [__m512; C] =
                std::array::from_fn(|c| T::load16(v.as_ptr().add(j * d + 16 * c)));
            for (h, o) in o.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*scores.get_unchecked(h * stride + j));
                for (o, &vc) in o.iter_mut().zip(&vj) {
                    *o = _mm512_fmadd_ps(w, vc, *o);
                }
            }
        }
        for (h, o) in o.iter().enumerate() {
            for (c, o) in o.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(h * d + 16 * c), *o);
            }
        }
    }

    fn low_mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// One position's sixteen lanes of `q · k` for each of `H` heads (`q`: `[H, 16 · C]`):
    /// the head's chunks multiplied lane by lane and added in chunk order.
    #[inline(always)]
    unsafe fn lanes<T: CachedValue, const C: usize, const H: usize>(
        q: *const f32,
        kj: *const T,
    ) -> [__m512; H] {
        let key: [__m512; C] = std::array::from_fn(|c| T::load16(kj.add(16 * c)));
        std::array::from_fn(|h| {
            let qh = q.add(h * 16 * C);
            let mut acc = _mm512_mul_ps(_mm512_loadu_ps(qh), key[0]);
            for (c, &kc) in key.iter().enumerate().skip(1) {
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(qh.add(16 * c)), kc, acc);
            }
            acc
        })
    }

    /// For each of `H` heads, the dot products with the `n` (≤ 16) keys at `keys`, in
    /// position order (lanes past `n` hold nothing meaningful). Every score is its lanes
    /// added in the tree of `_mm512_reduce_add_ps`: lane j with j + 8, then with j + 4,
    /// then j with j + 2, then the two halves of what is left, done for sixteen positions
    /// at once.
    #[inline(always)]
    unsafe fn scores16<T: CachedValue, const C: usize, const H: usize>(
        q: *const f32,
        keys: *const T,
        n: usize,
    ) -> [__m512; H] {
        let d = 16 * C;
        let at = |j: usize| {
            if j < n {
                lanes::<T, C, H>(q, keys.add(j * d))
            } else {
                [_mm512_setzero_ps(); H]
            }
        };
        // Lane j + lane j + 8 of two positions: [a's eight | b's eight].
        let halves = |j: usize| {
            let (a, b) = (at(j), at(j + 1));
            std::array::from_fn::<_, H, _>(|h| {
                _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b01_00_01_00>(a[h], b[h]),
                    _mm512_shuffle_f32x4::<0b11_10_11_10>(a[h], b[h]),
                )
            })
        };
        // Then + lane j + 4: one 128-bit chunk per position, four positions.
        let quarters = |j: usize| {
            let (x, y) = (halves(j), halves(j + 2));
            std::array::from_fn::<_, H, _>(|h| {
                _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b10_00_10_00>(x[h], y[h]),
                    _mm512_shuffle_f32x4::<0b11_01_11_01>(x[h], y[h]),
                )
            })
        };
        // Then lane j + lane j + 2, two pairs per chunk: chunk i holds positions
        // j + i and j + 4 + i.
        let pairs = |j: usize| {
            let (z, w) = (quarters(j), quarters(j + 4));
            std::array::from_fn::<_, H, _>(|h| {
                _mm512_add_ps(
                    _mm512_shuffle_ps::<0b01_00_01_00>(z[h], w[h]),
                    _mm512_shuffle_ps::<0b11_10_11_10>(z[h], w[h]),
                )
            })
        };
        let (u, w) = (pairs(0), pairs(8));
        // Lane 4i + e holds position i + 4e.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        std::array::from_fn(|h| {
            let sums = _mm512_add_ps(
                _mm512_shuffle_ps::<0b10_00_10_00>(u[h], w[h]),
                _mm512_shuffle_ps::<0b11_01_11_01>(u[h], w[h]),
            );
            _mm512_permutexvar_ps(order, sums)
        })
    }

    /// `s ← exp(s − max)` over `scores` (all ≤ max), 16 at a time; returns Σ s.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted_in_place(scores: &mut [f32], max: f32) -> f32 {
        let shift = _mm512_set1_ps(max);
        let mut total = _mm512_setzero_ps();
        for chunk in scores.chunks_mut(16) {
            let mask = low_mask(chunk.len());
            let x = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, chunk.as_ptr()), shift);
            let e = _mm512_maskz_mov_ps(mask, exp(x));
            _mm512_mask_storeu_ps(chunk.as_mut_ptr(), mask, e);
            total = _mm512_add_ps(total, e);
        }
        _mm512_reduce_add_ps(total)
    }

    /// eˣ for x ≤ 0 to within a few ulp: x = n·ln 2 + r with |r| ≤ ln 2 / 2, eʳ by its
    /// degree-6 Taylor polynomial, then scaled by 2ⁿ (`vscalefps`, which flushes the very
    /// negative to 0). libm's scalar `expf` was a tenth of a decode step.
    #[target_feature(enable = "avx512f")]
    unsafe fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 in two parts, so n · ln 2 is subtracted without rounding error.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// The per-row kernel this module replaced (one query head at a time, one horizontal
    /// sum per position), kept to show the new one gives the same bits.
    #[cfg(test)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend_head_reference<const C: usize>(
        qh: &[f32],
        (k, v): (&[f32], &[f32]),
        visible: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let d = 16 * C;
        let mut scores = vec![0f32; visible];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            let [l] = lanes::<f32, C, 1>(qh.as_ptr(), k.as_ptr().add(j * d));
            *s = _mm512_reduce_add_ps(l) * scale;
            max = max.max(*s);
        }
        let inv_total = 1.0 / exp_shifted_in_place(&mut scores, max);
        let mut o = [_mm512_setzero_ps(); C];
        for (j, &p) in scores.iter().enumerate() {
            let w = _mm512_set1_ps(p * inv_total);
            for (c, o) in o.iter_mut().enumerate() {
                *o = _mm512_fmadd_ps(w, _mm512_loadu_ps(v.as_ptr().add(j * d + 16 * c)), *o);
            }
        }
        for (c, o) in o.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), *o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(rng: &mut impl Rng, n: usize, spread: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-spread..spread)).collect()
    }

    /// The dispatched kernel against the portable loop: the same attention up to f32
    /// summation order and the vector `exp`'s few ulp.
    #[test]
    fn kernels_agree_with_the_portable_loop() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (group, d, visible) in [
            (3, 64, 37),
            (2, 128, 5),
            (4, 16, 9),
            (7, 64, 16),
            (1, 64, 1),
        ] {
            let q = random(&mut rng, group * d, 1.0);
            let (k, v) = (
                random(&mut rng, visible * d, 1.0),
                random(&mut rng, visible * d, 1.0),
            );
            let (mut fast, mut plain) = (vec![0f32; group * d], vec![0f32; group * d]);
            let mut scratch = Vec::new();
            attend_group(
                &q,
                (&k, &v),
                visible,
                group,
                d,
                0.125,
                &mut scratch,
                &mut fast,
            );
            attend_group_portable(
                &q,
                (&k, &v),
                visible,
                group,
                d,
                0.125,
                &mut scratch,
                &mut plain,
            );
            for (i, (a, b)) in fast.iter().zip(&plain).enumerate() {
                assert!((a - b).abs() <= 1e-5, "d={d}: element {i}: {a} vs {b}");
            }
            assert!(plain.iter().any(|x| x.abs() > 1e-3));
        }
    }

    /// Keys and values kept in f16 give, on every path, the bits the same path gives for
    /// them widened to f32 (the kernels widen exactly before any arithmetic).
    #[test]
    fn half_values_give_the_bits_of_their_widening() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (group, d, visible) in [(3, 64, 37), (2, 128, 5), (4, 16, 9), (3, 64, 300)] {
            let q = random(&mut rng, group * d, 1.0);
            let half = |x: Vec<f32>| -> Vec<half::f16> {
                x.into_iter().map(half::f16::from_f32).collect()
            };
            let kh = half(random(&mut rng, visible * d, 2.0));
            let vh = half(random(&mut rng, visible * d, 2.0));
            let widen = |x: &[half::f16]| -> Vec<f32> { x.iter().map(|x| x.to_f32()).collect() };
            let (kw, vw) = (widen(&kh), widen(&vh));
            let mut scratch = Vec::new();
            let mut outs = [
                vec![0f32; group * d],
                vec![0f32; group * d],
                vec![0f32; group * d],
                vec![0f32; group * d],
            ];
            let [a, b, c, e] = &mut outs;
            attend_group(&q, (&kh, &vh), visible, group, d, 0.125, &mut scratch, a);
            attend_group(&q, (&kw, &vw), visible, group, d, 0.125, &mut scratch, b);
            attend_group_portable(&q, (&kh, &vh), visible, group, d, 0.125, &mut scratch, c);
            attend_group_portable(&q, (&kw, &vw), visible, group, d, 0.125, &mut scratch, e);
            let bits = |x: &[f32]| -> Vec<u32> { x.iter().map(|x| x.to_bits()).collect() };
            assert_eq!(
                bits(a),
                bits(b),
                "dispatched, group {group}, d {d}, visible {visible}"
            );
            assert_eq!(
                bits(c),
                bits(e),
                "portable, group {group}, d {d}, visible {visible}"
            );
            assert!(a.iter().any(|x| x.abs() > 1e-3));
        }
    }

    /// Bit for bit what the per-row, per-head kernel it replaced computed: every visible
    /// length around the sixteen-position chunks, head sizes 64 and 128, scores far apart
    /// (sharp softmax) and close together.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn grouped_kernel_gives_the_replaced_kernels_bits() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIP grouped attention kernel: no AVX-512 on this CPU");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for (group, d) in [(3, 64), (7, 64), (4, 128), (1, 128)] {
            for visible in [1, 2, 15, 16, 17, 31, 33, 64, 100, 257] {
                for spread in [0.05, 4.0] {
                    let q = random(&mut rng, group * d, spread);
                    let k = random(&mut rng, visible * d, 1.0);
                    let v = random(&mut rng, visible * d, 1.0);
                    let mut got = vec![f32::NAN; group * d];
                    let mut scratch = vec![f32::NAN; 3];
                    attend_group(
                        &q,
                        (&k, &v),
                        visible,
                        group,
                        d,
                        0.125,
                        &mut scratch,
                        &mut got,
                    );
                    let mut want = vec![0f32; group * d];
                    for h in 0..group {
                        let (qh, oh) = (&q[h * d..][..d], &mut want[h * d..][..d]);
                        // Safety: the CPU has AVX-512F; the slices hold `visible` rows of `d`.
                        unsafe {
                            match d {
                                64 => avx512::attend_head_reference::<4>(
                                    qh,
                                    (&k, &v),
                                    visible,
                                    0.125,
                                    oh,
                                ),
                                _ => avx512::attend_head_reference::<8>(
                                    qh,
                                    (&k, &v),
                                    visible,
                                    0.125,
                                    oh,
                                ),
                            }
                        }
                    }
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "group {group}, d {d}, visible {visible}, spread {spread}: element {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_matches_libm() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIP vector exp: no AVX-512 on this CPU");
            return;
        }
        let xs: Vec<f32> = (0..2000)
            .map(|i| -(i as f32) * 0.0517)
            .chain([0.0, -1e-8, -88.0, -200.0, f32::NEG_INFINITY])
            .collect();
        let mut got = xs.clone();
        // Safety: the CPU has AVX-512F (checked above).
        let total = unsafe { avx512::exp_shifted_in_place(&mut got, 0.0) };
        for (&x, &e) in xs.iter().zip(&got) {
            let want = x.exp();
            assert!(
                (e - want).abs() <= 4.0 * f32::EPSILON * want.max(f32::MIN_POSITIVE),
                "exp({x}) = {e}, libm {want}"
            );
        }
        let want_total: f32 = xs.iter().map(|x| x.exp()).sum();
        assert!((total - want_total).abs() <= 1e-5 * want_total);
    }
}
