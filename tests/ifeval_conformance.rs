//! Conformance of the Rust IFEval scorer with Google's reference evaluator: GPT-4's released
//! responses scored against the official prompts must reproduce the reference's strict and
//! loose verdicts (`gpt4_official_*.jsonl`, produced with `langdetect` seed 0) for at least
//! 99.5% of instructions, and its four summary numbers within 0.2 points. Every disagreement
//! is printed with its instruction id.

use std::collections::HashMap;
use std::time::Instant;

use autoif::eval::ifeval::{evaluate, parse_input_data, parse_responses, PromptResult, Summary};
use serde_json::Value;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/ifeval");

fn read(name: &str) -> String {
    let path = format!("{DATA}/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {path}: {err}"))
}

/// The reference's lines by prompt text.
fn official(mode: &str) -> HashMap<String, (String, Value)> {
    read(&format!("gpt4_official_{mode}.jsonl"))
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("official line is JSON");
            let prompt = value["prompt"].as_str().expect("prompt").to_string();
            (prompt, (line.to_string(), value))
        })
        .collect()
}

/// Compares one mode; returns (agreeing, compared) over prompts not marked unstable.
fn compare(mode: &str, ours: &[PromptResult]) -> (usize, usize) {
    let reference = official(mode);
    let (mut agree, mut total, mut format_mismatches) = (0, 0, 0);
    let (mut unstable_agree, mut unstable_total) = (0, 0);
    for result in ours {
        let (line, value) = &reference[&result.prompt];
        // Lines are byte-identical to the reference's, less its `langdetect_unstable` field.
        let unstable = value["langdetect_unstable"].as_bool().expect("flag");
        let expected_line = line.replace(&format!(", \"langdetect_unstable\": {unstable}}}"), "}");
        if result.to_json_line() != expected_line {
            format_mismatches += 1;
        }
        let expected: Vec<bool> = value["follow_instruction_list"]
            .as_array()
            .expect("list")
            .iter()
            .map(|v| v.as_bool().expect("bool"))
            .collect();
        for ((id, ours), theirs) in result
            .instruction_id_list
            .iter()
            .zip(&result.follow_instruction_list)
            .zip(&expected)
        {
            if unstable {
                unstable_total += 1;
                unstable_agree += usize::from(ours == theirs);
                continue;
            }
            total += 1;
            if ours == theirs {
                agree += 1;
            } else {
                let prompt: String = result.prompt.chars().take(70).collect();
                println!("DISAGREE {mode:6} {id:48} ours={ours:<5} reference={theirs:<5} prompt={prompt:?}");
            }
        }
    }
    println!(
        "{mode}: {agree}/{total} instruction verdicts agree ({:.2}%); on langdetect_unstable prompts \
         {unstable_agree}/{unstable_total}; {format_mismatches} lines differ in format",
        100.0 * agree as f64 / total as f64
    );
    assert_eq!(
        format_mismatches, 0,
        "{mode}: result lines must match the reference's format"
    );
    (agree, total)
}

#[test]
fn gpt4_responses_reproduce_reference_verdicts() {
    let prompts =
        parse_input_data(&read("input_data.jsonl"), "input_data.jsonl").expect("input data parses");
    let responses = parse_responses(&read("gpt4_responses.jsonl"), "gpt4_responses.jsonl")
        .expect("responses parse");
    let by_prompt: HashMap<&str, &str> = responses
        .iter()
        .map(|r| (r.prompt.as_str(), r.response.as_str()))
        .collect();
    let texts: Vec<&str> = prompts
        .iter()
        .map(|p| by_prompt[p.prompt.as_str()])
        .collect();
    assert_eq!(prompts.len(), 541);

    let started = Instant::now();
    let evaluation = evaluate(&prompts, &texts);
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "scored {} responses (strict and loose) in {seconds:.3} s",
        texts.len()
    );
    // Typically about 0.1 s on two cores; the bound only catches a gross regression.
    assert!(seconds < 5.0, "scoring took {seconds:.1} s");

    for (mode, results) in [("strict", &evaluation.strict), ("loose", &evaluation.loose)] {
        let (agree, total) = compare(mode, results);
        assert!(
            agree as f64 >= 0.995 * total as f64,
            "{mode}: only {agree}/{total} verdicts agree"
        );
    }

    let summary = Summary::new(&evaluation);
    print!("{}", summary.table());
    for (name, ours, reference) in [
        (
            "prompt-level strict",
            summary.prompt_level_strict_acc,
            77.08,
        ),
        ("prompt-level loose", summary.prompt_level_loose_acc, 79.67),
        (
            "instruction-level strict",
            summary.inst_level_strict_acc,
            83.69,
        ),
        (
            "instruction-level loose",
            summary.inst_level_loose_acc,
            85.61,
        ),
    ] {
        println!("{name}: {:.2} (reference {reference:.2})", 100.0 * ours);
        assert!(
            (100.0 * ours - reference).abs() <= 0.2,
            "{name}: {:.2} vs reference {reference}",
            100.0 * ours
        );
    }
}

#[test]
fn scoring_is_deterministic() {
    let prompts =
        parse_input_data(&read("input_data.jsonl"), "input_data.jsonl").expect("input data parses");
    let responses = parse_responses(&read("gpt4_responses.jsonl"), "gpt4_responses.jsonl")
        .expect("responses parse");
    let by_prompt: HashMap<&str, &str> = responses
        .iter()
        .map(|r| (r.prompt.as_str(), r.response.as_str()))
        .collect();
    // The language-dependent prompts exercise langdetect's seeded sampling.
    let chosen: Vec<_> = prompts
        .iter()
        .filter(|p| {
            p.instruction_ids
                .iter()
                .any(|id| id.starts_with("language:") || id.starts_with("change_case:"))
        })
        .cloned()
        .collect();
    let texts: Vec<&str> = chosen
        .iter()
        .map(|p| by_prompt[p.prompt.as_str()])
        .collect();
    let first = evaluate(&chosen, &texts);
    let second = evaluate(&chosen, &texts);
    assert_eq!(first.strict, second.strict);
    assert_eq!(first.loose, second.loose);
}
