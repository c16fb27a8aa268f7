//! A merged Hugging Face model folder: the LoRA adapters folded into the projection
//! weights (`W + (alpha / r) · B A`), saved under Hugging Face tensor names with
//! `config.json`, `generation_config.json` and the tokenizer files, so that
//! `transformers.AutoModelForCausalLM.from_pretrained` and `autoif` itself load it.
//! A base loaded from GGUF exports in the same layout, with the tokenizer built from the
//! GGUF metadata.

use super::staging_dir::StagingDir;
use crate::io::atomic::write_json;
use crate::io::safetensors::{write_safetensors, LazyTensor};
use crate::model::source::ModelFiles;
use crate::model::Model;
use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde_json::{json, Value};
use std::path::Path;

pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Tokenizer-side files of a Hugging Face folder that are copied as they are.
const COPIED_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// Writes `model` (adapters merged) as a Hugging Face folder `dir` with weights in
/// `dtype` (f32, bf16 or f16). The folder appears complete or not at all; `dir` must not
/// exist or be empty.
pub fn save_merged(model: &Model, dir: &Path, dtype: DType) -> Result<()> {
    let torch_dtype = match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        other => bail!("cannot export weights as {other:?}: use f32, bf16 or f16"),
    };
    let staging = StagingDir::new(dir)?;
    let out = staging.path();
    write_safetensors(&out.join(WEIGHTS_FILE), &merged_tensors(model), dtype)?;
    write_json(
        &out.join("config.json"),
        &model.config.to_hf_json(torch_dtype),
    )?;
    write_tokenizer_files(model, out)?;
    staging.commit()
}

/// Every weight under its Hugging Face name, projections with their adapter merged (in
/// f32, whatever the compute dtype) when written. Tied models carry only
/// `model.embed_tokens.weight`, which transformers ties to the LM head.
pub fn merged_tensors(model: &Model) -> Vec<LazyTensor<'_>> {
    let decoder = &model.decoder;
    let mut tensors = vec![LazyTensor::ready(
        "model.embed_tokens.weight".into(),
        &decoder.embed_tokens,
    )];
    for (i, layer) in decoder.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        tensors.push(LazyTensor::ready(
            format!("{p}.input_layernorm.weight"),
            &layer.input_layernorm,
        ));
        tensors.push(LazyTensor::ready(
            format!("{p}.post_attention_layernorm.weight"),
            &layer.post_attention_layernorm,
        ));
    }
    for (module, linear) in decoder.linear_layers() {
        let (out, inp) = linear.shape();
        tensors.push(LazyTensor::new(
            format!("{module}.weight"),
            &[out, inp],
            move || {
                // An int8 base is read back as f32 here, one projection at a time.
                let weight = linear.weight()?;
                if linear.adapter().is_none() && linear.merged().is_none() {
                    return Ok(weight);
                }
                // In f32: the adapters merged beside a bf16 weight, then the attached one.
                let mut w = weight.to_dtype(DType::F32)?;
                if let Some(m) = linear.merged() {
                    w = (w + m.delta()?)?;
                }
                if let Some(ad) = linear.adapter() {
                    w = (w + (ad.b.as_tensor().matmul(ad.a.as_tensor())? * ad.scale)?)?;
                }
                Ok(w)
            },
        ));
        if let Some(bias) = linear.bias() {
            tensors.push(LazyTensor::ready(format!("{module}.bias"), bias));
        }
    }
    tensors.push(LazyTensor::ready("model.norm.weight".into(), &decoder.norm));
    if let Some(head) = &decoder.lm_head {
        tensors.push(LazyTensor::ready("lm_head.weight".into(), head));
    }
    tensors
}

/// A Hugging Face base keeps its own tokenizer files byte for byte; a GGUF base gets them
/// written from the tokenizer and template built from its metadata.
fn write_tokenizer_files(model: &Model, out: &Path) -> Result<()> {
    let source_dir = match &model.files {
        ModelFiles::HfFolder { dir, .. } => Some(dir.as_path()),
        ModelFiles::Gguf { .. } => None,
    };
    if let Some(src) = source_dir {
        for name in COPIED_FILES {
            let from = src.join(name);
            if from.is_file() {
                std::fs::copy(&from, out.join(name))
                    .with_context(|| format!("{}: cannot copy", from.display()))?;
            }
        }
    } else {
        let path = out.join("tokenizer.json");
        model
            .tokenizer
            .inner()
            .save(&path, true)
            .map_err(|err| anyhow::anyhow!("{}: cannot write: {err}", path.display()))?;
    }
    if !out.join("tokenizer_config.json").is_file() {
        write_json(&out.join("tokenizer_config.json"), &tokenizer_config(model))?;
    }
    if !out.join("generation_config.json").is_file() {
        write_json(
            &out.join("generation_config.json"),
            &generation_config(model),
        )?;
    }
    Ok(())
}

/// `tokenizer_config.json` for the generic fast tokenizer over our `tokenizer.json`.
fn tokenizer_config(model: &Model) -> Value {
    let tok = &model.tokenizer;
    let mut config = json!({
        "add_bos_token": tok.add_bos(),
        "add_eos_token": false,
        "bos_token": tok.bos_token(),
        "eos_token": tok.eos_token(),
        "clean_up_tokenization_spaces": false,
        "model_max_length": model.config.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(template) = &model.chat_template {
        config["chat_template"] = json!(template.source());
    }
    config
}

/// Generation stops on every token `autoif` stops on (end of sequence and end of turn).
fn generation_config(model: &Model) -> Value {
    let eos = match model.eos_token_ids.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    json!({
        "bos_token_id": model.config.bos_token_id,
        "eos_token_id": eos,
    })
}
