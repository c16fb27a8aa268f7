//! The `[synthesis]` section of a run configuration: what every stage shares (inputs,
//! chunk size, prompts, sandbox deadline) and each stage's own config struct, which
//! lives beside its stage.

use crate::validation::Problems;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::augment::AugmentConfig;
use super::backtranslate::BacktranslateConfig;
use super::crossval::CrossvalConfig;
use super::datasets::DatasetsConfig;
use super::decontaminate::DecontaminateConfig;
use super::funcs::FuncsConfig;
use super::prompts::PromptTemplates;
use super::queries::QueriesConfig;
use super::responses::ResponsesConfig;
use super::score::ScoreConfig;

/// Sampling shared by the generating stages; each stage sets its own length.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
}

impl Sampling {
    /// Nucleus sampling at top-p 0.95, the stages' shared default.
    pub fn new(temperature: f32, max_new_tokens: usize) -> Self {
        Self {
            temperature,
            top_p: 0.95,
            max_new_tokens,
        }
    }
}

impl Sampling {
    /// Temperature ≥ 0 (0: greedy), top-p in (0, 1], at least one new token.
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        p.non_negative("temperature", f64::from(self.temperature));
        p.check(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p",
            self.top_p,
            "must be in (0, 1]",
        );
        p.at_least("max_new_tokens", self.max_new_tokens, 1);
        p
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
    pub decontaminate: DecontaminateConfig,
    pub datasets: DatasetsConfig,
    pub prompts: PromptTemplates,
    /// Sandbox wall-clock deadline of one `evaluate` call (the released scripts use 5 s).
    pub exec_timeout_ms: u64,
}

impl SynthesisConfig {
    /// The values the stages cannot run with, keys relative to `[synthesis]`.
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        p.at_least("chunk", self.chunk, 1);
        p.at_least("exec_timeout_ms", self.exec_timeout_ms as usize, 1);
        p.within(
            "augment.max_similarity",
            self.augment.max_similarity,
            0.0,
            1.0,
            false,
        );
        p.check(
            self.augment.min_chars <= self.augment.max_chars,
            "augment.min_chars",
            self.augment.min_chars,
            "must not exceed augment.max_chars",
        );
        p.at_least("funcs.samples", self.funcs.samples, 1);
        p.within(
            "crossval.min_func_accuracy",
            self.crossval.min_func_accuracy,
            0.0,
            1.0,
            false,
        );
        p.at_least("queries.per_instruction", self.queries.per_instruction, 1);
        p.check(
            self.queries.min_chars <= self.queries.max_chars,
            "queries.min_chars",
            self.queries.min_chars,
            "must not exceed queries.max_chars",
        );
        p.at_least("responses.samples", self.responses.samples, 1);
        p.at_least("datasets.per_side", self.datasets.per_side, 1);
        let samplings = [
            ("augment.sampling", &self.augment.sampling),
            ("funcs.sampling", &self.funcs.sampling),
            ("backtranslate.sampling", &self.backtranslate.sampling),
            (
                "backtranslate.judge_sampling",
                &self.backtranslate.judge_sampling,
            ),
            ("responses.sampling", &self.responses.sampling),
            ("score.sampling", &self.score.sampling),
        ];
        for (key, sampling) in samplings {
            p.nest(key, sampling.problems());
        }
        p
    }
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
            decontaminate: DecontaminateConfig::default(),
            datasets: DatasetsConfig::default(),
            prompts: PromptTemplates::default(),
            exec_timeout_ms: 5000,
        }
    }
}
