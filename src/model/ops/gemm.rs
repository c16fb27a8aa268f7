//! A single-precision matrix product over row-major slices, through the `gemm` crate that
//! candle's CPU matmul uses, for the fused projection ops.

/// `dst [m, n] = alpha · dst + beta · lhs [m, k] · rhs [k, n]` over row-major slices,
/// with `rhs` given transposed (`[n, k]` row-major), as weights are stored.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_rhs_transposed(
    dst: &mut [f32],
    lhs: &[f32],
    rhs_t: &[f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    beta: f32,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs_t.len() >= n * k);
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // Safety: the three buffers hold the m×n, m×k and n×k matrices the strides describe
    // (checked above), and `dst` does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs_t.as_ptr(),
            k as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}
