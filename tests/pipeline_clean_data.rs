//! Data correctness in the offline stages, with a scripted backend and the real
//! sandbox: a response cut by the token limit is counted `truncated` and is never an
//! SFT target nor a side of a DPO pair, and an empty response is never a rejected.

mod common;
mod pipeline_support;

use anyhow::Result;
use autoif::generate::{Backend, Completion, FinishReason, Request};
use autoif::pipeline::backtranslate::Checked;
use autoif::pipeline::crossval::{ScoredFunc, Validated};
use autoif::pipeline::queries::QueryPair;
use autoif::pipeline::{Pipeline, Stage};
use autoif::run::manifest::RunFolder;
use common::{python_available, read_jsonl};
use pipeline_support::{config, SANDBOX_NEEDS_PYTHON};
use serde_json::Value;
use std::collections::BTreeMap;

const PASSES_ON_YES: &str = "def evaluate(response):\n    return 'yes' in response";

/// Answers every request with the same scripted samples, in order.
struct Scripted(Vec<(&'static str, FinishReason)>);

impl Backend for Scripted {
    fn generate(&mut self, requests: &[Request]) -> Result<Vec<Completion>> {
        let mut out = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            assert_eq!(request.n, self.0.len(), "one scripted text per sample");
            for (k, (text, finish_reason)) in self.0.iter().enumerate() {
                out.push(Completion {
                    request_index: i,
                    sample_index: k,
                    text: text.to_string(),
                    token_ids: Vec::new(),
                    finish_reason: *finish_reason,
                });
            }
        }
        Ok(out)
    }
}

#[test]
fn truncated_and_empty_responses_stay_out_of_the_data_sets() {
    if !python_available(SANDBOX_NEEDS_PYTHON) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let toml_text = r#"
        seed = 1
        [synthesis.responses]
        samples = 5
        [synthesis.score]
        enabled = false
    "#;
    let cfg = config(toml_text);
    let run = RunFolder::create(
        &dir.path().join("run"),
        &cfg,
        Value::Null,
        &[
            "backtranslate",
            "queries",
            "responses",
            "score",
            "decontaminate",
            "datasets",
        ],
    )
    .unwrap();
    let files = run.stage_files();
    let instruction = Checked {
        validated: Validated {
            id: "i1".into(),
            instruction: "say yes".into(),
            funcs: vec![ScoredFunc {
                source: PASSES_ON_YES.into(),
                accuracy: 1.0,
            }],
            cases: Vec::new(),
            ifeval_types: Vec::new(),
        },
        back_instructions: Vec::new(),
        similarity: None,
        judgements: None,
        reason: None,
    };
    let pair = QueryPair {
        id: "i1-q1".into(),
        instruction_id: "i1".into(),
        query_id: "q1".into(),
        instruction: "say yes".into(),
        query: "Will it rain tomorrow?".into(),
        funcs: vec![PASSES_ON_YES.into()],
        ifeval_types: Vec::new(),
        parts: Vec::new(),
    };
    files
        .write_records("backtranslate", "instructions.jsonl", &[instruction])
        .unwrap();
    files
        .write_records("queries", "pairs.jsonl", &[pair])
        .unwrap();
    for stage in ["backtranslate", "queries"] {
        run.mark_running(stage).unwrap();
        run.mark_done(stage, Vec::new(), 0.0).unwrap();
    }

    let mut backend = Scripted(vec![
        ("yes, it will.", FinishReason::Stop),
        ("yes, and the clouds over the", FinishReason::Length),
        ("", FinishReason::Stop),
        ("no idea.", FinishReason::Stop),
        ("no, the forecast says that the", FinishReason::Length),
    ]);
    let mut pipeline = Pipeline::new(files.clone(), cfg.seed, cfg.synthesis, Some(&mut backend));
    let mut funnel = BTreeMap::new();
    for stage in [
        Stage::Responses,
        Stage::Score,
        Stage::Decontaminate,
        Stage::Datasets,
    ] {
        for row in run.run_stage(&mut pipeline, stage).unwrap() {
            funnel.insert(format!("{}/{}", row.stage, row.unit), row);
        }
    }

    let responses = &funnel["responses/responses"];
    assert_eq!((responses.input, responses.output), (5, 1));
    let dropped: Vec<(&str, usize)> = responses
        .dropped
        .iter()
        .map(|(r, n)| (r.as_str(), *n))
        .collect();
    assert_eq!(
        dropped,
        [
            ("empty_response", 1),
            ("low_pass_rate", 1),
            ("truncated", 2)
        ]
    );
    let all = read_jsonl(&files.path("responses", "all.jsonl"));
    let finish: Vec<&str> = all
        .iter()
        .map(|r| r["finish_reason"].as_str().unwrap())
        .collect();
    assert_eq!(finish, ["stop", "length", "stop", "stop", "length"]);

    let sft = read_jsonl(&files.path("datasets", "trl/sft.jsonl"));
    let targets: Vec<&str> = sft
        .iter()
        .map(|r| r["messages"][1]["content"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["yes, it will."]);
    let dpo = read_jsonl(&files.path("datasets", "trl/dpo.jsonl"));
    let sides: Vec<(&str, &str)> = dpo
        .iter()
        .map(|r| {
            (
                r["chosen"][0]["content"].as_str().unwrap(),
                r["rejected"][0]["content"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(sides, [("yes, it will.", "no idea.")]);
}
