//! `autoif train sft|dpo|online-dpo` end to end: bad data fails with one line naming the
//! file and record; SFT then DPO on its adapter (merged, so DPO starts at loss ln 2: the reference
//! is the SFT model); DPO's peak resident memory stays within 1.2× of SFT's on the same
//! sequences (no second model). (`--gpu-memory` refusals: tests/plan_cli.rs.)

mod common;

use serde_json::{json, Value};
use std::path::Path;

/// Runs `autoif` with error logs only: whether it succeeded, and its stderr.
fn autoif_quiet(args: &[&str]) -> (bool, String) {
    let out = common::autoif_command()
        .args(args)
        .env("AUTOIF_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tiny() -> String {
    common::fixture("tiny-llama").to_string_lossy().into_owned()
}

fn metrics(dir: &Path) -> Vec<Value> {
    common::read_jsonl(&dir.join("metrics.jsonl"))
}

#[test]
fn bad_records_fail_with_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\": \"hi\", \"output\": \"yo\"}\n{\"text\": \"no layout\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let (ok, stderr) = autoif_quiet(&[
        "train",
        "sft",
        "--model",
        &tiny(),
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("bad.jsonl: record 2: cannot tell the SFT format"),
        "{stderr}"
    );
    assert!(!out.join("adapter_model.safetensors").exists());

    let (ok, stderr) = autoif_quiet(&[
        "train",
        "dpo",
        "--model",
        &tiny(),
        "--device",
        "cpu",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("bad.jsonl: record 1: a preference record needs `chosen` and `rejected`"),
        "{stderr}"
    );

    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"hi\", \"funcs\": [\"def evaluate(r):\\n    return True\"]}\n{\"prompt\": \"no functions\"}\n",
    )
    .unwrap();
    let (ok, stderr) = autoif_quiet(&[
        "train",
        "online-dpo",
        "--model",
        &tiny(),
        "--device",
        "cpu",
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("prompts.jsonl: record 2: needs a `funcs` list"),
        "{stderr}"
    );
    assert!(!out.join("iterations.jsonl").exists());
}

#[test]
fn sft_then_dpo_on_the_merged_sft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let sft_out = dir.path().join("sft");
    let dpo_out = dir.path().join("dpo");
    let (ok, stderr) = autoif_quiet(&[
        "train",
        "sft",
        "--model",
        &tiny(),
        "--device",
        "cpu",
        "--data",
        common::fixture("train/sft.jsonl").to_str().unwrap(),
        "--out",
        sft_out.to_str().unwrap(),
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "1e-2",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--save-every",
        "1",
        // The memory check passes a job that fits and changes nothing else.
        "--gpu-memory",
        "80GiB",
    ]);
    assert!(ok, "{stderr}");
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.jsonl",
        "checkpoint-1/trainer_state.json",
        "checkpoint-1/optimizer.safetensors",
    ] {
        assert!(sft_out.join(file).is_file(), "{file} missing");
    }
    assert_eq!(metrics(&sft_out).len(), 4);

    let (ok, stderr) = autoif_quiet(&[
        "train",
        "dpo",
        "--model",
        &tiny(),
        "--device",
        "cpu",
        "--adapter",
        sft_out.to_str().unwrap(),
        "--data",
        common::fixture("train/dpo.jsonl").to_str().unwrap(),
        "--out",
        dpo_out.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--beta",
        "0.3",
    ]);
    assert!(ok, "{stderr}");
    let m = metrics(&dpo_out);
    assert_eq!(m.len(), 1);
    // A fresh adapter (B = 0) on the merged SFT weights is exactly the reference.
    assert!(
        (m[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-5,
        "{}",
        m[0]
    );
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "kl",
        "tokens_per_s",
    ] {
        assert!(m[0].get(key).is_some(), "{key} missing from {}", m[0]);
    }
}

fn peak_rss_mib(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("peak resident memory"))
        .unwrap_or_else(|| panic!("no peak memory line in {stderr}"));
    let kib: f64 = line
        .split("VmHWM ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// SFT on the 2·B sequences of B preference pairs against DPO on the pairs: the same
/// activations, so any extra is the reference pass (and a second model would double the
/// weights). On SmolLM2 when fetched, else on the tiny model.
#[test]
fn dpo_peak_memory_is_within_1_2x_of_sft() {
    let model = common::smollm2("dpo_peak_memory_is_within_1_2x_of_sft")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(tiny);
    let dir = tempfile::tempdir().unwrap();
    let prompts = [
        (
            "Describe the sea in one sentence.",
            "The sea is a vast body of salty water that covers most of the planet.",
            "Sea.",
        ),
        (
            "List three fruits.",
            "Apples, pears and plums.",
            "I like to eat many kinds of fruit, for example apples and also pears.",
        ),
    ];
    let mut sft = String::new();
    let mut dpo = String::new();
    for (q, c, r) in prompts {
        for reply in [c, r] {
            sft.push_str(&json!({"instruction": q, "output": reply}).to_string());
            sft.push('\n');
        }
        dpo.push_str(&json!({"prompt": q, "chosen": c, "rejected": r}).to_string());
        dpo.push('\n');
    }
    std::fs::write(dir.path().join("sft.jsonl"), sft).unwrap();
    std::fs::write(dir.path().join("dpo.jsonl"), dpo).unwrap();
    let run = |algo: &str, batch: &str| {
        let data = dir.path().join(format!("{algo}.jsonl"));
        let out = dir.path().join(algo);
        let (ok, stderr) = autoif_quiet(&[
            "train",
            algo,
            "--model",
            &model,
            "--device",
            "cpu",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch-size",
            batch,
        ]);
        assert!(ok, "{stderr}");
        peak_rss_mib(&stderr)
    };
    let sft_mib = run("sft", "4");
    let dpo_mib = run("dpo", "2");
    eprintln!(
        "peak RSS on {model}: SFT {sft_mib:.0} MiB, DPO {dpo_mib:.0} MiB ({:.3}×)",
        dpo_mib / sft_mib
    );
    assert!(
        dpo_mib <= 1.2 * sft_mib,
        "DPO {dpo_mib:.0} MiB vs SFT {sft_mib:.0} MiB"
    );
}

/// `--base-dtype int8` trains on int8 blocks (the first step's loss moves, by the base's
/// quantization only, within the SmolLM2 test's tolerance of 3% + 0.002) and records the
/// setting with the run.
#[test]
fn sft_on_an_int8_base_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let first_loss = |base_dtype: &str| -> f64 {
        let out = dir.path().join(base_dtype);
        let (ok, stderr) = autoif_quiet(&[
            "train",
            "sft",
            "--model",
            &tiny(),
            "--device",
            "cpu",
            "--data",
            common::fixture("train/sft.jsonl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "1",
            "--batch-size",
            "2",
            "--base-dtype",
            base_dtype,
        ]);
        assert!(ok, "{stderr}");
        let recorded: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("training_config.json")).unwrap(),
        )
        .unwrap();
        let text = recorded.to_string();
        assert_eq!(
            text.contains("\"base_dtype\":\"int8\""),
            base_dtype == "int8",
            "{text}"
        );
        assert!(out.join("adapter_model.safetensors").is_file());
        metrics(&out)[0]["loss"].as_f64().unwrap()
    };
    let (dense, int8) = (first_loss("model"), first_loss("int8"));
    eprintln!("first-step loss: f32 base {dense}, int8 base {int8}");
    assert!(dense != int8, "the int8 base changed nothing");
    assert!(
        (dense - int8).abs() <= 0.03 * dense + 0.002,
        "{dense} vs {int8}"
    );
}
