//! `autoif run` end to end on the embedded SmolLM2 with a tiny budget: IFEval before,
//! the synthesis stages from verified instructions, SFT, DPO, online DPO, IFEval after and
//! export write `summary.json` (with the paired McNemar change and the per-type split by
//! the instructions' `ifeval_types`) and `report.html`; the exported merged model loads and
//! generates with `autoif generate`; and a run killed after its SFT phase and resumed
//! ends with the same evaluation and the same merged weights as an uninterrupted run.
//! A few minutes on two cores; skipped when the GGUF is missing.

mod common;

use common::{autoif, ROOT};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn check(out: &Output) {
    assert!(
        out.status.success(),
        "autoif failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A whole-loop config on three quick-start instructions that SmolLM2's short answers
/// both pass and fail (commas, exclamation marks, lowercase), so the training phases get
/// data (the first three, all about capital letters, left SFT without an example once
/// sampling ran on int8 weights).
fn write_config(dir: &Path) -> PathBuf {
    let source = Path::new(ROOT).join("data/quickstart/verified_instructions.jsonl");
    let three: Vec<String> = std::fs::read_to_string(source)
        .unwrap()
        .lines()
        .filter(|l| {
            ["\"qs012\"", "\"qs013\"", "\"qs001\""]
                .iter()
                .any(|id| l.contains(id))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(three.len(), 3);
    let instructions = dir.join("instructions.jsonl");
    std::fs::write(&instructions, three.concat()).unwrap();
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            r#"
seed = 5
[model]
device = "cpu"
[supervisor]
batch = 16
[synthesis]
verified_instructions = "{}"
chunk = 4
[synthesis.queries]
per_instruction = 2
[synthesis.responses]
samples = 6
sampling = {{ temperature = 0.8, top_p = 0.95, max_new_tokens = 24 }}
[synthesis.score]
enabled = false
[ifeval]
limit = 3
max_new_tokens = 24
[sft.args]
epochs = 1
[dpo.args]
epochs = 1
[online_dpo]
iterations = 1
samples = 3
max_new_tokens = 24
"#,
            instructions.display()
        ),
    )
    .unwrap();
    config
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn whole_loop_writes_summary_report_and_a_loadable_model_and_resumes() {
    if common::smollm2("whole_loop").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let config = config.to_str().unwrap();
    let whole = dir.path().join("whole");
    check(&autoif(&[
        "run",
        "--config",
        config,
        "--out",
        whole.to_str().unwrap(),
    ]));

    let summary = read_json(&whole.join("summary.json"));
    for key in ["ifeval_before", "ifeval_after"] {
        let ifeval = &summary[key];
        assert_eq!(ifeval["prompts"], 3, "{key}: {ifeval}");
        for metric in [
            "prompt_level_strict_acc",
            "prompt_level_loose_acc",
            "inst_level_strict_acc",
            "inst_level_loose_acc",
        ] {
            let v = ifeval[metric].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key}.{metric} = {v}");
        }
    }
    // The paired prompt-level change, counted here from the two phases' verdict files.
    let change = &summary["ifeval_change"];
    assert_eq!(change["prompts"], 3, "{change}");
    for mode in ["strict", "loose"] {
        let follows = |phase: &str| -> Vec<bool> {
            common::read_jsonl(&whole.join(format!("{phase}/eval_results_{mode}.jsonl")))
                .iter()
                .map(|l| l["follow_all_instructions"].as_bool().unwrap())
                .collect()
        };
        let (before, after) = (follows("ifeval_before"), follows("ifeval_after"));
        let gained = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| !**b && **a)
            .count();
        let lost = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b && !**a)
            .count();
        assert_eq!(change[mode]["gained"], gained, "{mode}: {change}");
        assert_eq!(change[mode]["lost"], lost, "{mode}: {change}");
        let p = change[mode]["p_value"].as_f64().unwrap();
        assert_eq!(p, autoif::eval::ifeval::mcnemar_exact_p(gained, lost));
    }
    // The per-type split: the three instructions name no_comma and english_lowercase; of
    // the first three IFEval prompts' five instructions, two are no_comma.
    let coverage = &summary["ifeval_coverage"];
    assert_eq!(
        coverage["training_types"],
        serde_json::json!(["change_case:english_lowercase", "punctuation:no_comma"]),
        "{coverage}"
    );
    assert_eq!(
        coverage["covered"]["types"],
        serde_json::json!(["punctuation:no_comma"])
    );
    for (group, count) in [("covered", 2), ("not_covered", 3)] {
        for side in ["before", "after"] {
            assert_eq!(coverage[group][side]["count"], count, "{group} {side}");
        }
    }
    let phases: Vec<(&str, &str)> = summary["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["state"].as_str().unwrap()))
        .collect();
    for (name, state) in &phases {
        let skipped = ["augment", "funcs", "crossval", "backtranslate"].contains(name);
        assert_eq!(*state, if skipped { "skipped" } else { "done" }, "{name}");
    }
    let funnel_stages: Vec<&str> = summary["funnel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["stage"].as_str().unwrap())
        .collect();
    for stage in [
        "queries",
        "responses",
        "datasets",
        "sft",
        "dpo",
        "online_dpo",
    ] {
        assert!(funnel_stages.contains(&stage), "{stage} not in the funnel");
    }
    for phase in ["sft", "dpo"] {
        let last = &summary["training"][phase];
        assert!(
            last["loss"].as_f64().unwrap().is_finite(),
            "{phase}: {last}"
        );
    }
    assert_eq!(summary["training"]["online_dpo"]["iteration"], 1);
    assert!(summary["examples"].as_array().unwrap().len() == 3);
    let report = std::fs::read_to_string(whole.join("report.html")).unwrap();
    assert!(report.contains("<svg"));
    assert!(report.contains("Prompt level, paired over 3 prompts"));
    assert!(report.contains("<strong>covered by training instructions</strong> (1 type)"));

    // The exported merged model loads and generates.
    let merged = summary["exports"]["merged"].as_str().unwrap().to_string();
    let out = autoif(&[
        "generate",
        "--model",
        &merged,
        "--prompt",
        "Say hello.",
        "--max-new-tokens",
        "8",
    ]);
    check(&out);
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(line["num_tokens"].as_u64().unwrap() > 0, "{line}");

    // Killed once SFT is done, then resumed: same evaluation, same merged weights.
    let killed = dir.path().join("killed");
    let k = killed.to_str().unwrap();
    common::kill_autoif_when(
        &["run", "--config", config, "--out", k],
        &killed.join("sft/adapter_model.safetensors"),
    );
    check(&autoif(&["run", "--resume", k]));
    for file in [
        "ifeval_after/responses.jsonl",
        "online_dpo/iter-1/samples.jsonl",
        "export/merged/model.safetensors",
    ] {
        let a = std::fs::read(whole.join(file)).unwrap();
        let b = std::fs::read(killed.join(file)).unwrap();
        assert!(a == b, "{file} differs after resume");
    }

    // A finished run resumed runs nothing and rewrites its summary: one written before a
    // field existed (here: with `ifeval_change` removed) gains it.
    let summary_path = whole.join("summary.json");
    let mut old = read_json(&summary_path);
    old.as_object_mut().unwrap().remove("ifeval_change");
    std::fs::write(&summary_path, old.to_string()).unwrap();
    let manifest = std::fs::read(whole.join("manifest.json")).unwrap();
    check(&autoif(&["run", "--resume", whole.to_str().unwrap()]));
    assert!(summary["ifeval_change"].is_object());
    assert_eq!(
        read_json(&summary_path)["ifeval_change"],
        summary["ifeval_change"]
    );
    assert!(std::fs::read(whole.join("manifest.json")).unwrap() == manifest);
}
