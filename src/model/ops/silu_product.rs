//! SwiGLU's `silu(gate) · up` for inference in one pass over CPU f32 buffers.
//!
//! candle computes it as two element-wise ops, each a new buffer and, above 64K elements,
//! a hand-off to its own thread pool (2–3% of a batched decode step). This pass does the
//! same arithmetic in the same order — `g / (1 + exp(−g))` rounded, then times `u` — with
//! the same `exp`, so the result has the same bits.

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
    let out: Vec<f32> = g
        .par_iter()
        .zip(u)
        .with_min_len(CHUNK)
        // candle's `Silu::f32`, then the product: two roundings, as before.
        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    Ok(Some(Tensor::from_vec(out, gate.shape(), gate.device())?))
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
