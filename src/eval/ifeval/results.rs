//! An IFEval run as files: greedy responses from a loaded model, and the reference
//! evaluator's four outputs (`responses.jsonl`, `eval_results_{strict,loose}.jsonl`,
//! `summary.json`), shared by `autoif eval ifeval` and the before/after phases of
//! `autoif run`.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use super::scoring::{Evaluation, PromptResult, Summary};
use super::Prompt;
use crate::generate::{
    Backend, EngineOptions, LocalEngine, Prompt as GenPrompt, Request, SamplingParams,
};
use crate::io::write_atomic;
use crate::model::ops::quant::Precision;
use crate::model::Model;
use crate::pyjson;

/// One greedy response per prompt: the model's chat template, one user turn each,
/// adapters on when attached, on the loaded weights themselves (`Precision::Exact`): the
/// evaluation is evidence about the model, and int8 inference picks another token at a
/// few percent of near-tied greedy steps.
pub fn generate_responses(
    model: &Model,
    prompts: &[Prompt],
    max_new_tokens: usize,
    batch: usize,
) -> Result<Vec<String>> {
    let params = SamplingParams {
        max_new_tokens,
        ..SamplingParams::default()
    };
    let requests: Vec<Request> = prompts
        .iter()
        .map(|p| Request {
            prompt: GenPrompt::user(p.prompt.as_str()),
            n: 1,
            params: params.clone(),
        })
        .collect();
    let options = EngineOptions {
        max_batch: batch,
        precision: Precision::Exact,
        ..EngineOptions::default()
    };
    let mut texts = vec![String::new(); prompts.len()];
    for c in LocalEngine::new(model, options).generate(&requests)? {
        texts[c.request_index] = c.text;
    }
    Ok(texts)
}

/// The scores file `write_results` writes beside the responses and verdicts.
pub const SUMMARY_FILE: &str = "summary.json";

fn jsonl(lines: impl Iterator<Item = String>) -> Vec<u8> {
    lines
        .flat_map(|line| [line, "\n".to_string()])
        .collect::<String>()
        .into_bytes()
}

/// Writes the four output files into `out`, each atomically; `meta` (what was scored,
/// with which settings) heads `summary.json`.
pub fn write_results(
    out: &Path,
    prompts: &[Prompt],
    responses: &[String],
    evaluation: &Evaluation,
    summary: &Summary,
    mut meta: Map<String, Value>,
) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    let response_lines = prompts.iter().zip(responses).map(|(prompt, response)| {
        pyjson::dumps(&serde_json::json!({"prompt": prompt.prompt, "response": response}))
    });
    write_atomic(&out.join("responses.jsonl"), &jsonl(response_lines))?;
    write_atomic(
        &out.join("eval_results_strict.jsonl"),
        &jsonl(evaluation.strict.iter().map(PromptResult::to_json_line)),
    )?;
    write_atomic(
        &out.join("eval_results_loose.jsonl"),
        &jsonl(evaluation.loose.iter().map(PromptResult::to_json_line)),
    )?;
    if let Value::Object(fields) = summary.to_json() {
        meta.extend(fields);
    }
    let text = serde_json::to_string_pretty(&Value::Object(meta))? + "\n";
    write_atomic(&out.join(SUMMARY_FILE), text.as_bytes())
}
