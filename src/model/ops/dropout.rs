//! LoRA dropout's masks, a pure function of their seed, so the backward pass draws a mask
//! again instead of keeping it. On the CPU from a hash of each element's index; on a GPU
//! from the device's own generator, reseeded for the mask, so nothing is made on the host
//! and uploaded.

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

/// An inverted-dropout mask `[rows, cols]` (f32): 0 with probability `p`, else
/// `1 / (1 − p)`. The same `(shape, seed, device)` gives the same mask. On the CPU element
/// `i` is decided by a hash of `(seed, i)` alone, so the mask is the same however the work
/// is split across threads. On a GPU the device's generator (cuRAND) is reseeded with
/// `seed` and draws uniforms there; the masks differ from the CPU's but follow the same
/// distribution. Reseeding replaces the generator's state: nothing else in autoif draws
/// from it.
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
    if !device.is_cpu() {
        device.set_seed(seed)?;
        let uniform = Tensor::rand(0f32, 1f32, (rows, cols), device)?;
        return Ok((uniform.ge(p as f64)?.to_dtype(candle_core::DType::F32)? * keep as f64)?);
    }
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
