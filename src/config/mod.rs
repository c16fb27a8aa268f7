//! Run configuration for `autoif run` and `autoif stage`: TOML with `[model]` (the model
//! that is trained), `[supervisor]` (the model that writes the data; the trained model
//! itself for self-alignment), `[phases]` (which parts of the loop run), `[synthesis]`
//! (the data stages: `pipeline::config::SynthesisConfig`, each stage's own config struct
//! beside its stage), `[ifeval]`, and one section per training algorithm (`[sft]`,
//! `[dpo]`, `[online_dpo]`, each the algorithm's own config struct). Every key has a
//! default; a file only names what it changes. Unknown keys are errors so a typo never
//! silently falls back to a default.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::eval::ifeval::results::Decoding;
use crate::model::kv_cache::HostPrecision;
use crate::model::DEFAULT_MODEL;
use crate::pipeline::backtranslate::ConsistencyChecker;
use crate::pipeline::config::SynthesisConfig;
use crate::train::{DpoConfig, OnlineDpoConfig, SftConfig};
use crate::validation::Problems;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Base of every per-request generation seed and every sampling decision.
    pub seed: u64,
    pub model: ModelSection,
    pub supervisor: SupervisorSection,
    pub phases: Phases,
    pub synthesis: SynthesisConfig,
    pub ifeval: IfevalConfig,
    pub sft: SftConfig,
    pub dpo: DpoConfig,
    pub online_dpo: OnlineDpoConfig,
}

/// The parts of the whole loop, in the order they run; each can be switched off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Phases {
    pub ifeval_before: bool,
    pub synthesis: bool,
    pub sft: bool,
    pub dpo: bool,
    pub online_dpo: bool,
    pub ifeval_after: bool,
    pub export: bool,
}

impl Default for Phases {
    fn default() -> Self {
        Self {
            ifeval_before: true,
            synthesis: true,
            sft: true,
            dpo: true,
            online_dpo: true,
            ifeval_after: true,
            export: true,
        }
    }
}

/// IFEval before and after training: the same prompts, greedy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IfevalConfig {
    /// The prompts (google-research's input_data.jsonl).
    pub data: PathBuf,
    /// Score the first N prompts; 0: all 541.
    pub limit: usize,
    /// lm-evaluation-harness's IFEval task allows 1280.
    pub max_new_tokens: usize,
    /// Prompts decoded together.
    pub batch: usize,
    /// How the CPU's KV cache keeps keys and values: "f16" (faster) or "f32" (the
    /// responses of earlier versions, byte for byte); `eval ifeval --kv-cache`.
    pub kv_cache: HostPrecision,
}

impl Default for IfevalConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("data/ifeval/input_data.jsonl"),
            limit: 0,
            max_new_tokens: 1280,
            batch: 128,
            kv_cache: HostPrecision::F16,
        }
    }
}

impl IfevalConfig {
    pub fn decoding(&self) -> Decoding {
        Decoding {
            max_new_tokens: self.max_new_tokens,
            batch: self.batch,
            kv_cache: self.kv_cache,
        }
    }

    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        p.at_least("max_new_tokens", self.max_new_tokens, 1);
        p.at_least("batch", self.batch, 1);
        p
    }
}

/// The model being improved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A hub id, a local Hugging Face folder or a `.gguf` file.
    pub path: String,
    /// auto, cpu or cuda.
    pub device: String,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            path: DEFAULT_MODEL.to_string(),
            device: "auto".to_string(),
        }
    }
}

/// Who writes the synthetic data. `self` is self-alignment (the `[model]` model);
/// `local` is strong-to-weak with other local weights in `model`; `openai` is a remote
/// OpenAI-compatible server (vLLM, SGLang, llama.cpp) serving `model` at `base_url`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSection {
    pub kind: SupervisorKind,
    /// The supervision model: local weights for `local`, the served name for `openai`.
    pub model: Option<String>,
    /// Sequences decoded together by the local engine.
    pub batch: usize,
    /// The server's API root for `openai`, e.g. http://127.0.0.1:8000/v1.
    pub base_url: Option<String>,
    /// Environment variable holding the API key (none is sent when it is unset).
    pub api_key_env: String,
    /// HTTP requests in flight at once.
    pub max_concurrency: usize,
}

impl Default for SupervisorSection {
    fn default() -> Self {
        Self {
            kind: SupervisorKind::SelfModel,
            model: None,
            batch: 16,
            base_url: None,
            api_key_env: "OPENAI_API_KEY".to_string(),
            max_concurrency: 32,
        }
    }
}

impl SupervisorSection {
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        let kind = match self.kind {
            SupervisorKind::SelfModel => "\"self\"",
            SupervisorKind::Local => "\"local\"",
            SupervisorKind::OpenAi => "\"openai\"",
        };
        p.check(
            self.kind == SupervisorKind::SelfModel || self.model.is_some(),
            "kind",
            kind,
            "needs supervisor.model",
        );
        p.check(
            self.kind != SupervisorKind::OpenAi || self.base_url.is_some(),
            "kind",
            kind,
            "needs supervisor.base_url",
        );
        p.at_least("batch", self.batch, 1);
        p.at_least("max_concurrency", self.max_concurrency, 1);
        p
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SupervisorKind {
    #[serde(rename = "self")]
    SelfModel,
    #[serde(rename = "local")]
    Local,
    #[serde(rename = "openai")]
    OpenAi,
}

impl RunConfig {
    /// Reads a TOML file and applies `key.path=value` overrides (values parse as TOML,
    /// falling back to a plain string). A value of the wrong type is blamed on the file
    /// or on the `--set` that brought it; values out of range are refused together, one
    /// line each, naming the key (and the `--set` when one set it).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = crate::io::read_text(path)?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&e.to_string())))?;
        let mut config = Self::deserialize_table(table.clone())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for item in overrides {
            apply_override(&mut table, item)?;
            config = Self::deserialize_table(table.clone())
                .map_err(|e| anyhow::anyhow!("--set {item}: {e}"))?;
        }
        let problems = config.problems();
        if problems.is_empty() {
            config
                .synthesis
                .decontaminate
                .validate()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok(config);
        }
        let name = |key: &str| match overrides.iter().rev().find(|o| override_key(o) == key) {
            Some(_) => format!("--set {key}"),
            None => format!("{}: {key}", path.display()),
        };
        bail!(problems.lines(name))
    }

    /// The config a table describes: the table laid over the defaults, so a partial
    /// section keeps its own algorithm's defaults (`[dpo.args] epochs = 1` leaves DPO's
    /// learning rate, not the generic one).
    pub fn from_table(table: toml::Table) -> Result<Self> {
        let config = Self::deserialize_table(table)?;
        config.problems().into_result()?;
        config.synthesis.decontaminate.validate()?;
        Ok(config)
    }

    fn deserialize_table(table: toml::Table) -> Result<Self> {
        let mut merged = toml::Table::try_from(RunConfig::default()).expect("defaults serialize");
        overlay(&mut merged, table);
        toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", one_line(&e.to_string())))
    }

    /// Every value the run cannot use, keys as in the TOML file (`sft.args.lr`); each
    /// section checks its own fields beside its struct.
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        p.check(
            ["auto", "cpu", "cuda"].contains(&self.model.device.as_str()),
            "model.device",
            format!("{:?}", self.model.device),
            "expected \"auto\", \"cpu\" or \"cuda\"",
        );
        p.nest("supervisor", self.supervisor.problems());
        p.nest("synthesis", self.synthesis.problems());
        let bt = &self.synthesis.backtranslate;
        p.check(
            bt.checker != ConsistencyChecker::Nli || bt.nli_model.is_some(),
            "synthesis.backtranslate.checker",
            "\"nli\"",
            "needs synthesis.backtranslate.nli_model",
        );
        p.nest("ifeval", self.ifeval.problems());
        p.nest("sft", self.sft.problems());
        p.nest("dpo", self.dpo.problems());
        p.nest("online_dpo", self.online_dpo.problems());
        p
    }

    /// The model that writes the synthetic data.
    pub fn supervisor_model(&self) -> &str {
        match self.supervisor.kind {
            SupervisorKind::SelfModel => &self.model.path,
            SupervisorKind::Local | SupervisorKind::OpenAi => {
                self.supervisor.model.as_deref().unwrap_or(&self.model.path)
            }
        }
    }
}

/// Writes `top` over `base`, recursing into tables both have.
fn overlay(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => overlay(b, t),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let (key, raw) = item
        .split_once('=')
        .with_context(|| format!("--set {item}: expected key=value"))?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut node = table;
    for part in &parts[..parts.len() - 1] {
        node = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {item}: `{part}` is not a table"))?;
    }
    node.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// The key an override sets (`sft.args.lr` of `sft.args.lr=1e-4`).
fn override_key(item: &str) -> &str {
    item.split_once('=').map_or(item, |(key, _)| key).trim()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
