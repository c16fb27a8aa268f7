//! Run configuration for `autoif run` and `autoif stage`: TOML with `[model]` (the model
//! that is trained), `[supervisor]` (the model that writes the data; the trained model
//! itself for self-alignment), `[phases]` (which parts of the loop run), `[synthesis]`
//! (the data stages), `[ifeval]`, and one section per training algorithm (`[sft]`,
//! `[dpo]`, `[online_dpo]`, each the algorithm's own config struct). Every key has a
//! default; a file only names what it changes. Unknown keys are errors so a typo never
//! silently falls back to a default.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::model::DEFAULT_MODEL;
use crate::pipeline::prompts::PromptTemplates;
use crate::train::{DpoConfig, OnlineDpoConfig, SftConfig};

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
}

impl Default for IfevalConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("data/ifeval/input_data.jsonl"),
            limit: 0,
            max_new_tokens: 1280,
            batch: 32,
        }
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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SupervisorKind {
    #[serde(rename = "self")]
    SelfModel,
    #[serde(rename = "local")]
    Local,
    #[serde(rename = "openai")]
    OpenAi,
}

/// Sampling shared by the generating stages; each stage sets its own length.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
}

impl Sampling {
    fn new(temperature: f32, max_new_tokens: usize) -> Self {
        Self {
            temperature,
            top_p: 0.95,
            max_new_tokens,
        }
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Self::new(0.7, 512)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SynthesisConfig {
    /// Seed instructions, one per line.
    pub seeds: PathBuf,
    /// User queries: JSONL/JSON (see `queries.field`), ShareGPT or `messages` layouts;
    /// a local file or `hf://datasets/OWNER/NAME[/PATH]` (a `.json`/`.jsonl` file of a
    /// Hugging Face dataset, through the hub cache).
    pub queries_file: PathBuf,
    /// Instructions that already have verified functions (records of crossval's
    /// `instructions.jsonl`: `{id, instruction, funcs: [{source, accuracy}], cases}`).
    /// When set, the augment, funcs, crossval and backtranslate stages do not run and
    /// these instructions go straight to the queries stage.
    pub verified_instructions: Option<PathBuf>,
    /// Units of work per resumable part file.
    pub chunk: usize,
    pub augment: AugmentConfig,
    pub funcs: FuncsConfig,
    pub crossval: CrossvalConfig,
    pub backtranslate: BacktranslateConfig,
    pub queries: QueriesConfig,
    pub responses: ResponsesConfig,
    pub score: ScoreConfig,
    pub datasets: DatasetsConfig,
    pub prompts: PromptTemplates,
    /// Sandbox wall-clock deadline of one `evaluate` call (the released scripts use 5 s).
    pub exec_timeout_ms: u64,
}

impl Default for SynthesisConfig {
    fn default() -> Self {
        Self {
            seeds: PathBuf::from("data/seed_instructions.txt"),
            queries_file: PathBuf::from("data/queries.jsonl"),
            verified_instructions: None,
            chunk: 8,
            augment: AugmentConfig::default(),
            funcs: FuncsConfig::default(),
            crossval: CrossvalConfig::default(),
            backtranslate: BacktranslateConfig::default(),
            queries: QueriesConfig::default(),
            responses: ResponsesConfig::default(),
            score: ScoreConfig::default(),
            datasets: DatasetsConfig::default(),
            prompts: PromptTemplates::default(),
            exec_timeout_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Self-instruct prompts sampled (the paper: K = 100).
    pub rounds: usize,
    /// Instructions each prompt asks for (the released script asks for 50).
    pub per_round: usize,
    /// Keep the seeds themselves in the instruction set.
    pub include_seeds: bool,
    /// Word-set Jaccard similarity at or above which an instruction is a near-duplicate
    /// (of an earlier one or of a seed).
    pub max_similarity: f64,
    pub min_chars: usize,
    pub max_chars: usize,
    pub sampling: Sampling,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            rounds: 100,
            per_round: 50,
            include_seeds: true,
            max_similarity: 0.8,
            min_chars: 10,
            max_chars: 300,
            sampling: Sampling::new(0.7, 1024),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FuncsConfig {
    /// `{"func", "cases"}` samples per instruction.
    pub samples: usize,
    /// Accept "True"/"False" strings as case outputs. The released script compares them
    /// with booleans, so such cases never agree with a function; off reproduces that.
    pub string_case_outputs: bool,
    pub sampling: Sampling,
}

impl Default for FuncsConfig {
    fn default() -> Self {
        Self {
            samples: 8,
            string_case_outputs: true,
            sampling: Sampling::new(0.7, 768),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CrossvalConfig {
    /// Distinct loadable functions an instruction needs (paper: 3).
    pub min_funcs: usize,
    /// Distinct test cases an instruction needs (paper: 10).
    pub min_cases: usize,
    /// A function is kept when its accuracy on the kept cases reaches this (paper: 0.8).
    pub min_func_accuracy: f64,
    /// A case is kept when at least this many functions agree with it (paper: 1).
    pub min_case_agreement: usize,
    /// Instruction-level preference pairs: chosen case inputs need this pass rate.
    pub chosen_min_pass_rate: f64,
}

impl Default for CrossvalConfig {
    fn default() -> Self {
        Self {
            min_funcs: 3,
            min_cases: 10,
            min_func_accuracy: 0.8,
            min_case_agreement: 1,
            chosen_min_pass_rate: 0.5,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyChecker {
    /// Cosine similarity of MiniLM sentence embeddings.
    Minilm,
    /// The supervision model judges each back-translation against the original
    /// (prompt `judge`): consistent, neutral or contradiction.
    Judge,
    /// An NLI sequence-classification model (`nli_model`, BERT or DeBERTa-v2/v3): drop
    /// when every back-translation is classified as contradicting the original (the
    /// paper's filter).
    Nli,
    /// Keep every instruction (back-translations are still recorded).
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BacktranslateConfig {
    pub checker: ConsistencyChecker,
    /// The sentence-embedding model folder (BERT, safetensors, tokenizer.json).
    pub embedder: PathBuf,
    /// The NLI classifier folder for `checker = "nli"` (config.json with `id2label`,
    /// model.safetensors, tokenizer.json), e.g. a local copy of
    /// MoritzLaurer/mDeBERTa-v3-base-xnli-multilingual-nli-2mil7.
    pub nli_model: Option<PathBuf>,
    /// Keep an instruction when its best back-translation reaches this cosine
    /// similarity (docs/pipeline.md says how it was chosen).
    pub min_similarity: f32,
    /// Kept functions shown to the model (the released script shows up to 3).
    pub max_funcs: usize,
    pub sampling: Sampling,
    /// The `judge` checker's answers: greedy, and short since one word is asked for.
    pub judge_sampling: Sampling,
}

impl Default for BacktranslateConfig {
    fn default() -> Self {
        Self {
            checker: ConsistencyChecker::Minilm,
            embedder: PathBuf::from("models/all-MiniLM-L6-v2"),
            nli_model: None,
            min_similarity: 0.45,
            max_funcs: 3,
            sampling: Sampling::new(0.0, 256),
            judge_sampling: Sampling::new(0.0, 64),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueriesConfig {
    /// Queries paired with each instruction (paper: 16).
    pub per_instruction: usize,
    /// Dotted path of the query text in each JSON record; empty: auto-detect (`query`,
    /// `prompt`, `instruction`, `text`, a string line, ShareGPT `conversations`,
    /// `messages`).
    pub field: String,
    /// Paper's filter: 20 < characters < 300.
    pub min_chars: usize,
    pub max_chars: usize,
}

impl Default for QueriesConfig {
    fn default() -> Self {
        Self {
            per_instruction: 16,
            field: String::new(),
            min_chars: 20,
            max_chars: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesConfig {
    /// Responses per (query, instruction) (paper: K = 8).
    pub samples: usize,
    /// Keep a response whose pass rate is above this (the released script: > 0).
    pub keep_pass_rate_above: f64,
    pub sampling: Sampling,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        Self {
            samples: 8,
            keep_pass_rate_above: 0.0,
            sampling: Sampling::new(0.8, 512),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreConfig {
    /// Off: every response that passed its functions goes on unscored (for a supervisor
    /// too small to judge relevance; a 135M model's scores are noise).
    pub enabled: bool,
    /// Keep a response whose mean score is above this (the released script: > 8).
    pub keep_score_above: f64,
    pub sampling: Sampling,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keep_score_above: 8.0,
            sampling: Sampling::new(0.0, 384),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetsConfig {
    /// DPO chosen side: pass rate at or above this (paper: 0.5); rejected: pass rate 0.
    pub chosen_min_pass_rate: f64,
    /// Responses sampled per side when a side has two or more (paper: 2).
    pub per_side: usize,
}

impl Default for DatasetsConfig {
    fn default() -> Self {
        Self {
            chosen_min_pass_rate: 0.5,
            per_side: 2,
        }
    }
}

impl RunConfig {
    /// Reads a TOML file and applies `key.path=value` overrides (values parse as TOML,
    /// falling back to a plain string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&e.to_string())))?;
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        Self::from_table(table).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The config a table describes: the table laid over the defaults, so a partial
    /// section keeps its own algorithm's defaults (`[dpo.args] epochs = 1` leaves DPO's
    /// learning rate, not the generic one).
    pub fn from_table(table: toml::Table) -> Result<Self> {
        let mut merged = toml::Table::try_from(RunConfig::default()).expect("defaults serialize");
        overlay(&mut merged, table);
        let config: RunConfig = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", one_line(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let s = &self.synthesis;
        if s.chunk == 0 {
            bail!("synthesis.chunk must be at least 1");
        }
        for (name, value) in [
            ("synthesis.funcs.samples", s.funcs.samples),
            ("synthesis.responses.samples", s.responses.samples),
            (
                "synthesis.queries.per_instruction",
                s.queries.per_instruction,
            ),
            ("supervisor.batch", self.supervisor.batch),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        let bt = &s.backtranslate;
        if bt.checker == ConsistencyChecker::Nli && bt.nli_model.is_none() {
            bail!(
                "synthesis.backtranslate.checker = \"nli\" needs synthesis.backtranslate.nli_model"
            );
        }
        if !["auto", "cpu", "cuda"].contains(&self.model.device.as_str()) {
            bail!(
                "model.device = {:?}: expected \"auto\", \"cpu\" or \"cuda\"",
                self.model.device
            );
        }
        let sup = &self.supervisor;
        if sup.kind != SupervisorKind::SelfModel && sup.model.is_none() {
            bail!("supervisor.kind = \"local\" or \"openai\" needs supervisor.model");
        }
        if sup.kind == SupervisorKind::OpenAi && sup.base_url.is_none() {
            bail!("supervisor.kind = \"openai\" needs supervisor.base_url");
        }
        Ok(())
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

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
