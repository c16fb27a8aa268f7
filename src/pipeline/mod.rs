//! The AutoIF data-synthesis stages (DESIGN.md §1, steps 1–7, plus decontamination and
//! data set files), each a function from artifacts in the run folder to new artifacts
//! there, with provenance ids and funnel counts. `docs/pipeline.md` lists every file and
//! rule.

pub mod augment;
pub mod backtranslate;
pub mod compose;
pub mod config;
pub mod crossval;
pub mod datasets;
pub mod decontaminate;
pub mod funcs;
pub mod funnel;
pub mod ngrams;
pub mod nli;
pub mod parse;
pub mod prompts;
pub mod queries;
pub mod responses;
pub mod score;
pub mod similarity;
pub mod stage_files;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::time::Duration;

use crate::generate::unit_seed;
use crate::generate::{Backend, FinishReason, Prompt, Request, SamplingParams};
pub use crate::verify::{pass_rate, Execute};
use crate::verify::{FunctionRun, Sandbox, SandboxOptions, Verdict};
use config::{Sampling, SynthesisConfig};
use funnel::FunnelRow;
use stage_files::StageFiles;

/// The stages in execution order, by their stable names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Augment,
    Funcs,
    Crossval,
    Backtranslate,
    Queries,
    Responses,
    Score,
    Decontaminate,
    Datasets,
}

impl Stage {
    pub const ALL: [Stage; 9] = [
        Stage::Augment,
        Stage::Funcs,
        Stage::Crossval,
        Stage::Backtranslate,
        Stage::Queries,
        Stage::Responses,
        Stage::Score,
        Stage::Decontaminate,
        Stage::Datasets,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Augment => "augment",
            Stage::Funcs => "funcs",
            Stage::Crossval => "crossval",
            Stage::Backtranslate => "backtranslate",
            Stage::Queries => "queries",
            Stage::Responses => "responses",
            Stage::Score => "score",
            Stage::Decontaminate => "decontaminate",
            Stage::Datasets => "datasets",
        }
    }

    pub fn from_name(name: &str) -> Result<Stage> {
        Stage::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .with_context(|| {
                let names: Vec<_> = Stage::ALL.iter().map(|s| s.name()).collect();
                format!("unknown stage `{name}` (stages: {})", names.join(", "))
            })
    }

    /// Whether the stage asks the model for text.
    pub fn generates(self) -> bool {
        matches!(
            self,
            Stage::Augment | Stage::Funcs | Stage::Backtranslate | Stage::Responses | Stage::Score
        )
    }

    pub fn names() -> Vec<&'static str> {
        Stage::ALL.iter().map(|s| s.name()).collect()
    }

    /// The stages whose files this stage reads, in the order it reads them. Verified
    /// instructions from a file (`verified_instructions`) replace backtranslate's.
    pub fn reads(self, synthesis: &SynthesisConfig) -> Vec<Stage> {
        let instructions = match synthesis.verified_instructions {
            Some(_) => None,
            None => Some(Stage::Backtranslate),
        };
        match self {
            Stage::Augment => Vec::new(),
            Stage::Funcs => vec![Stage::Augment],
            Stage::Crossval => vec![Stage::Funcs],
            Stage::Backtranslate => vec![Stage::Crossval],
            Stage::Queries => instructions.into_iter().collect(),
            Stage::Responses => vec![Stage::Queries],
            Stage::Score => vec![Stage::Responses],
            Stage::Decontaminate => instructions
                .into_iter()
                .chain([Stage::Queries, Stage::Responses, Stage::Score])
                .collect(),
            Stage::Datasets => vec![Stage::Decontaminate],
        }
    }
}

/// Everything a stage needs: its files, the run seed, the synthesis config, the
/// generation backend (absent when only non-generating stages run) and a lazily started
/// sandbox.
pub struct Pipeline<'a> {
    pub files: StageFiles,
    /// Base of every generation seed and sampling decision.
    pub seed: u64,
    pub synthesis: SynthesisConfig,
    backend: Option<&'a mut (dyn Backend + 'a)>,
    sandbox: Option<Sandbox>,
}

impl<'a> Pipeline<'a> {
    pub fn new(
        files: StageFiles,
        seed: u64,
        synthesis: SynthesisConfig,
        backend: Option<&'a mut (dyn Backend + 'a)>,
    ) -> Self {
        Self {
            files,
            seed,
            synthesis,
            backend,
            sandbox: None,
        }
    }

    /// Computes one stage (reusing finished parts) and returns its funnel. Recording the
    /// stage in the run manifest is the caller's (`crate::run::manifest`).
    pub fn run_stage(&mut self, stage: Stage) -> Result<Vec<FunnelRow>> {
        match stage {
            Stage::Augment => augment::run(self),
            Stage::Funcs => funcs::run(self),
            Stage::Crossval => crossval::run(self),
            Stage::Backtranslate => backtranslate::run(self),
            Stage::Queries => queries::run(self),
            Stage::Responses => responses::run(self),
            Stage::Score => score::run(self),
            Stage::Decontaminate => decontaminate::run(self),
            Stage::Datasets => datasets::run(self),
        }
        .with_context(|| format!("stage {}", stage.name()))
    }

    /// Samples `n` texts for each (unit key, prompt) with a seed fixed by the key, so a
    /// unit gives the same texts whenever and with whatever else it runs. Each text
    /// keeps its finish reason: a text cut by `max_new_tokens` is not a finished answer.
    pub fn generate(
        &mut self,
        stage: &str,
        prompts: &[(String, String)],
        n: usize,
        sampling: &Sampling,
    ) -> Result<Vec<Vec<Generated>>> {
        let seed = self.seed;
        let backend = self
            .backend
            .as_deref_mut()
            .context("this stage needs a generation backend")?;
        let requests: Vec<Request> = prompts
            .iter()
            .map(|(key, text)| Request {
                prompt: Prompt::user(text.clone()),
                n,
                params: SamplingParams {
                    temperature: sampling.temperature,
                    top_p: sampling.top_p,
                    max_new_tokens: sampling.max_new_tokens,
                    seed: unit_seed(seed, stage, key),
                    ..SamplingParams::default()
                },
            })
            .collect();
        let completions = backend.generate(&requests)?;
        let mut out = vec![Vec::with_capacity(n); prompts.len()];
        for c in completions {
            out[c.request_index].push(Generated {
                text: c.text,
                finish_reason: c.finish_reason,
            });
        }
        if out.iter().any(|texts| texts.len() != n) {
            bail!("the backend returned a wrong number of completions");
        }
        Ok(out)
    }

    /// `generate` for stages whose records keep the text alone: a cut function answer,
    /// back-translation or judgement fails its parser and is counted there.
    pub fn generate_texts(
        &mut self,
        stage: &str,
        prompts: &[(String, String)],
        n: usize,
        sampling: &Sampling,
    ) -> Result<Vec<Vec<String>>> {
        let generated = self.generate(stage, prompts, n, sampling)?;
        Ok(generated
            .into_iter()
            .map(|texts| texts.into_iter().map(|g| g.text).collect())
            .collect())
    }

    /// Runs functions on inputs in the sandbox (started on first use).
    pub fn execute(&mut self, jobs: &[FunctionRun]) -> Result<Vec<Vec<Verdict>>> {
        if self.sandbox.is_none() {
            self.sandbox = Some(Sandbox::new(SandboxOptions {
                timeout: Duration::from_millis(self.synthesis.exec_timeout_ms),
                ..SandboxOptions::default()
            })?);
        }
        self.sandbox.as_ref().expect("just started").run(jobs)
    }
}

/// One generated text and why generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    pub finish_reason: FinishReason,
}

impl Generated {
    /// A text that ended on its own (end of sequence or a stop string).
    pub fn finished(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            finish_reason: FinishReason::Stop,
        }
    }
}

/// A stage that ends with nothing says so; the run goes on (later stages see empty
/// inputs and the funnel shows where everything was dropped).
fn warn_empty(stage: &str, what: &str) {
    eprintln!("warning: stage {stage}: {what}");
}

/// A short stable id from text, for provenance (`i3fa9...`).
pub fn short_id(prefix: &str, text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!("{prefix}{:x}", digest)[..prefix.len() + 10].to_string()
}
