//! Where everything of a run lives: one type names every path of the run folder, so the
//! loop, `summary.json` and the report agree on them.
//!
//! ```text
//! RUN/manifest.json          phases and stages: state, timings, funnel rows
//! RUN/summary.json           what the run did (`Summary`), rewritten after every phase
//! RUN/report.html            the same, as a page
//! RUN/ifeval_before/, ifeval_after/   IFEval responses, verdicts and scores
//! RUN/<stage>/               each synthesis stage's files (docs/pipeline.md)
//! RUN/sft/, dpo/             the adapters with metrics.jsonl and checkpoints
//! RUN/online_dpo/            iterations.jsonl and one adapter per iteration (iter-N/)
//! RUN/export/merged/         the merged model
//! ```

use std::path::{Path, PathBuf};

use super::phase::Phase;
use crate::eval::ifeval::results;
use crate::pipeline::{datasets, decontaminate, Stage};
use crate::train::metrics::METRICS_FILE;
use crate::train::online_dpo::{iteration_dir, ITERATIONS_FILE};

#[derive(Debug, Clone)]
pub struct RunLayout {
    root: PathBuf,
}

impl RunLayout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> PathBuf {
        self.root.join("manifest.json")
    }

    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    pub fn report(&self) -> PathBuf {
        self.root.join("report.html")
    }

    /// The folder a phase writes into (a synthesis stage's folder for its stage).
    pub fn phase_dir(&self, phase: Phase) -> PathBuf {
        self.root.join(phase.name())
    }

    /// A synthesis stage's folder (docs/pipeline.md lists its files).
    pub fn stage_dir(&self, stage: Stage) -> PathBuf {
        self.phase_dir(Phase::Synthesis(stage))
    }

    /// An IFEval phase's scores, as `eval::ifeval` writes them.
    pub fn ifeval_summary(&self, phase: Phase) -> PathBuf {
        self.phase_dir(phase).join(results::SUMMARY_FILE)
    }

    /// A training phase's metrics, one line per optimizer step (online DPO: per
    /// iteration).
    pub fn training_metrics(&self, phase: Phase) -> PathBuf {
        match phase {
            Phase::OnlineDpo => self.online_dpo_iterations(),
            _ => self.phase_dir(phase).join(METRICS_FILE),
        }
    }

    pub fn online_dpo_iterations(&self) -> PathBuf {
        self.phase_dir(Phase::OnlineDpo).join(ITERATIONS_FILE)
    }

    pub fn online_dpo_adapter(&self, iteration: usize) -> PathBuf {
        iteration_dir(&self.phase_dir(Phase::OnlineDpo), iteration)
    }

    /// The SFT data set the `datasets` stage writes (TRL conversational records).
    pub fn sft_dataset(&self) -> PathBuf {
        self.stage_dir(Stage::Datasets).join(datasets::TRL_SFT_FILE)
    }

    /// The offline DPO data set the `datasets` stage writes (TRL preference records).
    pub fn dpo_dataset(&self) -> PathBuf {
        self.stage_dir(Stage::Datasets).join(datasets::TRL_DPO_FILE)
    }

    pub fn llamafactory_datasets(&self) -> PathBuf {
        self.stage_dir(Stage::Datasets)
            .join(datasets::LLAMAFACTORY_DIR)
    }

    /// The (query, instruction, functions) pairs of the `queries` stage that share no
    /// n-gram with an evaluation prompt (`decontaminate`): online DPO's prompts and the
    /// summary's examples.
    pub fn verified_prompts(&self) -> PathBuf {
        self.stage_dir(Stage::Decontaminate)
            .join(decontaminate::PAIRS_FILE)
    }

    pub fn merged_model(&self) -> PathBuf {
        self.phase_dir(Phase::Export).join("merged")
    }
}
