//! SFT and DPO losses on a fixed tiny batch equal what transformers + peft (and TRL's DPO
//! formulas) compute on the same weights and adapter; the data pipeline produces the same
//! token ids and label masks as the reference script's rendering with transformers.
//! Reference: scripts/make-train-fixtures.py → tests/fixtures/train/.

mod common;

use autoif::model::adapter_file::load_adapter;
use autoif::model::lora::Adapters;
use autoif::model::{LoadOptions, Model};
use autoif::train::data::{
    parse_preferences, parse_sft, read_records, tokenize_preferences, tokenize_sft, DataFormat,
    TokenBatch, Tokenized,
};
use autoif::train::dpo::{dpo_loss, DpoConfig, DpoLossType, Reference};
use autoif::train::policy::Policy;
use autoif::train::sft::sft_loss;
use serde_json::Value;

/// The adapters on, every activation kept: the path these parities were measured on.
const ON: Policy = Policy {
    adapters: Adapters::On,
    checkpointing: false,
};

const TOLERANCE: f64 = 1e-4;

fn reference() -> Value {
    let text = std::fs::read_to_string(common::fixture("train/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn model_with_fixture_adapter() -> Model {
    let mut model = Model::load(
        common::fixture("tiny-llama").to_str().unwrap(),
        &LoadOptions::cpu(),
    )
    .unwrap();
    load_adapter(&mut model.decoder, &common::fixture("train/adapter")).unwrap();
    model
}

fn expected_sequences(ids: &Value, labels: &Value) -> Vec<Tokenized> {
    ids.as_array()
        .unwrap()
        .iter()
        .zip(labels.as_array().unwrap())
        .map(|(i, l)| Tokenized {
            ids: serde_json::from_value(i.clone()).unwrap(),
            labels: serde_json::from_value(l.clone()).unwrap(),
        })
        .collect()
}

fn close(name: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= TOLERANCE,
        "{name}: autoif {got} vs reference {want}"
    );
}

#[test]
fn sft_loss_matches_transformers() {
    let reference = reference();
    let model = model_with_fixture_adapter();
    let path = common::fixture("train/sft.jsonl");
    let conversations = parse_sft(&read_records(&path).unwrap(), DataFormat::Auto, &path).unwrap();
    let (examples, dropped) = tokenize_sft(&model, &conversations, 256).unwrap();
    assert_eq!(dropped, 0);
    let expected = expected_sequences(&reference["sft"]["ids"], &reference["sft"]["labels"]);
    assert_eq!(
        examples, expected,
        "token ids / labels differ from the reference rendering"
    );

    let refs: Vec<&Tokenized> = examples.iter().collect();
    let batch = TokenBatch::new(&refs, model.decoder.device()).unwrap();
    let (loss, _) = sft_loss(&model.decoder, &batch, batch.target_count(), ON).unwrap();
    let loss = loss.value.to_scalar::<f32>().unwrap() as f64;
    let want = reference["sft"]["loss"].as_f64().unwrap();
    close("SFT loss", loss, want);
    eprintln!("SFT loss: autoif {loss:.6} transformers {want:.6}");
}

#[test]
fn dpo_losses_match_trl_formulas() {
    let reference = reference();
    let model = model_with_fixture_adapter();
    let path = common::fixture("train/dpo.jsonl");
    let pairs = parse_preferences(&read_records(&path).unwrap(), DataFormat::Auto, &path).unwrap();
    let (tokenized, dropped) = tokenize_preferences(&model, &pairs, 256).unwrap();
    assert_eq!(dropped, 0);
    let r = &reference["dpo"];
    let chosen: Vec<Tokenized> = tokenized.iter().map(|p| p.chosen.clone()).collect();
    let rejected: Vec<Tokenized> = tokenized.iter().map(|p| p.rejected.clone()).collect();
    assert_eq!(
        chosen,
        expected_sequences(&r["chosen_ids"], &r["chosen_labels"])
    );
    assert_eq!(
        rejected,
        expected_sequences(&r["rejected_ids"], &r["rejected_labels"])
    );

    let seqs: Vec<&Tokenized> = chosen.iter().chain(&rejected).collect();
    let batch = TokenBatch::new(&seqs, model.decoder.device()).unwrap();
    for (variant, loss_type) in [
        ("sigmoid", DpoLossType::Sigmoid),
        ("sigmoid_smoothed", DpoLossType::Sigmoid),
        ("ipo", DpoLossType::Ipo),
    ] {
        let want = &r[variant];
        let config = DpoConfig {
            beta: want["beta"].as_f64().unwrap(),
            loss_type,
            label_smoothing: want["label_smoothing"].as_f64().unwrap(),
            ..DpoConfig::default()
        };
        let (loss, stats) = dpo_loss(
            &model.decoder,
            &batch,
            &config,
            tokenized.len(),
            ON,
            Reference::Compute,
        )
        .unwrap();
        let loss = loss.value.to_scalar::<f32>().unwrap() as f64;
        close(
            &format!("{variant} loss"),
            loss,
            want["loss"].as_f64().unwrap(),
        );
        let list = |key: &str| -> Vec<f64> { serde_json::from_value(want[key].clone()).unwrap() };
        for (i, (got, exp)) in stats.losses.iter().zip(list("losses")).enumerate() {
            close(&format!("{variant} pair {i} loss"), *got, exp);
        }
        for (i, (got, exp)) in stats
            .chosen_rewards
            .iter()
            .zip(list("chosen_rewards"))
            .enumerate()
        {
            close(&format!("{variant} pair {i} chosen reward"), *got, exp);
        }
        for (i, (got, exp)) in stats
            .rejected_rewards
            .iter()
            .zip(list("rejected_rewards"))
            .enumerate()
        {
            close(&format!("{variant} pair {i} rejected reward"), *got, exp);
        }
        eprintln!(
            "DPO {variant}: autoif {loss:.6} reference {:.6}",
            want["loss"].as_f64().unwrap()
        );
    }
}
