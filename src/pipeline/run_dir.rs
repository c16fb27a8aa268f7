//! The run folder: `manifest.json` (resolved config, model identity, stage states,
//! funnel counts, timings, versions), one folder per stage, atomic writes, and keyed
//! part files that make every stage resumable.
//!
//! A stage splits its work into units with stable keys, processes them in fixed chunks
//! and writes each finished chunk to `STAGE/parts/NNNNN.jsonl` by temp file + rename, so
//! a part file exists completely or not at all. A resumed stage reuses the parts it
//! finds and computes the rest; generation seeds depend only on the unit key, so the
//! result equals an uninterrupted run. `parts/plan.json` fingerprints the unit keys: a
//! changed input discards stale parts.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use super::funnel::FunnelRow;
use crate::config::RunConfig;
use crate::io::write_atomic;

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Pending,
    Running,
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub state: StageState,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Wall time of the last (possibly resumed) execution.
    pub seconds: Option<f64>,
    pub funnel: Vec<FunnelRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub autoif_version: String,
    pub created_at: String,
    /// The fully resolved configuration (defaults filled in).
    pub config: RunConfig,
    /// Identity of the supervision model: what was asked for and a file fingerprint.
    pub model: Value,
    pub stages: Vec<StageRecord>,
}

#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl RunDir {
    /// Creates a new run folder (it must not exist or be empty) with a fresh manifest.
    pub fn create(root: &Path, config: &RunConfig, model: Value, stages: &[&str]) -> Result<Self> {
        if root.join(MANIFEST).exists() {
            bail!(
                "{}: already holds a run (use --resume to continue it)",
                root.display()
            );
        }
        if root.is_dir() && std::fs::read_dir(root)?.next().is_some() {
            bail!("{}: exists and is not empty", root.display());
        }
        std::fs::create_dir_all(root)
            .with_context(|| format!("{}: cannot create folder", root.display()))?;
        let run = RunDir {
            root: root.to_path_buf(),
        };
        let manifest = Manifest {
            autoif_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at: now(),
            config: config.clone(),
            model,
            stages: stages
                .iter()
                .map(|name| StageRecord {
                    name: name.to_string(),
                    state: StageState::Pending,
                    started_at: None,
                    finished_at: None,
                    seconds: None,
                    funnel: Vec::new(),
                })
                .collect(),
        };
        run.save(&manifest)?;
        Ok(run)
    }

    pub fn open(root: &Path) -> Result<Self> {
        let run = RunDir {
            root: root.to_path_buf(),
        };
        run.manifest()?;
        Ok(run)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> Result<Manifest> {
        let path = self.root.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read (not a run folder?)", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid run manifest", path.display()))
    }

    fn save(&self, manifest: &Manifest) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(manifest)?;
        write_atomic(&self.root.join(MANIFEST), &bytes)
    }

    fn update_stage(&self, stage: &str, change: impl FnOnce(&mut StageRecord)) -> Result<()> {
        let mut manifest = self.manifest()?;
        let record = manifest
            .stages
            .iter_mut()
            .find(|s| s.name == stage)
            .with_context(|| format!("stage {stage} is not part of this run"))?;
        change(record);
        self.save(&manifest)
    }

    pub fn mark_running(&self, stage: &str) -> Result<()> {
        self.update_stage(stage, |r| {
            r.state = StageState::Running;
            r.started_at = Some(now());
            r.finished_at = None;
        })
    }

    pub fn mark_done(&self, stage: &str, funnel: Vec<FunnelRow>, seconds: f64) -> Result<()> {
        self.update_stage(stage, |r| {
            r.state = StageState::Done;
            r.finished_at = Some(now());
            r.seconds = Some(seconds);
            r.funnel = funnel;
        })
    }

    /// Marks `stage` and every later stage pending and removes their folders, so their
    /// outputs are recomputed from the (new) input.
    pub fn reset_from(&self, stage: &str) -> Result<()> {
        let mut manifest = self.manifest()?;
        let start = manifest
            .stages
            .iter()
            .position(|s| s.name == stage)
            .with_context(|| format!("stage {stage} is not part of this run"))?;
        for record in &mut manifest.stages[start..] {
            let dir = self.root.join(&record.name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("{}: cannot remove", dir.display()))?;
            }
            record.state = StageState::Pending;
            record.started_at = None;
            record.finished_at = None;
            record.seconds = None;
            record.funnel.clear();
        }
        self.save(&manifest)
    }

    pub fn stage_dir(&self, stage: &str) -> PathBuf {
        self.root.join(stage)
    }

    pub fn path(&self, stage: &str, file: &str) -> PathBuf {
        self.stage_dir(stage).join(file)
    }

    /// Writes records as JSON lines to `STAGE/FILE`, atomically.
    pub fn write_records<T: Serialize>(
        &self,
        stage: &str,
        file: &str,
        records: &[T],
    ) -> Result<()> {
        let mut buf = Vec::new();
        for record in records {
            serde_json::to_writer(&mut buf, record)?;
            buf.push(b'\n');
        }
        write_atomic(&self.path(stage, file), &buf)
    }

    /// Reads `STAGE/FILE` written by `write_records`; the stage must be done.
    pub fn read_records<T: DeserializeOwned>(&self, stage: &str, file: &str) -> Result<Vec<T>> {
        let done = self
            .manifest()?
            .stages
            .iter()
            .any(|s| s.name == stage && s.state == StageState::Done);
        if !done {
            bail!(
                "{}: stage {stage} has not finished; run it first",
                self.root.display()
            );
        }
        read_lines(&self.path(stage, file))
    }

    /// Runs `work` over `units` in chunks of `chunk`, reusing finished part files.
    /// `work` must be a function of its chunk alone (fixed seeds per unit).
    pub fn chunked<U, R>(
        &self,
        stage: &str,
        units: &[U],
        chunk: usize,
        key: impl Fn(&U) -> String,
        mut work: impl FnMut(&[U]) -> Result<Vec<R>>,
    ) -> Result<Vec<R>>
    where
        R: Serialize + DeserializeOwned,
    {
        let parts = self.stage_dir(stage).join("parts");
        let mut hasher = Sha256::new();
        hasher.update(chunk.to_le_bytes());
        for unit in units {
            hasher.update(key(unit).as_bytes());
            hasher.update([0]);
        }
        let plan = serde_json::json!({"units": units.len(), "chunk": chunk,
            "keys_sha256": format!("{:x}", hasher.finalize())});
        let plan_path = parts.join("plan.json");
        let same_plan = std::fs::read_to_string(&plan_path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|old| old == plan);
        if !same_plan {
            if parts.exists() {
                std::fs::remove_dir_all(&parts)
                    .with_context(|| format!("{}: cannot remove", parts.display()))?;
            }
            write_atomic(&plan_path, serde_json::to_string(&plan)?.as_bytes())?;
        }
        let mut out = Vec::new();
        for (index, units) in units.chunks(chunk).enumerate() {
            let part = parts.join(format!("{index:05}.jsonl"));
            if part.exists() {
                out.extend(read_lines::<R>(&part)?);
                continue;
            }
            let results = work(units)?;
            let mut buf = Vec::new();
            for r in &results {
                serde_json::to_writer(&mut buf, r)?;
                buf.push(b'\n');
            }
            write_atomic(&part, &buf)?;
            out.extend(results);
        }
        Ok(out)
    }
}

/// Reads a JSON Lines file of records, naming the file and line of a bad one.
pub fn read_lines<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a valid record", path.display(), i + 1))
        })
        .collect()
}

/// A short stable id from text, for provenance (`i3fa9...`).
pub fn short_id(prefix: &str, text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!("{prefix}{:x}", digest)[..prefix.len() + 10].to_string()
}
