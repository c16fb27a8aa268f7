//! Causal self-attention with rotary positions as one op with a backward pass, for the
//! differentiable (training) forward path.
//!
//! As candle ops the block is about fifteen graph nodes per layer (head reshapes and
//! transposes, rope, the `[heads, t, t]` scores and probabilities, the merge of the heads),
//! and candle's backward pass allocates, zeroes and adds a full-size gradient for every
//! node. Here the op takes the projections' outputs as they are (`[rows, heads·d]`) and
//! returns the merged heads in the same layout; per (sequence, head) it rotates q and k,
//! computes `softmax(scale · q kᵀ + causal mask) v` with gemm, and the backward pass
//! recomputes the probabilities (a quarter of the forward work) instead of keeping
//! `[heads, t, t]` per layer alive.
//!
//! With `--features cuda` the same op runs on the GPU (`causal_attention_cuda`, kernels in
//! `kernels/causal_attention.cu`); this file's CPU code is what the tests compare the
//! kernels with. The backward pass is its own op, `AttentionGrad`, whose output holds dq,
//! dk and dv side by side.

use super::dot::dot;
use super::op_storage::contiguous;
use super::vector_exp::{exp_shifted, row_max};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;
use std::borrow::Cow;

/// Causal attention over sequences laid one after another in the rows of the
/// projections: `segments` holds each sequence's `(first row, length)`, and every sequence
/// starts at position 0 and sees only its own rows. A right-padded batch of `b × t` is
/// the segments `(i·t, t)`; packed examples are segments of their own lengths, with no
/// padding at all. `q` is `[rows, heads·d]`, `k` and `v` `[rows, kv_heads·d]` (see
/// `supports` for devices and dtypes), `cos`/`sin` `[≥ longest, d/2]` in f32 on the same
/// device. Query head `h` uses KV head `h / (heads / kv_heads)`.
/// Returns `[rows, heads·d]`; rows outside every segment are zero.
#[derive(Clone)]
pub struct CausalAttention {
    pub segments: Vec<(usize, usize)>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Head sizes `kernels/causal_attention.cu` is instantiated for (its per-thread vectors
/// are sized at compile time).
pub const KERNEL_HEAD_DIMS: [usize; 2] = [64, 128];

/// The backward pass of `CausalAttention` for the output gradient `grad`, applied to the
/// same (q, k, v): `[rows, (heads + 2·kv_heads)·d]`, dq then dk then dv.
struct AttentionGrad {
    attention: CausalAttention,
    grad: Tensor,
}

impl CausalAttention {
    /// Whether the op runs for inputs like `x` with this head size: in f32, bf16 or f16
    /// (computing in f32 and returning the inputs' dtype), on the CPU, and with
    /// `--features cuda` on a CUDA device for the head sizes the kernels are built for.
    pub fn supports(x: &Tensor, head_dim: usize) -> bool {
        let device = x.device();
        matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16)
            && (device.is_cpu()
                || cfg!(feature = "cuda")
                    && device.is_cuda()
                    && KERNEL_HEAD_DIMS.contains(&head_dim))
    }

    pub fn apply(self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let rows = q.dim(0)?;
        let (d, half) = (self.head_dim, self.head_dim / 2);
        let longest = self.segments.iter().map(|s| s.1).max().unwrap_or(0);
        if q.dims() != [rows, self.heads * d]
            || k.dims() != [rows, self.kv_heads * d]
            || v.dims() != [rows, self.kv_heads * d]
            || self.cos.dims().len() != 2
            || self.cos.dim(0)? < longest
            || self.cos.dim(1)? != half
            || self.sin.dims() != self.cos.dims()
            || !d.is_multiple_of(2)
            || self.kv_heads == 0
            || !self.heads.is_multiple_of(self.kv_heads)
            || self.segments.iter().any(|&(start, len)| start + len > rows)
        {
            candle_core::bail!(
                "causal-attention: q {:?}, k {:?}, v {:?}, tables {:?} for segments {:?}",
                q.shape(),
                k.shape(),
                v.shape(),
                self.cos.shape(),
                self.segments
            );
        }
        let (cos, sin) = (self.cos.contiguous()?, self.sin.contiguous()?);
        let op = CausalAttention { cos, sin, ..self };
        q.contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
    }

    fn tables(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.cos.flatten_all()?.to_vec1::<f32>()?,
            self.sin.flatten_all()?.to_vec1::<f32>()?,
        ))
    }

    /// Rows `[len, d]` of head `head` of the segment `(first, len)` in a `[rows, width·d]`
    /// matrix, rotated to their positions when `tables` is given.
    fn gather(
        &self,
        data: &[f32],
        width: usize,
        (first, len): (usize, usize),
        head: usize,
        tables: Option<(&[f32], &[f32])>,
    ) -> Vec<f32> {
        let d = self.head_dim;
        let mut out = vec![0f32; len * d];
        for (pos, row) in out.chunks_mut(d).enumerate() {
            let start = ((first + pos) * width + head) * d;
            row.copy_from_slice(&data[start..start + d]);
            if let Some((cos, sin)) = tables {
                rotate(row, &cos[pos * d / 2..], &sin[pos * d / 2..], 1.0);
            }
        }
        out
    }

    /// Adds `rows` `[len, d]` back as head `head` of the segment `(first, len)` into `out`,
    /// whose rows are `stride` wide and whose heads start at column `col0`, undoing the
    /// rotation when `tables` is given (the gradient of a rotation is its inverse).
    #[allow(clippy::too_many_arguments)]
    fn scatter(
        &self,
        rows: &mut [f32],
        out: &mut [f32],
        (stride, col0): (usize, usize),
        (first, _): (usize, usize),
        head: usize,
        tables: Option<(&[f32], &[f32])>,
    ) {
        let d = self.head_dim;
        for (pos, row) in rows.chunks_mut(d).enumerate() {
            if let Some((cos, sin)) = tables {
                rotate(row, &cos[pos * d / 2..], &sin[pos * d / 2..], -1.0);
            }
            let start = (first + pos) * stride + col0 + head * d;
            for (o, r) in out[start..start + d].iter_mut().zip(row.iter()) {
                *o += *r;
            }
        }
    }

    pub(crate) fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// The causal softmax of `scale · q kᵀ` for the query rows `i0..i1` of one head
    /// (`q` and `k` `[t, d]`): `[i1 − i0, i1]` row-major in `p`, zero above the diagonal.
    /// Later keys are masked for every row of the block, so they are never computed.
    fn probabilities(&self, q: &[f32], k: &[f32], (i0, i1): (usize, usize), p: &mut [f32]) {
        let d = self.head_dim;
        let p = &mut p[..(i1 - i0) * i1];
        // p = scale · q kᵀ: kᵀ is k read with its strides swapped.
        let q = &q[i0 * d..i1 * d];
        gemm(
            p,
            (i1 - i0, i1, d),
            q,
            (d, 1),
            k,
            (1, d),
            self.scale(),
            false,
        );
        for (r, row) in p.chunks_mut(i1).enumerate() {
            let (seen, masked) = row.split_at_mut(i0 + r + 1);
            let max = row_max(seen);
            let sum = exp_shifted(seen, max);
            let inv = 1.0 / sum;
            seen.iter_mut().for_each(|x| *x *= inv);
            masked.fill(0.0);
        }
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// Query rows per block: each block's scores stop at its last row's key, so the products
/// skip most of the masked upper triangle (at 512 tokens they compute 56% of it), and a
/// block's `[64, t]` scores stay in the core's cache between the products that use them.
const BLOCK_ROWS: usize = 64;

/// The query-row blocks `(i0, i1)` of a `t`-token sequence.
fn row_blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(BLOCK_ROWS)
        .map(move |i0| (i0, (i0 + BLOCK_ROWS).min(t)))
}

/// Hugging Face's two-halves rotation of one `[d]` row; `sign` −1 rotates back.
fn rotate(row: &mut [f32], cos: &[f32], sin: &[f32], sign: f32) {
    let half = row.len() / 2;
    let (x1, x2) = row.split_at_mut(half);
    for i in 0..half {
        let (a, b, s) = (x1[i], x2[i], sign * sin[i]);
        x1[i] = a * cos[i] - b * s;
        x2[i] = b * cos[i] + a * s;
    }
}

/// `dst [m, n] (+)= beta · lhs [m, k] · rhs [k, n]`, each operand given by its (row,
/// column) strides; `dst` is row-major. Single-threaded: callers run one per task.
#[allow(clippy::too_many_arguments)]
fn gemm(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
    accumulate: bool,
) {
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(m > 0 && n > 0 && k > 0 && dst.len() >= m * n);
    assert!(lhs.len() > last(lhs_rs, lhs_cs, m, k) && rhs.len() > last(rhs_rs, rhs_cs, k, n));
    // Safety: the asserts keep every index the strides reach inside the slices, and
    // `dst` is a distinct mutable slice.
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
            gemm::Parallelism::None,
        )
    }
}

/// A contiguous CPU input's values in f32: f32 as it is, bf16 and f16 widened (the op
/// computes in f32 whatever it is given, as the CUDA kernels do).
fn f32_values<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<Cow<'a, [f32]>> {
    const WHAT: &str = "causal-attention";
    Ok(match storage {
        CpuStorage::F32(v) => Cow::Borrowed(contiguous(v, layout, WHAT)?),
        CpuStorage::BF16(v) => contiguous(v, layout, WHAT)?
            .iter()
            .map(|x| x.to_f32())
            .collect(),
        CpuStorage::F16(v) => contiguous(v, layout, WHAT)?
            .iter()
            .map(|x| x.to_f32())
            .collect(),
        other => candle_core::bail!("causal-attention: unsupported dtype {:?}", other.dtype()),
    })
}

/// `values` as a CPU storage of `dtype` (one of the dtypes `f32_values` reads).
fn storage_of(values: Vec<f32>, dtype: DType) -> CpuStorage {
    match dtype {
        DType::BF16 => CpuStorage::BF16(values.into_iter().map(bf16::from_f32).collect()),
        DType::F16 => CpuStorage::F16(values.into_iter().map(f16::from_f32).collect()),
        _ => CpuStorage::F32(values),
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
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
        let (q, k, v) = (
            f32_values(s1, l1)?,
            f32_values(s2, l2)?,
            f32_values(s3, l3)?,
        );
        let (q, k, v) = (q.as_ref(), k.as_ref(), v.as_ref());
        let (cos, sin) = self.tables()?;
        let tables = Some((cos.as_slice(), sin.as_slice()));
        let d = self.head_dim;
        let heads: Vec<Vec<f32>> = (0..self.segments.len() * self.heads)
            .into_par_iter()
            .map(|task| {
                let (seg, head) = (self.segments[task / self.heads], task % self.heads);
                let (kv, t) = (head / self.group(), seg.1);
                let qh = self.gather(q, self.heads, seg, head, tables);
                let kh = self.gather(k, self.kv_heads, seg, kv, tables);
                let vh = self.gather(v, self.kv_heads, seg, kv, None);
                let mut out = vec![0f32; t * d];
                let mut p = vec![0f32; BLOCK_ROWS.min(t) * t];
                for (i0, i1) in row_blocks(t) {
                    self.probabilities(&qh, &kh, (i0, i1), &mut p);
                    let rows = &mut out[i0 * d..i1 * d];
                    gemm(rows, (i1 - i0, d, i1), &p, (i1, 1), &vh, (d, 1), 1.0, false);
                }
                out
            })
            .collect();
        let mut out = vec![0f32; l1.shape().elem_count()];
        for (task, mut rows) in heads.into_iter().enumerate() {
            let (seg, head) = (self.segments[task / self.heads], task % self.heads);
            let stride = self.heads * d;
            self.scatter(&mut rows, &mut out, (stride, 0), seg, head, None);
        }
        Ok((storage_of(out, s1.dtype()), l1.shape().clone()))
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
        super::causal_attention_cuda::forward(self, (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = AttentionGrad {
            attention: self.clone(),
            grad: grad.contiguous()?,
        };
        let all = q.apply_op3_no_bwd(k, v, &op)?;
        let (q_width, kv_width) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        // An input outside the graph (an untargeted projection of the first layer's
        // input) gets no gradient in the store.
        let part = |t: &Tensor, start, width| {
            t.track_op()
                .then(|| all.narrow(1, start, width))
                .transpose()
        };
        Ok((
            part(q, 0, q_width)?,
            part(k, q_width, kv_width)?,
            part(v, q_width + kv_width, kv_width)?,
        ))
    }
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "causal-attention-grad"
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
        let a = &self.attention;
        let (qd, kd, vd) = (
            f32_values(s1, l1)?,
            f32_values(s2, l2)?,
            f32_values(s3, l3)?,
        );
        let (qd, kd, vd) = (qd.as_ref(), kd.as_ref(), vd.as_ref());
        let gd = self
            .grad
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (cos, sin) = a.tables()?;
        let tables = Some((cos.as_slice(), sin.as_slice()));
        let d = a.head_dim;
        let scale = a.scale();
        // Per (sequence, query head): the gradients of its rotated q, k and v rows.
        let parts: Vec<[Vec<f32>; 3]> = (0..a.segments.len() * a.heads)
            .into_par_iter()
            .map(|task| {
                let (seg, head) = (a.segments[task / a.heads], task % a.heads);
                let (kv, t) = (head / a.group(), seg.1);
                let qh = a.gather(qd, a.heads, seg, head, tables);
                let kh = a.gather(kd, a.kv_heads, seg, kv, tables);
                let vh = a.gather(vd, a.kv_heads, seg, kv, None);
                let gh = a.gather(&gd, a.heads, seg, head, None);
                let (mut dq, mut dk, mut dv) =
                    (vec![0f32; t * d], vec![0f32; t * d], vec![0f32; t * d]);
                let mut p = vec![0f32; BLOCK_ROWS.min(t) * t];
                let mut ds = vec![0f32; BLOCK_ROWS.min(t) * t];
                // Block by block of query rows i0..i1, over the keys 0..i1 they see; p and
                // ds are [m, i1] row-major.
                for (i0, i1) in row_blocks(t) {
                    let m = i1 - i0;
                    let (q_b, g_b) = (&qh[i0 * d..i1 * d], &gh[i0 * d..i1 * d]);
                    a.probabilities(&qh, &kh, (i0, i1), &mut p);
                    // dv += pᵀ g; dp = g vᵀ.
                    let keys = &mut dv[..i1 * d];
                    gemm(keys, (i1, d, m), &p, (1, i1), g_b, (d, 1), 1.0, true);
                    gemm(&mut ds, (m, i1, d), g_b, (d, 1), &vh, (1, d), 1.0, false);
                    // ds = scale · p ∘ (dp − Σ dp∘p) on the visible keys; zero elsewhere.
                    for (r, (ds, p)) in ds.chunks_mut(i1).zip(p.chunks(i1)).take(m).enumerate() {
                        let (seen, masked) = ds.split_at_mut(i0 + r + 1);
                        let dot = dot(seen, &p[..seen.len()]);
                        for (g, p) in seen.iter_mut().zip(p) {
                            *g = scale * p * (*g - dot);
                        }
                        masked.fill(0.0);
                    }
                    // dq = ds k; dk += dsᵀ q.
                    let rows = &mut dq[i0 * d..i1 * d];
                    gemm(rows, (m, d, i1), &ds, (i1, 1), &kh, (d, 1), 1.0, false);
                    let keys = &mut dk[..i1 * d];
                    gemm(keys, (i1, d, m), &ds, (1, i1), q_b, (d, 1), 1.0, true);
                }
                [dq, dk, dv]
            })
            .collect();
        let rows = l1.shape().dims2()?.0;
        let (q_width, kv_width) = (a.heads * d, a.kv_heads * d);
        let stride = q_width + 2 * kv_width;
        let mut out = vec![0f32; rows * stride];
        for (task, [mut q_rows, mut k_rows, mut v_rows]) in parts.into_iter().enumerate() {
            let (seg, head) = (a.segments[task / a.heads], task % a.heads);
            let kv = head / a.group();
            a.scatter(&mut q_rows, &mut out, (stride, 0), seg, head, tables);
            // Query heads sharing a KV head add up their gradients.
            a.scatter(&mut k_rows, &mut out, (stride, q_width), seg, kv, tables);
            let v_cols = (stride, q_width + kv_width);
            a.scatter(&mut v_rows, &mut out, v_cols, seg, kv, None);
        }
        Ok((storage_of(out, s1.dtype()), Shape::from((rows, stride))))
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
        let a = &self.attention;
        super::causal_attention_cuda::backward(a, (s1, l1), (s2, l2), (s3, l3), &self.grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Output and q/k/v gradients (as f32) of the op over inputs of `dtype`, for the
    /// output gradient `upstream`.
    fn run(op: &CausalAttention, inputs: &[Tensor; 4], dtype: DType) -> Vec<Vec<f32>> {
        let vars: Vec<Var> = inputs[..3]
            .iter()
            .map(|x| Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap())
            .collect();
        let out = op
            .clone()
            .apply(
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                vars[2].as_tensor(),
            )
            .unwrap();
        assert_eq!(out.dtype(), dtype);
        let upstream = inputs[3].to_dtype(dtype).unwrap();
        let grads = (&out * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let values = |t: &Tensor| -> Vec<f32> {
            t.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let mut all = vec![values(&out)];
        for v in &vars {
            let g = grads.get(v.as_tensor()).unwrap();
            assert_eq!(g.dtype(), dtype, "gradients come back in the inputs' dtype");
            all.push(values(g));
        }
        all
    }

    /// In bf16 and f16 the op computes in f32: its results are the f32 op's on the
    /// rounded inputs, rounded once, bit for bit.
    #[test]
    fn sixteen_bit_inputs_are_computed_in_f32() {
        let dev = Device::Cpu;
        let (rows, heads, kv_heads, d) = (12, 4, 2, 8);
        // Deterministic values in [−1, 1] with no pattern the op could exploit.
        let random = |n: usize, seed: u64| {
            let v: Vec<f32> = (0..n)
                .map(|i| ((i as f32 * 12.9898 + seed as f32 * 78.233).sin() * 43758.545).fract())
                .collect();
            Tensor::from_vec(v, n, &dev).unwrap()
        };
        let table = |shift: f32| {
            let v: Vec<f32> = (0..rows * d / 2)
                .map(|i| (i as f32 * 0.37 + shift).cos())
                .collect();
            Tensor::from_vec(v, (rows, d / 2), &dev).unwrap()
        };
        let op = CausalAttention {
            segments: vec![(0, 5), (6, 6)],
            heads,
            kv_heads,
            head_dim: d,
            cos: table(0.0),
            sin: table(1.3),
        };
        let shaped = |t: Tensor, w: usize| t.reshape((rows, w * d)).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let inputs = [
                shaped(random(rows * heads * d, 1), heads),
                shaped(random(rows * kv_heads * d, 2), kv_heads),
                shaped(random(rows * kv_heads * d, 3), kv_heads),
                shaped(random(rows * heads * d, 4), heads),
            ];
            let rounded: Vec<Tensor> = inputs
                .iter()
                .map(|x| x.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap())
                .collect();
            let rounded: [Tensor; 4] = rounded.try_into().unwrap();
            let wide = run(&op, &rounded, DType::F32);
            let narrow = run(&op, &inputs, dtype);
            for (name, (w, n)) in ["out", "dq", "dk", "dv"]
                .iter()
                .zip(wide.iter().zip(&narrow))
            {
                let w = Tensor::new(w.as_slice(), &dev).unwrap();
                let w: Vec<f32> = w
                    .to_dtype(dtype)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(&w, n, "{dtype:?} {name}");
            }
        }
    }
}
