//! `autoif run`: the whole loop into a run folder, new (`--config`, `--out`) or resumed
//! (`--resume`). The loop itself is `crate::run`.

use super::common::GpuMemoryArgs;
use crate::config::RunConfig;
use crate::model::LoadOptions;
use crate::run::manifest::RunFolder;
use crate::run::{check_inputs, execute, pending, training_shapes, Phase};
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
    #[command(flatten)]
    pub memory: GpuMemoryArgs,
}

pub fn run(args: Args) -> Result<()> {
    let run = match (&args.config, &args.resume) {
        (_, Some(dir)) => {
            let run = RunFolder::open(dir)?;
            let config = run.manifest()?.config;
            let problems = config.problems();
            if !problems.is_empty() {
                let manifest = run.layout().manifest();
                bail!(problems.lines(|key| format!("{}: {key}", manifest.display())));
            }
            let phases = pending(&run)?;
            ensure_fits(&args.memory, &config, &phases)?;
            if !phases.is_empty() {
                check_inputs(&config, &phases)?;
            }
            run
        }
        (Some(config_path), None) => {
            let Some(out) = &args.out else {
                bail!("--config needs --out DIR (the new run folder)");
            };
            let config = RunConfig::load(config_path, &args.overrides)?;
            // Check the memory (from config.json alone) and the inputs before anything is
            // written.
            let phases = Phase::plan(&config);
            ensure_fits(&args.memory, &config, &phases)?;
            check_inputs(&config, &phases)?;
            let names: Vec<&str> = phases.iter().map(|p| p.name()).collect();
            RunFolder::create(out, &config, model_identity(&config), &names)?
        }
        (None, None) => bail!("pass --config FILE --out DIR, or --resume DIR"),
    };
    let phases = pending(&run)?;
    execute(run, &phases)
}

/// Refuses the run when a training phase asks for a base its device cannot hold (an int8
/// base off the CPU) or when the largest piece of its training `phases` will not fit the
/// GPU memory (`--gpu-memory`, or the CUDA device's), before the model is loaded.
fn ensure_fits(memory: &GpuMemoryArgs, config: &RunConfig, phases: &[Phase]) -> Result<()> {
    let trains = |p: &Phase| matches!(p, Phase::Sft | Phase::Dpo | Phase::OnlineDpo);
    if !phases.iter().any(trains) {
        // Nothing to plan, and no device to ask for (a run may generate elsewhere).
        return Ok(());
    }
    let options = LoadOptions::for_device(&config.model.device)?;
    for (phase, args, key) in [
        (Phase::Sft, &config.sft.args, "sft.args.base_dtype"),
        (Phase::Dpo, &config.dpo.args, "dpo.args.base_dtype"),
        (
            Phase::OnlineDpo,
            &config.online_dpo.dpo.args,
            "online_dpo.dpo.args.base_dtype",
        ),
    ] {
        if phases.contains(&phase) {
            args.check_base_dtype(&options.device, options.dtype, key)?;
        }
    }
    let shapes = training_shapes(config, phases, options.dtype);
    memory.ensure_fits(
        &config.model.path,
        &options.device,
        &shapes,
        "max_batch_tokens, batch_size or max_len of the training sections",
    )
}

/// What the manifest records about the models.
fn model_identity(config: &RunConfig) -> serde_json::Value {
    let name = config.supervisor_model();
    let size = std::fs::metadata(name)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    json!({"supervisor": name, "trained": config.model.path, "file_bytes": size})
}
