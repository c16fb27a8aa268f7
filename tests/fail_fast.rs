//! Issue 19: every bad input is refused before work starts, with one line per problem
//! naming the key or the file, exit 1, and nothing written; counts in model files are
//! bounded (no abort); a signal leaves no temporary output behind.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// (exit code, the non-empty stderr lines) of `output`.
fn result(output: &Output) -> (i32, Vec<String>) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    (output.status.code().unwrap_or(-1), lines)
}

fn run_autoif(args: &[&str]) -> (i32, Vec<String>) {
    let output = common::autoif_command()
        .args(args)
        .env("AUTOIF_LOG", "error")
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    result(&output)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Files in `dir` (hidden temporaries included).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn run_with_zero_batch_size_exits_1_at_once_writing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir.path().join("run.toml"), "[sft.args]\nbatch_size = 0\n");
    let out = dir.path().join("run");
    let started = Instant::now();
    let (code, lines) = run_autoif(&["run", "--config", s(&config), "--out", s(&out)]);
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [format!(
            "error: {}: sft.args.batch_size = 0: must be at least 1",
            config.display()
        )]
    );
    assert!(seconds < 1.0, "took {seconds:.2}s");
    assert!(!out.exists(), "the run folder was created");
}

#[test]
fn run_lists_every_bad_value_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir.path().join("run.toml"),
        "[sft.args]\nlr = -1.0\nmax_len = 0\n[sft.args.lora]\nr = 0\n\
         [online_dpo]\ntemperature = -0.5\ntop_p = 1.5\n[dpo]\nbeta = 0.0\n",
    );
    let out = dir.path().join("run");
    let (code, lines) = run_autoif(&[
        "run",
        "--config",
        s(&config),
        "--out",
        s(&out),
        "--set",
        "synthesis.responses.sampling.top_p=0",
    ]);
    assert_eq!(code, 1);
    let c = config.display();
    assert_eq!(
        lines,
        [
            "error: --set synthesis.responses.sampling.top_p = 0: must be in (0, 1]".to_string(),
            format!("error: {c}: sft.args.lr = -1: must be a finite number above 0"),
            format!("error: {c}: sft.args.max_len = 0: must be at least 2"),
            format!("error: {c}: sft.args.lora.r = 0: must be at least 1"),
            format!("error: {c}: dpo.beta = 0: must be a finite number above 0"),
            format!(
                "error: {c}: online_dpo.temperature = -0.5: must be a finite number at or above 0"
            ),
            format!("error: {c}: online_dpo.top_p = 1.5: must be in (0, 1]"),
        ]
    );
    assert!(!out.exists());
}

#[test]
fn a_bad_set_value_names_the_override() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir.path().join("run.toml"), "seed = 1\n");
    let out = dir.path().join("run");
    let (code, lines) = run_autoif(&[
        "run",
        "--config",
        s(&config),
        "--out",
        s(&out),
        "--set",
        "sft.args.lr=abc",
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        ["error: --set sft.args.lr=abc: invalid type: string \"abc\", expected f64 in `sft.args.lr`"]
    );
    assert!(!out.exists());
}

#[test]
fn run_with_a_missing_model_and_data_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(&dir.path().join("run.toml"), "seed = 1\n");
    let out = dir.path().join("run");
    let model = dir.path().join("absent.gguf");
    let seeds = dir.path().join("absent-seeds.txt");
    let (code, lines) = run_autoif(&[
        "run",
        "--config",
        s(&config),
        "--out",
        s(&out),
        "--set",
        &format!("model.path={}", model.display()),
        "--set",
        &format!("synthesis.seeds={}", seeds.display()),
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [
            format!("error: model.path: {}: model file not found", model.display()),
            format!(
                "error: synthesis.seeds: {}: cannot read the seed instructions: No such file or directory (os error 2)",
                seeds.display()
            ),
        ]
    );
    assert!(!out.exists());
}

/// A run folder holding only a manifest for `config`, as `autoif run` writes it.
fn run_folder(root: &Path, config: &autoif::config::RunConfig) -> Vec<u8> {
    let phases = autoif::run::Phase::plan(config);
    let names: Vec<&str> = phases.iter().map(|p| p.name()).collect();
    autoif::run::manifest::RunFolder::create(root, config, serde_json::json!({}), &names).unwrap();
    std::fs::read(root.join("manifest.json")).unwrap()
}

#[test]
fn resume_checks_the_manifest_config_and_the_model_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = autoif::config::RunConfig::default();
    config.sft.args.batch_size = 0;
    let root = dir.path().join("run");
    let manifest = run_folder(&root, &config);
    let (code, lines) = run_autoif(&["run", "--resume", s(&root)]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [format!(
            "error: {}: sft.args.batch_size = 0: must be at least 1",
            root.join("manifest.json").display()
        )]
    );
    assert_eq!(entries(&root), ["manifest.json"]);
    assert_eq!(std::fs::read(root.join("manifest.json")).unwrap(), manifest);

    let mut config = autoif::config::RunConfig::default();
    let model = dir.path().join("gone.gguf");
    config.model.path = model.display().to_string();
    let root = dir.path().join("run2");
    let manifest = run_folder(&root, &config);
    let (code, lines) = run_autoif(&["run", "--resume", s(&root)]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [format!(
            "error: model.path: {}: model file not found",
            model.display()
        )]
    );
    assert_eq!(entries(&root), ["manifest.json"]);
    assert_eq!(std::fs::read(root.join("manifest.json")).unwrap(), manifest);
}

/// The tiny Llama fixture with `edit` applied to its config.json.
fn tiny_with_config(dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(common::fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    model
}

fn generate(model: &Path, out: &Path) -> (i32, Vec<String>) {
    run_autoif(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        s(model),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
        "--out",
        s(out),
    ])
}

#[test]
fn oversized_layer_count_in_config_json_is_one_line_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_with_config(dir.path(), |c| {
        c["num_hidden_layers"] = 1_000_000_000u64.into()
    });
    let out = dir.path().join("out.jsonl");
    let (code, lines) = generate(&model, &out);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        lines,
        [format!(
            "error: {}: num_hidden_layers = 1000000000 is out of range (at most 1024)",
            model.join("config.json").display()
        )]
    );
    assert!(!out.exists());

    // Within the bounds but more than the weights file holds.
    let model = tiny_with_config(dir.path(), |c| c["num_hidden_layers"] = 1000.into());
    let (code, lines) = generate(&model, &out);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        lines,
        [format!(
            "error: {}: config declares 1000 layers of hidden size 64 (30740480 parameters), more than 537336 bytes of weights can hold",
            model.display()
        )]
    );
    assert!(!out.exists());

    // `autoif run` finds it before writing anything.
    let config = write(&dir.path().join("run.toml"), "seed = 1\n");
    let run = dir.path().join("run");
    let (code, lines) = run_autoif(&[
        "run",
        "--config",
        s(&config),
        "--out",
        s(&run),
        "--set",
        &format!("model.path={}", model.display()),
    ]);
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "error: model.path: {}: config declares 1000 layers",
            model.display()
        )),
        "{lines:?}"
    );
    assert!(!run.exists());
}

/// A GGUF v3 file with metadata only (no tensor).
fn write_gguf(path: &Path, metadata: &[(&str, GgufValue)]) {
    let mut bytes = Vec::new();
    bytes.extend(b"GGUF");
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend((metadata.len() as u64).to_le_bytes());
    let string = |bytes: &mut Vec<u8>, s: &str| {
        bytes.extend((s.len() as u64).to_le_bytes());
        bytes.extend(s.as_bytes());
    };
    for (key, value) in metadata {
        string(&mut bytes, key);
        match value {
            GgufValue::U32(v) => {
                bytes.extend(4u32.to_le_bytes());
                bytes.extend(v.to_le_bytes());
            }
            GgufValue::F32(v) => {
                bytes.extend(6u32.to_le_bytes());
                bytes.extend(v.to_le_bytes());
            }
            GgufValue::Str(v) => {
                bytes.extend(8u32.to_le_bytes());
                string(&mut bytes, v);
            }
        }
    }
    std::fs::write(path, bytes).unwrap();
}

enum GgufValue {
    U32(u32),
    F32(f32),
    Str(&'static str),
}

fn llama_gguf(path: &Path, block_count: u32) {
    use GgufValue::*;
    write_gguf(
        path,
        &[
            ("general.architecture", Str("llama")),
            ("llama.embedding_length", U32(64)),
            ("llama.attention.head_count", U32(4)),
            ("llama.feed_forward_length", U32(96)),
            ("llama.block_count", U32(block_count)),
            ("llama.attention.layer_norm_rms_epsilon", F32(1e-5)),
            ("llama.vocab_size", U32(320)),
        ],
    );
}

#[test]
fn oversized_gguf_block_count_is_one_line_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let model = dir.path().join("huge.gguf");
    llama_gguf(&model, u32::MAX);
    let (code, lines) = generate(&model, &out);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        lines,
        [format!(
            "error: {}: num_hidden_layers = 4294967295 is out of range (at most 1024)",
            model.display()
        )]
    );
    llama_gguf(&model, 1000);
    let (code, lines) = generate(&model, &out);
    assert_eq!(code, 1, "{lines:?}");
    let size = std::fs::metadata(&model).unwrap().len();
    assert_eq!(
        lines,
        [format!(
            "error: {}: config declares 1000 layers of hidden size 64 (34836480 parameters), more than {size} bytes of weights can hold",
            model.display()
        )]
    );
    assert!(!out.exists());

    // Counts and lengths of the file's own structure: a tensor count and a key length
    // far past the file's end are refused by the reader before it allocates.
    for (offset, what) in [(8, "tensor count"), (24, "first key's length")] {
        llama_gguf(&model, 30);
        let mut bytes = std::fs::read(&model).unwrap();
        bytes[offset..offset + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        std::fs::write(&model, bytes).unwrap();
        let (code, lines) = generate(&model, &out);
        assert_eq!(code, 1, "{what}: {lines:?}");
        assert_eq!(lines.len(), 1, "{what}: {lines:?}");
        let prefix = format!("error: {}: not a valid GGUF file (gguf: ", model.display());
        assert!(lines[0].starts_with(&prefix), "{what}: {lines:?}");
    }
}

fn tiny() -> String {
    common::fixture("tiny-llama").display().to_string()
}

#[test]
fn train_refuses_bad_flags_and_an_out_file_before_reading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    let (code, lines) = run_autoif(&[
        "train",
        "sft",
        "--device",
        "cpu",
        "--model",
        &tiny(),
        "--data",
        "absent.jsonl",
        "--out",
        s(&out),
        "--batch-size",
        "0",
        "--lr=-1",
        "--lora-r",
        "0",
        "--lora-targets",
        "q_proj,qq_proj",
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [
            "error: --lr = -1: must be a finite number above 0",
            "error: --batch-size = 0: must be at least 1",
            "error: --lora-r = 0: must be at least 1",
            "error: --lora-targets = \"qq_proj\": not a projection (expected one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
        ]
    );
    assert!(!out.exists());

    let (code, lines) = run_autoif(&[
        "train",
        "dpo",
        "--device",
        "cpu",
        "--model",
        &tiny(),
        "--data",
        "absent.jsonl",
        "--out",
        s(&out),
        "--beta",
        "0",
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        ["error: --beta = 0: must be a finite number above 0"]
    );

    let file = write(&dir.path().join("a-file"), "");
    let (code, lines) = run_autoif(&[
        "train",
        "sft",
        "--model",
        &tiny(),
        "--data",
        "absent.jsonl",
        "--out",
        s(&file),
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [format!(
            "error: {}: is a file; --out needs a folder path",
            file.display()
        )]
    );
}

/// SFT whose first step fails: the tokenizer has an added token (id 400) past the
/// model's 320 embeddings, and the data uses it, so the first forward pass errs.
#[test]
fn sft_failing_in_its_first_step_leaves_no_metrics_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_with_config(dir.path(), |_| {});
    let path = model.join("tokenizer.json");
    let mut tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tokenizer["added_tokens"].as_array_mut().unwrap().push(
        serde_json::json!({"id": 400, "content": "<|oops|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": false}),
    );
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    let data = write(
        &dir.path().join("sft.jsonl"),
        "{\"instruction\": \"a <|oops|> b\", \"output\": \"c <|oops|> d\"}\n",
    );
    let out = dir.path().join("adapter");
    let (code, lines) = run_autoif(&[
        "train",
        "sft",
        "--device",
        "cpu",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--epochs",
        "1",
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        ["error: index-select invalid index 320 with dim size 320"]
    );
    assert!(!out.join("metrics.jsonl").exists());
    assert!(!out.exists(), "an empty output folder was left");
}

#[test]
fn non_utf8_data_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sft.jsonl");
    std::fs::write(
        &data,
        b"{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"\xff\"}\n",
    )
    .unwrap();
    let out = dir.path().join("adapter");
    let (code, lines) = run_autoif(&[
        "train",
        "sft",
        "--device",
        "cpu",
        "--model",
        &tiny(),
        "--data",
        s(&data),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [format!(
            "error: {}:2: not valid UTF-8 (byte 13 of the line)",
            data.display()
        )]
    );
    assert!(!out.exists());
}

#[test]
fn lone_surrogate_escapes_are_read_as_python_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = write(
        &dir.path().join("prompts.jsonl"),
        "{\"prompt\": \"say \\ud800 hi\"}\n",
    );
    let out = dir.path().join("out.jsonl");
    let (code, lines) = run_autoif(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        &tiny(),
        "--prompts",
        s(&prompts),
        "--max-new-tokens",
        "2",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(common::read_jsonl(&out).len(), 1);
}

/// The tokenizer fixture's longest vocabulary entry, in bytes.
fn max_token_bytes(tokenizer: &Path) -> usize {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer).unwrap()).unwrap();
    let vocab = json["model"]["vocab"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::len);
    let added = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["content"].as_str().unwrap().len());
    vocab.chain(added).max().unwrap()
}

#[test]
fn a_10_mb_prompt_is_refused_before_it_is_tokenized() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = write(&dir.path().join("prompts.txt"), &"word ".repeat(2_000_000));
    let out = dir.path().join("out.jsonl");
    let started = Instant::now();
    let (code, lines) = run_autoif(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        &tiny(),
        "--prompts",
        s(&prompts),
        "--out",
        s(&out),
    ]);
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(code, 1);
    let at_least =
        10_000_000 / (2 * max_token_bytes(&common::fixture("tiny-llama/tokenizer.json")));
    assert_eq!(
        lines,
        [format!(
            "error: request 0: prompt of 10000000 bytes is at least {at_least} tokens, more than the model's 256 positions"
        )]
    );
    // Tokenizing it whole took seconds (3.3 s for 10 MB in the issue).
    assert!(seconds < 3.0, "took {seconds:.2}s");
    assert!(!out.exists());
}

#[test]
fn verify_refuses_a_folder_as_out_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        &dir.path().join("in.jsonl"),
        "{\"id\": \"a\", \"func\": \"def evaluate(r): return True\", \"inputs\": [\"x\"]}\n",
    );
    let (code, lines) = run_autoif(&["verify", "--input", s(&input), "--out", s(dir.path())]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [format!(
            "error: {}: is a folder; --out needs a file path",
            dir.path().display()
        )]
    );
    assert_eq!(entries(dir.path()), ["in.jsonl"]);
}

#[test]
fn verify_reports_non_utf8_input_by_line_and_leaves_no_output() {
    if !common::python_available(None) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        b"{\"id\": \"a\", \"func\": \"def evaluate(r): return True\", \"inputs\": [\"x\"]}\n{\"id\": \"\xc3\x28\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let (code, lines) = run_autoif(&[
        "verify",
        "--allow-weaker-sandbox",
        "--workers",
        "1",
        "--input",
        s(&input),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(
        lines.last().unwrap(),
        &format!(
            "error: {}:2: not valid UTF-8 (byte 9 of the line)",
            input.display()
        )
    );
    assert_eq!(entries(dir.path()), ["in.jsonl"]);
}

/// Starts `autoif verify` on enough slow work to take minutes, waits until its hidden
/// output exists, sends `signal`, and returns its exit code and the folder's files.
fn interrupt_verify(signal: libc::c_int) -> (Option<i32>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    // About 20 ms of work per call: 4000 calls on one worker take over a minute.
    let func = "def evaluate(r):\n    n = 0\n    for i in range(400000):\n        n += i\n    return n > 0";
    for i in 0..4000 {
        let line =
            serde_json::json!({"id": i.to_string(), "func": func, "inputs": [i.to_string()]});
        writeln!(file, "{line}").unwrap();
    }
    drop(file);
    let out = dir.path().join("out.jsonl");
    let mut child = common::autoif_command()
        .args([
            "verify",
            "--allow-weaker-sandbox",
            "--no-cache",
            "--workers",
            "1",
            "--input",
            s(&input),
            "--out",
            s(&out),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = dir.path().join(".out.jsonl.partial");
    let started = Instant::now();
    while !partial.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "verify ended before writing"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // Safety: a signal to the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let status = child.wait().unwrap();
    (status.code(), entries(dir.path()))
}

#[test]
fn sigterm_and_sigint_on_verify_leave_no_temporary_output() {
    if !common::python_available(None) {
        return;
    }
    assert_eq!(
        interrupt_verify(libc::SIGTERM),
        (Some(143), vec!["in.jsonl".to_string()])
    );
    assert_eq!(
        interrupt_verify(libc::SIGINT),
        (Some(130), vec!["in.jsonl".to_string()])
    );
}
