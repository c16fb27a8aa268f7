//! Direct preference optimisation: TRL's sigmoid loss with β and label smoothing
//! (conservative DPO), or IPO. The reference model is the same weights with adapters off,
//! so it costs no memory; before DPO an SFT adapter is merged into the weights so the
//! reference is the SFT model. The reference log-probabilities are computed in every step
//! or, with `precompute_ref_log_probs`, once before training (a forward pass per step
//! saved, as TRL's option of the same name).

use super::data::{length_grouped_batches, split_by_tokens, TokenBatch, Tokenized, TokenizedPair};
use super::optim::ScheduleKind;
use super::policy::{policy_target_logprobs, Loss, Policy};
use super::sft::batch_target_logprobs;
use super::training_args::TrainingArgs;
use crate::model::decoder::Decoder;
use crate::model::lora::Adapters;
use crate::model::ops::projection::project;
use crate::validation::Problems;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossType {
    /// −log σ(β·h), smoothed: (1−ε)·(−log σ(β·h)) + ε·(−log σ(−β·h)).
    Sigmoid,
    /// (h − 1/(2β))² on per-token average log-probabilities.
    Ipo,
}

/// DPO settings (TRL's `DPOConfig` role).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoConfig {
    pub args: TrainingArgs,
    pub beta: f64,
    pub loss_type: DpoLossType,
    pub label_smoothing: f64,
    /// Score every pair under the reference once before training and reuse the sums,
    /// instead of a reference forward pass in every step.
    #[serde(default)]
    pub precompute_ref_log_probs: bool,
    /// Share of prompts whose pairs are kept out of training and scored after it
    /// (`held_out.json`: reward accuracy on pairs the policy never saw); 0: none.
    #[serde(default)]
    pub held_out: f64,
}

impl Default for DpoConfig {
    /// β 0.1 (TRL's default; the paper's 0.3 is one flag away). lr 5e-5: LoRA DPO recipes
    /// run 5e-6 to 5e-5, the paper's 5e-7 is for a full fine-tune and barely moves a rank-16
    /// adapter. Cosine decay after 10% warm-up and 2 epochs, as the paper.
    fn default() -> Self {
        Self {
            args: TrainingArgs {
                lr: 5e-5,
                epochs: 2,
                schedule: ScheduleKind::Cosine,
                ..TrainingArgs::default()
            },
            beta: 0.1,
            loss_type: DpoLossType::Sigmoid,
            label_smoothing: 0.0,
            precompute_ref_log_probs: false,
            held_out: 0.0,
        }
    }
}

impl DpoConfig {
    /// The training args' problems under `args`, and the loss's own: β > 0, label
    /// smoothing in [0, 0.5) (at 0.5 the labels carry no preference).
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        p.nest("args", self.args.problems());
        p.positive("beta", self.beta);
        p.within("label_smoothing", self.label_smoothing, 0.0, 0.5, true);
        p.within("held_out", self.held_out, 0.0, 1.0, true);
        p
    }
}

/// Per-pair values of one micro-batch, detached, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DpoStats {
    pub losses: Vec<f64>,
    pub chosen_rewards: Vec<f64>,
    pub rejected_rewards: Vec<f64>,
    pub policy_chosen_logps: Vec<f64>,
    pub policy_rejected_logps: Vec<f64>,
    /// Σ (log π − log π_ref) over every chosen and rejected token, and the token count.
    pub log_ratio_sum: f64,
    pub tokens: usize,
}

impl DpoStats {
    /// Adds another micro-batch's values (the pieces of one optimizer step).
    pub fn extend(&mut self, other: DpoStats) {
        self.losses.extend(other.losses);
        self.chosen_rewards.extend(other.chosen_rewards);
        self.rejected_rewards.extend(other.rejected_rewards);
        self.policy_chosen_logps.extend(other.policy_chosen_logps);
        self.policy_rejected_logps
            .extend(other.policy_rejected_logps);
        self.log_ratio_sum += other.log_ratio_sum;
        self.tokens += other.tokens;
    }
}

/// `[sequences]` sums of per-target values `[targets]`, as a product with a segment
/// indicator so the gradient flows back to every token (and not to the indicator).
fn per_sequence_sums(values: &Tensor, counts: &[usize], device: &Device) -> Result<Tensor> {
    let n: usize = counts.iter().sum();
    let mut indicator = vec![0f32; counts.len() * n];
    let mut offset = 0;
    for (row, &c) in counts.iter().enumerate() {
        indicator[row * n + offset..row * n + offset + c].fill(1.0);
        offset += c;
    }
    let indicator = Tensor::from_vec(indicator, (counts.len(), n), device)?;
    Ok(project(&values.unsqueeze(0)?, &indicator)?.squeeze(0)?)
}

/// log σ(x), stable for large |x|: min(x, 0) − log(1 + e^{−|x|}), with min(x, 0) as
/// (x − |x|) / 2. `x.minimum(0)` would add a constant operand whose gradient candle keeps
/// in the gradient store with the comparison's graph, and with it the whole forward pass
/// (the `[tokens, vocab]` logits included) until the store is dropped.
fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let abs = x.abs()?;
    let soft = (abs.neg()?.exp()? + 1.0)?.log()?;
    Ok((((x - &abs)? * 0.5)? - soft)?)
}

/// Where a DPO step gets the reference model's log-probabilities.
#[derive(Debug, Clone, Copy)]
pub enum Reference<'a> {
    /// A forward pass now, on the same weights with adapters off.
    Compute,
    /// Per-sequence sums computed before training, in the batch's sequence order.
    Given(&'a [f32]),
}

/// The DPO loss of a batch whose first half are the chosen sequences and second half the
/// rejected ones (pair i = rows i and i + pairs), summed over pairs and divided by
/// `normalizer` (the pairs in the whole optimizer step).
pub fn dpo_loss(
    decoder: &Decoder,
    batch: &TokenBatch,
    config: &DpoConfig,
    normalizer: usize,
    policy: Policy,
    reference: Reference,
) -> Result<(Loss, DpoStats)> {
    let dev = decoder.device();
    let counts = &batch.targets_per_sequence;
    let pairs = counts.len() / 2;
    let mut reference = match reference {
        // Reference first: with adapters off nothing is tracked, so its activations are
        // freed before the policy pass builds its graph.
        Reference::Compute => {
            let tokens = batch_target_logprobs(decoder, batch, Adapters::Off)?.detach();
            per_sequence_sums(&tokens, counts, dev)?
        }
        Reference::Given(sums) => {
            if sums.len() != counts.len() {
                bail!(
                    "{} reference log-probabilities for {} sequences",
                    sums.len(),
                    counts.len()
                );
            }
            Tensor::from_slice(sums, sums.len(), dev)?
        }
    };
    let (policy_tokens, checkpoints) = policy_target_logprobs(decoder, batch, policy)?;
    let mut policy = per_sequence_sums(&policy_tokens, counts, dev)?;
    let log_ratio_sum = (&policy - &reference)?.sum_all()?.to_scalar::<f32>()? as f64;
    if config.loss_type == DpoLossType::Ipo {
        let lengths: Vec<f32> = counts.iter().map(|&c| c.max(1) as f32).collect();
        let lengths = Tensor::from_vec(lengths, counts.len(), dev)?;
        policy = policy.div(&lengths)?;
        reference = reference.div(&lengths)?;
    }
    let (pc, pr) = (policy.narrow(0, 0, pairs)?, policy.narrow(0, pairs, pairs)?);
    let (rc, rr) = (
        reference.narrow(0, 0, pairs)?,
        reference.narrow(0, pairs, pairs)?,
    );
    let logits = ((&pc - &pr)? - (&rc - &rr)?)?;
    let beta = config.beta;
    let losses = match config.loss_type {
        DpoLossType::Sigmoid => {
            let eps = config.label_smoothing;
            let pos = log_sigmoid(&(&logits * beta)?)?;
            let neg = log_sigmoid(&(&logits * -beta)?)?;
            ((pos * -(1.0 - eps))? - (neg * eps)?)?
        }
        DpoLossType::Ipo => (logits - 1.0 / (2.0 * beta))?.sqr()?,
    };
    let loss = (losses.sum_all()? / normalizer.max(1) as f64)?;
    let vec = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    };
    let stats = DpoStats {
        losses: vec(&losses)?,
        chosen_rewards: vec(&((&pc - &rc)? * beta)?)?,
        rejected_rewards: vec(&((&pr - &rr)? * beta)?)?,
        policy_chosen_logps: vec(&pc)?,
        policy_rejected_logps: vec(&pr)?,
        log_ratio_sum,
        tokens: batch.target_count(),
    };
    Ok((Loss::new(loss, checkpoints), stats))
}

/// The log-probability sums `[chosen, rejected]` of every pair with the adapters run as
/// `adapters` (`Off`: the reference), in length-grouped batches within the step's token
/// budget. `tokens[i]` is pair i's two sequences together.
pub fn pair_logps(
    decoder: &Decoder,
    pairs: &[TokenizedPair],
    tokens: &[usize],
    args: &TrainingArgs,
    adapters: Adapters,
    progress: bool,
) -> Result<Vec<[f32; 2]>> {
    let batches: Vec<Vec<usize>> = length_grouped_batches(tokens, args.batch_size)
        .iter()
        .flat_map(|b| split_by_tokens(b, |i| tokens[i], args.max_batch_tokens))
        .collect();
    let bar = if progress {
        ProgressBar::new(pairs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("pair log-probs {pos}/{len} pairs [{bar:30}] ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut out = vec![[0f32; 2]; pairs.len()];
    for batch in batches {
        let seqs: Vec<&Tokenized> = batch
            .iter()
            .map(|&i| &pairs[i].chosen)
            .chain(batch.iter().map(|&i| &pairs[i].rejected))
            .collect();
        let tb = TokenBatch::new(&seqs, decoder.device())?;
        let tokens = batch_target_logprobs(decoder, &tb, adapters)?.to_vec1::<f32>()?;
        let mut offset = 0;
        for (row, &count) in tb.targets_per_sequence.iter().enumerate() {
            let sum: f32 = tokens[offset..offset + count].iter().sum();
            offset += count;
            let (pair, side) = (batch[row % batch.len()], row / batch.len());
            out[pair][side] = sum;
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}
