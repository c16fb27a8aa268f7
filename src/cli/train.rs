//! `autoif train sft|dpo|online-dpo`: LoRA training in this process, on a data file or
//! (online DPO) on prompts with verification functions.

use super::common::{check_output_folder, GpuMemoryArgs, ModelArgs};
use crate::model::lora::LoraConfig;
use crate::model::{LoadOptions, Model};
use crate::train::data::DataFormat;
use crate::train::memory_plan::{Algorithm, TrainShape};
use crate::train::online_dpo::read_verified_prompts;
use crate::train::optim::ScheduleKind;
use crate::train::{
    train_dpo, train_online_dpo, train_sft, BaseDtype, DataCounts, DpoConfig, DpoLossType,
    JobOutcome, OnlineDpoConfig, OnlineOptions, PreferenceData, SftConfig, SftData, TrainingArgs,
    TrainingOptions,
};
use crate::validation::Problems;
use anyhow::{bail, Result};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: TrainCommand,
}

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Supervised fine-tuning of a LoRA adapter on response tokens.
    Sft(SftArgs),
    /// Offline DPO of a LoRA adapter on chosen/rejected pairs; the reference is the model
    /// (with --adapter merged in) with adapters off.
    Dpo(DpoArgs),
    /// Iterative online DPO: sample from the live weights, grade the samples with their
    /// verification functions in the sandbox, train on chosen/rejected pairs.
    OnlineDpo(OnlineDpoArgs),
}

/// A data file, the model and where the run goes (SFT and offline DPO).
#[derive(ClapArgs, Debug)]
pub struct CommonArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training data: JSON Lines or a JSON array of records.
    #[arg(long)]
    pub data: PathBuf,
    /// Record layout (auto: detected per record from its keys).
    #[arg(long, value_enum, default_value = "auto")]
    pub format: DataFormatArg,
    /// Output folder: metrics.jsonl, checkpoint-N/, the final adapter (PEFT layout).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from a checkpoint-N folder of a run with the same data and settings.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub flags: TrainingFlags,
    #[command(flatten)]
    pub memory: GpuMemoryArgs,
}

/// `--format`: the record layouts `DataFormat` reads.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum DataFormatArg {
    /// Detect from the first record's keys.
    Auto,
    /// LLaMA-Factory alpaca: `instruction`, `input`, `output` (or `chosen`/`rejected`),
    /// optional `system`.
    Alpaca,
    /// LLaMA-Factory sharegpt: `conversations` of `{from, value}` (preference: plus
    /// `chosen`/`rejected` turns), optional `system`.
    Sharegpt,
    /// `messages` of `{role, content}` (TRL / OpenAI style).
    Messages,
    /// TRL preference: `prompt`, `chosen`, `rejected` as strings or message lists (or
    /// `chosen`/`rejected` whole conversations sharing an implicit prompt).
    Trl,
}

impl From<DataFormatArg> for DataFormat {
    fn from(arg: DataFormatArg) -> Self {
        match arg {
            DataFormatArg::Auto => DataFormat::Auto,
            DataFormatArg::Alpaca => DataFormat::Alpaca,
            DataFormatArg::Sharegpt => DataFormat::Sharegpt,
            DataFormatArg::Messages => DataFormat::Messages,
            DataFormatArg::Trl => DataFormat::Trl,
        }
    }
}

/// `--schedule`: the learning-rate decays of `ScheduleKind`.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ScheduleArg {
    Constant,
    Linear,
    Cosine,
}

impl From<ScheduleArg> for ScheduleKind {
    fn from(arg: ScheduleArg) -> Self {
        match arg {
            ScheduleArg::Constant => ScheduleKind::Constant,
            ScheduleArg::Linear => ScheduleKind::Linear,
            ScheduleArg::Cosine => ScheduleKind::Cosine,
        }
    }
}

/// `--loss-type`: the DPO losses of `DpoLossType`.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LossTypeArg {
    /// −log σ(β·h), smoothed: (1−ε)·(−log σ(β·h)) + ε·(−log σ(−β·h)).
    Sigmoid,
    /// (h − 1/(2β))² on per-token average log-probabilities.
    Ipo,
}

impl From<LossTypeArg> for DpoLossType {
    fn from(arg: LossTypeArg) -> Self {
        match arg {
            LossTypeArg::Sigmoid => DpoLossType::Sigmoid,
            LossTypeArg::Ipo => DpoLossType::Ipo,
        }
    }
}

/// `--base-dtype`: the storages of `BaseDtype`.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum BaseDtypeArg {
    /// As the model is loaded (--dtype).
    Model,
    /// Int8 blocks with one f32 scale per 32 inputs; the dense copy is dropped.
    Int8,
}

impl From<BaseDtypeArg> for BaseDtype {
    fn from(arg: BaseDtypeArg) -> Self {
        match arg {
            BaseDtypeArg::Model => BaseDtype::Model,
            BaseDtypeArg::Int8 => BaseDtype::Int8,
        }
    }
}

/// Hyper-parameters every algorithm takes; unset ones use the algorithm's defaults.
#[derive(ClapArgs, Debug)]
pub struct TrainingFlags {
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps (0: run every epoch).
    #[arg(long, default_value_t = 0)]
    pub max_steps: usize,
    /// Peak learning rate (SFT 2e-4, DPO 5e-5).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Decay after warm-up (SFT linear, DPO cosine).
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// Sequences (SFT) or pairs (DPO) per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Sequences are cut to this many tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,
    /// Pack examples into rows of up to --max-len tokens and take --batch-size rows per
    /// micro-batch (each example still attends only to itself).
    #[arg(long)]
    pub packing: bool,
    /// Run micro-batches in pieces of at most this many padded tokens (same update, bounded
    /// activation memory; 0: no limit).
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Activation checkpointing: keep each layer's input and recompute the layer in the
    /// backward pass (same gradients, less memory, more time). Default: on for CUDA, off
    /// on the CPU.
    #[arg(long)]
    pub gradient_checkpointing: Option<bool>,
    /// How the frozen base projections are stored while training: as loaded, or int8
    /// blocks, each quantized as it is read (QLoRA-style, about a quarter of the f32 weight
    /// memory; CPU f32 only).
    #[arg(long, value_enum, default_value = "model")]
    pub base_dtype: BaseDtypeArg,
    /// Clip the global gradient norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 16)]
    pub lora_r: usize,
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f64,
    /// Dropout on each adapter's input while training (PEFT's lora_dropout), in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Projections to adapt (comma-separated Hugging Face module names).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub lora_targets: Vec<String>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write a checkpoint every N optimizer steps (0: only the final adapter).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
}

impl TrainingFlags {
    fn training_args(&self, defaults: TrainingArgs) -> TrainingArgs {
        let mut adamw = defaults.adamw;
        adamw.weight_decay = self.weight_decay;
        TrainingArgs {
            epochs: self.epochs.unwrap_or(defaults.epochs),
            max_steps: self.max_steps,
            lr: self.lr.unwrap_or(defaults.lr),
            schedule: self.schedule.map_or(defaults.schedule, ScheduleKind::from),
            warmup_ratio: self.warmup_ratio,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_len: self.max_len,
            packing: self.packing,
            max_batch_tokens: self.max_batch_tokens,
            gradient_checkpointing: self.gradient_checkpointing,
            base_dtype: self.base_dtype.into(),
            max_grad_norm: self.max_grad_norm,
            adamw,
            seed: self.seed,
            save_every: self.save_every,
            lora: LoraConfig {
                r: self.lora_r,
                lora_alpha: self.lora_alpha,
                lora_dropout: self.lora_dropout,
                target_modules: self.lora_targets.clone(),
            },
        }
    }
}

/// What shrinks a training job's largest piece, for the memory refusal.
const TRAIN_KNOBS: &str = "--max-batch-tokens, --batch-size or --max-len";

/// The model with `--adapter` (if any) applied: training folds it into the weights and
/// adds a new adapter on top, so for DPO the reference (adapters off) is the SFT model.
/// With `--base-dtype int8` each projection is quantized as it is read (an adapter then
/// folds into the int8 blocks, as in `autoif run`'s DPO after its SFT phase). Before any
/// weight is read, the job's largest piece is planned and refused when it will not fit
/// the GPU memory (`--gpu-memory`, or the CUDA device's).
fn load_for_training(
    model: &ModelArgs,
    memory: &GpuMemoryArgs,
    args: &TrainingArgs,
    algorithm: Algorithm,
    gen_batch: usize,
) -> Result<Model> {
    let options = LoadOptions {
        projections: args.base_dtype.projection_storage(),
        ..model.load_options()?
    };
    args.check_base_dtype(&options.device, options.dtype, "--base-dtype")?;
    let shape = TrainShape::largest_piece(args, algorithm, options.dtype, gen_batch);
    memory.ensure_fits(&model.model, &options.device, &[shape], TRAIN_KNOBS)?;
    model.load_with(&options)
}

impl CommonArgs {
    fn training_options(&self) -> TrainingOptions {
        TrainingOptions {
            resume: self.resume.clone(),
            ..TrainingOptions::new(&self.out, &self.model.model)
        }
    }
}

#[derive(ClapArgs, Debug)]
pub struct SftArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(ClapArgs, Debug)]
pub struct DpoArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub dpo: DpoFlags,
    /// Share of prompts whose pairs are kept out of training and scored after it: reward
    /// accuracy on pairs the policy never saw, in held_out.json.
    #[arg(long, default_value_t = 0.0)]
    pub held_out: f64,
}

/// The DPO loss settings (offline and online).
#[derive(ClapArgs, Debug)]
pub struct DpoFlags {
    /// Strength of the KL constraint (paper: 0.3).
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    #[arg(long, value_enum, default_value = "sigmoid")]
    pub loss_type: LossTypeArg,
    /// Probability that a preference label is flipped (conservative DPO); sigmoid only.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Score every pair under the reference once before training (cached in the output
    /// folder) instead of a reference forward pass in every step.
    #[arg(long)]
    pub precompute_ref_log_probs: bool,
}

impl DpoFlags {
    fn config(&self, flags: &TrainingFlags, defaults: DpoConfig) -> DpoConfig {
        DpoConfig {
            args: flags.training_args(defaults.args),
            beta: self.beta,
            loss_type: self.loss_type.into(),
            label_smoothing: self.label_smoothing,
            precompute_ref_log_probs: self.precompute_ref_log_probs,
            held_out: defaults.held_out,
        }
    }
}

/// Refuses a training config's bad values, one line each, named by their flags; and an
/// `--out` that is a file. Before the data is read or the model loaded.
fn check_settings(problems: Problems, out: &Path) -> Result<()> {
    if !problems.is_empty() {
        bail!(problems.lines(flag_of_key));
    }
    check_output_folder(out)
}

/// The flag that sets a config key (`args.lora.r` → `--lora-r`).
fn flag_of_key(key: &str) -> String {
    let key = ["dpo.args.", "dpo.", "args."]
        .iter()
        .find_map(|prefix| key.strip_prefix(prefix))
        .unwrap_or(key);
    let flag = match key {
        "lora.r" => "lora-r".to_string(),
        "lora.lora_alpha" => "lora-alpha".to_string(),
        "lora.lora_dropout" => "lora-dropout".to_string(),
        "lora.target_modules" => "lora-targets".to_string(),
        "adamw.weight_decay" => "weight-decay".to_string(),
        "batch" => "generation-batch".to_string(),
        other => other.replace(['_', '.'], "-"),
    };
    format!("--{flag}")
}

#[derive(ClapArgs, Debug)]
pub struct OnlineDpoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompts with their verification functions: JSON Lines of {"prompt", "funcs"}, or a
    /// run's queries/pairs.jsonl.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output folder: iterations.jsonl and iter-N/ (samples, pairs, adapter, metrics).
    /// Rerunning into the same folder continues after the last finished iteration.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub iterations: usize,
    /// Responses sampled per prompt.
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Prompts drawn per iteration (0: all).
    #[arg(long, default_value_t = 0)]
    pub prompts_per_iteration: usize,
    /// Sequences decoded together while sampling.
    #[arg(long, default_value_t = 16)]
    pub generation_batch: usize,
    /// Sandbox deadline of one verification call.
    #[arg(long, default_value_t = 5000)]
    pub exec_timeout_ms: u64,
    #[command(flatten)]
    pub flags: TrainingFlags,
    #[command(flatten)]
    pub dpo: DpoFlags,
    #[command(flatten)]
    pub memory: GpuMemoryArgs,
}

pub fn run(args: Args) -> Result<()> {
    let out = match &args.command {
        TrainCommand::Sft(a) => a.common.out.clone(),
        TrainCommand::Dpo(a) => a.common.out.clone(),
        TrainCommand::OnlineDpo(a) => a.out.clone(),
    };
    let fresh = !out.exists();
    let result = match args.command {
        TrainCommand::Sft(a) => run_sft(a),
        TrainCommand::Dpo(a) => run_dpo(a),
        TrainCommand::OnlineDpo(a) => run_online(a),
    };
    if result.is_err() && fresh {
        // A run that failed before writing anything leaves no empty folder (one that
        // holds checkpoints or a reference cache is kept: remove_dir refuses it).
        let _ = std::fs::remove_dir(&out);
    }
    result
}

/// Refuses data that tokenizing emptied and reports what it dropped, before training.
fn report_dropped(path: &Path, counts: DataCounts, max_len: usize) -> Result<()> {
    if counts.kept == 0 {
        bail!(
            "{}: no record has a response token within --max-len {max_len}",
            path.display()
        );
    }
    if counts.dropped > 0 {
        eprintln!(
            "{}: skipped {} records with no response token within --max-len {max_len}",
            path.display(),
            counts.dropped
        );
    }
    reset_peak_rss();
    Ok(())
}

fn run_sft(args: SftArgs) -> Result<()> {
    let c = &args.common;
    let config = SftConfig {
        args: c.flags.training_args(SftConfig::default().args),
    };
    check_settings(config.problems(), &c.out)?;
    let data = SftData::read(&c.data, c.format.into())?;
    let mut model = load_for_training(&c.model, &c.memory, &config.args, Algorithm::Sft, 0)?;
    let outcome = train_sft(
        &mut model,
        &data,
        &config,
        &c.training_options(),
        |counts| report_dropped(&c.data, counts, config.args.max_len),
    )?;
    print_summary(&outcome, &c.out);
    Ok(())
}

fn run_dpo(args: DpoArgs) -> Result<()> {
    let c = &args.common;
    let config = DpoConfig {
        held_out: args.held_out,
        ..args.dpo.config(&c.flags, DpoConfig::default())
    };
    check_settings(config.problems(), &c.out)?;
    let data = PreferenceData::read(&c.data, c.format.into())?;
    let mut model = load_for_training(&c.model, &c.memory, &config.args, Algorithm::Dpo, 0)?;
    let outcome = train_dpo(
        &mut model,
        &data,
        &config,
        &c.training_options(),
        |counts| report_dropped(&c.data, counts, config.args.max_len),
    )?;
    print_summary(&outcome, &c.out);
    Ok(())
}

fn run_online(args: OnlineDpoArgs) -> Result<()> {
    let config = OnlineDpoConfig {
        dpo: args.dpo.config(&args.flags, OnlineDpoConfig::default().dpo),
        iterations: args.iterations,
        samples: args.samples,
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        prompts_per_iteration: args.prompts_per_iteration,
        batch: args.generation_batch,
        ..OnlineDpoConfig::default()
    };
    let mut problems = config.problems();
    problems.at_least("exec_timeout_ms", args.exec_timeout_ms as usize, 1);
    check_settings(problems, &args.out)?;
    let prompts = read_verified_prompts(&args.prompts)?;
    let mut model = load_for_training(
        &args.model,
        &args.memory,
        &config.dpo.args,
        Algorithm::Dpo,
        config.batch,
    )?;
    let reports = train_online_dpo(
        &mut model,
        &prompts,
        &config,
        Duration::from_millis(args.exec_timeout_ms),
        &OnlineOptions::new(&args.out, &args.model.model),
    )?;
    if let (Some(first), Some(last)) = (reports.first(), reports.last()) {
        eprintln!(
            "{} iterations: mean pass rate {:.3} → {:.3}; iterations.jsonl and iter-N/ in {}",
            reports.len(),
            first.mean_pass_rate,
            last.mean_pass_rate,
            args.out.display()
        );
    }
    Ok(())
}

fn print_summary(outcome: &JobOutcome, out: &Path) {
    let Some(training) = &outcome.training else {
        return;
    };
    let losses = training.losses();
    if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
        eprintln!(
            "trained {} steps: loss {first:.4} → {last:.4}; adapter and metrics.jsonl in {}",
            training.total_steps,
            out.display()
        );
    }
    if let Some(held) = &outcome.held_out {
        eprintln!(
            "held out {} pairs: reward accuracy {:.3}, mean margin {:.4}",
            held.pairs, held.reward_accuracy, held.mean_margin
        );
    }
    if let Some(kib) = peak_rss_kib() {
        eprintln!(
            "peak resident memory while training: {} MiB (VmHWM {kib} kB)",
            kib / 1024
        );
    }
}

/// Restarts the peak-RSS count (Linux), so the summary reports training, not the
/// transient peak of loading (dequantizing a GGUF, say).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set size from /proc (Linux only).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
