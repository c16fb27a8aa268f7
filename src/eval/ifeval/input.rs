//! Reading IFEval's files: the prompts with their instructions (`input_data.jsonl`, one
//! `{"key", "prompt", "instruction_id_list", "kwargs"}` object a line, as Google's repository
//! and the Hugging Face `google/IFEval` copy ship it) and responses (`{"prompt", "response"}`
//! a line, the evaluator's `input_response_data` format).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::instruction::Instruction;

/// One IFEval prompt and the instructions its response must follow.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub key: Option<i64>,
    pub prompt: String,
    pub instruction_ids: Vec<String>,
    pub instructions: Vec<Instruction>,
}

/// A response to a prompt, matched to it by the prompt's exact text (as the reference does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub prompt: String,
    pub response: String,
}

/// The non-blank lines of a JSON Lines text, each parsed as an object, with 1-based numbers.
fn json_lines<'a>(
    text: &'a str,
    source: &'a str,
) -> impl Iterator<Item = Result<(usize, serde_json::Map<String, Value>)>> + 'a {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(move |(index, line)| {
            let number = index + 1;
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(map)) => Ok((number, map)),
                Ok(_) => bail!("{source}:{number}: expected a JSON object"),
                Err(err) => bail!("{source}:{number}: not valid JSON: {err}"),
            }
        })
}

fn string_field(map: &serde_json::Map<String, Value>, field: &str) -> Result<String> {
    match map.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!("field `{field}` must be a string, got {other}"),
        None => bail!("missing field `{field}`"),
    }
}

/// Parses `input_data.jsonl` text; `source` names the file in errors.
pub fn parse_input_data(text: &str, source: &str) -> Result<Vec<Prompt>> {
    let mut prompts = Vec::new();
    for line in json_lines(text, source) {
        let (number, map) = line?;
        let at = |err: anyhow::Error| anyhow!("{source}:{number}: {err}");
        let prompt = string_field(&map, "prompt").map_err(at)?;
        let ids: Vec<String> = match map.get("instruction_id_list") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    anyhow!("{source}:{number}: `instruction_id_list` must hold strings")
                })?,
            _ => bail!("{source}:{number}: missing list field `instruction_id_list`"),
        };
        let kwargs = match map.get("kwargs") {
            Some(Value::Array(items)) if items.len() == ids.len() => items,
            Some(Value::Array(items)) => bail!(
                "{source}:{number}: {} instruction ids but {} kwargs objects",
                ids.len(),
                items.len()
            ),
            _ => bail!("{source}:{number}: missing list field `kwargs`"),
        };
        let instructions = ids
            .iter()
            .zip(kwargs)
            .map(|(id, kwargs)| {
                let kwargs = kwargs
                    .as_object()
                    .ok_or_else(|| anyhow!("{id}: kwargs must be an object"))?;
                Instruction::new(id, kwargs)
            })
            .collect::<Result<Vec<_>>>()
            .map_err(at)?;
        let key = map.get("key").and_then(Value::as_i64);
        prompts.push(Prompt {
            key,
            prompt,
            instruction_ids: ids,
            instructions,
        });
    }
    if prompts.is_empty() {
        bail!("{source}: no prompts");
    }
    Ok(prompts)
}

/// Reads and parses an `input_data.jsonl` file.
pub fn load_input_data(path: &Path) -> Result<Vec<Prompt>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = crate::io::text::decode_utf8(bytes, &path.display().to_string())?;
    parse_input_data(&text, &path.display().to_string())
}

/// Parses responses text; a prompt answered twice is an error.
pub fn parse_responses(text: &str, source: &str) -> Result<Vec<Response>> {
    let mut responses = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in json_lines(text, source) {
        let (number, map) = line?;
        let at = |err: anyhow::Error| anyhow!("{source}:{number}: {err}");
        let prompt = string_field(&map, "prompt").map_err(at)?;
        let response = string_field(&map, "response").map_err(at)?;
        if let Some(first) = seen.insert(prompt.clone(), number) {
            bail!("{source}:{number}: this prompt already has a response on line {first}");
        }
        responses.push(Response { prompt, response });
    }
    if responses.is_empty() {
        bail!("{source}: no responses");
    }
    Ok(responses)
}

/// Reads and parses a responses file.
pub fn load_responses(path: &Path) -> Result<Vec<Response>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = crate::io::text::decode_utf8(bytes, &path.display().to_string())?;
    parse_responses(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_input_lines_with_null_kwargs() {
        let text = r#"{"key": 7, "prompt": "Hi", "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"], "kwargs": [{"num_words": null}, {"num_words": 5, "relation": "less than"}]}

{"key": 8, "prompt": "Yo", "instruction_id_list": [], "kwargs": []}"#;
        let prompts = parse_input_data(text, "in.jsonl").unwrap();
        assert_eq!(prompts.len(), 2);
        assert_eq!(prompts[0].key, Some(7));
        assert_eq!(
            prompts[0].instruction_ids,
            ["punctuation:no_comma", "length_constraints:number_words"]
        );
        assert!(prompts[1].instructions.is_empty());
    }

    #[test]
    fn input_errors_name_file_and_line() {
        let err = |text: &str| parse_input_data(text, "in.jsonl").unwrap_err().to_string();
        assert_eq!(err(""), "in.jsonl: no prompts");
        assert!(err("{\"prompt\": 1}").starts_with("in.jsonl:1: field `prompt` must be a string"));
        assert!(err("\n[1]").starts_with("in.jsonl:2: expected a JSON object"));
        assert!(err("{oops").starts_with("in.jsonl:1: not valid JSON"));
        let mismatched =
            r#"{"prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}"#;
        assert!(err(mismatched).contains("1 instruction ids but 0 kwargs objects"));
        let unknown = r#"{"prompt": "p", "instruction_id_list": ["x:y"], "kwargs": [{}]}"#;
        assert!(err(unknown).starts_with("in.jsonl:1: x:y: unknown instruction id"));
    }

    #[test]
    fn responses_parse_and_reject_duplicates() {
        let text =
            "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"c\", \"response\": \"\"}\n";
        assert_eq!(parse_responses(text, "r.jsonl").unwrap().len(), 2);
        let dup =
            "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\", \"response\": \"c\"}\n";
        assert_eq!(
            parse_responses(dup, "r.jsonl").unwrap_err().to_string(),
            "r.jsonl:2: this prompt already has a response on line 1"
        );
        assert!(parse_responses("{\"prompt\": \"a\"}", "r.jsonl")
            .unwrap_err()
            .to_string()
            .contains("missing field `response`"));
    }
}
