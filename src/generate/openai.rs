//! The OpenAI-compatible HTTP backend: the same `Backend` the local engine implements,
//! served by vLLM, SGLang, the llama.cpp server or anything else that speaks
//! `/v1/completions` or `/v1/chat/completions`.
//!
//! Every sample is its own HTTP request with `n = 1` and `seed = params.seed + sample
//! index`: servers that accept `n > 1` draw all choices from one seed, so per-sample
//! requests are the only way to make sample `i` reproducible on its own, and a retried
//! request replaces exactly one sample. Up to `max_concurrency` requests are in flight
//! at once so the server's continuous batching has work to batch.

mod chat_format;
mod client;

pub use chat_format::ChatFormat;

use super::{Backend, Completion, Prompt, Request};
use anyhow::{bail, Result};
use client::{Client, Reply};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which OpenAI route generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/v1/completions` with the prompt rendered by our chat template, so data and
    /// training see the same text.
    Completions,
    /// `/v1/chat/completions`; the server applies its own template.
    Chat,
}

/// Where the server is and how to talk to it. Serde-ready so a run config can embed it
/// (e.g. as its `[supervisor]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The API root as OpenAI clients take it, e.g. `http://127.0.0.1:8000/v1`; the
    /// route (`/completions`, `/chat/completions`) is appended.
    pub base_url: String,
    /// The served model's name, sent as `model`.
    pub model: String,
    /// Name of the environment variable holding the API key; no key is sent when it is
    /// unset (local servers need none).
    pub api_key_env: String,
    pub endpoint: Endpoint,
    /// HTTP requests in flight at once.
    pub max_concurrency: usize,
    /// Seconds one HTTP request may take, connection to last byte.
    pub timeout_secs: f64,
    /// Further attempts after a 429, a 5xx, a timeout or a connection error.
    pub max_retries: u32,
    /// First retry delay; it doubles on every further attempt up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Extra fields merged into every request body, for server-specific options
    /// (llama.cpp's `repeat_penalty`, vLLM's `min_p`, ...).
    pub extra_body: Map<String, Value>,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            endpoint: Endpoint::Completions,
            max_concurrency: 32,
            timeout_secs: 600.0,
            max_retries: 8,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            extra_body: Map::new(),
        }
    }
}

/// Counters of the last `generate` call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpenAiStats {
    pub samples: usize,
    pub http_requests: usize,
    /// Attempts repeated after a retryable failure.
    pub retries: usize,
    /// Tokens the server reports it generated (`usage.completion_tokens`).
    pub completion_tokens: usize,
    pub seconds: f64,
}

pub struct OpenAiBackend {
    config: OpenAiConfig,
    client: Client,
    /// Renders chat prompts for the completions route, and tokenizes completions.
    format: Option<ChatFormat>,
    progress: bool,
    stats: OpenAiStats,
}

/// One HTTP request's worth of work: a sample of a request.
struct Job {
    request_index: usize,
    sample_index: usize,
    body: Value,
}

impl OpenAiBackend {
    /// Reads the API key from `config.api_key_env` now; it is only ever sent in the
    /// `Authorization` header, never logged.
    pub fn new(config: OpenAiConfig, format: Option<ChatFormat>) -> Result<Self> {
        if config.base_url.is_empty() {
            bail!("the OpenAI backend needs a base URL (e.g. http://127.0.0.1:8000/v1)");
        }
        if !(config.base_url.starts_with("http://") || config.base_url.starts_with("https://")) {
            bail!(
                "{}: the base URL must start with http:// or https://",
                config.base_url
            );
        }
        if config.model.is_empty() {
            bail!("the OpenAI backend needs the served model's name");
        }
        if config.max_concurrency == 0 {
            bail!("max_concurrency must be at least 1");
        }
        if !config.timeout_secs.is_finite() || config.timeout_secs <= 0.0 {
            bail!("timeout_secs must be a positive number of seconds");
        }
        let api_key = std::env::var(&config.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        if api_key.is_none() {
            tracing::debug!("${} is not set: sending no API key", config.api_key_env);
        }
        let client = Client::new(&config, api_key);
        Ok(Self {
            config,
            client,
            format,
            progress: false,
            stats: OpenAiStats::default(),
        })
    }

    /// Show a progress bar while generating.
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    pub fn stats(&self) -> OpenAiStats {
        self.stats
    }

    fn jobs(&self, requests: &[Request]) -> Result<Vec<Job>> {
        let mut jobs = Vec::new();
        for (r, req) in requests.iter().enumerate() {
            let base = self.request_body(r, req)?;
            for s in 0..req.n {
                let mut body = base.clone();
                body["seed"] = json!(req.params.seed.wrapping_add(s as u64));
                jobs.push(Job {
                    request_index: r,
                    sample_index: s,
                    body,
                });
            }
        }
        Ok(jobs)
    }

    /// The body shared by all samples of a request (the seed is set per sample).
    fn request_body(&self, index: usize, req: &Request) -> Result<Value> {
        let p = &req.params;
        let mut body = json!({
            "model": self.config.model,
            "n": 1,
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
        });
        match (self.config.endpoint, &req.prompt) {
            (Endpoint::Completions, Prompt::Text(text)) => body["prompt"] = json!(text),
            (Endpoint::Completions, Prompt::Chat(messages)) => {
                let format = self.format.as_ref().filter(|f| f.has_template());
                let Some(format) = format else {
                    bail!(
                        "request {index}: the completions endpoint renders chat prompts with \
                         the model's chat template; give a tokenizer that has one \
                         (or use the chat endpoint)"
                    );
                };
                body["prompt"] = json!(format.render(messages)?);
            }
            (Endpoint::Chat, Prompt::Chat(messages)) => body["messages"] = json!(messages),
            (Endpoint::Chat, Prompt::Text(_)) => {
                bail!("request {index}: a raw text prompt needs the completions endpoint, not chat")
            }
        }
        if !p.stop.is_empty() {
            body["stop"] = json!(p.stop);
        }
        // Sent only when they differ from "off": servers disagree on how to spell "off".
        if p.top_k > 0 {
            body["top_k"] = json!(p.top_k);
        }
        if p.repetition_penalty != 1.0 {
            body["repetition_penalty"] = json!(p.repetition_penalty);
        }
        if p.min_new_tokens > 0 {
            body["min_tokens"] = json!(p.min_new_tokens);
        }
        for (k, v) in &self.config.extra_body {
            body[k.as_str()] = v.clone();
        }
        Ok(body)
    }

    fn progress_bar(&self, total: usize) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "generating (server) {bar:30} {pos}/{len} [{elapsed_precise} < {eta}] {msg}",
            )
            .expect("valid progress template"),
        );
        bar
    }

    fn completion(&self, job: &Job, reply: Reply) -> Result<Completion> {
        let token_ids = match &self.format {
            Some(format) => format.encode(&reply.text)?,
            None => Vec::new(),
        };
        Ok(Completion {
            request_index: job.request_index,
            sample_index: job.sample_index,
            text: reply.text,
            token_ids,
            finish_reason: reply.finish_reason,
        })
    }
}

impl Backend for OpenAiBackend {
    fn generate(&mut self, requests: &[Request]) -> Result<Vec<Completion>> {
        let started = Instant::now();
        let jobs = self.jobs(requests)?;
        let bar = self.progress_bar(jobs.len());
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        let results: Mutex<Vec<Option<Reply>>> =
            Mutex::new((0..jobs.len()).map(|_| None).collect());
        let counters = client::Counters::default();
        let workers = self.config.max_concurrency.min(jobs.len());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        match self.client.send(&job.body, &counters, &failed) {
                            Ok(reply) => {
                                results.lock().unwrap()[i] = Some(reply);
                                bar.inc(1);
                            }
                            Err(err) => {
                                let err = err.context(format!(
                                    "request {} sample {}",
                                    job.request_index, job.sample_index
                                ));
                                first_error.lock().unwrap().get_or_insert(err);
                                failed.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        bar.finish_and_clear();
        self.stats = OpenAiStats {
            samples: jobs.len(),
            http_requests: counters.requests.load(Ordering::Relaxed),
            retries: counters.retries.load(Ordering::Relaxed),
            completion_tokens: counters.completion_tokens.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
        };
        if let Some(err) = first_error.into_inner().unwrap() {
            return Err(err);
        }
        let replies = results.into_inner().unwrap();
        jobs.iter()
            .zip(replies)
            .map(|(job, reply)| {
                let reply = reply.expect("every job either replied or failed the call");
                self.completion(job, reply)
            })
            .collect()
    }
}

/// The configured backoff before retry number `attempt` (1-based), before jitter.
fn backoff(config: &OpenAiConfig, attempt: u32) -> Duration {
    let ms = config
        .backoff_initial_ms
        .saturating_mul(1u64 << (attempt.saturating_sub(1)).min(20))
        .min(config.backoff_max_ms);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::SamplingParams;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = OpenAiConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            ..OpenAiConfig::default()
        };
        let ms: Vec<u128> = (1..=6).map(|a| backoff(&config, a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn config_reads_from_toml_like_json_with_defaults() {
        let config: OpenAiConfig = serde_json::from_value(json!({
            "base_url": "http://gpu-node:8000/v1",
            "model": "Qwen/Qwen2-72B-Instruct",
            "endpoint": "chat",
        }))
        .unwrap();
        assert_eq!(config.endpoint, Endpoint::Chat);
        assert_eq!(config.max_retries, OpenAiConfig::default().max_retries);
        let typo = serde_json::from_value::<OpenAiConfig>(json!({ "base_ulr": "x" }));
        assert!(typo.unwrap_err().to_string().contains("base_ulr"));
    }

    #[test]
    fn one_job_per_sample_with_its_own_seed() {
        let backend = OpenAiBackend::new(
            OpenAiConfig {
                model: "m".into(),
                ..OpenAiConfig::default()
            },
            None,
        )
        .unwrap();
        let requests = [
            Request {
                prompt: Prompt::Text("a".into()),
                n: 3,
                params: SamplingParams {
                    seed: 10,
                    top_k: 5,
                    ..SamplingParams::default()
                },
            },
            Request {
                prompt: Prompt::Text("b".into()),
                n: 1,
                params: SamplingParams::default(),
            },
        ];
        let jobs = backend.jobs(&requests).unwrap();
        let keys: Vec<_> = jobs
            .iter()
            .map(|j| {
                (
                    j.request_index,
                    j.sample_index,
                    j.body["seed"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(keys, [(0, 0, 10), (0, 1, 11), (0, 2, 12), (1, 0, 0)]);
        assert_eq!(jobs[0].body["top_k"], 5);
        assert!(jobs[3].body.get("top_k").is_none());
        assert_eq!(jobs[3].body["n"], 1);
    }
}
