//! One entry point per training job, shared by `autoif train` and `autoif run`: the data
//! is read (before any model is loaded, so a bad file fails fast), then tokenized for the
//! model and trained on. Each caller keeps its own policy for data that tokenizing drops
//! or empties: the CLI reports and refuses, the loop records a funnel row and skips.

use super::adapters::merge_adapters;
use super::data::{
    parse_preferences, parse_sft, read_records, tokenize_preferences, tokenize_sft, Conversation,
    DataFormat, PreferencePair,
};
use super::held_out::{score_held_out, split_by_prompt, HeldOutScores, HELD_OUT_FILE};
use super::online_dpo::{run_online_dpo, IterationReport, OnlineDpoConfig, OnlineOptions};
use super::trainer::{train, TrainingOptions, TrainingOutcome};
use super::{DpoConfig, SftConfig, TrainingJob, VerifiedPrompt};
use crate::io::{read_json_records, write_atomic};
use crate::model::Model;
use crate::verify::{Sandbox, SandboxOptions};
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Training items read from a data file: SFT conversations or preference pairs.
pub struct TrainingData<T> {
    pub path: PathBuf,
    pub items: Vec<T>,
}

pub type SftData = TrainingData<Conversation>;
pub type PreferenceData = TrainingData<PreferencePair>;

/// An item type of a training data file and how records become items.
pub trait FromRecords: Sized {
    fn from_records(records: &[Value], format: DataFormat, path: &Path) -> Result<Vec<Self>>;
}

impl FromRecords for Conversation {
    fn from_records(records: &[Value], format: DataFormat, path: &Path) -> Result<Vec<Self>> {
        parse_sft(records, format, path)
    }
}

impl FromRecords for PreferencePair {
    fn from_records(records: &[Value], format: DataFormat, path: &Path) -> Result<Vec<Self>> {
        parse_preferences(records, format, path)
    }
}

impl<T: FromRecords> TrainingData<T> {
    /// The records of `path` in `format`; a file without records is refused.
    pub fn read(path: &Path, format: DataFormat) -> Result<Self> {
        Self::parse(path, &read_records(path)?, format)
    }

    /// A data set the synthesis wrote (layout detected per record): empty when nothing
    /// survived its filters.
    pub fn read_dataset(path: &Path) -> Result<Self> {
        Self::parse(path, &read_json_records(path)?, DataFormat::Auto)
    }

    fn parse(path: &Path, records: &[Value], format: DataFormat) -> Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            items: T::from_records(records, format, path)?,
        })
    }
}

/// Items tokenizing kept, and those it dropped because no response token fit within
/// `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataCounts {
    pub kept: usize,
    pub dropped: usize,
}

/// What a training job did.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub data: DataCounts,
    /// `None` when tokenizing left no item: nothing was trained or written.
    pub training: Option<TrainingOutcome>,
    /// DPO with `held_out`: the held-out pairs' scores after training.
    pub held_out: Option<HeldOutScores>,
}

/// Trains a fresh LoRA adapter with SFT on `data`, on the weights with any attached
/// adapter folded in. `check_data` sees the counts once the data is tokenized, before
/// training; its error ends the job.
pub fn train_sft(
    model: &mut Model,
    data: &SftData,
    config: &SftConfig,
    options: &TrainingOptions,
    check_data: impl FnOnce(DataCounts) -> Result<()>,
) -> Result<JobOutcome> {
    merge_adapters(&mut model.decoder)?;
    let (examples, dropped) = tokenize_sft(model, &data.items, config.args.max_len)
        .with_context(|| data.path.display().to_string())?;
    let job = TrainingJob::Sft {
        examples: &examples,
        config,
    };
    train_checked(model, &job, examples.len(), dropped, options, check_data)
}

/// Trains a fresh LoRA adapter with DPO on `data`. Any attached adapter (the SFT one) is
/// folded into the weights first, so the reference (adapters off) is that model. With
/// `held_out`, the held-out prompts' pairs are scored after training (`held_out.json`).
/// `check_data` as for `train_sft`.
pub fn train_dpo(
    model: &mut Model,
    data: &PreferenceData,
    config: &DpoConfig,
    options: &TrainingOptions,
    check_data: impl FnOnce(DataCounts) -> Result<()>,
) -> Result<JobOutcome> {
    merge_adapters(&mut model.decoder)?;
    let (trained, held) = split_by_prompt(data.items.clone(), config.held_out, config.args.seed);
    let tokenize = |items: &[PreferencePair]| {
        tokenize_preferences(model, items, config.args.max_len)
            .with_context(|| data.path.display().to_string())
    };
    let (pairs, dropped) = tokenize(&trained)?;
    let (held, held_dropped) = tokenize(&held)?;
    let job = TrainingJob::Dpo {
        pairs: &pairs,
        config,
    };
    let mut outcome = train_checked(
        model,
        &job,
        pairs.len(),
        dropped + held_dropped,
        options,
        check_data,
    )?;
    if outcome.training.is_some() && !held.is_empty() {
        let scores = score_held_out(&model.decoder, &held, &config.args, config.beta)?;
        write_atomic(
            &options.out.join(HELD_OUT_FILE),
            serde_json::to_string_pretty(&scores)?.as_bytes(),
        )?;
        outcome.held_out = Some(scores);
    }
    Ok(outcome)
}

fn train_checked(
    model: &mut Model,
    job: &TrainingJob,
    kept: usize,
    dropped: usize,
    options: &TrainingOptions,
    check_data: impl FnOnce(DataCounts) -> Result<()>,
) -> Result<JobOutcome> {
    let data = DataCounts { kept, dropped };
    check_data(data)?;
    let training = match kept {
        0 => None,
        _ => Some(train(&mut model.decoder, job, options)?),
    };
    Ok(JobOutcome {
        data,
        training,
        held_out: None,
    })
}

/// Online DPO on `prompts`, grading samples in a sandbox whose calls each get
/// `exec_timeout`.
pub fn train_online_dpo(
    model: &mut Model,
    prompts: &[VerifiedPrompt],
    config: &OnlineDpoConfig,
    exec_timeout: Duration,
    options: &OnlineOptions,
) -> Result<Vec<IterationReport>> {
    let sandbox = Sandbox::new(SandboxOptions {
        timeout: exec_timeout,
        ..SandboxOptions::default()
    })?;
    run_online_dpo(
        model,
        prompts,
        config,
        &mut |jobs| sandbox.run(jobs),
        options,
    )
}
