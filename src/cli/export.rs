//! `autoif export merged|peft`: a merged Hugging Face model folder, or a PEFT adapter
//! folder re-saved after checking it against its base model.

use super::common::ModelArgs;
use crate::export::{save_merged, StagingDir};
use crate::model::adapter_file::{load_adapter, save_adapter};
use crate::model::Model;
use anyhow::{bail, Result};
use candle_core::DType;
use clap::{Args as ClapArgs, Subcommand};
use std::path::{Path, PathBuf};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Merge a LoRA adapter into its base and write a Hugging Face model folder
    /// (model.safetensors, config.json, tokenizer files, chat template).
    Merged(MergedArgs),
    /// Check a PEFT adapter folder (e.g. a training checkpoint's) against its base model
    /// and write it again as adapter_config.json + adapter_model.safetensors.
    Peft(PeftArgs),
}

#[derive(ClapArgs, Debug)]
pub struct MergedArgs {
    /// The base model, and with --adapter the PEFT adapter folder to merge into it;
    /// without an adapter the base is exported as it is (a GGUF base becomes a Hugging
    /// Face folder).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder; must not exist or be empty.
    #[arg(long)]
    pub out: PathBuf,
    /// Weight precision on disk: auto keeps the compute dtype (f32 on the CPU).
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "bf16", "f16"])]
    pub dtype: String,
}

#[derive(ClapArgs, Debug)]
pub struct PeftArgs {
    /// The base model and the adapter folder (--adapter, required) to check against it.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder; must not exist or be empty.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Merged(args) => merged(args),
        What::Peft(args) => peft(args),
    }
}

fn merged(args: MergedArgs) -> Result<()> {
    check_output(&args.out)?;
    let model = args.model.load()?;
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => model.decoder.dtype(),
    };
    save_merged(&model, &args.out, dtype)?;
    eprintln!(
        "wrote {} ({}, {} LoRA projections merged, {dtype:?})",
        args.out.display(),
        model.name,
        count_adapters(&model)
    );
    Ok(())
}

fn peft(args: PeftArgs) -> Result<()> {
    let Some(adapter) = args.model.adapter.clone() else {
        bail!("export peft needs --adapter DIR, the adapter folder to check and re-save");
    };
    check_output(&args.out)?;
    let mut model = ModelArgs {
        adapter: None,
        ..args.model.clone()
    }
    .load()?;
    let config = load_adapter(&mut model.decoder, &adapter)?;
    let staging = StagingDir::new(&args.out)?;
    save_adapter(&model.decoder, &config, &model.name, staging.path())?;
    staging.commit()?;
    eprintln!(
        "wrote {} ({} LoRA projections, r = {}, alpha = {}, base {})",
        args.out.display(),
        count_adapters(&model),
        config.r,
        config.lora_alpha,
        model.name
    );
    Ok(())
}

/// Fails before the model is loaded, not after minutes of work.
fn check_output(out: &Path) -> Result<()> {
    let non_empty = out.is_file()
        || (out.is_dir() && std::fs::read_dir(out).map_or(true, |mut d| d.next().is_some()));
    if non_empty {
        bail!(
            "{}: already exists and is not an empty folder; choose another --out or remove it",
            out.display()
        );
    }
    Ok(())
}

fn count_adapters(model: &Model) -> usize {
    model
        .decoder
        .linear_layers()
        .iter()
        .filter(|(_, layer)| layer.adapter().is_some())
        .count()
}
