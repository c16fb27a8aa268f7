//! Training on the live weights: LoRA SFT, offline DPO and online DPO, with the
//! optimizer, data loading and the checkpointed loop they share.
//!
//! * `autoif_rules` — the paper's training prompt and preference-pair rule;
//! * `data` — SFT and preference records (LLaMA-Factory, TRL) into token ids and masks;
//! * `optim` — AdamW, clipping, accumulation, schedules;
//! * `sft`, `dpo` — the losses and each algorithm's config;
//! * `online_dpo` — sample from the live weights, grade in the sandbox, DPO on the pairs;
//! * `trainer` — the loop, metrics, checkpoints, resume;
//! * `memory_plan` — the GPU memory a configuration needs, checked before loading.

pub mod autoif_rules;
pub mod data;
pub mod dpo;
pub mod memory_plan;
pub mod online_dpo;
pub mod optim;
pub mod sft;
pub mod trainer;

pub use dpo::{DpoConfig, DpoLossType};
pub use online_dpo::{run_online_dpo, OnlineDpoConfig, OnlineOptions, VerifiedPrompt};
pub use sft::SftConfig;
pub use trainer::{train, Job, RunOptions, RunSummary, TrainingArgs};
