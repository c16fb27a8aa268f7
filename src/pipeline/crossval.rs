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

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

use super::funcs::{self, FuncAnswers};
use super::funnel::{DropReason, FunnelRow};
use super::parse::case_output;
use super::{pass_rate, Execute, Pipeline};

use crate::eval::ifeval::INSTRUCTION_IDS;
use crate::io::read_jsonl;
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
    /// The IFEval instruction ids this instruction corresponds to, if any: hand-written
    /// verified instructions name them so a run's report can tell IFEval types the
    /// training covered from those it did not. Instructions written by a model have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ifeval_types: Vec<String>,
}

/// Reads a file of verified instructions (`synthesis.verified_instructions`): at least
/// one, and every `ifeval_types` entry one of IFEval's instruction ids.
pub fn read_verified_instructions(path: &Path) -> Result<Vec<Validated>> {
    let records: Vec<Validated> = read_jsonl(path)?;
    if records.is_empty() {
        bail!("{}: no verified instruction", path.display());
    }
    for record in &records {
        if let Some(unknown) = record
            .ifeval_types
            .iter()
            .find(|t| !INSTRUCTION_IDS.contains(&t.as_str()))
        {
            bail!(
                "{}: instruction {}: `ifeval_types` holds {unknown:?}, which is not an IFEval \
                 instruction id (known: {})",
                path.display(),
                record.id,
                INSTRUCTION_IDS.join(", ")
            );
        }
    }
    Ok(records)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FuncReport {
    pub source: String,
    pub accuracy: Option<f64>,
    /// Why it was dropped; none when kept.
    pub reason: Option<DropReason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseReport {
    pub input: String,
    pub output: Value,
    pub agreeing_funcs: usize,
    pub reason: Option<DropReason>,
}

/// The fate of one instruction, with every function and case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructionOutcome {
    pub id: String,
    pub instruction: String,
    pub kept: Option<Validated>,
    pub reason: Option<DropReason>,
    pub funcs: Vec<FuncReport>,
    pub cases: Vec<CaseReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rejected {
    id: String,
    instruction: String,
    reason: DropReason,
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
                reason: *r,
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
            Some(r) => instructions.drop(*r),
        }
        for f in &o.funcs {
            match &f.reason {
                None => functions.keep(),
                Some(r) => functions.drop(*r),
            }
        }
        for c in &o.cases {
            match &c.reason {
                None => cases.keep(),
                Some(r) => cases.drop(*r),
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

/// Cross-validates instructions; `execute` runs the sandbox (one call for all).
pub fn cross_validate(
    instructions: &[FuncAnswers],
    cfg: &CrossvalConfig,
    lenient: bool,
    execute: &mut Execute,
) -> Result<Vec<InstructionOutcome>> {
    let plans: Vec<RunPlan> = instructions.iter().map(RunPlan::new).collect();
    let runs: Vec<FunctionRun> = plans.iter().flat_map(RunPlan::runs).collect();
    let verdicts = if runs.is_empty() {
        Vec::new()
    } else {
        execute(&runs)?
    };
    let mut first_run = 0;
    let mut outcomes = Vec::with_capacity(instructions.len());
    for (ins, plan) in instructions.iter().zip(&plans) {
        let results = Results {
            plan,
            verdicts: &verdicts[first_run..first_run + plan.funcs.len()],
        };
        first_run += plan.funcs.len();
        outcomes.push(decide(ins, &results, cfg, lenient));
    }
    Ok(outcomes)
}

/// What runs for one instruction: every distinct function on every distinct case input
/// (one empty input when there is none, so a function still shows whether it loads).
struct RunPlan<'a> {
    funcs: Vec<&'a str>,
    inputs: Vec<String>,
}

impl<'a> RunPlan<'a> {
    fn new(ins: &'a FuncAnswers) -> Self {
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
        Self { funcs, inputs }
    }

    fn runs(&self) -> impl Iterator<Item = FunctionRun> + '_ {
        self.funcs.iter().map(|f| FunctionRun {
            func: f.to_string(),
            inputs: self.inputs.clone(),
        })
    }
}

/// One instruction's plan with its verdicts: `verdicts[f][i]` is function `f` of the
/// plan on input `i`.
struct Results<'a> {
    plan: &'a RunPlan<'a>,
    verdicts: &'a [Vec<Verdict>],
}

impl Results<'_> {
    /// Function `f`'s answer on `input`; none when the call failed.
    fn answer(&self, f: usize, input: &str) -> Option<bool> {
        let i = self.plan.inputs.iter().position(|x| x == input)?;
        result(&self.verdicts[f][i])
    }

    /// Verdicts of the functions `funcs` on `input`.
    fn verdicts_on(&self, funcs: &[usize], input: &str) -> Vec<&Verdict> {
        let i = self
            .plan
            .inputs
            .iter()
            .position(|x| x == input)
            .expect("planned");
        funcs.iter().map(|&f| &self.verdicts[f][i]).collect()
    }
}

/// The functions and cases of an instruction's answers after loading and
/// de-duplication, with the reports of those already dropped.
struct Candidates {
    /// Plan indices of the distinct functions that load, in answer order.
    loading: Vec<usize>,
    /// Distinct cases as written (input, output).
    cases: Vec<(String, Value)>,
    func_reports: Vec<FuncReport>,
    case_reports: Vec<CaseReport>,
}

/// Decides one instruction from its functions' verdicts.
fn decide(
    ins: &FuncAnswers,
    results: &Results,
    cfg: &CrossvalConfig,
    lenient: bool,
) -> InstructionOutcome {
    let mut candidates = candidates(ins, results);
    let too_few = if candidates.loading.len() < cfg.min_funcs {
        Some((
            DropReason::TooFewFunctions,
            DropReason::InstructionTooFewFunctions,
        ))
    } else if candidates.cases.len() < cfg.min_cases {
        Some((DropReason::TooFewCases, DropReason::InstructionTooFewCases))
    } else {
        None
    };
    if let Some((reason, members_reason)) = too_few {
        return too_few_outcome(ins, results.plan, candidates, reason, members_reason);
    }
    let kept_cases = judge_cases(&mut candidates, results, cfg, lenient);
    let kept_funcs = score_funcs(&mut candidates, results, &kept_cases, cfg);
    let kept = (!kept_funcs.is_empty()).then(|| Validated {
        id: ins.id.clone(),
        instruction: ins.instruction.clone(),
        funcs: kept_funcs
            .iter()
            .map(|&(f, accuracy)| ScoredFunc {
                source: results.plan.funcs[f].to_string(),
                accuracy,
            })
            .collect(),
        cases: kept_case_rates(results, &kept_funcs, &kept_cases),
        ifeval_types: Vec::new(),
    });
    InstructionOutcome {
        id: ins.id.clone(),
        instruction: ins.instruction.clone(),
        reason: kept.is_none().then_some(DropReason::NoAccurateFunction),
        kept,
        funcs: candidates.func_reports,
        cases: candidates.case_reports,
    }
}

/// Drops the functions that do not load and repeated functions and cases.
fn candidates(ins: &FuncAnswers, results: &Results) -> Candidates {
    let mut out = Candidates {
        loading: Vec::new(),
        cases: Vec::new(),
        func_reports: Vec::new(),
        case_reports: Vec::new(),
    };
    let mut seen_funcs = HashSet::new();
    for a in &ins.answers {
        let index = results
            .plan
            .funcs
            .iter()
            .position(|f| *f == a.func)
            .expect("planned");
        if does_not_load(&results.verdicts[index]) {
            out.func_reports.push(FuncReport {
                source: a.func.clone(),
                accuracy: None,
                reason: Some(DropReason::DoesNotLoad),
            });
            continue;
        }
        if seen_funcs.insert(index) {
            out.loading.push(index);
        } else {
            out.func_reports.push(FuncReport {
                source: a.func.clone(),
                accuracy: None,
                reason: Some(DropReason::Duplicate),
            });
        }
        for case in &a.cases {
            if out.cases.contains(case) {
                out.case_reports.push(CaseReport {
                    input: case.0.clone(),
                    output: case.1.clone(),
                    agreeing_funcs: 0,
                    reason: Some(DropReason::Duplicate),
                });
            } else {
                out.cases.push(case.clone());
            }
        }
    }
    out
}

/// An instruction with too few functions or cases: everything it has is dropped with it.
fn too_few_outcome(
    ins: &FuncAnswers,
    plan: &RunPlan,
    mut candidates: Candidates,
    reason: DropReason,
    members_reason: DropReason,
) -> InstructionOutcome {
    for &f in &candidates.loading {
        candidates.func_reports.push(FuncReport {
            source: plan.funcs[f].to_string(),
            accuracy: None,
            reason: Some(members_reason),
        });
    }
    for (input, output) in candidates.cases {
        candidates.case_reports.push(CaseReport {
            input,
            output,
            agreeing_funcs: 0,
            reason: Some(members_reason),
        });
    }
    InstructionOutcome {
        id: ins.id.clone(),
        instruction: ins.instruction.clone(),
        kept: None,
        reason: Some(reason),
        funcs: candidates.func_reports,
        cases: candidates.case_reports,
    }
}

/// Keeps a case when it has a boolean output and enough loading functions agree with
/// it; returns the kept cases (input, expected output).
fn judge_cases(
    candidates: &mut Candidates,
    results: &Results,
    cfg: &CrossvalConfig,
    lenient: bool,
) -> Vec<(String, bool)> {
    let mut kept_cases = Vec::new();
    for (input, output) in std::mem::take(&mut candidates.cases) {
        let expected = case_output(&output, lenient);
        let agreeing = match expected {
            Some(e) => candidates
                .loading
                .iter()
                .filter(|&&f| results.answer(f, &input) == Some(e))
                .count(),
            None => 0,
        };
        let reason = match expected {
            None => Some(DropReason::OutputNotBoolean),
            Some(_) if agreeing < cfg.min_case_agreement => Some(DropReason::NoFunctionAgrees),
            Some(e) => {
                kept_cases.push((input.clone(), e));
                None
            }
        };
        candidates.case_reports.push(CaseReport {
            input,
            output,
            agreeing_funcs: agreeing,
            reason,
        });
    }
    kept_cases
}

/// Keeps a loading function when its accuracy on the kept cases reaches
/// `min_func_accuracy`; returns the kept functions (plan index, accuracy).
fn score_funcs(
    candidates: &mut Candidates,
    results: &Results,
    kept_cases: &[(String, bool)],
    cfg: &CrossvalConfig,
) -> Vec<(usize, f64)> {
    let mut kept_funcs = Vec::new();
    for &f in &candidates.loading {
        let accuracy = if kept_cases.is_empty() {
            0.0
        } else {
            kept_cases
                .iter()
                .filter(|(input, e)| results.answer(f, input) == Some(*e))
                .count() as f64
                / kept_cases.len() as f64
        };
        let keep = accuracy >= cfg.min_func_accuracy;
        if keep {
            kept_funcs.push((f, accuracy));
        }
        candidates.func_reports.push(FuncReport {
            source: results.plan.funcs[f].to_string(),
            accuracy: Some(accuracy),
            reason: (!keep).then_some(DropReason::LowAccuracy),
        });
    }
    kept_funcs
}

/// The kept cases with the pass rate of the kept functions on each (for
/// instruction-level preference pairs).
fn kept_case_rates(
    results: &Results,
    kept_funcs: &[(usize, f64)],
    kept_cases: &[(String, bool)],
) -> Vec<KeptCase> {
    let funcs: Vec<usize> = kept_funcs.iter().map(|&(f, _)| f).collect();
    kept_cases
        .iter()
        .map(|(input, output)| KeptCase {
            input: input.clone(),
            output: *output,
            pass_rate: pass_rate(&results.verdicts_on(&funcs, input)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_instructions_carry_ifeval_types_and_refuse_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verified.jsonl");
        let line = |id: &str, types: &str| {
            format!(r#"{{"id": "{id}", "instruction": "x", "funcs": [], "cases": []{types}}}"#)
                + "\n"
        };
        // Old files without the field still load.
        std::fs::write(
            &path,
            line("a", "") + &line("b", r#", "ifeval_types": ["punctuation:no_comma"]"#),
        )
        .unwrap();
        let records = read_verified_instructions(&path).unwrap();
        assert!(records[0].ifeval_types.is_empty());
        assert_eq!(records[1].ifeval_types, ["punctuation:no_comma"]);
        // Written back, an instruction without types has no such key.
        assert!(!serde_json::to_string(&records[0])
            .unwrap()
            .contains("ifeval_types"));

        std::fs::write(
            &path,
            line("c", r#", "ifeval_types": ["punctuation:no_commas"]"#),
        )
        .unwrap();
        let err = read_verified_instructions(&path).unwrap_err().to_string();
        assert!(
            err.contains("instruction c: `ifeval_types` holds \"punctuation:no_commas\""),
            "{err}"
        );
        std::fs::write(&path, "").unwrap();
        let err = read_verified_instructions(&path).unwrap_err().to_string();
        assert!(err.contains("no verified instruction"), "{err}");
    }
}
