//! Bad input fails with one clear line naming the file and the problem, a non-zero exit,
//! and no output file.

mod common;

use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Runs `autoif generate` on `model` and returns (exit code, stderr).
fn generate(model: &str, out: &Path) -> (i32, String) {
    let output = common::autoif_command()
        .args([
            "generate",
            "--device",
            "cpu",
            "--model",
            model,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
        ])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_one_line_error(model: &Path, expect: &[&str]) {
    let out = model.parent().unwrap().join("out.jsonl");
    let (code, stderr) = generate(model.to_str().unwrap(), &out);
    assert_ne!(code, 0, "expected failure, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for e in expect {
        assert!(lines[0].contains(e), "{e:?} not in {:?}", lines[0]);
    }
    assert!(
        !out.exists(),
        "an output file was written despite the error"
    );
}

#[test]
fn tiny_model_generates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let model = common::fixture("tiny-llama");
    let (code, stderr) = generate(model.to_str().unwrap(), &out);
    assert_eq!(code, 0, "{stderr}");
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    assert_eq!(line["prompt_index"], 0);
    assert_eq!(line["sample_index"], 0);
    assert!(line["num_tokens"].as_u64().unwrap() <= 2);
}

#[test]
fn missing_model_file() {
    let dir = tempfile::tempdir().unwrap();
    assert_one_line_error(
        &dir.path().join("absent.gguf"),
        &["absent.gguf", "not found"],
    );
}

#[test]
fn truncated_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    copy_dir(&common::fixture("tiny-llama"), &model);
    let weights = model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(
        &model,
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn truncated_gguf() {
    let Some(gguf) = common::smollm2("truncated_gguf") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(gguf).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 4096]).unwrap();
    assert_one_line_error(&cut, &["cut.gguf", "truncated"]);
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    copy_dir(&common::fixture("tiny-llama"), &model);
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("LlamaForCausalLM", "GPTNeoXForCausalLM");
    std::fs::write(&config, text).unwrap();
    assert_one_line_error(
        &model,
        &["config.json", "unsupported architecture GPTNeoXForCausalLM"],
    );
}

#[test]
fn config_with_wrong_hidden_size() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    copy_dir(&common::fixture("tiny-llama"), &model);
    let config = model.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["hidden_size"] = serde_json::json!(128);
    json["head_dim"] = serde_json::json!(32);
    std::fs::write(&config, json.to_string()).unwrap();
    assert_one_line_error(
        &model,
        &["model.safetensors", "has shape", "config implies"],
    );
}

#[test]
fn malformed_prompts_file() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"ok\"}\n{not json\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let output = common::autoif_command()
        .args(["generate", "--device", "cpu", "--model"])
        .arg(common::fixture("tiny-llama"))
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.trim().ends_with("p.jsonl:2: not valid JSON")
            || stderr.contains("p.jsonl:2: not valid JSON"),
        "{stderr}"
    );
    assert!(!out.exists());
}
