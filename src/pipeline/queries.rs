//! Stage `queries`: pairs each surviving instruction with user queries from a file,
//! after the paper's length filter (20 < characters < 300) and de-duplication; each
//! instruction draws `per_instruction` queries with a seed fixed by its id.
//!
//! Query files: JSON Lines or a JSON array of records, or plain text (one query per
//! line). A record is a string, or an object whose query is at `queries.field` (dotted
//! path, e.g. `data.text` or `turns.0`) or, when that is empty, at `query`, `prompt`,
//! `instruction`, `question` or `text`, or the first user turn of ShareGPT
//! `conversations` or of `messages`.
//!
//! Output `queries/pairs.jsonl`: `{id, instruction_id, query_id, instruction, query,
//! funcs}`; `queries/rejected.jsonl`: `{query, reason}`.

use anyhow::{bail, Context, Result};
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

use super::backtranslate;
use super::funnel::FunnelRow;
use super::run_dir::{short_id, unit_seed};
use super::Pipeline;
use crate::config::QueriesConfig;

pub const STAGE: &str = "queries";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryPair {
    pub id: String,
    pub instruction_id: String,
    pub query_id: String,
    pub instruction: String,
    pub query: String,
    /// The instruction's kept verification functions.
    pub funcs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rejected {
    query: String,
    reason: String,
}

/// Reads the query texts of a file (see the module docs for the layouts).
pub fn read_queries(path: &Path, field: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the query file", path.display()))?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let records: Vec<Value> = match extension {
        "jsonl" => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))
            })
            .collect::<Result<_>>()?,
        "json" => match serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?
        {
            Value::Array(items) => items,
            _ => bail!("{}: expected a JSON array of records", path.display()),
        },
        _ => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Value::String(l.to_string()))
            .collect(),
    };
    if records.is_empty() {
        bail!("{}: no queries", path.display());
    }
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            query_text(r, field).with_context(|| {
                format!(
                    "{} record {}: no query text{}",
                    path.display(),
                    i + 1,
                    if field.is_empty() {
                        String::new()
                    } else {
                        format!(" at `{field}`")
                    }
                )
            })
        })
        .collect()
}

fn query_text(record: &Value, field: &str) -> Option<String> {
    if !field.is_empty() {
        let mut node = record;
        for part in field.split('.') {
            node = match part.parse::<usize>() {
                Ok(i) => node.get(i)?,
                Err(_) => node.get(part)?,
            };
        }
        return node.as_str().map(str::to_string);
    }
    if let Some(s) = record.as_str() {
        return Some(s.to_string());
    }
    for key in ["query", "prompt", "instruction", "question", "text"] {
        if let Some(s) = record.get(key).and_then(Value::as_str) {
            return Some(s.to_string());
        }
    }
    let first_user = |turns: &Value, role_key: &str, text_key: &str| -> Option<String> {
        turns.as_array()?.iter().find_map(|t| {
            let role = t.get(role_key)?.as_str()?;
            matches!(role, "human" | "user")
                .then(|| t.get(text_key)?.as_str().map(str::to_string))
                .flatten()
        })
    };
    if let Some(turns) = record.get("conversations") {
        return first_user(turns, "from", "value");
    }
    first_user(record.get("messages")?, "role", "content")
}

/// The paper's filter and de-duplication: kept queries and the funnel row.
pub fn filter_queries(
    queries: Vec<String>,
    cfg: &QueriesConfig,
) -> (Vec<String>, Vec<(String, String)>, FunnelRow) {
    let mut row = FunnelRow::new(STAGE, "queries");
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    let mut rejected = Vec::new();
    for q in queries {
        let q = q.trim().to_string();
        let n = q.chars().count();
        let reason = if n <= cfg.min_chars {
            Some("too_short")
        } else if n >= cfg.max_chars {
            Some("too_long")
        } else if !seen.insert(q.clone()) {
            Some("duplicate")
        } else {
            None
        };
        match reason {
            Some(r) => {
                row.drop(r);
                rejected.push((q, r.to_string()));
            }
            None => {
                row.keep();
                kept.push(q);
            }
        }
    }
    (kept, rejected, row)
}

pub fn run(p: &mut Pipeline) -> Result<Vec<FunnelRow>> {
    let cfg = p.config.synthesis.queries.clone();
    let path = p.config.synthesis.queries_file.clone();
    let queries = read_queries(&path, &cfg.field)?;
    let (kept, rejected, queries_row) = filter_queries(queries, &cfg);
    if kept.is_empty() {
        bail!(
            "{}: no query passes the length filter ({} < characters < {})",
            path.display(),
            cfg.min_chars,
            cfg.max_chars
        );
    }
    let instructions = backtranslate::kept_instructions(p)?;
    let mut pairs = Vec::new();
    let mut pairs_row = FunnelRow::new(STAGE, "pairs");
    for ins in &instructions {
        let v = &ins.validated;
        let mut rng = ChaCha8Rng::seed_from_u64(unit_seed(p.config.seed, STAGE, &v.id));
        for q in kept.choose_multiple(&mut rng, cfg.per_instruction.min(kept.len())) {
            let query_id = short_id("q", q);
            pairs_row.keep();
            pairs.push(QueryPair {
                id: format!("{}-{query_id}", v.id),
                instruction_id: v.id.clone(),
                query_id,
                instruction: v.instruction.clone(),
                query: q.clone(),
                funcs: v.funcs.iter().map(|f| f.source.clone()).collect(),
            });
        }
    }
    let rejected: Vec<Rejected> = rejected
        .into_iter()
        .map(|(query, reason)| Rejected { query, reason })
        .collect();
    p.run.write_records(STAGE, "pairs.jsonl", &pairs)?;
    p.run.write_records(STAGE, "rejected.jsonl", &rejected)?;
    Ok(vec![queries_row, pairs_row])
}
