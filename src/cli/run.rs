//! `autoif run`: the synthesis stages in order into a run folder, new (`--config`,
//! `--out`) or resumed (`--resume`). Training, evaluation and export phases join this
//! command later (issue 8) under the same config.

use super::common::ModelArgs;
use crate::config::{RunConfig, SupervisorKind};
use crate::generate::openai::{Endpoint, OpenAiBackend, OpenAiConfig};
use crate::generate::{Backend, EngineOptions, LocalEngine};
use crate::pipeline::funnel::{table, FunnelRow};
use crate::pipeline::run_dir::{RunDir, StageState};
use crate::pipeline::{augment, queries, Pipeline, Stage};
use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use std::path::PathBuf;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The run configuration (TOML).
    #[arg(long, conflicts_with = "resume", required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set synthesis.funcs.samples=4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", conflicts_with = "resume")]
    pub overrides: Vec<String>,
    /// The new run folder.
    #[arg(long, requires = "config")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from where it stopped.
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let run = match (&args.config, &args.resume) {
        (_, Some(dir)) => RunDir::open(dir)?,
        (Some(config_path), None) => {
            let Some(out) = &args.out else {
                bail!("--config needs --out DIR (the new run folder)");
            };
            let config = RunConfig::load(config_path, &args.overrides)?;
            // Check the inputs before anything is written.
            augment::read_seeds(&config.synthesis.seeds)?;
            let texts = queries::read_queries(
                &config.synthesis.queries_file,
                &config.synthesis.queries.field,
            )?;
            let (kept, _, _) = queries::filter_queries(texts, &config.synthesis.queries);
            if kept.is_empty() {
                bail!(
                    "{}: no query passes the length filter",
                    config.synthesis.queries_file.display()
                );
            }
            RunDir::create(out, &config, model_identity(&config), &Stage::names())?
        }
        (None, None) => bail!("pass --config FILE --out DIR, or --resume DIR"),
    };
    let manifest = run.manifest()?;
    let pending: Vec<Stage> = manifest
        .stages
        .iter()
        .filter(|s| s.state != StageState::Done)
        .map(|s| Stage::from_name(&s.name))
        .collect::<Result<_>>()?;
    execute(run, manifest.config, &pending)?;
    Ok(())
}

/// The OpenAI-compatible supervisor: chat completions, so the server applies the
/// served model's own chat template.
fn remote_backend(config: &RunConfig) -> Result<OpenAiBackend> {
    let sup = &config.supervisor;
    let openai = OpenAiConfig {
        base_url: sup.base_url.clone().unwrap_or_default(),
        model: config.supervisor_model().to_string(),
        api_key_env: sup.api_key_env.clone(),
        endpoint: Endpoint::Chat,
        max_concurrency: sup.max_concurrency,
        ..OpenAiConfig::default()
    };
    Ok(OpenAiBackend::new(openai, None)?.with_progress(true))
}

/// What the manifest records about the supervision model.
pub(super) fn model_identity(config: &RunConfig) -> serde_json::Value {
    let name = config.supervisor_model();
    let size = std::fs::metadata(name)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    json!({"supervisor": name, "trained": config.model.path, "file_bytes": size})
}

/// Runs `stages` in order, loading the supervision model only when one generates, and
/// prints the funnel of the whole run.
pub(super) fn execute(run: RunDir, config: RunConfig, stages: &[Stage]) -> Result<()> {
    let generates = stages.iter().any(|s| s.generates());
    let mut remote = if generates && config.supervisor.kind == SupervisorKind::OpenAi {
        Some(remote_backend(&config)?)
    } else {
        None
    };
    let model = if generates && remote.is_none() {
        Some(
            ModelArgs {
                model: config.supervisor_model().to_string(),
                device: config.model.device.clone(),
                adapter: None,
            }
            .load()?,
        )
    } else {
        None
    };
    let mut engine = model.as_ref().map(|m| {
        LocalEngine::new(
            m,
            EngineOptions {
                max_batch: config.supervisor.batch,
                ..EngineOptions::default()
            },
        )
    });
    let backend = match (&mut remote, &mut engine) {
        (Some(r), _) => Some(r as &mut dyn Backend),
        (None, Some(e)) => Some(e as &mut dyn Backend),
        (None, None) => None,
    };
    let root = run.root().to_path_buf();
    let mut pipeline = Pipeline::new(run, config, backend);
    for &stage in stages {
        eprintln!("stage {}", stage.name());
        pipeline.run_stage(stage)?;
    }
    let rows: Vec<FunnelRow> = pipeline
        .run
        .manifest()?
        .stages
        .into_iter()
        .flat_map(|s| s.funnel)
        .collect();
    eprint!("{}", table(&rows));
    eprintln!("run folder: {}", root.display());
    Ok(())
}
