//! What one call of the trainer trains on: tokenized data with its algorithm's settings.

use super::data::{Tokenized, TokenizedPair};
use super::dpo::DpoConfig;
use super::sft::SftConfig;
use super::training_args::TrainingArgs;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The data to train on, with the algorithm's settings.
pub enum TrainingJob<'a> {
    Sft {
        examples: &'a [Tokenized],
        config: &'a SftConfig,
    },
    Dpo {
        pairs: &'a [TokenizedPair],
        config: &'a DpoConfig,
    },
}

impl TrainingJob<'_> {
    pub fn args(&self) -> &TrainingArgs {
        match self {
            TrainingJob::Sft { config, .. } => &config.args,
            TrainingJob::Dpo { config, .. } => &config.args,
        }
    }

    /// The algorithm's name, as checkpoints and `training_config.json` record it.
    pub fn name(&self) -> &'static str {
        match self {
            TrainingJob::Sft { .. } => "sft",
            TrainingJob::Dpo { .. } => "dpo",
        }
    }

    /// Tokens of each item: an SFT sequence, or a pair's two sequences together.
    pub fn item_tokens(&self) -> Vec<usize> {
        match self {
            TrainingJob::Sft { examples, .. } => examples.iter().map(|e| e.ids.len()).collect(),
            TrainingJob::Dpo { pairs, .. } => pairs
                .iter()
                .map(|p| p.chosen.ids.len() + p.rejected.ids.len())
                .collect(),
        }
    }

    /// The settings that decide the trajectory (checkpoint frequency does not), as JSON.
    pub fn trajectory_settings(&self) -> Value {
        let mut v = match self {
            TrainingJob::Sft { config, .. } => serde_json::to_value(config),
            TrainingJob::Dpo { config, .. } => serde_json::to_value(config),
        }
        .expect("configs serialize");
        v["args"]["save_every"] = Value::Null;
        v
    }

    /// A hash of the tokenized data, so a resume on other data is refused.
    pub fn data_fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut add = |t: &Tokenized| {
            for (&id, &label) in t.ids.iter().zip(&t.labels) {
                h.update(id.to_le_bytes());
                h.update([label as u8]);
            }
            h.update(u32::MAX.to_le_bytes());
        };
        match self {
            TrainingJob::Sft { examples, .. } => examples.iter().for_each(&mut add),
            TrainingJob::Dpo { pairs, .. } => pairs.iter().for_each(|p| {
                add(&p.chosen);
                add(&p.rejected);
            }),
        }
        format!("{:x}", h.finalize())
    }
}
