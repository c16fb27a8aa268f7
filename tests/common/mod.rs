//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The embedded SmolLM2 GGUF, or None (with a visible SKIP line) when
/// `scripts/fetch-models.sh` has not been run.
pub fn smollm2(test: &str) -> Option<PathBuf> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIP {test}: {} missing; run scripts/fetch-models.sh",
            path.display()
        );
        None
    }
}

pub fn load_reference(model: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(model).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

pub fn ids(t: &Tensor) -> Vec<u32> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Starts `autoif` with `args` in the crate root, waits until `marker` exists, and kills
/// it with SIGKILL (an interruption at that point, for resume tests).
pub fn kill_autoif_when(args: &[&str], marker: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_autoif"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !marker.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "autoif ended ({status}) before {} appeared",
                marker.display()
            );
        }
        assert!(started.elapsed() < Duration::from_secs(600), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
