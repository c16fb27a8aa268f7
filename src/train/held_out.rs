//! DPO pairs kept out of training and scored after it: the share whose chosen response
//! the trained policy prefers over the rejected one more than the reference does (TRL's
//! reward accuracy, on pairs it never saw). Pairs are held out by prompt, so no
//! response of a held-out prompt is trained on.

use super::data::{PreferencePair, TokenizedPair};
use super::dpo::pair_logps;
use super::training_args::TrainingArgs;
use crate::generate::unit_seed;
use crate::model::decoder::Decoder;
use crate::model::lora::Adapters;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// Written as `held_out.json` beside the DPO adapter.
pub const HELD_OUT_FILE: &str = "held_out.json";

/// The held-out pairs' figures after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldOutScores {
    pub pairs: usize,
    /// Share of pairs whose reward margin is positive (chance: 0.5; untrained: 0).
    pub reward_accuracy: f64,
    /// Mean of β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)].
    pub mean_margin: f64,
}

/// Splits `pairs` into (trained, held out): each distinct prompt is held out with
/// probability `fraction`, decided by a hash of the prompt and `seed`, so the split does
/// not move when other pairs are added or reordered.
pub fn split_by_prompt(
    pairs: Vec<PreferencePair>,
    fraction: f64,
    seed: u64,
) -> (Vec<PreferencePair>, Vec<PreferencePair>) {
    if fraction <= 0.0 {
        return (pairs, Vec::new());
    }
    pairs.into_iter().partition(|pair| {
        let key: String = pair
            .prompt
            .iter()
            .map(|m| format!("{}\u{0}{}\u{0}", m.role, m.content))
            .collect();
        let draw = unit_seed(seed, "held_out", &key) as f64 / u64::MAX as f64;
        draw >= fraction
    })
}

/// Reward accuracy and margin of `pairs` under the policy (adapters on, no dropout)
/// against the reference (adapters off).
pub fn score_held_out(
    decoder: &Decoder,
    pairs: &[TokenizedPair],
    args: &TrainingArgs,
    beta: f64,
) -> Result<HeldOutScores> {
    let tokens: Vec<usize> = pairs
        .iter()
        .map(|p| p.chosen.ids.len() + p.rejected.ids.len())
        .collect();
    let policy = pair_logps(decoder, pairs, &tokens, args, Adapters::On, false)?;
    let reference = pair_logps(decoder, pairs, &tokens, args, Adapters::Off, false)?;
    let margins: Vec<f64> = policy
        .iter()
        .zip(&reference)
        .map(|(p, r)| beta * f64::from((p[0] - r[0]) - (p[1] - r[1])))
        .collect();
    let n = margins.len().max(1) as f64;
    Ok(HeldOutScores {
        pairs: margins.len(),
        reward_accuracy: margins.iter().filter(|&&m| m > 0.0).count() as f64 / n,
        mean_margin: margins.iter().sum::<f64>() / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::chat_template::Message;

    fn pair(prompt: &str, chosen: &str) -> PreferencePair {
        PreferencePair {
            prompt: vec![Message::new("user", prompt)],
            chosen: chosen.into(),
            rejected: "no".into(),
        }
    }

    #[test]
    fn a_prompt_is_wholly_trained_or_wholly_held_out() {
        let pairs: Vec<PreferencePair> = (0..200)
            .flat_map(|i| [pair(&format!("p{i}"), "a"), pair(&format!("p{i}"), "b")])
            .collect();
        let (trained, held) = split_by_prompt(pairs.clone(), 0.2, 3);
        assert_eq!(trained.len() + held.len(), 400);
        // About a fifth of 200 prompts (binomial sd ≈ 5.7).
        assert!((20..=60).contains(&(held.len() / 2)), "{}", held.len());
        for h in &held {
            assert!(!trained.iter().any(|t| t.prompt == h.prompt));
        }
        let (_, again) = split_by_prompt(pairs[..100].to_vec(), 0.2, 3);
        let first_hundred: Vec<_> = held.iter().filter(|h| pairs[..100].contains(h)).collect();
        assert_eq!(again.iter().collect::<Vec<_>>(), first_hundred);
        assert!(split_by_prompt(pairs, 0.0, 3).1.is_empty());
    }
}
