//! `autoif verify`: verification functions × inputs → verdicts, through the sandbox.
//!
//! Input lines `{"id": str, "func": str, "inputs": [str, ...]}`; output lines
//! `{"id": str, "results": [{"verdict", "error", "message"}, ...]}` in input order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::common::check_output_file;
use crate::io::{from_json_str, AtomicWriter};
use crate::verify::{FunctionRun, Outcome, Sandbox, SandboxOptions, Verdict};

/// Jobs handed to the sandbox at once: enough to keep every worker busy, few enough
/// that output is written and progress shown as the run goes.
const JOBS_PER_CHUNK: usize = 2048;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// JSON lines {"id": str, "func": str, "inputs": [str, ...]}.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the verdicts (JSON lines, one per input line, same order).
    #[arg(long)]
    pub out: PathBuf,
    /// Wall-clock deadline of one evaluate call, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Worker processes [default: number of CPUs].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Address-space limit per worker, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory_mb: u64,
    /// The Python interpreter to run the functions with.
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    /// Run every (function, input) pair even when it repeats (for benchmarks).
    #[arg(long)]
    pub no_cache: bool,
    /// Run even when a sandbox layer (namespaces, file-system view, seccomp) cannot be
    /// set up here, with a warning per missing layer, instead of refusing.
    #[arg(long)]
    pub allow_weaker_sandbox: bool,
    /// After a call times out, give the rest of that function's batch `timeout`
    /// without running it.
    #[arg(long)]
    pub skip_after_timeout: bool,
}

#[derive(Deserialize)]
struct Request {
    id: String,
    func: String,
    inputs: Vec<String>,
}

#[derive(Serialize)]
struct Response<'a> {
    id: &'a str,
    results: &'a [Verdict],
}

pub fn run(args: Args) -> Result<()> {
    if args.timeout_ms == 0 {
        bail!("--timeout-ms must be positive");
    }
    check_output_file(&args.out)?;
    let input = File::open(&args.input)
        .with_context(|| format!("{}: cannot open", args.input.display()))?;
    let input_bytes = input.metadata().map(|m| m.len()).unwrap_or(0);
    let defaults = SandboxOptions::default();
    let sandbox = Sandbox::new(SandboxOptions {
        workers: args.workers.unwrap_or(defaults.workers),
        timeout: Duration::from_millis(args.timeout_ms),
        memory_bytes: args.memory_mb << 20,
        python: args.python.clone(),
        cache_entries: if args.no_cache {
            0
        } else {
            defaults.cache_entries
        },
        allow_weaker_sandbox: args.allow_weaker_sandbox,
        skip_after_timeout: args.skip_after_timeout,
        ..defaults
    })?;
    let started = Instant::now();
    let mut output = AtomicWriter::create(&args.out)?;
    let progress = ProgressBar::new(input_bytes).with_style(
        ProgressStyle::with_template(
            "verify {bar:30} {percent:>3}% {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("valid template"),
    );
    let mut tally = Tally::default();
    let mut lines = BufReader::new(input);
    let mut chunk: Vec<(String, FunctionRun)> = Vec::new();
    let mut line_number = 0;
    let mut requests = 0;
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        let read = lines
            .read_until(b'\n', &mut bytes)
            .with_context(|| format!("{}: cannot read", args.input.display()))?;
        if read > 0 {
            line_number += 1;
            progress.inc(read as u64);
            let line = std::str::from_utf8(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{}:{line_number}: not valid UTF-8 (byte {} of the line)",
                    args.input.display(),
                    e.valid_up_to() + 1
                )
            })?;
            if !line.trim().is_empty() {
                let request: Request = from_json_str(line).with_context(|| {
                    format!(
                        "{}:{line_number}: not a verify request {{\"id\", \"func\", \"inputs\"}}",
                        args.input.display()
                    )
                })?;
                chunk.push((
                    request.id,
                    FunctionRun {
                        func: request.func,
                        inputs: request.inputs,
                    },
                ));
                requests += 1;
            }
        }
        if chunk.len() >= JOBS_PER_CHUNK || (read == 0 && !chunk.is_empty()) {
            let jobs: Vec<FunctionRun> = chunk.iter().map(|(_, job)| job.clone()).collect();
            let verdicts = sandbox.run(&jobs)?;
            for ((id, _), results) in chunk.iter().zip(&verdicts) {
                tally.add(results);
                output.write_line(&Response { id, results })?;
            }
            chunk.clear();
            progress.set_message(format!("{} evals", tally.evals));
        }
        if read == 0 {
            break;
        }
    }
    if requests == 0 {
        bail!("{}: no input lines", args.input.display());
    }
    output.commit()?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "verified {} functions, {} evals in {seconds:.2}s ({:.0} evals/s): {}; wrote {}",
        tally.functions,
        tally.evals,
        tally.evals as f64 / seconds.max(1e-9),
        tally.summary(),
        args.out.display()
    );
    Ok(())
}

#[derive(Default)]
struct Tally {
    functions: usize,
    evals: usize,
    outcomes: BTreeMap<&'static str, usize>,
}

impl Tally {
    fn add(&mut self, verdicts: &[Verdict]) {
        self.functions += 1;
        self.evals += verdicts.len();
        for verdict in verdicts {
            let name = match verdict.outcome {
                Outcome::Pass => "pass",
                Outcome::Fail => "fail",
                Outcome::Error(kind) => kind.as_str(),
            };
            *self.outcomes.entry(name).or_default() += 1;
        }
    }

    fn summary(&self) -> String {
        let parts: Vec<String> = self
            .outcomes
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        if parts.is_empty() {
            "no inputs".to_string()
        } else {
            parts.join(", ")
        }
    }
}
