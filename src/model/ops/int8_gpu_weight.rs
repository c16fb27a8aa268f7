//! The int8 base's weight on a GPU (`--base-dtype int8` on CUDA) and the two products
//! training needs of it, `y = x · Ŵᵀ` and `dx = dy · Ŵ`, run by kernels/int8_projection.cu
//! (`int8_projection_cuda`) with f32 accumulation and the result in the input's dtype.
//!
//! The values are `quant::Int8Weight`'s (one f32 scale per block of 32 inputs, the Q8_0
//! recipe), laid out row by row as the kernel reads them rather than in the CPU kernels'
//! VNNI order: int8 `[out, in]` (a U8 tensor holding their bits) and f32 scales
//! `[out, in / 32]`, 1.125 bytes per weight. The kernel multiplies by the same f32
//! `Ŵ = q · scale` as the CPU twin `int8_projection`, so both compute the same linear map
//! and differ only in the order of their f32 sums (tests/int8_kernel_host.rs).

use super::quant::{Int8Weight, BLOCK};
use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, Device, Layout, Shape, Tensor};

/// An `[out, in]` weight's int8 values and block scales on one device.
#[derive(Debug, Clone)]
pub struct GpuInt8Weight {
    /// `[out, in]` U8: each byte the bits of an int8 value.
    values: Tensor,
    /// `[out, in / 32]` f32.
    scales: Tensor,
}

impl GpuInt8Weight {
    /// Quantizes `w` `[out, in]` (any float dtype, on any device) as the CPU's int8 base
    /// is quantized, on the host in f32, and stores the result on `w`'s device. Only one
    /// weight is on the host at a time, so the caller can quantize a model weight by
    /// weight.
    pub fn quantize(w: &Tensor) -> Result<Self> {
        let host = w.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let Some(packed) = Int8Weight::from_tensor(&host)? else {
            bail!("int8 quantization needs a CPU f32 copy of the weight");
        };
        Self::upload(&packed, w.device())
    }

    /// `packed`'s values and scales in the kernel's layout, on `device`. The kernel reads
    /// whole blocks of 32 inputs: `in` must be a multiple of 32 (every hidden and MLP size
    /// of the Llama and Qwen2 families is).
    pub fn upload(packed: &Int8Weight, device: &Device) -> Result<Self> {
        let (out, inp) = packed.shape();
        if inp % BLOCK != 0 {
            bail!(
                "an int8 base on the GPU needs projections whose input size is a multiple of {BLOCK}, not [{out}, {inp}]"
            );
        }
        let (values, scales) = packed.row_major();
        let bits: Vec<u8> = values.into_iter().map(|v| v as u8).collect();
        Ok(Self {
            values: Tensor::from_vec(bits, (out, inp), device)?,
            scales: Tensor::from_vec(scales, (out, inp / BLOCK), device)?,
        })
    }

    /// (out features, in features)
    pub fn shape(&self) -> (usize, usize) {
        let dims = self.values.dims();
        (dims[0], dims[1])
    }

    /// Bytes held on the device: 1 per weight and 4 per block of 32.
    pub fn bytes(&self) -> usize {
        self.values.elem_count() + 4 * self.scales.elem_count()
    }

    /// `Ŵ` as an f32 tensor on the weight's device, each value `q · scale` as the kernel
    /// forms it (a full-size copy through the host, for merging and export).
    pub fn to_tensor(&self) -> Result<Tensor> {
        let (out, inp) = self.shape();
        let bits = self.values.flatten_all()?.to_vec1::<u8>()?;
        let scales = self.scales.flatten_all()?.to_vec1::<f32>()?;
        let values: Vec<f32> = bits
            .iter()
            .enumerate()
            .map(|(n, &b)| b as i8 as f32 * scales[n / BLOCK])
            .collect();
        Ok(Tensor::from_vec(values, (out, inp), self.values.device())?)
    }

    /// `x · Ŵᵀ` for `x` `[rows, in]` (f32, bf16 or f16 on the weight's CUDA device), in
    /// `x`'s dtype, with `dy · Ŵ` as its backward pass when `x` is tracked.
    pub fn project(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?
            .apply_op3(&self.values, &self.scales, Projection(self.clone()))
    }

    /// `dy · Ŵ` for `dy` `[rows, out]` on the weight's CUDA device, in `dy`'s dtype: the
    /// input gradient of `project`.
    pub fn input_grad(&self, dy: &Tensor) -> candle_core::Result<Tensor> {
        dy.contiguous()?
            .apply_op3_no_bwd(&self.values, &self.scales, &InputGrad)
    }
}

/// Refuses an op on storage the kernels do not serve: they run on a CUDA device only.
fn not_on_the_cpu(what: &str) -> candle_core::Result<(CpuStorage, Shape)> {
    candle_core::bail!("{what}: the GPU int8 weight's kernels run on a CUDA device, not the CPU")
}

/// The graph node of `project`: the weight in the op for the backward pass.
struct Projection(GpuInt8Weight);

impl candle_core::CustomOp3 for Projection {
    fn name(&self) -> &'static str {
        "int8-gpu-projection"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        not_on_the_cpu(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        values: &candle_core::CudaStorage,
        values_layout: &Layout,
        scales: &candle_core::CudaStorage,
        scales_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::int8_projection_cuda::forward(
            (x, x_layout),
            (values, values_layout),
            (scales, scales_layout),
        )
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _values: &Tensor,
        _scales: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.0.input_grad(grad)?), None, None))
    }
}

/// `input_grad`'s op.
struct InputGrad;

impl candle_core::CustomOp3 for InputGrad {
    fn name(&self) -> &'static str {
        "int8-gpu-projection-input-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        not_on_the_cpu(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dy: &candle_core::CudaStorage,
        dy_layout: &Layout,
        values: &candle_core::CudaStorage,
        values_layout: &Layout,
        scales: &candle_core::CudaStorage,
        scales_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::int8_projection_cuda::input_grad(
            (dy, dy_layout),
            (values, values_layout),
            (scales, scales_layout),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// On any device the layout holds the CPU int8 base's weights bit for bit, and its
    /// products refuse the CPU with one line rather than computing something else.
    #[test]
    fn holds_the_cpu_weights_and_refuses_the_cpu() -> Result<()> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (out, inp) = (20, 64);
        let w: Vec<f32> = (0..out * inp)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        // A bf16 weight, as loaded on a GPU: quantized from its f32 values.
        let bf16 = Tensor::from_vec(w, (out, inp), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let gpu = GpuInt8Weight::quantize(&bf16)?;
        assert_eq!(gpu.shape(), (out, inp));
        assert_eq!(gpu.bytes(), out * inp + 4 * out * inp / 32);
        let w = bf16.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let packed = Int8Weight::pack(&w, out, inp);
        let mut want = vec![0f32; out * inp];
        packed.dequantize(0..out, 0..inp, &mut want);
        let got = gpu.to_tensor()?;
        assert_eq!(got.dtype(), DType::F32);
        let got = got.flatten_all()?.to_vec1::<f32>()?;
        assert!(got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));

        let err = gpu
            .project(&Tensor::zeros((2, inp), DType::F32, &Device::Cpu)?)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CUDA device"), "{err}");
        let odd = Int8Weight::pack(&w[..out * 40], out, 40);
        let err = GpuInt8Weight::upload(&odd, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("multiple of 32") && err.contains("[20, 40]"),
            "{err}"
        );
        Ok(())
    }
}
