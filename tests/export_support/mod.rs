//! Helpers for the export tests: models with random (non-zero) LoRA adapters, logits to
//! compare, the optional reference Python.
#![allow(dead_code)]

use autoif::model::lora::{Adapters, LoraAdapter, LoraConfig};
use autoif::model::ops::quant::Precision;
use autoif::model::{LoadOptions, Model};
use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::process::Command;

pub fn load(spec: &Path) -> Model {
    Model::load(spec.to_str().unwrap(), &LoadOptions::cpu()).unwrap()
}

/// Rank 4, alpha 8 on q/v/o and down projections (a subset, so the untargeted ones are
/// exercised too).
pub fn test_config() -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.05,
        target_modules: ["q_proj", "v_proj", "o_proj", "down_proj"]
            .map(String::from)
            .to_vec(),
    }
}

/// Attaches adapters with seeded uniform A and B in ±`bound` (B non-zero, unlike PEFT's
/// initialisation, so the adapter changes the logits).
pub fn attach_random_adapters(model: &mut Model, config: &LoraConfig, seed: u64, bound: f32) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut uniform =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
    for (name, layer) in model.decoder.linear_layers_mut() {
        if !config.targets(&name) {
            continue;
        }
        let (out, inp) = layer.shape();
        let a = Tensor::from_vec(uniform(config.r * inp), (config.r, inp), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(uniform(out * config.r), (out, config.r), &Device::Cpu).unwrap();
        layer
            .set_adapter(Some(LoraAdapter {
                a: Var::from_tensor(&a).unwrap(),
                b: Var::from_tensor(&b).unwrap(),
                scale: config.scale(),
            }))
            .unwrap();
    }
}

/// Token ids for a two-sequence batch inside `vocab`.
pub fn sample_ids(vocab: usize) -> Tensor {
    let ids: Vec<u32> = (0..14u32).map(|i| (i * 37 + 11) % vocab as u32).collect();
    Tensor::from_vec(ids, (2, 7), &Device::Cpu).unwrap()
}

/// f32 logits `[batch, seq, vocab]` through the differentiable forward path.
pub fn logits(model: &Model, ids: &Tensor, adapters: Adapters) -> Tensor {
    let hidden = model.decoder.forward(ids, adapters).unwrap();
    model.decoder.logits(&hidden, Precision::Exact).unwrap()
}

/// A Python with torch, transformers and peft: `AUTOIF_REF_PYTHON`, else
/// `/work/refenv/bin/python`, else `python3`; None (with a SKIP line) when none has them.
pub fn reference_python(test: &str) -> Option<String> {
    let candidates: Vec<String> = match std::env::var("AUTOIF_REF_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["/work/refenv/bin/python".into(), "python3".into()],
    };
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import torch, transformers, peft, safetensors"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Some(python);
        }
    }
    eprintln!("SKIP {test}: no Python with torch, transformers and peft (set AUTOIF_REF_PYTHON)");
    None
}
