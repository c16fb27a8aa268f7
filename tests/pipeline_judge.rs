//! The `judge` consistency checker of the back-translation stage: the supervision model
//! says whether each back-translation is consistent with, neutral to, or contradicts
//! the original instruction. With recorded answers: which instructions are kept and
//! why the others are dropped. With the real SmolLM2-135M engine: the stage runs and
//! every answer is either read as a verdict or counted as `unparsed_judgement`.

mod common;
mod pipeline_support;

use autoif::generate::Backend;
use autoif::generate::{EngineOptions, LocalEngine};
use autoif::model::{LoadOptions, Model};
use autoif::pipeline::backtranslate::Checked;
use autoif::pipeline::crossval::{ScoredFunc, Validated};
use autoif::pipeline::parse::{parse_judgement, JudgeLabel};
use autoif::pipeline::{Pipeline, Stage};
use autoif::run::manifest::RunFolder;
use pipeline_support::{config, Replay};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

fn validated(id: &str, instruction: &str, func_body: &str) -> Validated {
    Validated {
        id: id.to_string(),
        instruction: instruction.to_string(),
        funcs: vec![ScoredFunc {
            source: format!("def evaluate(response):\n    {func_body}"),
            accuracy: 1.0,
        }],
        cases: Vec::new(),
        ifeval_types: Vec::new(),
    }
}

/// A run folder whose crossval stage is done with `instructions`.
fn run_with(root: &Path, toml_text: &str, instructions: &[Validated]) -> RunFolder {
    let run = RunFolder::create(
        root,
        &config(toml_text),
        Value::Null,
        &["crossval", "backtranslate"],
    )
    .unwrap();
    run.stage_files()
        .write_records("crossval", "instructions.jsonl", instructions)
        .unwrap();
    run.mark_running("crossval").unwrap();
    run.mark_done("crossval", Vec::new(), 0.0).unwrap();
    run
}

/// Runs the stage and returns every instruction's record (kept first) and its funnel.
fn backtranslate(
    root: &Path,
    toml_text: &str,
    instructions: &[Validated],
    backend: &mut dyn Backend,
) -> (Vec<Checked>, BTreeMap<String, usize>, usize) {
    let run = run_with(root, toml_text, instructions);
    let cfg = config(toml_text);
    let mut pipeline = Pipeline::new(run.stage_files(), cfg.seed, cfg.synthesis, Some(backend));
    let rows = run.run_stage(&mut pipeline, Stage::Backtranslate).unwrap();
    let mut records: Vec<Checked> = run
        .stage_files()
        .read_records("backtranslate", "instructions.jsonl")
        .unwrap();
    let kept = records.len();
    records.extend(
        run.stage_files()
            .read_records::<Checked>("backtranslate", "rejected.jsonl")
            .unwrap(),
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].input, instructions.len());
    assert_eq!(rows[0].output, kept);
    (records, rows[0].dropped.clone(), kept)
}

const JUDGE_CONFIG: &str = r#"
    [synthesis]
    chunk = 2
    [synthesis.backtranslate]
    checker = "judge"
    rule = "any_agrees"
"#;

/// Five instructions, each with one function tagged by a comment the recorded
/// back-translation is keyed on.
fn five_instructions() -> [Validated; 5] {
    [
        validated(
            "i1",
            "Answer in lowercase letters only.",
            "return response == response.lower()  # unit-lower",
        ),
        validated(
            "i2",
            "Answer in at most 50 words.",
            "return len(response.split()) <= 50  # unit-words",
        ),
        validated(
            "i3",
            "End your answer with the word 'Done'.",
            "return response.strip().endswith('Done')  # unit-done",
        ),
        validated(
            "i4",
            "Wrap your whole answer in double quotes.",
            "return response.startswith('\"')  # unit-quotes",
        ),
        validated(
            "i5",
            "Use exactly three bullet points.",
            "return response.count('\\n* ') == 3  # unit-bullets",
        ),
    ]
}

/// The recorded back-translations, keyed on the function tags, and the judge's
/// answers, keyed on the back-translation.
fn recorded_answers() -> Vec<(String, Vec<String>)> {
    let recorded = |key: &str, text: &str| (key.to_string(), vec![text.to_string()]);
    vec![
        // Back-translations.
        recorded("# unit-lower", "[\"Answer using only lowercase letters.\"]"),
        recorded(
            "# unit-words",
            "```json\n[\"Write fewer than 50 words.\", \"Use no more than fifty words.\", \"Write fewer than 50 words.\"]\n```",
        ),
        recorded("# unit-done", "[\"Start your answer with the word 'Done'.\"]"),
        recorded("# unit-quotes", "[\"Put the answer in quotation marks.\"]"),
        recorded("# unit-bullets", "   "),
        // The judge's answers.
        recorded("Instruction B: Answer using only lowercase letters.", "Consistent"),
        recorded("Instruction B: Write fewer than 50 words.", "contradiction"),
        recorded(
            "Instruction B: Use no more than fifty words.",
            "B states the same limit in other words and adds nothing that conflicts.\n\n**Neutral**",
        ),
        recorded(
            "Instruction B: Start your answer with the word 'Done'.",
            "**Contradiction** (B moves the word to the start).",
        ),
        recorded("Instruction B: Put the answer in quotation marks.", "I am not sure what you mean."),
    ]
}

/// Under the earlier `any_agrees` rule: the best verdict decides.
#[test]
fn judge_verdicts_decide_membership_and_reasons() {
    let instructions = five_instructions();
    let mut replay = Replay::new(recorded_answers());
    let dir = tempfile::tempdir().unwrap();
    let (records, dropped, kept) = backtranslate(
        &dir.path().join("judge"),
        JUDGE_CONFIG,
        &instructions,
        &mut replay,
    );
    // 5 back-translations, then 1 + 2 (one duplicate not asked) + 1 + 1 judgements.
    assert_eq!(replay.replayed, 10);
    assert_eq!(replay.delegated, 0);
    let by_id: BTreeMap<&str, &Checked> = records
        .iter()
        .map(|c| (c.validated.id.as_str(), c))
        .collect();
    let reasons: Vec<(&str, Option<&str>)> = by_id
        .iter()
        .map(|(id, c)| (*id, c.reason.as_deref()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("i1", None),
            ("i2", None),
            ("i3", Some("inconsistent")),
            ("i4", Some("unparsed_judgement")),
            ("i5", Some("empty_back_translation")),
        ]
    );
    assert_eq!(kept, 2);
    assert_eq!(
        dropped,
        BTreeMap::from([
            ("empty_back_translation".to_string(), 1),
            ("inconsistent".to_string(), 1),
            ("unparsed_judgement".to_string(), 1),
        ])
    );
    let labels = |id: &str| -> Vec<Option<JudgeLabel>> {
        by_id[id]
            .judgements
            .as_ref()
            .unwrap()
            .iter()
            .map(|j| j.label)
            .collect()
    };
    assert_eq!(labels("i1"), [Some(JudgeLabel::Consistent)]);
    // The best of the two verdicts keeps it.
    assert_eq!(
        labels("i2"),
        [Some(JudgeLabel::Contradiction), Some(JudgeLabel::Neutral)]
    );
    assert_eq!(by_id["i2"].back_instructions.len(), 3);
    assert_eq!(labels("i3"), [Some(JudgeLabel::Contradiction)]);
    assert_eq!(labels("i4"), [None]);
    let i4 = &by_id["i4"].judgements.as_ref().unwrap()[0];
    assert_eq!(i4.text, "I am not sure what you mean.");
    assert_eq!(i4.back_instruction, "Put the answer in quotation marks.");
    assert!(by_id["i5"].judgements.is_none());
    assert!(by_id.values().all(|c| c.similarity.is_none()));

    // Without a checker the same back-translations keep all but the empty one, and the
    // records carry no `judgements` field (the output of `none` and `minilm` is as before).
    let mut replay = Replay::new(replay.recordings.clone());
    let none = JUDGE_CONFIG.replace("\"judge\"", "\"none\"");
    let root = dir.path().join("none");
    let (records, dropped, kept) = backtranslate(&root, &none, &instructions, &mut replay);
    assert_eq!(replay.replayed, 5);
    assert_eq!((kept, records.len()), (4, 5));
    assert_eq!(
        dropped,
        BTreeMap::from([("empty_back_translation".to_string(), 1)])
    );
    let first = std::fs::read_to_string(root.join("backtranslate/instructions.jsonl")).unwrap();
    let first: Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "instruction",
            "funcs",
            "cases",
            "back_instructions",
            "similarity",
            "reason"
        ]
    );
}

/// The paper's rule (the default): one contradicting back-translation drops the
/// instruction, even when another is judged neutral.
#[test]
fn one_contradicting_back_translation_drops_the_instruction() {
    let instructions = five_instructions();
    let mut replay = Replay::new(recorded_answers());
    let dir = tempfile::tempdir().unwrap();
    let config = JUDGE_CONFIG.replace("rule = \"any_agrees\"", "");
    let (records, dropped, kept) = backtranslate(
        &dir.path().join("judge"),
        &config,
        &instructions,
        &mut replay,
    );
    let reasons: BTreeMap<&str, Option<&str>> = records
        .iter()
        .map(|c| (c.validated.id.as_str(), c.reason.as_deref()))
        .collect();
    assert_eq!(reasons["i1"], None);
    assert_eq!(reasons["i2"], Some("inconsistent"));
    assert_eq!(kept, 1);
    assert_eq!(dropped["inconsistent"], 2);
}

/// The real engine writes both the back-translations and the judgements; a 135M model
/// is no reliable judge, so this shows only that every answer is accounted for.
#[test]
fn judge_with_the_real_engine() {
    if !Path::new(MODEL).exists() {
        eprintln!("SKIP: {MODEL} is missing (scripts/fetch-models.sh)");
        return;
    }
    let instructions = [
        validated(
            "i1",
            "Answer in lowercase letters only.",
            "return response == response.lower()",
        ),
        validated(
            "i2",
            "Answer in fewer than 20 words.",
            "return len(response.split()) < 20",
        ),
        validated(
            "i3",
            "Do not use any commas in your answer.",
            "return ',' not in response",
        ),
    ];
    let toml_text = r#"
        seed = 5
        [synthesis.backtranslate]
        checker = "judge"
        sampling = { temperature = 0.0, top_p = 1.0, max_new_tokens = 32 }
        judge_sampling = { temperature = 0.0, top_p = 1.0, max_new_tokens = 16 }
    "#;
    let model = Model::load(MODEL, &LoadOptions::cpu()).unwrap();
    let mut engine = LocalEngine::new(
        &model,
        EngineOptions {
            max_batch: 8,
            progress: false,
            ..EngineOptions::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (records, dropped, kept) = backtranslate(
        &dir.path().join("run"),
        toml_text,
        &instructions,
        &mut engine,
    );
    eprintln!(
        "judge stage on 3 instructions in {:.1}s: {kept} kept, dropped {dropped:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(records.len(), 3);
    for c in &records {
        eprintln!("{} -> {:?}", c.validated.instruction, c.back_instructions);
        // An answer that is no list is not judged.
        if matches!(
            c.reason.as_deref(),
            Some("empty_back_translation" | "back_translation_not_a_list")
        ) {
            assert!(c.judgements.is_none());
            continue;
        }
        let judgements = c.judgements.as_ref().unwrap();
        assert!(!judgements.is_empty() && judgements.len() <= 3);
        for j in judgements {
            eprintln!("  {:?}: {:?} -> {:?}", j.back_instruction, j.text, j.label);
            assert!(c.back_instructions.contains(&j.back_instruction));
            assert_eq!(j.label, parse_judgement(&j.text).ok());
        }
        // The paper's rule: the worst readable verdict decides.
        let worst = judgements.iter().filter_map(|j| j.label).min();
        let want = match worst {
            None => Some("unparsed_judgement"),
            Some(JudgeLabel::Contradiction) => Some("inconsistent"),
            Some(_) => None,
        };
        assert_eq!(c.reason.as_deref(), want, "{}", c.validated.instruction);
    }
}
