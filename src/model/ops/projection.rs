//! The base projection `x · Wᵀ` of every linear layer, picking the fastest kernel for the
//! input's shape, and its training-time op that computes no gradient for the frozen weight.

use super::dot::dot;
use super::gemm::gemm_rhs_transposed;
use super::op_storage::cpu_f32;
use anyhow::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, DType, Layout, MetalStorage, Shape, Tensor};
use rayon::prelude::*;

/// `x [rows, in] · Wᵀ` for `W [out, in]`. With few rows (decoding) on the CPU candle's
/// gemm runs 2–3× faster as `(W · xᵀ)ᵀ`, which keeps the large weight as the
/// packed-friendly left operand; long sequences (prefill, training) and other devices
/// use the direct form (cuBLAS reads the transposed weight in place, where the CPU form
/// would cost a transpose copy of the output).
/// With a tracked `x` (training) the product is `FrozenProjection`, which gives the weight
/// no gradient on any device; a weight that is itself tracked keeps candle's matmul.
pub fn project(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if x.track_op() && !weight.track_op() {
        let weight = weight.to_dtype(x.dtype())?;
        // Contiguous: a GEMM takes a strided input only when it is a plain transpose.
        return Ok(x.contiguous()?.apply_op2(&weight, FrozenProjection)?);
    }
    project_untracked(x, weight)
}

/// Up to this many rows, `x · Wᵀ` on the CPU runs as `(W · xᵀ)ᵀ` (see `project`).
pub(super) const FEW_ROWS: usize = 128;

fn project_untracked(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if let Some(y) = project_streaming(x, weight)? {
        return Ok(y);
    }
    if x.device().is_cpu() && x.dim(0)? <= FEW_ROWS {
        Ok(weight.matmul(&x.t()?)?.t()?.contiguous()?)
    } else {
        Ok(x.matmul(&weight.t()?)?)
    }
}

/// Decoding one to a few sequences on the CPU: reads each weight row once and takes its
/// dot product with every input row. gemm packs the whole weight first, which for a
/// handful of rows costs several times the arithmetic (the 49k-row LM head most of all).
/// `None` when the case does not apply.
fn project_streaming(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    const MAX_ROWS: usize = 4;
    let rows = x.dim(0)?;
    if rows > MAX_ROWS
        || !x.device().is_cpu()
        || x.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || !weight.is_contiguous()
    {
        return Ok(None);
    }
    let (out, inp) = weight.dims2()?;
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let (storage, layout) = weight.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(w)) = &*storage else {
        return Ok(None);
    };
    let w = &w[layout.start_offset()..layout.start_offset() + out * inp];
    // y_t[o][r] = W[o] · x[r], in parallel over blocks of weight rows.
    let mut y_t = vec![0f32; out * rows];
    y_t.par_chunks_mut(64 * rows)
        .enumerate()
        .for_each(|(block, chunk)| {
            for (i, y) in chunk.chunks_mut(rows).enumerate() {
                let o = block * 64 + i;
                let w_row = &w[o * inp..(o + 1) * inp];
                for (r, y) in y.iter_mut().enumerate() {
                    *y = dot(w_row, &xs[r * inp..(r + 1) * inp]);
                }
            }
        });
    drop(storage);
    let y = Tensor::from_vec(y_t, (out, rows), x.device())?;
    Ok(Some(if rows == 1 {
        y.reshape((1, out))?
    } else {
        y.t()?.contiguous()?
    }))
}

/// `x · Wᵀ` for a base weight that is never trained, on any device, with a backward pass
/// that returns only the gradient of `x`. candle's matmul backward computes and keeps a
/// gradient for both operands, tracked or not: for a frozen weight that is a third of a
/// training step's matmul work and a second copy of every weight held until the pass ends.
/// The weight is the op's second operand only so that the forward receives its storage;
/// `bwd` gives it no gradient.
struct FrozenProjection;

/// The product on any backend: `x [rows, in]` times the transposed layout of `W [out, in]`,
/// one GEMM (cuBLAS on a GPU) that reads the weight in place.
fn frozen_product<S: BackendStorage>(
    x: &S,
    x_layout: &Layout,
    w: &S,
    w_layout: &Layout,
) -> candle_core::Result<(S, Shape)> {
    let ((rows, inp), (out, w_in)) = (x_layout.shape().dims2()?, w_layout.shape().dims2()?);
    if inp != w_in {
        candle_core::bail!("frozen projection: input [{rows}, {inp}] for weight [{out}, {w_in}]");
    }
    let y = x.matmul(w, (1, rows, out, inp), x_layout, &w_layout.transpose(0, 1)?)?;
    Ok((y, Shape::from((rows, out))))
}

impl candle_core::CustomOp2 for FrozenProjection {
    fn name(&self) -> &'static str {
        "frozen-projection"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // f32 straight into the output buffer with this crate's GEMM kernel (the LM head
        // of a CPU f32 training step has its own op, `train_ops::head_target_logprob_and_lse`).
        if let (CpuStorage::F32(_), CpuStorage::F32(_)) = (x, w) {
            if let (Some(_), Some(_)) =
                (x_layout.contiguous_offsets(), w_layout.contiguous_offsets())
            {
                let x_v = cpu_f32(x, x_layout, "projection: the input")?;
                let w_v = cpu_f32(w, w_layout, "projection: the weight")?;
                let ((rows, inp), (out, w_in)) =
                    (x_layout.shape().dims2()?, w_layout.shape().dims2()?);
                if inp != w_in {
                    candle_core::bail!(
                        "frozen projection: input [{rows}, {inp}] for weight [{out}, {w_in}]"
                    );
                }
                let mut y = vec![0f32; rows * out];
                gemm_rhs_transposed(&mut y, x_v, w_v, (rows, out, inp), false, 1.0);
                return Ok((CpuStorage::F32(y), Shape::from((rows, out))));
            }
        }
        frozen_product(x, x_layout, w, w_layout)
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        w: &CudaStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        frozen_product(x, x_layout, w, w_layout)
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        x_layout: &Layout,
        w: &MetalStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        frozen_product(x, x_layout, w, w_layout)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&w.to_dtype(grad.dtype())?)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The training op on the storage a GPU uses (bf16: the backend GEMM, as on CUDA) and
    /// on the CPU kernel (f32), with a strided input: candle's values and input gradient,
    /// and no gradient for the weight.
    #[test]
    fn frozen_projection_matches_matmul_without_a_weight_gradient() -> Result<()> {
        let dev = Device::Cpu;
        for (dtype, rows) in [(DType::BF16, 20), (DType::BF16, 200), (DType::F32, 200)] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (24, rows), &dev)?.to_dtype(dtype)?)?;
            let xt = x.as_tensor().t()?;
            let w = Tensor::randn(0f32, 0.3, (10, 24), &dev)?.to_dtype(dtype)?;
            let frozen = project(&xt, &w)?;
            let plain = xt.matmul(&w.t()?)?;
            let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
                let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
                let d = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                Ok(d / b.abs()?.max_all()?.to_scalar::<f32>()?)
            };
            assert!(rel(&frozen, &plain)? < 1e-2, "{dtype:?} {rows}: values");
            let g_frozen = frozen.sqr()?.sum_all()?.backward()?;
            let g_plain = plain.sqr()?.sum_all()?.backward()?;
            let (dx, dx_plain) = (g_frozen.get(&x).unwrap(), g_plain.get(&x).unwrap());
            assert!(
                rel(dx, dx_plain)? < 2e-2,
                "{dtype:?} {rows}: input gradient"
            );
            // candle's matmul leaves a gradient for the transposed weight; ours only x's.
            assert!(g_plain.get_ids().count() > 1);
            assert!(g_frozen.get_ids().eq([x.id()].iter()));
        }
        Ok(())
    }
}
