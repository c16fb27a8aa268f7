//! Each custom kernel on `--device` against its CPU twin on the same random inputs, with
//! timings, one table per kernel. `scripts/gpu-check.sh` runs it on a GPU machine
//! (`scripts/build-cuda.sh` builds it with `--features cuda`); on a CPU build it compares
//! the twins with themselves, which still exercises the harness:
//!
//!     cargo run --release --features cuda --example kernel_check -- --device cuda

use anyhow::{bail, Result};
use autoif::model::ops::base_weight::BaseWeight;
use autoif::model::ops::causal_attention::CausalAttention;
use autoif::model::ops::chunked_logprob::chunked_target_logprobs;
use autoif::model::LoadOptions;
use candle_core::{DType, Device, Tensor, Var, D};
use clap::Parser;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Compare each custom kernel with its CPU twin on random inputs")]
struct Args {
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    device: String,
    /// Token rows.
    #[arg(long, default_value_t = 512)]
    rows: usize,
    /// Hidden size (Qwen2-1.5B's by default).
    #[arg(long, default_value_t = 1536)]
    hidden: usize,
    /// Vocabulary (Qwen2's by default).
    #[arg(long, default_value_t = 151936)]
    vocab: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Token rows of the peak-memory comparison, unfused against chunked, in bf16 (0: skip;
    /// measured from the CUDA memory pool, so GPU only).
    #[arg(long, default_value_t = 4096)]
    memory_rows: usize,
    /// Tokens per sequence of the attention check (two sequences).
    #[arg(long, default_value_t = 1024)]
    attention_seq: usize,
}

/// Relative errors above these fail the check (the bounds).
const F32_BOUND: f64 = 1e-5;
const BF16_BOUND: f64 = 1e-3;
/// The attention op in bf16 runs on the tensor-core kernels, which round q, k and the
/// probabilities to bf16: five roundings of half bf16's epsilon at most
/// (tests/attention_kernel_host.rs, `Dtype::tiled_bound`).
const ATTENTION_BF16_BOUND: f64 = 5.0 / 512.0;

struct Inputs {
    hidden: Tensor,
    head: Tensor,
    targets: Tensor,
    upstream: Tensor,
}

fn random_inputs(args: &Args, dtype: DType, device: &Device) -> Result<Inputs> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let mut uniform = |len: usize, scale: f32| -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-scale..scale)).collect()
    };
    let hidden = uniform(args.rows * args.hidden, 1.0);
    // Logits with a spread of a few units, as a trained head gives.
    let head = uniform(args.vocab * args.hidden, 4.0 / (args.hidden as f32).sqrt());
    let upstream = uniform(args.rows, 1.0);
    let targets: Vec<u32> = (0..args.rows)
        .map(|_| rng.random_range(0..args.vocab as u32))
        .collect();
    let on = |v: Vec<f32>, shape: (usize, usize)| -> Result<Tensor> {
        Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
    };
    Ok(Inputs {
        hidden: on(hidden, (args.rows, args.hidden))?,
        head: on(head, (args.vocab, args.hidden))?,
        targets: Tensor::from_vec(targets, args.rows, device)?,
        upstream: Tensor::from_vec(upstream, args.rows, device)?,
    })
}

/// Value, d(Σ upstream·value)/d hidden (in f32), and seconds for forward and backward.
fn run_chunked(inputs: &Inputs) -> Result<(Tensor, Tensor, f64, f64)> {
    let var = Var::from_tensor(&inputs.hidden)?;
    let started = Instant::now();
    let value = chunked_target_logprobs(var.as_tensor(), &inputs.head, &inputs.targets)?;
    let value_host = value.to_device(&Device::Cpu)?;
    let forward = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let grads = (&value * &inputs.upstream)?.sum_all()?.backward()?;
    let grad = grads
        .get(var.as_tensor())
        .expect("the gradient reaches the hidden states")
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?;
    let backward = started.elapsed().as_secs_f64();
    Ok((value_host, grad, forward, backward))
}

/// The unfused path as `logprobs::target_logprobs` runs it off the CPU: logits in the
/// inputs' dtype, cast to f32, log-softmax, gather; forward and backward, in seconds.
fn run_unfused(inputs: &Inputs) -> Result<f64> {
    let started = Instant::now();
    let var = Var::from_tensor(&inputs.hidden)?;
    let logits = var
        .as_tensor()
        .matmul(&inputs.head.t()?)?
        .to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let value = log_probs
        .gather(&inputs.targets.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let grads = (&value * &inputs.upstream)?.sum_all()?.backward()?;
    grads
        .get(var.as_tensor())
        .expect("the gradient reaches the hidden states")
        .to_device(&Device::Cpu)?;
    Ok(started.elapsed().as_secs_f64())
}

fn relative_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?;
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(diff / norm)
}

fn to_cpu(inputs: &Inputs) -> Result<Inputs> {
    Ok(Inputs {
        hidden: inputs.hidden.to_device(&Device::Cpu)?,
        head: inputs.head.to_device(&Device::Cpu)?,
        targets: inputs.targets.to_device(&Device::Cpu)?,
        upstream: inputs.upstream.to_device(&Device::Cpu)?,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = LoadOptions::for_device(&args.device)?.device;
    println!(
        "chunked-logprob on {:?}: {} rows × hidden {} × vocab {}",
        device, args.rows, args.hidden, args.vocab
    );
    println!(
        "{:<6} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10}  result",
        "dtype", "value err", "grad err", "fwd s", "bwd s", "twin fwd s", "unfused s"
    );
    let mut failed = false;
    for (dtype, bound) in [(DType::F32, F32_BOUND), (DType::BF16, BF16_BOUND)] {
        let inputs = random_inputs(&args, dtype, &device)?;
        if !device.is_cpu() {
            // The first call loads the PTX and sets up cuBLAS; time the second.
            run_chunked(&inputs)?;
        }
        let (value, grad, fwd, bwd) = run_chunked(&inputs)?;
        let cpu = to_cpu(&inputs)?;
        let (twin_value, twin_grad, twin_fwd, _) = run_chunked(&cpu)?;
        let unfused = run_unfused(&inputs)?;
        let value_err = relative_error(&value, &twin_value)?;
        let grad_err = relative_error(&grad, &twin_grad)?;
        let ok = value_err <= bound && grad_err <= bound;
        failed |= !ok;
        println!(
            "{:<6} {:>12.3e} {:>12.3e} {:>10.4} {:>10.4} {:>10.3} {:>10.4}  {}",
            format!("{dtype:?}").to_lowercase(),
            value_err,
            grad_err,
            fwd,
            bwd,
            twin_fwd,
            unfused,
            if ok { "ok" } else { "FAIL" }
        );
    }
    if args.memory_rows > 0 {
        compare_peak_memory(&args, &device)?;
    }
    failed |= !check_attention(&args, &device)?;
    failed |= !check_int8_projection(&args, &device)?;
    if failed {
        bail!("a kernel differs from its CPU twin beyond the bound (f32 {F32_BOUND:e}, bf16 {BF16_BOUND:e}, bf16 attention {ATTENTION_BF16_BOUND:e})");
    }
    Ok(())
}

/// Peak memory above the inputs of one forward + backward, unfused and chunked, in bf16.
fn compare_peak_memory(args: &Args, device: &Device) -> Result<()> {
    let sized = Args {
        rows: args.memory_rows,
        device: args.device.clone(),
        ..*args
    };
    let inputs = random_inputs(&sized, DType::BF16, device)?;
    let mut peaks = Vec::new();
    for path in ["unfused", "chunked"] {
        let Some(base) = pool_peak::reset(device) else {
            println!("peak memory: not measured (no CUDA memory pool on {device:?})");
            return Ok(());
        };
        if path == "unfused" {
            run_unfused(&inputs)?;
        } else {
            run_chunked(&inputs)?;
        }
        let peak = pool_peak::read(device).unwrap_or(0).saturating_sub(base);
        peaks.push(peak);
    }
    println!(
        "peak memory of forward + backward at {} tokens × vocab {} (bf16): unfused {} MiB, chunked {} MiB ({:.1}× smaller)",
        sized.rows,
        sized.vocab,
        peaks[0] >> 20,
        peaks[1] >> 20,
        peaks[0] as f64 / peaks[1].max(1) as f64
    );
    Ok(())
}

/// Attention shapes checked: (query heads, KV heads, head size) of Qwen2-0.5B and of
/// Qwen2-7B / Llama-3-8B (28/4 and 32/8 heads of 128).
const ATTENTION_SHAPES: [(usize, usize, usize); 2] = [(14, 2, 64), (28, 4, 128)];

/// Output and q, k, v gradients (f32, on the CPU) of `op` over random inputs, with the
/// forward and backward seconds.
struct AttentionRun {
    values: [Tensor; 4],
    forward: f64,
    backward: f64,
}

fn run_attention(op: &CausalAttention, inputs: &[Tensor; 4]) -> Result<AttentionRun> {
    let [q, k, v, upstream] = inputs;
    let vars = [
        Var::from_tensor(q)?,
        Var::from_tensor(k)?,
        Var::from_tensor(v)?,
    ];
    let started = Instant::now();
    let out = op.clone().apply(
        vars[0].as_tensor(),
        vars[1].as_tensor(),
        vars[2].as_tensor(),
    )?;
    out.device().synchronize()?;
    let forward = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let grads = (&out * upstream)?.sum_all()?.backward()?;
    out.device().synchronize()?;
    let backward = started.elapsed().as_secs_f64();
    let host = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F32);
    let grad = |v: &Var| -> Result<Tensor> {
        let g = grads
            .get(v.as_tensor())
            .expect("attention inputs get gradients");
        Ok(host(g)?)
    };
    Ok(AttentionRun {
        values: [
            host(&out)?,
            grad(&vars[0])?,
            grad(&vars[1])?,
            grad(&vars[2])?,
        ],
        forward,
        backward,
    })
}

/// The attention op on `device` against its CPU twin, two sequences of
/// `--attention-seq` tokens per shape; false when one differs beyond the bound.
fn check_attention(args: &Args, device: &Device) -> Result<bool> {
    let t = args.attention_seq;
    println!("\ncausal-attention on {device:?}: 2 sequences × {t} tokens");
    println!(
        "{:<6} {:>14} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}  result",
        "dtype",
        "heads/kv × d",
        "out err",
        "dq err",
        "dk err",
        "dv err",
        "fwd s",
        "bwd s",
        "fwd TF/s",
        "bwd TF/s",
        "twin s"
    );
    let mut ok_all = true;
    for (heads, kv_heads, d) in ATTENTION_SHAPES {
        for (dtype, bound) in [(DType::F32, F32_BOUND), (DType::BF16, ATTENTION_BF16_BOUND)] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
            let rows = 2 * t;
            let mut uniform = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-1f32..1f32)).collect()
            };
            let on = |v: Vec<f32>, width: usize, dev: &Device| -> Result<Tensor> {
                Ok(Tensor::from_vec(v, (rows, width * d), dev)?.to_dtype(dtype)?)
            };
            let host_inputs = [
                on(uniform(rows * heads * d), heads, &Device::Cpu)?,
                on(uniform(rows * kv_heads * d), kv_heads, &Device::Cpu)?,
                on(uniform(rows * kv_heads * d), kv_heads, &Device::Cpu)?,
                on(uniform(rows * heads * d), heads, &Device::Cpu)?,
            ];
            let angles: Vec<f32> = (0..t * d / 2)
                .map(|n| (n / (d / 2)) as f32 * 1e6f32.powf(-2.0 * (n % (d / 2)) as f32 / d as f32))
                .collect();
            let table = |f: fn(f32) -> f32, dev: &Device| -> Result<Tensor> {
                let v: Vec<f32> = angles.iter().map(|&a| f(a)).collect();
                Ok(Tensor::from_vec(v, (t, d / 2), dev)?)
            };
            let op_on = |dev: &Device| -> Result<CausalAttention> {
                Ok(CausalAttention {
                    segments: vec![(0, t), (t, t)],
                    heads,
                    kv_heads,
                    head_dim: d,
                    cos: table(f32::cos, dev)?,
                    sin: table(f32::sin, dev)?,
                })
            };
            let inputs = host_inputs
                .iter()
                .map(|x| x.to_device(device))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let inputs: [Tensor; 4] = inputs.try_into().expect("four inputs");
            if !CausalAttention::supports(&inputs[0], d) {
                println!(
                    "{:<6} {:>14} not supported here",
                    format!("{dtype:?}").to_lowercase(),
                    format!("{heads}/{kv_heads} × {d}")
                );
                continue;
            }
            let op = op_on(device)?;
            if !device.is_cpu() {
                // The first call loads the PTX; time the second.
                run_attention(&op, &inputs)?;
            }
            let run = run_attention(&op, &inputs)?;
            let twin_inputs = host_inputs
                .iter()
                .map(|x| x.to_dtype(DType::F32))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let twin_inputs: [Tensor; 4] = twin_inputs.try_into().expect("four inputs");
            let twin = run_attention(&op_on(&Device::Cpu)?, &twin_inputs)?;
            let mut errors = [0f64; 4];
            for (e, (got, want)) in errors.iter_mut().zip(run.values.iter().zip(&twin.values)) {
                // In bf16 the twin's result is rounded like the kernel's output.
                let want = want.to_dtype(dtype)?.to_dtype(DType::F32)?;
                *e = relative_error(got, &want)?;
            }
            let ok = errors.iter().all(|&e| e <= bound);
            ok_all &= ok;
            // Useful FLOPs, FlashAttention's convention: the causal half of QKᵀ and PV
            // forward (2 · d per pair each), two and a half times that backward.
            let pairs = (t * (t + 1) / 2) as f64;
            let forward_flops = 2.0 * heads as f64 * pairs * 4.0 * d as f64;
            let tflops = |flops: f64, s: f64| flops / s / 1e12;
            println!(
                "{:<6} {:>14} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e} {:>8.4} {:>8.4} {:>8.3} {:>8.3} {:>8.3}  {}",
                format!("{dtype:?}").to_lowercase(),
                format!("{heads}/{kv_heads} × {d}"),
                errors[0],
                errors[1],
                errors[2],
                errors[3],
                run.forward,
                run.backward,
                tflops(forward_flops, run.forward),
                tflops(2.5 * forward_flops, run.backward),
                twin.forward + twin.backward,
                if ok { "ok" } else { "FAIL" }
            );
        }
    }
    attention_peak_memory(args, device)?;
    Ok(ok_all)
}

/// The int8 base's projection shapes checked, `[out, in]`: Qwen2-0.5B's gate/up and down
/// projections.
const INT8_SHAPES: [(usize, usize); 2] = [(4864, 896), (896, 4864)];

/// Output and input gradient (f32, on the CPU) of an int8 base's projection, with the
/// forward and backward seconds.
struct ProjectionRun {
    values: [Tensor; 2],
    forward: f64,
    backward: f64,
}

fn run_int8_projection(base: &BaseWeight, x: &Tensor, upstream: &Tensor) -> Result<ProjectionRun> {
    let var = Var::from_tensor(x)?;
    let started = Instant::now();
    let y = base.project(var.as_tensor())?;
    y.device().synchronize()?;
    let forward = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let grads = (&y * upstream)?.sum_all()?.backward()?;
    y.device().synchronize()?;
    let backward = started.elapsed().as_secs_f64();
    let host = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F32);
    let dx = grads
        .get(var.as_tensor())
        .expect("the input gets a gradient");
    Ok(ProjectionRun {
        values: [host(&y)?, host(dx)?],
        forward,
        backward,
    })
}

/// The int8 base's projection on `device` (kernels/int8_projection.cu on a GPU) against
/// its CPU twin on the same int8 weights, `--rows` rows per shape; false when one differs
/// beyond the bound. On the CPU only f32 runs (the CPU int8 base takes f32).
fn check_int8_projection(args: &Args, device: &Device) -> Result<bool> {
    println!(
        "
int8-projection on {device:?}: {} rows",
        args.rows
    );
    println!(
        "{:<6} {:>12} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}  result",
        "dtype", "out × in", "y err", "dx err", "fwd s", "bwd s", "fwd TF/s", "bwd TF/s", "twin s"
    );
    let mut ok_all = true;
    for (out, inp) in INT8_SHAPES {
        for (dtype, bound) in [(DType::F32, F32_BOUND), (DType::BF16, BF16_BOUND)] {
            if device.is_cpu() && dtype != DType::F32 {
                continue;
            }
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
            let mut uniform = |len: usize, scale: f32| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-scale..scale)).collect()
            };
            let host = |v: Vec<f32>, shape: (usize, usize)| -> Result<Tensor> {
                Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?)
            };
            let w = host(uniform(out * inp, 1.0 / (inp as f32).sqrt()), (out, inp))?;
            let x = host(uniform(args.rows * inp, 1.0), (args.rows, inp))?;
            let upstream = host(uniform(args.rows * out, 1.0), (args.rows, out))?;
            // The same int8 values on both sides: quantized once, from the f32 weight.
            let twin_base = BaseWeight::Dense(w.to_dtype(DType::F32)?).quantized()?;
            let base = BaseWeight::Dense(w.to_device(device)?).quantized()?;
            let (x_dev, upstream_dev) = (x.to_device(device)?, upstream.to_device(device)?);
            if !device.is_cpu() {
                // The first call loads the PTX; time the second.
                run_int8_projection(&base, &x_dev, &upstream_dev)?;
            }
            let run = run_int8_projection(&base, &x_dev, &upstream_dev)?;
            let twin = run_int8_projection(
                &twin_base,
                &x.to_dtype(DType::F32)?,
                &upstream.to_dtype(DType::F32)?,
            )?;
            let mut errors = [0f64; 2];
            for (e, (got, want)) in errors.iter_mut().zip(run.values.iter().zip(&twin.values)) {
                // In bf16 the twin's result is rounded like the kernel's output.
                let want = want.to_dtype(dtype)?.to_dtype(DType::F32)?;
                *e = relative_error(got, &want)?;
            }
            let ok = errors.iter().all(|&e| e <= bound);
            ok_all &= ok;
            let flops = 2.0 * (args.rows * out * inp) as f64;
            println!(
                "{:<6} {:>12} {:>10.2e} {:>10.2e} {:>8.4} {:>8.4} {:>8.3} {:>8.3} {:>8.3}  {}",
                format!("{dtype:?}").to_lowercase(),
                format!("{out} × {inp}"),
                errors[0],
                errors[1],
                run.forward,
                run.backward,
                flops / run.forward / 1e12,
                flops / run.backward / 1e12,
                twin.forward + twin.backward,
                if ok { "ok" } else { "FAIL" }
            );
        }
    }
    Ok(ok_all)
}

/// Peak memory above the inputs of one attention forward + backward over one sequence of
/// `--memory-rows` tokens in bf16 at Qwen2-7B's heads (GPU only), next to the `[heads,
/// t, t]` scores the candle composition would keep (six bf16/f32 copies: 24 bytes each).
fn attention_peak_memory(args: &Args, device: &Device) -> Result<()> {
    let (heads, kv_heads, d) = ATTENTION_SHAPES[1];
    let t = args.memory_rows;
    if t == 0 || device.is_cpu() {
        return Ok(());
    }
    let zeros = |width: usize| Tensor::zeros((t, width * d), DType::BF16, device);
    let inputs = [
        zeros(heads)?,
        zeros(kv_heads)?,
        zeros(kv_heads)?,
        zeros(heads)?,
    ];
    let table = Tensor::zeros((t, d / 2), DType::F32, device)?;
    let op = CausalAttention {
        segments: vec![(0, t)],
        heads,
        kv_heads,
        head_dim: d,
        cos: table.clone(),
        sin: table,
    };
    let Some(base) = pool_peak::reset(device) else {
        println!("attention peak memory: not measured (no CUDA memory pool on {device:?})");
        return Ok(());
    };
    run_attention(&op, &inputs)?;
    let peak = pool_peak::read(device).unwrap_or(0).saturating_sub(base);
    let composed = (heads * t * t * 24) as u64;
    println!(
        "attention peak memory, one layer forward + backward, {t} tokens, {heads}/{kv_heads} heads × {d} (bf16): fused {} MiB; the composition keeps {} MiB of scores",
        peak >> 20,
        composed >> 20
    );
    Ok(())
}

/// The high-water mark of the device's default memory pool, which candle's allocations
/// come from (cudarc allocates stream-ordered when the device supports pools).
#[cfg(feature = "cuda")]
mod pool_peak {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::Device;

    fn default_pool(device: &Device) -> Option<sys::CUmemoryPool> {
        let Device::Cuda(dev) = device else {
            return None;
        };
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        if !ctx.has_async_alloc() {
            return None;
        }
        ctx.bind_to_thread().ok()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
            .result()
            .ok()?;
        Some(pool)
    }

    fn attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Option<u64> {
        let mut value: u64 = 0;
        unsafe { sys::cuMemPoolGetAttribute(pool, attr, &mut value as *mut u64 as *mut _) }
            .result()
            .ok()?;
        Some(value)
    }

    /// Restarts the high-water mark; returns the bytes in use now.
    pub fn reset(device: &Device) -> Option<u64> {
        device.synchronize().ok()?;
        let pool = default_pool(device)?;
        let mut zero: u64 = 0;
        unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut zero as *mut u64 as *mut _,
            )
        }
        .result()
        .ok()?;
        attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
        )
    }

    /// The most bytes in use since `reset`.
    pub fn read(device: &Device) -> Option<u64> {
        device.synchronize().ok()?;
        attribute(
            default_pool(device)?,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        )
    }
}

#[cfg(not(feature = "cuda"))]
mod pool_peak {
    use candle_core::Device;

    pub fn reset(_: &Device) -> Option<u64> {
        None
    }

    pub fn read(_: &Device) -> Option<u64> {
        None
    }
}
