//! Stage `responses`: K responses per (query, instruction) with the paper's prompt,
//! rejection sampling by execution. Every response gets its pass rate over the
//! instruction's functions (the released script's: mean of the boolean results, calls
//! that raise left out; a composed instruction's is its weakest part's); a response is kept when it is not blank, was not cut by
//! `max_new_tokens` (`truncated`) and its rate is above `keep_pass_rate_above`
//! (released script: > 0). All rates feed query-level DPO.
//!
//! Output `responses/all.jsonl` and `responses/kept.jsonl`: `{id, pair_id,
//! instruction_id, instruction, query, response, finish_reason, pass_rate, reason}`.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::config::Sampling;
use super::funnel::{DropReason, FunnelRow};
use super::prompts::fill;
use super::queries::{self, QueryPair};
use super::{Execute, Generated, Pipeline};
use crate::generate::FinishReason;
use crate::verify::combined_pass_rates;

pub const STAGE: &str = "responses";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesConfig {
    /// Responses per (query, instruction) (paper: K = 8).
    pub samples: usize,
    /// Keep a response whose pass rate is above this (the released script: > 0).
    pub keep_pass_rate_above: f64,
    pub sampling: Sampling,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        Self {
            samples: 8,
            keep_pass_rate_above: 0.0,
            sampling: Sampling::new(0.8, 512),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRecord {
    pub id: String,
    pub pair_id: String,
    pub instruction_id: String,
    pub instruction: String,
    pub query: String,
    pub response: String,
    /// `length` when generation hit `max_new_tokens`: the response is a fragment.
    pub finish_reason: FinishReason,
    pub pass_rate: f64,
    /// Why it is not kept; none when kept.
    pub reason: Option<DropReason>,
}

pub fn run(p: &mut Pipeline) -> Result<Vec<FunnelRow>> {
    let pairs: Vec<QueryPair> = p.files.read_records(queries::STAGE, queries::PAIRS_FILE)?;
    let cfg = p.synthesis.responses.clone();
    let template = p.synthesis.prompts.response.clone();
    let files = p.files.clone();
    let records: Vec<ResponseRecord> = files.chunked(
        STAGE,
        &pairs,
        p.synthesis.chunk,
        |pair| pair.id.clone(),
        |units| {
            let prompts: Vec<(String, String)> = units
                .iter()
                .map(|pair| {
                    let prompt = fill(
                        &template,
                        &[("instruction", &pair.instruction), ("query", &pair.query)],
                    );
                    (pair.id.clone(), prompt)
                })
                .collect();
            let texts = p.generate(STAGE, &prompts, cfg.samples, &cfg.sampling)?;
            let sampled: Vec<(QueryPair, Vec<Generated>)> =
                units.iter().cloned().zip(texts).collect();
            judge_responses(&sampled, cfg.keep_pass_rate_above, &mut |jobs| {
                p.execute(jobs)
            })
        },
    )?;
    let mut row = FunnelRow::new(STAGE, "responses");
    for r in &records {
        match &r.reason {
            None => row.keep(),
            Some(reason) => row.drop(*reason),
        }
    }
    let kept: Vec<&ResponseRecord> = records.iter().filter(|r| r.reason.is_none()).collect();
    p.files.write_records(STAGE, "all.jsonl", &records)?;
    p.files.write_records(STAGE, "kept.jsonl", &kept)?;
    if kept.is_empty() {
        super::warn_empty(STAGE, "no response passed its verification functions");
    }
    Ok(vec![row])
}

/// Runs each pair's functions on its responses and decides each response.
pub fn judge_responses(
    sampled: &[(QueryPair, Vec<Generated>)],
    keep_above: f64,
    execute: &mut Execute,
) -> Result<Vec<ResponseRecord>> {
    let texts: Vec<Vec<String>> = sampled
        .iter()
        .map(|(_, responses)| responses.iter().map(|g| g.text.clone()).collect())
        .collect();
    let groups: Vec<(&[String], &[usize], &[String])> = sampled
        .iter()
        .zip(&texts)
        .map(|((pair, _), texts)| {
            (
                pair.funcs.as_slice(),
                pair.parts.as_slice(),
                texts.as_slice(),
            )
        })
        .collect();
    let rates = combined_pass_rates(&groups, execute)?;
    let mut records = Vec::new();
    for ((pair, responses), rates) in sampled.iter().zip(rates) {
        for (k, (response, rate)) in responses.iter().zip(rates).enumerate() {
            let reason = if response.text.trim().is_empty() {
                Some(DropReason::EmptyResponse)
            } else if response.finish_reason == FinishReason::Length {
                Some(DropReason::Truncated)
            } else if rate <= keep_above {
                Some(DropReason::LowPassRate)
            } else {
                None
            };
            records.push(ResponseRecord {
                id: format!("{}-s{k}", pair.id),
                pair_id: pair.id.clone(),
                instruction_id: pair.instruction_id.clone(),
                instruction: pair.instruction.clone(),
                query: pair.query.clone(),
                response: response.text.clone(),
                finish_reason: response.finish_reason,
                pass_rate: rate,
                reason,
            });
        }
    }
    Ok(records)
}
