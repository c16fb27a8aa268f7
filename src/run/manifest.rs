//! The run folder and its `manifest.json`: the resolved config, the model identity, and
//! one entry per phase of the loop (each synthesis stage is a phase) with its state,
//! timing and funnel counts. `--resume` runs what the manifest does not record as done.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::layout::RunLayout;
use crate::config::RunConfig;
use crate::io::write_atomic;
use crate::pipeline::funnel::FunnelRow;
use crate::pipeline::stage_files::StageFiles;
use crate::pipeline::{Pipeline, Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Pending,
    Running,
    Done,
}

/// One phase's entry in the manifest.
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

/// The contents of `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunManifest {
    pub autoif_version: String,
    pub created_at: String,
    /// The fully resolved configuration (defaults filled in).
    pub config: RunConfig,
    /// Identity of the supervision model: what was asked for and a file fingerprint.
    pub model: Value,
    /// Every phase of the run, in loop order.
    pub stages: Vec<StageRecord>,
}

/// A run folder: its manifest and, under it, the folders the phases write.
#[derive(Debug, Clone)]
pub struct RunFolder {
    root: PathBuf,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl RunFolder {
    /// Creates a new run folder (it must not exist or be empty) with a fresh manifest
    /// listing `phases` as pending.
    pub fn create(root: &Path, config: &RunConfig, model: Value, phases: &[&str]) -> Result<Self> {
        if RunLayout::new(root).manifest().exists() {
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
        let run = RunFolder {
            root: root.to_path_buf(),
        };
        let manifest = RunManifest {
            autoif_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at: now(),
            config: config.clone(),
            model,
            stages: phases
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
        let run = RunFolder {
            root: root.to_path_buf(),
        };
        run.manifest()?;
        Ok(run)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where each of the run's files lives.
    pub fn layout(&self) -> RunLayout {
        RunLayout::new(&self.root)
    }

    /// The synthesis stages' folders of this run.
    pub fn stage_files(&self) -> StageFiles {
        StageFiles::new(&self.root)
    }

    pub fn manifest(&self) -> Result<RunManifest> {
        let path = self.layout().manifest();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read (not a run folder?)", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid run manifest", path.display()))
    }

    fn save(&self, manifest: &RunManifest) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(manifest)?;
        write_atomic(&self.layout().manifest(), &bytes)
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

    /// Fails unless every stage of `stages` is done (a stage reads only finished
    /// files).
    fn ensure_done(&self, stages: &[Stage]) -> Result<()> {
        let manifest = self.manifest()?;
        for stage in stages {
            let done = manifest
                .stages
                .iter()
                .any(|s| s.name == stage.name() && s.state == StageState::Done);
            if !done {
                bail!(
                    "{}: stage {} has not finished; run it first",
                    self.root.display(),
                    stage.name()
                );
            }
        }
        Ok(())
    }

    /// Runs one synthesis stage as a phase of this run: marks it running, refuses it
    /// while a stage it reads from has not finished, computes it, and marks it done with
    /// its funnel and wall time.
    pub fn run_stage(&self, pipeline: &mut Pipeline, stage: Stage) -> Result<Vec<FunnelRow>> {
        let started = Instant::now();
        self.mark_running(stage.name())?;
        self.ensure_done(&stage.reads(&pipeline.synthesis))
            .with_context(|| format!("stage {}", stage.name()))?;
        let rows = pipeline.run_stage(stage)?;
        self.mark_done(stage.name(), rows.clone(), started.elapsed().as_secs_f64())?;
        Ok(rows)
    }
}
