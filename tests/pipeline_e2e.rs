//! Stages 1–9 end to end with the real SmolLM2-135M engine on a tiny budget. The 135M
//! model cannot write `{"func", "cases"}` JSON (its funcs samples all fail to parse),
//! so for the two recorded sample-data instructions the `funcs` stage replays the
//! recorded GPT-4 answers (strong-to-weak supervision for that stage); every other
//! prompt of every generating stage — self-instruct, functions for the new
//! instructions, back-translation, responses, scores — goes to the real engine.

mod common;
mod pipeline_support;

use autoif::generate::{Backend, EngineOptions, LocalEngine};
use autoif::model::{LoadOptions, Model};
use autoif::pipeline::{Pipeline, Stage};
use autoif::run::manifest::{RunFolder, StageState};
use common::{python_available, read_jsonl};
use pipeline_support::*;
use serde_json::Value;
use std::path::Path;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

#[test]
fn all_stages_with_the_real_engine() {
    if !Path::new(MODEL).exists() {
        eprintln!("SKIP: {MODEL} is missing (scripts/fetch-models.sh)");
        return;
    }
    if !python_available(SANDBOX_NEEDS_PYTHON) {
        return;
    }
    let records = read_data("eval_func_rft.jsonl");
    let chosen = [&records[0], &records[4]];
    let dir = tempfile::tempdir().unwrap();
    let seeds = dir.path().join("seeds.txt");
    let instructions: Vec<&str> = chosen
        .iter()
        .map(|r| r["instruction"].as_str().unwrap())
        .collect();
    std::fs::write(&seeds, instructions.join("\n")).unwrap();
    let crate_root = env!("CARGO_MANIFEST_DIR");
    let config = config(&format!(
        r#"
        seed = 3
        [supervisor]
        batch = 8
        [synthesis]
        seeds = "{seeds}"
        queries_file = "{crate_root}/data/queries.jsonl"
        chunk = 4
        [synthesis.augment]
        rounds = 1
        per_round = 3
        sampling = {{ temperature = 0.7, top_p = 0.95, max_new_tokens = 64 }}
        [synthesis.funcs]
        samples = 3
        sampling = {{ temperature = 0.7, top_p = 0.95, max_new_tokens = 64 }}
        [synthesis.crossval]
        min_funcs = 1
        min_cases = 1
        [synthesis.backtranslate]
        embedder = "{crate_root}/models/all-MiniLM-L6-v2"
        rule = "any_agrees"
        min_similarity = 0.0
        sampling = {{ temperature = 0.0, top_p = 1.0, max_new_tokens = 32 }}
        [synthesis.queries]
        per_instruction = 2
        [synthesis.responses]
        samples = 2
        keep_pass_rate_above = -1.0
        sampling = {{ temperature = 0.8, top_p = 0.95, max_new_tokens = 32 }}
        [synthesis.score]
        min_score = -1.0
        sampling = {{ temperature = 0.0, top_p = 1.0, max_new_tokens = 24 }}
        "#,
        seeds = seeds.display()
    ));
    let model = Model::load(MODEL, &LoadOptions::cpu()).unwrap();
    let mut engine = LocalEngine::new(
        &model,
        EngineOptions {
            max_batch: 8,
            progress: false,
            ..EngineOptions::default()
        },
    );
    let mut replay = Replay::new(
        chosen
            .iter()
            .map(|r| {
                let texts = r["gpt-answer"].as_array().unwrap().iter();
                (
                    format!("instruction: {}\n", r["instruction"].as_str().unwrap()),
                    texts.map(|t| t.as_str().unwrap().to_string()).collect(),
                )
            })
            .collect(),
    );
    replay.fallback = Some(&mut engine as &mut dyn Backend);
    let root = dir.path().join("run");
    let run = RunFolder::create(&root, &config, Value::Null, &Stage::names()).unwrap();
    let started = std::time::Instant::now();
    let mut pipeline = Pipeline::new(
        run.stage_files(),
        config.seed,
        config.synthesis,
        Some(&mut replay),
    );
    for stage in Stage::ALL {
        run.run_stage(&mut pipeline, stage).unwrap();
    }
    drop(pipeline);
    eprintln!("stages 1-9 in {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(replay.replayed, 2);
    let run = RunFolder::open(&root).unwrap();
    let manifest = run.manifest().unwrap();
    assert!(manifest.stages.iter().all(|s| s.state == StageState::Done));
    let funnel = |stage: &str, unit: &str| {
        manifest
            .stages
            .iter()
            .flat_map(|s| &s.funnel)
            .find(|r| r.stage == stage && r.unit == unit)
            .unwrap_or_else(|| panic!("no funnel row {stage}/{unit}"))
            .clone()
    };
    for s in &manifest.stages {
        for row in &s.funnel {
            assert_eq!(row.input, row.output + row.dropped_total(), "{row:?}");
            eprintln!("{row:?}");
        }
    }
    // Each stage consumes what the previous one produced.
    let augmented = funnel("augment", "instructions").output + 2;
    assert_eq!(funnel("funcs", "instructions").input, augmented);
    assert_eq!(funnel("funcs", "samples").input, 3 * augmented);
    assert_eq!(
        funnel("crossval", "instructions").input,
        funnel("funcs", "instructions").output
    );
    // Both recorded instructions keep functions (min 1 function, 1 case here).
    let kept = funnel("crossval", "instructions").output;
    assert!(kept >= 2, "{kept}");
    assert_eq!(funnel("backtranslate", "instructions").input, kept);
    let instructions = funnel("backtranslate", "instructions").output;
    assert_eq!(funnel("queries", "pairs").output, 2 * instructions);
    assert_eq!(funnel("responses", "responses").input, 2 * 2 * instructions);
    assert_eq!(
        funnel("score", "responses").input,
        funnel("responses", "responses").output
    );
    assert_eq!(
        funnel("datasets", "sft_records").output,
        funnel("score", "responses").output
    );

    // Real engine text reached the artifacts of every generating stage after funcs.
    let back = read_jsonl(
        &run.stage_files()
            .path("backtranslate", "instructions.jsonl"),
    );
    assert!(back
        .iter()
        .all(|b| !b["back_instructions"].as_array().unwrap().is_empty()));
    let responses = read_jsonl(&run.stage_files().path("responses", "all.jsonl"));
    assert!(responses
        .iter()
        .any(|r| !r["response"].as_str().unwrap().is_empty()));
    let scored = read_jsonl(&run.stage_files().path("score", "all.jsonl"));
    assert!(scored
        .iter()
        .all(|s| !s["judgement"].as_str().unwrap().is_empty()));

    // Data set files in both layouts, consistent with each other.
    let lf = run.stage_files().stage_dir("datasets").join("llamafactory");
    let sft: Value =
        serde_json::from_str(&std::fs::read_to_string(lf.join("autoif_sft.json")).unwrap())
            .unwrap();
    let dpo: Value =
        serde_json::from_str(&std::fs::read_to_string(lf.join("autoif_dpo.json")).unwrap())
            .unwrap();
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(lf.join("dataset_info.json")).unwrap())
            .unwrap();
    assert_eq!(info["autoif_dpo"]["ranking"], true);
    let trl_sft = read_jsonl(&run.stage_files().path("datasets", "trl/sft.jsonl"));
    let trl_dpo = read_jsonl(&run.stage_files().path("datasets", "trl/dpo.jsonl"));
    assert_eq!(sft.as_array().unwrap().len(), trl_sft.len());
    assert_eq!(dpo.as_array().unwrap().len(), trl_dpo.len());
    assert_eq!(trl_dpo.len(), funnel("datasets", "dpo_pairs").output);
    for (a, t) in sft.as_array().unwrap().iter().zip(&trl_sft) {
        assert_eq!(a["instruction"], t["messages"][0]["content"]);
        assert_eq!(a["output"], t["messages"][1]["content"]);
    }
}
