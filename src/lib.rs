//! autoif: AutoIF self-play with execution feedback in one process.
//!
//! The modules follow the data flow of DESIGN.md §3: `model` loads weights into one
//! LoRA-ready decoder, `generate` samples from it, and the CLI in `cli` drives both.

pub mod cli;
pub mod config;
pub mod eval;
pub mod export;
pub mod generate;
pub mod io;
pub mod model;
pub mod pipeline;
pub mod pyjson;
pub mod run;
pub mod train;
pub mod verify;
