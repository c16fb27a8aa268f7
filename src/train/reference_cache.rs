//! `reference_logps.json`: the DPO reference sums of every pair, computed once before
//! training (`precompute_ref_log_probs`) and reused by a resumed run when they were
//! computed for the same data on the same weights.

use super::data::TokenizedPair;
use super::dpo::pair_logps;
use super::training_args::TrainingArgs;
use crate::model::decoder::Decoder;
use crate::model::lora::Adapters;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

const REFERENCE_FILE: &str = "reference_logps.json";

/// The file's record.
#[derive(Serialize, Deserialize)]
struct ReferenceCache {
    data_fingerprint: String,
    weights_fingerprint: String,
    /// `[chosen, rejected]` reference log-probability sums per pair.
    logps: Vec<[f32; 2]>,
}

/// The reference sums of every pair: read from `out/reference_logps.json` when it was
/// written for the same data and weights, else computed and written there. `tokens[i]`
/// is pair i's two sequences together.
pub fn cached_reference_logps(
    decoder: &Decoder,
    pairs: &[TokenizedPair],
    tokens: &[usize],
    args: &TrainingArgs,
    out: &Path,
    data_fingerprint: &str,
    progress: bool,
) -> Result<Vec<[f32; 2]>> {
    let path = out.join(REFERENCE_FILE);
    let weights_fingerprint = weights_fingerprint(decoder)?;
    if let Ok(text) = std::fs::read_to_string(&path) {
        let cached: ReferenceCache = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a reference cache", path.display()))?;
        if cached.data_fingerprint == data_fingerprint
            && cached.weights_fingerprint == weights_fingerprint
            && cached.logps.len() == pairs.len()
        {
            return Ok(cached.logps);
        }
    }
    let record = ReferenceCache {
        data_fingerprint: data_fingerprint.to_string(),
        weights_fingerprint,
        logps: pair_logps(decoder, pairs, tokens, args, Adapters::Off, progress)?,
    };
    // Through a JSON value, which holds the sums as f64: the file's numbers stay as they
    // have always been written.
    let text = serde_json::to_string(&serde_json::to_value(&record)?)?;
    crate::io::write_atomic(&path, text.as_bytes())?;
    Ok(record.logps)
}

/// A hash of the first and last row of every projection weight: tells the weights a
/// reference cache was computed on (another model, or another merged SFT adapter) apart
/// without reading every weight.
fn weights_fingerprint(decoder: &Decoder) -> Result<String> {
    let mut h = Sha256::new();
    for (name, layer) in decoder.linear_layers() {
        let w = layer.weight()?;
        let rows = w.dim(0)?;
        h.update(name.as_bytes());
        for row in [0, rows - 1] {
            for v in w
                .get(row)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?
            {
                h.update(v.to_le_bytes());
            }
        }
        // Adapters merged beside a bf16/f16 weight leave the weight as it was.
        if let Some(m) = layer.merged() {
            for row in [0, rows - 1] {
                let delta_row = m.b.get(row)?.unsqueeze(0)?.matmul(&m.a)?;
                for v in delta_row.flatten_all()?.to_vec1::<f32>()? {
                    h.update(v.to_le_bytes());
                }
            }
        }
    }
    Ok(format!("{:x}", h.finalize()))
}
