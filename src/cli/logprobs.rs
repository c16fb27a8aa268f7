//! `autoif logprobs`: per-token log-probabilities of given completions.

use super::common::{check_output_file, read_jsonl, write_jsonl, ModelArgs};
use crate::model::logprobs::completion_logprobs;
use crate::model::lora::Adapters;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use indicatif::ProgressBar;
use serde_json::json;
use std::path::PathBuf;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSON lines {"prompt": str, "completion": str}, both raw text (no chat template).
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSON lines: the input fields plus prompt_ids, completion_ids,
    /// token_logprobs and sum_logprob.
    #[arg(long)]
    pub out: PathBuf,
    /// Pairs scored in one forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

pub fn run(args: Args) -> Result<()> {
    check_output_file(&args.out)?;
    let lines = read_jsonl(&args.input)?;
    let mut texts = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let field = |name: &str| {
            line.get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .with_context(|| {
                    format!(
                        "{}:{}: missing string field `{name}`",
                        args.input.display(),
                        i + 1
                    )
                })
        };
        texts.push((field("prompt")?, field("completion")?));
    }
    let model = args.model.load()?;
    let tok = &model.tokenizer;
    let max_positions = model.decoder.max_positions();
    for (i, (p, c)) in texts.iter().enumerate() {
        let at_least = tok.min_tokens(p.len() + c.len());
        if at_least > max_positions {
            bail!(
                "{}:{}: prompt and completion are at least {at_least} tokens, more than the model's {max_positions} positions",
                args.input.display(),
                i + 1
            );
        }
    }
    // The prompt gets BOS when the tokenizer config asks for it; the completion never.
    let pairs = texts
        .iter()
        .map(|(p, c)| Ok((tok.encode(p)?, tok.encode_raw(c)?)))
        .collect::<Result<Vec<_>>>()?;
    let bar = ProgressBar::new(pairs.len() as u64);
    let mut out = Vec::with_capacity(pairs.len());
    for (chunk_index, chunk) in pairs.chunks(args.batch.max(1)).enumerate() {
        let scored =
            completion_logprobs(&model.decoder, chunk, Adapters::On).with_context(|| {
                format!(
                    "{}: batch starting at line {}",
                    args.input.display(),
                    chunk_index * args.batch.max(1) + 1
                )
            })?;
        for (k, logprobs) in scored.into_iter().enumerate() {
            let i = chunk_index * args.batch.max(1) + k;
            let values = logprobs.to_vec1::<f32>()?;
            let mut line = lines[i].clone();
            line["prompt_ids"] = json!(pairs[i].0);
            line["completion_ids"] = json!(pairs[i].1);
            line["sum_logprob"] = json!(values.iter().map(|&v| v as f64).sum::<f64>());
            line["token_logprobs"] = json!(values);
            out.push(line);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    write_jsonl(Some(&args.out), &out)
}
