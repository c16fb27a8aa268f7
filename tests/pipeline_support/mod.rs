//! Shared by the pipeline tests: the AutoIF sample data, a replay backend that answers
//! from recorded model outputs (falling back to another backend, e.g. the real engine,
//! for prompts it has no recording for), and run-folder helpers.
#![allow(dead_code)]

use anyhow::{bail, Result};
use autoif::config::RunConfig;
use autoif::generate::{Backend, Completion, FinishReason, Prompt, Request};
use serde_json::Value;
use std::path::Path;

pub const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/autoif");

/// What the pipeline tests' SKIP line gives as the reason they need python3.
pub const SANDBOX_NEEDS_PYTHON: Option<&str> = Some("the verification sandbox needs it");

/// The records of one AutoIF sample data file.
pub fn read_data(name: &str) -> Vec<Value> {
    crate::common::read_jsonl(&Path::new(DATA).join(name))
}

/// Answers a prompt that contains a recorded key with the recorded texts (sample i
/// gets text i); other prompts go to `fallback`.
pub struct Replay<'a> {
    pub recordings: Vec<(String, Vec<String>)>,
    pub fallback: Option<&'a mut dyn Backend>,
    pub replayed: usize,
    pub delegated: usize,
}

impl<'a> Replay<'a> {
    pub fn new(recordings: Vec<(String, Vec<String>)>) -> Self {
        Self {
            recordings,
            fallback: None,
            replayed: 0,
            delegated: 0,
        }
    }

    fn lookup(&self, prompt: &Prompt) -> Option<&Vec<String>> {
        let text = match prompt {
            Prompt::Chat(messages) => messages.last().map(|m| m.content.as_str()).unwrap_or(""),
            Prompt::Text(t) => t.as_str(),
        };
        self.recordings
            .iter()
            .filter(|(key, _)| text.contains(key.as_str()))
            .max_by_key(|(key, _)| key.len())
            .map(|(_, texts)| texts)
    }
}

impl Backend for Replay<'_> {
    fn generate(&mut self, requests: &[Request]) -> Result<Vec<Completion>> {
        let mut out: Vec<Option<Vec<Completion>>> = vec![None; requests.len()];
        let mut missing = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            match self.lookup(&request.prompt).cloned() {
                Some(texts) => {
                    if texts.len() < request.n {
                        bail!("only {} recorded answers, {} asked", texts.len(), request.n);
                    }
                    self.replayed += 1;
                    out[i] = Some(
                        (0..request.n)
                            .map(|k| Completion {
                                request_index: i,
                                sample_index: k,
                                text: texts[k].clone(),
                                token_ids: Vec::new(),
                                finish_reason: FinishReason::Stop,
                            })
                            .collect(),
                    );
                }
                None => missing.push(i),
            }
        }
        if !missing.is_empty() {
            let Some(fallback) = self.fallback.as_deref_mut() else {
                bail!("no recording for {} prompts", missing.len());
            };
            self.delegated += missing.len();
            let asked: Vec<Request> = missing.iter().map(|&i| requests[i].clone()).collect();
            let mut by_request: Vec<Vec<Completion>> = vec![Vec::new(); missing.len()];
            for mut c in fallback.generate(&asked)? {
                let slot = c.request_index;
                c.request_index = missing[slot];
                by_request[slot].push(c);
            }
            for (slot, completions) in by_request.into_iter().enumerate() {
                out[missing[slot]] = Some(completions);
            }
        }
        Ok(out.into_iter().flatten().flatten().collect())
    }
}

/// A config from TOML text (paths inside are relative to the crate root).
pub fn config(toml_text: &str) -> RunConfig {
    RunConfig::from_table(toml::from_str(toml_text).unwrap()).unwrap()
}
