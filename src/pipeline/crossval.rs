//! Stage `crossval`: cross-validation by execution, the released script's rules. Every
//! distinct function runs on every distinct case input in the sandbox. A function that
//! does not load (syntax error, no `evaluate`) is dropped with its answer's cases;
//! an instruction needs `min_funcs` functions and `min_cases` cases; a case is kept when
//! at least `min_case_agreement` functions return its expected output; a function is
//! kept when its accuracy on the kept cases reaches `min_func_accuracy`; an instruction
//! without a kept function is dropped.
//!
//! Output `crossval/instructions.jsonl`: `{id, instruction, funcs: [{source,
//! accuracy}], cases: [{input, output, pass_rate}]}` (pass rate of the kept functions
//! on the case, for instruction-level preference pairs); `crossval/details.jsonl`:
//! every function and case with its fate; `crossval/rejected.jsonl`: `{id,
//! instruction, reason}`.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;

use super::funcs::{self, FuncAnswers};
use super::funnel::FunnelRow;
use super::parse::case_output;
use super::{pass_rate, Execute, Pipeline};
use crate::verify::{ErrorKind, FunctionRun, Outcome, Verdict};

pub const STAGE: &str = "crossval";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CrossvalConfig {
    /// Distinct loadable functions an instruction needs (paper: 3).
    pub min_funcs: usize,
    /// Distinct test cases an instruction needs (paper: 10).
    pub min_cases: usize,
    /// A function is kept when its accuracy on the kept cases reaches this (paper: 0.8).
    pub min_func_accuracy: f64,
    /// A case is kept when at least this many functions agree with it (paper: 1).
    pub min_case_agreement: usize,
    /// Instruction-level preference pairs: chosen case inputs need this pass rate.
    pub chosen_min_pass_rate: f64,
}

impl Default for CrossvalConfig {
    fn default() -> Self {
        Self {
            min_funcs: 3,
            min_cases: 10,
            min_func_accuracy: 0.8,
            min_case_agreement: 1,
            chosen_min_pass_rate: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredFunc {
    pub source: String,
    pub accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptCase {
    pub input: String,
    pub output: bool,
    pub pass_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validated {
    pub id: String,
    pub instruction: String,
    pub funcs: Vec<ScoredFunc>,
    pub cases: Vec<KeptCase>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FuncReport {
    pub source: String,
    pub accuracy: Option<f64>,
    /// Why it was dropped; none when kept.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseReport {
    pub input: String,
    pub output: Value,
    pub agreeing_funcs: usize,
    pub reason: Option<String>,
}

/// The fate of one instruction, with every function and case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructionOutcome {
    pub id: String,
    pub instruction: String,
    pub kept: Option<Validated>,
    pub reason: Option<String>,
    pub funcs: Vec<FuncReport>,
    pub cases: Vec<CaseReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rejected {
    id: String,
    instruction: String,
    reason: String,
}

pub fn run(p: &mut Pipeline) -> Result<Vec<FunnelRow>> {
    let answers: Vec<FuncAnswers> = p.files.read_records(funcs::STAGE, "answers.jsonl")?;
    let cfg = p.synthesis.crossval.clone();
    let lenient = p.synthesis.funcs.string_case_outputs;
    let files = p.files.clone();
    let outcomes: Vec<InstructionOutcome> = files.chunked(
        STAGE,
        &answers,
        p.synthesis.chunk,
        |a| a.id.clone(),
        |units| cross_validate(units, &cfg, lenient, &mut |jobs| p.execute(jobs)),
    )?;
    let rows = funnel(&outcomes);
    let kept: Vec<&Validated> = outcomes.iter().filter_map(|o| o.kept.as_ref()).collect();
    let rejected: Vec<Rejected> = outcomes
        .iter()
        .filter_map(|o| {
            o.reason.as_ref().map(|r| Rejected {
                id: o.id.clone(),
                instruction: o.instruction.clone(),
                reason: r.clone(),
            })
        })
        .collect();
    p.files.write_records(STAGE, "instructions.jsonl", &kept)?;
    p.files.write_records(STAGE, "details.jsonl", &outcomes)?;
    p.files.write_records(STAGE, "rejected.jsonl", &rejected)?;
    if kept.is_empty() {
        super::warn_empty(STAGE, "no instruction survived cross-validation");
    }
    Ok(rows)
}

fn funnel(outcomes: &[InstructionOutcome]) -> Vec<FunnelRow> {
    let mut instructions = FunnelRow::new(STAGE, "instructions");
    let mut functions = FunnelRow::new(STAGE, "functions");
    let mut cases = FunnelRow::new(STAGE, "cases");
    for o in outcomes {
        match &o.reason {
            None => instructions.keep(),
            Some(r) => instructions.drop(r),
        }
        for f in &o.funcs {
            match &f.reason {
                None => functions.keep(),
                Some(r) => functions.drop(r),
            }
        }
        for c in &o.cases {
            match &c.reason {
                None => cases.keep(),
                Some(r) => cases.drop(r),
            }
        }
    }
    vec![instructions, functions, cases]
}

fn does_not_load(verdicts: &[Verdict]) -> bool {
    verdicts.iter().all(|v| {
        matches!(
            v.outcome,
            Outcome::Error(ErrorKind::Compile) | Outcome::Error(ErrorKind::MissingEvaluate)
        )
    })
}

fn result(v: &Verdict) -> Option<bool> {
    match v.outcome {
        Outcome::Pass => Some(true),
        Outcome::Fail => Some(false),
        Outcome::Error(_) => None,
    }
}

/// Cross-validates instructions; `execute` runs sandbox jobs (one call for all).
pub fn cross_validate(
    instructions: &[FuncAnswers],
    cfg: &CrossvalConfig,
    lenient: bool,
    execute: &mut Execute,
) -> Result<Vec<InstructionOutcome>> {
    // Every distinct function of an instruction on every distinct case input of it.
    let mut jobs = Vec::new();
    let mut plans = Vec::new();
    for ins in instructions {
        let mut funcs: Vec<&str> = Vec::new();
        for a in &ins.answers {
            if !funcs.contains(&a.func.as_str()) {
                funcs.push(&a.func);
            }
        }
        let mut inputs: Vec<String> = Vec::new();
        for a in &ins.answers {
            for (input, _) in &a.cases {
                if !inputs.contains(input) {
                    inputs.push(input.clone());
                }
            }
        }
        if inputs.is_empty() {
            inputs.push(String::new());
        }
        let first_job = jobs.len();
        for f in &funcs {
            jobs.push(FunctionRun {
                func: f.to_string(),
                inputs: inputs.clone(),
            });
        }
        plans.push((funcs, inputs, first_job));
    }
    let verdicts = if jobs.is_empty() {
        Vec::new()
    } else {
        execute(&jobs)?
    };
    let mut outcomes = Vec::new();
    for (ins, (funcs, inputs, first_job)) in instructions.iter().zip(plans) {
        let of = |func_index: usize, input: &str| -> Option<bool> {
            let i = inputs.iter().position(|x| x == input)?;
            result(&verdicts[first_job + func_index][i])
        };
        let mut func_reports: Vec<FuncReport> = Vec::new();
        let mut loading: Vec<usize> = Vec::new();
        let mut seen_funcs = HashSet::new();
        let mut cases: Vec<(String, Value)> = Vec::new();
        let mut case_reports: Vec<CaseReport> = Vec::new();
        for a in &ins.answers {
            let index = funcs.iter().position(|f| *f == a.func).expect("planned");
            if does_not_load(&verdicts[first_job + index]) {
                func_reports.push(FuncReport {
                    source: a.func.clone(),
                    accuracy: None,
                    reason: Some("does_not_load".into()),
                });
                continue;
            }
            if seen_funcs.insert(index) {
                loading.push(index);
            } else {
                func_reports.push(FuncReport {
                    source: a.func.clone(),
                    accuracy: None,
                    reason: Some("duplicate".into()),
                });
            }
            for case in &a.cases {
                if cases.contains(case) {
                    case_reports.push(CaseReport {
                        input: case.0.clone(),
                        output: case.1.clone(),
                        agreeing_funcs: 0,
                        reason: Some("duplicate".into()),
                    });
                } else {
                    cases.push(case.clone());
                }
            }
        }
        let too_few = if loading.len() < cfg.min_funcs {
            Some("too_few_functions")
        } else if cases.len() < cfg.min_cases {
            Some("too_few_cases")
        } else {
            None
        };
        if let Some(reason) = too_few {
            for &f in &loading {
                func_reports.push(FuncReport {
                    source: funcs[f].to_string(),
                    accuracy: None,
                    reason: Some(format!("instruction_{reason}")),
                });
            }
            for (input, output) in cases {
                case_reports.push(CaseReport {
                    input,
                    output,
                    agreeing_funcs: 0,
                    reason: Some(format!("instruction_{reason}")),
                });
            }
            outcomes.push(InstructionOutcome {
                id: ins.id.clone(),
                instruction: ins.instruction.clone(),
                kept: None,
                reason: Some(reason.into()),
                funcs: func_reports,
                cases: case_reports,
            });
            continue;
        }
        let mut kept_cases: Vec<(String, bool)> = Vec::new();
        for (input, output) in cases {
            let expected = case_output(&output, lenient);
            let agreeing = match expected {
                Some(e) => loading
                    .iter()
                    .filter(|&&f| of(f, &input) == Some(e))
                    .count(),
                None => 0,
            };
            let reason = match expected {
                None => Some("output_not_boolean"),
                Some(_) if agreeing < cfg.min_case_agreement => Some("no_function_agrees"),
                Some(e) => {
                    kept_cases.push((input.clone(), e));
                    None
                }
            };
            case_reports.push(CaseReport {
                input,
                output,
                agreeing_funcs: agreeing,
                reason: reason.map(String::from),
            });
        }
        let mut kept_funcs: Vec<(usize, f64)> = Vec::new();
        for &f in &loading {
            let accuracy = if kept_cases.is_empty() {
                0.0
            } else {
                kept_cases
                    .iter()
                    .filter(|(input, e)| of(f, input) == Some(*e))
                    .count() as f64
                    / kept_cases.len() as f64
            };
            let keep = accuracy >= cfg.min_func_accuracy;
            if keep {
                kept_funcs.push((f, accuracy));
            }
            func_reports.push(FuncReport {
                source: funcs[f].to_string(),
                accuracy: Some(accuracy),
                reason: (!keep).then(|| "low_accuracy".to_string()),
            });
        }
        let kept = (!kept_funcs.is_empty()).then(|| Validated {
            id: ins.id.clone(),
            instruction: ins.instruction.clone(),
            funcs: kept_funcs
                .iter()
                .map(|&(f, accuracy)| ScoredFunc {
                    source: funcs[f].to_string(),
                    accuracy,
                })
                .collect(),
            cases: kept_cases
                .iter()
                .map(|(input, output)| {
                    let i = inputs.iter().position(|x| x == input).expect("planned");
                    let vs: Vec<&Verdict> = kept_funcs
                        .iter()
                        .map(|&(f, _)| &verdicts[first_job + f][i])
                        .collect();
                    KeptCase {
                        input: input.clone(),
                        output: *output,
                        pass_rate: pass_rate(&vs),
                    }
                })
                .collect(),
        });
        outcomes.push(InstructionOutcome {
            id: ins.id.clone(),
            instruction: ins.instruction.clone(),
            reason: kept.is_none().then(|| "no_accurate_function".to_string()),
            kept,
            funcs: func_reports,
            cases: case_reports,
        });
    }
    Ok(outcomes)
}
