//! Fused CPU kernels, with backward passes, for the differentiable (training) forward path.
//!
//! Built from candle's generic ops, a log-softmax is a chain of about ten full-size passes
//! (each allocating its output) and its backward as many again; over the `[tokens,
//! 49152]` logits that chain costs as much as the LM head's matmul. RMS norm and SwiGLU
//! are shorter chains, but run twice per layer. Each op here makes one or two passes, row
//! by row in parallel, and its backward is a second op of the same kind. They take f32
//! CPU tensors; callers keep the plain candle composition for other devices and dtypes.
//! (Attention has its own op, `causal_attention`.)

use super::gemm::gemm_rhs_transposed;
use super::op_storage::{cpu_f32, cpu_u32};
use super::vector_exp::{exp_shifted_scaled, row_max, sum_exp_shifted_f64};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Rows handed to one rayon task: enough work to amortise scheduling.
const MIN_ROWS_PER_TASK: usize = 8;

/// Whether the fused kernels apply to `t`.
pub fn fused_applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

// ---------------------------------------------------------------------------------------
// Target log-probabilities

/// `[n, 2]`: for each row of `logits` `[n, vocab]` (f32, CPU), the log-probability of its
/// target (`targets` `[n]`, u32) and the row's log-sum-exp. Exposing the log-sum-exp lets
/// the backward pass use it instead of recomputing it, and makes it usable as a value.
pub fn target_logprob_and_lse(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, TargetLogprob)
}

struct TargetLogprob;

fn check_target(target: u32, vocab: usize) -> Result<usize> {
    let t = target as usize;
    if t >= vocab {
        candle_core::bail!("target-logprob: target {t} outside the vocabulary of {vocab}");
    }
    Ok(t)
}

/// The log-probability of target `t` in a row of logits, and the row's log-sum-exp.
fn logprob_and_lse(row: &[f32], t: usize) -> (f32, f32) {
    let max = row_max(row);
    // Summed in f64: 49k terms in one f32 accumulator lose ~1e-5 of the total.
    let sum = sum_exp_shifted_f64(row, max);
    let lse = max + sum.ln() as f32;
    (row[t] - lse, lse)
}

/// Overwrites a row of logits with the gradient of `g_lp · logp[t] + g_lse · lse`,
/// `c = [g_lp, g_lse, lse]`: `softmax · (g_lse − g_lp)`, plus `g_lp` at the target.
fn into_logprob_grad(row: &mut [f32], t: usize, c: &[f32]) {
    let (g_lp, g_lse, lse) = (c[0], c[1], c[2]);
    exp_shifted_scaled(row, lse, g_lse - g_lp);
    row[t] += g_lp;
}

impl CustomOp2 for TargetLogprob {
    fn name(&self) -> &'static str {
        "target-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, vocab) = l1.shape().dims2()?;
        let logits = cpu_f32(s1, l1, self.name())?;
        let targets = cpu_u32(s2, l2, self.name())?;
        if targets.len() != n {
            candle_core::bail!("target-logprob: {} targets for {n} rows", targets.len());
        }
        let mut out = vec![0f32; n * 2];
        out.par_chunks_mut(2)
            .zip(logits.par_chunks(vocab))
            .zip(targets.par_iter())
            .with_min_len(MIN_ROWS_PER_TASK)
            .try_for_each(|((out, row), &target)| -> Result<()> {
                let t = check_target(target, vocab)?;
                (out[0], out[1]) = logprob_and_lse(row, t);
                Ok(())
            })?;
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Per row: (upstream grad of the log-prob, upstream grad of the lse, the lse).
        let coefs = Tensor::cat(&[grad_res, &res.narrow(1, 1, 1)?], 1)?.contiguous()?;
        let grad = logits.apply_op3_no_bwd(&targets.contiguous()?, &coefs, &TargetLogprobGrad)?;
        Ok((Some(grad), None))
    }
}

/// d/dlogits of `g_lp · logp[target] + g_lse · lse` (`into_logprob_grad`, row by row).
struct TargetLogprobGrad;

impl CustomOp3 for TargetLogprobGrad {
    fn name(&self) -> &'static str {
        "target-logprob-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, vocab) = l1.shape().dims2()?;
        let logits = cpu_f32(s1, l1, self.name())?;
        let targets = cpu_u32(s2, l2, self.name())?;
        let coefs = cpu_f32(s3, l3, self.name())?;
        let mut grad = vec![0f32; n * vocab];
        grad.par_chunks_mut(vocab)
            .zip(logits.par_chunks(vocab))
            .zip(targets.par_iter().zip(coefs.par_chunks(3)))
            .with_min_len(MIN_ROWS_PER_TASK)
            .try_for_each(|((grad, row), (&target, c))| -> Result<()> {
                grad.copy_from_slice(row);
                into_logprob_grad(grad, check_target(target, vocab)?, c);
                Ok(())
            })?;
        Ok((CpuStorage::F32(grad), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------
// The LM head and the target log-probabilities

/// `target_logprob_and_lse(hidden · headᵀ, targets)` for `hidden` `[n, h]` and a frozen
/// `head` `[vocab, h]` (f32, CPU), as one op with a backward pass to `hidden` only.
///
/// Composed from the head's projection and `target_logprob_and_lse`, candle's backward
/// pass holds three `[n, vocab]` f32 buffers at once: the kept logits, their gradient and
/// the gradient's sum in the store. This op keeps the logits it computed and its backward
/// pass turns them into their own gradient in place, so the head costs one such buffer.
pub fn head_target_logprob_and_lse(
    hidden: &Tensor,
    head: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    hidden.contiguous()?.apply_op3(
        &head.contiguous()?,
        &targets.contiguous()?,
        HeadTargetLogprob {
            logits: Mutex::new(None),
        },
    )
}

struct HeadTargetLogprob {
    /// The forward pass's logits `[n, vocab]`, until the backward pass takes them.
    logits: Mutex<Option<Vec<f32>>>,
}

impl CustomOp3 for HeadTargetLogprob {
    fn name(&self) -> &'static str {
        "head-target-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((n, h), (vocab, head_h)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        let hidden = cpu_f32(s1, l1, "head-target-logprob: the hidden states")?;
        let head = cpu_f32(s2, l2, "head-target-logprob: the head")?;
        let targets = cpu_u32(s3, l3, self.name())?;
        if head_h != h || targets.len() != n {
            candle_core::bail!(
                "head-target-logprob: hidden {:?}, head {:?}, {} targets",
                l1.shape(),
                l2.shape(),
                targets.len()
            );
        }
        let mut logits = vec![0f32; n * vocab];
        gemm_rhs_transposed(&mut logits, hidden, head, (n, vocab, h), false, 1.0);
        let mut out = vec![0f32; n * 2];
        out.par_chunks_mut(2)
            .zip(logits.par_chunks(vocab))
            .zip(targets.par_iter())
            .with_min_len(MIN_ROWS_PER_TASK)
            .try_for_each(|((out, row), &target)| -> Result<()> {
                (out[0], out[1]) = logprob_and_lse(row, check_target(target, vocab)?);
                Ok(())
            })?;
        *self.logits.lock().expect("the op's logits") = Some(logits);
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        head: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(mut grad) = self.logits.lock().expect("the op's logits").take() else {
            candle_core::bail!("head-target-logprob: a second backward pass over one forward");
        };
        let vocab = head.dim(0)?;
        // Per row: (upstream grad of the log-prob, upstream grad of the lse, the lse).
        let coefs = Tensor::cat(&[grad_res, &res.narrow(1, 1, 1)?], 1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let targets = targets.to_vec1::<u32>()?;
        grad.par_chunks_mut(vocab)
            .zip(targets.par_iter().zip(coefs.par_chunks(3)))
            .with_min_len(MIN_ROWS_PER_TASK)
            .try_for_each(|(row, (&target, c))| -> Result<()> {
                into_logprob_grad(row, check_target(target, vocab)?, c);
                Ok(())
            })?;
        let grad = Tensor::from_vec(grad, (targets.len(), vocab), hidden.device())?;
        Ok((Some(grad.matmul(head)?), None, None))
    }
}

// ---------------------------------------------------------------------------------------
// RMS norm

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension of `x` (f32, CPU), with
/// a backward pass to `x` only: `weight` must be a constant (the caller checks).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    /// `sqrt(mean(x²) + eps)` of one row, accumulated in f64 as the mean is of squares.
    fn root_mean_square(&self, row: &[f32]) -> f32 {
        let sum_sq: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        ((sum_sq / row.len() as f64) as f32 + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let w = cpu_f32(s2, l2, self.name())?;
        let h = w.len();
        if h == 0 || !x.len().is_multiple_of(h) {
            candle_core::bail!("rms-norm: weight of {h} for input {:?}", l1.shape());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(y, x)| {
                let rms = self.root_mean_square(x);
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = x / rms * w;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = RmsNormGrad {
            norm: RmsNorm { eps: self.eps },
        };
        let dx = x.apply_op3_no_bwd(weight, &grad.contiguous()?, &op)?;
        Ok((Some(dx), None))
    }
}

/// With `r = sqrt(mean(x²) + eps)` and `u = g · w`: `dx = u / r − x · Σ(u·x) / (h · r³)`.
struct RmsNormGrad {
    norm: RmsNorm,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, self.name())?;
        let w = cpu_f32(s2, l2, self.name())?;
        let g = cpu_f32(s3, l3, self.name())?;
        let h = w.len();
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(h)
            .zip(x.par_chunks(h).zip(g.par_chunks(h)))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(dx, (x, g))| {
                let r = self.norm.root_mean_square(x);
                let ux: f32 = g.iter().zip(w).zip(x).map(|((g, w), x)| g * w * x).sum();
                let c = ux / (h as f32 * r * r * r);
                for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                    *dx = g * w / r - x * c;
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------
// SwiGLU

/// `silu(gate) · up` (f32, CPU, same shapes), with gradients to both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        candle_core::bail!("swiglu: gate {:?} and up {:?}", gate.shape(), up.shape());
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct SwiGlu;

/// `out ← σ(x) = 1 / (1 + exp(−x))` element by element, the exp 16 lanes at a time.
fn sigmoids(x: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).for_each(|(o, &x)| *o = -x);
    exp_shifted_scaled(out, 0.0, 1.0);
    out.iter_mut().for_each(|e| *e = 1.0 / (1.0 + *e));
}

/// Elements handed to one rayon task.
const MIN_ELEMS_PER_TASK: usize = 4096;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = cpu_f32(s1, l1, self.name())?;
        let up = cpu_f32(s2, l2, self.name())?;
        let mut y = vec![0f32; gate.len()];
        y.par_chunks_mut(MIN_ELEMS_PER_TASK)
            .zip(gate.par_chunks(MIN_ELEMS_PER_TASK))
            .zip(up.par_chunks(MIN_ELEMS_PER_TASK))
            .for_each(|((y, gate), up)| {
                sigmoids(gate, y);
                for ((y, &g), &u) in y.iter_mut().zip(gate).zip(up) {
                    *y *= g * u;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One pass writes both gradients, stacked on a new leading dimension.
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluGrad)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// `[2, ...]`: d/dgate = `g · up · σ(gate) · (1 + gate · (1 − σ(gate)))`, d/dup =
/// `g · silu(gate)`.
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = cpu_f32(s1, l1, self.name())?;
        let up = cpu_f32(s2, l2, self.name())?;
        let grad = cpu_f32(s3, l3, self.name())?;
        let n = gate.len();
        let mut out = vec![0f32; 2 * n];
        let (d_gate, d_up) = out.split_at_mut(n);
        let chunk = MIN_ELEMS_PER_TASK;
        d_gate
            .par_chunks_mut(chunk)
            .zip(d_up.par_chunks_mut(chunk))
            .zip(
                gate.par_chunks(chunk)
                    .zip(up.par_chunks(chunk))
                    .zip(grad.par_chunks(chunk)),
            )
            .for_each(|((d_gate, d_up), ((gate, up), grad))| {
                // σ(gate) in d_up first, then both gradients from it.
                sigmoids(gate, d_up);
                let (dgs, dus) = (d_gate.iter_mut(), d_up.iter_mut());
                for (((dg, du), (&x, &u)), &g) in dgs.zip(dus).zip(gate.iter().zip(up)).zip(grad) {
                    let s = *du;
                    *dg = g * u * s * (1.0 + x * (1.0 - s));
                    *du = g * x * s;
                }
            });
        let mut dims = vec![2];
        dims.extend_from_slice(l1.shape().dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}
