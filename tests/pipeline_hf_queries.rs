//! `synthesis.queries_file = "hf://datasets/OWNER/NAME[/PATH]"`: queries read from a
//! Hugging Face dataset through the hub cache. The cache is faked in a temporary
//! `HF_HOME` with the hub's layout (`hub/datasets--OWNER--NAME/{refs/main, blobs/,
//! snapshots/<commit>/...}` with snapshot files linked to blobs) and every run is a
//! subprocess with `HF_HUB_OFFLINE=1`, so nothing reaches the network and no variable
//! leaks into other tests.

mod common;
mod pipeline_support;

use autoif::pipeline::queries::QueryPair;
use autoif::run::manifest::RunFolder;
use pipeline_support::config;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// Puts `files` (repo path, contents) into the cache as dataset `autoif-test/NAME`.
fn cache_dataset(home: &Path, name: &str, files: &[(&str, String)]) {
    let repo = home.join(format!("hub/datasets--autoif-test--{name}"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    for (i, (path, contents)) in files.iter().enumerate() {
        let blob = repo.join(format!("blobs/{i:040x}"));
        std::fs::write(&blob, contents).unwrap();
        let link = repo.join("snapshots").join(COMMIT).join(path);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
    }
}

const QUERIES: [&str; 3] = [
    "How do I keep basil alive on a north-facing windowsill?",
    "Explain what a hash map is to someone who knows arrays.",
    "Suggest a name for a bakery that only sells rye bread.",
];

/// ShareGPT and `messages` records, plus one query too short for the paper's filter and
/// one duplicate.
fn queries_jsonl() -> String {
    let records = [
        json!({"conversations": [{"from": "human", "value": QUERIES[0]}, {"from": "gpt", "value": "Turn it weekly."}]}),
        json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUERIES[1]}]}),
        json!({"conversations": [{"from": "human", "value": "Hi there"}]}),
        json!({"conversations": [{"from": "human", "value": QUERIES[2]}]}),
        json!({"messages": [{"role": "user", "content": QUERIES[0]}]}),
    ];
    records.iter().map(|r| format!("{r}\n")).collect()
}

fn fake_hub(home: &Path) {
    cache_dataset(
        home,
        "queries",
        &[
            ("README.md", "# queries\n".to_string()),
            ("dataset_infos.json", "{}".to_string()),
            ("data/train.jsonl", queries_jsonl()),
        ],
    );
    cache_dataset(
        home,
        "split",
        &[
            ("data/train.jsonl", queries_jsonl()),
            ("data/test.jsonl", queries_jsonl()),
        ],
    );
}

/// Runs `autoif` offline against the hub cache faked in `home`.
fn autoif_offline(home: &Path, args: &[&str]) -> Output {
    common::autoif_command()
        .args(args)
        .env("HF_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_ENDPOINT")
        .output()
        .unwrap()
}

fn verified_instructions(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("verified.jsonl");
    let record = json!({"id": "i1", "instruction": "Answer in lowercase letters only.",
        "funcs": [{"source": "def evaluate(response):\n    return response == response.lower()", "accuracy": 1.0}],
        "cases": []});
    std::fs::write(&path, format!("{record}\n")).unwrap();
    path
}

/// Runs the queries stage of a fresh run folder `dir/run` on `queries_file`.
fn queries_stage(dir: &Path, home: &Path, queries_file: &str) -> Output {
    let verified = verified_instructions(dir);
    let config = config(&format!(
        r#"
        [synthesis]
        queries_file = "{queries_file}"
        verified_instructions = "{}"
        "#,
        verified.display()
    ));
    let root = dir.join("run");
    RunFolder::create(&root, &config, Value::Null, &["queries"]).unwrap();
    autoif_offline(home, &["stage", "queries", "--run", root.to_str().unwrap()])
}

#[test]
fn the_single_data_file_of_a_cached_dataset() {
    let home = tempfile::tempdir().unwrap();
    fake_hub(home.path());
    for spec in [
        "hf://datasets/autoif-test/queries",
        "hf://datasets/autoif-test/queries/data/train.jsonl",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = queries_stage(dir.path(), home.path(), spec);
        assert!(
            out.status.success(),
            "{spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = RunFolder::open(&dir.path().join("run")).unwrap();
        let pairs: Vec<QueryPair> = run
            .stage_files()
            .read_records("queries", "pairs.jsonl")
            .unwrap();
        let mut got: Vec<&str> = pairs.iter().map(|p| p.query.as_str()).collect();
        got.sort();
        let mut want = QUERIES.to_vec();
        want.sort();
        assert_eq!(got, want, "{spec}");
        assert!(pairs.iter().all(|p| p.instruction_id == "i1"));
        let rejected: Vec<Value> = run
            .stage_files()
            .read_records("queries", "rejected.jsonl")
            .unwrap();
        let reasons: Vec<&str> = rejected
            .iter()
            .map(|r| r["reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons, ["too_short", "duplicate"], "{spec}");
    }
}

/// Each bad dataset spec fails `autoif run` before a run folder exists, with one line
/// naming the dataset and the problem.
#[test]
fn bad_dataset_specs_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    fake_hub(&home);
    let verified = verified_instructions(dir.path());
    let cases = [
        (
            "hf://datasets/autoif-test/absent",
            "error: hf://datasets/autoif-test/absent: not in the Hugging Face cache at",
        ),
        (
            "hf://datasets/autoif-test/queries/data/missing.jsonl",
            "error: hf://datasets/autoif-test/queries: data/missing.jsonl is not in the Hugging Face cache at",
        ),
        (
            "hf://datasets/autoif-test/split",
            "error: hf://datasets/autoif-test/split: 2 data files, name one as hf://datasets/autoif-test/split/PATH: data/test.jsonl, data/train.jsonl",
        ),
        (
            "hf://datasets/autoif-test/queries/data/train.parquet",
            "error: hf://datasets/autoif-test/queries: data/train.parquet: only .json and .jsonl files can be read",
        ),
        (
            "hf://datasets/autoif-test",
            "error: hf://datasets/autoif-test: expected hf://datasets/OWNER/NAME[/PATH/IN/REPO]",
        ),
    ];
    for (i, (spec, want)) in cases.iter().enumerate() {
        let config = dir.path().join(format!("run{i}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
                [phases]
                ifeval_before = false
                sft = false
                dpo = false
                online_dpo = false
                ifeval_after = false
                export = false
                [synthesis]
                queries_file = "{spec}"
                verified_instructions = "{}"
                "#,
                verified.display()
            ),
        )
        .unwrap();
        let out_dir = dir.path().join(format!("run{i}"));
        let out = autoif_offline(
            &home,
            &[
                "run",
                "--config",
                config.to_str().unwrap(),
                "--out",
                out_dir.to_str().unwrap(),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spec}");
        assert_eq!(stderr.lines().count(), 1, "{spec}: {stderr}");
        // The up-front input check names the key the bad value came from.
        let want = want.replacen("error: ", "error: synthesis.queries_file: ", 1);
        assert!(stderr.starts_with(&want), "{spec}: {stderr}");
        assert!(!out_dir.exists(), "{spec}");
    }
}
