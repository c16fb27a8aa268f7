//! The f32 dot product behind the CPU decode kernels (few-row projections, attention over
//! the KV cache). Built for the baseline target, Rust would vectorise it with SSE only;
//! on x86-64 with AVX2 the same loop is compiled a second time with 256-bit vectors and
//! chosen at run time.

/// `Σ a[i]·b[i]` over the shorter length's worth of `a` (callers pass equal lengths).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // Safety: the CPU supports the features the function is compiled for.
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

/// Eight independent accumulators, so the loop vectorises. Callers compiled for AVX2
/// inline it to get the same sums without a call per product.
#[inline(always)]
pub(in crate::model) fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_tail) = a.split_at(a.len() / 8 * 8);
    let (b8, b_tail) = b.split_at(a8.len());
    for (ca, cb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::dot;

    #[test]
    fn matches_a_plain_sum() {
        let a: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..67).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - plain).abs() < 1e-5);
        assert_eq!(dot(&[], &[]), 0.0);
    }
}
