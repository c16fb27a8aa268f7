//! Stage `score`: the model judges each kept response's relevance to its query, 0–10,
//! with the paper's prompt; the score is parsed from `Score: N` (see `parse_score`) and
//! a response is kept when it reaches `min_score` (the paper: 8 and above; its released
//! script keeps > 8). With `enabled = false` every response passes through unscored.
//!
//! Output `score/kept.jsonl` and `score/all.jsonl`: the response record plus `score`,
//! `judgement` and `score_reason`.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::config::Sampling;
use super::funnel::{DropReason, FunnelRow};
use super::parse::parse_score;
use super::prompts::fill;
use super::responses::{self, ResponseRecord};
use super::Pipeline;

pub const STAGE: &str = "score";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreConfig {
    /// Off: every response that passed its functions goes on unscored (for a supervisor
    /// too small to judge relevance; a 135M model's scores are noise).
    pub enabled: bool,
    /// Keep a response whose score is at least this (the paper's rule: ≥ 8).
    pub min_score: f64,
    pub sampling: Sampling,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_score: 8.0,
            sampling: Sampling::new(0.0, 384),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredResponse {
    #[serde(flatten)]
    pub response: ResponseRecord,
    pub score: Option<f64>,
    pub judgement: String,
    pub score_reason: Option<DropReason>,
}

pub fn run(p: &mut Pipeline) -> Result<Vec<FunnelRow>> {
    let kept: Vec<ResponseRecord> = p.files.read_records(responses::STAGE, "kept.jsonl")?;
    let cfg = p.synthesis.score.clone();
    let template = p.synthesis.prompts.score.clone();
    let files = p.files.clone();
    let scored: Vec<ScoredResponse> = files.chunked(
        STAGE,
        &kept,
        p.synthesis.chunk,
        |r| r.id.clone(),
        |units| {
            if !cfg.enabled {
                return Ok(units.iter().map(|r| unscored(r.clone())).collect());
            }
            let prompts: Vec<(String, String)> = units
                .iter()
                .map(|r| {
                    let prompt = fill(
                        &template,
                        &[
                            ("instruction", &r.instruction),
                            ("query", &r.query),
                            ("response", &r.response),
                        ],
                    );
                    (r.id.clone(), prompt)
                })
                .collect();
            let texts = p.generate_texts(STAGE, &prompts, 1, &cfg.sampling)?;
            Ok(units
                .iter()
                .zip(texts)
                .map(|(r, mut t)| judge(r.clone(), t.remove(0), cfg.min_score))
                .collect())
        },
    )?;
    let mut row = FunnelRow::new(STAGE, "responses");
    for s in &scored {
        match &s.score_reason {
            None => row.keep(),
            Some(reason) => row.drop(*reason),
        }
    }
    let kept: Vec<&ScoredResponse> = scored.iter().filter(|s| s.score_reason.is_none()).collect();
    p.files.write_records(STAGE, "all.jsonl", &scored)?;
    p.files.write_records(STAGE, "kept.jsonl", &kept)?;
    if kept.is_empty() {
        super::warn_empty(STAGE, "no response passed quality scoring");
    }
    Ok(vec![row])
}

/// A response kept without a judgement (scoring switched off).
fn unscored(response: ResponseRecord) -> ScoredResponse {
    ScoredResponse {
        response,
        score: None,
        judgement: String::new(),
        score_reason: None,
    }
}

/// Decides one response from the judge's text: kept when its score reaches `min_score`.
pub fn judge(response: ResponseRecord, judgement: String, min_score: f64) -> ScoredResponse {
    let (score, reason) = match parse_score(&judgement) {
        Ok(s) if s >= min_score => (Some(s), None),
        Ok(s) => (Some(s), Some(DropReason::LowScore)),
        Err(name) => (None, Some(DropReason::parsed(name))),
    };
    ScoredResponse {
        response,
        score,
        judgement,
        score_reason: reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::FinishReason;

    fn scored(judgement: &str) -> ScoredResponse {
        let response = ResponseRecord {
            id: "p-s0".into(),
            pair_id: "p".into(),
            instruction_id: "i".into(),
            instruction: "Answer briefly".into(),
            query: "What is rain?".into(),
            response: "Water falling from clouds.".into(),
            finish_reason: FinishReason::Stop,
            pass_rate: 1.0,
            reason: None,
        };
        judge(response, judgement.into(), ScoreConfig::default().min_score)
    }

    #[test]
    fn score_eight_is_kept_and_seven_dropped() {
        assert_eq!(ScoreConfig::default().min_score, 8.0);
        let eight = scored("Relevant and complete.\nScore: 8");
        assert_eq!((eight.score, eight.score_reason), (Some(8.0), None));
        let seven = scored("Mostly relevant.\nScore: 7");
        assert_eq!(
            (seven.score, seven.score_reason),
            (Some(7.0), Some(DropReason::LowScore))
        );
    }
}
