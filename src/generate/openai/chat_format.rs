//! The tokenizer and chat template of the served model, without its weights: prompts for
//! `/v1/completions` are rendered with the model's own template on our side, so the text a
//! remote supervisor sees is the text training uses.

use crate::model::chat_template::{ChatTemplate, Message};
use crate::model::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file;
use std::path::{Path, PathBuf};

pub struct ChatFormat {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
}

impl ChatFormat {
    /// From a `.gguf` file (metadata only), a Hugging Face folder, or a hub id (only the
    /// tokenizer files are fetched, never the weights).
    pub fn load(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if spec.ends_with(".gguf") {
            return Self::from_gguf(path);
        }
        if path.is_dir() {
            return Self::from_folder(path);
        }
        if path.exists() {
            bail!("{spec}: a tokenizer must be a .gguf file, a Hugging Face folder or a hub id");
        }
        if spec.split('/').filter(|s| !s.is_empty()).count() != 2 {
            bail!("{spec}: no such file or folder, and not a hub id of the form owner/name");
        }
        Self::from_folder(&hub_snapshot(spec)?)
    }

    fn from_gguf(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|_| anyhow!("{}: not a valid GGUF file", path.display()))?;
        let tokenizer = Tokenizer::from_gguf(&content, path)?;
        let template = match content.metadata.get("tokenizer.chat_template") {
            Some(source) => Some(
                ChatTemplate::new(
                    source.to_string().map_err(|_| {
                        anyhow!("{}: chat template is not a string", path.display())
                    })?,
                    tokenizer.bos_token(),
                    tokenizer.eos_token(),
                )
                .with_context(|| format!("{}", path.display()))?,
            ),
            None => None,
        };
        Ok(Self {
            tokenizer,
            template,
        })
    }

    fn from_folder(dir: &Path) -> Result<Self> {
        let tokenizer_json = dir.join("tokenizer.json");
        if !tokenizer_json.is_file() {
            bail!("{}: no tokenizer.json in this folder", dir.display());
        }
        let config = Some(dir.join("tokenizer_config.json")).filter(|p| p.is_file());
        Ok(Self {
            tokenizer: Tokenizer::from_hf_files(&tokenizer_json, config.as_deref())?,
            template: ChatTemplate::from_hf_folder(dir)?,
        })
    }

    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    /// The conversation as prompt text, with the assistant's turn opened.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let template = self
            .template
            .as_ref()
            .context("the tokenizer has no chat template")?;
        template.render(messages, true)
    }

    /// Token ids of a completion's text (the server returns text; these are its
    /// tokenization by the same tokenizer, without special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode_raw(text)
    }
}

/// The hub cache's snapshot folder of `id` holding its tokenizer files, downloading
/// them (not the weights) when they are missing and `HF_HUB_OFFLINE` is not set.
fn hub_snapshot(id: &str) -> Result<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    if let Some(path) = cache.model(id.to_string()).get("tokenizer.json") {
        return Ok(path
            .parent()
            .expect("a cached file has a folder")
            .to_path_buf());
    }
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
    if offline {
        bail!(
            "{id}: tokenizer.json is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
            cache.path().display()
        );
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .build()
        .context("cannot set up the Hugging Face hub client")?;
    let repo = api.model(id.to_string());
    let tokenizer = repo
        .get("tokenizer.json")
        .with_context(|| format!("{id}: cannot download tokenizer.json from the hub"))?;
    for optional in ["tokenizer_config.json", "chat_template.jinja"] {
        // Many models lack one of these; a 404 is expected.
        let _ = repo.get(optional);
    }
    Ok(tokenizer
        .parent()
        .expect("a cached file has a folder")
        .to_path_buf())
}
