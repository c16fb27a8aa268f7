//! SwiGLU's `silu(gate) · up` for inference in one pass over CPU f32 buffers.
//!
//! candle computes it as two element-wise ops, each a new buffer and, above 64K elements,
//! a hand-off to its own thread pool (2–3% of a batched decode step). This pass does the
//! same arithmetic in the same order — `g / (1 + exp(−g))` rounded, then times `u` — with
//! an `exp` of libm's bits (`libm_expf`, sixteen at a time), so the result has the same
//! bits.

use anyhow::Result;
use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

/// `silu(gate) * up` for tensors of one shape; CPU f32 in one pass, anything else through
/// candle's ops.
pub fn silu_product(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if let Some(product) = host_f32(gate, up)? {
        return Ok(product);
    }
    Ok((candle_nn::ops::silu(gate)? * up)?)
}

fn host_f32(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    let host_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !host_f32(gate) || !host_f32(up) || gate.shape() != up.shape() {
        return Ok(None);
    }
    let (gate_storage, gate_layout) = gate.storage_and_layout();
    let (up_storage, up_layout) = up.storage_and_layout();
    let (
        Storage::Cpu(CpuStorage::F32(g)),
        Storage::Cpu(CpuStorage::F32(u)),
        Some((g0, g1)),
        Some((u0, u1)),
    ) = (
        &*gate_storage,
        &*up_storage,
        gate_layout.contiguous_offsets(),
        up_layout.contiguous_offsets(),
    )
    else {
        return Ok(None);
    };
    let (g, u) = (&g[g0..g1], &u[u0..u1]);
    let mut out: Vec<f32> = Vec::with_capacity(g.len());
    out.spare_capacity_mut()
        .par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(out, (g, u))| silu_products(g, u, out));
    // Safety: every element was written above.
    unsafe { out.set_len(g.len()) };
    Ok(Some(Tensor::from_vec(out, gate.shape(), gate.device())?))
}

/// candle's `Silu::f32`, then the product: two roundings, as before.
fn silu_product_of(g: f32, u: f32) -> f32 {
    g / (1.0 + (-g).exp()) * u
}

fn silu_products(g: &[f32], u: &[f32], out: &mut [std::mem::MaybeUninit<f32>]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // Safety: the CPU has AVX-512F; the three slices have the same length.
        done = unsafe { silu_products_avx512(g, u, out) };
    }
    for ((o, &g), &u) in out[done..].iter_mut().zip(&g[done..]).zip(&u[done..]) {
        o.write(silu_product_of(g, u));
    }
}

/// Sixteen at a time with `libm_expf::exp16`, which has libm's bits; the add, divide and
/// multiply are single IEEE operations in the scalar order. Returns how many it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_products_avx512(
    g: &[f32],
    u: &[f32],
    out: &mut [std::mem::MaybeUninit<f32>],
) -> usize {
    use std::arch::x86_64::*;
    let full = g.len() / 16 * 16;
    for i in (0..full).step_by(16) {
        let gv = _mm512_loadu_ps(g.as_ptr().add(i));
        let e = super::libm_expf::exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        let silu = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0), e));
        let product = _mm512_mul_ps(silu, _mm512_loadu_ps(u.as_ptr().add(i)));
        _mm512_storeu_ps(out.as_mut_ptr().add(i).cast(), product);
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn same_bits_as_candles_two_ops() -> Result<()> {
        // Past candle's 64K-element threshold for its parallel path, with values where
        // `exp` under- and overflows.
        let n = 3 * 40_000;
        let values = |seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| {
                    let h = (i ^ seed).wrapping_mul(2_654_435_761) >> 8;
                    (h as f32 / (1u32 << 24) as f32 - 0.5) * 240.0
                })
                .collect()
        };
        let dev = Device::Cpu;
        let gate = Tensor::from_vec(values(1), (3, 40_000), &dev)?;
        let up = Tensor::from_vec(values(7), (3, 40_000), &dev)?;
        let ours = silu_product(&gate, &up)?.flatten_all()?.to_vec1::<f32>()?;
        let candle = (candle_nn::ops::silu(&gate)? * &up)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(ours
            .iter()
            .zip(&candle)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        // A strided input takes candle's path and still agrees.
        let strided = silu_product(&gate.t()?, &up.t()?)?;
        let expected = (candle_nn::ops::silu(&gate.t()?)? * up.t()?)?;
        let diff = (strided - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
