//! `autoif run` / `autoif stage` from the outside: a run killed with SIGKILL at several
//! points and resumed ends with exactly the artifacts of an uninterrupted run, and bad
//! input gives one clear error line without leaving a broken run folder.

mod common;
mod pipeline_support;

use autoif::pipeline::Stage;
use autoif::run::manifest::{RunFolder, StageState};
use common::{autoif, python_available, ROOT};
use pipeline_support::{config, SANDBOX_NEEDS_PYTHON};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The one error line of a failed command.
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "the command succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("run.toml");
    std::fs::write(&path, body).unwrap();
    path
}

const TINY: &str = r#"
seed = 11
[model]
device = "cpu"
[supervisor]
batch = 8
[phases]
ifeval_before = false
sft = false
dpo = false
online_dpo = false
ifeval_after = false
export = false
[synthesis]
seeds = "tests/fixtures/pipeline/tiny_seeds.txt"
queries_file = "data/queries.jsonl"
chunk = 1
[synthesis.augment]
rounds = 2
per_round = 3
sampling = { temperature = 0.7, top_p = 0.95, max_new_tokens = 16 }
[synthesis.funcs]
samples = 2
sampling = { temperature = 0.7, top_p = 0.95, max_new_tokens = 16 }
[synthesis.queries]
per_instruction = 2
"#;

#[test]
fn bad_input_gives_one_clear_line_and_no_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out_arg = out.to_str().unwrap();

    let missing = write_config(
        dir.path(),
        &TINY.replace(
            "tests/fixtures/pipeline/tiny_seeds.txt",
            "no/such/seeds.txt",
        ),
    );
    let line = error_line(&autoif(&[
        "run",
        "--config",
        missing.to_str().unwrap(),
        "--out",
        out_arg,
    ]));
    assert!(
        line.contains("no/such/seeds.txt") && line.contains("cannot read"),
        "{line}"
    );
    assert!(!out.exists());

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let cfg = write_config(
        dir.path(),
        &TINY.replace("data/queries.jsonl", empty.to_str().unwrap()),
    );
    let line = error_line(&autoif(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out_arg,
    ]));
    assert!(
        line.contains("empty.jsonl") && line.contains("no queries"),
        "{line}"
    );
    assert!(!out.exists());

    let typo = write_config(dir.path(), &TINY.replace("samples = 2", "sample = 2"));
    let line = error_line(&autoif(&[
        "run",
        "--config",
        typo.to_str().unwrap(),
        "--out",
        out_arg,
    ]));
    assert!(
        line.contains("run.toml") && line.contains("unknown field `sample`"),
        "{line}"
    );
    assert!(!out.exists());

    let bad_set = write_config(dir.path(), TINY);
    let line = error_line(&autoif(&[
        "run",
        "--config",
        bad_set.to_str().unwrap(),
        "--out",
        out_arg,
        "--set",
        "synthesis.crossval.min_funcs=many",
    ]));
    assert!(line.contains("min_funcs"), "{line}");
    assert!(!out.exists());

    // An existing run folder: an unknown stage and a stage whose input is missing.
    RunFolder::create(&out, &config(""), serde_json::Value::Null, &Stage::names()).unwrap();
    let line = error_line(&autoif(&["stage", "sample", "--run", out_arg]));
    assert!(
        line.contains("unknown stage `sample`") && line.contains("augment"),
        "{line}"
    );
    let line = error_line(&autoif(&["stage", "datasets", "--run", out_arg]));
    assert!(
        line.contains("stage decontaminate has not finished"),
        "{line}"
    );
    let manifest = RunFolder::open(&out).unwrap().manifest().unwrap();
    assert!(manifest.stages.iter().all(|s| s.state != StageState::Done));
    let line = error_line(&autoif(&[
        "run",
        "--config",
        bad_set.to_str().unwrap(),
        "--out",
        out_arg,
    ]));
    assert!(line.contains("already holds a run"), "{line}");
}

/// Every artifact of a run folder except the manifest's timings, by relative path.
fn artifacts(root: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            if name == "report.html" {
                // Rendered from summary.json plus the report date.
                continue;
            }
            let text = if name == "summary.json" {
                // Without wall times and with the run folder's own path made neutral.
                let mut summary: serde_json::Value =
                    serde_json::from_str(&text.replace(&*root.to_string_lossy(), "RUN")).unwrap();
                for phase in summary["phases"].as_array_mut().unwrap() {
                    phase["seconds"] = serde_json::Value::Null;
                }
                summary["created_at"] = serde_json::Value::Null;
                summary.to_string()
            } else if name == "manifest.json" {
                let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
                let funnels: Vec<_> = manifest["stages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| (s["name"].clone(), s["state"].clone(), s["funnel"].clone()))
                    .collect();
                format!("{:?} {}", funnels, manifest["config"])
            } else {
                text
            };
            files.insert(name, text);
        }
    }
    files
}

#[test]
fn killed_and_resumed_run_equals_an_uninterrupted_one() {
    if !Path::new(ROOT).join(autoif::model::DEFAULT_MODEL).exists() {
        eprintln!("SKIP: the SmolLM2 model is missing (scripts/fetch-models.sh)");
        return;
    }
    if !python_available(SANDBOX_NEEDS_PYTHON) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), TINY);
    let cfg = cfg.to_str().unwrap();
    let whole = dir.path().join("whole");
    let out = autoif(&["run", "--config", cfg, "--out", whole.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let killed = dir.path().join("killed");
    let k = killed.to_str().unwrap();
    // Mid-augment (after its first part), mid-funcs, and right after funcs finished.
    common::kill_autoif_when(
        &["run", "--config", cfg, "--out", k],
        &killed.join("augment/parts/00000.jsonl"),
    );
    common::kill_autoif_when(
        &["run", "--resume", k],
        &killed.join("funcs/parts/00001.jsonl"),
    );
    common::kill_autoif_when(&["run", "--resume", k], &killed.join("funcs/answers.jsonl"));
    let out = autoif(&["run", "--resume", k]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (a, b) = (artifacts(&whole), artifacts(&killed));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, text) in &a {
        assert_eq!(text, &b[name], "{name} differs");
    }
    assert!(a.contains_key("funcs/rejected.jsonl"));
}

/// Kills the fake server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Strong-to-weak with a remote supervisor: `autoif run` against an OpenAI-compatible
/// stand-in server (tests/fixtures/pipeline/fake_supervisor.py) that writes a no-comma
/// function for every instruction. Back-translation keeps only the instruction that
/// function really checks, and every later stage and data set file gets data.
#[test]
fn remote_supervisor_fills_every_stage() {
    if !python_available(SANDBOX_NEEDS_PYTHON) {
        return;
    }
    use std::io::BufRead;
    let mut child = Command::new("python3")
        .arg(Path::new(ROOT).join("tests/fixtures/pipeline/fake_supervisor.py"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let _server = Server(child);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
            [supervisor]
            kind = "openai"
            model = "big-teacher"
            base_url = "http://127.0.0.1:{}/v1"
            [phases]
            ifeval_before = false
            sft = false
            dpo = false
            online_dpo = false
            ifeval_after = false
            export = false
            [synthesis]
            seeds = "tests/fixtures/pipeline/tiny_seeds.txt"
            queries_file = "data/queries.jsonl"
            [synthesis.augment]
            rounds = 1
            [synthesis.funcs]
            samples = 2
            [synthesis.crossval]
            min_funcs = 1
            min_cases = 3
            [synthesis.queries]
            per_instruction = 2
            [synthesis.responses]
            samples = 4
            "#,
            port.trim()
        ),
    );
    let out = dir.path().join("run");
    let result = autoif(&[
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let run = RunFolder::open(&out).unwrap();
    let manifest = run.manifest().unwrap();
    let row = |stage: &str, unit: &str| {
        manifest
            .stages
            .iter()
            .flat_map(|s| &s.funnel)
            .find(|r| r.stage == stage && r.unit == unit)
            .unwrap()
            .clone()
    };
    // 3 seeds + 2 new instructions, each with one distinct function and 3 cases.
    assert_eq!(row("crossval", "instructions").output, 5);
    let back = row("backtranslate", "instructions");
    assert_eq!((back.input, back.output), (5, 1));
    assert_eq!(back.dropped["inconsistent"], 4);
    let kept: Vec<serde_json::Value> = std::fs::read_to_string(
        run.stage_files()
            .path("backtranslate", "instructions.jsonl"),
    )
    .unwrap()
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    assert_eq!(kept[0]["instruction"], "Answer without using any commas");
    assert_eq!(row("queries", "pairs").output, 2);
    let responses = row("responses", "responses");
    assert_eq!(responses.input, 8);
    assert!(
        responses.output > 0 && responses.output < 8,
        "{responses:?}"
    );
    assert_eq!(row("score", "responses").output, responses.output);
    assert_eq!(row("datasets", "sft_records").output, responses.output);
    assert!(row("datasets", "dpo_pairs").output > 0);
}
