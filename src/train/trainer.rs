//! The training loop shared by SFT and DPO: LoRA adapters on every targeted projection,
//! seeded data order, gradient accumulation, clipping, the learning-rate schedule,
//! `metrics.jsonl` streaming, a progress bar, checkpoints and exact resume.
//!
//! Everything random is a function of the seed: adapter initialisation draws from
//! `seed`, and epoch `e` visits the length-grouped batches in an order drawn from
//! `(seed, e)`. A checkpoint therefore needs only the adapter, the optimizer moments and
//! the step to continue bit for bit.

use super::data::{length_grouped_batches, packed_batches, TokenBatch, Tokenized, TokenizedPair};
use super::dpo::{dpo_loss, reference_logps, DpoConfig, DpoStats, Reference};
use super::optim::{clip_grad_norm, AdamW, AdamWConfig, GradAccumulator, LrSchedule, ScheduleKind};
use super::sft::sft_loss;
use crate::export::peft::{load_adapter, save_adapter};
use crate::model::decoder::Decoder;
use crate::model::lora::{Adapters, LoraConfig};
use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings every algorithm shares (transformers' `TrainingArguments` role).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingArgs {
    pub epochs: usize,
    /// Stop after this many optimizer steps even if the epochs are not done (the
    /// schedule decays over these steps); 0: no limit.
    #[serde(default)]
    pub max_steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub schedule: ScheduleKind,
    /// Fraction of the optimizer steps spent warming up linearly from 0.
    pub warmup_ratio: f64,
    /// Sequences (SFT) or pairs (DPO) per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Longer sequences are cut to this many tokens.
    pub max_len: usize,
    /// Pack items into rows of up to `max_len` tokens (each item still attends only to
    /// itself) and take `batch_size` rows per micro-batch, instead of `batch_size` items:
    /// steps of many short examples carry as many tokens as steps of long ones.
    #[serde(default)]
    pub packing: bool,
    /// A micro-batch is run in pieces of at most this many padded tokens (at least one
    /// sequence or pair each), accumulating gradients: the same update in bounded memory.
    /// 0: no limit.
    pub max_batch_tokens: usize,
    /// Global gradient norm clip; 0 disables clipping.
    pub max_grad_norm: f64,
    pub adamw: AdamWConfig,
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps; 0: only the final adapter.
    pub save_every: usize,
    pub lora: LoraConfig,
}

impl Default for TrainingArgs {
    fn default() -> Self {
        Self {
            epochs: 3,
            max_steps: 0,
            lr: 2e-4,
            schedule: ScheduleKind::Linear,
            warmup_ratio: 0.1,
            batch_size: 4,
            grad_accum: 1,
            max_len: 1024,
            packing: false,
            max_batch_tokens: 512,
            max_grad_norm: 1.0,
            adamw: AdamWConfig::default(),
            seed: 42,
            save_every: 0,
            lora: LoraConfig::default(),
        }
    }
}

/// What to train on, with the algorithm's settings.
pub enum Job<'a> {
    Sft {
        examples: &'a [Tokenized],
        config: &'a super::sft::SftConfig,
    },
    Dpo {
        pairs: &'a [TokenizedPair],
        config: &'a DpoConfig,
    },
}

impl Job<'_> {
    fn args(&self) -> &TrainingArgs {
        match self {
            Job::Sft { config, .. } => &config.args,
            Job::Dpo { config, .. } => &config.args,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Job::Sft { .. } => "sft",
            Job::Dpo { .. } => "dpo",
        }
    }

    /// Tokens of each item: an SFT sequence, or a pair's two sequences together.
    fn item_tokens(&self) -> Vec<usize> {
        match self {
            Job::Sft { examples, .. } => examples.iter().map(|e| e.ids.len()).collect(),
            Job::Dpo { pairs, .. } => pairs
                .iter()
                .map(|p| p.chosen.ids.len() + p.rejected.ids.len())
                .collect(),
        }
    }

    /// The settings that decide the trajectory (checkpoint frequency does not), as JSON.
    fn trajectory_settings(&self) -> Value {
        let mut v = match self {
            Job::Sft { config, .. } => serde_json::to_value(config),
            Job::Dpo { config, .. } => serde_json::to_value(config),
        }
        .expect("configs serialize");
        v["args"]["save_every"] = Value::Null;
        v
    }

    /// A hash of the tokenized data, so a resume on other data is refused.
    fn data_fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut add = |t: &Tokenized| {
            for (&id, &label) in t.ids.iter().zip(&t.labels) {
                h.update(id.to_le_bytes());
                h.update([label as u8]);
            }
            h.update(u32::MAX.to_le_bytes());
        };
        match self {
            Job::Sft { examples, .. } => examples.iter().for_each(&mut add),
            Job::Dpo { pairs, .. } => pairs.iter().for_each(|p| {
                add(&p.chosen);
                add(&p.rejected);
            }),
        }
        format!("{:x}", h.finalize())
    }
}

/// Where outputs go and how the run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out: PathBuf,
    /// A `checkpoint-N` folder of an earlier run with the same data and settings.
    pub resume: Option<PathBuf>,
    /// Stop after this optimizer step as if interrupted (tests of resume).
    pub stop_after: Option<usize>,
    /// Recorded as `base_model_name_or_path` in the adapter config.
    pub base_model: String,
    pub progress: bool,
}

/// What a run did: the metric lines it wrote (one per optimizer step).
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub total_steps: usize,
    pub metrics: Vec<Value>,
}

impl RunSummary {
    pub fn losses(&self) -> Vec<f64> {
        self.metrics
            .iter()
            .map(|m| m["loss"].as_f64().unwrap_or(f64::NAN))
            .collect()
    }
}

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const METRICS_FILE: &str = "metrics.jsonl";

/// Attaches fresh PEFT-initialised adapters to every targeted projection.
pub fn attach_adapters(decoder: &mut Decoder, lora: &LoraConfig, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let device = decoder.device().clone();
    let mut attached = 0;
    for (name, layer) in decoder.linear_layers_mut() {
        if lora.targets(&name) {
            let (out, inp) = layer.shape();
            layer.set_adapter(Some(lora.init_adapter(out, inp, &mut rng, &device)?))?;
            attached += 1;
        } else {
            layer.set_adapter(None)?;
        }
    }
    if attached == 0 {
        bail!(
            "LoRA target_modules {:?} match no projection of the model",
            lora.target_modules
        );
    }
    Ok(())
}

/// The trainable variables (A then B of each adapted projection, in module order).
pub fn adapter_vars(decoder: &Decoder) -> Vec<Var> {
    decoder
        .linear_layers()
        .into_iter()
        .filter_map(|(_, l)| l.adapter().map(|a| [a.a.clone(), a.b.clone()]))
        .flatten()
        .collect()
}

fn validate(args: &TrainingArgs) -> Result<()> {
    if args.epochs == 0 || args.batch_size == 0 || args.grad_accum == 0 {
        bail!("epochs, batch size and gradient accumulation must be at least 1");
    }
    if args.max_len < 2 {
        bail!("--max-len must be at least 2 tokens");
    }
    if args.lr.is_nan() || args.lr <= 0.0 {
        bail!("the learning rate must be positive");
    }
    if args.lora.r == 0 {
        bail!("LoRA rank must be at least 1");
    }
    if !(0.0..1.0).contains(&args.lora.lora_dropout) {
        bail!(
            "LoRA dropout must be in [0, 1), got {}",
            args.lora.lora_dropout
        );
    }
    Ok(())
}

fn epoch_order(n_batches: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n_batches).collect();
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// Sums of one optimizer step's micro-batches, for its metric line.
#[derive(Default)]
struct StepTotals {
    loss: f64,
    tokens: usize,
    dpo: DpoStats,
}

/// Trains the adapters of `decoder` on `job`; writes metrics, checkpoints and the final
/// adapter under `options.out`.
pub fn train(decoder: &mut Decoder, job: &Job, options: &RunOptions) -> Result<RunSummary> {
    let args = job.args().clone();
    validate(&args)?;
    let tokens = job.item_tokens();
    if tokens.is_empty() {
        bail!("no training examples");
    }
    let batches = if args.packing {
        packed_batches(&tokens, args.max_len, args.batch_size)
    } else {
        length_grouped_batches(&tokens, args.batch_size)
    };
    let steps_per_epoch = batches.len().div_ceil(args.grad_accum);
    let total_steps = match args.max_steps {
        0 => steps_per_epoch * args.epochs,
        cap => cap.min(steps_per_epoch * args.epochs),
    };
    let schedule = LrSchedule {
        peak: args.lr,
        warmup_steps: (args.warmup_ratio * total_steps as f64).ceil() as usize,
        total_steps,
        kind: args.schedule,
    };
    let fingerprint = job.data_fingerprint();
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("{}: cannot create folder", options.out.display()))?;

    let mut start_step = 0;
    let resumed_state = match &options.resume {
        Some(dir) => Some(read_checkpoint(dir, job, &fingerprint, total_steps)?),
        None => None,
    };
    match &options.resume {
        Some(dir) => {
            load_adapter(decoder, dir)?;
        }
        None => attach_adapters(decoder, &args.lora, args.seed)?,
    }
    let vars = adapter_vars(decoder);
    let mut optimizer = AdamW::new(vars.clone(), args.adamw)?;
    if let (Some(dir), Some(step)) = (&options.resume, resumed_state) {
        let path = dir.join(OPTIMIZER_FILE);
        let tensors = candle_core::safetensors::load(&path, decoder.device())
            .with_context(|| format!("{}: cannot read the optimizer state", path.display()))?;
        optimizer
            .load_state(&tensors, step)
            .with_context(|| format!("{}", path.display()))?;
        start_step = step;
    }
    let reference = match job {
        Job::Dpo { pairs, config } if config.precompute_ref_log_probs => Some(
            cached_reference_logps(decoder, pairs, &tokens, &args, options, &fingerprint)?,
        ),
        _ => None,
    };
    let mut metrics_file = open_metrics(&options.out, start_step)?;

    let bar = if options.progress {
        ProgressBar::new(total_steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} step {pos}/{len} [{bar:30}] {msg} · ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(job.name());
    bar.set_position(start_step as u64);

    let started = Instant::now();
    let mut accumulator = GradAccumulator::new(vars.len());
    let mut written = Vec::new();
    let last_step = options
        .stop_after
        .map_or(total_steps, |s| s.min(total_steps));
    for step in start_step..last_step {
        let step_started = Instant::now();
        let epoch = step / steps_per_epoch;
        let order = epoch_order(batches.len(), args.seed, epoch);
        let first = (step % steps_per_epoch) * args.grad_accum;
        let micro: Vec<&Vec<usize>> = order[first..(first + args.grad_accum).min(order.len())]
            .iter()
            .map(|&b| &batches[b])
            .collect();
        let totals = run_step(
            decoder,
            job,
            &micro,
            StepContext {
                step,
                item_tokens: &tokens,
                reference: reference.as_deref(),
            },
            &vars,
            &mut accumulator,
        )?;
        let mut grads = accumulator.take(&vars)?;
        let grad_norm = clip_grad_norm(&mut grads, args.max_grad_norm)?;
        let lr = schedule.lr(step);
        optimizer.step(&grads, lr)?;

        let seconds = step_started.elapsed().as_secs_f64();
        let mut line = json!({
            "step": step + 1,
            "epoch": (step + 1) as f64 / steps_per_epoch as f64,
            "loss": totals.loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": totals.tokens,
            "tokens_per_s": totals.tokens as f64 / seconds.max(1e-9),
            "elapsed_s": started.elapsed().as_secs_f64(),
        });
        if let Job::Dpo { .. } = job {
            add_dpo_metrics(&mut line, &totals.dpo);
        }
        writeln!(metrics_file, "{line}")?;
        metrics_file.flush()?;
        bar.set_message(format!(
            "loss {:.4} · {:.0} tok/s",
            totals.loss,
            line["tokens_per_s"].as_f64().unwrap_or(0.0)
        ));
        bar.inc(1);
        written.push(line);

        let done = step + 1;
        if args.save_every > 0 && done % args.save_every == 0 && done < total_steps {
            let dir = options.out.join(format!("checkpoint-{done}"));
            write_checkpoint(
                &dir,
                decoder,
                &optimizer,
                job,
                options,
                &fingerprint,
                done,
                total_steps,
            )?;
        }
    }
    bar.finish_and_clear();
    if last_step == total_steps {
        save_adapter(decoder, &args.lora, &options.base_model, &options.out)?;
        let config = json!({"algorithm": job.name(), "config": job.trajectory_settings(), "total_steps": total_steps});
        std::fs::write(
            options.out.join("training_config.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
    }
    Ok(RunSummary {
        total_steps,
        metrics: written,
    })
}

/// What a step needs besides its batches.
struct StepContext<'a> {
    /// The optimizer step (0-based), which seeds LoRA dropout.
    step: usize,
    /// Tokens of each item (`Job::item_tokens`), for the token budget of a piece.
    item_tokens: &'a [usize],
    /// Precomputed reference log-probability sums per DPO pair.
    reference: Option<&'a [[f32; 2]]>,
}

/// Forward and backward over one optimizer step's micro-batches; gradients are summed
/// into `accumulator`.
fn run_step(
    decoder: &Decoder,
    job: &Job,
    micro: &[&Vec<usize>],
    context: StepContext,
    vars: &[Var],
    accumulator: &mut GradAccumulator,
) -> Result<StepTotals> {
    let device = decoder.device();
    let args = job.args();
    let max_tokens = args.max_batch_tokens;
    let tokens = |i: usize| context.item_tokens[i];
    let mut totals = StepTotals::default();
    // Piece `i` of step `s` draws its dropout masks from (seed, s, i): a resumed run
    // replays the same masks.
    let mut pieces = 0u64;
    let mut adapters = || {
        pieces += 1;
        match args.lora.lora_dropout {
            0.0 => Adapters::On,
            p => Adapters::Dropout {
                p: p as f32,
                seed: args.seed
                    ^ (context.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ pieces.wrapping_mul(0xD1B5_4A32_D192_ED03),
            },
        }
    };
    match job {
        Job::Sft { examples, .. } => {
            let normalizer: usize = micro
                .iter()
                .flat_map(|b| b.iter())
                .map(|&i| examples[i].target_count())
                .sum();
            for batch in micro
                .iter()
                .flat_map(|b| split_by_tokens(b, tokens, max_tokens))
            {
                let seqs: Vec<&Tokenized> = batch.iter().map(|&i| &examples[i]).collect();
                let tb = TokenBatch::new(&seqs, device)?;
                let (loss, nll_sum) = sft_loss(decoder, &tb, normalizer, adapters())?;
                accumulator.add(vars, &loss.backward()?)?;
                totals.loss += nll_sum / normalizer.max(1) as f64;
                totals.tokens += tb.tokens;
            }
        }
        Job::Dpo { pairs, config } => {
            let normalizer: usize = micro.iter().map(|b| b.len()).sum();
            for batch in micro
                .iter()
                .flat_map(|b| split_by_tokens(b, tokens, max_tokens))
            {
                let seqs: Vec<&Tokenized> = batch
                    .iter()
                    .map(|&i| &pairs[i].chosen)
                    .chain(batch.iter().map(|&i| &pairs[i].rejected))
                    .collect();
                let tb = TokenBatch::new(&seqs, device)?;
                let given: Vec<f32>;
                let reference = match context.reference {
                    Some(sums) => {
                        given = (0..2)
                            .flat_map(|side| batch.iter().map(move |&i| sums[i][side]))
                            .collect();
                        Reference::Given(&given)
                    }
                    None => Reference::Compute,
                };
                let (loss, stats) =
                    dpo_loss(decoder, &tb, config, normalizer, adapters(), reference)?;
                accumulator.add(vars, &loss.backward()?)?;
                totals.loss += stats.losses.iter().sum::<f64>() / normalizer as f64;
                totals.tokens += tb.tokens;
                merge_stats(&mut totals.dpo, stats);
            }
        }
    }
    Ok(totals)
}

const REFERENCE_FILE: &str = "reference_logps.json";

/// The DPO reference sums of every pair: read from `reference_logps.json` in the output
/// folder when it was written for the same data and weights (a resumed run), else computed
/// and written there.
fn cached_reference_logps(
    decoder: &Decoder,
    pairs: &[TokenizedPair],
    tokens: &[usize],
    args: &TrainingArgs,
    options: &RunOptions,
    data_fingerprint: &str,
) -> Result<Vec<[f32; 2]>> {
    let path = options.out.join(REFERENCE_FILE);
    let weights = weights_fingerprint(decoder)?;
    if let Ok(text) = std::fs::read_to_string(&path) {
        let cached: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        if cached["data_fingerprint"] == data_fingerprint
            && cached["weights_fingerprint"] == weights
        {
            let logps: Vec<[f32; 2]> = serde_json::from_value(cached["logps"].clone())
                .with_context(|| format!("{}: malformed `logps`", path.display()))?;
            if logps.len() == pairs.len() {
                return Ok(logps);
            }
        }
    }
    let logps = reference_logps(decoder, pairs, tokens, args, options.progress)?;
    let record = json!({
        "data_fingerprint": data_fingerprint,
        "weights_fingerprint": weights,
        "logps": logps,
    });
    crate::io::write_atomic(&path, serde_json::to_string(&record)?.as_bytes())?;
    Ok(logps)
}

/// A hash of the first and last row of every projection weight: tells the weights a
/// reference cache was computed on (another model, or another merged SFT adapter) apart
/// without reading every weight.
fn weights_fingerprint(decoder: &Decoder) -> Result<String> {
    let mut h = Sha256::new();
    for (name, layer) in decoder.linear_layers() {
        let w = layer.weight();
        let rows = w.dim(0)?;
        h.update(name.as_bytes());
        for row in [0, rows - 1] {
            for v in w
                .get(row)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?
            {
                h.update(v.to_le_bytes());
            }
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Cuts a batch into consecutive pieces of at most `max_tokens` tokens (`tokens(i)` of
/// item `i`; batches carry no padding); an item larger than that goes alone. 0: no limit.
pub(crate) fn split_by_tokens(
    batch: &[usize],
    tokens: impl Fn(usize) -> usize,
    max_tokens: usize,
) -> Vec<Vec<usize>> {
    if max_tokens == 0 {
        return vec![batch.to_vec()];
    }
    let mut pieces: Vec<Vec<usize>> = Vec::new();
    let mut filled = 0;
    for &i in batch {
        match pieces.last_mut() {
            Some(piece) if filled + tokens(i) <= max_tokens => {
                piece.push(i);
                filled += tokens(i);
            }
            _ => {
                pieces.push(vec![i]);
                filled = tokens(i);
            }
        }
    }
    pieces
}

fn merge_stats(into: &mut DpoStats, from: DpoStats) {
    into.losses.extend(from.losses);
    into.chosen_rewards.extend(from.chosen_rewards);
    into.rejected_rewards.extend(from.rejected_rewards);
    into.policy_chosen_logps.extend(from.policy_chosen_logps);
    into.policy_rejected_logps
        .extend(from.policy_rejected_logps);
    into.log_ratio_sum += from.log_ratio_sum;
    into.tokens += from.tokens;
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// TRL's metric names: rewards/{chosen,rejected,margins,accuracies}, logps/*, plus
/// `kl`: the mean per-token log π − log π_ref over chosen and rejected replies (a proxy
/// for the policy's drift from the reference on the data).
fn add_dpo_metrics(line: &mut Value, s: &DpoStats) {
    let margins: Vec<f64> = s
        .chosen_rewards
        .iter()
        .zip(&s.rejected_rewards)
        .map(|(c, r)| c - r)
        .collect();
    let accuracy =
        margins.iter().filter(|&&m| m > 0.0).count() as f64 / margins.len().max(1) as f64;
    line["rewards/chosen"] = json!(mean(&s.chosen_rewards));
    line["rewards/rejected"] = json!(mean(&s.rejected_rewards));
    line["rewards/margins"] = json!(mean(&margins));
    line["rewards/accuracies"] = json!(accuracy);
    line["logps/chosen"] = json!(mean(&s.policy_chosen_logps));
    line["logps/rejected"] = json!(mean(&s.policy_rejected_logps));
    line["kl"] = json!(s.log_ratio_sum / s.tokens.max(1) as f64);
}

/// Opens `metrics.jsonl` for appending, keeping only the lines of steps up to
/// `start_step` (a resumed run rewrites what the interrupted one logged after its
/// checkpoint).
fn open_metrics(out: &Path, start_step: usize) -> Result<std::io::BufWriter<std::fs::File>> {
    let path = out.join(METRICS_FILE);
    let kept: Vec<String> = if start_step > 0 && path.exists() {
        std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s as usize <= start_step)
            })
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&path)
            .with_context(|| format!("{}: cannot write", path.display()))?,
    );
    for line in kept {
        writeln!(file, "{line}")?;
    }
    file.flush()?;
    Ok(file)
}

#[allow(clippy::too_many_arguments)]
fn write_checkpoint(
    dir: &Path,
    decoder: &Decoder,
    optimizer: &AdamW,
    job: &Job,
    options: &RunOptions,
    fingerprint: &str,
    step: usize,
    total_steps: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    save_adapter(decoder, &job.args().lora, &options.base_model, dir)?;
    let tensors: HashMap<String, Tensor> = optimizer.state_tensors().into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join(OPTIMIZER_FILE))
        .with_context(|| format!("{}: cannot write", dir.join(OPTIMIZER_FILE).display()))?;
    let state = json!({
        "algorithm": job.name(),
        "step": step,
        "total_steps": total_steps,
        "data_fingerprint": fingerprint,
        "settings": job.trajectory_settings(),
    });
    // Written last: a folder with the state file is a complete checkpoint.
    std::fs::write(dir.join(STATE_FILE), serde_json::to_string_pretty(&state)?)
        .with_context(|| format!("{}: cannot write", dir.join(STATE_FILE).display()))?;
    Ok(())
}

/// Checks that a checkpoint belongs to this job and returns its step.
fn read_checkpoint(dir: &Path, job: &Job, fingerprint: &str, total_steps: usize) -> Result<usize> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read (not a complete checkpoint folder)",
            path.display()
        )
    })?;
    let state: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let p = path.display();
    if state["algorithm"] != job.name() {
        bail!(
            "{p}: a {} checkpoint cannot resume {}",
            state["algorithm"],
            job.name()
        );
    }
    if state["data_fingerprint"] != fingerprint {
        bail!("{p}: the checkpoint was trained on other data (or tokenized differently)");
    }
    if state["settings"] != job.trajectory_settings() {
        bail!(
            "{p}: the checkpoint's training settings differ from this run's: {}",
            state["settings"]
        );
    }
    let step = state["step"]
        .as_u64()
        .with_context(|| format!("{p}: no step"))? as usize;
    if state["total_steps"].as_u64() != Some(total_steps as u64) || step > total_steps {
        bail!("{p}: the checkpoint's schedule does not match this run's {total_steps} steps");
    }
    Ok(step)
}

#[cfg(test)]
mod tests {
    #[test]
    fn batches_split_within_the_token_budget() {
        let widths = [100, 300, 200, 50, 700];
        let w = |i: usize| widths[i];
        assert_eq!(
            super::split_by_tokens(&[0, 1, 2, 3], w, 600),
            vec![vec![0, 1, 2], vec![3]]
        );
        assert_eq!(
            super::split_by_tokens(&[1, 2, 4, 3], w, 500),
            vec![vec![1, 2], vec![4], vec![3]]
        );
        assert_eq!(super::split_by_tokens(&[0, 1], w, 0), vec![vec![0, 1]]);
    }
}
