//! Turns what the user passed to `--model` into files on disk: a `.gguf` file, a local
//! Hugging Face folder, or a hub id resolved through the hub cache (honouring `HF_HOME`
//! and `HF_HUB_OFFLINE`; a model already in the cache loads with no network).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub enum ModelFiles {
    HfFolder {
        dir: PathBuf,
        config: PathBuf,
        /// One file, or every shard named by `model.safetensors.index.json`.
        weights: Vec<PathBuf>,
        tokenizer: PathBuf,
        tokenizer_config: Option<PathBuf>,
        generation_config: Option<PathBuf>,
    },
    Gguf {
        path: PathBuf,
    },
}

const INDEX: &str = "model.safetensors.index.json";

impl ModelFiles {
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if spec.ends_with(".gguf") {
            if !path.is_file() {
                let hint = if spec == super::DEFAULT_MODEL {
                    " (run scripts/fetch-models.sh to fetch the default model)"
                } else {
                    ""
                };
                bail!("{spec}: model file not found{hint}");
            }
            return Ok(ModelFiles::Gguf {
                path: path.to_path_buf(),
            });
        }
        if path.is_dir() {
            return Self::from_folder(path);
        }
        if path.exists() {
            bail!("{spec}: not a .gguf file or a Hugging Face model folder");
        }
        if looks_like_hub_id(spec) {
            return Self::from_hub(spec);
        }
        bail!("{spec}: no such file or folder, and not a hub id of the form owner/name")
    }

    fn from_folder(dir: &Path) -> Result<Self> {
        let config = dir.join("config.json");
        if !config.is_file() {
            bail!("{}: no config.json in this folder", dir.display());
        }
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            bail!("{}: no tokenizer.json in this folder", dir.display());
        }
        let single = dir.join("model.safetensors");
        let index = dir.join(INDEX);
        let weights = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_names(&index)?
                .into_iter()
                .map(|name| dir.join(name))
                .collect()
        } else {
            bail!(
                "{}: no model.safetensors or {INDEX} in this folder",
                dir.display()
            );
        };
        let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Ok(ModelFiles::HfFolder {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
            tokenizer_config: optional("tokenizer_config.json"),
            generation_config: optional("generation_config.json"),
        })
    }

    /// Uses the cached snapshot when every needed file is there; otherwise downloads
    /// (unless offline), which fills the same cache.
    fn from_hub(id: &str) -> Result<Self> {
        let cache = hf_hub::Cache::from_env();
        let repo = cache.model(id.to_string());
        if let Some(config) = repo.get("config.json") {
            let dir = config.parent().unwrap().to_path_buf();
            let complete = repo.get("tokenizer.json").is_some()
                && (repo.get("model.safetensors").is_some()
                    || repo
                        .get(INDEX)
                        .map(|index| {
                            shard_names(&index)
                                .map(|names| names.iter().all(|n| repo.get(n).is_some()))
                                .unwrap_or(false)
                        })
                        .unwrap_or(false));
            if complete {
                return Self::from_folder(&dir);
            }
        }
        if offline() {
            bail!(
                "{id}: not (completely) in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
                cache.path().display()
            );
        }
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .context("cannot set up the Hugging Face hub client")?;
        let remote = api.model(id.to_string());
        let fetch = |name: &str| {
            remote
                .get(name)
                .with_context(|| format!("{id}: cannot download {name} from the hub"))
        };
        let config = fetch("config.json")?;
        fetch("tokenizer.json")?;
        for name in [
            "tokenizer_config.json",
            "generation_config.json",
            "chat_template.jinja",
        ] {
            // Optional files: a 404 is expected for many models.
            let _ = remote.get(name);
        }
        match remote.get("model.safetensors") {
            Ok(_) => {}
            Err(_) => {
                let index = fetch(INDEX)?;
                for shard in shard_names(&index)? {
                    fetch(&shard)?;
                }
            }
        }
        Self::from_folder(config.parent().unwrap())
    }
}

/// Downloads a hub id's config.json alone (into the cache), so its hyper-parameters can be
/// read before the weights are fetched. None for a path, a `.gguf` name or anything else
/// that is not a hub id, and when HF_HUB_OFFLINE is set.
pub fn download_hub_config(spec: &str) -> Option<Result<PathBuf>> {
    if spec.ends_with(".gguf") || Path::new(spec).exists() || !looks_like_hub_id(spec) || offline()
    {
        return None;
    }
    let fetch = || {
        hf_hub::api::sync::ApiBuilder::from_env()
            .build()
            .context("cannot set up the Hugging Face hub client")?
            .model(spec.to_string())
            .get("config.json")
            .with_context(|| format!("{spec}: cannot download config.json from the hub"))
    };
    Some(fetch())
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false)
}

fn looks_like_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    ok(owner) && ok(name)
}

/// The distinct shard file names of a sharded checkpoint, in a stable order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", index.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no weight_map object", index.display()))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        bail!("{}: weight_map is empty", index.display());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert!(looks_like_hub_id("Qwen/Qwen2-0.5B-Instruct"));
        assert!(looks_like_hub_id("meta-llama/Meta-Llama-3-8B-Instruct"));
        assert!(!looks_like_hub_id("models/x/y"));
        assert!(!looks_like_hub_id("./model"));
        assert!(!looks_like_hub_id("model"));
    }

    #[test]
    fn missing_model_file_is_one_clear_line() {
        let err = ModelFiles::resolve("nowhere/none.gguf").unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "nowhere/none.gguf: model file not found"
        );
    }
}
