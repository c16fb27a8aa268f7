//! Training on the live weights: LoRA SFT and offline DPO, with the optimizer, data
//! loading and the checkpointed loop they share.
//!
//! * `data` — SFT and preference records (LLaMA-Factory, TRL) into token ids and masks;
//! * `optim` — AdamW, clipping, accumulation, schedules;
//! * `sft`, `dpo` — the losses and each algorithm's config;
//! * `trainer` — the loop, metrics, checkpoints, resume.

pub mod data;
pub mod dpo;
pub mod optim;
pub mod sft;
pub mod trainer;

pub use dpo::{DpoConfig, DpoLossType};
pub use sft::SftConfig;
pub use trainer::{train, Job, RunOptions, RunSummary, TrainingArgs};
