//! The training loop shared by SFT and DPO: LoRA adapters on every targeted projection,
//! seeded data order, gradient accumulation, clipping, the learning-rate schedule,
//! `metrics.jsonl` streaming, a progress bar, checkpoints and exact resume.
//!
//! Everything random is a function of the seed: adapter initialisation draws from
//! `seed`, and epoch `e` visits the length-grouped batches in an order drawn from
//! `(seed, e)`. A checkpoint therefore needs only the adapter, the optimizer moments and
//! the step to continue bit for bit.

use super::adapters::{adapter_vars, attach_adapters, quantize_base};
use super::checkpoint::{
    latest_checkpoint, load_optimizer_state, write_checkpoint, CheckpointState,
};
use super::data::{length_grouped_batches, packed_batches, split_by_tokens, TokenBatch, Tokenized};
use super::dpo::{dpo_loss, DpoStats, Reference};
use super::job::TrainingJob;
use super::metrics::{DpoStepMetrics, MetricsLog, StepMetrics};
use super::optim::{clip_grad_norm, AdamW, GradAccumulator, LrSchedule};
use super::policy::Policy;
use super::reference_cache::cached_reference_logps;
use super::sft::sft_loss;
use super::training_args::BaseDtype;
use super::training_args::TrainingArgs;
use crate::model::adapter_file::{load_adapter, save_adapter};
use crate::model::decoder::Decoder;
use crate::model::lora::Adapters;
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::Var;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where a training run writes and how it behaves.
#[derive(Debug, Clone)]
pub struct TrainingOptions {
    pub out: PathBuf,
    /// A `checkpoint-N` folder of an earlier run with the same data and settings.
    pub resume: Option<PathBuf>,
    /// Stop after this optimizer step as if interrupted (tests of resume).
    pub stop_after: Option<usize>,
    /// Recorded as `base_model_name_or_path` in the adapter config.
    pub base_model: String,
    pub progress: bool,
}

impl TrainingOptions {
    /// A run from the start into `out`, with a progress bar.
    pub fn new(out: &Path, base_model: &str) -> Self {
        Self {
            out: out.to_path_buf(),
            resume: None,
            stop_after: None,
            base_model: base_model.to_string(),
            progress: true,
        }
    }

    /// A run into `out` that continues from its latest complete checkpoint, if any.
    pub fn continuing(out: &Path, base_model: &str) -> Result<Self> {
        Ok(Self {
            resume: latest_checkpoint(out)?,
            ..Self::new(out, base_model)
        })
    }
}

/// What a training run did: the metric lines it wrote (one per optimizer step).
#[derive(Debug, Clone)]
pub struct TrainingOutcome {
    pub total_steps: usize,
    pub metrics: Vec<StepMetrics>,
}

impl TrainingOutcome {
    pub fn losses(&self) -> Vec<f64> {
        self.metrics.iter().map(|m| m.loss).collect()
    }
}

/// Trains the adapters of `decoder` on `job`; writes metrics, checkpoints and the final
/// adapter under `options.out`.
pub fn train(
    decoder: &mut Decoder,
    job: &TrainingJob,
    options: &TrainingOptions,
) -> Result<TrainingOutcome> {
    let args = job.args();
    args.validate()?;
    let item_tokens = job.item_tokens();
    if item_tokens.is_empty() {
        bail!("no training examples");
    }
    let plan = StepPlan::new(args, &item_tokens);
    let fingerprint = job.data_fingerprint();
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("{}: cannot create folder", options.out.display()))?;
    let start_step = resumed_step(job, options, &fingerprint, plan.total_steps)?;
    if args.base_dtype == BaseDtype::Int8 {
        args.check_base_dtype(decoder.device(), decoder.dtype(), "base_dtype")?;
        quantize_base(decoder)?;
    }
    let (vars, mut optimizer) = trainable_adapters(decoder, args, options, start_step)?;
    let reference = precomputed_reference(decoder, job, &item_tokens, options, &fingerprint)?;
    let mut log = MetricsLog::open(&options.out, start_step)?;
    let bar = progress_bar(options.progress, job.name(), plan.total_steps, start_step);

    let started = Instant::now();
    let mut accumulator = GradAccumulator::new(vars.len());
    let mut metrics = Vec::new();
    let last_step = options
        .stop_after
        .map_or(plan.total_steps, |s| s.min(plan.total_steps));
    for step in start_step..last_step {
        let step_started = Instant::now();
        let totals = run_step(
            decoder,
            job,
            &plan.micro_batches(step, args),
            StepContext {
                step,
                item_tokens: &item_tokens,
                reference: reference.as_deref(),
            },
            &vars,
            &mut accumulator,
        )?;
        let mut grads = accumulator.take(&vars)?;
        let grad_norm = clip_grad_norm(&mut grads, args.max_grad_norm)?;
        let lr = plan.schedule.lr(step);
        optimizer.step(&grads, lr)?;

        let seconds = step_started.elapsed().as_secs_f64();
        let line = StepMetrics {
            step: step + 1,
            epoch: (step + 1) as f64 / plan.steps_per_epoch as f64,
            loss: totals.loss,
            lr,
            grad_norm,
            tokens: totals.tokens,
            tokens_per_s: totals.tokens as f64 / seconds.max(1e-9),
            elapsed_s: started.elapsed().as_secs_f64(),
            dpo: totals.dpo.as_ref().map(DpoStepMetrics::from_stats),
        };
        log.append(&line)?;
        bar.set_message(format!(
            "loss {:.4} · {:.0} tok/s",
            line.loss, line.tokens_per_s
        ));
        bar.inc(1);
        metrics.push(line);

        let done = step + 1;
        if args.save_every > 0 && done % args.save_every == 0 && done < plan.total_steps {
            write_checkpoint(
                &options.out.join(format!("checkpoint-{done}")),
                decoder,
                &args.lora,
                &options.base_model,
                &optimizer,
                &CheckpointState::new(job, &fingerprint, done, plan.total_steps),
            )?;
        }
    }
    bar.finish_and_clear();
    if last_step == plan.total_steps {
        save_trained_adapter(decoder, job, options, plan.total_steps)?;
    }
    Ok(TrainingOutcome {
        total_steps: plan.total_steps,
        metrics,
    })
}

/// How a job's items are cut into batches and optimizer steps, and the learning rate of
/// each step.
struct StepPlan {
    batches: Vec<Vec<usize>>,
    steps_per_epoch: usize,
    total_steps: usize,
    schedule: LrSchedule,
}

impl StepPlan {
    fn new(args: &TrainingArgs, item_tokens: &[usize]) -> Self {
        let batches = if args.packing {
            packed_batches(item_tokens, args.max_len, args.batch_size)
        } else {
            length_grouped_batches(item_tokens, args.batch_size)
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
        Self {
            batches,
            steps_per_epoch,
            total_steps,
            schedule,
        }
    }

    /// The micro-batches of optimizer step `step` (0-based): the next `grad_accum`
    /// batches in its epoch's seeded order.
    fn micro_batches(&self, step: usize, args: &TrainingArgs) -> Vec<&Vec<usize>> {
        let order = epoch_order(self.batches.len(), args.seed, step / self.steps_per_epoch);
        let first = (step % self.steps_per_epoch) * args.grad_accum;
        order[first..(first + args.grad_accum).min(order.len())]
            .iter()
            .map(|&b| &self.batches[b])
            .collect()
    }
}

fn epoch_order(n_batches: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n_batches).collect();
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// The step to start from: 0, or the step of `options.resume` once it is checked to
/// belong to this job.
fn resumed_step(
    job: &TrainingJob,
    options: &TrainingOptions,
    fingerprint: &str,
    total_steps: usize,
) -> Result<usize> {
    match &options.resume {
        Some(dir) => {
            let state = CheckpointState::read(dir)?;
            state.check_resumes(
                &CheckpointState::new(job, fingerprint, state.step, total_steps),
                dir,
            )?;
            Ok(state.step)
        }
        None => Ok(0),
    }
}

/// The adapters to train and their optimizer: fresh ones, or those of `options.resume`
/// with its optimizer moments after `start_step` steps.
fn trainable_adapters(
    decoder: &mut Decoder,
    args: &TrainingArgs,
    options: &TrainingOptions,
    start_step: usize,
) -> Result<(Vec<Var>, AdamW)> {
    match &options.resume {
        Some(dir) => {
            load_adapter(decoder, dir)?;
        }
        None => attach_adapters(decoder, &args.lora, args.seed)?,
    }
    let vars = adapter_vars(decoder);
    let mut optimizer = AdamW::new(vars.clone(), args.adamw)?;
    if let Some(dir) = &options.resume {
        load_optimizer_state(dir, &mut optimizer, start_step, decoder.device())?;
    }
    Ok((vars, optimizer))
}

/// The DPO reference sums of every pair when the job precomputes them
/// (`precompute_ref_log_probs`); `None` computes them in every step.
fn precomputed_reference(
    decoder: &Decoder,
    job: &TrainingJob,
    item_tokens: &[usize],
    options: &TrainingOptions,
    fingerprint: &str,
) -> Result<Option<Vec<[f32; 2]>>> {
    match job {
        TrainingJob::Dpo { pairs, config } if config.precompute_ref_log_probs => {
            cached_reference_logps(
                decoder,
                pairs,
                item_tokens,
                &config.args,
                &options.out,
                fingerprint,
                options.progress,
            )
            .map(Some)
        }
        _ => Ok(None),
    }
}

fn progress_bar(
    shown: bool,
    job: &'static str,
    total_steps: usize,
    start_step: usize,
) -> ProgressBar {
    let bar = if shown {
        ProgressBar::new(total_steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} step {pos}/{len} [{bar:30}] {msg} · ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(job);
    bar.set_position(start_step as u64);
    bar
}

/// The finished run's adapter and `training_config.json` in `options.out`.
fn save_trained_adapter(
    decoder: &Decoder,
    job: &TrainingJob,
    options: &TrainingOptions,
    total_steps: usize,
) -> Result<()> {
    save_adapter(decoder, &job.args().lora, &options.base_model, &options.out)?;
    let config = json!({"algorithm": job.name(), "config": job.trajectory_settings(), "total_steps": total_steps});
    std::fs::write(
        options.out.join("training_config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    Ok(())
}

/// Sums of one optimizer step's micro-batches, for its metric line.
#[derive(Default)]
struct StepTotals {
    loss: f64,
    tokens: usize,
    /// DPO's per-pair values; `None` for SFT.
    dpo: Option<DpoStats>,
}

/// What a step needs besides its batches.
struct StepContext<'a> {
    /// The optimizer step (0-based), which seeds LoRA dropout.
    step: usize,
    /// Tokens of each item (`TrainingJob::item_tokens`), for the token budget of a piece.
    item_tokens: &'a [usize],
    /// Precomputed reference log-probability sums per DPO pair.
    reference: Option<&'a [[f32; 2]]>,
}

/// Forward and backward over one optimizer step's micro-batches; gradients are summed
/// into `accumulator` in piece order.
fn run_step(
    decoder: &Decoder,
    job: &TrainingJob,
    micro: &[&Vec<usize>],
    context: StepContext,
    vars: &[Var],
    accumulator: &mut GradAccumulator,
) -> Result<StepTotals> {
    let device = decoder.device();
    let args = job.args();
    let tokens = |i: usize| context.item_tokens[i];
    let checkpointing = args.checkpointing_on(device);
    let pieces: Vec<(Vec<usize>, Policy)> = micro
        .iter()
        .flat_map(|b| split_by_tokens(b, tokens, args.max_batch_tokens))
        .enumerate()
        .map(|(i, batch)| {
            (
                batch,
                piece_policy(args, context.step, i + 1, checkpointing),
            )
        })
        .collect();
    let two_at_once = device.is_cpu() && rayon::current_num_threads() >= 2;
    let mut totals = StepTotals::default();
    match job {
        TrainingJob::Sft { examples, .. } => {
            let normalizer: usize = micro
                .iter()
                .flat_map(|b| b.iter())
                .map(|&i| examples[i].target_count())
                .sum();
            let piece = |batch: &[usize], policy: Policy| {
                let seqs: Vec<&Tokenized> = batch.iter().map(|&i| &examples[i]).collect();
                let tb = TokenBatch::new(&seqs, device)?;
                let (loss, nll_sum) = sft_loss(decoder, &tb, normalizer, policy)?;
                Ok((loss.backward(decoder)?, (nll_sum, tb.tokens)))
            };
            for_each_piece(&pieces, two_at_once, piece, |grads, (nll_sum, tokens)| {
                accumulator.add(vars, &grads)?;
                totals.loss += nll_sum / normalizer.max(1) as f64;
                totals.tokens += tokens;
                Ok(())
            })?;
        }
        TrainingJob::Dpo { pairs, config } => {
            let normalizer: usize = micro.iter().map(|b| b.len()).sum();
            let piece = |batch: &[usize], policy: Policy| {
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
                let (loss, stats) = dpo_loss(decoder, &tb, config, normalizer, policy, reference)?;
                Ok((loss.backward(decoder)?, (stats, tb.tokens)))
            };
            let mut dpo = DpoStats::default();
            for_each_piece(&pieces, two_at_once, piece, |grads, (stats, tokens)| {
                accumulator.add(vars, &grads)?;
                totals.loss += stats.losses.iter().sum::<f64>() / normalizer as f64;
                totals.tokens += tokens;
                dpo.extend(stats);
                Ok(())
            })?;
            totals.dpo = Some(dpo);
        }
    }
    Ok(totals)
}

/// The policy of piece `piece` (1-based) of optimizer step `step`: its dropout masks
/// come from (seed, step, piece), so a resumed run replays the same masks.
fn piece_policy(args: &TrainingArgs, step: usize, piece: usize, checkpointing: bool) -> Policy {
    let adapters = match args.lora.lora_dropout {
        0.0 => Adapters::On,
        p => Adapters::Dropout {
            p: p as f32,
            seed: args.seed
                ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (piece as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
        },
    };
    Policy {
        adapters,
        checkpointing,
    }
}

/// Runs `piece` on every piece and hands each result to `take` in piece order. With
/// `two_at_once` (the CPU, two or more threads), two pieces run at once, one per core,
/// for twice one piece's activation memory: each op then has a core to itself instead of
/// splitting across both and waiting for the slower half, and one piece's memory-bound
/// ops overlap the other's products. A piece's arithmetic does not depend on how many
/// threads run it, so the gradients are the same bits either way.
fn for_each_piece<T: Send>(
    pieces: &[(Vec<usize>, Policy)],
    two_at_once: bool,
    piece: impl Fn(&[usize], Policy) -> Result<(GradStore, T)> + Sync,
    mut take: impl FnMut(GradStore, T) -> Result<()>,
) -> Result<()> {
    let width = if two_at_once { 2 } else { 1 };
    for group in pieces.chunks(width) {
        let results = match group {
            [(a, pa), (b, pb)] => {
                let (ra, rb) = rayon::join(|| piece(a, *pa), || piece(b, *pb));
                vec![ra, rb]
            }
            _ => group.iter().map(|(batch, p)| piece(batch, *p)).collect(),
        };
        for result in results {
            let (grads, value) = result?;
            take(grads, value)?;
        }
    }
    Ok(())
}
