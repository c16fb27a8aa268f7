//! A linear layer's frozen base weight as it is stored: as loaded, or as int8 blocks only
//! (`--base-dtype int8`: on the CPU, or on a CUDA device in the GPU kernel's layout), and
//! the two products training needs of it.

use super::int8_gpu_weight::GpuInt8Weight;
use super::int8_projection;
use super::projection;
use super::quant::Int8Weight;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// The `[out, in]` weight `W` of `y = x · Wᵀ`, never trained.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// As loaded, in the model's dtype.
    Dense(Tensor),
    /// Int8 blocks with their scales, on the CPU; the dense copy is gone, so this is all
    /// the memory the weight takes (a little over 1 byte per weight).
    Int8(Arc<Int8Weight>),
    /// The same int8 values and scales on a CUDA device, row by row for the GPU kernel
    /// (1.125 bytes per weight).
    Int8Gpu(GpuInt8Weight),
}

impl BaseWeight {
    /// (out features, in features)
    pub fn shape(&self) -> (usize, usize) {
        match self {
            BaseWeight::Dense(w) => {
                let d = w.dims();
                (d[0], d[1])
            }
            BaseWeight::Int8(w) => w.shape(),
            BaseWeight::Int8Gpu(w) => w.shape(),
        }
    }

    /// The int8 blocks of the weight: of a CPU f32 one on the CPU, of a CUDA one (any
    /// float dtype) on its device; an int8 weight stays as it is.
    pub fn quantized(&self) -> Result<BaseWeight> {
        match self {
            BaseWeight::Int8(_) | BaseWeight::Int8Gpu(_) => Ok(self.clone()),
            BaseWeight::Dense(w) if w.device().is_cuda() => {
                Ok(BaseWeight::Int8Gpu(GpuInt8Weight::quantize(w)?))
            }
            BaseWeight::Dense(w) => match Int8Weight::from_tensor(w)? {
                Some(packed) => Ok(BaseWeight::Int8(Arc::new(packed))),
                None => bail!(
                    "an int8 base needs f32 weights on the CPU or weights on a CUDA device, not {:?} on {:?}",
                    w.dtype(),
                    w.device().location()
                ),
            },
        }
    }

    /// The weight as a tensor: the dense one, or the int8 values read back as f32 on the
    /// weight's device (a full-size copy, for export and merging).
    pub fn to_tensor(&self) -> Result<Tensor> {
        match self {
            BaseWeight::Dense(w) => Ok(w.clone()),
            BaseWeight::Int8(w) => {
                let (out, inp) = w.shape();
                let mut values = vec![0f32; out * inp];
                w.dequantize(0..out, 0..inp, &mut values);
                Ok(Tensor::from_vec(values, (out, inp), &Device::Cpu)?)
            }
            BaseWeight::Int8Gpu(w) => w.to_tensor(),
        }
    }

    /// `x · Wᵀ` for `x` `[rows, in]`, with only `x`'s gradient in the backward pass.
    pub fn project(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            BaseWeight::Dense(w) => projection::project(x, w),
            BaseWeight::Int8(w) => {
                if x.dtype() != DType::F32 || !x.device().is_cpu() {
                    bail!(
                        "an int8 base takes f32 inputs on the CPU, not {:?} on {:?}",
                        x.dtype(),
                        x.device().location()
                    );
                }
                Ok(int8_projection::project(x, w)?)
            }
            BaseWeight::Int8Gpu(w) => Ok(w.project(x)?),
        }
    }

    /// `dy · W` for `dy` `[rows, out]` in the input's dtype: the gradient of `project`.
    pub fn input_grad(&self, dy: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            BaseWeight::Dense(w) => dy.matmul(&w.to_dtype(dy.dtype())?),
            BaseWeight::Int8(w) => int8_projection::input_grad(dy, w)?.to_dtype(dy.dtype()),
            BaseWeight::Int8Gpu(w) => w.input_grad(dy),
        }
    }
}
