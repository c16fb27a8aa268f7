//! Stage `funcs`: K samples per instruction of a `{"func", "cases"}` JSON answer,
//! parsed robustly (see `parse`); every rejected sample and case is counted by reason.
//!
//! Output `funcs/answers.jsonl`: `{id, instruction, answers: [{sample, func, cases}]}`
//! (cases as `[input, output as written]`); `funcs/rejected.jsonl`: `{id, sample,
//! reason, text}`.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::augment::{self, Instruction};
use super::config::Sampling;
use super::funnel::{DropReason, FunnelRow};
use super::parse::parse_func_answer;
use super::prompts::fill;
use super::Pipeline;

pub const STAGE: &str = "funcs";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FuncsConfig {
    /// `{"func", "cases"}` samples per instruction.
    pub samples: usize,
    /// Accept "True"/"False" strings as case outputs. The released script compares them
    /// with booleans, so such cases never agree with a function; off reproduces that.
    pub string_case_outputs: bool,
    pub sampling: Sampling,
}

impl Default for FuncsConfig {
    fn default() -> Self {
        Self {
            samples: 8,
            string_case_outputs: true,
            sampling: Sampling::new(0.7, 768),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub sample: usize,
    pub func: String,
    pub cases: Vec<(String, Value)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FuncAnswers {
    pub id: String,
    pub instruction: String,
    pub answers: Vec<Answer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Samples {
    id: String,
    instruction: String,
    texts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejected {
    pub id: String,
    pub sample: usize,
    pub reason: DropReason,
    pub text: String,
}

pub fn run(p: &mut Pipeline) -> Result<Vec<FunnelRow>> {
    let instructions: Vec<Instruction> =
        p.files.read_records(augment::STAGE, "instructions.jsonl")?;
    let cfg = p.synthesis.funcs.clone();
    let template = p.synthesis.prompts.funcs.clone();
    let files = p.files.clone();
    let samples: Vec<Samples> = files.chunked(
        STAGE,
        &instructions,
        p.synthesis.chunk,
        |i| i.id.clone(),
        |units| {
            let prompts: Vec<(String, String)> = units
                .iter()
                .map(|i| {
                    (
                        i.id.clone(),
                        fill(&template, &[("instruction", &i.instruction)]),
                    )
                })
                .collect();
            let texts = p.generate_texts(STAGE, &prompts, cfg.samples, &cfg.sampling)?;
            Ok(units
                .iter()
                .zip(texts)
                .map(|(i, texts)| Samples {
                    id: i.id.clone(),
                    instruction: i.instruction.clone(),
                    texts,
                })
                .collect())
        },
    )?;
    let mut parsed = Vec::new();
    let mut rejected = Vec::new();
    let mut rows = vec![
        FunnelRow::new(STAGE, "instructions"),
        FunnelRow::new(STAGE, "samples"),
        FunnelRow::new(STAGE, "cases"),
    ];
    for s in samples {
        let (answers, mut rejects, sample_rows) = parse_samples(&s.id, &s.instruction, &s.texts);
        merge(&mut rows[1], &sample_rows[0]);
        merge(&mut rows[2], &sample_rows[1]);
        rejected.append(&mut rejects);
        if answers.answers.is_empty() {
            rows[0].drop(DropReason::NoParsableAnswer);
        } else {
            rows[0].keep();
            parsed.push(answers);
        }
    }
    p.files.write_records(STAGE, "answers.jsonl", &parsed)?;
    p.files.write_records(STAGE, "rejected.jsonl", &rejected)?;
    if parsed.is_empty() {
        super::warn_empty(STAGE, "no instruction got a parsable verification function");
    }
    Ok(rows)
}

fn merge(into: &mut FunnelRow, from: &FunnelRow) {
    into.input += from.input;
    into.output += from.output;
    for (reason, n) in &from.dropped {
        *into.dropped.entry(reason.clone()).or_default() += n;
    }
}

/// Parses the samples of one instruction: the answers that parsed, the rejected
/// samples, and funnel rows for samples and cases.
pub fn parse_samples(
    id: &str,
    instruction: &str,
    texts: &[String],
) -> (FuncAnswers, Vec<Rejected>, [FunnelRow; 2]) {
    let mut samples_row = FunnelRow::new(STAGE, "samples");
    let mut cases_row = FunnelRow::new(STAGE, "cases");
    let mut answers = Vec::new();
    let mut rejected = Vec::new();
    for (sample, text) in texts.iter().enumerate() {
        match parse_func_answer(text) {
            Ok(answer) => {
                samples_row.keep();
                for reason in &answer.bad_cases {
                    cases_row.drop(DropReason::parsed(reason));
                }
                cases_row.input += answer.cases.len();
                cases_row.output += answer.cases.len();
                answers.push(Answer {
                    sample,
                    func: answer.func,
                    cases: answer.cases,
                });
            }
            Err(name) => {
                let reason = DropReason::parsed(name);
                samples_row.drop(reason);
                rejected.push(Rejected {
                    id: id.to_string(),
                    sample,
                    reason,
                    text: text.clone(),
                });
            }
        }
    }
    (
        FuncAnswers {
            id: id.to_string(),
            instruction: instruction.to_string(),
            answers,
        },
        rejected,
        [samples_row, cases_row],
    )
}
