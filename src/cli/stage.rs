//! `autoif stage NAME --run DIR`: runs one synthesis stage of a run folder. A finished
//! stage is recomputed (and the later stages and phases reset); an interrupted one
//! resumes.

use crate::pipeline::Stage;
use crate::run::manifest::{RunFolder, StageState};
use crate::run::{execute, Phase};
use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// augment, funcs, crossval, backtranslate, queries, responses, score, decontaminate
    /// or datasets.
    pub name: String,
    /// The run folder (created by `autoif run`).
    #[arg(long)]
    pub run: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let stage = Stage::from_name(&args.name)?;
    let run = RunFolder::open(&args.run)?;
    let manifest = run.manifest()?;
    let state = manifest
        .stages
        .iter()
        .find(|s| s.name == stage.name())
        .map(|s| s.state)
        .with_context(|| {
            format!(
                "{}: no stage {} in this run",
                args.run.display(),
                stage.name()
            )
        })?;
    if state == StageState::Done {
        run.reset_from(stage.name())?;
    }
    execute(run, &[Phase::Synthesis(stage)])
}
