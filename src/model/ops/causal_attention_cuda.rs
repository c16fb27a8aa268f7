//! The CUDA side of `causal_attention` (built with `--features cuda`): launches the
//! kernels of `kernels/causal_attention.cu` and `kernels/flash_attention.cu`. In bf16 and
//! f16, where the GPU the PTX is built for has wmma fragments of the type
//! (`Element::TILED_FROM`), the forward and the backward's gradient kernels are the
//! tensor-core ones, which read q, k and v as they are and rotate q and k themselves;
//! otherwise both directions first convert q, k and v to f32 in the rotated frame
//! (`attention_load`). The forward writes the attention output
//! in the inputs' dtype, the backward writes dq, dk and dv side by side in one
//! `[rows, (heads + 2·kv_heads)·d]` tensor (`AttentionGrad`'s output). Per layer this
//! keeps no `[heads, t, t]` scores, only `[rows, heads]`-sized statistics and f32
//! gradients of q, k, v while the op runs (dk and dv one part per query head, so that the
//! key-side kernels work per query head rather than per KV head), and on the f32 path
//! f32 copies of q, k and v.
//!
//! tests/kernel_host/causal_attention.cpp replays the same launches on the host.

use super::causal_attention::CausalAttention;
use super::op_storage::{cuda_contiguous, kernel_u32};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use half::{bf16, f16};
use std::sync::Arc;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/causal_attention.ptx"));
const MODULE: &str = "autoif_causal_attention";
const TILED_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_attention.ptx"));
const TILED_MODULE: &str = "autoif_flash_attention";
/// The compute capability build.rs compiled the PTX for (e.g. "90").
const COMPUTE_CAP: &str = env!("AUTOIF_CUDA_COMPUTE_CAP");
/// The op, as errors name it.
const WHAT: &str = "causal-attention";
/// Threads per block: every kernel is one thread per item of a flat index.
const BLOCK: u32 = 128;

trait Element: CudaDType + DeviceRepr + ValidAsZeroBits {
    /// The kernels' name suffix.
    const NAME: &'static str;
    /// The compute capability from which flash_attention.cu is built for this type
    /// (wmma's bf16 fragments need sm_80, f16 ones sm_70); None: not at all.
    const TILED_FROM: Option<u32>;
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    const TILED_FROM: Option<u32> = None;
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
    const TILED_FROM: Option<u32> = Some(80);
}

impl Element for f16 {
    const NAME: &'static str = "f16";
    const TILED_FROM: Option<u32> = Some(70);
}

/// Whether the forward pass in `T` runs on the tensor-core kernel in this build.
fn tiled<T: Element>() -> bool {
    let cap: u32 = COMPUTE_CAP.parse().unwrap_or(0);
    T::TILED_FROM.is_some_and(|from| cap >= from)
}

/// The kernels of kernels/flash_attention.cu.
#[derive(Clone, Copy)]
enum Tiled {
    Forward,
    BackwardRows,
    BackwardKeys,
}

impl Tiled {
    fn name(self) -> &'static str {
        match self {
            Tiled::Forward => "flash_attention_forward",
            Tiled::BackwardRows => "flash_attention_backward_rows",
            Tiled::BackwardKeys => "flash_attention_backward_keys",
        }
    }

    /// Warps per block for head size `d`, each owning 16 rows (query rows; key rows for
    /// BackwardKeys): the kernel's `ForwardShape`, `BackwardRowsShape` or
    /// `BackwardKeysShape`, sized to 48 KiB of shared memory.
    fn warps(self, d: usize) -> usize {
        match (self, d == 64) {
            (Tiled::Forward | Tiled::BackwardRows, true) => 4,
            (Tiled::Forward | Tiled::BackwardRows, false) | (Tiled::BackwardKeys, true) => 2,
            (Tiled::BackwardKeys, false) => 1,
        }
    }
}

/// Contiguous q, k and v for flash_attention.cu, which reads them in their dtype.
fn tiled_inputs<'a, T: Element>(
    (q, k, v): (&'a CudaStorage, &'a CudaStorage, &'a CudaStorage),
    (l1, l2, l3): (&Layout, &Layout, &Layout),
) -> Result<[CudaView<'a, T>; 3]> {
    Ok([
        cuda_contiguous(q.as_cuda_slice::<T>()?, l1, WHAT)?,
        cuda_contiguous(k.as_cuda_slice::<T>()?, l2, WHAT)?,
        cuda_contiguous(v.as_cuda_slice::<T>()?, l3, WHAT)?,
    ])
}

fn launch_over(items: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (kernel_u32(items.div_ceil(BLOCK as usize), WHAT)?, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// What every launch of one op application shares: the device, the shape, each row's
/// sequence (first row, length; length 0 outside every sequence) and the rope tables.
struct Launches<'a> {
    dev: &'a CudaDevice,
    stream: Arc<CudaStream>,
    op: &'a CausalAttention,
    rows: usize,
    /// rows, heads, kv_heads, head size, as the kernels take them.
    dims: [u32; 4],
    scale: f32,
    first: CudaSlice<u32>,
    len: CudaSlice<u32>,
    cos: CudaView<'a, f32>,
    sin: CudaView<'a, f32>,
}

impl Launches<'_> {
    fn kernel(&self, name: &str) -> Result<CudaFunction> {
        Ok(self
            .dev
            .get_or_load_custom_func(name, MODULE, PTX)?
            .into_cuda_function())
    }

    fn tiled_kernel<T: Element>(&self, kernel: Tiled) -> Result<CudaFunction> {
        let name = format!("{}_{}_{}", kernel.name(), T::NAME, self.op.head_dim);
        Ok(self
            .dev
            .get_or_load_custom_func(&name, TILED_MODULE, TILED_PTX)?
            .into_cuda_function())
    }

    /// Launches a flash_attention.cu kernel whose own arguments `launch` holds, adding the
    /// ones they all end with (sequences, rope tables, shape, scale); one block per
    /// `kernel.warps` × 16 rows and head.
    fn launch_tiled<'a>(&'a self, mut launch: LaunchArgs<'a>, kernel: Tiled) -> Result<()> {
        launch.arg(&self.first);
        launch.arg(&self.len);
        launch.arg(&self.cos);
        launch.arg(&self.sin);
        for dim in &self.dims[..3] {
            launch.arg(dim);
        }
        launch.arg(&self.scale);
        let warps = kernel.warps(self.op.head_dim);
        let config = LaunchConfig {
            grid_dim: (
                kernel_u32(self.rows.div_ceil(16 * warps), WHAT)?,
                self.dims[1],
                1,
            ),
            block_dim: (32 * warps as u32, 1, 1),
            // The kernels' shared memory is static (at most 48 KiB).
            shared_mem_bytes: 0,
        };
        unsafe { launch.launch(config) }.w()?;
        Ok(())
    }

    /// `[rows, heads, d]` f32 copy of `x`, rotated to each row's position if `rotate`.
    fn load<T: Element>(
        &self,
        x: &CudaView<T>,
        heads: usize,
        rotate: bool,
    ) -> Result<CudaSlice<f32>> {
        let [rows, _, _, d] = self.dims;
        let heads = kernel_u32(heads, WHAT)?;
        let out = self
            .stream
            .alloc_zeros::<f32>(self.rows * heads as usize * d as usize)
            .w()?;
        let kernel = self.kernel(&format!("attention_load_{}", T::NAME))?;
        let rotate = u32::from(rotate);
        let mut launch = self.stream.launch_builder(&kernel);
        launch.arg(x);
        launch.arg(&out);
        launch.arg(&self.first);
        launch.arg(&self.len);
        launch.arg(&self.cos);
        launch.arg(&self.sin);
        launch.arg(&rows);
        launch.arg(&heads);
        launch.arg(&d);
        launch.arg(&rotate);
        let items = self.rows * heads as usize * d as usize / 2;
        unsafe { launch.launch(launch_over(items)?) }.w()?;
        Ok(out)
    }

    /// f32 copies of q and k (rotated) and v.
    fn load_qkv<T: Element>(
        &self,
        (q, k, v): (&CudaStorage, &CudaStorage, &CudaStorage),
        (l1, l2, l3): (&Layout, &Layout, &Layout),
    ) -> Result<[CudaSlice<f32>; 3]> {
        let (h, kvh) = (self.op.heads, self.op.kv_heads);
        Ok([
            self.load(
                &cuda_contiguous(q.as_cuda_slice::<T>()?, l1, WHAT)?,
                h,
                true,
            )?,
            self.load(
                &cuda_contiguous(k.as_cuda_slice::<T>()?, l2, WHAT)?,
                kvh,
                true,
            )?,
            self.load(
                &cuda_contiguous(v.as_cuda_slice::<T>()?, l3, WHAT)?,
                kvh,
                false,
            )?,
        ])
    }

    /// Writes the f32 gradient `g` `[rows, heads·group, d]`, each head's `group` parts
    /// summed, into columns `col0..` of `out` `[rows, width]`, rotated back if `rotate`.
    fn store_grad<T: Element>(
        &self,
        g: &CudaSlice<f32>,
        out: &CudaSlice<T>,
        (heads, group): (usize, usize),
        (width, col0): (usize, usize),
        rotate: bool,
    ) -> Result<()> {
        let [rows, _, _, d] = self.dims;
        let (heads, group) = (kernel_u32(heads, WHAT)?, kernel_u32(group, WHAT)?);
        let (width, col0) = (kernel_u32(width, WHAT)?, kernel_u32(col0, WHAT)?);
        let kernel = self.kernel(&format!("attention_store_grad_{}", T::NAME))?;
        let rotate = u32::from(rotate);
        let mut launch = self.stream.launch_builder(&kernel);
        launch.arg(g);
        launch.arg(out);
        launch.arg(&self.first);
        launch.arg(&self.len);
        launch.arg(&self.cos);
        launch.arg(&self.sin);
        launch.arg(&rows);
        launch.arg(&heads);
        launch.arg(&group);
        launch.arg(&d);
        launch.arg(&width);
        launch.arg(&col0);
        launch.arg(&rotate);
        let items = self.rows * heads as usize * d as usize / 2;
        unsafe { launch.launch(launch_over(items)?) }.w()?;
        Ok(())
    }

    /// Launches `name` (for `T` and the head size) over `rows × heads × parts` threads
    /// with the backward kernels' arguments: the f32 q, k, v, the output gradient, the
    /// row statistics, then `outputs`, then the shape.
    fn backward_kernel<T: Element>(
        &self,
        (name, parts): (&str, usize),
        [q, k, v]: [&CudaSlice<f32>; 3],
        dout: &CudaView<T>,
        stats: &CudaSlice<f32>,
        outputs: &[&CudaSlice<f32>],
    ) -> Result<()> {
        let [rows, heads, kv_heads, d] = self.dims;
        let scale = self.scale;
        let kernel = self.kernel(&format!("{name}_{}_{d}", T::NAME))?;
        let mut launch = self.stream.launch_builder(&kernel);
        launch.arg(q);
        launch.arg(k);
        launch.arg(v);
        launch.arg(dout);
        launch.arg(stats);
        for output in outputs {
            launch.arg(*output);
        }
        launch.arg(&self.first);
        launch.arg(&self.len);
        launch.arg(&rows);
        launch.arg(&heads);
        launch.arg(&kv_heads);
        launch.arg(&scale);
        unsafe { launch.launch(launch_over(self.rows * self.op.heads * parts)?) }.w()?;
        Ok(())
    }
}

/// Runs `f` with the launch context of `op` over `rows` rows on `dev`.
fn with_launches<R>(
    dev: &CudaDevice,
    op: &CausalAttention,
    rows: usize,
    f: impl FnOnce(&Launches) -> Result<R>,
) -> Result<R> {
    let mut first = vec![0u32; rows];
    let mut len = vec![0u32; rows];
    for &(start, n) in &op.segments {
        first[start..start + n].fill(kernel_u32(start, WHAT)?);
        len[start..start + n].fill(kernel_u32(n, WHAT)?);
    }
    let stream = dev.cuda_stream();
    let (first, len) = (stream.clone_htod(&first).w()?, stream.clone_htod(&len).w()?);
    let (cos, cos_layout) = op.cos.storage_and_layout();
    let (sin, sin_layout) = op.sin.storage_and_layout();
    let (Storage::Cuda(cos), Storage::Cuda(sin)) = (&*cos, &*sin) else {
        candle_core::bail!("causal-attention: the rope tables are not on the GPU");
    };
    let launches = Launches {
        dev,
        stream: dev.cuda_stream(),
        op,
        rows,
        dims: [
            kernel_u32(rows, WHAT)?,
            kernel_u32(op.heads, WHAT)?,
            kernel_u32(op.kv_heads, WHAT)?,
            kernel_u32(op.head_dim, WHAT)?,
        ],
        scale: op.scale(),
        first,
        len,
        cos: cuda_contiguous(cos.as_cuda_slice::<f32>()?, cos_layout, WHAT)?,
        sin: cuda_contiguous(sin.as_cuda_slice::<f32>()?, sin_layout, WHAT)?,
    };
    f(&launches)
}

fn forward_typed<T: Element>(
    l: &Launches,
    (q, k, v): (&CudaStorage, &CudaStorage, &CudaStorage),
    (l1, l2, l3): (&Layout, &Layout, &Layout),
) -> Result<CudaSlice<T>> {
    if tiled::<T>() {
        return forward_tiled::<T>(l, (q, k, v), (l1, l2, l3));
    }
    let op = l.op;
    let [qf, kf, vf] = l.load_qkv::<T>((q, k, v), (l1, l2, l3))?;
    let out = l
        .stream
        .alloc_zeros::<T>(l.rows * op.heads * op.head_dim)
        .w()?;
    let [rows, heads, kv_heads, d] = l.dims;
    let scale = l.scale;
    let kernel = l.kernel(&format!("attention_forward_{}_{d}", T::NAME))?;
    let mut launch = l.stream.launch_builder(&kernel);
    launch.arg(&qf);
    launch.arg(&kf);
    launch.arg(&vf);
    launch.arg(&out);
    launch.arg(&l.first);
    launch.arg(&l.len);
    launch.arg(&rows);
    launch.arg(&heads);
    launch.arg(&kv_heads);
    launch.arg(&scale);
    unsafe { launch.launch(launch_over(l.rows * op.heads)?) }.w()?;
    Ok(out)
}

/// The forward pass on flash_attention.cu: q, k and v as they are, one launch.
fn forward_tiled<T: Element>(
    l: &Launches,
    storages: (&CudaStorage, &CudaStorage, &CudaStorage),
    layouts: (&Layout, &Layout, &Layout),
) -> Result<CudaSlice<T>> {
    let op = l.op;
    let [q, k, v] = tiled_inputs::<T>(storages, layouts)?;
    let out = l
        .stream
        .alloc_zeros::<T>(l.rows * op.heads * op.head_dim)
        .w()?;
    let kernel = l.tiled_kernel::<T>(Tiled::Forward)?;
    let mut launch = l.stream.launch_builder(&kernel);
    launch.arg(&q);
    launch.arg(&k);
    launch.arg(&v);
    launch.arg(&out);
    l.launch_tiled(launch, Tiled::Forward)?;
    Ok(out)
}

/// The backward pass's statistics, dq, and dk and dv per query head on flash_attention.cu
/// (the same buffers causal_attention.cu's backward kernels fill).
fn backward_tiled<T: Element>(
    l: &Launches,
    storages: (&CudaStorage, &CudaStorage, &CudaStorage),
    layouts: (&Layout, &Layout, &Layout),
    dout: &CudaView<T>,
    stats: &CudaSlice<f32>,
    [dq, dk, dv]: [&CudaSlice<f32>; 3],
) -> Result<()> {
    let [q, k, v] = tiled_inputs::<T>(storages, layouts)?;
    let kernel = l.tiled_kernel::<T>(Tiled::BackwardRows)?;
    let mut launch = l.stream.launch_builder(&kernel);
    launch.arg(&q);
    launch.arg(&k);
    launch.arg(&v);
    launch.arg(dout);
    launch.arg(stats);
    launch.arg(dq);
    l.launch_tiled(launch, Tiled::BackwardRows)?;
    let kernel = l.tiled_kernel::<T>(Tiled::BackwardKeys)?;
    let mut launch = l.stream.launch_builder(&kernel);
    launch.arg(&q);
    launch.arg(&k);
    launch.arg(&v);
    launch.arg(dout);
    launch.arg(stats);
    launch.arg(dk);
    launch.arg(dv);
    l.launch_tiled(launch, Tiled::BackwardKeys)
}

fn backward_typed<T: Element>(
    l: &Launches,
    (q, k, v): (&CudaStorage, &CudaStorage, &CudaStorage),
    (l1, l2, l3): (&Layout, &Layout, &Layout),
    dout: &CudaView<T>,
) -> Result<CudaSlice<T>> {
    let op = l.op;
    let (h, kvh, d) = (op.heads, op.kv_heads, op.head_dim);
    let stream = &l.stream;
    let stats = stream.alloc_zeros::<f32>(l.rows * h * 2).w()?;
    let dq = stream.alloc_zeros::<f32>(l.rows * h * d).w()?;
    // dk and dv per query head, summed over each KV head's group when stored.
    let dk = stream.alloc_zeros::<f32>(l.rows * h * d).w()?;
    let dv = stream.alloc_zeros::<f32>(l.rows * h * d).w()?;
    if tiled::<T>() {
        backward_tiled(l, (q, k, v), (l1, l2, l3), dout, &stats, [&dq, &dk, &dv])?;
    } else {
        let [qf, kf, vf] = l.load_qkv::<T>((q, k, v), (l1, l2, l3))?;
        let inputs = [&qf, &kf, &vf];
        let rows_kernel = ("attention_backward_rows", 1);
        l.backward_kernel(rows_kernel, inputs, dout, &stats, &[&dq])?;
        // A thread per 64 columns of dk and dv (KeyColumns in the kernel).
        let keys_kernel = ("attention_backward_keys", d / 64);
        l.backward_kernel(keys_kernel, inputs, dout, &stats, &[&dk, &dv])?;
    }

    let width = (h + 2 * kvh) * d;
    let out = stream.alloc_zeros::<T>(l.rows * width).w()?;
    let group = h / kvh;
    l.store_grad(&dq, &out, (h, 1), (width, 0), true)?;
    l.store_grad(&dk, &out, (kvh, group), (width, h * d), true)?;
    l.store_grad(&dv, &out, (kvh, group), (width, (h + kvh) * d), false)?;
    Ok(out)
}

/// The attention output `[rows, heads·d]` of `op` over (q, k, v) on a CUDA device.
pub fn forward(
    op: &CausalAttention,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let rows = l1.shape().dims2()?.0;
    let inputs = ((s1, s2, s3), (l1, l2, l3));
    let out = with_launches(dev, op, rows, |l| {
        Ok(match s1.dtype() {
            DType::F32 => CudaStorage::wrap_cuda_slice(
                forward_typed::<f32>(l, inputs.0, inputs.1)?,
                dev.clone(),
            ),
            DType::BF16 => CudaStorage::wrap_cuda_slice(
                forward_typed::<bf16>(l, inputs.0, inputs.1)?,
                dev.clone(),
            ),
            DType::F16 => CudaStorage::wrap_cuda_slice(
                forward_typed::<f16>(l, inputs.0, inputs.1)?,
                dev.clone(),
            ),
            other => candle_core::bail!("causal-attention: unsupported dtype {other:?}"),
        })
    })?;
    Ok((out, Shape::from((rows, op.heads * op.head_dim))))
}

/// dq, dk and dv side by side, `[rows, (heads + 2·kv_heads)·d]`, for the output gradient
/// `grad` of `op` over (q, k, v) on a CUDA device.
pub fn backward(
    op: &CausalAttention,
    (s1, l1): (&CudaStorage, &Layout),
    (s2, l2): (&CudaStorage, &Layout),
    (s3, l3): (&CudaStorage, &Layout),
    grad: &Tensor,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let rows = l1.shape().dims2()?.0;
    let (g, g_layout) = grad.storage_and_layout();
    let Storage::Cuda(g) = &*g else {
        candle_core::bail!("causal-attention: the output gradient is not on the GPU");
    };
    let inputs = ((s1, s2, s3), (l1, l2, l3));
    let out = with_launches(dev, op, rows, |l| {
        Ok(match s1.dtype() {
            DType::F32 => {
                let g = cuda_contiguous(g.as_cuda_slice::<f32>()?, g_layout, WHAT)?;
                CudaStorage::wrap_cuda_slice(
                    backward_typed(l, inputs.0, inputs.1, &g)?,
                    dev.clone(),
                )
            }
            DType::BF16 => {
                let g = cuda_contiguous(g.as_cuda_slice::<bf16>()?, g_layout, WHAT)?;
                CudaStorage::wrap_cuda_slice(
                    backward_typed(l, inputs.0, inputs.1, &g)?,
                    dev.clone(),
                )
            }
            DType::F16 => {
                let g = cuda_contiguous(g.as_cuda_slice::<f16>()?, g_layout, WHAT)?;
                CudaStorage::wrap_cuda_slice(
                    backward_typed(l, inputs.0, inputs.1, &g)?,
                    dev.clone(),
                )
            }
            other => candle_core::bail!("causal-attention: unsupported dtype {other:?}"),
        })
    })?;
    let width = (op.heads + 2 * op.kv_heads) * op.head_dim;
    Ok((out, Shape::from((rows, width))))
}
