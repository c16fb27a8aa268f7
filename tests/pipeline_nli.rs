//! The NLI classifier against transformers: tiny random BERT and DeBERTa-v3-shaped
//! sequence classifiers made by `scripts/make-nli-fixtures.py`, whose `reference.json`
//! holds transformers' logits for a padded batch of pairs (one truncated).

mod common;

use autoif::pipeline::nli::NliClassifier;
use candle_core::Device;
use serde::Deserialize;
use std::path::{Path, PathBuf};

const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    pairs: Vec<(String, String)>,
    logits: Vec<Vec<f32>>,
    labels: Vec<String>,
}

/// A classifier folder under `tests/fixtures/nli`.
fn nli_fixture(name: &str) -> PathBuf {
    common::fixture("nli").join(name)
}

fn reference(dir: &Path) -> Reference {
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assert_logits_close(name: &str, what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "{name} {what}: row count");
    for (row, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{name} {what}: pair {row} class count");
        for (a, b) in g.iter().zip(w) {
            assert!(
                (a - b).abs() <= TOLERANCE,
                "{name} {what}: pair {row}: logits {g:?}, transformers {w:?}"
            );
        }
    }
}

fn check_parity(name: &str, expected_labels: &[&str]) {
    let dir = nli_fixture(name);
    let want = reference(&dir);
    let classifier = NliClassifier::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(
        classifier.labels(),
        expected_labels,
        "{name}: labels by class index"
    );
    let pairs: Vec<(&str, &str)> = want
        .pairs
        .iter()
        .map(|(p, h)| (p.as_str(), h.as_str()))
        .collect();

    let batched = classifier.logits(&pairs).unwrap();
    assert_logits_close(name, "padded batch", &batched, &want.logits);
    let one_by_one: Vec<Vec<f32>> = pairs
        .iter()
        .map(|pair| {
            classifier
                .logits(std::slice::from_ref(pair))
                .unwrap()
                .remove(0)
        })
        .collect();
    assert_logits_close(name, "one by one", &one_by_one, &want.logits);
    // More pairs than one forward pass takes: the rows still line up with the pairs.
    let many: Vec<(&str, &str)> = pairs
        .iter()
        .cycle()
        .take(3 * pairs.len())
        .copied()
        .collect();
    let many_want: Vec<Vec<f32>> = want
        .logits
        .iter()
        .cycle()
        .take(many.len())
        .cloned()
        .collect();
    assert_logits_close(
        name,
        "several batches",
        &classifier.logits(&many).unwrap(),
        &many_want,
    );

    let predictions = classifier.predict(&pairs).unwrap();
    let labels: Vec<&str> = predictions.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, want.labels, "{name}: predicted labels");
    for (prediction, logits) in predictions.iter().zip(&want.logits) {
        let names: Vec<&str> = prediction
            .probabilities
            .iter()
            .map(|(l, _)| l.as_str())
            .collect();
        assert_eq!(
            names, expected_labels,
            "{name}: probabilities in class order"
        );
        let total: f32 = prediction.probabilities.iter().map(|(_, p)| p).sum();
        assert!(
            (total - 1.0).abs() < 1e-5,
            "{name}: probabilities sum to {total}"
        );
        // Softmax of transformers' logits, computed here independently.
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        for ((_, p), e) in prediction.probabilities.iter().zip(&exp) {
            assert!(
                (p - e / sum).abs() < 1e-4,
                "{name}: probability {p} vs {}",
                e / sum
            );
        }
        assert_eq!(
            classifier.contradicts(prediction),
            prediction.label.eq_ignore_ascii_case("contradiction")
        );
    }
    // The fixtures are chosen so that both verdicts occur.
    assert!(
        predictions.iter().any(|p| classifier.contradicts(p)),
        "{name}: no contradiction"
    );
    assert!(
        predictions.iter().any(|p| !classifier.contradicts(p)),
        "{name}: only contradictions"
    );
    assert!(classifier.predict(&[]).unwrap().is_empty());
}

#[test]
fn bert_matches_transformers() {
    check_parity("bert", &["ENTAILMENT", "NEUTRAL", "CONTRADICTION"]);
}

#[test]
fn deberta_v3_matches_transformers() {
    check_parity("deberta", &["contradiction", "entailment", "neutral"]);
}

/// A copy of the BERT fixture with its config.json replaced (or removed).
fn broken_copy(config: Option<serde_json::Value>) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(nli_fixture("bert").join(file), tmp.path().join(file)).unwrap();
    }
    let config_path = tmp.path().join("config.json");
    if let Some(config) = config {
        std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    }
    (tmp, config_path)
}

fn bert_config() -> serde_json::Value {
    let text = std::fs::read_to_string(nli_fixture("bert").join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load_error(dir: &Path) -> String {
    match NliClassifier::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn missing_config_names_the_file() {
    let (tmp, config_path) = broken_copy(None);
    let err = load_error(tmp.path());
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(
        err.starts_with(&format!("{}: cannot read", config_path.display())),
        "{err}"
    );
}

#[test]
fn config_without_contradiction_is_refused() {
    let mut config = bert_config();
    config["id2label"] = serde_json::json!({"0": "ENTAILMENT", "1": "NEUTRAL", "2": "OTHER"});
    let (tmp, config_path) = broken_copy(Some(config));
    let err = load_error(tmp.path());
    assert_eq!(
        err,
        format!(
            "{}: id2label has no `contradiction` label (labels: ENTAILMENT, NEUTRAL, OTHER)",
            config_path.display()
        )
    );
}

#[test]
fn unsupported_architecture_and_model_type_are_refused() {
    let mut config = bert_config();
    config["architectures"] = serde_json::json!(["RobertaForSequenceClassification"]);
    config["model_type"] = serde_json::json!("roberta");
    let (tmp, config_path) = broken_copy(Some(config.clone()));
    assert_eq!(
        load_error(tmp.path()),
        format!(
            "{}: unsupported architecture `RobertaForSequenceClassification` (supported: \
             BertForSequenceClassification, DebertaV2ForSequenceClassification)",
            config_path.display()
        )
    );

    config.as_object_mut().unwrap().remove("architectures");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(
        load_error(tmp.path()),
        format!(
            "{}: unsupported model_type `roberta` (supported: bert, deberta-v2)",
            config_path.display()
        )
    );
}
