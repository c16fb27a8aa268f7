//! The back-translation stage with `checker = "nli"`: recorded back-translations are
//! classified by the tiny BERT NLI fixture, and the stage keeps exactly the instructions
//! with at least one back-translation the classifier does not call a contradiction,
//! recording each verdict; a config naming the nli checker without a model is refused.

mod common;
mod pipeline_support;

use autoif::pipeline::backtranslate::Checked;
use autoif::pipeline::crossval::{ScoredFunc, Validated};
use autoif::pipeline::nli::NliClassifier;
use autoif::pipeline::parse::JudgeLabel;
use autoif::pipeline::{Pipeline, Stage};
use autoif::run::manifest::RunFolder;
use candle_core::Device;
use pipeline_support::{config, Replay};
use serde_json::Value;
use std::path::Path;

const INSTRUCTIONS: [(&str, &str); 6] = [
    (
        "Answer in lowercase letters only.",
        "Use only lowercase letters.",
    ),
    ("Write at most fifty words.", "Write a very long essay."),
    ("End with the word done.", "Finish your reply with done."),
    (
        "Do not use any commas.",
        "Use many commas in every sentence.",
    ),
    (
        "Wrap the answer in quotes.",
        "Put the whole answer inside quotation marks.",
    ),
    (
        "Give exactly three bullet points.",
        "List three points as bullets.",
    ),
];

#[test]
fn nli_checker_keeps_what_the_classifier_does_not_call_a_contradiction() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nli/bert");
    let toml_text = format!(
        "[synthesis]\nchunk = 4\n[synthesis.backtranslate]\nchecker = \"nli\"\nnli_model = \"{}\"\n",
        model.display()
    );
    let instructions: Vec<Validated> = INSTRUCTIONS
        .iter()
        .enumerate()
        .map(|(i, (instruction, _))| Validated {
            id: format!("i{i}"),
            instruction: instruction.to_string(),
            funcs: vec![ScoredFunc {
                source: format!("def evaluate(response):\n    return True  # unit-{i}"),
                accuracy: 1.0,
            }],
            cases: Vec::new(),
            ifeval_types: Vec::new(),
        })
        .collect();
    let mut replay = Replay::new(
        INSTRUCTIONS
            .iter()
            .enumerate()
            .map(|(i, (_, back))| (format!("# unit-{i}"), vec![format!("[\"{back}\"]")]))
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let run = RunFolder::create(
        dir.path(),
        &config(&toml_text),
        Value::Null,
        &["crossval", "backtranslate"],
    )
    .unwrap();
    run.stage_files()
        .write_records("crossval", "instructions.jsonl", &instructions)
        .unwrap();
    run.mark_running("crossval").unwrap();
    run.mark_done("crossval", Vec::new(), 0.0).unwrap();
    let cfg = config(&toml_text);
    let mut pipeline = Pipeline::new(
        run.stage_files(),
        cfg.seed,
        cfg.synthesis,
        Some(&mut replay),
    );
    let rows = run.run_stage(&mut pipeline, Stage::Backtranslate).unwrap();

    // What the classifier says directly about the same pairs.
    let classifier = NliClassifier::load(&model, &Device::Cpu).unwrap();
    let pairs: Vec<(&str, &str)> = INSTRUCTIONS.to_vec();
    let predictions = classifier.predict(&pairs).unwrap();
    let expected_kept: Vec<String> = predictions
        .iter()
        .enumerate()
        .filter(|(_, p)| !classifier.contradicts(p))
        .map(|(i, _)| format!("i{i}"))
        .collect();
    assert!(
        !expected_kept.is_empty() && expected_kept.len() < INSTRUCTIONS.len(),
        "the fixture should keep some and drop some: {expected_kept:?}"
    );

    let kept: Vec<Checked> = run
        .stage_files()
        .read_records("backtranslate", "instructions.jsonl")
        .unwrap();
    let rejected: Vec<Checked> = run
        .stage_files()
        .read_records("backtranslate", "rejected.jsonl")
        .unwrap();
    let kept_ids: Vec<String> = kept.iter().map(|c| c.validated.id.clone()).collect();
    assert_eq!(kept_ids, expected_kept);
    assert_eq!(rows[0].output, expected_kept.len());
    assert_eq!(
        rows[0].dropped.get("inconsistent").copied().unwrap_or(0),
        INSTRUCTIONS.len() - expected_kept.len()
    );
    for c in kept.iter().chain(&rejected) {
        let judgements = c.judgements.as_ref().expect("nli verdicts are recorded");
        assert_eq!(judgements.len(), 1);
        let contradiction = judgements[0].label == Some(JudgeLabel::Contradiction);
        assert_eq!(contradiction, c.reason.is_some(), "{c:?}");
    }

    let err = autoif::config::RunConfig::from_table(
        toml::from_str("[synthesis.backtranslate]\nchecker = \"nli\"\n").unwrap(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("needs synthesis.backtranslate.nli_model"),
        "{err}"
    );
}

/// Runs the stage on one instruction whose recorded answer is `back` and returns why it
/// was dropped (none when kept).
fn nli_reason(model: &Path, rule: &str, instruction: &str, back: &[&str]) -> Option<String> {
    let toml_text = format!(
        "[synthesis.backtranslate]\nchecker = \"nli\"\nrule = \"{rule}\"\nnli_model = \"{}\"\n",
        model.display()
    );
    let validated = Validated {
        id: "i0".into(),
        instruction: instruction.into(),
        funcs: vec![ScoredFunc {
            source: "def evaluate(response):\n    return True  # unit-0".into(),
            accuracy: 1.0,
        }],
        cases: Vec::new(),
        ifeval_types: Vec::new(),
    };
    let mut replay = Replay::new(vec![(
        "# unit-0".into(),
        vec![serde_json::to_string(back).unwrap()],
    )]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&toml_text);
    let run = RunFolder::create(
        dir.path(),
        &cfg,
        Value::Null,
        &["crossval", "backtranslate"],
    )
    .unwrap();
    run.stage_files()
        .write_records("crossval", "instructions.jsonl", &[validated])
        .unwrap();
    run.mark_running("crossval").unwrap();
    run.mark_done("crossval", Vec::new(), 0.0).unwrap();
    let mut pipeline = Pipeline::new(
        run.stage_files(),
        cfg.seed,
        cfg.synthesis,
        Some(&mut replay),
    );
    let rows = run.run_stage(&mut pipeline, Stage::Backtranslate).unwrap();
    rows[0].dropped.keys().next().cloned()
}

/// The paper's rule: one back-translation the classifier calls a contradiction drops
/// the instruction even when another one holds; `any_agrees` keeps it.
#[test]
fn one_contradicting_back_translation_drops_the_instruction() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nli/bert");
    let classifier = NliClassifier::load(&model, &Device::Cpu).unwrap();
    // An instruction whose own back-translation holds, and another text the classifier
    // says contradicts it.
    let found = INSTRUCTIONS.iter().find_map(|&(instruction, own)| {
        let holds = !classifier.contradicts(&classifier.predict(&[(instruction, own)]).unwrap()[0]);
        let contradicting = INSTRUCTIONS.iter().map(|(_, b)| *b).find(|b| {
            classifier.contradicts(&classifier.predict(&[(instruction, *b)]).unwrap()[0])
        });
        holds
            .then_some(())
            .and(contradicting.map(|c| (instruction, own, c)))
    });
    let (instruction, own, contradicting) =
        found.expect("the fixture calls some pair a contradiction and some not");
    assert_eq!(
        nli_reason(&model, "none_contradicts", instruction, &[own]),
        None
    );
    assert_eq!(
        nli_reason(
            &model,
            "none_contradicts",
            instruction,
            &[own, contradicting]
        )
        .as_deref(),
        Some("inconsistent")
    );
    assert_eq!(
        nli_reason(&model, "any_agrees", instruction, &[own, contradicting]),
        None
    );
}
