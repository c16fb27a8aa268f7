//! Python's `json` module where this crate's output or verdicts must match it exactly:
//! `json.dumps` for chat templates' `tojson` and IFEval's result lines, and whether
//! `json.loads` accepts a text for IFEval's JSON-format check. Imports nothing from the
//! crate, so any module may use it.

mod dumps;
mod loads;

pub use dumps::{dumps, DumpOptions};
pub use loads::loads_accepts;
