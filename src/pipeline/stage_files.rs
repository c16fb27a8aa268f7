//! Where the stages keep their files: one folder per stage under the run root, record
//! files written atomically, and keyed part files that make every stage resumable.
//!
//! A stage splits its work into units with stable keys, processes them in fixed chunks
//! and writes each finished chunk to `STAGE/parts/NNNNN.jsonl` by temp file + rename, so
//! a part file exists completely or not at all. A resumed stage reuses the parts it
//! finds and computes the rest; generation seeds depend only on the unit key, so the
//! result equals an uninterrupted run. `parts/plan.json` fingerprints the unit keys: a
//! changed input discards stale parts.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use crate::io::{read_jsonl, write_atomic, write_jsonl};

/// The stage folders of one run folder.
#[derive(Debug, Clone)]
pub struct StageFiles {
    root: PathBuf,
}

impl StageFiles {
    /// The stage folders under the run folder `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
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
        write_jsonl(&self.path(stage, file), records)
    }

    /// Reads `STAGE/FILE` written by `write_records`. Whether that stage has finished is
    /// the run manifest's to say (`crate::run::manifest`).
    pub fn read_records<T: DeserializeOwned>(&self, stage: &str, file: &str) -> Result<Vec<T>> {
        read_jsonl(&self.path(stage, file))
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
                out.extend(read_jsonl::<R>(&part)?);
                continue;
            }
            let results = work(units)?;
            write_jsonl(&part, &results)?;
            out.extend(results);
        }
        Ok(out)
    }
}
