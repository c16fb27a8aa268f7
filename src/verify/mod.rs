//! Sandboxed execution of model-written Python verification functions.
//!
//! AutoIF's signal comes from running `evaluate(response) -> bool` functions that a model
//! wrote. They never run in this process: a [`Sandbox`] keeps a pool of confined
//! `python3` worker processes (see `confine` for the OS layers and `worker.py` for the
//! Python ones), sends them batches (one function, many inputs), enforces a wall-clock
//! deadline per call from here, replaces any worker that is killed or dies, and caches
//! verdicts by (sha256 of the function source, sha256 of the input). docs/verify.md
//! describes the layers and the measured throughput.

mod confine;
mod filesystem;
mod seccomp;
mod syscall;
mod verdict;
mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

pub use confine::Layers;
pub use verdict::{
    combined_pass_rates, function_runs, pass_rate, pass_rates, ErrorKind, Execute, Outcome, Verdict,
};

use confine::Limits;
use seccomp::Filters;
use worker::{BatchOutcome, Spawner, Worker, WorkerSetup};

/// Modules a verification function may import: text processing only. Optional ones
/// (`nltk`, `langdetect`, `emoji`, `syllapy`) count only where installed.
pub const DEFAULT_ALLOWED_MODULES: &[&str] = &[
    "re",
    "string",
    "json",
    "math",
    "cmath",
    "collections",
    "itertools",
    "functools",
    "unicodedata",
    "statistics",
    "textwrap",
    "datetime",
    "time",
    "calendar",
    "decimal",
    "fractions",
    "random",
    "heapq",
    "bisect",
    "copy",
    "difflib",
    "html",
    "keyword",
    "typing",
    "nltk",
    "langdetect",
    "emoji",
    "syllapy",
];

/// Hard CPU-time limit over a worker's life; it is replaced after half of it.
const WORKER_CPU_SECONDS: u64 = 3600;
/// Inputs per batch sent to one worker: large enough to amortise the round trip and the
/// fork of a fresh process per batch, small enough to spread one big job over the pool.
const MAX_BATCH_INPUTS: usize = 512;

#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// Number of worker processes (and of batches run in parallel).
    pub workers: usize,
    /// Wall-clock deadline of one `evaluate` call (and of loading a function).
    pub timeout: Duration,
    /// Address-space limit of each worker.
    pub memory_bytes: u64,
    /// The interpreter: a path, or a name looked up on PATH.
    pub python: PathBuf,
    /// Top-level modules the Python guard lets functions import.
    pub allowed_modules: Vec<String>,
    /// Characters one call may print before it fails.
    pub max_output_chars: usize,
    /// Verdicts kept in the cache; 0 turns caching and de-duplication off.
    pub cache_entries: usize,
    /// The Python-level guard (import allow-list, restricted builtins, source checks).
    /// Turning it off leaves only the OS layers: for testing those, never for real use.
    pub python_guard: bool,
    /// Run even when a confinement layer cannot be set up here (with a warning per
    /// missing layer) instead of refusing.
    pub allow_weaker_sandbox: bool,
    /// After a call times out, give the batch's inputs after it `timeout` without
    /// running them.
    pub skip_after_timeout: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            timeout: Duration::from_secs(2),
            memory_bytes: 1 << 30,
            python: PathBuf::from("python3"),
            allowed_modules: DEFAULT_ALLOWED_MODULES
                .iter()
                .map(|m| m.to_string())
                .collect(),
            max_output_chars: 1 << 20,
            cache_entries: 1 << 20,
            python_guard: true,
            allow_weaker_sandbox: false,
            skip_after_timeout: false,
        }
    }
}

/// One verification function and the inputs to run it on.
#[derive(Clone, Debug)]
pub struct FunctionRun {
    pub func: String,
    pub inputs: Vec<String>,
}

type CacheKey = ([u8; 32], [u8; 32]);

/// A pool of confined Python workers. Workers start with the sandbox, are replaced
/// when killed, and are killed when the sandbox is dropped.
pub struct Sandbox {
    // Declared before `spawner`: workers are killed before the spawner thread ends.
    slots: Vec<Mutex<Option<Worker>>>,
    spawner: Spawner,
    setup: Arc<WorkerSetup>,
    cache: Mutex<HashMap<CacheKey, Verdict>>,
    cache_entries: usize,
    skip_after_timeout: bool,
}

impl Sandbox {
    pub fn new(options: SandboxOptions) -> Result<Sandbox> {
        if options.workers == 0 {
            bail!("the verification sandbox needs at least one worker");
        }
        if options.timeout.is_zero() {
            bail!("the verification timeout must be positive");
        }
        let python = resolve_python(&options.python)?;
        let limits = Limits {
            memory_bytes: options.memory_bytes,
            cpu_seconds: WORKER_CPU_SECONDS,
            open_files: 64,
        };
        let filters = Filters::build();
        let (layers, problems) = confine::probe_layers(&python, limits, filters.as_ref());
        require_layers(&problems, options.allow_weaker_sandbox)?;
        let setup = Arc::new(WorkerSetup {
            python,
            layers,
            filters,
            limits,
            timeout: options.timeout,
            allowed_modules: options.allowed_modules,
            max_output_chars: options.max_output_chars,
            python_guard: options.python_guard,
        });
        let spawner = Spawner::new().context("starting the verification spawner thread")?;
        let slots = (0..options.workers).map(|_| Mutex::new(None)).collect();
        let sandbox = Sandbox {
            slots,
            spawner,
            setup,
            cache: Mutex::new(HashMap::new()),
            cache_entries: options.cache_entries,
            skip_after_timeout: options.skip_after_timeout,
        };
        // Start every worker now so a broken interpreter fails here, not mid-run.
        std::thread::scope(|scope| {
            let starts: Vec<_> = sandbox
                .slots
                .iter()
                .map(|slot| scope.spawn(|| sandbox.ensure_worker(&mut lock(slot)).map(|_| ())))
                .collect();
            starts
                .into_iter()
                .try_for_each(|start| start.join().map_err(|_| anyhow!("worker start panicked"))?)
        })?;
        Ok(sandbox)
    }

    /// The OS layers in force (all of them unless `allow_weaker_sandbox`).
    pub fn layers(&self) -> Layers {
        self.setup.layers
    }

    /// The interpreter the workers run.
    pub fn python(&self) -> &Path {
        &self.setup.python
    }

    /// Runs every job's function on each of its inputs; verdicts come back per job, in
    /// input order. Errors in the functions are verdicts; `Err` means the sandbox itself
    /// failed (for example python could not be started).
    pub fn run(&self, jobs: &[FunctionRun]) -> Result<Vec<Vec<Verdict>>> {
        let mut results: Vec<Vec<Option<Verdict>>> = jobs
            .iter()
            .map(|job| vec![None; job.inputs.len()])
            .collect();
        let batches = self.plan(jobs, &mut results);
        let next = AtomicUsize::new(0);
        let threads = self.slots.len().min(batches.len());
        let finished = std::thread::scope(|scope| {
            let handles: Vec<_> = self.slots[..threads]
                .iter()
                .map(|slot| {
                    let (batches, next) = (&batches, &next);
                    scope.spawn(move || -> Result<Vec<(usize, Vec<Verdict>)>> {
                        let mut worker = lock(slot);
                        let mut done = Vec::new();
                        loop {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            let Some(batch) = batches.get(index) else {
                                return Ok(done);
                            };
                            done.push((index, self.run_batch(&mut worker, batch)?));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .map_err(|_| anyhow!("verification thread panicked"))?
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let mut cache = lock(&self.cache);
        for (index, verdicts) in finished.into_iter().flatten() {
            let batch = &batches[index];
            for ((verdict, targets), key) in
                verdicts.into_iter().zip(&batch.targets).zip(&batch.keys)
            {
                for &(job, input) in targets {
                    results[job][input] = Some(verdict.clone());
                }
                if let Some(key) = key {
                    if cache.len() >= self.cache_entries {
                        cache.clear();
                    }
                    cache.insert(*key, verdict);
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|verdicts| {
                verdicts
                    .into_iter()
                    .map(|v| v.expect("every input is planned"))
                    .collect()
            })
            .collect())
    }

    /// Answers what the cache knows and groups the rest into batches, one function
    /// each; with caching on, an input repeated for the same function runs once.
    fn plan<'a>(
        &self,
        jobs: &'a [FunctionRun],
        results: &mut [Vec<Option<Verdict>>],
    ) -> Vec<Batch<'a>> {
        let caching = self.cache_entries > 0;
        let cache = lock(&self.cache);
        let mut batches: Vec<Batch> = Vec::new();
        let mut open_batch: HashMap<&str, usize> = HashMap::new();
        let mut planned: HashMap<CacheKey, (usize, usize)> = HashMap::new();
        for (job_index, job) in jobs.iter().enumerate() {
            let func_hash: Option<[u8; 32]> =
                caching.then(|| Sha256::digest(job.func.as_bytes()).into());
            for (input_index, input) in job.inputs.iter().enumerate() {
                let key = func_hash.map(|f| (f, Sha256::digest(input.as_bytes()).into()));
                if let Some(key) = &key {
                    if let Some(verdict) = cache.get(key) {
                        results[job_index][input_index] = Some(verdict.clone());
                        continue;
                    }
                    if let Some(&(batch, slot)) = planned.get(key) {
                        batches[batch].targets[slot].push((job_index, input_index));
                        continue;
                    }
                }
                let batch = match open_batch.get(job.func.as_str()) {
                    Some(&b) if batches[b].inputs.len() < MAX_BATCH_INPUTS => b,
                    _ => {
                        batches.push(Batch {
                            func: &job.func,
                            inputs: vec![],
                            targets: vec![],
                            keys: vec![],
                        });
                        open_batch.insert(&job.func, batches.len() - 1);
                        batches.len() - 1
                    }
                };
                let slots = &mut batches[batch];
                if let Some(key) = key {
                    planned.insert(key, (batch, slots.inputs.len()));
                }
                slots.inputs.push(input);
                slots.targets.push(vec![(job_index, input_index)]);
                slots.keys.push(key);
            }
        }
        batches
    }

    /// Runs one batch to completion on the slot's worker, replacing the worker after a
    /// kill or crash and resubmitting the inputs that did not get a verdict.
    fn run_batch(&self, slot: &mut Option<Worker>, batch: &Batch) -> Result<Vec<Verdict>> {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; batch.inputs.len()];
        let mut pending: Vec<usize> = (0..batch.inputs.len()).collect();
        let mut unstarted = 0;
        while !pending.is_empty() {
            let worker = self.ensure_worker(slot)?;
            let inputs: Vec<&str> = pending.iter().map(|&i| batch.inputs[i]).collect();
            match worker.run_batch(batch.func, &inputs)? {
                BatchOutcome::Done {
                    verdicts: done,
                    retire,
                } => {
                    for (position, verdict) in pending.drain(..).zip(done) {
                        verdicts[position] = Some(verdict);
                    }
                    if retire {
                        *slot = None;
                    }
                }
                BatchOutcome::Died { at, verdict } => {
                    *slot = None;
                    match at {
                        Some(at) => {
                            let timed_out = verdict.error_kind() == Some(ErrorKind::Timeout);
                            verdicts[pending.remove(at)] = Some(verdict);
                            if timed_out && self.skip_after_timeout {
                                let skipped = Verdict::error(
                                    ErrorKind::Timeout,
                                    "not run: an earlier input of this function timed out",
                                );
                                pending.drain(at..).for_each(|position| {
                                    verdicts[position] = Some(skipped.clone())
                                });
                            }
                        }
                        None => pending
                            .drain(..)
                            .for_each(|position| verdicts[position] = Some(verdict.clone())),
                    }
                }
                BatchOutcome::NotStarted => {
                    *slot = None;
                    unstarted += 1;
                    if unstarted > 2 {
                        bail!("python workers keep dying before they read a request");
                    }
                }
            }
        }
        Ok(verdicts
            .into_iter()
            .map(|v| v.expect("every input has a verdict"))
            .collect())
    }

    fn ensure_worker<'s>(&self, slot: &'s mut Option<Worker>) -> Result<&'s mut Worker> {
        if slot.is_none() {
            *slot = Some(Worker::start(&self.setup, &self.spawner)?);
        }
        Ok(slot.as_mut().expect("just started"))
    }
}

/// A unit of work for one worker: one function, deduplicated inputs, and where each
/// input's verdict goes.
struct Batch<'a> {
    func: &'a str,
    inputs: Vec<&'a str>,
    targets: Vec<Vec<(usize, usize)>>,
    keys: Vec<Option<CacheKey>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The interpreter's real path: asking python itself sees through launchers such as
/// pyenv shims, which cannot run inside the sandbox (they fork).
fn resolve_python(python: &Path) -> Result<PathBuf> {
    let output = std::process::Command::new(python)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (needed for the verification sandbox)",
                python.display()
            )
        })?;
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || path.is_empty() {
        bail!(
            "{} does not report its executable: {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(PathBuf::from(path))
}

/// Fails closed: one line naming the first layer that cannot be set up, unless the
/// caller allowed a weaker sandbox (then a warning per missing layer).
fn require_layers(problems: &[(&str, String)], allow_weaker: bool) -> Result<()> {
    if let Some((layer, reason)) = problems.first().filter(|_| !allow_weaker) {
        bail!(
            "verification sandbox: the {layer} layer cannot be set up here ({reason}); \
             refusing to run model-written code (--allow-weaker-sandbox runs it anyway, less contained)"
        );
    }
    for (layer, reason) in problems {
        tracing::warn!(
            "verification sandbox: RUNNING WITHOUT the {layer} layer ({reason}) because a weaker \
             sandbox was allowed; model-written code is less contained (see docs/verify.md)"
        );
    }
    Ok(())
}
