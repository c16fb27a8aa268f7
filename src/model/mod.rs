//! Models: configuration, weights (safetensors or GGUF), tokenizer, chat template, and
//! the one LoRA-ready decoder for the Llama and Qwen2 families.

pub mod adapter_file;
pub mod chat_template;
pub mod config;
pub mod config_resolution;
pub mod decoder;
pub mod device_memory;
pub mod kv_cache;
pub mod logprobs;
pub mod lora;
pub mod ops;
pub mod source;
pub mod tokenizer;
pub mod transfer;
pub mod weights;

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use chat_template::ChatTemplate;
use config::ModelConfig;
use decoder::Decoder;
use source::ModelFiles;
use std::path::Path;
use tokenizer::Tokenizer;
use weights::Weights;

/// The embedded default model, fetched by `scripts/fetch-models.sh`.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// End-of-turn markers of common chat templates; when the template uses one, generation
/// stops on it even if the config names another end-of-sequence token.
const END_OF_TURN_TOKENS: [&str; 3] = ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"];

/// Where and in what precision the weights live.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// How the frozen projection weights are stored.
    pub projections: ProjectionStorage,
}

/// How the loader stores each projection's weight (`LoraLinear`'s frozen base).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProjectionStorage {
    /// In the load dtype.
    #[default]
    Dense,
    /// As int8 blocks only (CPU f32, or any float dtype on a CUDA device in the GPU
    /// kernel's layout; training's `--base-dtype int8`): each weight is
    /// quantized as soon as it is read, so at most one dense projection exists at a time
    /// rather than all of them until a later pass quantizes them.
    Int8,
}

impl LoadOptions {
    /// f32 on the CPU; bf16 on a CUDA GPU when built with `--features cuda` and one is
    /// present.
    pub fn auto() -> Result<Self> {
        let device = Device::cuda_if_available(0)?;
        let dtype = if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        Ok(Self {
            device,
            dtype,
            projections: ProjectionStorage::Dense,
        })
    }

    pub fn cpu() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            projections: ProjectionStorage::Dense,
        }
    }

    /// `auto`, `cpu` or `cuda` (bf16 on the GPU; an error when there is none).
    pub fn for_device(name: &str) -> Result<Self> {
        Ok(match name {
            "cpu" => Self::cpu(),
            "cuda" => Self {
                device: Device::new_cuda(0).map_err(|e| {
                    anyhow::anyhow!(
                        "no CUDA device (build with --features cuda on a machine with a GPU): {e}"
                    )
                })?,
                dtype: DType::BF16,
                projections: ProjectionStorage::Dense,
            },
            "auto" => Self::auto()?,
            other => anyhow::bail!("unknown device `{other}` (auto, cpu or cuda)"),
        })
    }
}

/// Everything needed to run a model: decoder weights, tokenizer, chat template.
pub struct Model {
    /// What the user passed to `--model`.
    pub name: String,
    pub files: ModelFiles,
    pub config: ModelConfig,
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// Token ids that end a completion.
    pub eos_token_ids: Vec<u32>,
}

/// Everything of a model but its weights' values: what `Model::check` reads.
struct Opened {
    config: ModelConfig,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    eos: Vec<u32>,
    weights: UnreadWeights,
}

/// Weights whose headers are read and checked but whose values are not.
enum UnreadWeights {
    /// Memory-mapped: nothing is read until a tensor is asked for.
    Safetensors(Weights),
    /// The parsed header; `Weights` dequantizes each tensor when it is asked for.
    Gguf(gguf_file::Content),
}

impl Model {
    /// Loads a hub id, a local Hugging Face folder or a `.gguf` file.
    pub fn load(spec: &str, options: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::resolve(spec)?;
        let opened = open(&files)?;
        let weights = match (opened.weights, &files) {
            (UnreadWeights::Safetensors(w), _) => w,
            (UnreadWeights::Gguf(content), ModelFiles::Gguf { path }) => {
                Weights::from_gguf(path, content, &opened.config)?
            }
            (UnreadWeights::Gguf(_), ModelFiles::HfFolder { .. }) => {
                unreachable!("a folder has safetensors weights")
            }
        };
        let decoder = Decoder::load(&opened.config, &weights, options)?;
        Ok(Self {
            name: spec.to_string(),
            files,
            config: opened.config,
            decoder,
            tokenizer: opened.tokenizer,
            chat_template: opened.chat_template,
            eos_token_ids: opened.eos,
        })
    }

    /// Opens `spec` as `load` does (a hub id not in the cache is downloaded) and reads
    /// its config, tokenizer, chat template and weight headers, checking the declared
    /// sizes against the files, without reading a weight: a run refuses a bad model
    /// this way before it writes anything.
    pub fn check(spec: &str) -> Result<ModelConfig> {
        let files = ModelFiles::resolve(spec)?;
        Ok(open(&files)?.config)
    }
}

/// Reads everything `files` hold but the weights' values.
fn open(files: &ModelFiles) -> Result<Opened> {
    let (config, weights, tokenizer, chat_template, mut eos) = match files {
        ModelFiles::HfFolder {
            config,
            weights,
            tokenizer,
            tokenizer_config,
            generation_config,
            dir,
        } => {
            let cfg = ModelConfig::from_hf_file(config)?;
            let w = Weights::from_safetensors(weights)?;
            let bytes = weights.iter().map(|w| file_len(w)).sum::<Result<u64>>()?;
            cfg.check_weight_bytes(bytes)
                .with_context(|| format!("{}", dir.display()))?;
            let tok = Tokenizer::from_hf_files(tokenizer, tokenizer_config.as_deref())?;
            let template = ChatTemplate::from_hf_folder(dir)?;
            let mut eos = cfg.eos_token_ids.clone();
            if let Some(gen) = generation_config {
                eos.extend(generation_eos(gen)?);
            }
            (cfg, UnreadWeights::Safetensors(w), tok, template, eos)
        }
        ModelFiles::Gguf { path } => {
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("{}: cannot open", path.display()))?;
            let content = gguf_file::Content::read(&mut file).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not a valid GGUF file ({})",
                    path.display(),
                    candle_reason(&e)
                )
            })?;
            let cfg = ModelConfig::from_gguf(&content)
                .and_then(|cfg| {
                    cfg.check_weight_bytes(file_len(path)?)?;
                    Ok(cfg)
                })
                .with_context(|| format!("{}", path.display()))?;
            weights::check_gguf_extent(path, &content)?;
            let tok = Tokenizer::from_gguf(&content, path)?;
            let template = match content.metadata.get("tokenizer.chat_template") {
                Some(v) => Some(ChatTemplate::new(
                    v.to_string()?,
                    tok.bos_token(),
                    tok.eos_token(),
                )?),
                None => None,
            };
            let eos = cfg.eos_token_ids.clone();
            (cfg, UnreadWeights::Gguf(content), tok, template, eos)
        }
    };
    if let Some(id) = tokenizer.eos_token().and_then(|t| tokenizer.token_to_id(t)) {
        eos.push(id);
    }
    if let Some(t) = &chat_template {
        for marker in END_OF_TURN_TOKENS {
            if t.source().contains(marker) {
                eos.extend(tokenizer.token_to_id(marker));
            }
        }
    }
    eos.sort_unstable();
    eos.dedup();
    Ok(Opened {
        config,
        tokenizer,
        chat_template,
        eos,
        weights,
    })
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}: cannot stat", path.display()))?
        .len())
}

/// A candle error as one line: without the backtrace candle attaches when
/// `RUST_BACKTRACE` is set, and without its own copy of the path (callers name the file).
pub(crate) fn candle_reason(err: &candle_core::Error) -> String {
    match err {
        candle_core::Error::WithBacktrace { inner, .. }
        | candle_core::Error::WithPath { inner, .. } => candle_reason(inner),
        other => other.to_string().replace('\n', "; "),
    }
}

fn generation_eos(path: &Path) -> Result<Vec<u32>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(match v.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32).into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    })
}
