//! A linear layer's base projection and its LoRA adapter in one op, for training on the CPU.

use super::gemm::gemm_rhs_transposed;
use super::op_storage::cpu_f32;
use super::projection::FEW_ROWS;
use candle_core::{DType, Tensor};

/// `x · Wᵀ + scale · (x · Aᵀ) · Bᵀ` for `x` `[rows, in]` with a frozen base weight `W`
/// and an adapter (`A` `[r, in]`, `B` `[out, r]`) in one op, for training on the CPU in
/// f32. Built from separate candle ops the layer is six graph nodes, and the backward pass
/// allocates, zeroes and adds a gradient buffer for each; here the adapter's product is
/// accumulated straight into the base output and the backward pass gives the three
/// gradients at once (none for `W`, as `FrozenProjection`).
pub struct AdaptedProjection {
    pub weight: Tensor,
    pub scale: f64,
}

impl AdaptedProjection {
    /// Long inputs (training, prefill) on the CPU in f32; decoding's few rows keep the
    /// kernels `project` picks for them.
    pub fn applies(x: &Tensor, weight: &Tensor) -> bool {
        x.dim(0).is_ok_and(|rows| rows > FEW_ROWS)
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && weight.is_contiguous()
    }
}

impl candle_core::CustomOp3 for AdaptedProjection {
    fn name(&self) -> &'static str {
        "adapted-projection"
    }

    fn cpu_fwd(
        &self,
        x_storage: &candle_core::CpuStorage,
        x_layout: &candle_core::Layout,
        a_storage: &candle_core::CpuStorage,
        a_layout: &candle_core::Layout,
        b_storage: &candle_core::CpuStorage,
        b_layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (rows, inp) = x_layout.shape().dims2()?;
        let (r, a_in) = a_layout.shape().dims2()?;
        let (out, b_r) = b_layout.shape().dims2()?;
        let (w_out, w_in) = self.weight.dims2()?;
        if a_in != inp || b_r != r || w_out != out || w_in != inp {
            candle_core::bail!(
                "adapted projection: x {:?}, A {:?}, B {:?}, W {:?} do not fit",
                x_layout.shape(),
                a_layout.shape(),
                b_layout.shape(),
                self.weight.shape()
            );
        }
        let x = cpu_f32(x_storage, x_layout, "projection: the input")?;
        let a = cpu_f32(a_storage, a_layout, "projection: A")?;
        let b = cpu_f32(b_storage, b_layout, "projection: B")?;
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(w_cpu) = &*w_storage else {
            candle_core::bail!("adapted projection: the weight is not on the CPU");
        };
        let w = cpu_f32(w_cpu, w_layout, "projection: the weight")?;
        let mut y = vec![0f32; rows * out];
        gemm_rhs_transposed(&mut y, x, w, (rows, out, inp), false, 1.0);
        // Scaled at rank r, the narrow end, as the unfused path does.
        let mut low = vec![0f32; rows * r];
        gemm_rhs_transposed(&mut low, x, a, (rows, r, inp), false, self.scale as f32);
        gemm_rhs_transposed(&mut y, &low, b, (rows, out, r), true, 1.0);
        Ok((
            candle_core::CpuStorage::F32(y),
            candle_core::Shape::from((rows, out)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let grad = grad.contiguous()?;
        // d/d(low), with low = scale · x Aᵀ: [rows, r].
        let grad_low = grad.matmul(&b)?;
        let dx = (grad.matmul(&self.weight)? + (grad_low.matmul(&a)? * self.scale)?)?;
        let da = (grad_low.t()?.matmul(&x)? * self.scale)?;
        let low = (x.matmul(&a.t()?)? * self.scale)?;
        let db = grad.t()?.matmul(&low)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}
