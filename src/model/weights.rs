//! Named weight tensors in Hugging Face layout, from memory-mapped safetensors files
//! (single or sharded) or from a GGUF file (dequantized, renamed, Q/K un-permuted), each
//! read and converted only when the decoder asks for it.

use super::candle_reason;
use super::config::{Architecture, ModelConfig};
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where each tensor lives; `get` converts to the compute dtype and device on demand.
pub struct Weights {
    source: Source,
}

enum Source {
    Safetensors {
        files: Vec<(PathBuf, MmapedSafetensors)>,
        /// tensor name -> index into `files`
        routing: HashMap<String, usize>,
    },
    /// GGUF blocks cannot be memory-mapped as f32: each tensor is read from the file and
    /// dequantized when asked for.
    Gguf {
        path: PathBuf,
        content: gguf_file::Content,
        /// Hugging Face name -> GGUF name
        names: HashMap<String, String>,
        /// (query heads, key/value heads) of a Llama model, whose Q and K rows llama.cpp
        /// permuted; `None` for Qwen2.
        rotary_heads: Option<(usize, usize)>,
    },
}

impl Weights {
    /// Memory-maps every file; a tensor name may appear in only one of them.
    pub fn from_safetensors(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            if !path.is_file() {
                bail!("{}: weights file not found", path.display());
            }
            // Safety: the file is opened read-only; a concurrent writer would be a user
            // error just as with transformers' own mmap loading.
            let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| {
                anyhow::anyhow!(
                    "{}: not a valid safetensors file ({})",
                    path.display(),
                    candle_reason(&e)
                )
            })?;
            for (name, _) in st.tensors() {
                if let Some(previous) = routing.insert(name.clone(), index) {
                    bail!(
                        "{}: tensor {name} also appears in {}",
                        path.display(),
                        paths[previous].display()
                    );
                }
            }
            files.push((path.clone(), st));
        }
        Ok(Self {
            source: Source::Safetensors { files, routing },
        })
    }

    /// Maps every tensor of a GGUF file to its Hugging Face name, refusing names the
    /// decoder does not know; the values are read and dequantized one tensor at a time by
    /// `get`, so the loader never holds more than one dense tensor it has not yet taken.
    pub fn from_gguf(
        path: &Path,
        content: gguf_file::Content,
        config: &ModelConfig,
    ) -> Result<Self> {
        check_gguf_extent(path, &content)?;
        let mut names = HashMap::new();
        for name in content.tensor_infos.keys() {
            if name == "rope_freqs.weight" {
                bail!(
                    "{}: rope frequency factors (Llama 3.1 rope scaling) in GGUF are not supported; load the Hugging Face folder instead",
                    path.display()
                );
            }
            let hf_name = hf_name_of_gguf_tensor(name).with_context(|| {
                format!(
                    "{}: unexpected tensor `{name}` for a {:?} model",
                    path.display(),
                    config.architecture
                )
            })?;
            names.insert(hf_name, name.clone());
        }
        // llama.cpp's converter interleaves the rotary halves of Q and K for llama
        // models; transformers' layout keeps them as two halves.
        let rotary_heads = (config.architecture == Architecture::Llama)
            .then_some((config.num_attention_heads, config.num_key_value_heads));
        Ok(Self {
            source: Source::Gguf {
                path: path.to_path_buf(),
                content,
                names,
                rotary_heads,
            },
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Safetensors { routing, .. } => routing.contains_key(name),
            Source::Gguf { names, .. } => names.contains_key(name),
        }
    }

    /// The tensor `name` with exactly `shape`, converted to `dtype` on `device`. Errors name
    /// the file, the tensor and both shapes.
    pub fn get(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let (file, tensor) = match &self.source {
            Source::Safetensors { files, routing } => {
                let Some(&index) = routing.get(name) else {
                    bail!("{}: missing tensor {name}", self.describe());
                };
                let (path, st) = &files[index];
                let t = st.load(name, &Device::Cpu).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: cannot read tensor {name} ({})",
                        path.display(),
                        candle_reason(&e)
                    )
                })?;
                (path.as_path(), t)
            }
            Source::Gguf {
                path,
                content,
                names,
                rotary_heads,
            } => {
                let Some(gguf_name) = names.get(name) else {
                    bail!("{}: missing tensor {name}", path.display());
                };
                let t = read_gguf_tensor(path, content, gguf_name)?;
                let t = match rotary_heads {
                    Some((q_heads, _)) if name.contains("self_attn.q_proj.") => {
                        unpermute_rotary_rows(&t, *q_heads)?
                    }
                    Some((_, kv_heads)) if name.contains("self_attn.k_proj.") => {
                        unpermute_rotary_rows(&t, *kv_heads)?
                    }
                    _ => t,
                };
                (path.as_path(), t)
            }
        };
        if tensor.dims() != shape {
            bail!(
                "{}: tensor {name} has shape {:?} but the config implies {:?} (wrong hidden size or layer count in the config?)",
                file.display(),
                tensor.dims(),
                shape
            );
        }
        Ok(tensor.to_dtype(dtype)?.to_device(device)?)
    }

    fn describe(&self) -> String {
        match &self.source {
            Source::Safetensors { files, .. } => match files.as_slice() {
                [(path, _)] => path.display().to_string(),
                _ => format!(
                    "{} (sharded)",
                    files
                        .first()
                        .and_then(|(p, _)| p.parent())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
            },
            Source::Gguf { path, .. } => path.display().to_string(),
        }
    }
}

/// The GGUF tensor `name` of the file at `path`, dequantized to f32 on the CPU.
fn read_gguf_tensor(path: &Path, content: &gguf_file::Content, name: &str) -> Result<Tensor> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let q = content.tensor(&mut file, name, &Device::Cpu).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot read tensor {name} ({})",
            path.display(),
            candle_reason(&e)
        )
    })?;
    q.dequantize(&Device::Cpu).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot dequantize {name} ({})",
            path.display(),
            candle_reason(&e)
        )
    })
}

/// A truncated GGUF file still parses (the header is at the front), so check that every
/// tensor's bytes lie inside the file before reading any.
pub(crate) fn check_gguf_extent(path: &Path, content: &gguf_file::Content) -> Result<()> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot stat", path.display()))?
        .len();
    for (name, info) in &content.tensor_infos {
        // Saturating: the dimensions and offsets are the file's word, however large.
        let elems = info
            .shape
            .dims()
            .iter()
            .fold(1u64, |n, &d| n.saturating_mul(d as u64));
        let block = info.ggml_dtype.block_size() as u64;
        let bytes = (elems / block).saturating_mul(info.ggml_dtype.type_size() as u64);
        let end = content
            .tensor_data_offset
            .saturating_add(info.offset)
            .saturating_add(bytes);
        if end > len {
            bail!(
                "{}: file is truncated ({len} bytes, tensor {name} ends at byte {end})",
                path.display()
            );
        }
    }
    Ok(())
}

/// llama.cpp tensor names -> Hugging Face names.
fn hf_name_of_gguf_tensor(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let hf_module = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_module}.{kind}"))
}

/// Inverse of llama.cpp's `permute`: rows of each head were reordered from
/// [half0, half1] to interleaved pairs; restore the two halves. Works on weights
/// `[heads*head_dim, in]` and biases `[heads*head_dim]`.
fn unpermute_rotary_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let head_dim = rows / heads;
    let out = t
        .reshape((heads, head_dim / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_gguf_names() {
        assert_eq!(
            hf_name_of_gguf_tensor("blk.12.attn_q.bias").as_deref(),
            Some("model.layers.12.self_attn.q_proj.bias")
        );
        assert_eq!(
            hf_name_of_gguf_tensor("blk.0.ffn_down.weight").as_deref(),
            Some("model.layers.0.mlp.down_proj.weight")
        );
        assert_eq!(hf_name_of_gguf_tensor("blk.0.attn_qkv.weight"), None);
    }

    /// llama.cpp's permute, written out independently, must be undone exactly.
    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (heads, head_dim, cols) = (3, 8, 5);
        let rows = heads * head_dim;
        let data: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let hf = Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap();
        // permute: view (heads, 2, head_dim/2, cols) then swap axes 1 and 2.
        let permuted = hf
            .reshape((heads, 2, head_dim / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let back = unpermute_rotary_rows(&permuted, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    }
}
