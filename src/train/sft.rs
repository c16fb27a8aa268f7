//! Supervised fine-tuning: mean negative log-likelihood of the response tokens.

use super::data::TokenBatch;
use super::policy::{policy_target_logprobs, target_logprobs_of, Loss, Policy};
use super::training_args::TrainingArgs;
use crate::model::decoder::Decoder;
use crate::model::lora::Adapters;
use crate::validation::Problems;
use anyhow::Result;
use candle_core::Tensor;

/// SFT settings (TRL's `SFTConfig` role).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    pub args: TrainingArgs,
}

impl Default for SftConfig {
    /// lr 2e-4: the usual LoRA SFT rate (QLoRA, LLaMA-Factory's LoRA examples use 1e-4 to
    /// 2e-4); the paper's 7e-6 is for full fine-tuning, where every weight moves. 3 epochs,
    /// linear decay after a 10% warm-up, as the paper's SFT schedule (which warms up 20
    /// steps of a much longer run).
    fn default() -> Self {
        Self {
            args: TrainingArgs {
                lr: 2e-4,
                epochs: 3,
                ..TrainingArgs::default()
            },
        }
    }
}

impl SftConfig {
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        p.nest("args", self.args.problems());
        p
    }
}

/// Log-probabilities of a batch's targets `[targets]` under the decoder.
pub fn batch_target_logprobs(
    decoder: &Decoder,
    batch: &TokenBatch,
    adapters: Adapters,
) -> Result<Tensor> {
    let hidden = decoder.forward_segments(&batch.input_ids, &batch.segments, adapters)?;
    target_logprobs_of(decoder, batch, &hidden)
}

/// Summed NLL of the batch's targets divided by `normalizer` (the number of targets in the
/// whole optimizer step, so accumulated micro-batches weigh each token equally, as
/// transformers does with `num_items_in_batch`). Returns the loss and the unnormalised sum.
pub fn sft_loss(
    decoder: &Decoder,
    batch: &TokenBatch,
    normalizer: usize,
    policy: Policy,
) -> Result<(Loss, f64)> {
    let (logps, checkpoints) = policy_target_logprobs(decoder, batch, policy)?;
    let nll_sum = logps.sum_all()?.neg()?;
    let value = nll_sum.to_scalar::<f32>()? as f64;
    let loss = (nll_sum / normalizer.max(1) as f64)?;
    Ok((Loss::new(loss, checkpoints), value))
}
