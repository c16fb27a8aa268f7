//! Options and helpers several subcommands share.

use crate::io::to_jsonl;
use crate::model::device_memory::cuda_total_memory;
use crate::model::{LoadOptions, Model, DEFAULT_MODEL};
use crate::train::memory_plan::{self, TrainShape};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Refuses an `--out` file path that is a folder, before any work (the rename at the
/// end would fail after all of it).
pub fn check_output_file(out: &Path) -> Result<()> {
    if out.is_dir() {
        bail!("{}: is a folder; --out needs a file path", out.display());
    }
    Ok(())
}

/// Refuses an `--out` folder path that is an existing file, before any work.
pub fn check_output_folder(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("{}: is a file; --out needs a folder path", out.display());
    }
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A hub id (Qwen/Qwen2-0.5B-Instruct), a local Hugging Face folder, or a .gguf file.
    #[arg(long, env = "AUTOIF_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Where to run: auto picks the GPU when built with --features cuda and one is present.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    pub device: String,
    /// A LoRA adapter folder (PEFT layout) to apply to the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl ModelArgs {
    pub fn load_options(&self) -> Result<LoadOptions> {
        LoadOptions::for_device(&self.device)
    }

    pub fn load(&self) -> Result<Model> {
        self.load_with(&self.load_options()?)
    }

    /// Loads onto options already resolved (a device created once).
    pub fn load_with(&self, options: &LoadOptions) -> Result<Model> {
        let started = std::time::Instant::now();
        let mut model = Model::load(&self.model, options)?;
        if let Some(dir) = &self.adapter {
            crate::model::adapter_file::load_adapter(&mut model.decoder, dir)?;
        }
        tracing::info!(
            "loaded {} ({:?}, {} layers) in {:.1}s",
            self.model,
            model.config.architecture,
            model.config.num_hidden_layers,
            started.elapsed().as_secs_f64()
        );
        Ok(model)
    }
}

/// The GPU memory check of the training commands, run before anything is loaded.
#[derive(Args, Debug, Clone)]
pub struct GpuMemoryArgs {
    /// Plan the job's largest step (`autoif plan`'s estimate) and refuse (exit 1) before
    /// loading when it exceeds this much GPU memory, e.g. 80GiB. On a CUDA device the
    /// default is the device's total memory; on the CPU nothing is checked without it.
    #[arg(long, value_name = "SIZE")]
    pub gpu_memory: Option<String>,
}

impl GpuMemoryArgs {
    /// Refuses `shapes` of `model` on `device` when the largest does not fit the budget;
    /// `knobs` names the settings that shrink it.
    pub fn ensure_fits(
        &self,
        model: &str,
        device: &Device,
        shapes: &[TrainShape],
        knobs: &str,
    ) -> Result<()> {
        match self.budget(device)? {
            Some(bytes) => memory_plan::ensure_fits(model, shapes, bytes, knobs),
            None => Ok(()),
        }
    }

    /// The memory to plan against: `--gpu-memory`, else a CUDA device's total memory;
    /// none on the CPU without `--gpu-memory` (nothing is checked).
    fn budget(&self, device: &Device) -> Result<Option<u64>> {
        match &self.gpu_memory {
            Some(text) => parse_bytes(text).map(Some),
            None if device.is_cuda() => cuda_total_memory(device).map(Some),
            None => Ok(None),
        }
    }
}

/// Parses `80GiB`, `80GB`, `81559MiB`, `1.5TiB` or a plain byte count.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a memory size (like 80GiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => bail!("`{text}`: unknown unit `{other}` (use GiB, GB, MiB, …)"),
    };
    Ok((value * scale as f64) as u64)
}

/// Reads a JSON Lines file of input lines; an empty file is refused.
pub fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let lines = crate::io::read_jsonl(path)?;
    if lines.is_empty() {
        bail!("{}: no input lines", path.display());
    }
    Ok(lines)
}

/// Writes JSON lines to `path` atomically; without a path, to stdout.
pub fn write_jsonl(path: Option<&Path>, lines: &[serde_json::Value]) -> Result<()> {
    match path {
        None => std::io::stdout().write_all(&to_jsonl(lines)?)?,
        Some(path) => crate::io::write_jsonl(path, lines)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_bytes("80GiB").unwrap(), 80 << 30);
        assert_eq!(parse_bytes("81559MiB").unwrap(), 81559 << 20);
        assert_eq!(parse_bytes("80GB").unwrap(), 80_000_000_000);
        assert_eq!(parse_bytes("1.5 GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("80 parsecs").is_err());
    }
}
