//! The frozen base projection of training on an int8 base (`--base-dtype int8`, QLoRA's
//! recipe on this crate's Q8_0 blocks, `quant::Int8Weight`): `y = x · Ŵᵀ` forward and
//! `dx = dy · Ŵ` backward, both accumulated in f32, no weight gradient.
//!
//! `Ŵ` is read back as f32 one panel at a time (a few hundred KiB per task) and multiplied
//! by gemm, rather than quantizing the activations too as the inference kernel does. With
//! quantized activations the forward would be a step function of `x`, and `dy · Ŵ` only a
//! straight-through guess at its gradient; with the weight dequantized the forward is
//! exactly the linear map `x ↦ x · Ŵᵀ`, so `dy · Ŵ` and the LoRA adapters' gradients are
//! exact for the function trained. Training products have hundreds of rows, so reading
//! each weight once per product costs little next to the multiply-adds.

use super::op_storage::cpu_f32;
use super::out_ptr::OutPtr;
use super::quant::Int8Weight;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// `y [rows, out] = x [rows, in] · Ŵᵀ` (or `+=` with `accumulate`), row-major f32, in
/// parallel over panels of output columns.
pub(super) fn forward_into(
    y: &mut [f32],
    x: &[f32],
    w: &Int8Weight,
    rows: usize,
    accumulate: bool,
) {
    let (out, inp) = w.shape();
    assert!(x.len() == rows * inp && y.len() == rows * out);
    let panel = task_width(out, 16);
    let dst = OutPtr(y.as_mut_ptr());
    (0..out.div_ceil(panel)).into_par_iter().for_each(|p| {
        let cols = p * panel..((p + 1) * panel).min(out);
        let n = cols.len();
        let mut w_panel = vec![0f32; n * inp];
        w.dequantize(cols.clone(), 0..inp, &mut w_panel);
        // Safety: the task writes only columns `cols` of the [rows, out] output, which
        // outlives the parallel loop; the panel is `[n, inp]` row-major, read as the
        // `[inp, n]` right operand.
        unsafe {
            gemm_one_thread(
                dst.get().add(cols.start),
                out,
                (x, inp),
                (&w_panel, 1, inp),
                (rows, n, inp),
                accumulate,
            )
        }
    });
}

/// `dx [rows, in] = dy [rows, out] · Ŵ`, row-major f32, in parallel over chunks of input
/// columns (each task reads its columns of every weight row).
pub(super) fn input_grad_into(dx: &mut [f32], dy: &[f32], w: &Int8Weight, rows: usize) {
    let (out, inp) = w.shape();
    assert!(dy.len() == rows * out && dx.len() == rows * inp);
    let chunk = task_width(inp, 32);
    let dst = OutPtr(dx.as_mut_ptr());
    (0..inp.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let cols = c * chunk..((c + 1) * chunk).min(inp);
        let n = cols.len();
        let mut w_cols = vec![0f32; out * n];
        w.dequantize(0..out, cols.clone(), &mut w_cols);
        // Safety: the task writes only columns `cols` of the [rows, in] gradient, which
        // outlives the parallel loop; `w_cols` is the `[out, n]` right operand.
        unsafe {
            gemm_one_thread(
                dst.get().add(cols.start),
                inp,
                (dy, out),
                (&w_cols, n, 1),
                (rows, n, out),
                false,
            )
        }
    });
}

/// Columns per parallel task: about four tasks per thread, a multiple of `align` (the
/// int8 layout's group or block), at most 256 so a task's f32 panel stays small.
fn task_width(len: usize, align: usize) -> usize {
    let threads = candle_core::utils::get_num_threads().max(1);
    len.div_ceil(4 * threads)
        .next_multiple_of(align)
        .clamp(align, 256)
}

/// `dst [m, n] (+)= lhs [m, k] · rhs [k, n]` on the calling thread: `dst` and `lhs`
/// row-major with row strides `dst_rs` and `lhs.1`, `rhs` given with its (row, column)
/// strides.
///
/// # Safety
/// `dst` must point to an `m × n` matrix of row stride `dst_rs` that no one else touches
/// during the call; `lhs` and `rhs` must hold the matrices their strides describe.
unsafe fn gemm_one_thread(
    dst: *mut f32,
    dst_rs: usize,
    (lhs, lhs_rs): (&[f32], usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) {
    debug_assert!(m == 0 || lhs.len() >= (m - 1) * lhs_rs + k);
    debug_assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.as_ptr(),
        1,
        lhs_rs as isize,
        rhs.as_ptr(),
        rhs_cs as isize,
        rhs_rs as isize,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// `x · Ŵᵀ` for a CPU f32 `x` `[rows, in]`, with `dy · Ŵ` as its backward pass when `x`
/// is tracked.
pub fn project(x: &Tensor, weight: &Arc<Int8Weight>) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Projection {
        weight: weight.clone(),
    })
}

/// `dy · Ŵ` for a CPU f32 `dy` `[rows, out]`: the input gradient of `project`.
pub fn input_grad(dy: &Tensor, weight: &Arc<Int8Weight>) -> candle_core::Result<Tensor> {
    dy.contiguous()?.to_dtype(DType::F32)?.apply_op1(InputGrad {
        weight: weight.clone(),
    })
}

struct Projection {
    weight: Arc<Int8Weight>,
}

impl candle_core::CustomOp1 for Projection {
    fn name(&self) -> &'static str {
        "int8-projection"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inp) = layout.shape().dims2()?;
        let (out, w_in) = self.weight.shape();
        if inp != w_in {
            candle_core::bail!("int8 projection: input [{rows}, {inp}] for weight [{out}, {w_in}]");
        }
        let x = cpu_f32(x, layout, "int8 projection: the input")?;
        let mut y = vec![0f32; rows * out];
        forward_into(&mut y, x, &self.weight, rows, false);
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(input_grad(grad, &self.weight)?))
    }
}

struct InputGrad {
    weight: Arc<Int8Weight>,
}

impl candle_core::CustomOp1 for InputGrad {
    fn name(&self) -> &'static str {
        "int8-projection-input-grad"
    }

    fn cpu_fwd(
        &self,
        dy: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, out) = layout.shape().dims2()?;
        let (w_out, inp) = self.weight.shape();
        if out != w_out {
            candle_core::bail!(
                "int8 projection backward: gradient [{rows}, {out}] for weight [{w_out}, {inp}]"
            );
        }
        let dy = cpu_f32(dy, layout, "int8 projection backward: the gradient")?;
        let mut dx = vec![0f32; rows * inp];
        input_grad_into(&mut dx, dy, &self.weight, rows);
        Ok((CpuStorage::F32(dx), Shape::from((rows, inp))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::quant::BLOCK;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut impl Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// A weight with one outlier row, as real weights have: its blocks get coarse steps.
    fn weight(out: usize, inp: usize, rng: &mut impl Rng) -> Vec<f32> {
        let mut w = random(out * inp, rng);
        if out > 2 {
            w[inp..2 * inp].iter_mut().for_each(|v| *v *= 40.0);
        }
        w
    }

    /// The quantization step of every weight: its block's max |w| / 127. Each `Ŵ` is
    /// within half a step of `W`.
    fn steps(w: &[f32], inp: usize) -> Vec<f32> {
        let mut steps = vec![0f32; w.len()];
        for (row, out_row) in w.chunks(inp).zip(steps.chunks_mut(inp)) {
            for (block, out_block) in row.chunks(BLOCK).zip(out_row.chunks_mut(BLOCK)) {
                let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                out_block.fill(step);
            }
        }
        steps
    }

    /// Checks `got` against the f64 product with the original weight: each element within
    /// Σ |other operand| · step / 2 (quantization) plus f32 rounding of the sum. Returns the
    /// worst error / bound.
    fn check(got: f32, terms: impl Iterator<Item = (f32, f32, f32)>, at: &str) -> f32 {
        let (mut exact, mut bound, mut magnitude) = (0f64, 0f64, 0f64);
        for (v, w, step) in terms {
            exact += v as f64 * w as f64;
            bound += (v.abs() * step) as f64 / 2.0;
            magnitude += (v * w).abs() as f64 + (v.abs() * step) as f64;
        }
        let bound = bound + 1e-5 * magnitude + 1e-6;
        let err = (got as f64 - exact).abs();
        assert!(
            err <= bound,
            "{at}: {got} vs {exact}, error {err} > bound {bound}"
        );
        (err / bound) as f32
    }

    #[test]
    fn forward_and_input_gradient_match_f32_within_the_block_steps() {
        let mut worst = 0f32;
        for (seed, &(rows, out, inp)) in [(1, 1, 1), (3, 17, 31), (130, 47, 100), (200, 576, 192)]
            .iter()
            .enumerate()
        {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed as u64);
            let w = weight(out, inp, &mut rng);
            let step = steps(&w, inp);
            let packed = Int8Weight::pack(&w, out, inp);
            let x = random(rows * inp, &mut rng);
            let mut y = vec![0f32; rows * out];
            forward_into(&mut y, &x, &packed, rows, false);
            for r in 0..rows {
                for o in 0..out {
                    let terms =
                        (0..inp).map(|i| (x[r * inp + i], w[o * inp + i], step[o * inp + i]));
                    let at = format!("forward [{rows}, {out}, {inp}] ({r}, {o})");
                    worst = worst.max(check(y[r * out + o], terms, &at));
                }
            }
            let dy = random(rows * out, &mut rng);
            let mut dx = vec![0f32; rows * inp];
            input_grad_into(&mut dx, &dy, &packed, rows);
            for r in 0..rows {
                for i in 0..inp {
                    let terms =
                        (0..out).map(|o| (dy[r * out + o], w[o * inp + i], step[o * inp + i]));
                    let at = format!("backward [{rows}, {out}, {inp}] ({r}, {i})");
                    worst = worst.max(check(dx[r * inp + i], terms, &at));
                }
            }
            // Accumulating adds the same product again.
            let once = y.clone();
            forward_into(&mut y, &x, &packed, rows, true);
            for (twice, once) in y.iter().zip(&once) {
                assert!((twice - 2.0 * once).abs() <= 1e-5 * once.abs().max(1.0));
            }
        }
        // The bound is tight enough to catch a wrong kernel: real errors come close to it.
        assert!(worst > 0.05, "worst error / bound {worst}");
    }

    /// The forward is exactly linear in `x` with the dequantized weight, so its gradient is
    /// `dy · Ŵ` with no approximation: the op's backward equals candle's matmul backward
    /// through the dense `Ŵ`.
    #[test]
    fn backward_is_the_exact_gradient_of_the_forward() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (rows, out, inp) = (150, 40, 96);
        let packed = Arc::new(Int8Weight::pack(&weight(out, inp, &mut rng), out, inp));
        let mut w_hat = vec![0f32; out * inp];
        packed.dequantize(0..out, 0..inp, &mut w_hat);
        let w_hat = Tensor::from_vec(w_hat, (out, inp), &dev)?;
        let x = Var::from_tensor(&Tensor::from_vec(
            random(rows * inp, &mut rng),
            (rows, inp),
            &dev,
        )?)?;
        let probe = Tensor::from_vec(random(rows * out, &mut rng), (rows, out), &dev)?;
        let got_y = project(x.as_tensor(), &packed)?;
        let want_y = x.as_tensor().matmul(&w_hat.t()?)?;
        let got = (got_y.clone() * &probe)?.sum_all()?.backward()?;
        let want = (want_y.clone() * &probe)?.sum_all()?.backward()?;
        let max_diff = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert!(max_diff(&got_y, &want_y)? < 1e-4);
        let (gx, wx) = (got.get(&x).unwrap(), want.get(&x).unwrap());
        assert!(max_diff(gx, wx)? < 1e-4, "{}", max_diff(gx, wx)?);
        Ok(())
    }
}
