//! A hub id whose snapshot is already in the Hugging Face cache loads with no network
//! (HF_HUB_OFFLINE=1), with the cache found through HF_HOME; one that is not cached fails
//! with a line saying where it looked.

mod common;

/// Lays `tests/fixtures/tiny-qwen2` out as the hub cache does:
/// `$HF_HOME/hub/models--owner--name/{refs/main, snapshots/<commit>/...}`.
fn fake_cache(home: &std::path::Path) {
    let repo = home.join("hub/models--autoif-test--tiny-qwen2");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for entry in std::fs::read_dir(common::fixture("tiny-qwen2")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
}

fn generate(home: &std::path::Path, model: &str) -> std::process::Output {
    common::autoif_command()
        .args([
            "generate",
            "--device",
            "cpu",
            "--model",
            model,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "3",
        ])
        .env("HF_HOME", home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap()
}

#[test]
fn cached_hub_model_loads_offline() {
    let home = tempfile::tempdir().unwrap();
    fake_cache(home.path());
    let out = generate(home.path(), "autoif-test/tiny-qwen2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["prompt_index"], 0);
}

#[test]
fn uncached_hub_model_offline_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let out = generate(home.path(), "autoif-test/absent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("autoif-test/absent: not (completely) in the Hugging Face cache"),
        "{stderr}"
    );
    assert!(stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
}
