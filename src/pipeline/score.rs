//! Stage `score`: the model judges each kept response's relevance to its query, 0–10,
//! with the paper's prompt; the score is parsed from `Score: N` (see `parse_score`) and
//! a response is kept when it is above `keep_score_above` (released script: > 8). With
//! `enabled = false` every response passes through unscored.
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
    /// Keep a response whose mean score is above this (the released script: > 8).
    pub keep_score_above: f64,
    pub sampling: Sampling,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keep_score_above: 8.0,
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
                .map(|(r, mut t)| judge(r.clone(), t.remove(0), cfg.keep_score_above))
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

/// Decides one response from the judge's text.
pub fn judge(response: ResponseRecord, judgement: String, keep_above: f64) -> ScoredResponse {
    let (score, reason) = match parse_score(&judgement) {
        Ok(s) if s > keep_above => (Some(s), None),
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
