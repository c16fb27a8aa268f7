//! A single-precision matrix product over strided slices, through the `gemm` crate that
//! candle's CPU matmul uses, for the fused projection ops.

/// `dst [m, n] = alpha · dst + beta · lhs [m, k] · rhs [k, n]` over row-major slices,
/// with `rhs` given transposed (`[n, k]` row-major), as weights are stored.
pub(super) fn gemm_rhs_transposed(
    dst: &mut [f32],
    lhs: &[f32],
    rhs_t: &[f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    beta: f32,
) {
    gemm_strided(
        (dst, (n, 1)),
        (lhs, (k, 1)),
        (rhs_t, (1, k)),
        (m, n, k),
        accumulate,
        beta,
    )
}

/// `dst [m, n] (+)= beta · lhs [m, k] · rhs [k, n]`, each matrix given as its elements and
/// their (row, column) strides, on candle's thread count.
pub(super) fn gemm_strided(
    (dst, (dst_rs, dst_cs)): (&mut [f32], (usize, usize)),
    (lhs, (lhs_rs, lhs_cs)): (&[f32], (usize, usize)),
    (rhs, (rhs_rs, rhs_cs)): (&[f32], (usize, usize)),
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(dst.len() > last(dst_rs, dst_cs, m, n));
    assert!(
        k == 0 || lhs.len() > last(lhs_rs, lhs_cs, m, k) && rhs.len() > last(rhs_rs, rhs_cs, k, n)
    );
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // Safety: the asserts keep every index the strides reach inside the slices, and `dst`
    // is a distinct mutable slice (callers give it distinct elements per index).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}
