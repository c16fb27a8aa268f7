//! `autoif plan` reads only a model's configuration, prints the plan, and refuses a
//! configuration over `--gpu-memory` with one line and exit code 1; it plans for the fused
//! attention (where the model's head size has a kernel) unless told `--composed-attention`. `autoif train` and `autoif run` make the
//! same check with `--gpu-memory` before anything is loaded or written.

mod common;

use common::{autoif, autoif_command};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

const MODEL: &str = "tests/fixtures/tiny-qwen2";
/// Qwen2-7B's config.json alone: head size 128, which the attention kernels support
/// (the tiny model's is not).
const QWEN2_7B: &str = "tests/fixtures/qwen2-7b-config";

fn plan_model(model: &str, extra: &[&str]) -> Output {
    autoif_command()
        .args(["plan", "--model", model, "--batch", "2", "--seq-len", "256"])
        .args(extra)
        .output()
        .unwrap()
}

fn plan(extra: &[&str]) -> Output {
    plan_model(MODEL, extra)
}

#[test]
fn prints_the_plan_and_accepts_what_fits() {
    let out = plan(&["--algo", "dpo", "--gpu-memory", "80GiB"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for item in [
        "weights",
        "LoRA + AdamW state",
        "activations (kept)",
        "KV cache",
        "total (peak)",
    ] {
        assert!(stdout.contains(item), "no {item} in\n{stdout}");
    }
    assert!(stdout.contains("fits in 80GiB"), "{stdout}");
    // The tiny model's head size has no attention kernel: planned as composed, as it runs.
    assert!(stdout.contains("composed attention"), "{stdout}");
}

#[test]
fn an_int8_base_plans_less_and_shows_its_one_dense_projection_while_loading() {
    let int8 = plan_model(QWEN2_7B, &["--base-dtype", "int8"]);
    let stdout = String::from_utf8_lossy(&int8.stdout);
    assert!(int8.status.success(), "{stdout}");
    assert!(stdout.contains("as int8 blocks"), "{stdout}");
    // The loader quantizes each projection as it reads it: one is dense at a time.
    assert!(stdout.contains("dense projection (loading)"), "{stdout}");
    assert!(stdout.contains("(one at a time)"), "{stdout}");
    let total = |text: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with("total (peak)"))
            .unwrap();
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let dense = plan_model(QWEN2_7B, &[]);
    assert!(total(&stdout) < total(&String::from_utf8_lossy(&dense.stdout)));
}

#[test]
fn composed_attention_plans_more_than_fused() {
    let total = |out: &Output| -> f64 {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("total (peak)"))
            .unwrap_or_else(|| panic!("no total in\n{stdout}"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let fused = plan_model(QWEN2_7B, &[]);
    let composed = plan_model(QWEN2_7B, &["--composed-attention"]);
    assert!(String::from_utf8_lossy(&fused.stdout).contains("fused attention"));
    assert!(String::from_utf8_lossy(&composed.stdout).contains("composed attention"));
    assert!(total(&composed) > total(&fused));
}

#[test]
fn refuses_what_does_not_fit_in_one_line() {
    let out = plan(&["--gpu-memory", "1MiB"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: this configuration needs about"),
        "{stderr}"
    );
    assert!(stderr.contains("0.00 GiB is available"), "{stderr}");
}

#[test]
fn bad_sizes_and_missing_models_are_one_line_errors() {
    let out = plan(&["--gpu-memory", "lots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`lots` is not a memory size"));
    let out = autoif(&[
        "plan",
        "--model",
        "nowhere/none",
        "--batch",
        "1",
        "--seq-len",
        "8",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nowhere/none"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// A model folder with tiny-llama's config.json and nothing else: loading it fails ("no
/// tokenizer.json"), so a refusal naming the plan proves the check ran before loading.
fn config_only_model(dir: &Path) -> String {
    let model = dir.join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(
        "tests/fixtures/tiny-llama/config.json",
        model.join("config.json"),
    )
    .unwrap();
    model.to_string_lossy().into_owned()
}

/// Runs `autoif` with error logs only and says how long it took.
fn autoif_timed(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = autoif_command()
        .args(args)
        .env("AUTOIF_LOG", "error")
        .output()
        .unwrap();
    (out, started.elapsed())
}

fn assert_refused(out: &Output, took: Duration, model: &str, knobs: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: {model}: this configuration needs about")),
        "{stderr}"
    );
    assert!(stderr.contains("1.00 GiB is available"), "{stderr}");
    assert!(stderr.contains("(largest item: "), "{stderr}");
    assert!(stderr.trim_end().ends_with(knobs), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn train_refuses_before_loading_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let model = config_only_model(dir.path());
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"hi\", \"funcs\": [\"def evaluate(r):\\n    return True\"]}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    for (algo, input, file) in [
        ("sft", "--data", "tests/fixtures/train/sft.jsonl"),
        ("dpo", "--data", "tests/fixtures/train/dpo.jsonl"),
        ("online-dpo", "--prompts", prompts.to_str().unwrap()),
    ] {
        let args = ["train", algo, "--model", &model, "--device", "cpu"];
        // 1 GiB is less than the plan's fixed overhead alone.
        let (refused, took) = autoif_timed(
            &[
                &args[..],
                &[input, file, "--out", out, "--gpu-memory", "1GiB"],
            ]
            .concat(),
        );
        assert_refused(
            &refused,
            took,
            &model,
            "lower --max-batch-tokens, --batch-size or --max-len",
        );
        assert!(!Path::new(out).exists(), "{algo} wrote {out}");
        // A generous budget goes on to load the model, which this folder cannot give.
        let (passed, _) = autoif_timed(
            &[
                &args[..],
                &[input, file, "--out", out, "--gpu-memory", "80GiB"],
            ]
            .concat(),
        );
        let stderr = String::from_utf8_lossy(&passed.stderr);
        assert!(stderr.contains("no tokenizer.json"), "{algo}: {stderr}");
    }
}

#[test]
fn run_refuses_before_writing_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let model = config_only_model(dir.path());
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = {model:?}\ndevice = \"cpu\"\n\n[phases]\nifeval_before = false\nsynthesis = false\nifeval_after = false\nexport = false\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    let (refused, took) = autoif_timed(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--gpu-memory",
        "1GiB",
    ]);
    assert_refused(
        &refused,
        took,
        &model,
        "lower max_batch_tokens, batch_size or max_len of the training sections",
    );
    assert!(!out.exists(), "wrote {}", out.display());
}
