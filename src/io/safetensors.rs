//! Safetensors files written atomically, one tensor converted at a time, with the
//! `{"format": "pt"}` metadata transformers and peft look for.

use super::atomic::write_atomically;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::io::Write;
use std::path::Path;

/// A tensor to be written: name and shape up front (for the file header), values produced
/// only when its bytes are written, so an export holds one converted tensor at a time
/// rather than a second copy of the model.
pub struct LazyTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    produce: Box<dyn Fn() -> Result<Tensor> + 'a>,
}

impl<'a> LazyTensor<'a> {
    pub fn new(name: String, shape: &[usize], produce: impl Fn() -> Result<Tensor> + 'a) -> Self {
        Self {
            name,
            shape: shape.to_vec(),
            produce: Box::new(produce),
        }
    }

    /// An existing tensor, written as it is.
    pub fn ready(name: String, tensor: &'a Tensor) -> Self {
        Self::new(name, tensor.dims(), move || Ok(tensor.clone()))
    }

    pub fn materialize(&self) -> Result<Tensor> {
        let tensor = (self.produce)().with_context(|| format!("tensor {}", self.name))?;
        if tensor.dims() != self.shape {
            bail!(
                "tensor {}: produced shape {:?}, announced {:?}",
                self.name,
                tensor.dims(),
                self.shape
            );
        }
        Ok(tensor)
    }
}

/// Writes `tensors` as one safetensors file in `dtype` (f32, bf16 or f16), with the
/// `{"format": "pt"}` metadata transformers and peft look for, atomically, streaming one
/// tensor at a time.
pub fn write_safetensors(path: &Path, tensors: &[LazyTensor], dtype: DType) -> Result<()> {
    let (dtype_name, width) = match dtype {
        DType::F32 => ("F32", 4),
        DType::BF16 => ("BF16", 2),
        DType::F16 => ("F16", 2),
        other => bail!("cannot export tensors as {other:?}: use f32, bf16 or f16"),
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in tensors {
        let len = t.shape.iter().product::<usize>() * width;
        let entry = serde_json::json!({"dtype": dtype_name, "shape": t.shape, "data_offsets": [offset, offset + len]});
        if header.insert(t.name.clone(), entry).is_some() {
            bail!("{}: tensor {} named twice", path.display(), t.name);
        }
        offset += len;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))?;
    // The format asks for the data to start 8-byte aligned; spaces pad the JSON.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    write_atomically(path, |tmp| {
        let file = std::fs::File::create(tmp)?;
        let mut out = std::io::BufWriter::new(file);
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for t in tensors {
            out.write_all(&tensor_bytes(&t.materialize()?, dtype)?)?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    })
}

/// Little-endian bytes of `tensor` converted to `dtype`.
fn tensor_bytes(tensor: &Tensor, dtype: DType) -> Result<Vec<u8>> {
    let flat = tensor.to_dtype(dtype)?.flatten_all()?;
    Ok(match dtype {
        DType::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => bail!("cannot export tensors as {other:?}"),
    })
}
