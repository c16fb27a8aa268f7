//! Stage `decontaminate`: drops every unit of training data that shares a word n-gram
//! (`ngram` words, default 13 as in GPT-3's contamination check) with an evaluation
//! prompt (`eval_prompts`, IFEval's 541 by default), so that no benchmark text reaches
//! `datasets` (SFT and offline DPO) or online DPO. A unit is checked on every text
//! training shows the model (`ngrams` says what a word is):
//!
//! * an instruction: its text (the instruction-level DPO prompt); of a kept instruction,
//!   each case input (those prompts' responses);
//! * a (query, instruction) pair: the assembled training prompt (`sft_prompt`), so an
//!   n-gram across the query/instruction seam counts too (IFEval prompts are such
//!   assemblies); the kept pairs are online DPO's prompts;
//! * a response (SFT target, DPO side) and a scored response (SFT record): its pair's
//!   prompt and its text.
//!
//! Output: the inputs minus what is contaminated — `instructions.jsonl` (crossval
//! records), `pairs.jsonl` (queries' records), `responses.jsonl` (every response, as
//! `responses/all.jsonl`), `scored.jsonl` (as `score/kept.jsonl`) — and
//! `contaminated.jsonl`, one `Contamination` per dropped unit (scored responses aside:
//! each is also a response). With `enabled = false` everything passes through.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

use super::backtranslate;
use super::crossval::Validated;
use super::funnel::{DropReason, FunnelRow};
use super::ngrams::{NgramIndex, Overlap};
use super::queries::{self, QueryPair};
use super::responses::{self, ResponseRecord};
use super::score::{self, ScoredResponse};
use super::Pipeline;
use crate::io::read_json_records;
use crate::train::autoif_rules::sft_prompt;

pub const STAGE: &str = "decontaminate";
/// Kept instructions, contaminated case inputs removed (crossval's record layout).
pub const INSTRUCTIONS_FILE: &str = "instructions.jsonl";
/// Kept (query, instruction) pairs: online DPO's prompts.
pub const PAIRS_FILE: &str = "pairs.jsonl";
/// Kept responses, every pass rate (DPO candidates).
pub const RESPONSES_FILE: &str = "responses.jsonl";
/// Kept scored responses (SFT records).
pub const SCORED_FILE: &str = "scored.jsonl";
/// The evidence: each dropped unit with the shared n-gram.
pub const CONTAMINATED_FILE: &str = "contaminated.jsonl";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecontaminateConfig {
    /// Off: every unit passes through unchecked.
    pub enabled: bool,
    /// The evaluation prompts: JSON Lines (or one JSON array) of strings or of objects
    /// with a `prompt` string. Default: IFEval's `input_data.jsonl`, the file the
    /// `[ifeval]` phases score by default.
    pub eval_prompts: PathBuf,
    /// Words per n-gram (GPT-3's contamination check: 13).
    pub ngram: usize,
}

impl Default for DecontaminateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            eval_prompts: PathBuf::from("data/ifeval/input_data.jsonl"),
            ngram: 13,
        }
    }
}

impl DecontaminateConfig {
    /// The checks made when a run config is loaded, each error naming its key.
    pub fn validate(&self) -> Result<()> {
        if self.ngram == 0 {
            bail!("synthesis.decontaminate.ngram must be at least 1");
        }
        if self.enabled && !self.eval_prompts.is_file() {
            bail!(
                "synthesis.decontaminate.eval_prompts = {:?}: no such file",
                self.eval_prompts.display().to_string()
            );
        }
        Ok(())
    }
}

/// Why a unit was dropped: the text that overlaps an evaluation prompt, and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contamination {
    /// `instruction`, `case`, `pair` or `response`.
    pub unit: String,
    /// The unit's id (a case's: its instruction's).
    pub id: String,
    /// The text checked: `instruction`, `input`, `prompt` or `response`.
    pub field: String,
    pub text: String,
    /// The shared words, normalised.
    pub ngram: String,
    /// The evaluation prompt's record number in `eval_prompts` (from 1) and its text.
    pub eval_record: usize,
    pub eval_prompt: String,
}

/// Reads the evaluation prompts of `path`: strings, or objects with a `prompt`.
pub fn read_eval_prompts(path: &Path) -> Result<Vec<String>> {
    let records = read_json_records(path)?;
    if records.is_empty() {
        bail!("{}: no evaluation prompt", path.display());
    }
    records
        .iter()
        .enumerate()
        .map(|(i, record)| match record {
            Value::String(text) => Ok(text.clone()),
            _ => record["prompt"]
                .as_str()
                .map(String::from)
                .with_context(|| {
                    format!(
                        "{}: record {}: neither a string nor an object with a `prompt` string",
                        path.display(),
                        i + 1
                    )
                }),
        })
        .collect()
}

/// The evaluation prompts, indexed (none when decontamination is off).
struct Screen {
    eval_prompts: Vec<String>,
    index: Option<NgramIndex>,
}

impl Screen {
    fn new(cfg: &DecontaminateConfig) -> Result<Self> {
        if !cfg.enabled {
            return Ok(Self {
                eval_prompts: Vec::new(),
                index: None,
            });
        }
        let eval_prompts = read_eval_prompts(&cfg.eval_prompts)?;
        let index = NgramIndex::new(&eval_prompts, cfg.ngram);
        Ok(Self {
            eval_prompts,
            index: Some(index),
        })
    }

    /// The first of `texts` (field, text) that overlaps an evaluation prompt.
    fn check(&self, unit: &str, id: &str, texts: &[(&str, &str)]) -> Option<Contamination> {
        let index = self.index.as_ref()?;
        texts.iter().find_map(|(field, text)| {
            index
                .find(text)
                .map(|Overlap { reference, ngram }| Contamination {
                    unit: unit.to_string(),
                    id: id.to_string(),
                    field: field.to_string(),
                    text: text.to_string(),
                    ngram,
                    eval_record: reference + 1,
                    eval_prompt: self.eval_prompts[reference].clone(),
                })
        })
    }

    fn check_response(&self, r: &ResponseRecord) -> Option<Contamination> {
        let prompt = sft_prompt(&r.query, &r.instruction);
        self.check(
            "response",
            &r.id,
            &[("prompt", &prompt), ("response", &r.response)],
        )
    }
}

pub fn run(p: &mut Pipeline) -> Result<Vec<FunnelRow>> {
    let screen = Screen::new(&p.synthesis.decontaminate)?;
    let instructions = backtranslate::kept_instructions(p)?;
    let pairs: Vec<QueryPair> = p.files.read_records(queries::STAGE, queries::PAIRS_FILE)?;
    let all: Vec<ResponseRecord> = p.files.read_records(responses::STAGE, "all.jsonl")?;
    let scored: Vec<ScoredResponse> = p.files.read_records(score::STAGE, "kept.jsonl")?;
    let mut found: Vec<Contamination> = Vec::new();
    // Keeps a unit, or counts it dropped and keeps the evidence.
    let mut decide = |row: &mut FunnelRow, hit: Option<Contamination>, evidence: bool| match hit {
        None => {
            row.keep();
            true
        }
        Some(c) => {
            row.drop(DropReason::Contaminated);
            if evidence {
                found.push(c);
            }
            false
        }
    };

    let mut instruction_row = FunnelRow::new(STAGE, "instructions");
    let mut case_row = FunnelRow::new(STAGE, "cases");
    let mut kept_instructions: Vec<Validated> = Vec::new();
    for checked in instructions {
        let mut v = checked.validated;
        let hit = screen.check("instruction", &v.id, &[("instruction", &v.instruction)]);
        if !decide(&mut instruction_row, hit, true) {
            continue;
        }
        v.cases.retain(|c| {
            let hit = screen.check("case", &v.id, &[("input", &c.input)]);
            decide(&mut case_row, hit, true)
        });
        kept_instructions.push(v);
    }

    let mut pair_row = FunnelRow::new(STAGE, "pairs");
    let kept_pairs: Vec<QueryPair> = pairs
        .into_iter()
        .filter(|pair| {
            let prompt = sft_prompt(&pair.query, &pair.instruction);
            let hit = screen.check("pair", &pair.id, &[("prompt", &prompt)]);
            decide(&mut pair_row, hit, true)
        })
        .collect();

    let mut response_row = FunnelRow::new(STAGE, "responses");
    let kept_all: Vec<ResponseRecord> = all
        .into_iter()
        .filter(|r| decide(&mut response_row, screen.check_response(r), true))
        .collect();

    let mut scored_row = FunnelRow::new(STAGE, "scored_responses");
    let kept_scored: Vec<ScoredResponse> = scored
        .into_iter()
        .filter(|s| decide(&mut scored_row, screen.check_response(&s.response), false))
        .collect();

    p.files
        .write_records(STAGE, INSTRUCTIONS_FILE, &kept_instructions)?;
    p.files.write_records(STAGE, PAIRS_FILE, &kept_pairs)?;
    p.files.write_records(STAGE, RESPONSES_FILE, &kept_all)?;
    p.files.write_records(STAGE, SCORED_FILE, &kept_scored)?;
    p.files.write_records(STAGE, CONTAMINATED_FILE, &found)?;
    let rows = vec![
        instruction_row,
        case_row,
        pair_row,
        response_row,
        scored_row,
    ];
    for row in rows.iter().filter(|r| r.input > 0 && r.output == 0) {
        super::warn_empty(
            STAGE,
            &format!(
                "all {} {} overlap an evaluation prompt",
                row.input, row.unit
            ),
        );
    }
    Ok(rows)
}
