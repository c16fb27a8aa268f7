//! The policy's forward pass in a training step (the model with its adapters on) and the
//! backward pass through it, with or without activation checkpointing.

use super::data::TokenBatch;
use crate::model::decoder::{Decoder, LayerCheckpoints};
use crate::model::logprobs::target_logprobs;
use crate::model::lora::Adapters;
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::Tensor;

/// How a training step runs the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// `On`, or `Dropout` when training with LoRA dropout.
    pub adapters: Adapters,
    /// Keep only each decoder layer's input and run the layer again in the backward pass
    /// (`TrainingArgs::gradient_checkpointing`): the same gradients in a fraction of the
    /// activation memory, for about a third more compute.
    pub checkpointing: bool,
}

/// A training loss and what its backward pass needs besides the graph it carries.
pub struct Loss {
    pub value: Tensor,
    checkpoints: Option<LayerCheckpoints>,
}

impl Loss {
    pub(super) fn new(value: Tensor, checkpoints: Option<LayerCheckpoints>) -> Self {
        Self { value, checkpoints }
    }

    /// The gradients of `value`, through the recomputed layers when checkpointed.
    pub fn backward(self, decoder: &Decoder) -> Result<GradStore> {
        let Loss { value, checkpoints } = self;
        let grads = value.backward()?;
        // The head's graph goes before the layers are run again.
        drop(value);
        match checkpoints {
            Some(checkpoints) => decoder.backward_checkpointed(checkpoints, grads),
            None => Ok(grads),
        }
    }
}

/// Log-probabilities `[targets]` of a batch's targets under the policy, and the layer
/// checkpoints its backward pass needs when it is checkpointed.
pub fn policy_target_logprobs(
    decoder: &Decoder,
    batch: &TokenBatch,
    policy: Policy,
) -> Result<(Tensor, Option<LayerCheckpoints>)> {
    let (hidden, checkpoints) = if policy.checkpointing {
        let (hidden, checkpoints) = decoder.forward_segments_checkpointed(
            &batch.input_ids,
            &batch.segments,
            policy.adapters,
        )?;
        (hidden, Some(checkpoints))
    } else {
        let hidden =
            decoder.forward_segments(&batch.input_ids, &batch.segments, policy.adapters)?;
        (hidden, None)
    };
    Ok((target_logprobs_of(decoder, batch, &hidden)?, checkpoints))
}

/// The targets' log-probabilities from the final hidden states `[tokens, hidden]`.
pub(super) fn target_logprobs_of(
    decoder: &Decoder,
    batch: &TokenBatch,
    hidden: &Tensor,
) -> Result<Tensor> {
    let picked = hidden.index_select(&batch.positions, 0)?;
    target_logprobs(decoder, &picked, &batch.targets)
}
