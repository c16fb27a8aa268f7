//! autoif: AutoIF self-play with execution feedback in one process.
//!
//! The modules, in the order the data flows through them: `io` reads and writes JSON
//! Lines and complete-or-absent files; `pyjson` writes JSON as Python's `json.dumps`
//! does (chat templates, IFEval's files); `model` loads weights, tokenizer and chat template
//! into one LoRA-ready decoder; `generate` samples from it (or from an OpenAI-compatible
//! server); `verify` runs model-written Python functions in a sandbox; `eval` scores
//! responses on IFEval; `pipeline` synthesises the AutoIF data (instructions, their
//! verification functions, graded responses, SFT and DPO sets) in a resumable run folder;
//! `train` runs LoRA SFT, DPO and online DPO on the same weights; `export` writes merged
//! models and PEFT adapters; `config` reads a run's TOML; `run` drives the whole loop and
//! writes its `summary.json` and `report.html`; `cli` is the command line. `validation`
//! (a leaf any module may use) collects config values out of range, one line each naming
//! its key.

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
pub mod validation;
pub mod verify;
