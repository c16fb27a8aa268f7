//! An IFEval run as files: greedy responses from a loaded model, and the reference
//! evaluator's four outputs (`responses.jsonl`, `eval_results_{strict,loose}.jsonl`,
//! `summary.json`), shared by `autoif eval ifeval` and the before/after phases of
//! `autoif run`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::scoring::{Evaluation, PromptResult, Summary};
use super::Prompt;
use crate::generate::{
    Backend, EngineOptions, LocalEngine, Prompt as GenPrompt, Request, SamplingParams,
};
use crate::io::write_atomic;
use crate::model::kv_cache::HostPrecision;
use crate::model::ops::quant::Precision;
use crate::model::Model;
use crate::pyjson;

/// How `generate_responses` decodes.
#[derive(Debug, Clone, Copy)]
pub struct Decoding {
    pub max_new_tokens: usize,
    /// Prompts decoded together.
    pub batch: usize,
    pub kv_cache: HostPrecision,
}

/// One greedy response per prompt: the model's chat template, one user turn each,
/// adapters on when attached, on the loaded weights themselves (`Precision::Exact`): the
/// evaluation is evidence about the model, and int8 inference picks another token at a
/// few percent of near-tied greedy steps.
pub fn generate_responses(
    model: &Model,
    prompts: &[Prompt],
    decoding: Decoding,
) -> Result<Vec<String>> {
    let params = SamplingParams {
        max_new_tokens: decoding.max_new_tokens,
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
        max_batch: decoding.batch,
        precision: Precision::Exact,
        kv_cache: decoding.kv_cache,
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
/// The per-prompt verdict files, one `PromptResult` line per prompt.
pub const STRICT_FILE: &str = "eval_results_strict.jsonl";
pub const LOOSE_FILE: &str = "eval_results_loose.jsonl";

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
        &out.join(STRICT_FILE),
        &jsonl(evaluation.strict.iter().map(PromptResult::to_json_line)),
    )?;
    write_atomic(
        &out.join(LOOSE_FILE),
        &jsonl(evaluation.loose.iter().map(PromptResult::to_json_line)),
    )?;
    if let Value::Object(fields) = summary.to_json() {
        meta.extend(fields);
    }
    let text = serde_json::to_string_pretty(&Value::Object(meta))? + "\n";
    write_atomic(&out.join(SUMMARY_FILE), text.as_bytes())
}

/// A verdict line as `eval_results_{strict,loose}.jsonl` holds it (the reference's extra
/// keys, such as `langdetect_unstable`, are ignored).
#[derive(Deserialize)]
struct VerdictLine {
    prompt: String,
    #[serde(default)]
    response: String,
    instruction_id_list: Vec<String>,
    follow_instruction_list: Vec<bool>,
}

fn read_verdicts(path: &Path) -> Result<Vec<PromptResult>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the IFEval verdicts", path.display()))?;
    let mut results = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), index + 1);
        let v: VerdictLine = serde_json::from_str(line)
            .with_context(|| format!("{}: not an IFEval verdict line", at()))?;
        if v.instruction_id_list.len() != v.follow_instruction_list.len() {
            bail!(
                "{}: {} instruction ids but {} verdicts",
                at(),
                v.instruction_id_list.len(),
                v.follow_instruction_list.len()
            );
        }
        results.push(PromptResult {
            prompt: v.prompt,
            response: v.response,
            instruction_id_list: v.instruction_id_list,
            follow_instruction_list: v.follow_instruction_list,
        });
    }
    if results.is_empty() {
        bail!("{}: no verdicts", path.display());
    }
    Ok(results)
}

/// The strict and loose verdicts of an evaluation folder (`autoif eval ifeval --out`, or a
/// run's `ifeval_before/` and `ifeval_after/`).
pub fn read_evaluation(dir: &Path) -> Result<Evaluation> {
    Ok(Evaluation {
        strict: read_verdicts(&dir.join(STRICT_FILE))?,
        loose: read_verdicts(&dir.join(LOOSE_FILE))?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::input::parse_input_data;
    use super::super::scoring::evaluate;
    use super::*;

    #[test]
    fn verdicts_read_back_as_written() {
        let prompts = parse_input_data(
            "{\"key\": 1, \"prompt\": \"P1\", \"instruction_id_list\": [\"punctuation:no_comma\"], \"kwargs\": [{}]}\n\
             {\"key\": 2, \"prompt\": \"P2 é\", \"instruction_id_list\": [\"startend:quotation\", \"punctuation:no_comma\"], \"kwargs\": [{}, {}]}",
            "test",
        )
        .unwrap();
        let responses = vec!["a, b".to_string(), "Sure:\n\"quoted\"".to_string()];
        let texts: Vec<&str> = responses.iter().map(String::as_str).collect();
        let evaluation = evaluate(&prompts, &texts);
        let dir = tempfile::tempdir().unwrap();
        let summary = Summary::new(&evaluation);
        write_results(
            dir.path(),
            &prompts,
            &responses,
            &evaluation,
            &summary,
            Map::new(),
        )
        .unwrap();
        let read = read_evaluation(dir.path()).unwrap();
        assert_eq!(read.strict, evaluation.strict);
        assert_eq!(read.loose, evaluation.loose);

        std::fs::write(dir.path().join(LOOSE_FILE), "{\"prompt\": \"P1\"}\n").unwrap();
        let err = format!("{:#}", read_evaluation(dir.path()).unwrap_err());
        assert!(
            err.contains("eval_results_loose.jsonl:1: not an IFEval verdict line"),
            "{err}"
        );
    }
}
