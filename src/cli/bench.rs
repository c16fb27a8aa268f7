//! `autoif bench generate`: decode throughput of the local engine.

use super::common::ModelArgs;
use crate::generate::{Backend, EngineOptions, LocalEngine, Prompt, Request, SamplingParams};
use anyhow::Result;
use clap::{Args as ClapArgs, Subcommand};
use serde_json::json;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Samples `batch` completions of exactly `new-tokens` tokens (end-of-sequence
    /// suppressed) at temperature 0.8, top-p 0.95, and reports tokens/s.
    Generate(GenerateArgs),
}

#[derive(ClapArgs, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// Measure the projections with the weights as loaded instead of their int8 copies
    /// (see `autoif generate --exact`).
    #[arg(long)]
    pub exact: bool,
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Generate(a) => generate(a),
    }
}

fn generate(args: GenerateArgs) -> Result<()> {
    let model = args.model.load()?;
    let request = Request {
        prompt: Prompt::user("Write a short story about a robot who learns to paint."),
        n: args.batch,
        params: SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            max_new_tokens: args.new_tokens,
            min_new_tokens: args.new_tokens,
            ..SamplingParams::default()
        },
    };
    let precision = super::generate::precision(args.exact);
    let mut engine = LocalEngine::new(
        &model,
        EngineOptions {
            max_batch: args.batch,
            precision,
            progress: !args.json,
            ..EngineOptions::default()
        },
    );
    engine.generate(std::slice::from_ref(&request))?;
    let s = engine.stats();
    let decode_tokens = s.generated_tokens.saturating_sub(args.batch);
    let decode_s = (s.total_s - s.first_step_s).max(f64::EPSILON);
    let report = json!({
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "precision": format!("{precision:?}"),
        "ttft_s": s.first_step_s,
        "decode_tokens_per_s": decode_tokens as f64 / decode_s,
        "aggregate_tokens_per_s": s.generated_tokens as f64 / s.total_s,
        "total_s": s.total_s,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "batch {} × {} new tokens: {:.1} tok/s aggregate, {:.1} tok/s decode, first token after {:.3}s",
            args.batch,
            args.new_tokens,
            report["aggregate_tokens_per_s"].as_f64().unwrap(),
            report["decode_tokens_per_s"].as_f64().unwrap(),
            s.first_step_s
        );
    }
    Ok(())
}
