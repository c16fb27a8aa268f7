//! `autoif plan`: the GPU memory (or, with `--device cpu`, the resident memory) a training
//! configuration needs, from the model's config alone, and a refusal (non-zero exit) when
//! it exceeds `--gpu-memory`.

use super::common::parse_bytes;
use super::train::BaseDtypeArg;
use crate::model::config_resolution::resolve_config;
use crate::model::DEFAULT_MODEL;
use crate::train::memory_plan::{self, Algorithm, Attention, LogprobHead, PlanDevice, TrainShape};
use anyhow::{Context, Result};
use candle_core::DType;
use clap::{Args as ClapArgs, ValueEnum};
use std::path::Path;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A local Hugging Face folder (or its config.json), a .gguf file, or a hub id already
    /// in the Hugging Face cache. Only the configuration is read.
    #[arg(long, env = "AUTOIF_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Sequences per micro-batch (sft) or pairs (dpo).
    #[arg(long)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long)]
    pub seq_len: usize,
    #[arg(long, value_enum, default_value = "sft")]
    pub algo: AlgorithmArg,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Projections with LoRA adapters (comma-separated Hugging Face module names).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub lora_targets: Vec<String>,
    /// Weight dtype (default: bf16 on the GPU, f32 on the CPU).
    #[arg(long, value_parser = ["bf16", "f16", "f32"])]
    pub dtype: Option<String>,
    /// Plan the CUDA path (GPU memory) or the CPU path (resident memory of the process).
    #[arg(long, value_enum, default_value = "gpu")]
    pub device: DeviceArg,
    /// Plan with activation checkpointing on or off (default: as training does, on for
    /// the GPU, off on the CPU).
    #[arg(long)]
    pub gradient_checkpointing: Option<bool>,
    /// Plan the frozen projections as loaded or as int8 blocks (`autoif train
    /// --base-dtype`).
    #[arg(long, value_enum, default_value = "model")]
    pub base_dtype: BaseDtypeArg,
    /// Plan for the unfused log-prob head (full `[tokens, vocab]` logits) instead of the
    /// chunked one.
    #[arg(long)]
    pub unfused_logprob: bool,
    /// Plan for attention as the candle composition (`[heads, seq, seq]` scores kept per
    /// layer) instead of the fused `CausalAttention` op the training path uses.
    #[arg(long)]
    pub composed_attention: bool,
    /// Sequences decoded at once when generating (default: --batch).
    #[arg(long)]
    pub gen_batch: Option<usize>,
    /// With --device cpu: pieces of a step the trainer runs at once, one per core. 2 when
    /// a step has two or more pieces (`autoif train`'s defaults: 4 sequences in pieces of
    /// at most 512 tokens) on two or more threads; 1 for a single piece per step or
    /// RAYON_NUM_THREADS=1.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub pieces_at_once: u8,
    /// Refuse (exit 1) when the plan exceeds this much GPU memory, e.g. 80GiB.
    #[arg(long)]
    pub gpu_memory: Option<String>,
}

/// `--device`: which training path to plan.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Gpu,
    Cpu,
}

/// `--algo`: the training algorithms `Algorithm` plans for.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum AlgorithmArg {
    Sft,
    /// Each batch element is a pair: chosen and rejected sequences share the pass.
    Dpo,
}

impl From<AlgorithmArg> for Algorithm {
    fn from(arg: AlgorithmArg) -> Self {
        match arg {
            AlgorithmArg::Sft => Algorithm::Sft,
            AlgorithmArg::Dpo => Algorithm::Dpo,
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let cpu = args.device == DeviceArg::Cpu;
    let dtype = match args.dtype.as_deref() {
        Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        Some(_) => DType::F32,
        None if cpu => DType::F32,
        None => DType::BF16,
    };
    let gpu_bytes = args.gpu_memory.as_deref().map(parse_bytes).transpose()?;
    let shape = TrainShape {
        dtype,
        lora_rank: args.rank,
        lora_targets: args.lora_targets,
        batch: args.batch,
        seq_len: args.seq_len,
        algorithm: args.algo.into(),
        logprob_head: if args.unfused_logprob {
            LogprobHead::Unfused
        } else {
            LogprobHead::Chunked
        },
        attention: if args.composed_attention {
            Attention::Composed
        } else {
            Attention::Fused
        },
        gen_batch: args.gen_batch.unwrap_or(args.batch),
        checkpointing: args.gradient_checkpointing.unwrap_or(!cpu),
        base_dtype: args.base_dtype.into(),
        device: PlanDevice::Gpu,
        mapped_checkpoint_bytes: 0,
        pieces_at_once: args.pieces_at_once.into(),
    };
    let config = resolve_config(&args.model)?;
    let shape = if cpu {
        TrainShape {
            mapped_checkpoint_bytes: safetensors_bytes(Path::new(&args.model))?,
            ..shape.on_cpu()
        }
    } else {
        memory_plan::on_gpu(&config, &shape)
    };
    let plan = memory_plan::plan(&config, &shape)?;
    print!("{}", plan.table());
    if let Some(bytes) = gpu_bytes {
        plan.check_fits(bytes, "--batch or --seq-len")?;
        println!("fits in {}", args.gpu_memory.unwrap_or_default());
    }
    Ok(())
}

/// Bytes of the weight files a local Hugging Face folder holds (`model*.safetensors`),
/// which the CPU loader memory-maps; 0 for a GGUF file or a hub id.
fn safetensors_bytes(model: &Path) -> Result<u64> {
    if !model.is_dir() {
        return Ok(0);
    }
    let mut total = 0;
    for entry in
        std::fs::read_dir(model).with_context(|| format!("{}: cannot list", model.display()))?
    {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("model") && name.ends_with(".safetensors") {
            total += path.metadata()?.len();
        }
    }
    Ok(total)
}
