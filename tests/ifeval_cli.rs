//! `autoif eval ifeval --responses`: the binary scores a subset of GPT-4's responses and
//! writes the reference evaluator's files; bad input fails with one line and no output.

mod common;

use common::autoif;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/ifeval");

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Writes the first `n` GPT-4 responses to a file in `dir`.
fn subset(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("responses.jsonl");
    let text: String = lines(&Path::new(DATA).join("gpt4_responses.jsonl"))
        .into_iter()
        .take(n)
        .map(|l| l + "\n")
        .collect();
    std::fs::write(&path, text).expect("write subset");
    path
}

#[test]
fn scores_a_subset_and_writes_reference_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let responses = subset(dir.path(), 25);
    let out = dir.path().join("out");
    let data = format!("{DATA}/input_data.jsonl");
    let run = autoif(&[
        "eval",
        "ifeval",
        "--responses",
        responses.to_str().unwrap(),
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "autoif failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("prompt-level accuracy (%)") && stdout.contains("punctuation:no_comma"),
        "{stdout}"
    );
    // 25 of 541 prompts are answered: the rest are reported, not scored.
    assert!(String::from_utf8_lossy(&run.stderr).contains("516 of 541 prompts have no response"));

    assert_eq!(lines(&out.join("responses.jsonl")).len(), 25);
    for mode in ["strict", "loose"] {
        let ours = lines(&out.join(format!("eval_results_{mode}.jsonl")));
        assert_eq!(ours.len(), 25);
        // Each line is the reference's own line for that prompt, less its extra flag.
        let reference: Vec<String> =
            lines(&Path::new(DATA).join(format!("gpt4_official_{mode}.jsonl")))
                .into_iter()
                .map(|l| {
                    l.replace(", \"langdetect_unstable\": false}", "}")
                        .replace(", \"langdetect_unstable\": true}", "}")
                })
                .collect();
        for line in &ours {
            assert!(
                reference.contains(line),
                "{mode}: line not in the reference file: {line}"
            );
        }
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["prompts"], 25);
    let strict = lines(&out.join("eval_results_strict.jsonl"));
    let all_followed = strict
        .iter()
        .filter(|l| l.starts_with("{\"follow_all_instructions\": true"))
        .count();
    assert_eq!(
        summary["prompt_level_strict_acc"].as_f64().unwrap(),
        all_followed as f64 / 25.0
    );
    for key in [
        "inst_level_strict_acc",
        "prompt_level_loose_acc",
        "inst_level_loose_acc",
    ] {
        let value = summary[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&value), "{key} = {value}");
    }
    assert!(
        summary["per_instruction_type"]["punctuation:no_comma"]["count"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(summary["per_category"]["keywords"]["strict"].is_f64());
}

#[test]
fn limit_selects_the_first_prompts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let responses = subset(dir.path(), 25);
    let out = dir.path().join("out");
    let data = format!("{DATA}/input_data.jsonl");
    let run = autoif(&[
        "eval",
        "ifeval",
        "--responses",
        responses.to_str().unwrap(),
        "--data",
        &data,
        "--limit",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(lines(&out.join("eval_results_loose.jsonl")).len(), 5);
}

#[test]
fn bad_input_fails_with_one_line_and_no_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let data = format!("{DATA}/input_data.jsonl");
    let bad = dir.path().join("bad.jsonl");

    let error_of = |run: Output| {
        assert!(!run.status.success());
        let stderr = String::from_utf8_lossy(&run.stderr).to_string();
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(!out.exists(), "no output on error");
        stderr
    };

    std::fs::write(&bad, "{\"prompt\": \"x\", \"response\": \"y\"}\nnot json\n").unwrap();
    let stderr = error_of(autoif(&[
        "eval",
        "ifeval",
        "--responses",
        bad.to_str().unwrap(),
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(stderr.contains("bad.jsonl:2: not valid JSON"), "{stderr}");

    std::fs::write(
        &bad,
        "{\"prompt\": \"not an IFEval prompt\", \"response\": \"y\"}\n",
    )
    .unwrap();
    let stderr = error_of(autoif(&[
        "eval",
        "ifeval",
        "--responses",
        bad.to_str().unwrap(),
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(
        stderr.contains("is not in") && stderr.contains("input_data.jsonl"),
        "{stderr}"
    );

    let stderr = error_of(autoif(&[
        "eval",
        "ifeval",
        "--responses",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(stderr.contains("pass --data"), "{stderr}");

    // No such model here (and, until the engine is wired, no generation at all).
    error_of(autoif(&[
        "eval",
        "ifeval",
        "--model",
        "no/such-model",
        "--data",
        &data,
        "--limit",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]));
}

/// `follow_all_instructions` per prompt text of an `eval_results_*.jsonl` file.
fn verdicts(path: &Path) -> std::collections::HashMap<String, bool> {
    lines(path)
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["prompt"].as_str().unwrap().to_string(),
                v["follow_all_instructions"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn compare_pairs_two_outputs_and_refuses_different_prompts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = format!("{DATA}/input_data.jsonl");
    let score = |responses: &Path, out: &Path, limit: &str| {
        let run = autoif(&[
            "eval",
            "ifeval",
            "--responses",
            responses.to_str().unwrap(),
            "--data",
            &data,
            "--limit",
            limit,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    };
    let gpt4 = subset(dir.path(), 40);
    // The same prompts answered differently, in reverse order: every response in lower
    // case, which passes some instructions GPT-4 failed and fails some it passed.
    let lowered = dir.path().join("lowered.jsonl");
    let text: String = lines(&gpt4)
        .iter()
        .rev()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let response = v["response"].as_str().unwrap().to_lowercase();
            v["response"] = response.into();
            v.to_string() + "\n"
        })
        .collect();
    std::fs::write(&lowered, text).unwrap();
    let (before, after, fewer) = (
        dir.path().join("before"),
        dir.path().join("after"),
        dir.path().join("fewer"),
    );
    score(&gpt4, &before, "40");
    score(&lowered, &after, "40");
    score(&lowered, &fewer, "30");

    let instructions = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/quickstart/verified_instructions.jsonl"
    );
    let run = autoif(&[
        "eval",
        "compare",
        before.to_str().unwrap(),
        after.to_str().unwrap(),
        "--instructions",
        instructions,
        "--json",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(json["change"]["prompts"], 40);
    for mode in ["strict", "loose"] {
        let b = verdicts(&before.join(format!("eval_results_{mode}.jsonl")));
        let a = verdicts(&after.join(format!("eval_results_{mode}.jsonl")));
        let gained = b.iter().filter(|(p, &v)| !v && a[*p]).count();
        let lost = b.iter().filter(|(p, &v)| v && !a[*p]).count();
        let change = &json["change"][mode];
        assert_eq!(
            (change["gained"].as_u64(), change["lost"].as_u64()),
            (Some(gained as u64), Some(lost as u64)),
            "{mode}"
        );
        assert_eq!(
            change["p_value"].as_f64().unwrap(),
            autoif::eval::ifeval::mcnemar_exact_p(gained, lost)
        );
    }
    assert!(
        json["change"]["loose"]["gained"].as_u64().unwrap()
            + json["change"]["loose"]["lost"].as_u64().unwrap()
            > 0,
        "lower-casing changes some verdicts"
    );
    let covered = &json["coverage"]["covered"]["types"];
    assert!(covered
        .as_array()
        .unwrap()
        .contains(&"change_case:english_lowercase".into()));

    let table = autoif(&[
        "eval",
        "compare",
        before.to_str().unwrap(),
        after.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert!(
        stdout.contains("prompt level, paired") && stdout.contains("exact McNemar p = "),
        "{stdout}"
    );

    let run = autoif(&[
        "eval",
        "compare",
        before.to_str().unwrap(),
        fewer.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("different prompts") && stderr.contains("10 only before"),
        "{stderr}"
    );
}
