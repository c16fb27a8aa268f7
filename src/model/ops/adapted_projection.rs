//! A linear layer's base projection, bias and LoRA adapter as one op for training, whose
//! backward pass keeps only what it needs.
//!
//! Built from candle ops the adapted layer is six to nine graph nodes (cast to the
//! adapter's f32, dropout, x·Aᵀ, scaling, ·Bᵀ, cast back, two sums), and candle keeps the
//! inputs of every node until `backward`: an f32 copy of the input and three copies of the
//! output per projection. This op keeps nothing but its output (its input is the previous
//! op's output, kept anyway, and the adapter weights are parameters); the backward pass
//! recomputes the rank-`r` product `x·Aᵀ` and draws the dropout mask again from its seed.
//! Everything runs in the input's dtype (the adapter weights are cast to it, as PyTorch's
//! autocast does), and the adapter gradients are returned in the adapter's f32.

use super::base_weight::BaseWeight;
use super::dropout::dropout_mask;
use super::gemm::{gemm_rhs_transposed, gemm_strided};
use super::int8_projection;
use super::op_storage::cpu_f32;
use super::projection::{project, FEW_ROWS};
use candle_core::{DType, Layout, Shape, Tensor};
use std::sync::Mutex;

/// `x · Wᵀ + b + scale · (dropout(x) · Aᵀ) · Bᵀ` for `x` `[rows, in]`, a frozen weight `W`
/// `[out, in]` (dense or int8 blocks), an optional bias `[out]` and an adapter (`A`
/// `[r, in]`, `B` `[out, r]`).
#[derive(Clone)]
pub struct AdaptedProjection {
    pub weight: BaseWeight,
    pub bias: Option<Tensor>,
    pub scale: f64,
    /// LoRA dropout on the adapter's input: `(p, seed)` of `dropout_mask`.
    pub dropout: Option<(f32, u64)>,
    /// Adapters merged earlier beside a bf16/f16 weight (`MergedUpdate`'s `(a, b)`): part
    /// of the frozen base, so `x · (W + b·a)ᵀ`, with no gradient for them.
    pub merged: Option<(Tensor, Tensor)>,
}

impl AdaptedProjection {
    /// The projection of `x` `[rows, in]` with gradients for `x`, `a` and `b` (none for
    /// the frozen weight and bias).
    pub fn apply(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> anyhow::Result<Tensor> {
        let x = x.contiguous()?;
        // Long inputs on the CPU in f32 run this crate's kernel straight into the output
        // buffer; others are computed with candle ops on graph-free copies of the operands
        // and handed to the op as its output.
        let precomputed = if self.kernel_applies(&x) {
            None
        } else {
            Some(self.forward_untracked(&x.detach(), &a.detach(), &b.detach())?)
        };
        let op = Op {
            projection: self.clone(),
            precomputed: Mutex::new(precomputed),
        };
        Ok(x.apply_op3(a, b, op)?)
    }

    fn kernel_applies(&self, x: &Tensor) -> bool {
        // Merged updates exist only beside bf16/f16 weights, which the kernel never takes.
        self.merged.is_none()
            && x.dim(0).is_ok_and(|rows| rows > FEW_ROWS)
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && match &self.weight {
                BaseWeight::Dense(w) => w.dtype() == DType::F32 && w.is_contiguous(),
                BaseWeight::Int8(_) => true,
                BaseWeight::Int8Gpu(_) => false,
            }
            && self.bias.as_ref().is_none_or(|b| b.dtype() == DType::F32)
    }

    /// The dropout mask for `x` in its dtype; `None` without dropout.
    fn mask(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match self.dropout {
            Some((p, seed)) if p > 0.0 => {
                let mask = dropout_mask(x.dims2()?, p, seed, x.device())
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                Ok(Some(mask.to_dtype(x.dtype())?))
            }
            _ => Ok(None),
        }
    }

    /// The adapter's input: `x` itself, or masked under dropout.
    fn adapter_input(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        match mask {
            Some(m) => x * m,
            None => Ok(x.clone()),
        }
    }

    /// The forward value with candle ops, for inputs that carry no graph.
    fn forward_untracked(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> anyhow::Result<Tensor> {
        let dtype = x.dtype();
        let mut y = self.weight.project(x)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        if let Some((m_a, m_b)) = &self.merged {
            let low = project(&x.to_dtype(DType::F32)?, m_a)?;
            y = (y + project(&low, m_b)?.to_dtype(dtype)?)?;
        }
        // Scaled at rank r, the narrow end, rather than on the [rows, out] output.
        let xa = self.adapter_input(x, self.mask(x)?.as_ref())?;
        let low = (xa.matmul(&a.to_dtype(dtype)?.t()?)? * self.scale)?;
        Ok((y + low.matmul(&b.to_dtype(dtype)?.t()?)?)?)
    }
}

/// The graph node of one application.
struct Op {
    projection: AdaptedProjection,
    /// The output when computed before the op (see `apply`); taken by the forward, so the
    /// node keeps no second copy.
    precomputed: Mutex<Option<Tensor>>,
}

impl Op {
    fn take_precomputed(&self) -> Option<Tensor> {
        self.precomputed.lock().expect("not poisoned").take()
    }
}

/// The storage of a freshly computed, contiguous tensor.
fn owned_storage(y: &Tensor) -> candle_core::Result<(candle_core::Storage, Shape)> {
    let (storage, layout) = y.storage_and_layout();
    if layout.start_offset() != 0 || !layout.is_contiguous() {
        candle_core::bail!("adapted projection: the precomputed output is a view");
    }
    Ok((storage.try_clone(layout)?, y.shape().clone()))
}

/// The elements of a contiguous f32 tensor on the CPU, read through its storage guard.
fn cpu_values<'a>(
    storage: &'a candle_core::Storage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(cpu) => cpu_f32(cpu, layout, what),
        _ => candle_core::bail!("{what}: not on the CPU"),
    }
}

/// The gradients `(dx, da, db)` of one application.
type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

impl Op {
    /// The backward pass on the CPU in f32 over a dense weight, where the forward ran this
    /// crate's kernel: every product straight into its output buffer and `dx`'s two terms
    /// summed by the second product, where the candle composition below allocates and
    /// adds a full-size tensor per term. `None` where it does not apply.
    fn cpu_backward(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Grads>> {
        let p = &self.projection;
        let BaseWeight::Dense(weight) = &p.weight else {
            return Ok(None);
        };
        let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
        if !p.kernel_applies(x) || !f32_cpu(a) || !f32_cpu(b) || !f32_cpu(grad) {
            return Ok(None);
        }
        let x_tracked = x.track_op();
        let (rows, inp) = x.dims2()?;
        let (r, out) = (a.dim(0)?, b.dim(0)?);
        let (x, a, b, grad) = (
            x.contiguous()?,
            a.contiguous()?,
            b.contiguous()?,
            grad.contiguous()?,
        );
        let guards = [&x, &a, &b, &grad, weight].map(|t| t.storage_and_layout());
        let [xs, a_v, b_v, g, w] = ["the input", "A", "B", "the output gradient", "the weight"]
            .iter()
            .zip(&guards)
            .map(|(what, (storage, layout))| {
                cpu_values(storage, layout, &format!("projection backward: {what}"))
            })
            .collect::<candle_core::Result<Vec<_>>>()?
            .try_into()
            .expect("five operands");
        let scale = p.scale as f32;
        let mask = match p.dropout {
            Some((p_drop, seed)) if p_drop > 0.0 => Some(
                dropout_mask((rows, inp), p_drop, seed, &candle_core::Device::Cpu)
                    .and_then(|m| Ok(m.flatten_all()?.to_vec1::<f32>()?))
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            ),
            _ => None,
        };
        let masked: Option<Vec<f32>> = mask
            .as_ref()
            .map(|m| xs.iter().zip(m).map(|(x, m)| x * m).collect());
        let xa = masked.as_deref().unwrap_or(xs);
        // d/d(low) = grad · B, low = scale · xa Aᵀ: [rows, r].
        let mut grad_low = vec![0f32; rows * r];
        let dims = (rows, r, out);
        gemm_strided(
            (&mut grad_low, (r, 1)),
            (g, (out, 1)),
            (b_v, (r, 1)),
            dims,
            false,
            1.0,
        );
        let grad_low_rm = (&grad_low[..], (r, 1));
        // dx = grad · W + mask ∘ (scale · grad_low · A); dropout's gradient is its mask.
        let dx = if x_tracked {
            let mut dx = vec![0f32; rows * inp];
            let dims = (rows, inp, out);
            gemm_strided(
                (&mut dx, (inp, 1)),
                (g, (out, 1)),
                (w, (inp, 1)),
                dims,
                false,
                1.0,
            );
            let dims = (rows, inp, r);
            match &mask {
                None => gemm_strided(
                    (&mut dx, (inp, 1)),
                    grad_low_rm,
                    (a_v, (inp, 1)),
                    dims,
                    true,
                    scale,
                ),
                Some(mask) => {
                    let mut adapter = vec![0f32; rows * inp];
                    let dst = (&mut adapter[..], (inp, 1));
                    gemm_strided(dst, grad_low_rm, (a_v, (inp, 1)), dims, false, scale);
                    dx.iter_mut()
                        .zip(adapter.iter().zip(mask))
                        .for_each(|(dx, (g, m))| *dx += g * m);
                }
            }
            Some(Tensor::from_vec(
                dx,
                (rows, inp),
                &candle_core::Device::Cpu,
            )?)
        } else {
            None
        };
        // da = scale · grad_lowᵀ · xa: [r, in].
        let mut da = vec![0f32; r * inp];
        let grad_low_t = (&grad_low[..], (1, r));
        gemm_strided(
            (&mut da, (inp, 1)),
            grad_low_t,
            (xa, (inp, 1)),
            (r, inp, rows),
            false,
            scale,
        );
        // db = gradᵀ · low: [out, r].
        let mut low = vec![0f32; rows * r];
        gemm_rhs_transposed(&mut low, xa, a_v, (rows, r, inp), false, scale);
        let mut db = vec![0f32; out * r];
        let (g_t, low) = ((g, (1, out)), (&low[..], (r, 1)));
        gemm_strided((&mut db, (r, 1)), g_t, low, (out, r, rows), false, 1.0);
        drop(guards);
        let cpu = &candle_core::Device::Cpu;
        Ok(Some((
            dx,
            Some(Tensor::from_vec(da, (r, inp), cpu)?),
            Some(Tensor::from_vec(db, (out, r), cpu)?),
        )))
    }
}

impl candle_core::CustomOp3 for Op {
    fn name(&self) -> &'static str {
        "adapted-projection"
    }

    fn cpu_fwd(
        &self,
        x_storage: &candle_core::CpuStorage,
        x_layout: &Layout,
        a_storage: &candle_core::CpuStorage,
        a_layout: &Layout,
        b_storage: &candle_core::CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        if let Some(y) = self.take_precomputed() {
            let (candle_core::Storage::Cpu(storage), shape) = owned_storage(&y)? else {
                candle_core::bail!("adapted projection: output computed off the CPU");
            };
            return Ok((storage, shape));
        }
        let p = &self.projection;
        let (rows, inp) = x_layout.shape().dims2()?;
        let (r, a_in) = a_layout.shape().dims2()?;
        let (out, b_r) = b_layout.shape().dims2()?;
        let (w_out, w_in) = p.weight.shape();
        if a_in != inp || b_r != r || w_out != out || w_in != inp {
            candle_core::bail!(
                "adapted projection: x {:?}, A {:?}, B {:?}, W [{w_out}, {w_in}] do not fit",
                x_layout.shape(),
                a_layout.shape(),
                b_layout.shape(),
            );
        }
        let x = cpu_f32(x_storage, x_layout, "projection: the input")?;
        let a = cpu_f32(a_storage, a_layout, "projection: A")?;
        let b = cpu_f32(b_storage, b_layout, "projection: B")?;
        let mut y = vec![0f32; rows * out];
        match &p.weight {
            BaseWeight::Dense(weight) => {
                let (w_storage, w_layout) = weight.storage_and_layout();
                let candle_core::Storage::Cpu(w_cpu) = &*w_storage else {
                    candle_core::bail!("adapted projection: the weight is not on the CPU");
                };
                let w = cpu_f32(w_cpu, w_layout, "projection: the weight")?;
                gemm_rhs_transposed(&mut y, x, w, (rows, out, inp), false, 1.0);
            }
            BaseWeight::Int8(w) => int8_projection::forward_into(&mut y, x, w, rows, false),
            BaseWeight::Int8Gpu(_) => {
                candle_core::bail!("adapted projection: the weight is on a GPU")
            }
        }
        if let Some(bias) = &p.bias {
            let bias = bias.to_vec1::<f32>()?;
            y.chunks_mut(out)
                .for_each(|row| row.iter_mut().zip(&bias).for_each(|(y, b)| *y += b));
        }
        let masked;
        let adapter_x = match p.dropout {
            Some((p_drop, seed)) if p_drop > 0.0 => {
                let mask = dropout_mask((rows, inp), p_drop, seed, &candle_core::Device::Cpu)
                    .and_then(|m| Ok(m.flatten_all()?.to_vec1::<f32>()?))
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                masked = x.iter().zip(&mask).map(|(x, m)| x * m).collect::<Vec<_>>();
                &masked[..]
            }
            _ => x,
        };
        // Scaled at rank r, the narrow end, as `forward_untracked`.
        let mut low = vec![0f32; rows * r];
        let scale = p.scale as f32;
        gemm_rhs_transposed(&mut low, adapter_x, a, (rows, r, inp), false, scale);
        gemm_rhs_transposed(&mut y, &low, b, (rows, out, r), true, 1.0);
        Ok((
            candle_core::CpuStorage::F32(y),
            candle_core::Shape::from((rows, out)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let y = self
            .take_precomputed()
            .ok_or_else(|| candle_core::Error::Msg("adapted projection: no output".into()))?;
        let (candle_core::Storage::Cuda(storage), shape) = owned_storage(&y)? else {
            candle_core::bail!("adapted projection: output computed off the GPU");
        };
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if let Some(grads) = self.cpu_backward(x, a, b, grad)? {
            return Ok(grads);
        }
        let p = &self.projection;
        let dtype = x.dtype();
        // An input outside the graph (the first layer's, from the embeddings) needs no
        // gradient: skip its product with the weight and keep nothing in the store.
        let x_tracked = x.track_op();
        let x = x.detach();
        let (a_c, b_c) = (a.detach().to_dtype(dtype)?, b.detach().to_dtype(dtype)?);
        let grad = grad.contiguous()?.to_dtype(dtype)?;
        let mask = p.mask(&x)?;
        let xa = p.adapter_input(&x, mask.as_ref())?;
        // d/d(low), with low = scale · xa Aᵀ: [rows, r].
        let grad_low = grad.matmul(&b_c)?;
        // Dropout's gradient is its mask again: x·m is linear in x.
        let dx = if x_tracked {
            let grad_xa = (grad_low.matmul(&a_c)? * p.scale)?;
            let grad_x_adapter = p.adapter_input(&grad_xa, mask.as_ref())?;
            let mut dx = (p.weight.input_grad(&grad)? + grad_x_adapter)?;
            if let Some((m_a, m_b)) = &p.merged {
                let through = grad.to_dtype(DType::F32)?.matmul(m_b)?.matmul(m_a)?;
                dx = (dx + through.to_dtype(dtype)?)?;
            }
            Some(dx)
        } else {
            None
        };
        let da = (grad_low.t()?.matmul(&xa)? * p.scale)?.to_dtype(a.dtype())?;
        let low = (xa.matmul(&a_c.t()?)? * p.scale)?;
        let db = grad.t()?.matmul(&low)?.to_dtype(b.dtype())?;
        Ok((dx, Some(da), Some(db)))
    }
}
