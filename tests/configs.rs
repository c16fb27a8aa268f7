//! Every shipped run configuration parses, the quick start runs the phases it says, and
//! the GPU configurations plan within one 80 GB card; the standard run measures what
//! its README claim needs.

use autoif::config::RunConfig;
use autoif::model::config::ModelConfig;
use autoif::run::{training_shapes, Phase};
use autoif::train::memory_plan::{on_gpu, plan};
use candle_core::DType;
use std::path::Path;

#[test]
fn every_shipped_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            RunConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
            parsed += 1;
        }
    }
    assert!(parsed >= 5, "only {parsed} configs");
}

#[test]
fn quickstart_runs_the_whole_loop_from_verified_instructions() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quickstart.toml");
    let config = RunConfig::load(&path, &[]).unwrap();
    let names: Vec<&str> = Phase::plan(&config).iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "ifeval_before",
            "queries",
            "responses",
            "score",
            "decontaminate",
            "datasets",
            "sft",
            "dpo",
            "online_dpo",
            "ifeval_after",
            "export"
        ]
    );
    // A partial training section keeps its algorithm's own defaults.
    let dpo_defaults = autoif::train::DpoConfig::default();
    assert_eq!(config.dpo.args.schedule, dpo_defaults.args.schedule);
    assert_eq!(config.dpo.beta, dpo_defaults.beta);
    assert_eq!(config.dpo.args.max_steps, 6);
}

/// The evidence run: every IFEval prompt with answers up to 512 tokens, composed
/// instructions, only fully followed responses trained on, a held-out DPO split, β 0.3.
#[test]
fn standard_measures_all_of_ifeval_and_holds_dpo_pairs_out() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/standard.toml");
    let config = RunConfig::load(&path, &[]).unwrap();
    assert_eq!(config.ifeval.limit, 0);
    assert_eq!(config.ifeval.max_new_tokens, 512);
    assert!(config.synthesis.queries.compose.count > 0);
    assert!(config.synthesis.responses.keep_pass_rate_above > 0.9);
    assert_eq!(config.synthesis.datasets.chosen_min_pass_rate, 1.0);
    assert!(config.dpo.held_out > 0.0);
    assert_eq!(config.dpo.beta, 0.3);
    assert_eq!(config.online_dpo.dpo.beta, 0.3);
    let names: Vec<&str> = Phase::plan(&config).iter().map(|p| p.name()).collect();
    assert!(names.starts_with(&["ifeval_before"]) && names.contains(&"ifeval_after"));
}

#[test]
fn a_typo_in_a_training_section_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, "[sft.args]\nepoch = 2\n").unwrap();
    let err = format!("{:#}", RunConfig::load(&path, &[]).unwrap_err());
    assert!(err.contains("run.toml") && err.contains("epoch"), "{err}");
}

/// The configs for one 80 GB GPU plan every training phase within 80 GiB (`autoif run`
/// refuses them otherwise), by the models' config.json files in tests/fixtures.
#[test]
fn gpu_configs_plan_within_80_gib() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let qwen2_7b = fixtures.join("qwen2-7b-config/config.json");
    let llama3_8b = fixtures.join("llama3-8b-config/config.json");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for (file, model) in [
        ("qwen2-7b.toml", &qwen2_7b),
        ("strong-to-weak.toml", &qwen2_7b),
        ("llama3-8b.toml", &llama3_8b),
    ] {
        let model = ModelConfig::from_hf_file(model).unwrap();
        let config = RunConfig::load(&root.join(file), &[]).unwrap();
        let shapes = training_shapes(&config, &Phase::plan(&config), DType::BF16);
        assert!(!shapes.is_empty(), "{file}: no training phase");
        for shape in shapes {
            let planned = plan(&model, &on_gpu(&model, &shape)).unwrap();
            let gib = planned.total as f64 / (1u64 << 30) as f64;
            assert!(
                gib <= 80.0,
                "{file}: {:?} plans {gib:.1} GiB\n{}",
                shape.algorithm,
                planned.table()
            );
        }
    }
}

/// `[ifeval] kv_cache` is f16 unless a file says f32, and a value it does not know is an
/// error that names the key.
#[test]
fn ifeval_kv_cache_is_f16_unless_set() {
    use autoif::model::kv_cache::HostPrecision;
    let parse = |text: &str| RunConfig::from_table(toml::from_str(text).unwrap());
    assert_eq!(RunConfig::default().ifeval.kv_cache, HostPrecision::F16);
    let config = parse("[ifeval]\nkv_cache = \"f32\"").unwrap();
    assert_eq!(config.ifeval.kv_cache, HostPrecision::F32);
    let err = format!("{:#}", parse("[ifeval]\nkv_cache = \"f8\"").unwrap_err());
    assert!(err.contains("kv_cache") && err.contains("f8"), "{err}");
}
