//! Text generation: the request and completion types every backend shares, the
//! `Backend` trait the pipeline stages call, and the local batched engine.

pub mod engine;
pub mod openai;
pub mod sampler;
pub mod seed;
pub mod stop;

pub use engine::{EngineOptions, LocalEngine};
pub use seed::unit_seed;

use crate::model::chat_template::Message;
use serde::{Deserialize, Serialize};

/// How to pick the next token and when to stop. One per request, so every request in a
/// batch can sample differently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass; 1.0 disables it.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    /// CTRL-style penalty on tokens already in the prompt or completion; 1.0 disables it.
    pub repetition_penalty: f32,
    pub max_new_tokens: usize,
    /// End-of-sequence tokens are suppressed until this many tokens were generated
    /// (benchmarks use it to force fixed-length completions).
    pub min_new_tokens: usize,
    /// Sample `i` of a request draws from `seed + i`, so a request gives the same text
    /// whatever else shares its batch.
    pub seed: u64,
    /// Generation ends when the decoded text contains one of these; it is cut before it.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            max_new_tokens: 256,
            min_new_tokens: 0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

/// A prompt either as chat messages (rendered with the model's chat template) or as raw
/// text passed to the tokenizer as it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat(Vec<Message>),
    Text(String),
}

impl Prompt {
    /// A single user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Prompt::Chat(vec![Message::new("user", content)])
    }
}

/// One prompt to sample `n` completions for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub prompt: Prompt,
    pub n: usize,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string ended it.
    Stop,
    /// `max_new_tokens` (or the context) ran out first.
    Length,
}

/// One sampled completion. Backends return them ordered by (request, sample).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub request_index: usize,
    pub sample_index: usize,
    pub text: String,
    /// Generated token ids, without the prompt or the end-of-sequence token. When a stop
    /// string ended the completion they run through the token that completed it, while
    /// `text` is cut before the stop string.
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
}

/// Anything that can turn requests into completions: the local engine, or a remote
/// OpenAI-compatible server.
pub trait Backend {
    /// Returns `sum(request.n)` completions ordered by (request index, sample index).
    fn generate(&mut self, requests: &[Request]) -> anyhow::Result<Vec<Completion>>;
}
