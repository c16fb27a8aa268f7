//! Seeds for units of work (a stage's unit, an online-DPO prompt) that do not depend on
//! batching or on what ran before, so an interrupted run resumes to the same samples.

use sha2::{Digest, Sha256};

/// A 64-bit seed for one unit of work: a function of the run seed, the stage and the
/// unit's key only, so it does not depend on batching or on what ran before.
pub fn unit_seed(run_seed: u64, stage: &str, key: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(run_seed.to_le_bytes())
        .chain_update(stage.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}
