//! LoRA dropout's masks, drawn from a hash rather than a generator's state, so a mask is
//! a pure function of its seed and can be drawn again in the backward pass instead of
//! being kept.

use anyhow::{bail, Result};
use candle_core::Tensor;
use rayon::prelude::*;

/// SplitMix64's output function: a well-mixed 64-bit hash of a counter.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An inverted-dropout mask `[rows, cols]`: 0 with probability `p`, else `1 / (1 − p)`.
/// Element `i` is decided by a hash of `(seed, i)` alone, so the mask is the same however
/// the work is split across threads.
pub fn dropout_mask(
    (rows, cols): (usize, usize),
    p: f32,
    seed: u64,
    device: &candle_core::Device,
) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        bail!("LoRA dropout must be in [0, 1), got {p}");
    }
    let keep = 1.0 / (1.0 - p);
    // Compare 24 random bits with p scaled to the same range.
    let threshold = (p as f64 * (1u64 << 24) as f64) as u64;
    let mut mask = vec![0f32; rows * cols];
    mask.par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(row, out)| {
            for (col, m) in out.iter_mut().enumerate() {
                let bits = splitmix64(seed ^ ((row * cols + col) as u64)) >> 40;
                *m = if bits < threshold { 0.0 } else { keep };
            }
        });
    Ok(Tensor::from_vec(mask, (rows, cols), device)?)
}
