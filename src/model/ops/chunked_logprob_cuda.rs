//! The CUDA side of `chunked_logprob` (built with `--features cuda`): per vocabulary
//! chunk, cuBLAS computes the chunk's logits in f32 (GemmEx: bf16/f16/f32 inputs, f32
//! output and accumulation), and the kernels of `kernels/chunked_logprob.cu` fold them
//! into per-row statistics (forward) or turn them into the chunk's gradient, which a
//! second GemmEx adds into an f32 gradient of the hidden states (backward; for bf16/f16
//! heads as two products, the rounded gradient and its remainder). Only one chunk of
//! logits exists at a time; `logits_chunk_rows` sizes it.

use super::chunked_logprob::logits_chunk_rows;
use super::op_storage::{cuda_contiguous, kernel_u32};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::{result as cublas, sys as cublas_sys};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/chunked_logprob.ptx"));
const MODULE: &str = "autoif_chunked_logprob";
/// The op, as errors name it.
const WHAT: &str = "chunked-logprob";
/// Threads per block of the row kernels; must match BLOCK in the .cu file.
const BLOCK: u32 = 256;

/// What the products need to know about an input dtype.
trait HeadType: CudaDType + DeviceRepr + ValidAsZeroBits {
    const CUBLAS: cublas_sys::cudaDataType;
    const GRAD_KERNEL: &'static str;
    /// The chunk gradient goes through the product as a rounded part and a remainder
    /// (16-bit types; see the kernel).
    const SPLIT: bool;
}

impl HeadType for f32 {
    const CUBLAS: cublas_sys::cudaDataType = cublas_sys::cudaDataType::CUDA_R_32F;
    const GRAD_KERNEL: &'static str = "chunked_logprob_grad_f32";
    const SPLIT: bool = false;
}

impl HeadType for bf16 {
    const CUBLAS: cublas_sys::cudaDataType = cublas_sys::cudaDataType::CUDA_R_16BF;
    const GRAD_KERNEL: &'static str = "chunked_logprob_grad_bf16";
    const SPLIT: bool = true;
}

impl HeadType for f16 {
    const CUBLAS: cublas_sys::cudaDataType = cublas_sys::cudaDataType::CUDA_R_16F;
    const GRAD_KERNEL: &'static str = "chunked_logprob_grad_f16";
    const SPLIT: bool = true;
}

/// Row-major `out [rows, cols] (= / +=) a [rows, inner] · bᵀ` or `a · b`, every matrix
/// contiguous, in cuBLAS's column-major terms: `outᵀ = op(b)ᵀ-ish · aᵀ`. `b_transposed`
/// says whether `b` is stored `[cols, inner]` (true) or `[inner, cols]` (false).
#[allow(clippy::too_many_arguments)]
fn gemm_f32_out<A: HeadType>(
    dev: &CudaDevice,
    a: &CudaView<A>,
    b: &CudaView<A>,
    b_transposed: bool,
    out: &mut CudaSlice<f32>,
    rows: usize,
    cols: usize,
    inner: usize,
    accumulate: bool,
) -> Result<()> {
    let blas = dev.cublas_handle();
    let stream = dev.cuda_stream();
    let (alpha, beta) = (1f32, if accumulate { 1f32 } else { 0f32 });
    let (a_ptr, _a_guard) = a.device_ptr(&stream);
    let (b_ptr, _b_guard) = b.device_ptr(&stream);
    let (out_ptr, _out_guard) = out.device_ptr_mut(&stream);
    let (transb, ldb) = if b_transposed {
        (cublas_sys::cublasOperation_t::CUBLAS_OP_T, inner)
    } else {
        (cublas_sys::cublasOperation_t::CUBLAS_OP_N, cols)
    };
    // Column-major: outᵀ [cols, rows] = op(b) [cols, inner] · aᵀ [inner, rows].
    unsafe {
        cublas::gemm_ex(
            *blas.handle(),
            transb,
            cublas_sys::cublasOperation_t::CUBLAS_OP_N,
            kernel_u32(cols, WHAT)? as i32,
            kernel_u32(rows, WHAT)? as i32,
            kernel_u32(inner, WHAT)? as i32,
            &alpha as *const f32 as *const _,
            b_ptr as *const _,
            A::CUBLAS,
            kernel_u32(ldb, WHAT)? as i32,
            a_ptr as *const _,
            A::CUBLAS,
            kernel_u32(inner, WHAT)? as i32,
            &beta as *const f32 as *const _,
            out_ptr as *mut _,
            cublas_sys::cudaDataType::CUDA_R_32F,
            kernel_u32(cols, WHAT)? as i32,
            cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .w()
    }
}

fn row_launch(rows: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (kernel_u32(rows, WHAT)?, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn forward_typed<T: HeadType>(
    dev: &CudaDevice,
    hidden: &CudaStorage,
    l1: &Layout,
    head: &CudaStorage,
    l2: &Layout,
    targets: &CudaView<u32>,
) -> Result<CudaSlice<f32>> {
    let (rows, width) = l1.shape().dims2()?;
    let (vocab, _) = l2.shape().dims2()?;
    let hidden = cuda_contiguous(hidden.as_cuda_slice::<T>()?, l1, WHAT)?;
    let head = cuda_contiguous(head.as_cuda_slice::<T>()?, l2, WHAT)?;
    let chunk = logits_chunk_rows(rows, vocab);
    let stream = dev.cuda_stream();
    let mut logits = stream.alloc_zeros::<f32>(rows * chunk).w()?;
    let state = stream.alloc_zeros::<f32>(rows * 3).w()?;
    let update = dev.get_or_load_custom_func("chunked_logprob_update", MODULE, PTX)?;
    for start in (0..vocab).step_by(chunk) {
        let len = chunk.min(vocab - start);
        let head_chunk = head.slice(start * width..(start + len) * width);
        gemm_f32_out(
            dev,
            &hidden,
            &head_chunk,
            true,
            &mut logits,
            rows,
            len,
            width,
            false,
        )?;
        let (len_u, start_u, first) = (
            kernel_u32(len, WHAT)?,
            kernel_u32(start, WHAT)?,
            u32::from(start == 0),
        );
        let mut launch = update.builder();
        launch.arg(&logits);
        launch.arg(targets);
        launch.arg(&state);
        launch.arg(&len_u);
        launch.arg(&start_u);
        launch.arg(&first);
        unsafe { launch.launch(row_launch(rows)?) }.w()?;
    }
    let out = stream.alloc_zeros::<f32>(rows * 2).w()?;
    let finish = dev.get_or_load_custom_func("chunked_logprob_finish", MODULE, PTX)?;
    let rows_u = kernel_u32(rows, WHAT)?;
    let mut launch = finish.builder();
    launch.arg(&state);
    launch.arg(&out);
    launch.arg(&rows_u);
    unsafe { launch.launch(LaunchConfig::for_num_elems(rows_u)) }.w()?;
    Ok(out)
}

/// `[rows, 2]` f32 (log-prob, log-sum-exp) of (hidden, lm_head, targets) on a CUDA device.
pub fn forward(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let (rows, _) = l1.shape().dims2()?;
    let targets = cuda_contiguous(s3.as_cuda_slice::<u32>()?, l3, WHAT)?;
    let out = match s1.dtype() {
        DType::F32 => forward_typed::<f32>(dev, s1, l1, s2, l2, &targets)?,
        DType::BF16 => forward_typed::<bf16>(dev, s1, l1, s2, l2, &targets)?,
        DType::F16 => forward_typed::<f16>(dev, s1, l1, s2, l2, &targets)?,
        other => candle_core::bail!("chunked-logprob: unsupported dtype {other:?}"),
    };
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((rows, 2)),
    ))
}

fn backward_typed<T: HeadType>(
    dev: &CudaDevice,
    hidden: &CudaStorage,
    l1: &Layout,
    head: &CudaStorage,
    l2: &Layout,
    targets: &CudaView<u32>,
    coefs: &CudaView<f32>,
) -> Result<CudaSlice<f32>> {
    let (rows, width) = l1.shape().dims2()?;
    let (vocab, _) = l2.shape().dims2()?;
    let hidden = cuda_contiguous(hidden.as_cuda_slice::<T>()?, l1, WHAT)?;
    let head = cuda_contiguous(head.as_cuda_slice::<T>()?, l2, WHAT)?;
    let chunk = logits_chunk_rows(rows, vocab);
    let stream = dev.cuda_stream();
    let mut logits = stream.alloc_zeros::<f32>(rows * chunk).w()?;
    let hi = stream.alloc_zeros::<T>(rows * chunk).w()?;
    let lo = if T::SPLIT {
        Some(stream.alloc_zeros::<T>(rows * chunk).w()?)
    } else {
        None
    };
    let mut grad = stream.alloc_zeros::<f32>(rows * width).w()?;
    let kernel = dev.get_or_load_custom_func(T::GRAD_KERNEL, MODULE, PTX)?;
    let rows_u = kernel_u32(rows, WHAT)?;
    for start in (0..vocab).step_by(chunk) {
        let len = chunk.min(vocab - start);
        let head_chunk = head.slice(start * width..(start + len) * width);
        gemm_f32_out(
            dev,
            &hidden,
            &head_chunk,
            true,
            &mut logits,
            rows,
            len,
            width,
            false,
        )?;
        let (len_u, start_u) = (kernel_u32(len, WHAT)?, kernel_u32(start, WHAT)?);
        let mut launch = kernel.builder();
        launch.arg(&logits);
        launch.arg(targets);
        launch.arg(coefs);
        launch.arg(&hi);
        if let Some(lo) = &lo {
            launch.arg(lo);
        }
        launch.arg(&rows_u);
        launch.arg(&len_u);
        launch.arg(&start_u);
        unsafe { launch.launch(LaunchConfig::for_num_elems(kernel_u32(rows * len, WHAT)?)) }.w()?;
        // grad [rows, width] += dlogits [rows, len] · head_chunk [len, width].
        for part in std::iter::once(&hi).chain(lo.as_ref()) {
            let d = part.slice(0..rows * len);
            gemm_f32_out(
                dev,
                &d,
                &head_chunk,
                false,
                &mut grad,
                rows,
                width,
                len,
                true,
            )?;
        }
    }
    Ok(grad)
}

/// d/d hidden of `g_lp·logp + g_lse·lse` (`coefs` `[rows, 3]` f32 = g_lp, g_lse, lse), in
/// the hidden states' dtype.
pub fn backward(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    coefs: &Tensor,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let targets = cuda_contiguous(s3.as_cuda_slice::<u32>()?, l3, WHAT)?;
    let coefs = coefs.to_dtype(DType::F32)?.contiguous()?;
    let (coef_storage, coef_layout) = coefs.storage_and_layout();
    let candle_core::Storage::Cuda(coef_storage) = &*coef_storage else {
        candle_core::bail!("chunked-logprob: gradient coefficients are not on the GPU");
    };
    let coefs = cuda_contiguous(coef_storage.as_cuda_slice::<f32>()?, coef_layout, WHAT)?;
    let grad = match s1.dtype() {
        DType::F32 => backward_typed::<f32>(dev, s1, l1, s2, l2, &targets, &coefs)?,
        DType::BF16 => backward_typed::<bf16>(dev, s1, l1, s2, l2, &targets, &coefs)?,
        DType::F16 => backward_typed::<f16>(dev, s1, l1, s2, l2, &targets, &coefs)?,
        other => candle_core::bail!("chunked-logprob: unsupported dtype {other:?}"),
    };
    let grad = CudaStorage::wrap_cuda_slice(grad, dev.clone());
    let shape = l1.shape().clone();
    let grad = grad.to_dtype(&Layout::contiguous(&shape), s1.dtype())?;
    Ok((grad, shape))
}
