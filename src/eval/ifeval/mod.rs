//! IFEval (Zhou et al., 2023): 541 prompts carrying 25 types of verifiable instructions,
//! scored verdict for verdict as Google's reference evaluator (`instruction_following_eval`,
//! also vendored by lm-evaluation-harness) scores them.
//!
//! * [`input`] reads the prompts and responses;
//! * [`instruction`] parses an instruction id and its kwargs and dispatches to the checker
//!   of its group (`punctuation`, `length`, `format`, `keywords`, `case`, `startend`,
//!   `combination`, `content`, `language`);
//! * [`scoring`] runs the strict and loose evaluations and summarises them;
//! * [`results`] generates a model's responses and writes (and reads back) the
//!   evaluator's output files;
//! * [`paired`] tests a prompt-level change between two evaluations of the same prompts
//!   (exact McNemar), [`coverage`] splits the per-type table into the types training
//!   covered and the rest, and [`compare`] puts two evaluations side by side;
//! * [`pystr`], [`punkt`], [`word_tokenize`] and [`langdetect`] reproduce the Python
//!   behaviour the checkers rely on: `str` methods, NLTK's Punkt sentence splitter and word
//!   tokenizer, and `langdetect` with seed 0 (`json.loads` and `json.dumps` are the
//!   crate's [`crate::pyjson`]).
//!
//! ```no_run
//! use autoif::eval::ifeval::{evaluate, load_input_data, Summary};
//! let prompts = load_input_data("input_data.jsonl".as_ref())?;
//! let responses: Vec<&str> = prompts.iter().map(|_| "My answer is yes.").collect();
//! let summary = Summary::new(&evaluate(&prompts, &responses));
//! println!("{}", summary.table());
//! # anyhow::Ok(())
//! ```

mod case;
mod combination;
pub mod compare;
mod content;
pub mod coverage;
mod format;
pub mod input;
pub mod instruction;
mod keywords;
pub mod langdetect;
mod language;
mod length;
pub mod paired;
mod punctuation;
pub mod punkt;
pub mod pystr;
pub mod results;
pub mod scoring;
mod startend;
pub mod word_tokenize;

pub use coverage::{CoverageSplit, TypeGroup};
pub use input::{
    load_input_data, load_responses, parse_input_data, parse_responses, Prompt, Response,
};
pub use instruction::{Instruction, Relation, INSTRUCTION_IDS};
pub use paired::{mcnemar_exact_p, IfevalChange, PromptChange};
pub use scoring::{evaluate, loose_variants, score, Accuracy, Evaluation, PromptResult, Summary};
