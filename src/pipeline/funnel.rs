//! Funnel statistics: per stage and unit (instructions, samples, responses, ...), how
//! many came in, how many went out, and how many were dropped for each reason.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

/// Why a unit left the funnel. Records and funnel counts carry its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// augment: a round's answer has no `- ` list line.
    NoListLines,
    /// augment, queries: below the length filter.
    TooShort,
    /// augment, queries: above the length filter.
    TooLong,
    /// augment: repeats a seed instruction.
    CopiesSeed,
    /// augment: a near-duplicate of a seed instruction.
    NearSeed,
    /// augment: a near-duplicate of an instruction kept earlier.
    NearDuplicate,
    /// funcs: no JSON object in the answer.
    NoJson,
    /// funcs: JSON that does not parse, even repaired.
    InvalidJson,
    /// funcs: the answer's JSON is not an object.
    NotAnObject,
    /// funcs: the answer has no `func`.
    MissingFunc,
    /// funcs: the answer's `func` is not a string.
    FuncNotAString,
    /// funcs: `func` defines no `evaluate`.
    NoEvaluateFunction,
    /// funcs: the answer has no `cases` list.
    MissingCases,
    /// funcs: a case without `input` or `output`.
    CaseMissingField,
    /// funcs: a case whose input is not a string.
    CaseInputNotAString,
    /// funcs: no sample of the instruction parsed.
    NoParsableAnswer,
    /// crossval: the function does not load (syntax error, no `evaluate`).
    DoesNotLoad,
    /// crossval, queries: repeats one seen earlier.
    Duplicate,
    /// crossval: fewer loading functions than `min_funcs`.
    TooFewFunctions,
    /// crossval: fewer distinct cases than `min_cases`.
    TooFewCases,
    /// crossval: a function or case of an instruction with too few functions.
    InstructionTooFewFunctions,
    /// crossval: a function or case of an instruction with too few cases.
    InstructionTooFewCases,
    /// crossval: the case's expected output is not a boolean.
    OutputNotBoolean,
    /// crossval: fewer functions than `min_case_agreement` agree with the case.
    NoFunctionAgrees,
    /// crossval: the function's accuracy is below `min_func_accuracy`.
    LowAccuracy,
    /// crossval: no function of the instruction was kept.
    NoAccurateFunction,
    /// backtranslate: the model wrote nothing.
    EmptyBackTranslation,
    /// backtranslate: the answer is text, not a list of back-translations.
    BackTranslationNotAList,
    /// backtranslate: the back-translations drift from the instruction.
    Inconsistent,
    /// backtranslate: no judge answer names a verdict.
    UnparsedJudgement,
    /// responses: the response is blank.
    EmptyResponse,
    /// responses: generation stopped at `max_new_tokens`, so the text is a fragment.
    Truncated,
    /// responses: the pass rate is not above `keep_pass_rate_above`.
    LowPassRate,
    /// score: no `Score: N` in the judgement.
    NoScore,
    /// score: a score above 10.
    ScoreOutOfRange,
    /// score: the score is below `min_score`.
    LowScore,
    /// decontaminate: shares a word n-gram with an evaluation prompt.
    Contaminated,
    /// datasets: no response with pass rate 0 to pair against.
    NoRejected,
    /// datasets: no response reaches `chosen_min_pass_rate`.
    NoChosen,
    /// training phases: no response token fits within `max_len`.
    NoResponseTokenWithinMaxLen,
}

impl DropReason {
    pub const ALL: [DropReason; 40] = [
        DropReason::NoListLines,
        DropReason::TooShort,
        DropReason::TooLong,
        DropReason::CopiesSeed,
        DropReason::NearSeed,
        DropReason::NearDuplicate,
        DropReason::NoJson,
        DropReason::InvalidJson,
        DropReason::NotAnObject,
        DropReason::MissingFunc,
        DropReason::FuncNotAString,
        DropReason::NoEvaluateFunction,
        DropReason::MissingCases,
        DropReason::CaseMissingField,
        DropReason::CaseInputNotAString,
        DropReason::NoParsableAnswer,
        DropReason::DoesNotLoad,
        DropReason::Duplicate,
        DropReason::TooFewFunctions,
        DropReason::TooFewCases,
        DropReason::InstructionTooFewFunctions,
        DropReason::InstructionTooFewCases,
        DropReason::OutputNotBoolean,
        DropReason::NoFunctionAgrees,
        DropReason::LowAccuracy,
        DropReason::NoAccurateFunction,
        DropReason::EmptyBackTranslation,
        DropReason::BackTranslationNotAList,
        DropReason::Inconsistent,
        DropReason::UnparsedJudgement,
        DropReason::EmptyResponse,
        DropReason::Truncated,
        DropReason::LowPassRate,
        DropReason::NoScore,
        DropReason::ScoreOutOfRange,
        DropReason::LowScore,
        DropReason::Contaminated,
        DropReason::NoRejected,
        DropReason::NoChosen,
        DropReason::NoResponseTokenWithinMaxLen,
    ];

    /// The name on disk (the serde name).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoListLines => "no_list_lines",
            DropReason::TooShort => "too_short",
            DropReason::TooLong => "too_long",
            DropReason::CopiesSeed => "copies_seed",
            DropReason::NearSeed => "near_seed",
            DropReason::NearDuplicate => "near_duplicate",
            DropReason::NoJson => "no_json",
            DropReason::InvalidJson => "invalid_json",
            DropReason::NotAnObject => "not_an_object",
            DropReason::MissingFunc => "missing_func",
            DropReason::FuncNotAString => "func_not_a_string",
            DropReason::NoEvaluateFunction => "no_evaluate_function",
            DropReason::MissingCases => "missing_cases",
            DropReason::CaseMissingField => "case_missing_field",
            DropReason::CaseInputNotAString => "case_input_not_a_string",
            DropReason::NoParsableAnswer => "no_parsable_answer",
            DropReason::DoesNotLoad => "does_not_load",
            DropReason::Duplicate => "duplicate",
            DropReason::TooFewFunctions => "too_few_functions",
            DropReason::TooFewCases => "too_few_cases",
            DropReason::InstructionTooFewFunctions => "instruction_too_few_functions",
            DropReason::InstructionTooFewCases => "instruction_too_few_cases",
            DropReason::OutputNotBoolean => "output_not_boolean",
            DropReason::NoFunctionAgrees => "no_function_agrees",
            DropReason::LowAccuracy => "low_accuracy",
            DropReason::NoAccurateFunction => "no_accurate_function",
            DropReason::EmptyBackTranslation => "empty_back_translation",
            DropReason::BackTranslationNotAList => "back_translation_not_a_list",
            DropReason::Inconsistent => "inconsistent",
            DropReason::UnparsedJudgement => "unparsed_judgement",
            DropReason::EmptyResponse => "empty_response",
            DropReason::Truncated => "truncated",
            DropReason::LowPassRate => "low_pass_rate",
            DropReason::NoScore => "no_score",
            DropReason::ScoreOutOfRange => "score_out_of_range",
            DropReason::LowScore => "low_score",
            DropReason::Contaminated => "contaminated",
            DropReason::NoRejected => "no_rejected",
            DropReason::NoChosen => "no_chosen",
            DropReason::NoResponseTokenWithinMaxLen => "no_response_token_within_max_len",
        }
    }

    /// The reason a parser (`pipeline::parse`) names by `name`.
    pub fn parsed(name: &str) -> DropReason {
        DropReason::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .unwrap_or_else(|| panic!("parser failure `{name}` is not a drop reason"))
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A reason reads as its name (`record.reason.as_deref() == Some("duplicate")`).
impl Deref for DropReason {
    type Target = str;

    fn deref(&self) -> &str {
        self.name()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunnelRow {
    pub stage: String,
    pub unit: String,
    #[serde(rename = "in")]
    pub input: usize,
    #[serde(rename = "out")]
    pub output: usize,
    /// Counts by reason name, in name order (as the manifest and report show them).
    pub dropped: BTreeMap<String, usize>,
}

impl FunnelRow {
    pub fn new(stage: &str, unit: &str) -> Self {
        Self {
            stage: stage.to_string(),
            unit: unit.to_string(),
            ..Self::default()
        }
    }

    pub fn keep(&mut self) {
        self.input += 1;
        self.output += 1;
    }

    pub fn drop(&mut self, reason: DropReason) {
        self.input += 1;
        *self.dropped.entry(reason.name().to_string()).or_default() += 1;
    }

    pub fn dropped_total(&self) -> usize {
        self.dropped.values().sum()
    }
}

/// A plain-text table of funnel rows, one line per row.
pub fn table(rows: &[FunnelRow]) -> String {
    let mut out = format!(
        "{:<14} {:<22} {:>7} {:>7}  dropped\n",
        "stage", "unit", "in", "out"
    );
    for row in rows {
        let reasons: Vec<String> = row
            .dropped
            .iter()
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect();
        out.push_str(&format!(
            "{:<14} {:<22} {:>7} {:>7}  {}\n",
            row.stage,
            row.unit,
            row.input,
            row.output,
            reasons.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        for reason in DropReason::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.name());
            assert_eq!(DropReason::parsed(reason.name()), reason);
        }
    }

    #[test]
    fn every_parser_failure_is_a_reason() {
        use super::super::parse::{parse_back_translation, parse_func_answer, parse_score};
        for text in ["", "{", "[1]", "{\"cases\": []}", "{\"func\": 1}"] {
            if let Err(name) = parse_func_answer(text) {
                DropReason::parsed(name);
            }
        }
        for name in [
            parse_back_translation("").unwrap_err(),
            parse_back_translation("Answer in French.").unwrap_err(),
            parse_score("").unwrap_err(),
        ] {
            DropReason::parsed(name);
        }
    }
}
