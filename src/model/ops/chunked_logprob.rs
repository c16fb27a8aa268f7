//! Log-probabilities of target tokens straight from the final hidden states and the LM
//! head, one vocabulary chunk at a time, so the `[tokens, vocab]` logits never exist: at
//! 4k tokens and Qwen2's 152k vocabulary those are 2.5 GB in f32 per sequence, and the
//! unfused backward keeps a second copy of the same size.
//!
//! Forward, per row: logits of one chunk, an online log-sum-exp (running max and a sum of
//! exponentials rescaled when the max grows), and the target's logit when the chunk holds
//! it. Backward recomputes each chunk's logits and accumulates
//! `grad_h = Σ_v (p_v·(g_lse − g_lp) + g_lp·1[v = target]) · W_v`, which for the loss
//! `−log p(target)` is the familiar `Σ_v (softmax_v − 1[v = target]) · W_v`.
//!
//! The LM head is frozen: the op gives it no gradient (LoRA never targets it). Inputs are
//! f32, bf16 or f16 (hidden states and head in the same dtype); arithmetic is in f32
//! with the exponential sums in f64; the result is f32 and the gradient has the hidden
//! states' dtype. On the CPU this file is the implementation (row-parallel with rayon);
//! with `--features cuda` a CUDA device runs `chunked_logprob_cuda` (cuBLAS for the chunk
//! products, the kernels in `kernels/chunked_logprob.cu` for the rest), and
//! `examples/kernel_check.rs` compares the two on a GPU.

use super::dot::dot;
use super::op_storage::{contiguous, cpu_u32};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use half::{bf16, f16};
use rayon::prelude::*;

/// Rows handled by one rayon task: each chunk of the head is read from cache this many
/// times per fetch from memory.
const ROWS_PER_TASK: usize = 16;

/// Bytes of f32 head rows in one CPU chunk: small enough to stay in L2 while a task's
/// rows pass over it.
const CPU_CHUNK_BYTES: usize = 256 * 1024;

/// Bytes the GPU path spends on one chunk's f32 logits (the backward adds a copy in the
/// input dtype for the gradient product).
pub const GPU_CHUNK_LOGITS_BYTES: usize = 64 << 20;

/// Vocabulary rows per chunk on the GPU for `rows` tokens: as many as keep one chunk's
/// f32 logits within `GPU_CHUNK_LOGITS_BYTES`, a multiple of 256 (whole cuBLAS tiles), at
/// least 256, at most the vocabulary.
pub fn logits_chunk_rows(rows: usize, vocab: usize) -> usize {
    let fit = GPU_CHUNK_LOGITS_BYTES / (4 * rows.max(1));
    (fit / 256 * 256).max(256).min(vocab.max(1))
}

/// `[n]` f32: `log p(targets[i])` for each row of `hidden` `[n, hidden]` under the
/// logits `hidden · lm_headᵀ` (`lm_head` `[vocab, hidden]`, same dtype; `targets` `[n]`
/// u32). Differentiable with respect to `hidden` only.
pub fn chunked_target_logprobs(
    hidden: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    chunked_target_logprob_and_lse(hidden, lm_head, targets)?
        .narrow(1, 0, 1)?
        .squeeze(1)
}

/// `[n, 2]` f32: per row, the target's log-probability and the log-sum-exp of the logits
/// (the backward pass reuses the latter instead of a second pass over the vocabulary).
pub fn chunked_target_logprob_and_lse(
    hidden: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
) -> Result<Tensor> {
    check_inputs(hidden, lm_head, targets)?;
    hidden.contiguous()?.apply_op3(
        &lm_head.contiguous()?,
        &targets.contiguous()?,
        ChunkedLogprob,
    )
}

fn check_inputs(hidden: &Tensor, lm_head: &Tensor, targets: &Tensor) -> Result<()> {
    let (n, h) = hidden.dims2()?;
    let (_, head_h) = lm_head.dims2()?;
    if head_h != h {
        candle_core::bail!(
            "chunked-logprob: hidden size {h}, LM head {:?}",
            lm_head.dims()
        );
    }
    if hidden.dtype() != lm_head.dtype() {
        candle_core::bail!(
            "chunked-logprob: hidden states in {:?}, LM head in {:?}",
            hidden.dtype(),
            lm_head.dtype()
        );
    }
    if targets.dtype() != DType::U32 || targets.dims() != [n] {
        candle_core::bail!(
            "chunked-logprob: targets must be u32 [{n}], got {:?} {:?}",
            targets.dtype(),
            targets.dims()
        );
    }
    Ok(())
}

/// Forward op: (hidden, lm_head, targets) → `[n, 2]` (log-prob, log-sum-exp).
struct ChunkedLogprob;

/// Backward op: (hidden, lm_head, targets) → d/d hidden of `g_lp·logp + g_lse·lse`, with
/// `coefs` `[n, 3]` f32 = (g_lp, g_lse, lse) per row.
struct ChunkedLogprobGrad {
    coefs: Tensor,
}

/// Element types the CPU twin reads, widened to f32.
trait Element: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    /// The slice itself when it already is f32, so the f32 path copies nothing.
    fn as_f32(xs: &[Self]) -> Option<&[f32]>;
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn as_f32(xs: &[Self]) -> Option<&[f32]> {
        Some(xs)
    }
}

impl Element for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
}

impl Element for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
}

/// Rows `[start, start + len)` of a row-major `[_, width]` matrix as f32: borrowed when
/// the data is f32, widened into `buf` otherwise.
fn rows_f32<'a, T: Element>(
    data: &'a [T],
    width: usize,
    start: usize,
    len: usize,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    let rows = &data[start * width..(start + len) * width];
    if let Some(f) = T::as_f32(rows) {
        return f;
    }
    buf.clear();
    buf.extend(rows.iter().map(|x| x.to_f32()));
    buf
}

/// Evaluates `$body` with `$h` and `$w` bound to the contiguous data of two CPU storages
/// of one float dtype (f32, bf16 or f16), so a generic body runs for each.
macro_rules! with_float_pair {
    ($op:expr, ($s1:expr, $l1:expr), ($s2:expr, $l2:expr), |$h:ident, $w:ident| $body:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                let ($h, $w) = (contiguous(a, $l1, $op)?, contiguous(b, $l2, $op)?);
                $body
            }
            (CpuStorage::BF16(a), CpuStorage::BF16(b)) => {
                let ($h, $w) = (contiguous(a, $l1, $op)?, contiguous(b, $l2, $op)?);
                $body
            }
            (CpuStorage::F16(a), CpuStorage::F16(b)) => {
                let ($h, $w) = (contiguous(a, $l1, $op)?, contiguous(b, $l2, $op)?);
                $body
            }
            _ => candle_core::bail!(
                "{}: unsupported dtypes {:?} and {:?}",
                $op,
                $s1.dtype(),
                $s2.dtype()
            ),
        }
    };
}

fn targets_of<'a>(storage: &'a CpuStorage, layout: &Layout, vocab: usize) -> Result<&'a [u32]> {
    let targets = cpu_u32(storage, layout, "chunked-logprob: targets")?;
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("chunked-logprob: target {t} outside the vocabulary of {vocab}");
    }
    Ok(targets)
}

/// Head rows per CPU chunk for a hidden size.
fn cpu_chunk_rows(hidden: usize) -> usize {
    (CPU_CHUNK_BYTES / (4 * hidden.max(1))).max(16)
}

/// Online log-sum-exp of one row, fed a chunk of logits at a time.
struct RunningLse {
    max: f32,
    /// Σ exp(logit − max) over the logits seen so far.
    sum: f64,
}

impl RunningLse {
    fn new() -> Self {
        Self {
            max: f32::NEG_INFINITY,
            sum: 0.0,
        }
    }

    fn add(&mut self, logits: &[f32]) {
        let chunk_max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if chunk_max > self.max {
            // exp(−inf) = 0 on the first chunk.
            self.sum *= ((self.max - chunk_max) as f64).exp();
            self.max = chunk_max;
        }
        let max = self.max;
        self.sum += logits.iter().map(|&z| (z - max).exp() as f64).sum::<f64>();
    }

    fn value(&self) -> f32 {
        self.max + self.sum.ln() as f32
    }
}

fn forward<T: Element>(hidden: &[T], head: &[T], targets: &[u32], width: usize) -> Vec<f32> {
    let n = targets.len();
    let vocab = head.len() / width;
    let chunk = cpu_chunk_rows(width);
    let mut out = vec![0f32; n * 2];
    out.par_chunks_mut(2 * ROWS_PER_TASK)
        .zip(targets.par_chunks(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (out, targets))| {
            let first = task * ROWS_PER_TASK;
            let mut hidden_buf = Vec::new();
            let h = rows_f32(hidden, width, first, targets.len(), &mut hidden_buf);
            let mut head_buf = Vec::new();
            let mut logits = vec![0f32; chunk];
            let mut lse: Vec<RunningLse> = targets.iter().map(|_| RunningLse::new()).collect();
            let mut target_logit = vec![0f32; targets.len()];
            for start in (0..vocab).step_by(chunk) {
                let len = chunk.min(vocab - start);
                let w = rows_f32(head, width, start, len, &mut head_buf);
                for (r, &target) in targets.iter().enumerate() {
                    let h_r = &h[r * width..(r + 1) * width];
                    for (z, w_v) in logits[..len].iter_mut().zip(w.chunks_exact(width)) {
                        *z = dot(h_r, w_v);
                    }
                    lse[r].add(&logits[..len]);
                    let t = target as usize;
                    if (start..start + len).contains(&t) {
                        target_logit[r] = logits[t - start];
                    }
                }
            }
            for (r, out) in out.chunks_exact_mut(2).enumerate() {
                let lse = lse[r].value();
                out[0] = target_logit[r] - lse;
                out[1] = lse;
            }
        });
    out
}

fn backward<T: Element>(
    hidden: &[T],
    head: &[T],
    targets: &[u32],
    coefs: &[f32],
    width: usize,
) -> Vec<T> {
    let vocab = head.len() / width;
    let chunk = cpu_chunk_rows(width);
    let mut grad = vec![T::from_f32(0.0); hidden.len()];
    grad.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(targets.par_chunks(ROWS_PER_TASK))
        .zip(coefs.par_chunks(3 * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, ((grad, targets), coefs))| {
            let first = task * ROWS_PER_TASK;
            let mut hidden_buf = Vec::new();
            let h = rows_f32(hidden, width, first, targets.len(), &mut hidden_buf);
            let mut head_buf = Vec::new();
            let mut acc = vec![0f32; targets.len() * width];
            for start in (0..vocab).step_by(chunk) {
                let len = chunk.min(vocab - start);
                let w = rows_f32(head, width, start, len, &mut head_buf);
                for (r, &target) in targets.iter().enumerate() {
                    let (g_lp, g_lse, lse) = (coefs[3 * r], coefs[3 * r + 1], coefs[3 * r + 2]);
                    let scale = g_lse - g_lp;
                    let h_r = &h[r * width..(r + 1) * width];
                    let acc_r = &mut acc[r * width..(r + 1) * width];
                    for (v, w_v) in w.chunks_exact(width).enumerate() {
                        let mut d = (dot(h_r, w_v) - lse).exp() * scale;
                        if start + v == target as usize {
                            d += g_lp;
                        }
                        for (a, &x) in acc_r.iter_mut().zip(w_v) {
                            *a += d * x;
                        }
                    }
                }
            }
            for (g, a) in grad.iter_mut().zip(&acc) {
                *g = T::from_f32(*a);
            }
        });
    grad
}

impl CustomOp3 for ChunkedLogprob {
    fn name(&self) -> &'static str {
        "chunked-logprob"
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
        let (n, width) = l1.shape().dims2()?;
        let (vocab, _) = l2.shape().dims2()?;
        let targets = targets_of(s3, l3, vocab)?;
        let out = with_float_pair!(self.name(), (s1, l1), (s2, l2), |h, w| {
            forward(h, w, targets, width)
        });
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::chunked_logprob_cuda::forward(s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        lm_head: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let coefs = Tensor::cat(&[grad_res, &res.narrow(1, 1, 1)?], 1)?.contiguous()?;
        let grad = hidden.apply_op3_no_bwd(lm_head, targets, &ChunkedLogprobGrad { coefs })?;
        Ok((Some(grad), None, None))
    }
}

impl CustomOp3 for ChunkedLogprobGrad {
    fn name(&self) -> &'static str {
        "chunked-logprob-grad"
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
        let (_, width) = l1.shape().dims2()?;
        let (vocab, _) = l2.shape().dims2()?;
        let targets = targets_of(s3, l3, vocab)?;
        let coefs = self.coefs.flatten_all()?.to_vec1::<f32>()?;
        let name = self.name();
        let grad = with_float_pair!(name, (s1, l1), (s2, l2), |h, w| {
            WithDType::to_cpu_storage_owned(backward(h, w, targets, &coefs, width))
        });
        Ok((grad, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::chunked_logprob_cuda::backward(s1, l1, s2, l2, s3, l3, &self.coefs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// Deterministic pseudo-random values in [−scale, scale).
    fn random(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// Case sizes: rows not a multiple of ROWS_PER_TASK and a vocabulary not a multiple of
    /// the chunk, so the ragged ends are exercised.
    struct Case {
        n: usize,
        width: usize,
        vocab: usize,
    }

    const CASES: [Case; 2] = [
        Case {
            n: 37,
            width: 64,
            vocab: 3001,
        },
        Case {
            n: 5,
            width: 200,
            vocab: 1500,
        },
    ];

    fn inputs(case: &Case, seed: u64) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let dev = Device::Cpu;
        let hidden = Tensor::from_vec(
            random(case.n * case.width, seed, 1.0),
            (case.n, case.width),
            &dev,
        )?;
        // Logits spread over several units, so the softmax is far from uniform.
        let head = Tensor::from_vec(
            random(case.vocab * case.width, seed + 1, 0.5),
            (case.vocab, case.width),
            &dev,
        )?;
        let targets: Vec<u32> = random(case.n, seed + 2, 1.0)
            .iter()
            .map(|x| ((x + 1.0) / 2.0 * case.vocab as f32) as u32 % case.vocab as u32)
            .collect();
        let targets = Tensor::from_vec(targets, case.n, &dev)?;
        let upstream = Tensor::from_vec(random(case.n, seed + 3, 1.0), case.n, &dev)?;
        Ok((hidden, head, targets, upstream))
    }

    /// The plain composition: full logits, log-softmax, gather.
    fn reference(hidden: &Tensor, head: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = hidden.matmul(&head.t()?)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        log_probs.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)
    }

    /// ‖a − b‖ / ‖b‖ over all elements, in f64.
    fn relative_error(a: &Tensor, b: &Tensor) -> Result<f64> {
        let a = a.to_dtype(DType::F64)?.flatten_all()?;
        let b = b.to_dtype(DType::F64)?.flatten_all()?;
        let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
        let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
        Ok(diff / norm)
    }

    /// Value and d(Σ upstream·logp)/d hidden.
    fn value_and_grad(
        f: impl Fn(&Tensor) -> Result<Tensor>,
        hidden: &Tensor,
        upstream: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let var = Var::from_tensor(hidden)?;
        let logp = f(var.as_tensor())?;
        let grads = (&logp * upstream)?.sum_all()?.backward()?;
        let grad = grads
            .get(var.as_tensor())
            .expect("gradient reaches hidden")
            .clone();
        Ok((logp, grad))
    }

    #[test]
    fn f32_matches_the_unfused_composition() -> Result<()> {
        for (i, case) in CASES.iter().enumerate() {
            let (hidden, head, targets, upstream) = inputs(case, 10 * i as u64)?;
            let (want, want_grad) =
                value_and_grad(|h| reference(h, &head, &targets), &hidden, &upstream)?;
            let (got, got_grad) = value_and_grad(
                |h| chunked_target_logprobs(h, &head, &targets),
                &hidden,
                &upstream,
            )?;
            assert_eq!(got.dims(), [case.n]);
            assert_eq!(got.dtype(), DType::F32);
            let value_err = relative_error(&got, &want)?;
            let grad_err = relative_error(&got_grad, &want_grad)?;
            assert!(value_err < 1e-5, "case {i}: value error {value_err:e}");
            assert!(grad_err < 1e-5, "case {i}: gradient error {grad_err:e}");
        }
        Ok(())
    }

    #[test]
    fn log_sum_exp_output_and_its_gradient() -> Result<()> {
        let case = &CASES[0];
        let (hidden, head, targets, upstream) = inputs(case, 7)?;
        let want_lse = hidden
            .matmul(&head.t()?)?
            .exp()?
            .sum_keepdim(1)?
            .log()?
            .squeeze(1)?;
        let (want, want_grad) = value_and_grad(
            |h| {
                let logits = h.matmul(&head.t()?)?;
                logits.exp()?.sum_keepdim(1)?.log()?.squeeze(1)
            },
            &hidden,
            &upstream,
        )?;
        let (got, got_grad) = value_and_grad(
            |h| {
                chunked_target_logprob_and_lse(h, &head, &targets)?
                    .narrow(1, 1, 1)?
                    .squeeze(1)
            },
            &hidden,
            &upstream,
        )?;
        assert!(relative_error(&want, &want_lse)? < 1e-6);
        assert!(relative_error(&got, &want)? < 1e-5);
        assert!(relative_error(&got_grad, &want_grad)? < 1e-5);
        Ok(())
    }

    /// bf16 inputs: the op widens them exactly, so it must match the f32 composition on the
    /// same (bf16-representable) values; its gradient is rounded once, to bf16.
    #[test]
    fn bf16_matches_the_composition_on_widened_inputs() -> Result<()> {
        for (i, case) in CASES.iter().enumerate() {
            let (hidden, head, targets, upstream) = inputs(case, 100 + i as u64)?;
            let (hidden, head) = (hidden.to_dtype(DType::BF16)?, head.to_dtype(DType::BF16)?);
            let (want, want_grad) = value_and_grad(
                |h| {
                    reference(
                        &h.to_dtype(DType::F32)?,
                        &head.to_dtype(DType::F32)?,
                        &targets,
                    )
                },
                &hidden,
                &upstream,
            )?;
            let (got, got_grad) = value_and_grad(
                |h| chunked_target_logprobs(h, &head, &targets),
                &hidden,
                &upstream,
            )?;
            assert_eq!(got_grad.dtype(), DType::BF16);
            let value_err = relative_error(&got, &want)?;
            let grad_err = relative_error(&got_grad, &want_grad)?;
            assert!(value_err < 1e-3, "case {i}: value error {value_err:e}");
            assert!(grad_err < 1e-3, "case {i}: gradient error {grad_err:e}");
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_targets_and_mismatched_inputs() -> Result<()> {
        let (hidden, head, _, _) = inputs(&CASES[1], 3)?;
        let dev = Device::Cpu;
        let outside = Tensor::from_vec(vec![1500u32; 5], 5, &dev)?;
        let err = chunked_target_logprobs(&hidden, &head, &outside).unwrap_err();
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
        let targets = Tensor::zeros(5, DType::U32, &dev)?;
        let err =
            chunked_target_logprobs(&hidden, &head.to_dtype(DType::BF16)?, &targets).unwrap_err();
        assert!(err.to_string().contains("LM head in BF16"), "{err}");
        let err = chunked_target_logprobs(&hidden, &head.narrow(1, 0, 100)?, &targets).unwrap_err();
        assert!(err.to_string().contains("hidden size 200"), "{err}");
        Ok(())
    }
}
