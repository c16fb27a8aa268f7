//! The quick start's hand-written verified instructions (issue 8): the file has the
//! crossval stage's record shape, every instruction has enough functions and cases of
//! both outcomes, every function gives every case its expected verdict inside the real
//! verification sandbox (so the stored accuracies and pass rates are the measured ones),
//! no instruction sentence is lifted from IFEval, the evaluation set, and the IFEval
//! instruction types each instruction names are real IFEval instruction ids.

mod common;

use common::python_available;
use std::collections::HashSet;
use std::time::Duration;

use autoif::eval::ifeval::INSTRUCTION_IDS;
use autoif::pipeline::crossval::{read_verified_instructions, Validated};
use autoif::verify::{FunctionRun, Outcome, Sandbox, SandboxOptions};

const INSTRUCTIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/quickstart/verified_instructions.jsonl"
);
const IFEVAL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/ifeval/input_data.jsonl"
);

fn load() -> Vec<Validated> {
    let text = std::fs::read_to_string(INSTRUCTIONS).expect("read the quick start instructions");
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{INSTRUCTIONS} line {}: {e}", i + 1))
        })
        .collect()
}

#[test]
fn records_have_unique_ids_enough_functions_and_cases_of_both_outcomes() {
    let records = load();
    assert_eq!(records.len(), 48, "the quick start ships 48 instructions");
    let mut ids = HashSet::new();
    let mut texts = HashSet::new();
    for r in &records {
        assert!(ids.insert(r.id.as_str()), "duplicate id {}", r.id);
        assert!(
            texts.insert(r.instruction.to_lowercase()),
            "{}: duplicate instruction {:?}",
            r.id,
            r.instruction
        );
        assert!(
            !r.instruction.trim().is_empty(),
            "{}: empty instruction",
            r.id
        );
        assert!(r.funcs.len() >= 2, "{}: {} functions", r.id, r.funcs.len());
        assert!(r.cases.len() >= 6, "{}: {} cases", r.id, r.cases.len());
        let trues = r.cases.iter().filter(|c| c.output).count();
        assert!(
            trues > 0 && trues < r.cases.len(),
            "{}: cases need both outcomes ({trues} of {} true)",
            r.id,
            r.cases.len()
        );
        let distinct: HashSet<&str> = r.funcs.iter().map(|f| f.source.as_str()).collect();
        assert_eq!(distinct.len(), r.funcs.len(), "{}: repeated function", r.id);
    }
}

#[test]
fn named_ifeval_types_are_real_instruction_ids_and_leave_some_uncovered() {
    let mut covered = HashSet::new();
    for r in load() {
        let distinct: HashSet<&str> = r.ifeval_types.iter().map(String::as_str).collect();
        assert_eq!(
            distinct.len(),
            r.ifeval_types.len(),
            "{}: repeated type",
            r.id
        );
        for t in &r.ifeval_types {
            assert!(
                INSTRUCTION_IDS.contains(&t.as_str()),
                "{}: {t:?} is not an IFEval instruction id",
                r.id
            );
            covered.insert(t.clone());
        }
    }
    // The run report splits IFEval's types into covered and not covered: both groups
    // exist for the quick start.
    assert!(
        !covered.is_empty() && covered.len() < INSTRUCTION_IDS.len(),
        "{} of {} IFEval types covered",
        covered.len(),
        INSTRUCTION_IDS.len()
    );
    // The run's own reader accepts the file.
    let read = read_verified_instructions(INSTRUCTIONS.as_ref()).expect("the run reads it");
    assert_eq!(read, load());
}

#[test]
fn every_function_gives_every_case_its_expected_verdict_in_the_sandbox() {
    if !python_available(None) {
        return;
    }
    let records = load();
    let sandbox = Sandbox::new(SandboxOptions {
        workers: 2,
        timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .expect("sandbox starts");
    // One job per function, on all of its instruction's case inputs.
    let jobs: Vec<FunctionRun> = records
        .iter()
        .flat_map(|r| {
            let inputs: Vec<String> = r.cases.iter().map(|c| c.input.clone()).collect();
            r.funcs.iter().map(move |f| FunctionRun {
                func: f.source.clone(),
                inputs: inputs.clone(),
            })
        })
        .collect();
    let verdicts = sandbox.run(&jobs).expect("sandbox runs");

    let mut problems = Vec::new();
    let mut verdict_rows = verdicts.iter();
    let mut calls = 0;
    for r in &records {
        let rows: Vec<_> = verdict_rows.by_ref().take(r.funcs.len()).collect();
        for (f_index, (func, row)) in r.funcs.iter().zip(&rows).enumerate() {
            let mut right = 0;
            for (case, verdict) in r.cases.iter().zip(row.iter()) {
                calls += 1;
                let expected = if case.output {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                };
                if verdict.outcome == expected {
                    right += 1;
                } else {
                    problems.push(format!(
                        "{} function {}: {:?} ({:?}) on {:?}, expected {:?}",
                        r.id,
                        f_index + 1,
                        verdict.outcome,
                        verdict.message,
                        case.input,
                        expected
                    ));
                }
            }
            let accuracy = right as f64 / r.cases.len() as f64;
            if (accuracy - func.accuracy).abs() > 1e-9 {
                problems.push(format!(
                    "{} function {}: stored accuracy {} but measured {accuracy}",
                    r.id,
                    f_index + 1,
                    func.accuracy
                ));
            }
        }
        // Pass rate as crossval computes it: the share of functions returning True.
        for (c_index, case) in r.cases.iter().enumerate() {
            let passes = rows
                .iter()
                .filter(|row| row[c_index].outcome == Outcome::Pass)
                .count();
            let rate = passes as f64 / rows.len() as f64;
            if (rate - case.pass_rate).abs() > 1e-9 {
                problems.push(format!(
                    "{} case {}: stored pass rate {} but measured {rate}",
                    r.id,
                    c_index + 1,
                    case.pass_rate
                ));
            }
        }
    }
    assert!(calls >= 48 * 2 * 6, "only {calls} calls ran");
    assert!(
        problems.is_empty(),
        "{} disagreement(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Lowercase with runs of whitespace collapsed to one space.
fn normalise(text: &str) -> String {
    text.to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sentences end at '.', '!' or '?' followed by whitespace.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        current.push(c);
        if matches!(c, '.' | '!' | '?') && chars.peek().is_some_and(|n| n.is_whitespace()) {
            out.push(std::mem::take(&mut current));
        }
    }
    out.push(current);
    out.into_iter()
        .map(|s| normalise(&s))
        .filter(|s| !s.is_empty())
        .collect()
}

/// IFEval's prompts, normalised; none (after a printed SKIP) when the file is absent.
fn ifeval_prompts() -> Option<Vec<String>> {
    let Ok(text) = std::fs::read_to_string(IFEVAL) else {
        eprintln!("SKIP: {IFEVAL} is absent; the IFEval overlap check did not run");
        return None;
    };
    let prompts: Vec<String> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("IFEval line parses");
            normalise(value["prompt"].as_str().expect("IFEval prompt is a string"))
        })
        .collect();
    assert!(prompts.len() > 500, "IFEval has {} prompts", prompts.len());
    Some(prompts)
}

#[test]
fn no_instruction_sentence_occurs_in_an_ifeval_prompt() {
    let Some(prompts) = ifeval_prompts() else {
        return;
    };
    let mut copied = Vec::new();
    for r in load() {
        for sentence in sentences(&r.instruction) {
            if prompts.iter().any(|p| p.contains(&sentence)) {
                copied.push(format!("{}: {sentence:?}", r.id));
            }
        }
    }
    assert!(
        copied.is_empty(),
        "instruction sentences found in IFEval prompts:\n{}",
        copied.join("\n")
    );
}

#[test]
fn the_overlap_check_catches_a_sentence_copied_from_ifeval() {
    // Guards the check above against passing vacuously: a sentence lifted from an
    // IFEval prompt, with different case and spacing, is found.
    let Some(prompts) = ifeval_prompts() else {
        return;
    };
    let copied = "Do not  use any COMMAS in your response.";
    let found = sentences(copied)
        .iter()
        .any(|s| prompts.iter().any(|p| p.contains(s.as_str())));
    assert!(found, "a copied IFEval sentence went unnoticed");
}
