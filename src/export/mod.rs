//! Export: PEFT adapter folders and merged Hugging Face model folders that
//! transformers and peft load.

mod files;
pub mod merged;
pub mod peft;

pub use files::{LazyTensor, StagingDir};
pub use merged::save_merged;
pub use peft::{load_adapter, save_adapter};
