//! `metrics.jsonl`: one line per optimizer step, with TRL's metric names, appended as the
//! run goes so an interrupted run keeps what it logged.

use super::dpo::DpoStats;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`. The field order is the line's key order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepMetrics {
    /// The optimizer step, from 1.
    pub step: usize,
    /// Epochs done after this step, fractional.
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens of the step's sequences, padding excluded.
    pub tokens: usize,
    pub tokens_per_s: f64,
    /// Seconds since this process started training.
    pub elapsed_s: f64,
    /// DPO's reward metrics; absent from SFT lines.
    #[serde(flatten)]
    pub dpo: Option<DpoStepMetrics>,
}

/// TRL's DPO metric names: rewards/{chosen,rejected,margins,accuracies}, logps/*, plus
/// `kl`: the mean per-token log π − log π_ref over chosen and rejected replies (a proxy
/// for the policy's drift from the reference on the data).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DpoStepMetrics {
    #[serde(rename = "rewards/chosen")]
    pub chosen_reward: f64,
    #[serde(rename = "rewards/rejected")]
    pub rejected_reward: f64,
    #[serde(rename = "rewards/margins")]
    pub margin: f64,
    /// Share of pairs whose chosen reward exceeds the rejected one.
    #[serde(rename = "rewards/accuracies")]
    pub accuracy: f64,
    #[serde(rename = "logps/chosen")]
    pub chosen_logp: f64,
    #[serde(rename = "logps/rejected")]
    pub rejected_logp: f64,
    pub kl: f64,
}

impl DpoStepMetrics {
    /// Means over the pairs of one optimizer step.
    pub fn from_stats(s: &DpoStats) -> Self {
        let margins: Vec<f64> = s
            .chosen_rewards
            .iter()
            .zip(&s.rejected_rewards)
            .map(|(c, r)| c - r)
            .collect();
        let accuracy =
            margins.iter().filter(|&&m| m > 0.0).count() as f64 / margins.len().max(1) as f64;
        Self {
            chosen_reward: mean(&s.chosen_rewards),
            rejected_reward: mean(&s.rejected_rewards),
            margin: mean(&margins),
            accuracy,
            chosen_logp: mean(&s.policy_chosen_logps),
            rejected_logp: mean(&s.policy_rejected_logps),
            kl: s.log_ratio_sum / s.tokens.max(1) as f64,
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// `metrics.jsonl` for appending, flushed after every line. The file is (re)written
/// only when the first step is logged, so a run whose first step fails leaves no empty
/// file (and a resumed one leaves the interrupted run's file as it was).
pub struct MetricsLog {
    path: PathBuf,
    /// The lines kept from a resumed run, until the file is opened.
    kept: Vec<String>,
    file: Option<BufWriter<File>>,
}

/// The part of a logged line that decides whether a resumed run keeps it.
#[derive(Deserialize)]
struct LoggedStep {
    step: usize,
}

impl MetricsLog {
    /// Reads `out/metrics.jsonl`, keeping only the lines of steps up to `start_step` (a
    /// resumed run rewrites what the interrupted one logged after its checkpoint).
    pub fn open(out: &Path, start_step: usize) -> Result<Self> {
        let path = out.join(METRICS_FILE);
        let kept: Vec<String> = if start_step > 0 && path.exists() {
            std::fs::read_to_string(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?
                .lines()
                .filter(|l| {
                    serde_json::from_str::<LoggedStep>(l).is_ok_and(|s| s.step <= start_step)
                })
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            path,
            kept,
            file: None,
        })
    }

    pub fn append(&mut self, metrics: &StepMetrics) -> Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let created = File::create(&self.path)
                    .with_context(|| format!("{}: cannot write", self.path.display()))?;
                let mut file = BufWriter::new(created);
                for line in self.kept.drain(..) {
                    writeln!(file, "{line}")?;
                }
                self.file.insert(file)
            }
        };
        writeln!(file, "{}", serde_json::to_string(metrics)?)?;
        file.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: usize) -> StepMetrics {
        StepMetrics {
            step,
            epoch: 0.0,
            loss: 1.0,
            lr: 1e-4,
            grad_norm: 1.0,
            tokens: 1,
            tokens_per_s: 1.0,
            elapsed_s: 0.0,
            dpo: None,
        }
    }

    #[test]
    fn file_appears_with_the_first_step_and_keeps_resumed_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        let log = MetricsLog::open(dir.path(), 0).unwrap();
        drop(log);
        assert!(!path.exists(), "no step logged, no file");
        let mut log = MetricsLog::open(dir.path(), 0).unwrap();
        log.append(&step(1)).unwrap();
        log.append(&step(2)).unwrap();
        drop(log);
        let mut log = MetricsLog::open(dir.path(), 1).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        log.append(&step(2)).unwrap();
        let steps: Vec<usize> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<LoggedStep>(l).unwrap().step)
            .collect();
        assert_eq!(steps, [1, 2]);
    }
}
