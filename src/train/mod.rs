//! Training on the live weights: LoRA SFT, offline DPO and online DPO, with the
//! optimizer, data loading and the checkpointed loop they share.
//!
//! * `entry_points` — one function per training job (read → tokenize → train), called by
//!   `autoif train` and `autoif run` alike;
//! * `autoif_rules` — the paper's training prompt and preference-pair rule;
//! * `data` — SFT and preference records (LLaMA-Factory, TRL) into token ids and masks,
//!   and batches of them;
//! * `training_args`, `sft`, `dpo` — the shared settings, the losses and each algorithm's
//!   config;
//! * `online_dpo` — sample from the live weights, grade in the sandbox, DPO on the pairs;
//! * `trainer` — the loop, top to bottom, over a `job::TrainingJob`;
//! * `adapters`, `checkpoint`, `metrics`, `reference_cache` — what the loop trains and
//!   the files it writes and resumes from;
//! * `optim` — AdamW, clipping, accumulation, schedules;
//! * `policy` — the policy's forward in a step and the backward through it (activation
//!   checkpointing);
//! * `memory_plan` — the GPU memory a configuration needs, checked before loading.

pub mod adapters;
pub mod autoif_rules;
pub mod checkpoint;
pub mod data;
pub mod dpo;
pub mod entry_points;
pub mod held_out;
pub mod job;
pub mod memory_plan;
pub mod metrics;
pub mod online_dpo;
pub mod optim;
pub mod policy;
pub mod reference_cache;
pub mod sft;
pub mod trainer;
pub mod training_args;

pub use dpo::{DpoConfig, DpoLossType};
pub use entry_points::{
    train_dpo, train_online_dpo, train_sft, DataCounts, JobOutcome, PreferenceData, SftData,
};
pub use job::TrainingJob;
pub use metrics::{DpoStepMetrics, StepMetrics};
pub use online_dpo::{run_online_dpo, OnlineDpoConfig, OnlineOptions, VerifiedPrompt};
pub use sft::SftConfig;
pub use trainer::{train, TrainingOptions, TrainingOutcome};
pub use training_args::{BaseDtype, TrainingArgs};
