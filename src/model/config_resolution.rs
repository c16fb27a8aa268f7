//! A model's hyper-parameters without its weights, from what the user passed to
//! `--model`: enough to plan the memory a job needs before anything is loaded.

use super::config::ModelConfig;
use super::source::download_hub_config;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use std::path::Path;

/// The model's hyper-parameters without its weights: `config.json` of a folder (or the
/// file itself), a `.gguf` file's metadata, or a hub id already in the Hugging Face cache.
pub fn resolve_config(spec: &str) -> Result<ModelConfig> {
    let path = Path::new(spec);
    if spec.ends_with(".gguf") {
        let mut file = std::fs::File::open(path).with_context(|| format!("{spec}: cannot open"))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| anyhow::anyhow!("{spec}: not a valid GGUF file ({e})"))?;
        return ModelConfig::from_gguf(&content).with_context(|| spec.to_string());
    }
    if path.is_dir() {
        return ModelConfig::from_hf_file(&path.join("config.json"));
    }
    if path.is_file() {
        return ModelConfig::from_hf_file(path);
    }
    let cache = hf_hub::Cache::from_env();
    match cache.model(spec.to_string()).get("config.json") {
        Some(config) => ModelConfig::from_hf_file(&config),
        None => bail!(
            "{spec}: no such file or folder, and no config.json for it in the Hugging Face cache"
        ),
    }
}

/// `resolve_config`, or for a hub id not in the cache its config.json downloaded alone
/// (the weights follow anyway).
pub fn resolve_config_or_download(spec: &str) -> Result<ModelConfig> {
    resolve_config(spec).or_else(|not_local| match download_hub_config(spec) {
        Some(path) => ModelConfig::from_hf_file(&path?),
        None => Err(not_local),
    })
}
