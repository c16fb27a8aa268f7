//! Per-token log-probabilities of completions given prompts, on the differentiable
//! forward path (so DPO can use the same code with gradients).

use super::decoder::Decoder;
use super::lora::Adapters;
use super::ops::chunked_logprob::chunked_target_logprobs;
use super::ops::quant::Precision;
use super::ops::train_ops;
use anyhow::{bail, Result};
use candle_core::{Tensor, D};

/// Log-probability of each target token: `hidden` `[n, hidden]` are the states at the
/// positions that predict `targets` `[n]` (u32). Returns `[n]` in f32.
pub fn target_logprobs(decoder: &Decoder, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
    // On a GPU the `[n, vocab]` logits (and their gradient) would dominate memory at long
    // sequences: the chunked op never materialises them.
    let head = decoder.lm_head.as_ref().unwrap_or(&decoder.embed_tokens);
    if hidden.device().is_cuda() {
        return Ok(chunked_target_logprobs(hidden, head, targets)?);
    }
    // Training on the CPU: the head and the log-probabilities as one op, which keeps one
    // `[n, vocab]` buffer where the composition below would hold three in its backward.
    if hidden.track_op() && train_ops::fused_applies(hidden) && train_ops::fused_applies(head) {
        let both = train_ops::head_target_logprob_and_lse(hidden, head, targets)?;
        return Ok(both.narrow(1, 0, 1)?.squeeze(1)?);
    }
    let logits = decoder.logits(hidden, Precision::Exact)?;
    if train_ops::fused_applies(&logits) {
        let both = train_ops::target_logprob_and_lse(&logits, targets)?;
        return Ok(both.narrow(1, 0, 1)?.squeeze(1)?);
    }
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&log_z)?;
    Ok(log_probs.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?)
}

/// For each (prompt ids, completion ids) pair, the log-probability of every completion
/// token, as one right-padded batch. Returns a `[completion tokens]` tensor per pair.
pub fn completion_logprobs(
    decoder: &Decoder,
    pairs: &[(Vec<u32>, Vec<u32>)],
    adapters: Adapters,
) -> Result<Vec<Tensor>> {
    let width = pairs
        .iter()
        .map(|(p, c)| p.len() + c.len())
        .max()
        .unwrap_or(0);
    let mut ids = Vec::with_capacity(pairs.len() * width);
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (i, (prompt, completion)) in pairs.iter().enumerate() {
        if prompt.is_empty() {
            bail!(
                "pair {i}: the prompt has no tokens, so the first completion token has no context"
            );
        }
        let start = ids.len();
        ids.extend_from_slice(prompt);
        ids.extend_from_slice(completion);
        ids.resize(start + width, 0);
        // The state at position t predicts token t + 1.
        for (k, &token) in completion.iter().enumerate() {
            rows.push((start + prompt.len() - 1 + k) as u32);
            targets.push(token);
        }
    }
    let dev = decoder.device();
    let input = Tensor::from_vec(ids, (pairs.len(), width), dev)?;
    let hidden = decoder.forward(&input, adapters)?;
    let hidden = hidden.reshape((pairs.len() * width, hidden.dim(D::Minus1)?))?;
    let n = rows.len();
    let picked = hidden.index_select(&Tensor::from_vec(rows, n, dev)?, 0)?;
    let logprobs = target_logprobs(decoder, &picked, &Tensor::from_vec(targets, n, dev)?)?;
    let mut out = Vec::with_capacity(pairs.len());
    let mut offset = 0;
    for (_, completion) in pairs {
        out.push(logprobs.narrow(0, offset, completion.len())?);
        offset += completion.len();
    }
    Ok(out)
}
