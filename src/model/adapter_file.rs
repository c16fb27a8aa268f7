//! LoRA adapters in PEFT's folder layout: `adapter_config.json` plus
//! `adapter_model.safetensors` holding `base_model.model.<module>.lora_A.weight` `[r, in]`
//! and `.lora_B.weight` `[out, r]` in f32, which `peft.PeftModel.from_pretrained` loads
//! onto the base model, which the trainer writes for checkpoints and `autoif export peft`
//! re-saves.

use super::candle_reason;
use super::decoder::Decoder;
use super::lora::{LoraAdapter, LoraConfig};
use crate::io::atomic::write_json;
use crate::io::safetensors::{write_safetensors, LazyTensor};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Tensor, Var};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";
const A_SUFFIX: &str = ".lora_A.weight";
const B_SUFFIX: &str = ".lora_B.weight";

/// Writes `adapter_config.json` + `adapter_model.safetensors` (PEFT layout: tensor names
/// `base_model.model.<module>.lora_A.weight` [r, in] / `lora_B.weight` [out, r], f32) for every
/// projection of `decoder` that has an adapter attached.
pub fn save_adapter(
    decoder: &Decoder,
    config: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<()> {
    let mut tensors = Vec::new();
    for (module, layer) in decoder.linear_layers() {
        let Some(adapter) = layer.adapter() else {
            continue;
        };
        check_matches_config(&module, adapter, config)?;
        tensors.push(LazyTensor::ready(
            format!("{PREFIX}{module}{A_SUFFIX}"),
            adapter.a.as_tensor(),
        ));
        tensors.push(LazyTensor::ready(
            format!("{PREFIX}{module}{B_SUFFIX}"),
            adapter.b.as_tensor(),
        ));
    }
    if tensors.is_empty() {
        bail!(
            "{}: the model has no LoRA adapter attached, nothing to save",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors, DType::F32)?;
    write_json(
        &dir.join(CONFIG_FILE),
        &adapter_config_json(config, base_model),
    )
}

/// An adapter whose rank, scale or module disagrees with `config` would be written under
/// a config that describes another adapter.
fn check_matches_config(module: &str, adapter: &LoraAdapter, config: &LoraConfig) -> Result<()> {
    let rank = adapter.a.dim(0)?;
    if rank != config.r {
        bail!(
            "{module}: adapter rank {rank} differs from the LoRA config's r = {}",
            config.r
        );
    }
    if (adapter.scale - config.scale()).abs() > 1e-9 * config.scale().abs().max(1.0) {
        bail!(
            "{module}: adapter scale {} differs from lora_alpha / r = {}",
            adapter.scale,
            config.scale()
        );
    }
    if !config.targets(module) {
        bail!(
            "{module}: has an adapter but is not among target_modules {:?}",
            config.target_modules
        );
    }
    Ok(())
}

/// `adapter_config.json` with the fields PEFT writes for a plain LoRA.
fn adapter_config_json(config: &LoraConfig, base_model: &str) -> Value {
    // PEFT writes an integral alpha as an integer.
    let alpha = if config.lora_alpha.fract() == 0.0 && config.lora_alpha.abs() < 1e15 {
        json!(config.lora_alpha as i64)
    } else {
        json!(config.lora_alpha)
    };
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": alpha,
        "lora_dropout": config.lora_dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": config.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": config.target_modules,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false,
    })
}

/// Reads such a folder and attaches the adapters to `decoder` (validating names and shapes,
/// one clear error line naming the file otherwise); returns the config.
///
/// Projections without tensors in the folder end up with no adapter, so the decoder holds
/// exactly the folder's adapter. Nothing is changed when any check fails.
pub fn load_adapter(decoder: &mut Decoder, dir: &Path) -> Result<LoraConfig> {
    let config_path = dir.join(CONFIG_FILE);
    let weights_path = dir.join(WEIGHTS_FILE);
    if !dir.is_dir() {
        bail!("{}: adapter folder not found", dir.display());
    }
    for path in [&config_path, &weights_path] {
        if !path.is_file() {
            bail!(
                "{}: missing (a PEFT adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE})",
                path.display()
            );
        }
    }
    let header = read_config(&config_path)?;
    let device = decoder.device().clone();
    let tensors = candle_core::safetensors::load(&weights_path, &device).map_err(|err| {
        anyhow!(
            "{}: not a valid safetensors file ({})",
            weights_path.display(),
            candle_reason(&err)
        )
    })?;
    let pairs =
        pair_tensors(tensors).map_err(|err| anyhow!("{}: {err}", weights_path.display()))?;
    let config = LoraConfig {
        r: header.r,
        lora_alpha: header.lora_alpha,
        lora_dropout: header.lora_dropout,
        target_modules: header.target_modules.unwrap_or_else(|| {
            // A regex or "all-linear" target: the modules the tensors name.
            let names: BTreeSet<String> = pairs
                .keys()
                .map(|m| m.rsplit('.').next().unwrap_or(m).to_string())
                .collect();
            names.into_iter().collect()
        }),
    };
    let adapters = build_adapters(decoder, &config, pairs)
        .map_err(|err| anyhow!("{}: {err}", weights_path.display()))?;
    let mut adapters = adapters;
    for (module, layer) in decoder.linear_layers_mut() {
        layer.set_adapter(adapters.remove(&module))?;
    }
    Ok(config)
}

/// What `adapter_config.json` says, after refusing the PEFT options this decoder's
/// `LoraLinear` does not implement.
struct AdapterHeader {
    r: usize,
    lora_alpha: f64,
    lora_dropout: f64,
    /// `None` when PEFT's config names targets by a regex or "all-linear".
    target_modules: Option<Vec<String>>,
}

fn read_config(path: &Path) -> Result<AdapterHeader> {
    parse_config(&read_json(path)?).map_err(|err| anyhow!("{}: {err}", path.display()))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).map_err(|err| anyhow!("{}: invalid JSON: {err}", path.display()))
}

fn parse_config(v: &Value) -> Result<AdapterHeader> {
    if !v.is_object() {
        bail!("not a JSON object");
    }
    match v.get("peft_type").and_then(Value::as_str) {
        None | Some("LORA") => {}
        Some(other) => bail!("peft_type {other:?} is not supported (only LORA)"),
    }
    let r = match v.get("r").and_then(Value::as_u64) {
        Some(r) if r > 0 => r as usize,
        _ => bail!("`r` must be a positive integer"),
    };
    // PEFT's defaults where a field is missing.
    let number = |key: &str, default: f64| -> Result<f64> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(x) => x
                .as_f64()
                .with_context(|| format!("`{key}` must be a number, not {x}")),
        }
    };
    let lora_alpha = number("lora_alpha", 8.0)?;
    let lora_dropout = number("lora_dropout", 0.0)?;
    let flag = |key: &str| v.get(key).and_then(Value::as_bool).unwrap_or(false);
    for key in ["use_rslora", "use_dora", "fan_in_fan_out"] {
        if flag(key) {
            bail!("`{key}: true` is not supported");
        }
    }
    if let Some(bias) = v.get("bias").and_then(Value::as_str) {
        if bias != "none" {
            bail!("bias {bias:?} is not supported (only \"none\")");
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if v.get(key)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            bail!("per-module `{key}` is not supported");
        }
    }
    match v.get("modules_to_save") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(other) => bail!("modules_to_save {other} is not supported (only LoRA weights)"),
    }
    let target_modules = match v.get("target_modules") {
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_string)
                        .with_context(|| format!("target_modules entry {t} is not a string"))
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        Some(Value::String(_)) | Some(Value::Null) | None => None,
        Some(other) => bail!("target_modules must be a list or a string, not {other}"),
    };
    Ok(AdapterHeader {
        r,
        lora_alpha,
        lora_dropout,
        target_modules,
    })
}

/// Groups `base_model.model.<module>.lora_{A,B}.weight` tensors by module; any other
/// tensor, or a module with only one half, is an error.
fn pair_tensors(
    tensors: std::collections::HashMap<String, Tensor>,
) -> Result<BTreeMap<String, (Tensor, Tensor)>> {
    let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (name, tensor) in tensors {
        let module_and_half = name.strip_prefix(PREFIX).and_then(|rest| {
            rest.strip_suffix(A_SUFFIX)
                .map(|m| (m, true))
                .or_else(|| rest.strip_suffix(B_SUFFIX).map(|m| (m, false)))
        });
        let Some((module, is_a)) = module_and_half else {
            bail!("unexpected tensor {name} (expected {PREFIX}<module>{A_SUFFIX} or {B_SUFFIX})");
        };
        let entry = halves.entry(module.to_string()).or_default();
        if is_a {
            entry.0 = Some(tensor);
        } else {
            entry.1 = Some(tensor);
        }
    }
    if halves.is_empty() {
        bail!("holds no LoRA tensors");
    }
    halves
        .into_iter()
        .map(|(module, pair)| match pair {
            (Some(a), Some(b)) => Ok((module, (a, b))),
            (Some(_), None) => bail!("{module} has lora_A but no lora_B"),
            (None, _) => bail!("{module} has lora_B but no lora_A"),
        })
        .collect()
}

/// Checks every pair against the decoder's projections and the config, and turns them
/// into f32 adapters, before anything is attached.
fn build_adapters(
    decoder: &Decoder,
    config: &LoraConfig,
    mut pairs: BTreeMap<String, (Tensor, Tensor)>,
) -> Result<BTreeMap<String, LoraAdapter>> {
    let mut adapters = BTreeMap::new();
    for (module, layer) in decoder.linear_layers() {
        let Some((a, b)) = pairs.remove(&module) else {
            continue;
        };
        if !config.targets(&module) {
            bail!(
                "{module} has LoRA tensors but is not among target_modules {:?}",
                config.target_modules
            );
        }
        let (out, inp) = layer.shape();
        if a.dims() != [config.r, inp] || b.dims() != [out, config.r] {
            bail!(
                "{module}: lora_A {:?} / lora_B {:?} do not fit r = {} on a [{out}, {inp}] projection (expected [{}, {inp}] / [{out}, {}])",
                a.dims(),
                b.dims(),
                config.r,
                config.r,
                config.r
            );
        }
        adapters.insert(
            module,
            LoraAdapter {
                a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
                b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
                scale: config.scale(),
            },
        );
    }
    if let Some(module) = pairs.keys().next() {
        bail!(
            "tensors for {module}, which this model does not have ({} layers)",
            decoder.config().num_hidden_layers
        );
    }
    Ok(adapters)
}
