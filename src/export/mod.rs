//! Export: merged Hugging Face model folders that transformers loads (PEFT adapter
//! folders are `model::adapter_file`'s).

pub mod merged;
mod staging_dir;

pub use merged::save_merged;
pub use staging_dir::StagingDir;
