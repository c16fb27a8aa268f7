//! The `autoif` command line: one file per subcommand, each with its clap `Args` and a
//! `run` function.

mod bench;
mod common;
mod eval;
mod export;
mod generate;
mod logprobs;
mod plan;
mod run;
mod stage;
mod train;
mod verify;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "autoif",
    version,
    about = "AutoIF: self-play with execution feedback for instruction following"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample completions for prompts (text or JSON lines) with the local engine or an
    /// OpenAI-compatible server.
    Generate(generate::Args),
    /// Per-token log-probabilities of given (prompt, completion) pairs.
    Logprobs(logprobs::Args),
    /// Measure throughput.
    Bench(bench::Args),
    /// Run verification functions on inputs in the Python sandbox.
    Verify(verify::Args),
    /// Score a model or a file of responses on a benchmark (IFEval).
    Eval(eval::Args),
    /// Run the whole AutoIF loop into a run folder (new or resumed): IFEval before, data
    /// synthesis, SFT, DPO, online DPO, IFEval after, export.
    Run(run::Args),
    /// Run one synthesis stage of an existing run folder.
    Stage(stage::Args),
    /// Write a merged Hugging Face model folder or a PEFT adapter folder.
    Export(export::Args),
    /// Train a LoRA adapter in this process (SFT, DPO or online DPO).
    Train(train::Args),
    /// Estimate the GPU memory of a training configuration; refuse one that will not fit.
    Plan(plan::Args),
}

/// Runs the CLI and returns the process exit code. Errors print as one line per problem.
pub fn main() -> i32 {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AUTOIF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    // Temporary outputs are removed if the user interrupts (Ctrl-C) or the process is
    // terminated.
    if let Err(err) = crate::io::temporaries::remove_on_signal() {
        eprintln!("error: {err:#}");
        return 1;
    }
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Logprobs(args) => logprobs::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Run(args) => run::run(args),
        Command::Stage(args) => stage::run(args),
        Command::Export(args) => export::run(args),
        Command::Train(args) => train::run(args),
        Command::Plan(args) => plan::run(args),
    };
    match result {
        Ok(()) => 0,
        Err(err) => {
            // Several problems found together (a config's bad values) are one line each.
            for line in format!("{err:#}").lines() {
                eprintln!("error: {line}");
            }
            1
        }
    }
}
