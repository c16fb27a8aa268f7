//! Online DPO with verification rewards (the paper's on-policy stage). Each iteration:
//!
//! 1. fold the adapters trained so far into the weights, so the policy that samples is
//!    also the DPO reference of this iteration (no second model in memory);
//! 2. sample K responses per prompt at temperature 0.8 with the engine on those weights;
//! 3. run each prompt's verification functions on the responses in the sandbox; a
//!    response's reward is its pass rate;
//! 4. pair chosen (pass rate ≥ 0.5) with rejected (pass rate 0) by the paper's rule,
//!    leaving out blank responses and those cut by `max_new_tokens`
//!    (`is_preference_candidate`);
//! 5. train a fresh adapter with DPO on the pairs.
//!
//! Every iteration writes `iter-N/` (samples with pass rates, pairs, the adapter and its
//! `metrics.jsonl`) and then one line of `iterations.jsonl`. A rerun into the same folder
//! replays the finished iterations' adapters and goes on with the next one; sampling is
//! seeded per (iteration, prompt), so a redone iteration samples the same texts.

use super::adapters::merge_adapters;
use super::autoif_rules::{is_preference_candidate, mine_pairs, sft_prompt};
use super::data::{tokenize_preferences, PreferencePair};
use super::dpo::DpoConfig;
use super::job::TrainingJob;
use super::metrics::StepMetrics;
use super::trainer::{train, TrainingOptions};
use crate::generate::unit_seed;
use crate::generate::{
    Backend, EngineOptions, FinishReason, LocalEngine, Prompt, Request, SamplingParams,
};
use crate::io::{read_jsonl_if_exists, write_jsonl};
use crate::model::adapter_file::load_adapter;
use crate::model::chat_template::Message;
use crate::model::lora::Adapters;
use crate::model::Model;
use crate::validation::Problems;
use crate::verify::{combined_pass_rates, function_runs, Execute};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Online DPO settings (TRL's `OnlineDPOConfig` role).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineDpoConfig {
    /// How each iteration trains on its pairs.
    pub dpo: DpoConfig,
    pub iterations: usize,
    /// Responses sampled per prompt (K).
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// Chosen side: pass rate at or above this; rejected: pass rate 0.
    pub chosen_min_pass_rate: f64,
    /// Responses drawn per side when a side has two or more (the paper's rule).
    pub per_side: usize,
    /// Prompts drawn (seeded, without replacement) per iteration; 0: all of them.
    pub prompts_per_iteration: usize,
    /// Sequences the engine decodes together.
    pub batch: usize,
}

impl Default for OnlineDpoConfig {
    /// One epoch over each iteration's fresh pairs (they are on-policy only once);
    /// temperature 0.8 as the paper.
    fn default() -> Self {
        let mut dpo = DpoConfig::default();
        dpo.args.epochs = 1;
        Self {
            dpo,
            iterations: 2,
            samples: 4,
            temperature: 0.8,
            top_p: 1.0,
            max_new_tokens: 512,
            chosen_min_pass_rate: 0.5,
            per_side: 2,
            prompts_per_iteration: 0,
            batch: 16,
        }
    }
}

impl OnlineDpoConfig {
    /// The DPO settings' problems under `dpo`, and the sampling's and pairing's own.
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        p.nest("dpo", self.dpo.problems());
        p.at_least("iterations", self.iterations, 1);
        p.at_least("samples", self.samples, 2);
        p.non_negative("temperature", f64::from(self.temperature));
        p.check(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p",
            self.top_p,
            "must be in (0, 1]",
        );
        p.at_least("max_new_tokens", self.max_new_tokens, 1);
        p.check(
            self.chosen_min_pass_rate > 0.0 && self.chosen_min_pass_rate <= 1.0,
            "chosen_min_pass_rate",
            self.chosen_min_pass_rate,
            "must be in (0, 1] (rejected responses have pass rate 0)",
        );
        p.at_least("per_side", self.per_side, 1);
        p.at_least("batch", self.batch, 1);
        p
    }
}

/// A prompt with the verification functions of its instruction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifiedPrompt {
    pub id: String,
    pub prompt: String,
    pub funcs: Vec<String>,
    /// How many of `funcs` belong to each instruction of a composed prompt (all must
    /// be followed: the weakest one's rate counts); empty for one instruction.
    pub parts: Vec<usize>,
}

/// What one iteration did (a line of `iterations.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationReport {
    pub iteration: usize,
    pub prompts: usize,
    pub samples: usize,
    /// Samples cut by `max_new_tokens`: graded, but never a side of a pair.
    #[serde(default)]
    pub truncated: usize,
    /// Mean pass rate of the sampled responses: the policy's reward before this
    /// iteration's update.
    pub mean_pass_rate: f64,
    /// Share of responses at or above the chosen threshold.
    pub chosen_share: f64,
    pub pairs: usize,
    /// Means over the iteration's optimizer steps; absent when no pair was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(rename = "rewards/accuracies", skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(rename = "rewards/margins", skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    pub seconds: f64,
}

/// Where the run goes and how it reports.
#[derive(Debug, Clone)]
pub struct OnlineOptions {
    pub out: PathBuf,
    /// Recorded as `base_model_name_or_path` in each iteration's adapter config.
    pub base_model: String,
    pub progress: bool,
    /// Stop after this many iterations as if interrupted (tests of resume).
    pub stop_after: Option<usize>,
}

impl OnlineOptions {
    /// A run into `out` that continues after its last finished iteration, with progress
    /// shown.
    pub fn new(out: &Path, base_model: &str) -> Self {
        Self {
            out: out.to_path_buf(),
            base_model: base_model.to_string(),
            progress: true,
            stop_after: None,
        }
    }
}

/// One line per finished iteration, in `OnlineOptions::out`.
pub const ITERATIONS_FILE: &str = "iterations.jsonl";

/// Runs the iterations not yet recorded in `options.out`. On return the last iteration's
/// adapter is attached (not merged), like after `train`.
pub fn run_online_dpo(
    model: &mut Model,
    prompts: &[VerifiedPrompt],
    config: &OnlineDpoConfig,
    execute: &mut Execute,
    options: &OnlineOptions,
) -> Result<Vec<IterationReport>> {
    validate(config, prompts)?;
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("{}: cannot create folder", options.out.display()))?;
    let mut reports = read_iterations(&options.out)?;
    if reports.len() > config.iterations {
        bail!(
            "{}: records {} iterations, more than the {} asked for",
            options.out.join(ITERATIONS_FILE).display(),
            reports.len(),
            config.iterations
        );
    }
    // Replay the finished iterations: each adapter was trained on the weights with the
    // earlier ones merged.
    for report in &reports {
        merge_adapters(&mut model.decoder)?;
        if report.pairs > 0 {
            load_adapter(
                &mut model.decoder,
                &iteration_dir(&options.out, report.iteration),
            )?;
        }
    }
    let last = options
        .stop_after
        .map_or(config.iterations, |s| s.min(config.iterations));
    for iteration in reports.len() + 1..=last {
        let report = run_iteration(model, prompts, config, execute, options, iteration)?;
        if options.progress {
            eprintln!(
                "online DPO iteration {iteration}/{}: mean pass rate {:.3}, {} pairs{}",
                config.iterations,
                report.mean_pass_rate,
                report.pairs,
                report
                    .loss
                    .map(|l| format!(", loss {l:.4}"))
                    .unwrap_or_default()
            );
        }
        reports.push(report);
        write_iterations(&options.out, &reports)?;
    }
    Ok(reports)
}

fn validate(config: &OnlineDpoConfig, prompts: &[VerifiedPrompt]) -> Result<()> {
    config.problems().into_result()?;
    if prompts.is_empty() {
        bail!("online DPO has no prompts");
    }
    if let Some(p) = prompts.iter().find(|p| p.funcs.is_empty()) {
        bail!("online DPO prompt {} has no verification function", p.id);
    }
    Ok(())
}

/// The folder of one iteration's samples, pairs and adapter inside `out`.
pub fn iteration_dir(out: &Path, iteration: usize) -> PathBuf {
    out.join(format!("iter-{iteration}"))
}

/// The prompts of one iteration: all, or a seeded draw without replacement.
fn select_prompts<'p>(
    prompts: &'p [VerifiedPrompt],
    config: &OnlineDpoConfig,
    iteration: usize,
) -> Vec<&'p VerifiedPrompt> {
    let mut chosen: Vec<&VerifiedPrompt> = prompts.iter().collect();
    let n = config.prompts_per_iteration;
    if n > 0 && n < prompts.len() {
        let key = format!("select-{iteration}");
        let mut rng =
            ChaCha8Rng::seed_from_u64(unit_seed(config.dpo.args.seed, "online_dpo", &key));
        chosen.shuffle(&mut rng);
        chosen.truncate(n);
    }
    chosen
}

#[derive(Serialize)]
struct SampleRecord<'a> {
    prompt_id: &'a str,
    sample: usize,
    response: &'a str,
    finish_reason: FinishReason,
    pass_rate: f64,
}

fn run_iteration(
    model: &mut Model,
    prompts: &[VerifiedPrompt],
    config: &OnlineDpoConfig,
    execute: &mut Execute,
    options: &OnlineOptions,
    iteration: usize,
) -> Result<IterationReport> {
    let started = Instant::now();
    let dir = iteration_dir(&options.out, iteration);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    merge_adapters(&mut model.decoder)?;
    let selected = select_prompts(prompts, config, iteration);
    let stage = format!("online_dpo-{iteration}");
    let seed = config.dpo.args.seed;

    let Sampled {
        texts: responses,
        finish_reasons,
    } = sample(model, &selected, config, seed, &stage, options.progress)?;
    let rates = score(&selected, &responses, execute)?;

    let mut samples = Vec::new();
    let mut pairs = Vec::new();
    for (((p, texts), finished), rates) in selected
        .iter()
        .zip(&responses)
        .zip(&finish_reasons)
        .zip(&rates)
    {
        let candidates: Vec<(String, f64)> = texts
            .iter()
            .zip(finished)
            .zip(rates)
            .filter(|((t, &f), _)| is_preference_candidate(t, f))
            .map(|((t, _), &r)| (t.clone(), r))
            .collect();
        for (k, ((t, &f), &r)) in texts.iter().zip(finished).zip(rates).enumerate() {
            samples.push(SampleRecord {
                prompt_id: &p.id,
                sample: k,
                response: t,
                finish_reason: f,
                pass_rate: r,
            });
        }
        let mined = mine_pairs(
            &candidates,
            config.chosen_min_pass_rate,
            config.per_side,
            unit_seed(seed, &stage, &p.id),
        );
        pairs.extend(mined.into_iter().map(|(chosen, rejected)| PreferencePair {
            prompt: vec![Message::new("user", p.prompt.clone())],
            chosen,
            rejected,
        }));
    }
    write_jsonl(&dir.join("samples.jsonl"), &samples)?;
    let pair_lines: Vec<Value> = pairs
        .iter()
        .map(|p| json!({"prompt": p.prompt[0].content, "chosen": p.chosen, "rejected": p.rejected}))
        .collect();
    write_jsonl(&dir.join("pairs.jsonl"), &pair_lines)?;

    let all_rates: Vec<f64> = rates.iter().flatten().copied().collect();
    let mut report = IterationReport {
        iteration,
        prompts: selected.len(),
        samples: all_rates.len(),
        truncated: finish_reasons
            .iter()
            .flatten()
            .filter(|&&f| f == FinishReason::Length)
            .count(),
        mean_pass_rate: mean(&all_rates),
        chosen_share: all_rates
            .iter()
            .filter(|&&r| r >= config.chosen_min_pass_rate)
            .count() as f64
            / all_rates.len().max(1) as f64,
        pairs: 0,
        loss: None,
        accuracy: None,
        margin: None,
        seconds: 0.0,
    };
    let (tokenized, _) = tokenize_preferences(model, &pairs, config.dpo.args.max_len)?;
    if !tokenized.is_empty() {
        let mut dpo = config.dpo.clone();
        // A fresh adapter per iteration, initialised differently each time.
        dpo.args.seed = seed.wrapping_add(iteration as u64);
        let outcome = train(
            &mut model.decoder,
            &TrainingJob::Dpo {
                pairs: &tokenized,
                config: &dpo,
            },
            &TrainingOptions {
                progress: options.progress,
                ..TrainingOptions::new(&dir, &options.base_model)
            },
        )?;
        // Means over the steps; a non-finite value (null in metrics.jsonl) is left out.
        let step_mean = |value: &dyn Fn(&StepMetrics) -> Option<f64>| -> Option<f64> {
            let values: Vec<f64> = outcome
                .metrics
                .iter()
                .filter_map(value)
                .filter(|v| v.is_finite())
                .collect();
            (!values.is_empty()).then(|| mean(&values))
        };
        report.pairs = tokenized.len();
        report.loss = step_mean(&|m| Some(m.loss));
        report.accuracy = step_mean(&|m| m.dpo.as_ref().map(|d| d.accuracy));
        report.margin = step_mean(&|m| m.dpo.as_ref().map(|d| d.margin));
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// An iteration's responses, K per prompt, and why each ended.
struct Sampled {
    texts: Vec<Vec<String>>,
    finish_reasons: Vec<Vec<FinishReason>>,
}

/// K responses per prompt from the live weights, seeded per (iteration, prompt).
fn sample(
    model: &Model,
    prompts: &[&VerifiedPrompt],
    config: &OnlineDpoConfig,
    seed: u64,
    stage: &str,
    progress: bool,
) -> Result<Sampled> {
    let requests: Vec<Request> = prompts
        .iter()
        .map(|p| Request {
            prompt: Prompt::user(p.prompt.clone()),
            n: config.samples,
            params: SamplingParams {
                temperature: config.temperature,
                top_p: config.top_p,
                max_new_tokens: config.max_new_tokens,
                seed: unit_seed(seed, stage, &p.id),
                ..SamplingParams::default()
            },
        })
        .collect();
    let mut engine = LocalEngine::new(
        model,
        EngineOptions {
            max_batch: config.batch,
            adapters: Adapters::On,
            progress,
            ..EngineOptions::default()
        },
    );
    let mut texts = vec![vec![String::new(); config.samples]; prompts.len()];
    let mut finish_reasons = vec![vec![FinishReason::Stop; config.samples]; prompts.len()];
    for c in engine.generate(&requests)? {
        texts[c.request_index][c.sample_index] = c.text;
        finish_reasons[c.request_index][c.sample_index] = c.finish_reason;
    }
    Ok(Sampled {
        texts,
        finish_reasons,
    })
}

/// Pass rate of every response over its prompt's functions.
fn score(
    prompts: &[&VerifiedPrompt],
    responses: &[Vec<String>],
    execute: &mut Execute,
) -> Result<Vec<Vec<f64>>> {
    let groups: Vec<(&[String], &[usize], &[String])> = prompts
        .iter()
        .zip(responses)
        .map(|(p, texts)| (p.funcs.as_slice(), p.parts.as_slice(), texts.as_slice()))
        .collect();
    combined_pass_rates(&groups, execute)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The iteration records of an online DPO folder (none when it has not started).
pub fn read_iterations(out: &Path) -> Result<Vec<IterationReport>> {
    Ok(read_jsonl_if_exists(&out.join(ITERATIONS_FILE))?.unwrap_or_default())
}

fn write_iterations(out: &Path, reports: &[IterationReport]) -> Result<()> {
    write_jsonl(&out.join(ITERATIONS_FILE), reports)
}

/// Reads prompts with their functions: JSON Lines (or a JSON array) of
/// `{"prompt", "funcs"}` records (`parts` for a composed prompt), or the pipeline's
/// `queries/pairs.jsonl`
/// (`{"id", "instruction", "query", "funcs"}`, assembled into the paper's training
/// prompt). `funcs` holds sources or `{"source": ...}` objects.
pub fn read_verified_prompts(path: &Path) -> Result<Vec<VerifiedPrompt>> {
    let records = super::data::read_records(path)?;
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let bad = |what: &str| anyhow::anyhow!("{}: record {}: {what}", path.display(), i + 1);
        let prompt = match (
            r["prompt"].as_str(),
            r["query"].as_str(),
            r["instruction"].as_str(),
        ) {
            (Some(p), _, _) => p.to_string(),
            (None, Some(q), Some(ins)) => sft_prompt(q, ins),
            _ => return Err(bad("needs `prompt`, or `query` and `instruction`")),
        };
        let funcs = r["funcs"]
            .as_array()
            .ok_or_else(|| bad("needs a `funcs` list"))?
            .iter()
            .map(|f| {
                f.as_str()
                    .or_else(|| f["source"].as_str())
                    .map(String::from)
            })
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| bad("`funcs` holds something other than sources"))?;
        if funcs.is_empty() {
            return Err(bad("`funcs` is empty"));
        }
        let parts: Vec<usize> = match r.get("parts") {
            None => Vec::new(),
            Some(parts) => serde_json::from_value(parts.clone())
                .map_err(|_| bad("`parts` is not a list of counts"))?,
        };
        function_runs(&funcs, &parts).map_err(|e| bad(&e.to_string()))?;
        let id = r["id"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("p{}", i + 1));
        out.push(VerifiedPrompt {
            id,
            prompt,
            funcs,
            parts,
        });
    }
    Ok(out)
}
