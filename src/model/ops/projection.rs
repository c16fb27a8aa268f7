//! The base projection `x · Wᵀ` of every linear layer, picking the fastest kernel for the
//! input's shape, and its training-time op that computes no gradient for the frozen weight.

use super::dot::dot;
use super::gemm::gemm_rhs_transposed;
use super::op_storage::cpu_f32;
use anyhow::Result;
use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// `x [rows, in] · Wᵀ` for `W [out, in]`. With few rows (decoding) on the CPU candle's
/// gemm runs 2–3× faster as `(W · xᵀ)ᵀ`, which keeps the large weight as the
/// packed-friendly left operand; long sequences (prefill, training) and other devices
/// use the direct form (cuBLAS reads the transposed weight in place, where the CPU form
/// would cost a transpose copy of the output).
pub fn project(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if x.track_op() && x.device().is_cpu() {
        let op = FrozenProjection {
            weight: weight.clone(),
        };
        return Ok(x.contiguous()?.apply_op1(op)?);
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

/// `x · Wᵀ` for a base weight that is never trained, with a backward pass that returns
/// only the gradient of `x`. candle's matmul backward would also compute a weight gradient
/// (a third of a training step's matmul work) and hold it until the pass ends (a second
/// copy of every weight).
struct FrozenProjection {
    weight: Tensor,
}

impl candle_core::CustomOp1 for FrozenProjection {
    fn name(&self) -> &'static str {
        "frozen-projection"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::{CpuStorage, Device, Shape, Storage};
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("frozen projection needs a contiguous input".into())
        })?;
        let dims = layout.shape().dims2()?;
        // f32 straight into the output buffer: the LM head's output is the [tokens, vocab]
        // logits, which the general path below copies twice.
        if let (CpuStorage::F32(v), true) = (storage, self.weight.is_contiguous()) {
            let (w_storage, w_layout) = self.weight.storage_and_layout();
            if let Storage::Cpu(w_cpu @ CpuStorage::F32(_)) = &*w_storage {
                let w = cpu_f32(w_cpu, w_layout, "projection: the weight")?;
                let ((rows, inp), (out, w_in)) = (dims, self.weight.dims2()?);
                if inp != w_in {
                    candle_core::bail!(
                        "frozen projection: input {dims:?} for weight [{out}, {w_in}]"
                    );
                }
                let mut y = vec![0f32; rows * out];
                gemm_rhs_transposed(&mut y, &v[start..end], w, (rows, out, inp), false, 1.0);
                return Ok((CpuStorage::F32(y), Shape::from((rows, out))));
            }
        }
        let x = match storage {
            CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
            CpuStorage::BF16(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
            CpuStorage::F16(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
            _ => candle_core::bail!("frozen projection: unsupported input dtype"),
        };
        let y = project_untracked(&x, &self.weight)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .contiguous()?;
        let shape = y.shape().clone();
        let (y_storage, y_layout) = y.storage_and_layout();
        let (s, e) = y_layout
            .contiguous_offsets()
            .expect("contiguous() gives contiguous offsets");
        let out = match &*y_storage {
            Storage::Cpu(CpuStorage::F32(v)) => CpuStorage::F32(v[s..e].to_vec()),
            Storage::Cpu(CpuStorage::BF16(v)) => CpuStorage::BF16(v[s..e].to_vec()),
            Storage::Cpu(CpuStorage::F16(v)) => CpuStorage::F16(v[s..e].to_vec()),
            Storage::Cpu(CpuStorage::F64(v)) => CpuStorage::F64(v[s..e].to_vec()),
            _ => candle_core::bail!("frozen projection: unexpected output storage"),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight.to_dtype(grad.dtype())?)?))
    }
}
