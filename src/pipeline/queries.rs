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
//! `hf://datasets/OWNER/NAME[/PATH]` names a `.json`/`.jsonl` file of a Hugging Face
//! dataset, resolved through the hub cache (`HF_HOME`; with `HF_HUB_OFFLINE` set only
//! the cache is used). Without a path the dataset must have exactly one such data file.
//!
//! With `compose.count` set, composed pairs follow: several instructions on one query
//! (see `compose`).
//!
//! Output `queries/pairs.jsonl`: `{id, instruction_id, query_id, instruction, query,
//! funcs}` (and `ifeval_types` when the instruction names some; composed pairs add
//! `parts`); `queries/rejected.jsonl`: `{query, reason}`.

use anyhow::{bail, Context, Result};
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::backtranslate;
use super::compose::{compose, ComposeConfig};
use super::funnel::{DropReason, FunnelRow};
use super::short_id;
use super::Pipeline;

use crate::generate::unit_seed;
use crate::io::parse_jsonl;

pub const STAGE: &str = "queries";
/// Every (query, instruction) pair with the instruction's functions.
pub const PAIRS_FILE: &str = "pairs.jsonl";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueriesConfig {
    /// Queries paired with each instruction (paper: 16).
    pub per_instruction: usize,
    /// Dotted path of the query text in each JSON record; empty: auto-detect (`query`,
    /// `prompt`, `instruction`, `text`, a string line, ShareGPT `conversations`,
    /// `messages`).
    pub field: String,
    /// Paper's filter: 20 < characters < 300.
    pub min_chars: usize,
    pub max_chars: usize,
    /// Pairs of several instructions at once (`compose.count`; none by default).
    pub compose: ComposeConfig,
}

impl Default for QueriesConfig {
    fn default() -> Self {
        Self {
            per_instruction: 16,
            field: String::new(),
            min_chars: 20,
            max_chars: 300,
            compose: ComposeConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryPair {
    pub id: String,
    pub instruction_id: String,
    pub query_id: String,
    pub instruction: String,
    pub query: String,
    /// The instruction's kept verification functions.
    pub funcs: Vec<String>,
    /// For a composed instruction, how many of `funcs` belong to each of its parts, in
    /// order (every part must be followed); empty for a single instruction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<usize>,
    /// The IFEval instruction ids the instruction corresponds to (its `ifeval_types`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ifeval_types: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rejected {
    query: String,
    reason: DropReason,
}

/// Reads the query texts of a file or a hub dataset file (see the module docs for the
/// layouts).
pub fn read_queries(path: &Path, field: &str) -> Result<Vec<String>> {
    let (path, name) = match path.to_str().and_then(|s| s.strip_prefix(HF_DATASETS)) {
        Some(rest) => hub_dataset_file(rest)?,
        None => (path.to_path_buf(), path.display().to_string()),
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("{name}: cannot read the query file"))?;
    let text = crate::io::text::decode_utf8(bytes, &name)?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let records: Vec<Value> = match extension {
        "jsonl" => parse_jsonl(&text, &name)?,
        "json" => {
            match crate::io::from_json_str(&text)
                .with_context(|| format!("{name}: not valid JSON"))?
            {
                Value::Array(items) => items,
                _ => bail!("{name}: expected a JSON array of records"),
            }
        }
        _ => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Value::String(l.to_string()))
            .collect(),
    };
    if records.is_empty() {
        bail!("{name}: no queries");
    }
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            query_text(r, field).with_context(|| {
                format!(
                    "{name} record {}: no query text{}",
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

const HF_DATASETS: &str = "hf://datasets/";

/// Dataset files that describe the data rather than hold it.
const METADATA_FILES: [&str; 4] = [
    "dataset_info.json",
    "dataset_infos.json",
    "dataset_dict.json",
    "state.json",
];

/// The local copy of `OWNER/NAME[/PATH]` of a hub dataset (cached, or downloaded into
/// the cache unless offline) and the `hf://` name errors give it.
fn hub_dataset_file(spec: &str) -> Result<(PathBuf, String)> {
    let mut parts = spec.splitn(3, '/');
    let (owner, name) = match (parts.next(), parts.next()) {
        (Some(o), Some(n)) if !o.is_empty() && !n.is_empty() => (o, n),
        _ => bail!("{HF_DATASETS}{spec}: expected {HF_DATASETS}OWNER/NAME[/PATH/IN/REPO]"),
    };
    let id = format!("{owner}/{name}");
    let dataset = format!("{HF_DATASETS}{id}");
    let cache = hf_hub::Cache::from_env();
    let repo = hf_hub::Repo::new(id.clone(), hf_hub::RepoType::Dataset);
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
    let file = match parts.next().filter(|f| !f.is_empty()) {
        Some(file) => {
            if !is_data_file(file) {
                bail!("{dataset}: {file}: only .json and .jsonl files can be read");
            }
            file.to_string()
        }
        None => {
            let files = if offline {
                cached_files(&cache, &repo).with_context(|| {
                    format!(
                        "{dataset}: not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
                        cache.path().display()
                    )
                })?
            } else {
                hub_api()?
                    .repo(repo.clone())
                    .info()
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "{dataset}: cannot list the dataset's files on the hub ({e}); \
                             set HF_HUB_OFFLINE=1 to use the cache"
                        )
                    })?
                    .siblings
                    .into_iter()
                    .map(|s| s.rfilename)
                    .collect()
            };
            single_data_file(&dataset, &files)?
        }
    };
    let shown = format!("{dataset}/{file}");
    if let Some(path) = cache.repo(repo.clone()).get(&file) {
        return Ok((path, shown));
    }
    if offline {
        bail!(
            "{dataset}: {file} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
            cache.path().display()
        );
    }
    let path = hub_api()?
        .repo(repo)
        .get(&file)
        .map_err(|e| anyhow::anyhow!("{dataset}: cannot download {file} from the hub ({e})"))?;
    Ok((path, shown))
}

fn hub_api() -> Result<hf_hub::api::sync::Api> {
    hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .context("cannot set up the Hugging Face hub client")
}

fn is_data_file(file: &str) -> bool {
    let base = file.rsplit('/').next().unwrap_or(file);
    (file.ends_with(".jsonl") || file.ends_with(".json"))
        && !METADATA_FILES.contains(&base)
        && !file.split('/').any(|part| part.starts_with('.'))
}

/// The one data file among a dataset's files, or an error listing the candidates.
fn single_data_file(dataset: &str, files: &[String]) -> Result<String> {
    let data: Vec<&String> = files.iter().filter(|f| is_data_file(f)).collect();
    match data.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!(
            "{dataset}: no .json or .jsonl data file in the dataset (files: {})",
            if files.is_empty() {
                "none".to_string()
            } else {
                files.join(", ")
            }
        ),
        many => bail!(
            "{dataset}: {} data files, name one as {dataset}/PATH: {}",
            many.len(),
            many.iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The files of the cached snapshot that `refs/main` points to, as repo paths.
fn cached_files(cache: &hf_hub::Cache, repo: &hf_hub::Repo) -> Result<Vec<String>> {
    let root = cache.path().join(repo.folder_name());
    let commit = std::fs::read_to_string(root.join("refs").join(repo.revision()))?;
    let snapshot = root.join("snapshots").join(commit.trim());
    let mut files = Vec::new();
    let mut folders = vec![snapshot.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            // `is_dir`/`is_file` follow the snapshot's symlinks into `blobs/`.
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.is_file() {
                let relative = path.strip_prefix(&snapshot).expect("under the snapshot");
                let parts: Vec<_> = relative.iter().map(|p| p.to_string_lossy()).collect();
                files.push(parts.join("/"));
            }
        }
    }
    files.sort();
    Ok(files)
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
) -> (Vec<String>, Vec<(String, DropReason)>, FunnelRow) {
    let mut row = FunnelRow::new(STAGE, "queries");
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    let mut rejected = Vec::new();
    for q in queries {
        let q = q.trim().to_string();
        let n = q.chars().count();
        let reason = if n <= cfg.min_chars {
            Some(DropReason::TooShort)
        } else if n >= cfg.max_chars {
            Some(DropReason::TooLong)
        } else if !seen.insert(q.clone()) {
            Some(DropReason::Duplicate)
        } else {
            None
        };
        match reason {
            Some(r) => {
                row.drop(r);
                rejected.push((q, r));
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
    let cfg = p.synthesis.queries.clone();
    let path = p.synthesis.queries_file.clone();
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
        let mut rng = ChaCha8Rng::seed_from_u64(unit_seed(p.seed, STAGE, &v.id));
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
                parts: Vec::new(),
                ifeval_types: v.ifeval_types.clone(),
            });
        }
    }
    let validated: Vec<_> = instructions.into_iter().map(|c| c.validated).collect();
    let (composed, composed_row) = compose(
        &validated,
        &kept,
        &cfg.compose,
        unit_seed(p.seed, STAGE, "compose"),
        &mut |jobs| p.execute(jobs),
    )?;
    pairs.extend(composed);
    let rejected: Vec<Rejected> = rejected
        .into_iter()
        .map(|(query, reason)| Rejected { query, reason })
        .collect();
    p.files.write_records(STAGE, PAIRS_FILE, &pairs)?;
    p.files.write_records(STAGE, "rejected.jsonl", &rejected)?;
    let mut rows = vec![queries_row, pairs_row];
    if cfg.compose.count > 0 {
        rows.push(composed_row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_files_of_a_dataset() {
        assert!(is_data_file("data/train.jsonl"));
        assert!(is_data_file("queries.json"));
        assert!(!is_data_file("data/train.parquet"));
        assert!(!is_data_file("train.jsonl.gz"));
        assert!(!is_data_file("dataset_infos.json"));
        assert!(!is_data_file(".cache/x.json"));
        let files = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            single_data_file("d", &files(&["README.md", "dataset_info.json", "q.jsonl"])).unwrap(),
            "q.jsonl"
        );
        let err = single_data_file("d", &files(&["README.md", "train.parquet"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "d: no .json or .jsonl data file in the dataset (files: README.md, train.parquet)"
        );
    }
}
