//! The AutoIF data-synthesis stages (DESIGN.md §1, steps 1–7, plus data set files),
//! each a function from artifacts in the run folder to new artifacts there, with
//! provenance ids and funnel counts. `docs/pipeline.md` lists every file and rule.

pub mod augment;
pub mod backtranslate;
pub mod crossval;
pub mod datasets;
pub mod funcs;
pub mod funnel;
pub mod nli;
pub mod parse;
pub mod prompts;
pub mod queries;
pub mod responses;
pub mod run_dir;
pub mod score;
pub mod similarity;

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

use crate::config::{RunConfig, Sampling};
use crate::generate::unit_seed;
use crate::generate::{Backend, Prompt, Request, SamplingParams};
pub use crate::verify::{pass_rate, Execute};
use crate::verify::{Job, Sandbox, SandboxOptions, Verdict};
use funnel::FunnelRow;
use run_dir::RunDir;

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
    Datasets,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Augment,
        Stage::Funcs,
        Stage::Crossval,
        Stage::Backtranslate,
        Stage::Queries,
        Stage::Responses,
        Stage::Score,
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
}

/// Everything a stage needs: the run folder, the resolved config, the generation
/// backend (absent when only non-generating stages run) and a lazily started sandbox.
pub struct Pipeline<'a> {
    pub run: RunDir,
    pub config: RunConfig,
    backend: Option<&'a mut (dyn Backend + 'a)>,
    sandbox: Option<Sandbox>,
}

impl<'a> Pipeline<'a> {
    pub fn new(
        run: RunDir,
        config: RunConfig,
        backend: Option<&'a mut (dyn Backend + 'a)>,
    ) -> Self {
        Self {
            run,
            config,
            backend,
            sandbox: None,
        }
    }

    /// Runs one stage: marks it running, computes it (reusing finished parts), records
    /// its funnel and timing, and marks it done.
    pub fn run_stage(&mut self, stage: Stage) -> Result<Vec<FunnelRow>> {
        let started = Instant::now();
        self.run.mark_running(stage.name())?;
        let rows = match stage {
            Stage::Augment => augment::run(self),
            Stage::Funcs => funcs::run(self),
            Stage::Crossval => crossval::run(self),
            Stage::Backtranslate => backtranslate::run(self),
            Stage::Queries => queries::run(self),
            Stage::Responses => responses::run(self),
            Stage::Score => score::run(self),
            Stage::Datasets => datasets::run(self),
        }
        .with_context(|| format!("stage {}", stage.name()))?;
        self.run
            .mark_done(stage.name(), rows.clone(), started.elapsed().as_secs_f64())?;
        Ok(rows)
    }

    /// Samples `n` texts for each (unit key, prompt) with a seed fixed by the key, so a
    /// unit gives the same texts whenever and with whatever else it runs.
    pub fn generate(
        &mut self,
        stage: &str,
        prompts: &[(String, String)],
        n: usize,
        sampling: &Sampling,
    ) -> Result<Vec<Vec<String>>> {
        let seed = self.config.seed;
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
            out[c.request_index].push(c.text);
        }
        if out.iter().any(|texts| texts.len() != n) {
            bail!("the backend returned a wrong number of completions");
        }
        Ok(out)
    }

    /// Runs functions on inputs in the sandbox (started on first use).
    pub fn execute(&mut self, jobs: &[Job]) -> Result<Vec<Vec<Verdict>>> {
        if self.sandbox.is_none() {
            self.sandbox = Some(Sandbox::new(SandboxOptions {
                timeout: Duration::from_millis(self.config.synthesis.exec_timeout_ms),
                ..SandboxOptions::default()
            })?);
        }
        self.sandbox.as_ref().expect("just started").run(jobs)
    }
}

/// A stage that ends with nothing says so; the run goes on (later stages see empty
/// inputs and the funnel shows where everything was dropped).
fn warn_empty(stage: &str, what: &str) {
    eprintln!("warning: stage {stage}: {what}");
}
