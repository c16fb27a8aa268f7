//! File I/O every module shares: JSON Lines records with file-and-line errors, and
//! outputs that are complete or absent (written beside their destination, then renamed).

pub mod atomic;
pub mod jsonl;
pub mod safetensors;
pub mod temporaries;
pub mod text;

pub use atomic::{write_atomic, write_atomically, AtomicWriter};
pub use jsonl::{
    parse_jsonl, read_json_records, read_jsonl, read_jsonl_if_exists, to_jsonl, write_jsonl,
};
pub use text::{from_json_str, read_text};
