//! `autoif eval`: benchmarks. `autoif eval ifeval` scores a model, or a file of responses,
//! on IFEval with the reference evaluator's strict and loose rules and writes its outputs;
//! `autoif eval compare` sets two such outputs side by side with the paired significance
//! of the change.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{ArgGroup, Subcommand};

use super::common::check_output_folder;
use crate::eval::ifeval::compare::Comparison;
use crate::eval::ifeval::results::{generate_responses, write_results, Decoding};
use crate::eval::ifeval::scoring::Evaluation;
use crate::eval::ifeval::{evaluate, load_input_data, load_responses, Prompt, Summary};
use crate::model::kv_cache::HostPrecision;
use crate::model::{LoadOptions, Model};
use crate::pipeline::crossval::read_verified_instructions;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    benchmark: Benchmark,
}

#[derive(Subcommand)]
enum Benchmark {
    /// IFEval: prompt- and instruction-level accuracy, strict and loose, as Google's
    /// reference evaluator computes them.
    Ifeval(IfevalArgs),
    /// Two IFEval outputs of the same prompts (folders written by `autoif eval ifeval`, or a
    /// run's ifeval_before/ and ifeval_after/) side by side: the accuracies, every
    /// instruction type, and the prompts gained and lost with the exact McNemar p-value.
    Compare(CompareArgs),
}

#[derive(clap::Args)]
struct CompareArgs {
    /// The first evaluation's folder (holding eval_results_{strict,loose}.jsonl).
    before: PathBuf,
    /// The second evaluation's folder.
    after: PathBuf,
    /// Verified instructions the model was trained on (JSON lines with `ifeval_types`):
    /// splits the per-type table into the IFEval types they cover and the rest.
    #[arg(long)]
    instructions: Option<PathBuf>,
    /// Print the comparison as one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(group(ArgGroup::new("source").required(true).args(["model", "responses"])))]
struct IfevalArgs {
    /// Generate the responses with this model: a hub id, a local Hugging Face folder, or a .gguf file.
    #[arg(long)]
    model: Option<String>,
    /// A LoRA adapter folder to apply to --model.
    #[arg(long, requires = "model")]
    adapter: Option<PathBuf>,
    /// Score existing responses instead: JSON lines of {"prompt", "response"}, matched to
    /// the prompts by their exact text.
    #[arg(long, conflicts_with = "model")]
    responses: Option<PathBuf>,
    /// The IFEval prompts: input_data.jsonl (google-research/instruction_following_eval) or
    /// ifeval_input_data.jsonl (the google/IFEval data set).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Score only the first N prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// Most tokens generated per response (greedy decoding); 1280 is what
    /// lm-evaluation-harness's IFEval task uses.
    #[arg(long, default_value_t = 1280)]
    max_new_tokens: usize,
    /// Prompts decoded together when generating (continuous batching). 128 was the fastest
    /// on a 2-core CPU with the f16 cache (docs/benchmarks.md); the KV cache grows with it.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// How the KV cache keeps keys and values on the CPU: f16 halves what attention
    /// reads (on all 541 prompts 6–13% faster, 18 responses differ, no prompt's verdict);
    /// f32 gives the responses of versions before 2026-12-04 byte for byte.
    #[arg(long, default_value = "f16")]
    kv_cache: HostPrecision,
    /// Folder for responses.jsonl, eval_results_{strict,loose}.jsonl and summary.json.
    #[arg(long, default_value = "ifeval-results")]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    match args.benchmark {
        Benchmark::Ifeval(args) => run_ifeval(args),
        Benchmark::Compare(args) => run_compare(args),
    }
}

fn run_compare(args: CompareArgs) -> Result<()> {
    let types: Option<BTreeSet<String>> = match &args.instructions {
        Some(path) => Some(
            read_verified_instructions(path)?
                .into_iter()
                .flat_map(|v| v.ifeval_types)
                .collect(),
        ),
        None => None,
    };
    let mut comparison = Comparison::of_folders(&args.before, &args.after)?;
    if let Some(types) = &types {
        comparison = comparison.with_training_types(types);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print!("{}", comparison.table());
    }
    Ok(())
}

/// Generates the responses with `model` (and its adapter).
fn generate_with(args: &IfevalArgs, model: &str, prompts: &[Prompt]) -> Result<Vec<String>> {
    let mut model = Model::load(model, &LoadOptions::auto()?)?;
    if let Some(dir) = &args.adapter {
        crate::model::adapter_file::load_adapter(&mut model.decoder, dir)?;
    }
    let decoding = Decoding {
        max_new_tokens: args.max_new_tokens,
        batch: args.batch,
        kv_cache: args.kv_cache,
    };
    generate_responses(&model, prompts, decoding)
}

fn run_ifeval(args: IfevalArgs) -> Result<()> {
    check_output_folder(&args.out)?;
    let Some(data) = &args.data else {
        bail!(
            "no --data given and the Hugging Face hub is not reachable from here: pass --data with IFEval's \
             prompts, e.g. --data input_data.jsonl (data/input_data.jsonl of google-research/instruction_following_eval, \
             or ifeval_input_data.jsonl of the google/IFEval data set)"
        );
    };
    let prompts = load_input_data(data)?;
    let limit = args.limit.unwrap_or(prompts.len());
    if limit == 0 {
        bail!("--limit must be at least 1");
    }
    if let Some(adapter) = &args.adapter {
        if !adapter.is_dir() {
            bail!(
                "{}: --adapter must be a LoRA adapter folder",
                adapter.display()
            );
        }
    }

    let (prompts, responses) = match (&args.responses, &args.model) {
        (Some(path), _) => match_responses(prompts, limit, path, data)?,
        (None, Some(model)) => {
            let mut prompts = prompts;
            prompts.truncate(limit);
            let responses = generate_with(&args, model, &prompts)?;
            if responses.len() != prompts.len() {
                bail!(
                    "generation returned {} responses for {} prompts",
                    responses.len(),
                    prompts.len()
                );
            }
            (prompts, responses)
        }
        (None, None) => unreachable!("clap requires --model or --responses"),
    };

    let started = std::time::Instant::now();
    let texts: Vec<&str> = responses.iter().map(String::as_str).collect();
    let evaluation = evaluate(&prompts, &texts);
    let summary = Summary::new(&evaluation);
    tracing::info!(
        "scored {} responses in {:.3}s",
        texts.len(),
        started.elapsed().as_secs_f64()
    );

    write_outputs(&args, data, &prompts, &responses, &evaluation, &summary)?;
    print!("{}", summary.table());
    println!("\nwrote {}", args.out.display());
    Ok(())
}

/// The first `limit` prompts that have a response in `path`, with their responses, in
/// data order. A response to a prompt that is not in the data is an error (wrong data file).
fn match_responses(
    prompts: Vec<Prompt>,
    limit: usize,
    path: &Path,
    data: &Path,
) -> Result<(Vec<Prompt>, Vec<String>)> {
    let responses = load_responses(path)?;
    let known: HashSet<&str> = prompts.iter().map(|p| p.prompt.as_str()).collect();
    if let Some(unknown) = responses
        .iter()
        .find(|r| !known.contains(r.prompt.as_str()))
    {
        let start: String = unknown.prompt.chars().take(60).collect();
        bail!(
            "{}: the prompt {start:?}... is not in {}",
            path.display(),
            data.display()
        );
    }
    let mut by_prompt: HashMap<String, String> = responses
        .into_iter()
        .map(|r| (r.prompt, r.response))
        .collect();
    let selected = prompts.len().min(limit);
    let (matched, responses): (Vec<Prompt>, Vec<String>) = prompts
        .into_iter()
        .take(selected)
        .filter_map(|prompt| {
            by_prompt
                .remove(&prompt.prompt)
                .map(|response| (prompt, response))
        })
        .unzip();
    if matched.is_empty() {
        bail!(
            "{}: none of the {selected} prompts selected from {} has a response",
            path.display(),
            data.display()
        );
    }
    if matched.len() < selected {
        eprintln!(
            "note: {} of {selected} prompts have no response in {}; scoring the other {}",
            selected - matched.len(),
            path.display(),
            matched.len()
        );
    }
    Ok((matched, responses))
}

/// Writes the evaluator's files with what was scored and how.
fn write_outputs(
    args: &IfevalArgs,
    data: &Path,
    prompts: &[Prompt],
    responses: &[String],
    evaluation: &Evaluation,
    summary: &Summary,
) -> Result<()> {
    let mut json = serde_json::Map::new();
    json.insert("data".into(), data.display().to_string().into());
    match (&args.responses, &args.model) {
        (Some(path), _) => {
            json.insert("responses".into(), path.display().to_string().into());
        }
        (None, model) => {
            json.insert("model".into(), model.clone().into());
            json.insert(
                "adapter".into(),
                args.adapter
                    .as_ref()
                    .map(|a| a.display().to_string())
                    .into(),
            );
            json.insert("max_new_tokens".into(), args.max_new_tokens.into());
        }
    }
    json.insert("limit".into(), args.limit.into());
    write_results(&args.out, prompts, responses, evaluation, summary, json)
}
