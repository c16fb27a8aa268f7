//! Stage `backtranslate`: the model turns each instruction's kept functions back into
//! a list of instructions; a consistency check drops an instruction whose
//! back-translations drift from the original. The paper uses an NLI model and drops an
//! instruction when any back-translation contradicts it (`rule = "none_contradicts"`,
//! the default). The default checker is the embedded MiniLM sentence embedder
//! (offline): keep when the least similar back-translation's cosine similarity reaches
//! `min_similarity`. The `judge` checker asks the supervision model instead, once per
//! distinct back-translation (at most `max_funcs`), and drops the instruction when a
//! verdict is *contradiction* (`inconsistent`) or no answer names a verdict
//! (`unparsed_judgement`). The `nli` checker classifies (instruction, back-translation)
//! pairs with an NLI model and drops the instruction when one contradicts it. An answer
//! that is not a list is `back_translation_not_a_list`. `rule = "any_agrees"` keeps the
//! earlier, laxer rule: the best back-translation decides, and prose counts as one.
//!
//! Output `backtranslate/instructions.jsonl`: the crossval record plus
//! `back_instructions`, `similarity` and, with the judge, `judgements`;
//! `backtranslate/rejected.jsonl`.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::config::Sampling;
use super::crossval::{self, Validated};
use super::funnel::{DropReason, FunnelRow};
use super::nli::NliClassifier;
use super::parse::{parse_back_translation, parse_judgement, JudgeLabel};
use super::prompts::fill;
use super::similarity::{cosine, Embedder};
use super::Pipeline;

use candle_core::Device;

pub const STAGE: &str = "backtranslate";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyChecker {
    /// Cosine similarity of MiniLM sentence embeddings.
    Minilm,
    /// The supervision model judges each back-translation against the original
    /// (prompt `judge`): consistent, neutral or contradiction.
    Judge,
    /// An NLI sequence-classification model (`nli_model`, BERT or DeBERTa-v2/v3): drop
    /// when every back-translation is classified as contradicting the original (the
    /// paper's filter).
    Nli,
    /// Keep every instruction (back-translations are still recorded).
    None,
}

/// How the verdicts on an instruction's back-translations combine.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyRule {
    /// The paper's: every back-translation must hold. Dropped when any is judged a
    /// contradiction (`judge`, `nli`) or the least similar one is below `min_similarity`
    /// (`minilm`); an answer that is not a list is a parse failure.
    #[default]
    NoneContradicts,
    /// The earlier rule: kept when the best back-translation holds (best verdict not a
    /// contradiction, not every NLI verdict a contradiction, the most similar one at
    /// `min_similarity`); an answer that is not a list is read as one back-translation.
    AnyAgrees,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BacktranslateConfig {
    pub checker: ConsistencyChecker,
    pub rule: ConsistencyRule,
    /// The sentence-embedding model folder (BERT, safetensors, tokenizer.json).
    pub embedder: PathBuf,
    /// The NLI classifier folder for `checker = "nli"` (config.json with `id2label`,
    /// model.safetensors, tokenizer.json), e.g. a local copy of
    /// MoritzLaurer/mDeBERTa-v3-base-xnli-multilingual-nli-2mil7.
    pub nli_model: Option<PathBuf>,
    /// Keep an instruction when its least similar back-translation (its best one under
    /// `any_agrees`) reaches this cosine similarity (docs/pipeline.md says how it was
    /// chosen).
    pub min_similarity: f32,
    /// Kept functions shown to the model (the released script shows up to 3).
    pub max_funcs: usize,
    pub sampling: Sampling,
    /// The `judge` checker's answers: greedy, and short since one word is asked for.
    pub judge_sampling: Sampling,
}

impl Default for BacktranslateConfig {
    fn default() -> Self {
        Self {
            checker: ConsistencyChecker::Minilm,
            rule: ConsistencyRule::NoneContradicts,
            embedder: PathBuf::from("models/all-MiniLM-L6-v2"),
            nli_model: None,
            min_similarity: 0.45,
            max_funcs: 3,
            sampling: Sampling::new(0.0, 256),
            judge_sampling: Sampling::new(0.0, 64),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    #[serde(flatten)]
    pub validated: Validated,
    pub back_instructions: Vec<String>,
    /// The deciding cosine similarity to the original: the least similar
    /// back-translation's (the best one's under `any_agrees`); absent without MiniLM.
    pub similarity: Option<f32>,
    /// The `judge` checker's answers, one per judged back-translation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judgements: Option<Vec<Judgement>>,
    pub reason: Option<DropReason>,
}

/// One back-translation as the judge saw it: what it wrote and the verdict read from
/// that (absent when none could be read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub back_instruction: String,
    pub label: Option<JudgeLabel>,
    pub text: String,
}

/// The instructions that go on to the queries stage: this stage's kept ones, or the
/// configured file of already verified instructions (the stages up to here then do not
/// run).
pub fn kept_instructions(p: &Pipeline) -> Result<Vec<Checked>> {
    match &p.synthesis.verified_instructions {
        Some(path) => Ok(crossval::read_verified_instructions(path)?
            .into_iter()
            .map(|validated| Checked {
                validated,
                back_instructions: Vec::new(),
                similarity: None,
                judgements: None,
                reason: None,
            })
            .collect()),
        None => p.files.read_records(STAGE, "instructions.jsonl"),
    }
}

pub fn run(p: &mut Pipeline) -> Result<Vec<FunnelRow>> {
    let instructions: Vec<Validated> = p
        .files
        .read_records(crossval::STAGE, "instructions.jsonl")?;
    let cfg = p.synthesis.backtranslate.clone();
    let template = p.synthesis.prompts.backtranslate.clone();
    let embedder = match cfg.checker {
        ConsistencyChecker::Minilm => Some(Embedder::load(&cfg.embedder)?),
        ConsistencyChecker::Judge | ConsistencyChecker::Nli | ConsistencyChecker::None => None,
    };
    let classifier = match (&cfg.checker, &cfg.nli_model) {
        (ConsistencyChecker::Nli, Some(dir)) => Some(NliClassifier::load(dir, &Device::Cpu)?),
        _ => None,
    };
    let files = p.files.clone();
    let checked: Vec<Checked> = files.chunked(
        STAGE,
        &instructions,
        p.synthesis.chunk,
        |i| i.id.clone(),
        |units| {
            let prompts: Vec<(String, String)> = units
                .iter()
                .map(|v| {
                    let shown: Vec<(&str, f64)> = v
                        .funcs
                        .iter()
                        .take(cfg.max_funcs)
                        .map(|f| (f.source.as_str(), f.accuracy))
                        .collect();
                    let funcs = serde_json::to_string(&shown).expect("strings and numbers");
                    (v.id.clone(), fill(&template, &[("funcs", &funcs)]))
                })
                .collect();
            let texts = p.generate_texts(STAGE, &prompts, 1, &cfg.sampling)?;
            match cfg.checker {
                ConsistencyChecker::Minilm | ConsistencyChecker::None => units
                    .iter()
                    .zip(texts)
                    .map(|(v, t)| check(v, &t[0], embedder.as_ref(), cfg.min_similarity, cfg.rule))
                    .collect(),
                ConsistencyChecker::Judge => {
                    let back: Vec<&str> = texts.iter().map(|t| t[0].as_str()).collect();
                    judge_chunk(p, &cfg, units, &back)
                }
                ConsistencyChecker::Nli => {
                    let classifier = classifier.as_ref().expect("loaded for the nli checker");
                    units
                        .iter()
                        .zip(texts)
                        .map(|(v, t)| nli_check(v, &t[0], classifier, cfg.max_funcs, cfg.rule))
                        .collect()
                }
            }
        },
    )?;
    let mut row = FunnelRow::new(STAGE, "instructions");
    for c in &checked {
        match &c.reason {
            None => row.keep(),
            Some(r) => row.drop(*r),
        }
    }
    let (kept, rejected): (Vec<&Checked>, Vec<&Checked>) =
        checked.iter().partition(|c| c.reason.is_none());
    p.files.write_records(STAGE, "instructions.jsonl", &kept)?;
    p.files.write_records(STAGE, "rejected.jsonl", &rejected)?;
    if kept.is_empty() {
        super::warn_empty(STAGE, "no instruction passed the back-translation check");
    }
    Ok(vec![row])
}

/// The `judge` checker over one chunk: one greedy request per (instruction, distinct
/// back-translation), all in one batch, each seeded by its own key.
fn judge_chunk(
    p: &mut Pipeline,
    cfg: &BacktranslateConfig,
    units: &[Validated],
    back_texts: &[&str],
) -> Result<Vec<Checked>> {
    let template = p.synthesis.prompts.judge.clone();
    let parsed: Vec<Result<Vec<String>, &'static str>> = back_texts
        .iter()
        .map(|t| back_translations(t, cfg.rule))
        .collect();
    let mut prompts = Vec::new();
    let mut judged: Vec<Vec<String>> = Vec::with_capacity(units.len());
    for (v, back) in units.iter().zip(&parsed) {
        let mut distinct: Vec<String> = Vec::new();
        for b in back.iter().flatten() {
            if distinct.len() < cfg.max_funcs && !distinct.contains(b) {
                prompts.push((
                    format!("{}/judge{}", v.id, distinct.len()),
                    fill(
                        &template,
                        &[("instruction", &v.instruction), ("back_instruction", b)],
                    ),
                ));
                distinct.push(b.clone());
            }
        }
        judged.push(distinct);
    }
    let answers = if prompts.is_empty() {
        Vec::new()
    } else {
        p.generate_texts(STAGE, &prompts, 1, &cfg.judge_sampling)?
    };
    let mut answers = answers.into_iter().map(|mut t| t.remove(0));
    Ok(units
        .iter()
        .zip(parsed)
        .zip(judged)
        .map(|((v, back), judged)| {
            let back = match back {
                Ok(back) => back,
                Err(reason) => return rejected_unparsed(v, reason),
            };
            let judgements: Vec<Judgement> = judged
                .into_iter()
                .map(|back_instruction| {
                    let text = answers.next().expect("one answer per judge prompt");
                    Judgement {
                        back_instruction,
                        label: parse_judgement(&text).ok(),
                        text,
                    }
                })
                .collect();
            let labels = judgements.iter().filter_map(|j| j.label);
            let deciding = match cfg.rule {
                ConsistencyRule::NoneContradicts => labels.min(),
                ConsistencyRule::AnyAgrees => labels.max(),
            };
            let reason = match deciding {
                None => Some(DropReason::UnparsedJudgement),
                Some(JudgeLabel::Contradiction) => Some(DropReason::Inconsistent),
                Some(JudgeLabel::Neutral | JudgeLabel::Consistent) => None,
            };
            Checked {
                validated: v.clone(),
                back_instructions: back,
                similarity: None,
                judgements: Some(judgements),
                reason,
            }
        })
        .collect())
}

/// The `nli` checker for one instruction: premise = the instruction, hypothesis = each
/// distinct back-translation (at most `max_funcs`); dropped when one contradicts (all,
/// under `any_agrees`). The verdicts are recorded as judgements (entailment counts as
/// consistent).
fn nli_check(
    v: &Validated,
    text: &str,
    classifier: &NliClassifier,
    max_funcs: usize,
    rule: ConsistencyRule,
) -> Result<Checked> {
    let back = match back_translations(text, rule) {
        Ok(back) => back,
        Err(reason) => return Ok(rejected_unparsed(v, reason)),
    };
    let mut distinct: Vec<&str> = Vec::new();
    for b in &back {
        if distinct.len() < max_funcs && !distinct.contains(&b.as_str()) {
            distinct.push(b);
        }
    }
    let pairs: Vec<(&str, &str)> = distinct
        .iter()
        .map(|b| (v.instruction.as_str(), *b))
        .collect();
    let predictions = classifier.predict(&pairs)?;
    let judgements: Vec<Judgement> = distinct
        .iter()
        .zip(&predictions)
        .map(|(b, prediction)| {
            let label = if classifier.contradicts(prediction) {
                JudgeLabel::Contradiction
            } else if prediction.label.eq_ignore_ascii_case("entailment") {
                JudgeLabel::Consistent
            } else {
                JudgeLabel::Neutral
            };
            let probabilities: Vec<String> = prediction
                .probabilities
                .iter()
                .map(|(l, p)| format!("{l} {p:.3}"))
                .collect();
            Judgement {
                back_instruction: b.to_string(),
                label: Some(label),
                text: probabilities.join(", "),
            }
        })
        .collect();
    let contradicts = |j: &Judgement| j.label == Some(JudgeLabel::Contradiction);
    let inconsistent = match rule {
        ConsistencyRule::NoneContradicts => judgements.iter().any(contradicts),
        ConsistencyRule::AnyAgrees => judgements.iter().all(contradicts),
    };
    Ok(Checked {
        validated: v.clone(),
        back_instructions: back,
        similarity: None,
        judgements: Some(judgements),
        reason: inconsistent.then_some(DropReason::Inconsistent),
    })
}

/// The back-translations in the model's answer. Under `any_agrees` an answer that is
/// not a list is read as one back-translation, as before the paper's rule.
fn back_translations(text: &str, rule: ConsistencyRule) -> Result<Vec<String>, &'static str> {
    match (parse_back_translation(text), rule) {
        (Err("back_translation_not_a_list"), ConsistencyRule::AnyAgrees) => {
            Ok(vec![text.split_whitespace().collect::<Vec<_>>().join(" ")])
        }
        (parsed, _) => parsed,
    }
}

/// An instruction whose back-translation text could not be read.
fn rejected_unparsed(v: &Validated, reason: &str) -> Checked {
    Checked {
        validated: v.clone(),
        back_instructions: Vec::new(),
        similarity: None,
        judgements: None,
        reason: Some(DropReason::parsed(reason)),
    }
}

/// Decides one instruction from its back-translation text: the least similar
/// back-translation decides (the most similar under `any_agrees`).
pub fn check(
    v: &Validated,
    text: &str,
    embedder: Option<&Embedder>,
    min_similarity: f32,
    rule: ConsistencyRule,
) -> Result<Checked> {
    let back = match back_translations(text, rule) {
        Ok(back) => back,
        Err(reason) => return Ok(rejected_unparsed(v, reason)),
    };
    let similarity = match embedder {
        None => None,
        Some(e) => {
            let mut texts = vec![v.instruction.clone()];
            texts.extend(back.iter().cloned());
            let vectors = e.embed(&texts)?;
            let deciding = match rule {
                ConsistencyRule::NoneContradicts => f32::min,
                ConsistencyRule::AnyAgrees => f32::max,
            };
            vectors[1..]
                .iter()
                .map(|b| cosine(&vectors[0], b))
                .reduce(deciding)
        }
    };
    let consistent = similarity.is_none_or(|s| s >= min_similarity);
    Ok(Checked {
        validated: v.clone(),
        back_instructions: back,
        similarity,
        judgements: None,
        reason: (!consistent).then_some(DropReason::Inconsistent),
    })
}
