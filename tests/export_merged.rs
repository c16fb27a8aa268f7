//! Merged Hugging Face folders: loaded back by `autoif` they give the logits of base +
//! adapter (tiny Llama, tiny Qwen2 with tied embeddings and biases, the SmolLM2 GGUF in
//! Hugging Face layout); the CLI writes them whole or not at all; and, when a Python with
//! torch + transformers + peft is present, `scripts/check-export.py` confirms transformers
//! and peft compute the same log-probabilities.

mod common;
mod export_support;

use autoif::export::merged::merged_tensors;
use autoif::export::save_merged;
use autoif::model::adapter_file::save_adapter;
use autoif::model::chat_template::Message;
use autoif::model::lora::Adapters;
use autoif::model::Model;
use candle_core::{DType, Device};
use common::{autoif_command, fixture, max_abs_diff, smollm2};
use export_support::*;
use std::path::Path;
use std::process::Command;

const TEXTS: [&str; 4] = [
    "Hello world! Answer in ALL CAPITAL LETTERS, please.",
    "<|im_start|>user\nList three colours.<|im_end|>\n",
    "  spaces\tand\nnewlines 12345 ünïcödé 日本語",
    "",
];

/// The `autoif logprobs` input for the reference check: a raw-text pair, and a chat
/// prompt rendered by `model`'s own template (the script renders the same messages with
/// transformers and compares).
fn pairs_jsonl(model: &Model) -> String {
    let messages = [Message::new("user", "List three colours.")];
    let template = model.chat_template.as_ref().expect("a chat template");
    let lines = [
        serde_json::json!({"prompt": "Write a short poem about the sea.",
                           "completion": " The waves roll in, THE WAVES ROLL OUT."}),
        serde_json::json!({"messages": [{"role": "user", "content": "List three colours."}],
                           "prompt": template.render(&messages, true).unwrap(),
                           "completion": "Red, green and blue.<|im_end|>"}),
    ];
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Everything about tokenization and prompting that must survive the export.
fn assert_same_text_side(original: &Model, reloaded: &Model) {
    for text in TEXTS {
        assert_eq!(
            original.tokenizer.encode(text).unwrap(),
            reloaded.tokenizer.encode(text).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(
        original.tokenizer.bos_token(),
        reloaded.tokenizer.bos_token()
    );
    assert_eq!(
        original.tokenizer.eos_token(),
        reloaded.tokenizer.eos_token()
    );
    assert_eq!(original.eos_token_ids, reloaded.eos_token_ids);
    let messages = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
    ];
    let render = |m: &Model| {
        m.chat_template
            .as_ref()
            .map(|t| t.render(&messages, true).unwrap())
    };
    assert!(render(original).is_some());
    assert_eq!(render(original), render(reloaded));
}

fn safetensors_names_and_dtypes(path: &Path) -> Vec<(String, safetensors::Dtype)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype()))
        .collect()
}

#[test]
fn tiny_models_reload_with_the_adapted_logits() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let mut model = load(&fixture(name));
        attach_random_adapters(&mut model, &test_config(), 11, 0.2);
        let ids = sample_ids(model.config.vocab_size);
        let adapted = logits(&model, &ids, Adapters::On);
        let base_gap = max_abs_diff(&adapted, &logits(&model, &ids, Adapters::Off));
        assert!(
            base_gap > 1e-2,
            "{name}: adapter changes logits by only {base_gap}"
        );

        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        save_merged(&model, &out, DType::F32).unwrap();
        let reloaded = load(&out);
        assert_eq!(reloaded.config, model.config);
        let diff = max_abs_diff(&adapted, &logits(&reloaded, &ids, Adapters::Off));
        eprintln!("{name}: merged vs base+adapter max |Δ logit| = {diff:.2e} (adapter moves them {base_gap:.2})");
        assert!(diff < 1e-4, "{name}: merged logits differ by {diff}");
        assert_same_text_side(&model, &reloaded);

        let names = safetensors_names_and_dtypes(&out.join("model.safetensors"));
        assert!(names.iter().all(|(_, d)| *d == safetensors::Dtype::F32));
        let has_head = names.iter().any(|(n, _)| n == "lm_head.weight");
        assert_eq!(
            has_head, !model.config.tie_word_embeddings,
            "{name}: lm_head"
        );
        let has_bias = names.iter().any(|(n, _)| n.ends_with("q_proj.bias"));
        assert_eq!(has_bias, model.config.attention_bias, "{name}: q_proj bias");
        // No staging folder is left behind.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}

#[test]
fn half_precision_export() {
    let mut model = load(&fixture("tiny-llama"));
    attach_random_adapters(&mut model, &test_config(), 12, 0.2);
    let merged_f32: Vec<_> = merged_tensors(&model)
        .iter()
        .map(|t| (t.name.clone(), t.materialize().unwrap()))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    for (dtype, torch_name) in [(DType::BF16, "bfloat16"), (DType::F16, "float16")] {
        let out = tmp.path().join(torch_name);
        save_merged(&model, &out, dtype).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["torch_dtype"], torch_name);
        // Every tensor is the f32 merge rounded once to the half type.
        let saved =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(saved.len(), merged_f32.len());
        for (name, full) in &merged_f32 {
            let half = &saved[name];
            assert_eq!(half.dtype(), dtype, "{name}");
            let rounded = full.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            let diff = max_abs_diff(&rounded, &half.to_dtype(DType::F32).unwrap());
            assert_eq!(diff, 0.0, "{torch_name} {name}");
        }
        // And the folder loads.
        let reloaded = load(&out);
        assert_eq!(reloaded.config, model.config);
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    stderr
}

fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    stderr
}

/// Runs `scripts/check-export.py` on `autoif logprobs` of `merged` (and, with a base and
/// adapter, peft's view of them).
fn reference_check(
    test: &str,
    pairs_jsonl: &str,
    merged: &Path,
    base_and_adapter: Option<(&Path, &Path)>,
) {
    let Some(python) = reference_python(test) else {
        return;
    };
    let dir = merged.parent().unwrap();
    let pairs = dir.join("pairs.jsonl");
    let logprobs = dir.join("logprobs.jsonl");
    std::fs::write(&pairs, pairs_jsonl).unwrap();
    run_ok(
        autoif_command()
            .args(["logprobs", "--device", "cpu", "--model"])
            .arg(merged)
            .arg("--input")
            .arg(&pairs)
            .arg("--out")
            .arg(&logprobs),
    );
    let mut cmd = Command::new(python);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/check-export.py"
    ))
    .arg("--logprobs")
    .arg(&logprobs)
    .arg("--merged")
    .arg(merged);
    if let Some((base, adapter)) = base_and_adapter {
        cmd.arg("--base").arg(base).arg("--adapter").arg(adapter);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{test}: check-export.py:\n{stdout}");
    assert!(
        out.status.success(),
        "{test}: check-export.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cli_exports_match_the_library_and_the_reference() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let base = fixture(name);
        let mut model = load(&base);
        attach_random_adapters(&mut model, &test_config(), 21, 0.2);
        let ids = sample_ids(model.config.vocab_size);
        let adapted = logits(&model, &ids, Adapters::On);
        let tmp = tempfile::tempdir().unwrap();
        let checkpoint = tmp.path().join("checkpoint");
        save_adapter(
            &model.decoder,
            &test_config(),
            base.to_str().unwrap(),
            &checkpoint,
        )
        .unwrap();

        // A checkpoint re-saved by `export peft` is byte for byte the same folder.
        let adapter = tmp.path().join("adapter");
        run_ok(
            autoif_command()
                .args(["export", "peft", "--device", "cpu", "--model"])
                .arg(&base)
                .arg("--adapter")
                .arg(&checkpoint)
                .arg("--out")
                .arg(&adapter),
        );
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            assert_eq!(
                std::fs::read(checkpoint.join(file)).unwrap(),
                std::fs::read(adapter.join(file)).unwrap(),
                "{name}: {file} changed in the re-save"
            );
        }

        let merged = tmp.path().join("merged");
        let said = run_ok(
            autoif_command()
                .args(["export", "merged", "--device", "cpu", "--model"])
                .arg(&base)
                .arg("--adapter")
                .arg(&adapter)
                .arg("--out")
                .arg(&merged),
        );
        assert!(said.contains("12 LoRA projections merged"), "{said}");
        let diff = max_abs_diff(&adapted, &logits(&load(&merged), &ids, Adapters::Off));
        assert!(diff < 1e-4, "{name}: CLI merged logits differ by {diff}");

        reference_check(name, &pairs_jsonl(&model), &merged, Some((&base, &adapter)));
    }
}

#[test]
fn cli_errors_leave_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama");
    let out = tmp.path().join("out");

    let missing = tmp.path().join("no-adapter");
    let err = run_err(
        autoif_command()
            .args(["export", "merged", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--adapter")
            .arg(&missing)
            .arg("--out")
            .arg(&out),
    );
    assert!(
        err.contains("no-adapter: adapter folder not found"),
        "{err}"
    );
    assert!(!out.exists());

    // An adapter whose shapes do not fit the base: one lora_A one column short.
    let mut adapted = load(&model);
    attach_random_adapters(&mut adapted, &test_config(), 3, 0.1);
    let adapter = tmp.path().join("adapter");
    save_adapter(&adapted.decoder, &test_config(), "unused", &adapter).unwrap();
    let weights = adapter.join("adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let key = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight";
    tensors.insert(
        key.into(),
        candle_core::Tensor::zeros((4, 95), DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let err = run_err(
        autoif_command()
            .args(["export", "merged", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--adapter")
            .arg(&adapter)
            .arg("--out")
            .arg(&out),
    );
    assert!(
        err.contains("adapter_model.safetensors: model.layers.1.mlp.down_proj: lora_A [4, 95]"),
        "{err}"
    );
    assert!(!out.exists());
    let err = run_err(
        autoif_command()
            .args(["export", "peft", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--adapter")
            .arg(&adapter)
            .arg("--out")
            .arg(&out),
    );
    assert!(err.contains("down_proj: lora_A [4, 95]"), "{err}");
    assert!(!out.exists());
    // No staging folder is left beside the adapter either.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

    let err = run_err(
        autoif_command()
            .args(["export", "peft", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&out),
    );
    assert!(err.contains("export peft needs --adapter"), "{err}");
    assert!(!out.exists());

    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = run_err(
        autoif_command()
            .args(["export", "merged", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&out),
    );
    assert!(
        err.contains("already exists and is not an empty folder"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn gguf_base_exports_in_hugging_face_layout() {
    let Some(gguf) = smollm2("gguf_base_exports_in_hugging_face_layout") else {
        return;
    };
    let mut model = load(&gguf);
    let tmp = tempfile::tempdir().unwrap();
    // The base alone, as peft's base for the reference check.
    let base = tmp.path().join("base");
    save_merged(&model, &base, DType::F32).unwrap();

    let config = test_config();
    attach_random_adapters(&mut model, &config, 31, 0.05);
    let ids = sample_ids(model.config.vocab_size);
    let adapted = logits(&model, &ids, Adapters::On);
    let base_gap = max_abs_diff(&adapted, &logits(&model, &ids, Adapters::Off));
    assert!(base_gap > 1e-2, "adapter changes logits by only {base_gap}");
    let merged = tmp.path().join("merged");
    save_merged(&model, &merged, DType::F32).unwrap();
    let adapter = tmp.path().join("adapter");
    save_adapter(&model.decoder, &config, base.to_str().unwrap(), &adapter).unwrap();

    let reloaded = load(&merged);
    assert_eq!(reloaded.config, model.config);
    let diff = max_abs_diff(&adapted, &logits(&reloaded, &ids, Adapters::Off));
    eprintln!("SmolLM2 GGUF: merged HF folder vs base+adapter max |Δ logit| = {diff:.2e} (adapter moves them {base_gap:.2})");
    assert!(diff < 1e-3, "merged logits differ by {diff}");
    assert_same_text_side(&model, &reloaded);
    let pairs = pairs_jsonl(&model);
    drop(reloaded);
    drop(model);

    reference_check(
        "gguf_base_exports_in_hugging_face_layout",
        &pairs,
        &merged,
        Some((&base, &adapter)),
    );
}
