//! The CUDA side of `int8_gpu_weight` (built with `--features cuda`): launches the kernels
//! of `kernels/int8_projection.cu`, one launch per product, the result allocated in the
//! activations' dtype. tests/kernel_host/int8_projection.cpp replays the same launches on
//! the host.

use super::op_storage::{cuda_contiguous, kernel_u32};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape};
use half::{bf16, f16};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/int8_projection.ptx"));
const MODULE: &str = "autoif_int8_projection";
/// The op, as errors name it.
const WHAT: &str = "int8-projection";
/// Rows and columns of the result per block, and threads per block: the kernel's
/// `Int8Tiles::M`, `N` and `THREADS`.
const TILE_ROWS: usize = 64;
const TILE_COLS: usize = 64;
const THREADS: u32 = 256;
/// Inputs per scale.
const QUANT_BLOCK: usize = 32;
/// The most blocks a grid may have along y (the result's rows).
const MAX_GRID_Y: usize = 65_535;

trait Element: CudaDType + DeviceRepr + ValidAsZeroBits {
    /// The kernels' name suffix.
    const NAME: &'static str;
}

impl Element for f32 {
    const NAME: &'static str = "f32";
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
}

impl Element for f16 {
    const NAME: &'static str = "f16";
}

/// Which product.
#[derive(Clone, Copy)]
enum Product {
    /// `y [rows, out] = x [rows, in] · Ŵᵀ`
    Forward,
    /// `dx [rows, in] = dy [rows, out] · Ŵ`
    InputGrad,
}

impl Product {
    fn kernel(self) -> &'static str {
        match self {
            Product::Forward => "int8_projection_forward",
            Product::InputGrad => "int8_projection_input_grad",
        }
    }
}

/// Launches `product` of the activations `a` `[rows, width]` with the weight's int8
/// `values` `[out, in]` and `scales` `[out, in / 32]`.
fn launch<T: Element>(
    product: Product,
    (a, a_layout): (&CudaStorage, &Layout),
    values: CudaView<u8>,
    scales: CudaView<f32>,
    (out, inp): (usize, usize),
) -> Result<CudaStorage> {
    let dev = a.device();
    let (rows, width) = a_layout.shape().dims2()?;
    let (expected, result_cols) = match product {
        Product::Forward => (inp, out),
        Product::InputGrad => (out, inp),
    };
    if width != expected || inp % QUANT_BLOCK != 0 {
        candle_core::bail!(
            "{WHAT}: activations [{rows}, {width}] for an int8 weight [{out}, {inp}]"
        );
    }
    if rows.div_ceil(TILE_ROWS) > MAX_GRID_Y {
        candle_core::bail!("{WHAT}: {rows} rows exceed one launch's grid");
    }
    let a = cuda_contiguous(a.as_cuda_slice::<T>()?, a_layout, WHAT)?;
    let stream = dev.cuda_stream();
    let result = stream.alloc_zeros::<T>(rows * result_cols).w()?;
    let name = format!("{}_{}", product.kernel(), T::NAME);
    let kernel = dev
        .get_or_load_custom_func(&name, MODULE, PTX)?
        .into_cuda_function();
    let (rows_u32, out_u32, in_u32) = (
        kernel_u32(rows, WHAT)?,
        kernel_u32(out, WHAT)?,
        kernel_u32(inp, WHAT)?,
    );
    let mut builder = stream.launch_builder(&kernel);
    builder.arg(&a);
    builder.arg(&values);
    builder.arg(&scales);
    builder.arg(&result);
    builder.arg(&rows_u32);
    builder.arg(&out_u32);
    builder.arg(&in_u32);
    let config = LaunchConfig {
        grid_dim: (
            kernel_u32(result_cols.div_ceil(TILE_COLS), WHAT)?,
            kernel_u32(rows.div_ceil(TILE_ROWS), WHAT)?,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        // The kernel's shared memory is static (16.25 KiB).
        shared_mem_bytes: 0,
    };
    unsafe { builder.launch(config) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(result, dev.clone()))
}

/// `product` in the activations' dtype.
fn run(
    product: Product,
    a: (&CudaStorage, &Layout),
    (values, values_layout): (&CudaStorage, &Layout),
    (scales, scales_layout): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (out, inp) = values_layout.shape().dims2()?;
    let values = cuda_contiguous(values.as_cuda_slice::<u8>()?, values_layout, WHAT)?;
    let scales = cuda_contiguous(scales.as_cuda_slice::<f32>()?, scales_layout, WHAT)?;
    let weight = (out, inp);
    let result = match a.0.dtype() {
        DType::F32 => launch::<f32>(product, a, values, scales, weight)?,
        DType::BF16 => launch::<bf16>(product, a, values, scales, weight)?,
        DType::F16 => launch::<f16>(product, a, values, scales, weight)?,
        other => candle_core::bail!("{WHAT}: unsupported dtype {other:?}"),
    };
    let rows = a.1.shape().dims2()?.0;
    let cols = match product {
        Product::Forward => out,
        Product::InputGrad => inp,
    };
    Ok((result, Shape::from((rows, cols))))
}

/// `y = x · Ŵᵀ` `[rows, out]` for `x` `[rows, in]`.
pub fn forward(
    x: (&CudaStorage, &Layout),
    values: (&CudaStorage, &Layout),
    scales: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    run(Product::Forward, x, values, scales)
}

/// `dx = dy · Ŵ` `[rows, in]` for `dy` `[rows, out]`.
pub fn input_grad(
    dy: (&CudaStorage, &Layout),
    values: (&CudaStorage, &Layout),
    scales: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    run(Product::InputGrad, dy, values, scales)
}
