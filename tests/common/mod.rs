//! Helpers shared by the integration tests: fixtures, the `autoif` binary, Python's
//! presence, JSON Lines and tensor comparisons.
// Each test file uses only some of these.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The crate root, where `autoif` runs: configs name their files relative to it.
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A file or folder under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(ROOT).join("tests/fixtures").join(name)
}

/// The embedded SmolLM2 GGUF, or None (with a visible SKIP line) when
/// `scripts/fetch-models.sh` has not been run.
pub fn smollm2(test: &str) -> Option<PathBuf> {
    let path = Path::new(ROOT).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
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

/// Whether `python3` runs. When it does not, prints the SKIP line `SKIP: python3 is not
/// installed`, followed by ` (why)` when a reason is given, and the caller returns.
pub fn python_available(why: Option<&str>) -> bool {
    let found = Command::new("python3")
        .args(["-c", "pass"])
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        match why {
            Some(why) => eprintln!("SKIP: python3 is not installed ({why})"),
            None => eprintln!("SKIP: python3 is not installed"),
        }
    }
    found
}

/// The `autoif` binary cargo built for these tests, set to start in the crate root.
pub fn autoif_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_autoif"));
    command.current_dir(ROOT);
    command
}

/// Runs `autoif` with `args` in the crate root and returns its exit status and output.
pub fn autoif(args: &[&str]) -> Output {
    autoif_command().args(args).output().expect("autoif runs")
}

/// Every line of a JSON Lines file, parsed; panics naming the file and line.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Starts `autoif` with `args` in the crate root, waits until `marker` exists, and kills
/// it with SIGKILL (an interruption at that point, for resume tests).
pub fn kill_autoif_when(args: &[&str], marker: &Path) {
    let mut child = autoif_command()
        .args(args)
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

/// Deterministic pseudo-random values in [−scale, scale) (xorshift), the same on every
/// machine.
pub fn random_values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
