//! Parsers for what models really write: JSON in fenced blocks with or without a
//! language tag, prose around it, single quotes, trailing commas, raw newlines inside
//! strings; `- ` instruction lists; `Score: N` lines. Each failure is a named reason
//! that the stages count.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::OnceLock;

/// The first JSON value of `kind` ('{' or '[') found in `text`: fenced blocks first,
/// then the outermost bracketed span; each candidate strict first, then repaired.
pub fn extract_json(text: &str, open: char) -> Result<Value, &'static str> {
    let mut candidates: Vec<String> = fenced_blocks(text);
    candidates.push(text.to_string());
    let mut saw_bracket = false;
    for candidate in &candidates {
        let Some(span) = bracketed_span(candidate, open) else {
            continue;
        };
        saw_bracket = true;
        if let Ok(v) = serde_json::from_str::<Value>(span) {
            return Ok(v);
        }
        if let Ok(v) = serde_json::from_str::<Value>(&repair_json(span)) {
            return Ok(v);
        }
    }
    Err(if saw_bracket {
        "invalid_json"
    } else {
        "no_json"
    })
}

/// Contents of ``` fenced blocks, in order (an unclosed last fence runs to the end).
fn fenced_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        // Skip the language tag line (```json, ```python, ...).
        let body_start = after.find('\n').map_or(after.len(), |i| i + 1);
        let tag = &after[..body_start];
        let body_start = if tag.trim().chars().all(|c| c.is_alphanumeric()) {
            body_start
        } else {
            0
        };
        let body = &after[body_start..];
        match body.find("```") {
            Some(end) => {
                blocks.push(body[..end].to_string());
                rest = &body[end + 3..];
            }
            None => {
                blocks.push(body.to_string());
                break;
            }
        }
    }
    blocks
}

/// From the first `open` bracket to the last matching closing one.
fn bracketed_span(text: &str, open: char) -> Option<&str> {
    let close = if open == '{' { '}' } else { ']' };
    let start = text.find(open)?;
    let end = text.rfind(close)?;
    (end > start).then(|| &text[start..=end])
}

/// Makes near-JSON parse: single-quoted strings become double-quoted, raw control
/// characters inside strings are escaped, Python literals become JSON ones, and
/// trailing commas go.
pub fn repair_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            let quote = c;
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != quote {
                match chars[i] {
                    '\\' if i + 1 < chars.len() => {
                        let next = chars[i + 1];
                        if next == '\'' {
                            out.push('\'');
                        } else {
                            out.push('\\');
                            out.push(next);
                        }
                        i += 2;
                        continue;
                    }
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    other => out.push(other),
                }
                i += 1;
            }
            out.push('"');
            i += 1;
            continue;
        }
        if c == ',' {
            // A comma followed only by whitespace and a closing bracket is dropped.
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if matches!(next, Some('}') | Some(']')) {
                i += 1;
                continue;
            }
        }
        if c.is_ascii_alphabetic() {
            let word: String = chars[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            let replacement = match word.as_str() {
                "True" => "true",
                "False" => "false",
                "None" => "null",
                other => other,
            };
            out.push_str(replacement);
            i += word.chars().count();
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// A verification function and its test cases as the model wrote them.
#[derive(Debug, Clone, PartialEq)]
pub struct FuncAnswer {
    pub func: String,
    /// (input, expected output as written: a boolean, or a string in lenient cases).
    pub cases: Vec<(String, Value)>,
    /// Cases dropped while parsing, by reason.
    pub bad_cases: Vec<&'static str>,
}

/// Parses one `{"func", "cases"}` answer.
pub fn parse_func_answer(text: &str) -> Result<FuncAnswer, &'static str> {
    let value = extract_json(text, '{')?;
    let object = value.as_object().ok_or("not_an_object")?;
    let func = match object.get("func") {
        None => return Err("missing_func"),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("func_not_a_string"),
    };
    let func = normalise_func(&func);
    if !func.contains("def evaluate") {
        return Err("no_evaluate_function");
    }
    let cases = object
        .get("cases")
        .and_then(Value::as_array)
        .ok_or("missing_cases")?;
    let mut parsed = Vec::new();
    let mut bad_cases = Vec::new();
    for case in cases {
        let (Some(input), Some(output)) = (case.get("input"), case.get("output")) else {
            bad_cases.push("case_missing_field");
            continue;
        };
        let Some(input) = input.as_str() else {
            bad_cases.push("case_input_not_a_string");
            continue;
        };
        parsed.push((input.to_string(), output.clone()));
    }
    Ok(FuncAnswer {
        func,
        cases: parsed,
        bad_cases,
    })
}

/// A one-line function written with escaped newlines gets real ones; lines that
/// download or call `requests` go (as in the released script).
fn normalise_func(func: &str) -> String {
    let func = func.trim();
    let func = if !func.contains('\n') && func.contains("\\n") {
        func.replace("\\n", "\n")
    } else {
        func.to_string()
    };
    func.lines()
        .filter(|line| !line.contains("download") && !line.contains("requests"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A case's expected output as a boolean; strings `true`/`false` only when lenient.
pub fn case_output(value: &Value, lenient: bool) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if lenient => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Instructions from a self-instruct answer: `- ` lines (also `* `, `• ` and numbered
/// lines), trimmed of quotes and surrounding whitespace.
pub fn parse_instruction_list(text: &str) -> Vec<String> {
    static NUMBERED: OnceLock<Regex> = OnceLock::new();
    let numbered = NUMBERED.get_or_init(|| Regex::new(r"^\d{1,3}[.)]\s+").unwrap());
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let body = if let Some(rest) = line
            .strip_prefix("- ")
            .or_else(|| line.strip_prefix("* "))
            .or_else(|| line.strip_prefix("• "))
        {
            rest
        } else if let Some(m) = numbered.find(line) {
            &line[m.end()..]
        } else {
            continue;
        };
        let body = body.trim();
        let body = match body.strip_prefix('"').and_then(|b| b.strip_suffix('"')) {
            Some(inner) => inner.trim(),
            None => body,
        };
        if !body.is_empty() {
            out.push(body.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    out
}

/// Back-translated instructions: a JSON (or Python) list of strings, else list lines.
/// Any other text is `back_translation_not_a_list`: the prompt asks for a list, and
/// reading prose as one instruction would let a model that ignores it pass the check.
pub fn parse_back_translation(text: &str) -> Result<Vec<String>, &'static str> {
    if let Ok(Value::Array(items)) = extract_json(text, '[') {
        let strings: Vec<String> = items
            .iter()
            .filter_map(|v| v.as_str().map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .collect();
        if !strings.is_empty() {
            return Ok(strings);
        }
    }
    let listed = parse_instruction_list(text);
    if !listed.is_empty() {
        return Ok(listed);
    }
    if text.trim().is_empty() {
        Err("empty_back_translation")
    } else {
        Err("back_translation_not_a_list")
    }
}

/// The judge's score: `Score: N` on the last non-empty line (the paper's rule), or
/// failing that the last `Score: N` anywhere; tolerant of markdown and `/10`.
pub fn parse_score(text: &str) -> Result<f64, &'static str> {
    static SCORE: OnceLock<Regex> = OnceLock::new();
    let re = SCORE.get_or_init(|| {
        Regex::new(r"(?i)score\s*[*_]*\s*[:=]\s*[*_]*\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?").unwrap()
    });
    let last_line = text.lines().rev().find(|l| !l.trim().is_empty());
    let found = last_line
        .and_then(|l| re.captures_iter(l).last())
        .or_else(|| re.captures_iter(text).last())
        .ok_or("no_score")?;
    let score: f64 = found[1].parse().map_err(|_| "no_score")?;
    if score > 10.0 {
        return Err("score_out_of_range");
    }
    Ok(score)
}

/// A judge's verdict on whether a back-translation asks for what the original asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeLabel {
    // Declared from worst to best, so the best of several verdicts is their maximum.
    Contradiction,
    Neutral,
    Consistent,
}

/// The judge's one-word answer, found in whatever it wrote around it: case, punctuation,
/// markdown and surrounding sentences are ignored, the last of `consistent`, `neutral`,
/// `contradiction` wins (a closing answer follows any reasoning), and neither an echo of
/// the option list (`consistent, neutral or contradiction`) nor a negated word
/// (`not consistent`, `no contradiction`) counts.
pub fn parse_judgement(text: &str) -> Result<JudgeLabel, &'static str> {
    static OPTIONS: OnceLock<Regex> = OnceLock::new();
    static LABEL: OnceLock<Regex> = OnceLock::new();
    let options = OPTIONS.get_or_init(|| {
        Regex::new(r"(?i)\bconsistent\W+neutral\W+(?:or\W+)?contradiction\b").unwrap()
    });
    let text = options.replace_all(text, " ");
    let re = LABEL.get_or_init(|| {
        Regex::new(
            r"(?i)\b(?:(not|no|isn['’]t)\s+(?:an?\s+)?)?(consistent|neutral|contradiction)\b",
        )
        .unwrap()
    });
    re.captures_iter(&text)
        .filter(|c| c.get(1).is_none())
        .last()
        .map(|c| match c[2].to_ascii_lowercase().as_str() {
            "consistent" => JudgeLabel::Consistent,
            "neutral" => JudgeLabel::Neutral,
            _ => JudgeLabel::Contradiction,
        })
        .ok_or("unparsed_judgement")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_json_with_escaped_newlines() {
        let text = "Sure!\n```json\n{\"func\": \"def evaluate(response):\\n    return True\", \"cases\": [{\"input\": \"a\", \"output\": true}]}\n```\nDone.";
        let a = parse_func_answer(text).unwrap();
        assert_eq!(a.func, "def evaluate(response):\n    return True");
        assert_eq!(a.cases, vec![("a".to_string(), Value::Bool(true))]);
    }

    #[test]
    fn unfenced_single_quotes_trailing_commas_python_literals() {
        let text = "Here it is: {'func': 'def evaluate(response):\n    return len(response) < 5', 'cases': [{'input': 'hi', 'output': True},],} hope it helps";
        let a = parse_func_answer(text).unwrap();
        assert!(a.func.starts_with("def evaluate(response):\n"));
        assert_eq!(a.cases, vec![("hi".to_string(), Value::Bool(true))]);
    }

    #[test]
    fn fence_without_tag_and_rejections() {
        let ok = "```\n{\"func\": \"def evaluate(r): return 1\", \"cases\": []}\n```";
        assert!(parse_func_answer(ok).is_ok());
        assert_eq!(parse_func_answer("no json here"), Err("no_json"));
        assert_eq!(parse_func_answer("{not: json: at all"), Err("no_json"));
        assert_eq!(parse_func_answer("{\"a\": [1, }"), Err("invalid_json"));
        assert_eq!(parse_func_answer("{\"cases\": []}"), Err("missing_func"));
        assert_eq!(
            parse_func_answer("{\"func\": \"def f(x): pass\", \"cases\": []}"),
            Err("no_evaluate_function")
        );
        assert_eq!(
            parse_func_answer("{\"func\": \"def evaluate(x): pass\"}"),
            Err("missing_cases")
        );
    }

    #[test]
    fn instruction_lists() {
        let text = "Here are some:\n- Answer in lowercase\n* Use exactly three bullet points\n2. End with \"Bye\"\nnot a list line";
        assert_eq!(
            parse_instruction_list(text),
            vec![
                "Answer in lowercase",
                "Use exactly three bullet points",
                "End with \"Bye\""
            ]
        );
    }

    #[test]
    fn scores() {
        assert_eq!(parse_score("analysis\n\nScore: 8"), Ok(8.0));
        assert_eq!(parse_score("**Score:** 9/10\n"), Ok(9.0));
        assert_eq!(parse_score("Score: 7\nThanks!"), Ok(7.0));
        assert_eq!(parse_score("no number"), Err("no_score"));
        assert_eq!(parse_score("Score: 42"), Err("score_out_of_range"));
    }

    #[test]
    fn back_translations() {
        assert_eq!(
            parse_back_translation("[\"Answer in French.\", 'Use French.']").unwrap(),
            vec!["Answer in French.", "Use French."]
        );
        assert_eq!(
            parse_back_translation("Write fewer than ten words."),
            Err("back_translation_not_a_list")
        );
    }

    #[test]
    fn judgements() {
        use JudgeLabel::*;
        let cases = [
            ("consistent", Ok(Consistent)),
            ("Contradiction.", Ok(Contradiction)),
            ("**Neutral**", Ok(Neutral)),
            ("`CONSISTENT`", Ok(Consistent)),
            ("Answer: contradiction\n", Ok(Contradiction)),
            (
                "Instruction B asks for lowercase letters only, which is the same as A.\n\nConsistent",
                Ok(Consistent),
            ),
            // The model echoes the options first; its answer comes last.
            (
                "Answer with one word: consistent, neutral or contradiction.\nNeutral",
                Ok(Neutral),
            ),
            (
                "B requires uppercase while A requires lowercase, so the answer is: **contradiction**.",
                Ok(Contradiction),
            ),
            ("There is no contradiction here, so: consistent", Ok(Consistent)),
            ("B is not consistent with A. Contradiction", Ok(Contradiction)),
            ("Neutral. B isn’t a contradiction of A.", Ok(Neutral)),
            // Words that only contain a label do not count.
            ("The instructions are inconsistent.", Err("unparsed_judgement")),
            ("Consistently formatted, but I cannot tell.", Err("unparsed_judgement")),
            ("Instruction A: Answer in French.", Err("unparsed_judgement")),
            (
                "Answer with one word: consistent, neutral or contradiction.",
                Err("unparsed_judgement"),
            ),
            ("", Err("unparsed_judgement")),
        ];
        for (text, want) in cases {
            assert_eq!(parse_judgement(text), want, "{text:?}");
        }
        assert!(Consistent > Neutral && Neutral > Contradiction);
    }
}
