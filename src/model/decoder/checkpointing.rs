//! Activation checkpointing for the differentiable forward: keep each decoder layer's
//! input instead of its activations, and run the layer again in the backward pass.
//!
//! candle's autograd keeps every op's inputs alive from the forward pass to `backward`, so
//! the only way to free a layer's activations is to give it no graph to hang on: the
//! forward runs each layer on a fresh leaf (`Var`) holding its input and keeps only the
//! detached output, whose graph (the layer's activations) is dropped at once. The backward
//! pass goes from the last layer to the first: it runs the layer again on its kept input,
//! now keeping its graph, and backpropagates the gradient of its output `g` through it as
//! the gradient of the surrogate `sum(out · g)` (whose derivative in `out` is `g`),
//! which gives the layer's LoRA gradients and the gradient of its input for the layer
//! before. Each layer is a pure function of its input (its dropout masks are hashes of
//! the seed and the projection), so the recomputation is the forward's arithmetic again
//! and the gradients are the non-checkpointed ones.

use super::Decoder;
use crate::model::lora::Adapters;
use crate::model::ops::frozen::mul_frozen;
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// What a checkpointed forward keeps for its backward pass.
pub struct LayerCheckpoints {
    /// Each layer's input: the (untracked) embeddings, then leaves whose gradients the
    /// recomputation returns.
    inputs: Vec<Tensor>,
    /// The last layer's output, the leaf that the loss's own backward reaches.
    last: Var,
    segments: Vec<(usize, usize)>,
    mode: Adapters,
}

impl Decoder {
    /// `forward_segments`, keeping only each layer's input for the backward pass (see the
    /// module comment); `backward_checkpointed` finishes the gradient.
    pub fn forward_segments_checkpointed(
        &self,
        tokens: &Tensor,
        segments: &[(usize, usize)],
        mode: Adapters,
    ) -> Result<(Tensor, LayerCheckpoints)> {
        let rope = self.training_rope(segments)?;
        let mut x = self.embed_tokens.index_select(tokens, 0)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        for li in 0..self.layers.len() {
            let out = self.training_layer(li, &x, segments, (&rope.0, &rope.1), mode)?;
            inputs.push(x);
            // A new leaf: the layer's graph goes with `out`.
            x = Var::from_tensor(&out.detach())?.into_inner();
        }
        let last = Var::from_tensor(&x)?;
        let hidden = self.final_norm(last.as_tensor())?;
        let checkpoints = LayerCheckpoints {
            inputs,
            last,
            segments: segments.to_vec(),
            mode,
        };
        Ok((hidden, checkpoints))
    }

    /// Completes the backward pass of a loss over `forward_segments_checkpointed`'s hidden
    /// states: `grads` is the loss's `backward()`, which stops at the last layer's output;
    /// returns it with every layer's LoRA gradients added.
    pub fn backward_checkpointed(
        &self,
        checkpoints: LayerCheckpoints,
        mut grads: GradStore,
    ) -> Result<GradStore> {
        let LayerCheckpoints {
            inputs,
            last,
            segments,
            mode,
        } = checkpoints;
        // A loss that does not depend on the hidden states has nothing to pass back.
        let Some(mut grad_out) = grads.remove(last.as_tensor()) else {
            return Ok(grads);
        };
        let rope = self.training_rope(&segments)?;
        for (li, input) in inputs.into_iter().enumerate().rev() {
            let out = self.training_layer(li, &input, &segments, (&rope.0, &rope.1), mode)?;
            // The upstream gradient is a constant: no gradient of its own in the store.
            let mut layer_grads = mul_frozen(&out, &grad_out)?.sum_all()?.backward()?;
            if li > 0 {
                grad_out = layer_grads
                    .remove(&input)
                    .expect("a layer's output depends on its input");
            }
            grads.extend(layer_grads)?;
        }
        Ok(grads)
    }
}
