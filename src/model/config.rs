//! The decoder's hyper-parameters, read from a Hugging Face `config.json` or from GGUF
//! metadata, and checked before any weight is loaded.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The decoder families `autoif` implements with its one decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    #[serde(rename = "LlamaForCausalLM")]
    Llama,
    #[serde(rename = "Qwen2ForCausalLM")]
    Qwen2,
}

impl Architecture {
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// Rotary embedding frequency scaling, as `rope_scaling` in `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RopeScaling {
    /// Llama 3.1's wavelength-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Positions divided by `factor`.
    Linear { factor: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// `config.json` as Hugging Face writes it; only the fields the decoder needs.
#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5 writes `rope_theta` and the scaling together here.
    rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_max_positions() -> usize {
    4096
}

impl ModelConfig {
    /// Reads and checks a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_hf_json(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(text).context("not a valid config.json")?;
        let architecture = match (raw.architectures.first(), raw.model_type.as_deref()) {
            (Some(a), _) if a == "LlamaForCausalLM" => Architecture::Llama,
            (Some(a), _) if a == "Qwen2ForCausalLM" => Architecture::Qwen2,
            (None, Some("llama")) => Architecture::Llama,
            (None, Some("qwen2")) => Architecture::Qwen2,
            (a, m) => bail!(
                "unsupported architecture {} (model_type {}): autoif supports LlamaForCausalLM and Qwen2ForCausalLM",
                a.map(String::as_str).unwrap_or("(none)"),
                m.unwrap_or("(none)")
            ),
        };
        let mut rope_theta = raw.rope_theta;
        let mut rope_spec = raw.rope_scaling.clone().filter(|v| !v.is_null());
        if let Some(params) = raw.rope_parameters.as_ref().filter(|v| v.is_object()) {
            if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
                rope_theta = theta;
            }
            rope_spec = Some(params.clone());
        }
        let rope_scaling = match &rope_spec {
            None => None,
            Some(v) => parse_rope_scaling(v)?,
        };
        let config = ModelConfig {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            // transformers' default for both families is tied embeddings.
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
            attention_bias: raw
                .attention_bias
                .unwrap_or(architecture == Architecture::Qwen2),
            bos_token_id: raw.bos_token_id.as_ref().and_then(first_token_id),
            eos_token_ids: raw.eos_token_id.as_ref().map(token_ids).unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads the hyper-parameters llama.cpp's converter stores under `{arch}.*`.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let get = |key: &str| {
            md.get(key)
                .with_context(|| format!("GGUF metadata has no `{key}`"))
        };
        let arch_name = get("general.architecture")?.to_string()?.clone();
        let architecture = match arch_name.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                bail!("unsupported GGUF architecture `{other}`: autoif supports llama and qwen2")
            }
        };
        let key = |suffix: &str| format!("{arch_name}.{suffix}");
        // llama.cpp writes counts as u32; other writers use u64.
        let usize_of = |suffix: &str| -> Result<usize> {
            let v = get(&key(suffix))?;
            let n = match v.to_u32() {
                Ok(n) => u64::from(n),
                Err(_) => v.to_u64()?,
            };
            Ok(n as usize)
        };
        let hidden_size = usize_of("embedding_length")?;
        let num_attention_heads = usize_of("attention.head_count")?;
        let num_key_value_heads =
            usize_of("attention.head_count_kv").unwrap_or(num_attention_heads);
        let head_dim =
            usize_of("rope.dimension_count").unwrap_or(hidden_size / num_attention_heads);
        let vocab_size = match usize_of("vocab_size") {
            Ok(v) => v,
            Err(_) => get("tokenizer.ggml.tokens")?.to_vec()?.len(),
        };
        let tied = !content.tensor_infos.contains_key("output.weight");
        let eos = md
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok());
        let config = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: usize_of("feed_forward_length")?,
            num_hidden_layers: usize_of("block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get(&key("attention.layer_norm_rms_epsilon"))?.to_f32()? as f64,
            rope_theta: md
                .get(&key("rope.freq_base"))
                .map(|v| v.to_f32())
                .transpose()?
                .map(f64::from)
                .unwrap_or(10_000.0),
            // GGUF files store Llama 3 scaling as a precomputed `rope_freqs` tensor; the
            // loader refuses those rather than silently ignoring them.
            rope_scaling: None,
            max_position_embeddings: usize_of("context_length").unwrap_or(4096),
            tie_word_embeddings: tied,
            attention_bias: architecture == Architecture::Qwen2,
            bos_token_id: md
                .get("tokenizer.ggml.bos_token_id")
                .and_then(|v| v.to_u32().ok()),
            eos_token_ids: eos.into_iter().collect(),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        // Far above any released model of these families, far below what would make an
        // allocation sized by them fail: a corrupt or hostile count is refused here, not
        // by an abort in the allocator.
        let bounded = [
            ("vocab_size", self.vocab_size, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 10),
            ("num_key_value_heads", self.num_key_value_heads, 1 << 10),
            ("head_dim", self.head_dim, 1 << 12),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 24,
            ),
        ];
        for (name, value, max) in bounded {
            if value > max {
                bail!("{name} = {value} is out of range (at most {max})");
            }
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("{name} must be positive");
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            );
        }
        Ok(())
    }

    /// The weights these hyper-parameters declare, counted from the shapes `Decoder`
    /// loads (bias and norm vectors left out: a lower bound).
    pub fn min_parameters(&self) -> u64 {
        let h = self.hidden_size as u64;
        let q = (self.num_attention_heads * self.head_dim) as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        let i = self.intermediate_size as u64;
        let layer = h * q + 2 * h * kv + q * h + 3 * h * i;
        self.vocab_size as u64 * h + self.num_hidden_layers as u64 * layer
    }

    /// Refuses weight files too small for the declared shapes, before any is read: even
    /// at one bit per weight (below llama.cpp's smallest quantization) the parameters
    /// need `min_parameters() / 8` bytes.
    pub fn check_weight_bytes(&self, bytes: u64) -> Result<()> {
        let needed = self.min_parameters() / 8;
        if bytes < needed {
            bail!(
                "config declares {} layers of hidden size {} ({} parameters), more than {bytes} bytes of weights can hold",
                self.num_hidden_layers,
                self.hidden_size,
                self.min_parameters()
            );
        }
        Ok(())
    }

    /// The `config.json` a Hugging Face loader expects for these hyper-parameters.
    pub fn to_hf_json(&self, torch_dtype: &str) -> serde_json::Value {
        let rope_scaling = match &self.rope_scaling {
            None => serde_json::Value::Null,
            Some(RopeScaling::Linear { factor }) => {
                serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => serde_json::Value::Null,
            [one] => serde_json::json!(one),
            many => serde_json::json!(many),
        };
        let mut json = serde_json::json!({
            "architectures": [self.architecture.hf_name()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": torch_dtype,
        });
        if self.architecture == Architecture::Llama {
            json["attention_bias"] = serde_json::json!(self.attention_bias);
            json["mlp_bias"] = serde_json::json!(false);
        }
        json
    }
}

/// `None` for plain rotary embeddings (`rope_type` "default").
fn parse_rope_scaling(v: &serde_json::Value) -> Result<Option<RopeScaling>> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        v.get(key)
            .and_then(|x| x.as_f64())
            .with_context(|| format!("rope_scaling of type {kind} needs a numeric `{key}`"))
    };
    match kind {
        "default" => Ok(None),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        })),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        other => bail!("unsupported rope_scaling type `{other}` (supported: llama3, linear)"),
    }
}

fn first_token_id(v: &serde_json::Value) -> Option<u32> {
    token_ids(v).first().copied()
}

fn token_ids(v: &serde_json::Value) -> Vec<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32).into_iter().collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA3: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "vocab_size": 128, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        "tie_word_embeddings": false, "eos_token_id": [1, 2]
    }"#;

    #[test]
    fn reads_llama3_config() {
        let c = ModelConfig::from_hf_json(LLAMA3).unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(c.head_dim, 16);
        assert!(!c.attention_bias);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { .. })));
        let round_trip = ModelConfig::from_hf_json(&c.to_hf_json("float32").to_string()).unwrap();
        assert_eq!(round_trip, c);
    }

    #[test]
    fn refuses_unknown_architecture_and_bad_heads() {
        let mistral = LLAMA3.replace("LlamaForCausalLM", "MistralForCausalLM");
        let err = ModelConfig::from_hf_json(&mistral).unwrap_err();
        assert!(format!("{err:#}").contains("unsupported architecture MistralForCausalLM"));
        let bad = LLAMA3.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
        let err = ModelConfig::from_hf_json(&bad).unwrap_err();
        assert!(format!("{err:#}").contains("not a multiple"));
    }
}
