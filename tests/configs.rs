//! Every shipped run configuration parses, and the quick start runs the phases it says.

use autoif::config::RunConfig;
use autoif::run::Phase;
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

#[test]
fn a_typo_in_a_training_section_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, "[sft.args]\nepoch = 2\n").unwrap();
    let err = format!("{:#}", RunConfig::load(&path, &[]).unwrap_err());
    assert!(err.contains("run.toml") && err.contains("epoch"), "{err}");
}
