//! Stage `augment`: self-instruct. K prompts show the seed instructions (in an order
//! shuffled per round) and ask for new ones; `- ` lines are parsed, normalised, and
//! near-duplicates of earlier instructions or of the seeds are dropped.
//!
//! Output `augment/instructions.jsonl`: `{id, instruction, origin, round}` (origin
//! `seed` or `augment`); `augment/rejected.jsonl`: `{round, text, reason}`.

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

use super::config::Sampling;
use super::funnel::{DropReason, FunnelRow};
use super::parse::parse_instruction_list;
use super::prompts::fill;
use super::short_id;
use super::Pipeline;
use crate::generate::unit_seed;

pub const STAGE: &str = "augment";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Self-instruct prompts sampled (the paper: K = 100).
    pub rounds: usize,
    /// Instructions each prompt asks for (the released script asks for 50).
    pub per_round: usize,
    /// Keep the seeds themselves in the instruction set.
    pub include_seeds: bool,
    /// Word-set Jaccard similarity at or above which an instruction is a near-duplicate
    /// (of an earlier one or of a seed).
    pub max_similarity: f64,
    pub min_chars: usize,
    pub max_chars: usize,
    pub sampling: Sampling,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            rounds: 100,
            per_round: 50,
            include_seeds: true,
            max_similarity: 0.8,
            min_chars: 10,
            max_chars: 300,
            sampling: Sampling::new(0.7, 1024),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instruction {
    pub id: String,
    pub instruction: String,
    pub origin: String,
    pub round: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoundOutput {
    round: usize,
    text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejected {
    pub round: usize,
    pub text: String,
    pub reason: DropReason,
}

/// Seed instructions: one per non-empty line.
pub fn read_seeds(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the seed instructions", path.display()))?;
    let text = crate::io::text::decode_utf8(bytes, &path.display().to_string())?;
    let seeds: Vec<String> = text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if seeds.is_empty() {
        bail!("{}: no seed instructions", path.display());
    }
    Ok(seeds)
}

pub fn run(p: &mut Pipeline) -> Result<Vec<FunnelRow>> {
    let cfg = p.synthesis.augment.clone();
    let seeds = read_seeds(&p.synthesis.seeds)?;
    let template = p.synthesis.prompts.augment.clone();
    let run_seed = p.seed;
    let rounds: Vec<usize> = (0..cfg.rounds).collect();
    let chunk = p.synthesis.chunk;
    let files = p.files.clone();
    let outputs: Vec<RoundOutput> = files.chunked(
        STAGE,
        &rounds,
        chunk,
        |r| r.to_string(),
        |units| {
            let prompts: Vec<(String, String)> = units
                .iter()
                .map(|&round| {
                    let mut order = seeds.clone();
                    let mut rng = ChaCha8Rng::seed_from_u64(unit_seed(
                        run_seed,
                        "augment-order",
                        &round.to_string(),
                    ));
                    order.shuffle(&mut rng);
                    let lines: Vec<String> = order.iter().map(|s| format!("- {s}")).collect();
                    let prompt = fill(
                        &template,
                        &[
                            ("count", &cfg.per_round.to_string()),
                            ("seed_instructions", &lines.join("\n")),
                        ],
                    );
                    (round.to_string(), prompt)
                })
                .collect();
            let texts = p.generate_texts(STAGE, &prompts, 1, &cfg.sampling)?;
            Ok(units
                .iter()
                .zip(texts)
                .map(|(&round, mut t)| RoundOutput {
                    round,
                    text: t.remove(0),
                })
                .collect())
        },
    )?;
    let (kept, rejected, rows) = select(&seeds, &outputs, &cfg);
    p.files.write_records(STAGE, "instructions.jsonl", &kept)?;
    p.files.write_records(STAGE, "rejected.jsonl", &rejected)?;
    if kept.is_empty() {
        super::warn_empty(STAGE, "no instructions left after augmentation");
    }
    Ok(rows)
}

/// Lower-case words: the key for duplicate detection.
fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

fn select(
    seeds: &[String],
    outputs: &[RoundOutput],
    cfg: &AugmentConfig,
) -> (Vec<Instruction>, Vec<Rejected>, Vec<FunnelRow>) {
    let mut rounds_row = FunnelRow::new(STAGE, "rounds");
    let mut row = FunnelRow::new(STAGE, "instructions");
    let seed_words: Vec<BTreeSet<String>> = seeds.iter().map(|s| words(s)).collect();
    let mut kept: Vec<Instruction> = Vec::new();
    let mut kept_words: Vec<BTreeSet<String>> = Vec::new();
    if cfg.include_seeds {
        for (seed, w) in seeds.iter().zip(&seed_words) {
            kept.push(Instruction {
                id: short_id("i", seed),
                instruction: seed.clone(),
                origin: "seed".to_string(),
                round: None,
            });
            kept_words.push(w.clone());
        }
    }
    let mut rejected = Vec::new();
    for output in outputs {
        let candidates = parse_instruction_list(&output.text);
        if candidates.is_empty() {
            rounds_row.drop(DropReason::NoListLines);
        } else {
            rounds_row.keep();
        }
        for text in candidates {
            let w = words(&text);
            let reason = if text.chars().count() < cfg.min_chars {
                Some(DropReason::TooShort)
            } else if text.chars().count() > cfg.max_chars {
                Some(DropReason::TooLong)
            } else if seeds.iter().any(|s| s.eq_ignore_ascii_case(&text)) {
                Some(DropReason::CopiesSeed)
            } else if seed_words
                .iter()
                .any(|s| jaccard(s, &w) >= cfg.max_similarity)
            {
                Some(DropReason::NearSeed)
            } else if kept_words
                .iter()
                .any(|k| jaccard(k, &w) >= cfg.max_similarity)
            {
                Some(DropReason::NearDuplicate)
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    row.drop(reason);
                    rejected.push(Rejected {
                        round: output.round,
                        text,
                        reason,
                    });
                }
                None => {
                    row.keep();
                    kept.push(Instruction {
                        id: short_id("i", &text),
                        instruction: text,
                        origin: "augment".to_string(),
                        round: Some(output.round),
                    });
                    kept_words.push(w);
                }
            }
        }
    }
    (kept, rejected, vec![rounds_row, row])
}
