//! With `--features cuda`, compiles each `kernels/*.cu` to PTX in `OUT_DIR` (loaded at run
//! time through candle's CUDA backend). Without it, does nothing: the default build needs
//! no CUDA toolkit.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_kernels();
    }
}

/// `CUDA_COMPUTE_CAP` (e.g. 90), or the first GPU's as `nvidia-smi` reports it.
fn compute_cap() -> String {
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") {
        return cap.trim().trim_end_matches('a').to_string();
    }
    let queried = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().replace('.', "")));
    queried.unwrap_or_else(|| {
        panic!("no GPU to ask for its compute capability: set CUDA_COMPUTE_CAP (e.g. 90 for H100)")
    })
}

fn compile_kernels() {
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-changed=kernels");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    let cap = compute_cap();
    // src/model/ops/causal_attention_cuda.rs picks kernels by what this PTX can hold.
    println!("cargo:rustc-env=AUTOIF_CUDA_COMPUTE_CAP={cap}");
    let arch = format!("compute_{cap}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ is readable")
        .map(|e| e.expect("kernels/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
        let ptx = out_dir.join(Path::new(source.file_stem().unwrap()).with_extension("ptx"));
        let status = Command::new(&nvcc)
            .args([
                "--ptx",
                "-O3",
                "-std=c++17",
                "--gpu-architecture",
                &arch,
                "-o",
            ])
            .arg(&ptx)
            .arg(source)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {nvcc} (set NVCC or put nvcc on PATH): {e}"));
        assert!(status.success(), "{nvcc} failed on {}", source.display());
    }
}
