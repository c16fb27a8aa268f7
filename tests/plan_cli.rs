//! `autoif plan` reads only a model's configuration, prints the plan, and refuses a
//! configuration over `--gpu-memory` with one line and exit code 1; it plans for the fused
//! attention unless told `--composed-attention`.

use std::process::{Command, Output};

const MODEL: &str = "tests/fixtures/tiny-qwen2";

fn plan(extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autoif"))
        .args(["plan", "--model", MODEL, "--batch", "2", "--seq-len", "256"])
        .args(extra)
        .output()
        .unwrap()
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
    assert!(stdout.contains("fused attention"), "{stdout}");
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
    let fused = plan(&[]);
    let composed = plan(&["--composed-attention"]);
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
    assert!(stderr.contains("0.0 GiB is available"), "{stderr}");
}

#[test]
fn bad_sizes_and_missing_models_are_one_line_errors() {
    let out = plan(&["--gpu-memory", "lots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`lots` is not a memory size"));
    let out = Command::new(env!("CARGO_BIN_EXE_autoif"))
        .args([
            "plan",
            "--model",
            "nowhere/none",
            "--batch",
            "1",
            "--seq-len",
            "8",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nowhere/none"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
