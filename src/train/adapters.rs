//! The LoRA adapters the trainer trains: attached fresh on every targeted projection,
//! handed to the optimizer as variables, and folded into the weights between jobs.

use crate::model::decoder::Decoder;
use crate::model::lora::LoraConfig;
use anyhow::{bail, Result};
use candle_core::Var;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Attaches fresh PEFT-initialised adapters to every targeted projection, drawn from
/// `seed`.
pub fn attach_adapters(decoder: &mut Decoder, lora: &LoraConfig, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let device = decoder.device().clone();
    let mut attached = 0;
    for (name, layer) in decoder.linear_layers_mut() {
        if lora.targets(&name) {
            let (out, inp) = layer.shape();
            layer.set_adapter(Some(lora.init_adapter(out, inp, &mut rng, &device)?))?;
            attached += 1;
        } else {
            layer.set_adapter(None)?;
        }
    }
    if attached == 0 {
        bail!(
            "LoRA target_modules {:?} match no projection of the model",
            lora.target_modules
        );
    }
    Ok(())
}

/// The trainable variables (A then B of each adapted projection, in module order).
pub fn adapter_vars(decoder: &Decoder) -> Vec<Var> {
    decoder
        .linear_layers()
        .into_iter()
        .filter_map(|(_, l)| l.adapter().map(|a| [a.a.clone(), a.b.clone()]))
        .flatten()
        .collect()
}

/// Folds every adapter into the base weights (the SFT adapter before DPO), so with
/// adapters off the decoder is the trained model.
pub fn merge_adapters(decoder: &mut Decoder) -> Result<()> {
    for (_, layer) in decoder.linear_layers_mut() {
        layer.merge_adapter()?;
    }
    // An f32 merge gives each projection a new weight: make q/k/v and gate/up views into
    // one weight again rather than let decoding keep a concatenated second copy.
    decoder.fuse_projections()
}

/// Stores every projection's base weight as int8 blocks only (`BaseDtype::Int8`), freeing
/// the dense copies; a base already int8 stays as it is. Embeddings, norms and the LM head
/// keep their dtype. On a GPU the decoding path's concatenated q/k/v and gate/up weights
/// go too (`fuse_projections` keeps none for an int8 base).
pub fn quantize_base(decoder: &mut Decoder) -> Result<()> {
    for (_, layer) in decoder.linear_layers_mut() {
        layer.quantize_base()?;
    }
    decoder.fuse_projections()
}
