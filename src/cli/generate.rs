//! `autoif generate`: prompts in, completions out as JSON lines.

use super::common::{check_output_file, read_jsonl, write_jsonl, ModelArgs};
use crate::generate::openai::{ChatFormat, Endpoint, OpenAiBackend, OpenAiConfig};
use crate::generate::{
    Backend, Completion, EngineOptions, LocalEngine, Prompt, Request, SamplingParams,
};
use crate::model::chat_template::Message;
use crate::model::ops::quant::Precision;
use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, ValueEnum};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One prompt.
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    pub prompt: Option<String>,
    /// A file of prompts: JSON lines (a string, {"prompt": str} or {"messages": [...]})
    /// or, for any other extension, one prompt per non-empty line.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Completions per prompt.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub n: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sample i of a prompt uses seed + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// A system message for chat prompts.
    #[arg(long)]
    pub system: Option<String>,
    /// Pass prompts to the tokenizer as they are, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Compute with the weights as loaded. By default the CPU runs f32 projections
    /// through int8 copies of the weights (several times faster, slightly different
    /// numbers).
    #[arg(long)]
    pub exact: bool,
    /// Write JSON lines here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where completions come from: the local engine, or an OpenAI-compatible server
    /// (vLLM, SGLang, llama.cpp) where --model is the served model's name.
    #[arg(long, value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Local,
    Openai,
}

/// How to reach an OpenAI-compatible server (`--backend openai`).
#[derive(ClapArgs, Debug)]
pub struct ServerArgs {
    /// The server's API root, e.g. http://127.0.0.1:8000/v1.
    #[arg(long)]
    pub base_url: Option<String>,
    /// Environment variable holding the API key (none is sent when it is unset).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Use /v1/chat/completions (the server applies its chat template) instead of
    /// /v1/completions with prompts rendered by our copy of the model's template.
    #[arg(long)]
    pub chat_completions: bool,
    /// Tokenizer and chat template of the served model: a hub id, a folder or a .gguf
    /// file. Default: --model when it is a local path.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// HTTP requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub max_concurrency: usize,
    /// Seconds one HTTP request may take.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// Retries of a request after a 429, a 5xx, a timeout or a connection error.
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
}

pub fn run(args: Args) -> Result<()> {
    if args.n == 0 {
        bail!("-n must be at least 1");
    }
    if let Some(out) = &args.out {
        check_output_file(out)?;
    }
    let texts = match (&args.prompt, &args.prompts) {
        (Some(p), _) => vec![PromptInput::Text(p.clone())],
        (None, Some(path)) => read_prompts(path)?,
        (None, None) => bail!("pass --prompt TEXT or --prompts FILE"),
    };
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        repetition_penalty: args.repetition_penalty,
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: 0,
        seed: args.seed,
        stop: args.stop.clone(),
    };
    let requests: Vec<Request> = texts
        .into_iter()
        .map(|p| Request {
            prompt: p.into_prompt(args.raw, args.system.as_deref()),
            n: args.n,
            params: params.clone(),
        })
        .collect();
    let started = std::time::Instant::now();
    let completions = match args.backend {
        BackendKind::Local => generate_local(&args, &requests)?,
        BackendKind::Openai => generate_remote(&args, &requests)?,
    };
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "{} samples in {seconds:.2}s ({:.2} samples/s)",
        completions.len(),
        completions.len() as f64 / seconds
    );
    let lines: Vec<_> = completions
        .iter()
        .map(|c| {
            json!({
                "prompt_index": c.request_index,
                "sample_index": c.sample_index,
                "text": c.text,
                "num_tokens": c.token_ids.len(),
                "finish_reason": c.finish_reason,
            })
        })
        .collect();
    write_jsonl(args.out.as_deref(), &lines)
}

fn generate_local(args: &Args, requests: &[Request]) -> Result<Vec<Completion>> {
    let model = args.model.load()?;
    let mut engine = LocalEngine::new(
        &model,
        EngineOptions {
            max_batch: args.batch,
            precision: precision(args.exact),
            ..EngineOptions::default()
        },
    );
    engine.generate(requests)
}

/// `--exact` as the engine's precision.
pub(super) fn precision(exact: bool) -> Precision {
    if exact {
        Precision::Exact
    } else {
        Precision::Int8
    }
}

fn generate_remote(args: &Args, requests: &[Request]) -> Result<Vec<Completion>> {
    let server = &args.server;
    let base_url = server
        .base_url
        .clone()
        .context("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")?;
    let tokenizer = server
        .tokenizer
        .clone()
        .or_else(|| Some(args.model.model.clone()).filter(|m| std::path::Path::new(m).exists()));
    let format = tokenizer.as_deref().map(ChatFormat::load).transpose()?;
    let config = OpenAiConfig {
        base_url,
        model: args.model.model.clone(),
        api_key_env: server.api_key_env.clone(),
        endpoint: if server.chat_completions {
            Endpoint::Chat
        } else {
            Endpoint::Completions
        },
        max_concurrency: server.max_concurrency,
        timeout_secs: server.timeout,
        max_retries: server.max_retries,
        ..OpenAiConfig::default()
    };
    let mut backend = OpenAiBackend::new(config, format)?.with_progress(true);
    let completions = backend.generate(requests)?;
    let stats = backend.stats();
    tracing::info!(
        "{} HTTP requests ({} retries), {} completion tokens by the server's count",
        stats.http_requests,
        stats.retries,
        stats.completion_tokens
    );
    Ok(completions)
}

enum PromptInput {
    Text(String),
    Messages(Vec<Message>),
}

impl PromptInput {
    fn into_prompt(self, raw: bool, system: Option<&str>) -> Prompt {
        match self {
            PromptInput::Text(t) if raw => Prompt::Text(t),
            PromptInput::Text(t) => {
                let mut messages: Vec<Message> = system
                    .map(|s| Message::new("system", s))
                    .into_iter()
                    .collect();
                messages.push(Message::new("user", t));
                Prompt::Chat(messages)
            }
            PromptInput::Messages(m) => Prompt::Chat(m),
        }
    }
}

fn read_prompts(path: &Path) -> Result<Vec<PromptInput>> {
    if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
        let text = crate::io::read_text(path)?;
        let prompts: Vec<_> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| PromptInput::Text(l.to_string()))
            .collect();
        if prompts.is_empty() {
            bail!("{}: no prompts", path.display());
        }
        return Ok(prompts);
    }
    read_jsonl(path)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = || format!("{}:{}", path.display(), i + 1);
            match v {
                serde_json::Value::String(s) => Ok(PromptInput::Text(s)),
                serde_json::Value::Object(ref o)
                    if o.get("prompt").is_some_and(|p| p.is_string()) =>
                {
                    Ok(PromptInput::Text(o["prompt"].as_str().unwrap().to_string()))
                }
                serde_json::Value::Object(ref o) if o.contains_key("messages") => {
                    let messages: Vec<Message> = serde_json::from_value(o["messages"].clone())
                        .with_context(|| {
                            format!("{}: `messages` must be a list of {{role, content}}", at())
                        })?;
                    Ok(PromptInput::Messages(messages))
                }
                _ => bail!(
                    "{}: expected a string, {{\"prompt\": str}} or {{\"messages\": [...]}}",
                    at()
                ),
            }
        })
        .collect()
}
