//! Stage `datasets`: SFT records and offline DPO pairs, written for LLaMA-Factory and
//! TRL, from what `decontaminate` kept.
//!
//! * SFT: every scored, kept response; the prompt is the paper's assembly of query
//!   and instruction (`sft_prompt`).
//! * DPO, query level: per (query, instruction) pair, chosen = responses with pass rate
//!   ≥ `chosen_min_pass_rate`, rejected = pass rate 0; the paper's sampling rule
//!   (`mine_pairs`); blank and truncated responses are on neither side
//!   (`is_preference_candidate`); instruction level: the same rule over the kept,
//!   non-blank test cases of each instruction (case inputs as responses to the bare
//!   instruction).
//!
//! Files: `datasets/llamafactory/{autoif_sft.json, autoif_dpo.json,
//! dataset_info.json}` (alpaca SFT; alpaca preference records with `chosen`/`rejected`)
//! and `datasets/trl/{sft.jsonl, dpo.jsonl}` (conversational `messages`;
//! `prompt`/`chosen`/`rejected` message lists).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::crossval::Validated;
use super::decontaminate;
use super::funnel::{DropReason, FunnelRow};
use super::responses::ResponseRecord;
use super::score::ScoredResponse;
use super::Pipeline;
use crate::generate::unit_seed;
use crate::io::write_atomic;
use crate::train::autoif_rules::{capitalise, is_preference_candidate, mine_pairs, sft_prompt};

pub const STAGE: &str = "datasets";
/// The SFT records for TRL (conversational `messages`), inside the stage folder.
pub const TRL_SFT_FILE: &str = "trl/sft.jsonl";
/// The preference records for TRL (`prompt`/`chosen`/`rejected` message lists).
pub const TRL_DPO_FILE: &str = "trl/dpo.jsonl";
/// LLaMA-Factory's files (`autoif_sft.json`, `autoif_dpo.json`, `dataset_info.json`).
pub const LLAMAFACTORY_DIR: &str = "llamafactory";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetsConfig {
    /// DPO chosen side: pass rate at or above this (paper: 0.5); rejected: pass rate 0.
    pub chosen_min_pass_rate: f64,
    /// Responses sampled per side when a side has two or more (paper: 2).
    pub per_side: usize,
}

impl Default for DatasetsConfig {
    fn default() -> Self {
        Self {
            chosen_min_pass_rate: 0.5,
            per_side: 2,
        }
    }
}

/// A preference pair this stage mined, with where it came from: a record of
/// `datasets/pairs.jsonl` (training reads the TRL file, `train::data::PreferencePair`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinedPair {
    /// `query` or `instruction`.
    pub level: String,
    /// The pair or instruction id the pair comes from.
    pub source_id: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

pub fn run(p: &mut Pipeline) -> Result<Vec<FunnelRow>> {
    let cfg = p.synthesis.datasets.clone();
    let seed = p.seed;
    let files = &p.files;
    let scored: Vec<ScoredResponse> =
        files.read_records(decontaminate::STAGE, decontaminate::SCORED_FILE)?;
    let all: Vec<ResponseRecord> =
        files.read_records(decontaminate::STAGE, decontaminate::RESPONSES_FILE)?;
    let instructions: Vec<Validated> =
        files.read_records(decontaminate::STAGE, decontaminate::INSTRUCTIONS_FILE)?;

    let mut sft_row = FunnelRow::new(STAGE, "sft_records");
    let sft: Vec<(String, String)> = scored
        .iter()
        .map(|s| {
            sft_row.keep();
            (
                sft_prompt(&s.response.query, &s.response.instruction),
                s.response.response.clone(),
            )
        })
        .collect();

    let mut prompts_row = FunnelRow::new(STAGE, "dpo_prompts");
    let mut pairs: Vec<MinedPair> = Vec::new();
    let mut mine = |level: &str, source_id: &str, prompt: String, candidates: &[(String, f64)]| {
        let mined = mine_pairs(
            candidates,
            cfg.chosen_min_pass_rate,
            cfg.per_side,
            unit_seed(seed, STAGE, &format!("{level}/{source_id}")),
        );
        if mined.is_empty() {
            let has_positive = candidates
                .iter()
                .any(|(_, r)| *r >= cfg.chosen_min_pass_rate);
            prompts_row.drop(if has_positive {
                DropReason::NoRejected
            } else {
                DropReason::NoChosen
            });
        } else {
            prompts_row.keep();
        }
        for (chosen, rejected) in mined {
            pairs.push(MinedPair {
                level: level.to_string(),
                source_id: source_id.to_string(),
                prompt: prompt.clone(),
                chosen,
                rejected,
            });
        }
    };
    for v in &instructions {
        let candidates: Vec<(String, f64)> = v
            .cases
            .iter()
            .filter(|c| !c.input.trim().is_empty())
            .map(|c| (c.input.clone(), c.pass_rate))
            .collect();
        mine(
            "instruction",
            &v.id,
            capitalise(&v.instruction),
            &candidates,
        );
    }
    let mut order: Vec<&str> = Vec::new();
    for r in &all {
        if !order.contains(&r.pair_id.as_str()) {
            order.push(&r.pair_id);
        }
    }
    for pair_id in order {
        let group: Vec<&ResponseRecord> = all.iter().filter(|r| r.pair_id == pair_id).collect();
        let candidates: Vec<(String, f64)> = group
            .iter()
            .filter(|r| is_preference_candidate(&r.response, r.finish_reason))
            .map(|r| (r.response.clone(), r.pass_rate))
            .collect();
        let prompt = sft_prompt(&group[0].query, &group[0].instruction);
        mine("query", pair_id, prompt, &candidates);
    }
    let mut pairs_row = FunnelRow::new(STAGE, "dpo_pairs");
    pairs.iter().for_each(|_| pairs_row.keep());
    write_files(p, &sft, &pairs)?;
    Ok(vec![sft_row, prompts_row, pairs_row])
}

fn write_files(p: &Pipeline, sft: &[(String, String)], pairs: &[MinedPair]) -> Result<()> {
    let lf = p.files.stage_dir(STAGE).join(LLAMAFACTORY_DIR);
    let alpaca: Vec<_> = sft
        .iter()
        .map(|(prompt, response)| json!({"instruction": prompt, "input": "", "output": response, "history": []}))
        .collect();
    let preference: Vec<_> = pairs
        .iter()
        .map(|x| json!({"instruction": x.prompt, "input": "", "chosen": x.chosen, "rejected": x.rejected}))
        .collect();
    let info = json!({
        "autoif_sft": {"file_name": "autoif_sft.json"},
        "autoif_dpo": {"file_name": "autoif_dpo.json", "ranking": true,
            "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}}
    });
    write_atomic(
        &lf.join("autoif_sft.json"),
        &serde_json::to_vec_pretty(&alpaca)?,
    )?;
    write_atomic(
        &lf.join("autoif_dpo.json"),
        &serde_json::to_vec_pretty(&preference)?,
    )?;
    write_atomic(
        &lf.join("dataset_info.json"),
        &serde_json::to_vec_pretty(&info)?,
    )?;
    let user = |text: &str| json!([{"role": "user", "content": text}]);
    let assistant = |text: &str| json!([{"role": "assistant", "content": text}]);
    let trl_sft: Vec<_> = sft
        .iter()
        .map(|(prompt, response)| {
            json!({"messages": [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": response}]})
        })
        .collect();
    let trl_dpo: Vec<_> = pairs
        .iter()
        .map(|x| {
            json!({"prompt": user(&x.prompt), "chosen": assistant(&x.chosen),
            "rejected": assistant(&x.rejected), "level": x.level, "source_id": x.source_id})
        })
        .collect();
    p.files.write_records(STAGE, TRL_SFT_FILE, &trl_sft)?;
    p.files.write_records(STAGE, TRL_DPO_FILE, &trl_dpo)?;
    p.files.write_records(STAGE, "pairs.jsonl", pairs)?;
    Ok(())
}
