//! glibc's `expf`, sixteen lanes at a time, giving the bits the scalar call gives.
//!
//! The SwiGLU activation calls `exp` once per MLP unit per token; through libm that is a
//! call per value (≈ 2% of a batched decode step). glibc (2.27 on, the `__expf_fma`
//! variant that CPUs with FMA run) computes `expf` in double precision: `x·N/ln 2` rounded
//! to an integer `k` by adding 1.5·2⁵², the remainder `r`, a degree-3 polynomial in `r`,
//! times `2^(k/N)` from a 32-entry table, rounded once to f32. Every one of those steps is
//! an IEEE operation with a fixed order (the fused multiply-adds where glibc fuses them),
//! so eight doubles at a time give the same bits. Inputs whose magnitude is past 80
//! (overflow, underflow, infinities, NaN) go to the scalar call, as glibc sends them to
//! its slow path. `tests` compare with `f32::exp` over a spread of all 2³² inputs.

use std::arch::x86_64::*;

/// 2^(i/32) for i in 0..32, as the bits glibc's `__exp2f_data.tab` stores, each with
/// `i << 47` subtracted so that adding `k << 47` for `k ≡ i (mod 32)` gives 2^(k/32).
const TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];
/// 32/ln 2.
const INV_LN2_N: u64 = 0x40471547652b82fe;
/// The polynomial's coefficients, highest degree first (already scaled by 1/32ⁿ).
const POLY: [u64; 3] = [0x3ebc6af84b912394, 0x3f2ebfce50fac4f3, 0x3f962e42ff0c52d6];
/// 1.5·2⁵²: adding it rounds to an integer held in the low bits.
const SHIFT: u64 = 0x4338000000000000;
/// Bits 20–30 of 80.0f (exponent and top mantissa bits): larger magnitudes take glibc's
/// slow path.
const FAST_ABSTOP: i32 = 0x42a;

/// `exp` of sixteen f32 values, each bit for bit `f32::exp` of the lane.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn exp16(x: __m512) -> __m512 {
    let abstop = _mm512_and_si512(
        _mm512_srli_epi32::<20>(_mm512_castps_si512(x)),
        _mm512_set1_epi32(0x7ff),
    );
    let slow = _mm512_cmpgt_epi32_mask(abstop, _mm512_set1_epi32(FAST_ABSTOP));
    let low = exp8(_mm512_cvtps_pd(_mm512_castps512_ps256(x)));
    let high = exp8(_mm512_cvtps_pd(_mm256_castpd_ps(
        _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)),
    )));
    let e = _mm512_insertf64x4::<1>(
        _mm512_castps_pd(_mm512_castps256_ps512(low)),
        _mm256_castps_pd(high),
    );
    let mut e = _mm512_castpd_ps(e);
    if slow != 0 {
        let mut lanes = [0f32; 16];
        let mut out = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), x);
        _mm512_storeu_ps(out.as_mut_ptr(), e);
        for (i, (o, &v)) in out.iter_mut().zip(&lanes).enumerate() {
            if slow & (1 << i) != 0 {
                *o = v.exp();
            }
        }
        e = _mm512_loadu_ps(out.as_ptr());
    }
    e
}

/// glibc's fast path on eight widened inputs, rounded to f32.
#[target_feature(enable = "avx512f")]
unsafe fn exp8(xd: __m512d) -> __m256 {
    let f = |bits: u64| _mm512_set1_pd(f64::from_bits(bits));
    let (inv_ln2_n, shift) = (f(INV_LN2_N), f(SHIFT));
    // kd = x·N/ln 2 + shift, one rounding: its low bits hold k.
    let kd = _mm512_fmadd_pd(inv_ln2_n, xd, shift);
    let ki = _mm512_castpd_si512(kd);
    let kd = _mm512_sub_pd(kd, shift);
    let r = _mm512_fmsub_pd(inv_ln2_n, xd, kd);
    // 2^(k/N): the table entry for k mod 32, its exponent raised by k >> 5.
    let index = _mm512_and_si512(ki, _mm512_set1_epi64(31));
    let t = |i: usize| _mm512_loadu_si512(TABLE.as_ptr().add(8 * i).cast());
    let low = _mm512_permutex2var_epi64(t(0), index, t(1));
    let high = _mm512_permutex2var_epi64(t(2), index, t(3));
    let upper = _mm512_test_epi64_mask(index, _mm512_set1_epi64(16));
    let entry = _mm512_mask_blend_epi64(upper, low, high);
    let s = _mm512_castsi512_pd(_mm512_add_epi64(entry, _mm512_slli_epi64::<47>(ki)));
    let z = _mm512_fmadd_pd(r, f(POLY[0]), f(POLY[1]));
    let r2 = _mm512_mul_pd(r, r);
    let y = _mm512_fmadd_pd(r, f(POLY[2]), _mm512_set1_pd(1.0));
    let y = _mm512_fmadd_pd(z, r2, y);
    _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bits: impl Iterator<Item = u32>) -> usize {
        let mut checked = 0;
        let xs: Vec<f32> = bits.map(f32::from_bits).collect();
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 16];
            // Safety: the caller checked for AVX-512F.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp16(_mm512_loadu_ps(lanes.as_ptr()))) };
            for (&x, &e) in chunk.iter().zip(&got) {
                let want = x.exp();
                assert!(
                    e.to_bits() == want.to_bits() || (e.is_nan() && want.is_nan()),
                    "exp({x:e}) [{:#x}]: {e:e} vs libm {want:e}",
                    x.to_bits()
                );
                checked += 1;
            }
        }
        checked
    }

    /// Every 251st bit pattern (all signs, exponents and the slow path's ranges), and
    /// every pattern of the range SwiGLU meets most, [−16, 16], at a finer stride.
    #[test]
    fn bits_of_libm_expf() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIP vector expf: no AVX-512 on this CPU");
            return;
        }
        let spread = check((0..=u32::MAX).step_by(251));
        let near = check(
            (0..(16f32).to_bits())
                .step_by(11)
                .flat_map(|b| [b, b | 0x8000_0000]),
        );
        let edges = check(
            [
                0.0f32, -0.0, 80.0, -80.0, 88.72, 88.73, -103.9, -104.0, -87.5,
            ]
            .into_iter()
            .chain([
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                f32::MIN_POSITIVE,
            ])
            .map(f32::to_bits),
        );
        assert!(spread > 17_000_000 && near > 190_000_000 && edges == 13);
    }
}
