//! One sample over HTTP: POST the body, retry what a healthy server would answer on a
//! later try (429, 5xx, timeouts, dropped connections) with exponential backoff, and
//! read the single choice out of the reply.

use super::{backoff, Endpoint, OpenAiConfig};
use crate::generate::FinishReason;
use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Bodies of error replies are quoted up to this many characters.
const EXCERPT_CHARS: usize = 300;

/// Shared by the workers of one `generate` call.
#[derive(Default)]
pub(super) struct Counters {
    pub requests: AtomicUsize,
    pub retries: AtomicUsize,
    pub completion_tokens: AtomicUsize,
}

/// What the server generated for one sample.
pub(super) struct Reply {
    pub text: String,
    pub finish_reason: FinishReason,
}

pub(super) struct Client {
    agent: ureq::Agent,
    url: String,
    endpoint: Endpoint,
    /// Only ever written into the Authorization header.
    api_key: Option<String>,
    config: OpenAiConfig,
}

enum Failure {
    /// Worth another try after a pause; `retry_after` is the server's own hint.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    Permanent(anyhow::Error),
}

impl Client {
    pub fn new(config: &OpenAiConfig, api_key: Option<String>) -> Self {
        let route = match config.endpoint {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat/completions",
        };
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs_f64(config.timeout_secs))
            .max_idle_connections_per_host(config.max_concurrency)
            .build();
        Self {
            agent,
            url: format!("{}/{route}", config.base_url.trim_end_matches('/')),
            endpoint: config.endpoint,
            api_key,
            config: config.clone(),
        }
    }

    /// Sends `body` until it succeeds, fails for good, retries run out, or `cancelled`
    /// is set (another sample failed, so the call's result is an error anyway).
    pub fn send(&self, body: &Value, counters: &Counters, cancelled: &AtomicBool) -> Result<Reply> {
        let payload = body.to_string();
        let mut retries = 0;
        loop {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            let (reason, retry_after) = match self.attempt(&payload) {
                Ok((reply, tokens)) => {
                    counters
                        .completion_tokens
                        .fetch_add(tokens, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(Failure::Permanent(err)) => return Err(err),
                Err(Failure::Transient {
                    reason,
                    retry_after,
                }) => (reason, retry_after),
            };
            if retries >= self.config.max_retries {
                bail!(
                    "POST {}: gave up after {} attempts, last: {reason}",
                    self.url,
                    retries + 1
                );
            }
            if cancelled.load(Ordering::Relaxed) {
                bail!("POST {}: abandoned after another sample failed", self.url);
            }
            retries += 1;
            counters.retries.fetch_add(1, Ordering::Relaxed);
            let delay = match retry_after {
                Some(hint) => hint.min(Duration::from_millis(self.config.backoff_max_ms)),
                // Jitter keeps many workers from retrying in lockstep.
                None => backoff(&self.config, retries).mul_f64(0.5 + rand::random::<f64>() / 2.0),
            };
            tracing::debug!("POST {}: {reason}; retry {retries} in {delay:?}", self.url);
            std::thread::sleep(delay);
        }
    }

    fn attempt(&self, payload: &str) -> Result<(Reply, usize), Failure> {
        let mut request = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let text = match request.send_string(payload) {
            Ok(response) => response.into_string().map_err(|err| Failure::Transient {
                reason: format!("reply cut off: {err}"),
                retry_after: None,
            })?,
            Err(ureq::Error::Status(code, response)) => {
                let retry_after = response
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64);
                let reason = format!(
                    "HTTP {code}: {}",
                    excerpt(&response.into_string().unwrap_or_default())
                );
                return Err(if code == 408 || code == 429 || code >= 500 {
                    Failure::Transient {
                        reason,
                        retry_after,
                    }
                } else {
                    Failure::Permanent(anyhow!("POST {}: {reason}", self.url))
                });
            }
            Err(ureq::Error::Transport(err)) => {
                return Err(Failure::Transient {
                    reason: one_line(&err.to_string()),
                    retry_after: None,
                })
            }
        };
        self.parse(&text)
            .map_err(|err| Failure::Permanent(anyhow!("POST {}: {err}", self.url)))
    }

    /// The one choice of a reply, and the completion tokens the server counted.
    fn parse(&self, text: &str) -> Result<(Reply, usize)> {
        let reply: Value = serde_json::from_str(text)
            .map_err(|_| anyhow!("reply is not JSON: {}", excerpt(text)))?;
        let choices = reply["choices"]
            .as_array()
            .ok_or_else(|| anyhow!("reply has no `choices` list: {}", excerpt(text)))?;
        let [choice] = choices.as_slice() else {
            bail!("expected 1 choice for n = 1, got {}", choices.len());
        };
        let content = match self.endpoint {
            Endpoint::Completions => &choice["text"],
            Endpoint::Chat => &choice["message"]["content"],
        };
        let text = match content {
            Value::String(s) => s.clone(),
            // Chat servers send null content for an empty message.
            Value::Null if self.endpoint == Endpoint::Chat => String::new(),
            other => bail!(
                "choice text is not a string: {}",
                excerpt(&other.to_string())
            ),
        };
        let finish_reason = match choice["finish_reason"].as_str() {
            Some("length") => FinishReason::Length,
            _ => FinishReason::Stop,
        };
        let tokens = reply["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize;
        Ok((
            Reply {
                text,
                finish_reason,
            },
            tokens,
        ))
    }
}

/// A server's error body as one short line: its `error.message` when it has one.
fn excerpt(body: &str) -> String {
    let message = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        match &v["error"] {
            Value::String(s) => Some(s.clone()),
            e => e["message"].as_str().map(str::to_owned),
        }
        .or_else(|| v["detail"].as_str().map(str::to_owned))
    });
    let line = one_line(message.as_deref().unwrap_or(body));
    match line.char_indices().nth(EXCERPT_CHARS) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_excerpts_prefer_the_message_and_stay_on_one_line() {
        assert_eq!(
            excerpt(r#"{"error": {"message": "model\n not found", "code": 404}}"#),
            "model not found"
        );
        assert_eq!(
            excerpt("<html>\nBad gateway</html>"),
            "<html> Bad gateway</html>"
        );
        assert_eq!(excerpt(&"x".repeat(1000)).len(), EXCERPT_CHARS + 3);
    }
}
