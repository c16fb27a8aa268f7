//! Strict and loose scoring of responses, and the summary IFEval reports.
//!
//! Strict: an instruction is followed when the response is not blank and its checker
//! passes. Loose: when the checker passes on any of eight variants of the response: as
//! is, without its first line, without its last line, without both (each stripped), and
//! each of those with every `*` removed. Accuracy is reported per prompt (all instructions
//! followed) and per instruction, the four numbers of the IFEval paper, and per instruction
//! type and category.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::input::Prompt;
use super::pystr;
use crate::pyjson;

/// The verdicts on one prompt's response in one mode: a line of the reference evaluator's
/// `eval_results_strict.jsonl` / `eval_results_loose.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptResult {
    pub prompt: String,
    pub response: String,
    pub instruction_id_list: Vec<String>,
    pub follow_instruction_list: Vec<bool>,
}

impl PromptResult {
    pub fn follow_all_instructions(&self) -> bool {
        self.follow_instruction_list
            .iter()
            .all(|&followed| followed)
    }

    /// The line exactly as the reference writes it: keys in `dir()` (alphabetical) order,
    /// through `json.dumps` with its default format.
    pub fn to_json_line(&self) -> String {
        pyjson::dumps(&json!({
            "follow_all_instructions": self.follow_all_instructions(),
            "follow_instruction_list": self.follow_instruction_list,
            "instruction_id_list": self.instruction_id_list,
            "prompt": self.prompt,
            "response": self.response,
        }))
    }
}

/// The eight response variants loose scoring tries, in the reference's order.
pub fn loose_variants(response: &str) -> [String; 8] {
    let lines: Vec<&str> = response.split('\n').collect();
    let join = |lines: &[&str]| pystr::strip(&lines.join("\n")).to_string();
    let remove_first = join(lines.get(1..).unwrap_or(&[]));
    let remove_last = join(&lines[..lines.len() - 1]);
    let remove_both = join(lines.get(1..lines.len() - 1).unwrap_or(&[]));
    let unstarred = |s: &str| s.replace('*', "");
    [
        response.to_string(),
        unstarred(response),
        remove_first.clone(),
        remove_last.clone(),
        remove_both.clone(),
        unstarred(&remove_first),
        unstarred(&remove_last),
        unstarred(&remove_both),
    ]
}

/// The strict and the loose verdicts on one response.
pub fn score(prompt: &Prompt, response: &str) -> (PromptResult, PromptResult) {
    let passes = |text: &str, index: usize| {
        !pystr::strip(text).is_empty() && prompt.instructions[index].check(text)
    };
    let strict: Vec<bool> = (0..prompt.instructions.len())
        .map(|i| passes(response, i))
        .collect();
    // Built only if some instruction fails strictly: the first variant is the response.
    let mut variants: Option<[String; 8]> = None;
    let loose: Vec<bool> = strict
        .iter()
        .enumerate()
        .map(|(i, &followed)| {
            followed
                || variants.get_or_insert_with(|| loose_variants(response))[1..]
                    .iter()
                    .any(|v| passes(v, i))
        })
        .collect();
    let result = |follow_instruction_list| PromptResult {
        prompt: prompt.prompt.clone(),
        response: response.to_string(),
        instruction_id_list: prompt.instruction_ids.clone(),
        follow_instruction_list,
    };
    (result(strict), result(loose))
}

/// Strict and loose results for every prompt, in prompt order.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub strict: Vec<PromptResult>,
    pub loose: Vec<PromptResult>,
}

/// Scores `responses[i]` against `prompts[i]` (in parallel; the result does not depend on
/// scheduling).
pub fn evaluate(prompts: &[Prompt], responses: &[&str]) -> Evaluation {
    assert_eq!(prompts.len(), responses.len(), "one response per prompt");
    let (strict, loose) = prompts
        .par_iter()
        .zip(responses)
        .map(|(prompt, response)| score(prompt, response))
        .unzip();
    Evaluation { strict, loose }
}

/// Counts and accuracies (fractions in [0, 1]) for a group of instructions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub count: usize,
    pub strict: f64,
    pub loose: f64,
}

/// The numbers `summary.json` holds and the table shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub prompts: usize,
    pub instructions: usize,
    pub prompt_level_strict_acc: f64,
    pub prompt_level_loose_acc: f64,
    pub inst_level_strict_acc: f64,
    pub inst_level_loose_acc: f64,
    pub per_instruction_type: BTreeMap<String, Accuracy>,
    pub per_category: BTreeMap<String, Accuracy>,
}

fn fraction(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Summary {
    pub fn new(evaluation: &Evaluation) -> Self {
        let prompts = evaluation.strict.len();
        let prompt_level = |results: &[PromptResult]| {
            fraction(
                results
                    .iter()
                    .filter(|r| r.follow_all_instructions())
                    .count(),
                prompts,
            )
        };
        // (count, strict followed, loose followed) per instruction type.
        let mut tally: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for (strict, loose) in evaluation.strict.iter().zip(&evaluation.loose) {
            for ((id, &s), &l) in strict
                .instruction_id_list
                .iter()
                .zip(&strict.follow_instruction_list)
                .zip(&loose.follow_instruction_list)
            {
                let entry = tally.entry(id.clone()).or_default();
                entry.0 += 1;
                entry.1 += usize::from(s);
                entry.2 += usize::from(l);
            }
        }
        let mut categories: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for (id, counts) in &tally {
            let category = id.split(':').next().unwrap_or(id).to_string();
            let entry = categories.entry(category).or_default();
            entry.0 += counts.0;
            entry.1 += counts.1;
            entry.2 += counts.2;
        }
        let accuracies = |map: BTreeMap<String, (usize, usize, usize)>| {
            map.into_iter()
                .map(|(name, (n, s, l))| {
                    (
                        name,
                        Accuracy {
                            count: n,
                            strict: fraction(s, n),
                            loose: fraction(l, n),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        let (instructions, strict_followed, loose_followed) = tally
            .values()
            .fold((0, 0, 0), |acc, t| (acc.0 + t.0, acc.1 + t.1, acc.2 + t.2));
        Summary {
            prompts,
            instructions,
            prompt_level_strict_acc: prompt_level(&evaluation.strict),
            prompt_level_loose_acc: prompt_level(&evaluation.loose),
            inst_level_strict_acc: fraction(strict_followed, instructions),
            inst_level_loose_acc: fraction(loose_followed, instructions),
            per_instruction_type: accuracies(tally),
            per_category: accuracies(categories),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a summary serialises")
    }

    /// The summary as a table for a person.
    pub fn table(&self) -> String {
        let mut out = format!(
            "IFEval: {} prompts, {} instructions\n\n",
            self.prompts, self.instructions
        );
        out.push_str(&format!("{:<51}{:>9}{:>9}\n", "", "strict", "loose"));
        let pct = |x: f64| format!("{:.2}", 100.0 * x);
        out.push_str(&format!(
            "{:<51}{:>9}{:>9}\n",
            "prompt-level accuracy (%)",
            pct(self.prompt_level_strict_acc),
            pct(self.prompt_level_loose_acc)
        ));
        out.push_str(&format!(
            "{:<51}{:>9}{:>9}\n",
            "instruction-level accuracy (%)",
            pct(self.inst_level_strict_acc),
            pct(self.inst_level_loose_acc)
        ));
        for (title, rows) in [
            ("instruction type", &self.per_instruction_type),
            ("category", &self.per_category),
        ] {
            out.push_str(&format!(
                "\n{:<45}{:>6}{:>9}{:>9}\n",
                title, "n", "strict", "loose"
            ));
            for (name, acc) in rows {
                out.push_str(&format!(
                    "{:<45}{:>6}{:>9}{:>9}\n",
                    name,
                    acc.count,
                    pct(acc.strict),
                    pct(acc.loose)
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::input::parse_input_data;
    use super::*;

    #[test]
    fn variants_drop_first_and_last_lines_and_stars() {
        let v = loose_variants("Sure! Here it is:\n**Body** text\nHope this helps");
        assert_eq!(v[0], "Sure! Here it is:\n**Body** text\nHope this helps");
        assert_eq!(v[1], "Sure! Here it is:\nBody text\nHope this helps");
        assert_eq!(v[2], "**Body** text\nHope this helps");
        assert_eq!(v[3], "Sure! Here it is:\n**Body** text");
        assert_eq!(v[4], "**Body** text");
        assert_eq!(v[7], "Body text");
        let single = loose_variants("  one line  ");
        assert_eq!(single[2], "");
        assert_eq!(single[3], "");
        assert_eq!(single[4], "");
        assert_eq!(loose_variants("")[0], "");
    }

    fn prompt(ids_and_kwargs: &str) -> Prompt {
        let line = format!(r#"{{"key": 1, "prompt": "P", {ids_and_kwargs}}}"#);
        parse_input_data(&line, "test").unwrap().remove(0)
    }

    #[test]
    fn strict_and_loose() {
        let p = prompt(
            r#""instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}, {}]"#,
        );
        let (strict, loose) = score(&p, "Here you go, friend:\n\"quoted answer\"");
        assert_eq!(strict.follow_instruction_list, [false, false]);
        assert_eq!(loose.follow_instruction_list, [true, true]);
        assert!(loose.follow_all_instructions());
        // A blank response follows nothing, not even "no commas".
        let (strict, loose) = score(&p, "  \n ");
        assert_eq!(
            (
                strict.follow_instruction_list,
                loose.follow_instruction_list
            ),
            (vec![false, false], vec![false, false])
        );
    }

    #[test]
    fn result_line_matches_reference_format() {
        let p = prompt(r#""instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]"#);
        let (strict, _) = score(&p, "Ok é");
        assert_eq!(
            strict.to_json_line(),
            r#"{"follow_all_instructions": true, "follow_instruction_list": [true], "instruction_id_list": ["punctuation:no_comma"], "prompt": "P", "response": "Ok \u00e9"}"#
        );
    }

    #[test]
    fn summary_counts() {
        let p = prompt(
            r#""instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}, {}]"#,
        );
        let q = prompt(r#""instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]"#);
        let evaluation = evaluate(&[p, q], &["a, b\n\"x\"", "no commas"]);
        let summary = Summary::new(&evaluation);
        assert_eq!((summary.prompts, summary.instructions), (2, 3));
        assert_eq!(summary.prompt_level_strict_acc, 0.5);
        assert_eq!(summary.prompt_level_loose_acc, 1.0);
        assert_eq!(summary.inst_level_strict_acc, 1.0 / 3.0);
        assert_eq!(summary.inst_level_loose_acc, 1.0);
        assert_eq!(
            summary.per_instruction_type["punctuation:no_comma"],
            Accuracy {
                count: 2,
                strict: 0.5,
                loose: 1.0
            }
        );
        assert_eq!(summary.per_category["startend"].count, 1);
        assert!(summary.table().contains("prompt-level accuracy (%)"));
    }
}
