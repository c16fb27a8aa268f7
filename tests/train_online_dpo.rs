//! Online DPO on the embedded SmolLM2 with the real sandbox: samples come from the live
//! weights, their pass rates are the verification functions' verdicts, pairs follow the
//! chosen ≥ 0.5 / rejected = 0 rule, each iteration trains an adapter, and a run
//! interrupted after its first iteration continues to the same second iteration as an
//! uninterrupted run. About a minute on two cores; skipped when the GGUF is missing.

mod common;

use autoif::model::{LoadOptions, Model};
use autoif::train::online_dpo::IterationReport;
use autoif::train::{run_online_dpo, OnlineDpoConfig, OnlineOptions, VerifiedPrompt};
use autoif::verify::{Sandbox, SandboxOptions};
use common::read_jsonl;
use std::collections::HashMap;
use std::path::Path;

const LOWERCASE: &str = "def evaluate(response):\n    return response == response.lower()";
const SHORT: &str = "def evaluate(response):\n    return len(response.split()) < 12";
const NO_COMMA: &str = "def evaluate(response):\n    return ',' not in response";

fn prompts() -> Vec<VerifiedPrompt> {
    let p = |id: &str, prompt: &str, funcs: &[&str]| VerifiedPrompt {
        id: id.to_string(),
        prompt: prompt.to_string(),
        funcs: funcs.iter().map(|f| f.to_string()).collect(),
        parts: Vec::new(),
    };
    vec![
        p(
            "a",
            "Describe a cat in one sentence. Use only lowercase letters.",
            &[LOWERCASE],
        ),
        p(
            "b",
            "What is rain? Answer in fewer than 12 words.",
            &[SHORT],
        ),
        p(
            "c",
            "List three fruits without using any commas.",
            &[NO_COMMA, SHORT],
        ),
        p(
            "d",
            "Say hello to a friend in lowercase and briefly.",
            &[LOWERCASE, SHORT],
        ),
    ]
}

fn config() -> OnlineDpoConfig {
    let mut c = OnlineDpoConfig {
        iterations: 2,
        samples: 6,
        max_new_tokens: 24,
        batch: 24,
        ..OnlineDpoConfig::default()
    };
    c.dpo.args.batch_size = 4;
    c.dpo.args.lr = 1e-4;
    c
}

fn run(model_path: &Path, out: &Path, stop_after: Option<usize>) -> Vec<IterationReport> {
    let mut model = Model::load(model_path.to_str().unwrap(), &LoadOptions::cpu()).unwrap();
    let sandbox = Sandbox::new(SandboxOptions::default()).unwrap();
    run_online_dpo(
        &mut model,
        &prompts(),
        &config(),
        &mut |jobs| sandbox.run(jobs),
        &OnlineOptions {
            out: out.to_path_buf(),
            base_model: model_path.display().to_string(),
            progress: false,
            stop_after,
        },
    )
    .unwrap()
}

/// What the functions above say of a response, computed here without the sandbox.
fn expected_pass_rate(prompt_id: &str, text: &str) -> f64 {
    let lower = (text == text.to_lowercase()) as u8 as f64;
    let short = ((text.split_whitespace().count()) < 12) as u8 as f64;
    let no_comma = (!text.contains(',')) as u8 as f64;
    match prompt_id {
        "a" => lower,
        "b" => short,
        "c" => (no_comma + short) / 2.0,
        "d" => (lower + short) / 2.0,
        other => panic!("unknown prompt {other}"),
    }
}

#[test]
fn online_dpo_grades_pairs_trains_and_resumes() {
    let Some(model_path) = common::smollm2("online_dpo_grades_pairs_trains_and_resumes") else {
        return;
    };
    let full = tempfile::tempdir().unwrap();
    let reports = run(&model_path, full.path(), None);
    assert_eq!(reports.len(), 2);
    assert_eq!(
        read_jsonl(&full.path().join("iterations.jsonl")).len(),
        2,
        "one line per iteration"
    );

    let mut trained = 0;
    for report in &reports {
        let dir = full.path().join(format!("iter-{}", report.iteration));
        let samples = read_jsonl(&dir.join("samples.jsonl"));
        assert_eq!(samples.len(), 4 * 6, "K samples for every prompt");
        assert_eq!(report.samples, 24);
        // The sandbox's verdicts are the functions' real answers.
        let mut rate_of: HashMap<String, f64> = HashMap::new();
        let mut finish_of: HashMap<String, String> = HashMap::new();
        for s in &samples {
            let text = s["response"].as_str().unwrap();
            let rate = s["pass_rate"].as_f64().unwrap();
            finish_of.insert(
                text.to_string(),
                s["finish_reason"].as_str().unwrap().to_string(),
            );
            assert_eq!(
                rate,
                expected_pass_rate(s["prompt_id"].as_str().unwrap(), text),
                "pass rate of {text:?}"
            );
            rate_of.insert(text.to_string(), rate);
        }
        let mean = samples
            .iter()
            .map(|s| s["pass_rate"].as_f64().unwrap())
            .sum::<f64>()
            / samples.len() as f64;
        assert!((report.mean_pass_rate - mean).abs() < 1e-12);
        // Pairs: chosen at or above 0.5, rejected exactly 0.
        let pairs = read_jsonl(&dir.join("pairs.jsonl"));
        assert_eq!(pairs.len(), report.pairs);
        for p in &pairs {
            assert!(rate_of[p["chosen"].as_str().unwrap()] >= 0.5);
            assert_eq!(rate_of[p["rejected"].as_str().unwrap()], 0.0);
            // Neither side is cut by the token limit or empty.
            for side in ["chosen", "rejected"] {
                let text = p[side].as_str().unwrap();
                assert_eq!(finish_of[text], "stop", "{side} {text:?}");
                assert!(!text.trim().is_empty(), "empty {side}");
            }
        }
        let truncated = samples
            .iter()
            .filter(|s| s["finish_reason"] == "length")
            .count();
        assert_eq!(report.truncated, truncated);
        if report.pairs > 0 {
            trained += 1;
            assert!(dir.join("adapter_model.safetensors").is_file());
            assert!(report.loss.is_some_and(f64::is_finite));
            assert_eq!(
                read_jsonl(&dir.join("metrics.jsonl")).len(),
                report.pairs.div_ceil(4),
                "one optimizer step per batch of 4 pairs"
            );
        }
    }
    assert!(trained > 0, "no iteration found a pair: {reports:?}");
    let second = read_jsonl(&full.path().join("iter-2/samples.jsonl"));

    // Interrupted after iteration 1, then continued: iteration 2 is the same.
    let resumed = tempfile::tempdir().unwrap();
    assert_eq!(run(&model_path, resumed.path(), Some(1)).len(), 1);
    let continued = run(&model_path, resumed.path(), None);
    assert_eq!(continued.len(), 2);
    assert_eq!(
        read_jsonl(&resumed.path().join("iter-2/samples.jsonl")),
        second,
        "the resumed run samples iteration 2 from the same weights"
    );
    assert_eq!(continued[1].pairs, reports[1].pairs);
    assert_eq!(continued[1].loss, reports[1].loss);
}
