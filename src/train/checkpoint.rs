//! `checkpoint-N/` folders: the adapter (PEFT layout), the optimizer moments and
//! `trainer_state.json`, which is written last so a folder that has it is complete.
//! Everything random in training is a function of the seed and the step, so these are
//! all a resumed run needs to continue bit for bit.

use super::job::TrainingJob;
use super::optim::AdamW;
use crate::model::adapter_file::save_adapter;
use crate::model::decoder::Decoder;
use crate::model::lora::LoraConfig;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// `trainer_state.json`: which job a checkpoint belongs to and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// `sft` or `dpo`.
    pub algorithm: String,
    /// Optimizer steps done.
    pub step: usize,
    pub total_steps: usize,
    /// `TrainingJob::data_fingerprint` of the data trained on.
    pub data_fingerprint: String,
    /// `TrainingJob::trajectory_settings` of the run.
    pub settings: Value,
}

impl CheckpointState {
    pub fn new(job: &TrainingJob, data_fingerprint: &str, step: usize, total_steps: usize) -> Self {
        Self {
            algorithm: job.name().to_string(),
            step,
            total_steps,
            data_fingerprint: data_fingerprint.to_string(),
            settings: job.trajectory_settings(),
        }
    }

    /// Reads the state of the checkpoint folder `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: cannot read (not a complete checkpoint folder)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a trainer state", path.display()))
    }

    /// Refuses a checkpoint of another algorithm, other data, other settings or another
    /// schedule than `expected`'s; `dir` is named in the error.
    pub fn check_resumes(&self, expected: &CheckpointState, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let p = path.display();
        if self.algorithm != expected.algorithm {
            bail!(
                "{p}: a {:?} checkpoint cannot resume {}",
                self.algorithm,
                expected.algorithm
            );
        }
        if self.data_fingerprint != expected.data_fingerprint {
            bail!("{p}: the checkpoint was trained on other data (or tokenized differently)");
        }
        if self.settings != expected.settings {
            bail!(
                "{p}: the checkpoint's training settings differ from this run's: {}",
                self.settings
            );
        }
        if self.total_steps != expected.total_steps || self.step > expected.total_steps {
            bail!(
                "{p}: the checkpoint's schedule does not match this run's {} steps",
                expected.total_steps
            );
        }
        Ok(())
    }
}

/// Writes `checkpoint-N` into `dir`: adapter, optimizer moments, then the state.
pub fn write_checkpoint(
    dir: &Path,
    decoder: &Decoder,
    lora: &LoraConfig,
    base_model: &str,
    optimizer: &AdamW,
    state: &CheckpointState,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    save_adapter(decoder, lora, base_model, dir)?;
    let tensors: HashMap<String, Tensor> = optimizer.state_tensors().into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join(OPTIMIZER_FILE))
        .with_context(|| format!("{}: cannot write", dir.join(OPTIMIZER_FILE).display()))?;
    // Written last: a folder with the state file is a complete checkpoint.
    std::fs::write(dir.join(STATE_FILE), serde_json::to_string_pretty(state)?)
        .with_context(|| format!("{}: cannot write", dir.join(STATE_FILE).display()))?;
    Ok(())
}

/// Restores the optimizer moments of the checkpoint folder `dir`, saved after `step`
/// steps.
pub fn load_optimizer_state(
    dir: &Path,
    optimizer: &mut AdamW,
    step: usize,
    device: &candle_core::Device,
) -> Result<()> {
    let path = dir.join(OPTIMIZER_FILE);
    let tensors = candle_core::safetensors::load(&path, device)
        .with_context(|| format!("{}: cannot read the optimizer state", path.display()))?;
    optimizer
        .load_state(&tensors, step)
        .with_context(|| format!("{}", path.display()))
}

/// The `checkpoint-N` folder of `out` with the largest N that holds a complete
/// checkpoint.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    if !out.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in std::fs::read_dir(out).with_context(|| format!("{}", out.display()))? {
        let path = entry?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(step) = step {
            if path.join(STATE_FILE).is_file() && best.as_ref().is_none_or(|b| step > b.0) {
                best = Some((step, path));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}
