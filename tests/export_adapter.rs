//! PEFT adapter folders: a saved adapter loads back to identical logits, the files are in
//! PEFT's layout, and malformed folders fail with one line naming the file while leaving
//! the model untouched.

mod common;
mod export_support;

use autoif::model::adapter_file::{load_adapter, save_adapter};
use autoif::model::lora::Adapters;
use autoif::model::Model;
use candle_core::{DType, Device, Tensor};
use common::{fixture, max_abs_diff};
use export_support::*;
use std::collections::HashMap;
use std::path::Path;

fn adapted(name: &str, seed: u64) -> Model {
    let mut model = load(&fixture(name));
    attach_random_adapters(&mut model, &test_config(), seed, 0.2);
    model
}

fn adapter_count(model: &Model) -> usize {
    model
        .decoder
        .linear_layers()
        .iter()
        .filter(|(_, l)| l.adapter().is_some())
        .count()
}

#[test]
fn round_trip_gives_identical_logits() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let model = adapted(name, 7);
        let ids = sample_ids(model.config.vocab_size);
        let expected = logits(&model, &ids, Adapters::On);
        assert!(
            max_abs_diff(&expected, &logits(&model, &ids, Adapters::Off)) > 1e-2,
            "{name}: the random adapter should change the logits"
        );
        let dir = tempfile::tempdir().unwrap();
        save_adapter(&model.decoder, &test_config(), name, dir.path()).unwrap();

        let mut fresh = load(&fixture(name));
        // Adapters already attached to other projections must not survive the load.
        attach_random_adapters(
            &mut fresh,
            &autoif::model::lora::LoraConfig::default(),
            99,
            0.2,
        );
        let config = load_adapter(&mut fresh.decoder, dir.path()).unwrap();
        assert_eq!(config, test_config());
        assert_eq!(adapter_count(&fresh), 4 * model.config.num_hidden_layers);
        let diff = max_abs_diff(&expected, &logits(&fresh, &ids, Adapters::On));
        assert_eq!(
            diff, 0.0,
            "{name}: logits after the round trip differ by {diff}"
        );
    }
}

#[test]
fn files_follow_peft_layout() {
    let model = adapted("tiny-llama", 3);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model.decoder, &test_config(), "my/base", dir.path()).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["adapter_config.json", "adapter_model.safetensors"]);

    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8);
    assert_eq!(config["lora_dropout"], 0.05);
    assert_eq!(config["base_model_name_or_path"], "my/base");
    assert_eq!(config["bias"], "none");
    assert_eq!(config["fan_in_fan_out"], false);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "o_proj", "down_proj"])
    );

    let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 2 * 4 * 3);
    let a = st
        .tensor("base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.dtype(), safetensors::Dtype::F32);
    assert_eq!(a.shape(), [4, 64]);
    let b = st
        .tensor("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape(), [64, 4]);
    assert!(st
        .tensor("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight")
        .is_err());
}

#[test]
fn refuses_to_save_nothing_or_an_inconsistent_config() {
    let plain = load(&fixture("tiny-llama"));
    let dir = tempfile::tempdir().unwrap();
    let err = save_adapter(&plain.decoder, &test_config(), "b", dir.path()).unwrap_err();
    assert!(
        format!("{err:#}").contains("no LoRA adapter attached"),
        "{err:#}"
    );

    let model = adapted("tiny-llama", 1);
    let mut other_rank = test_config();
    other_rank.r = 8;
    let err = save_adapter(&model.decoder, &other_rank, "b", dir.path()).unwrap_err();
    assert!(format!("{err:#}").contains("rank 4 differs"), "{err:#}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Saves a good adapter, lets `spoil` change its folder, and returns the load error
/// (checking that the target model kept its state).
fn load_error(spoil: impl FnOnce(&Path)) -> String {
    let model = adapted("tiny-llama", 5);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model.decoder, &test_config(), "b", dir.path()).unwrap();
    spoil(dir.path());
    let mut target = load(&fixture("tiny-llama"));
    let err = load_adapter(&mut target.decoder, dir.path()).unwrap_err();
    assert_eq!(adapter_count(&target), 0, "a failed load attached adapters");
    let line = format!("{err:#}");
    assert!(!line.contains('\n'), "not one line: {line}");
    line
}

fn rewrite_tensors(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

const Q0_A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";

#[test]
fn malformed_folders_fail_with_the_file_named() {
    let e = load_error(|d| std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap());
    assert!(e.contains("adapter_model.safetensors: missing"), "{e}");

    let e = load_error(|d| {
        rewrite_tensors(d, |t| {
            t.insert(
                Q0_A.into(),
                Tensor::zeros((4, 63), DType::F32, &Device::Cpu).unwrap(),
            );
        })
    });
    assert!(
        e.contains("adapter_model.safetensors")
            && e.contains("layers.0.self_attn.q_proj: lora_A [4, 63]"),
        "{e}"
    );

    let e = load_error(|d| {
        rewrite_tensors(d, |t| {
            t.remove(Q0_A);
        })
    });
    assert!(e.contains("q_proj has lora_B but no lora_A"), "{e}");

    let e = load_error(|d| {
        rewrite_tensors(d, |t| {
            let v = t.remove(Q0_A).unwrap();
            t.insert(Q0_A.replace("lora_A.weight", "lora_A.default.weight"), v);
        })
    });
    assert!(
        e.contains("unexpected tensor") && e.contains("lora_A.default.weight"),
        "{e}"
    );

    let e = load_error(|d| {
        rewrite_tensors(d, |t| {
            let v = t.remove(Q0_A).unwrap();
            let b = t.remove(&Q0_A.replace("lora_A", "lora_B")).unwrap();
            t.insert(Q0_A.replace("layers.0", "layers.9"), v);
            t.insert(
                Q0_A.replace("layers.0", "layers.9")
                    .replace("lora_A", "lora_B"),
                b,
            );
        })
    });
    assert!(
        e.contains("layers.9.self_attn.q_proj, which this model does not have"),
        "{e}"
    );

    let e = load_error(|d| edit_config(d, |v| v["target_modules"] = serde_json::json!(["q_proj"])));
    assert!(
        e.contains("v_proj has LoRA tensors but is not among target_modules"),
        "{e}"
    );

    let e = load_error(|d| edit_config(d, |v| v["use_dora"] = serde_json::json!(true)));
    assert!(
        e.contains("adapter_config.json: `use_dora: true` is not supported"),
        "{e}"
    );

    let e = load_error(|d| edit_config(d, |v| v["r"] = serde_json::json!(8)));
    assert!(e.contains("do not fit r = 8"), "{e}");

    let e = load_error(|d| std::fs::write(d.join("adapter_config.json"), "{").unwrap());
    assert!(e.contains("adapter_config.json: invalid JSON"), "{e}");
}
