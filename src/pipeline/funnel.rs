//! Funnel statistics: per stage and unit (instructions, samples, responses, ...), how
//! many came in, how many went out, and how many were dropped for each reason.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunnelRow {
    pub stage: String,
    pub unit: String,
    #[serde(rename = "in")]
    pub input: usize,
    #[serde(rename = "out")]
    pub output: usize,
    pub dropped: BTreeMap<String, usize>,
}

impl FunnelRow {
    pub fn new(stage: &str, unit: &str) -> Self {
        Self {
            stage: stage.to_string(),
            unit: unit.to_string(),
            ..Self::default()
        }
    }

    pub fn keep(&mut self) {
        self.input += 1;
        self.output += 1;
    }

    pub fn drop(&mut self, reason: &str) {
        self.input += 1;
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }

    pub fn dropped_total(&self) -> usize {
        self.dropped.values().sum()
    }
}

/// A plain-text table of funnel rows, one line per row.
pub fn table(rows: &[FunnelRow]) -> String {
    let mut out = format!(
        "{:<14} {:<22} {:>7} {:>7}  dropped\n",
        "stage", "unit", "in", "out"
    );
    for row in rows {
        let reasons: Vec<String> = row
            .dropped
            .iter()
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect();
        out.push_str(&format!(
            "{:<14} {:<22} {:>7} {:>7}  {}\n",
            row.stage,
            row.unit,
            row.input,
            row.output,
            reasons.join(", ")
        ));
    }
    out
}
