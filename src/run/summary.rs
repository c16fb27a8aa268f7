//! `RUN/summary.json`: what a run did, in one file — IFEval before and after, the
//! funnel of every stage, the last training metrics of each phase, wall time per
//! phase, the exported paths, and a few example instructions with their functions.
//! Collected from the run folder, so it is the same whether the run went in one go or
//! was resumed.

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

use super::manifest::{RunFolder, StageState};
use super::Phase;
use crate::io::read_jsonl;
use crate::io::write_atomic;

pub const SUMMARY_FILE: &str = "summary.json";

/// Example instructions shown in the summary and the report.
const EXAMPLES: usize = 5;

pub struct Summary(Value);

impl Summary {
    pub fn collect(run: &RunFolder) -> Result<Summary> {
        let root = run.root();
        let manifest = run.manifest()?;
        let state_of = |name: &str| {
            manifest
                .stages
                .iter()
                .find(|s| s.name == name)
                .map(|s| (s.state, s.seconds))
        };
        let phases: Vec<Value> = Phase::all()
            .into_iter()
            .map(|p| {
                let (state, seconds) = match state_of(p.name()) {
                    Some((StageState::Done, s)) => ("done", s),
                    Some((StageState::Running, _)) => ("interrupted", None),
                    Some((StageState::Pending, _)) => ("pending", None),
                    None => ("skipped", None),
                };
                json!({"name": p.name(), "state": state, "seconds": seconds})
            })
            .collect();
        let funnel: Vec<Value> = manifest
            .stages
            .iter()
            .flat_map(|s| &s.funnel)
            .map(|row| serde_json::to_value(row).expect("funnel rows serialize"))
            .collect();
        let existing = |rel: &str| -> Value {
            let path = root.join(rel);
            if path.exists() {
                path.display().to_string().into()
            } else {
                Value::Null
            }
        };
        let mut adapters = Map::new();
        for name in ["sft", "dpo"] {
            if root
                .join(name)
                .join(crate::export::peft::WEIGHTS_FILE)
                .is_file()
            {
                adapters.insert(name.into(), existing(name));
            }
        }
        if let Some(last) = last_line(&root.join("online_dpo/iterations.jsonl"))? {
            if let Some(i) = last["iteration"].as_u64() {
                adapters.insert(
                    "online_dpo".into(),
                    existing(&format!("online_dpo/iter-{i}")),
                );
            }
        }
        let mut datasets = Map::new();
        for (name, rel) in [
            ("sft (TRL)", "datasets/trl/sft.jsonl"),
            ("dpo (TRL)", "datasets/trl/dpo.jsonl"),
            ("LLaMA-Factory", "datasets/llamafactory"),
        ] {
            if root.join(rel).exists() {
                datasets.insert(name.into(), existing(rel));
            }
        }
        let summary = json!({
            "autoif_version": manifest.autoif_version,
            "created_at": manifest.created_at,
            "model": manifest.config.model.path,
            "supervisor": manifest.config.supervisor_model(),
            "config": manifest.config,
            "ifeval_before": ifeval(root, "ifeval_before")?,
            "ifeval_after": ifeval(root, "ifeval_after")?,
            "funnel": funnel,
            "training": {
                "sft": last_line(&root.join("sft/metrics.jsonl"))?,
                "dpo": last_line(&root.join("dpo/metrics.jsonl"))?,
                "online_dpo": last_line(&root.join("online_dpo/iterations.jsonl"))?,
            },
            "phases": phases,
            "exports": {
                "merged": existing("export/merged"),
                "adapters": adapters,
                "datasets": datasets,
            },
            "examples": examples(root)?,
        });
        Ok(Summary(summary))
    }

    pub fn write(&self, root: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.0)? + "\n";
        write_atomic(&root.join(SUMMARY_FILE), text.as_bytes())
    }

    pub fn read(root: &Path) -> Result<Summary> {
        let path = root.join(SUMMARY_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Ok(Summary(serde_json::from_str(&text).with_context(|| {
            format!("{}: not valid JSON", path.display())
        })?))
    }

    pub fn json(&self) -> &Value {
        &self.0
    }

    /// The short account printed at the end of a run.
    pub fn text(&self) -> String {
        let s = &self.0;
        let mut out = String::from("\nphase            state        seconds\n");
        for p in s["phases"].as_array().into_iter().flatten() {
            if p["state"] == "skipped" {
                continue;
            }
            let seconds = p["seconds"]
                .as_f64()
                .map_or("-".to_string(), |x| format!("{x:.0}"));
            out.push_str(&format!(
                "{:<16} {:<12} {seconds:>7}\n",
                p["name"].as_str().unwrap_or(""),
                p["state"].as_str().unwrap_or("")
            ));
        }
        let (before, after) = (&s["ifeval_before"], &s["ifeval_after"]);
        if !before.is_null() || !after.is_null() {
            let prompts = before["prompts"].as_u64().or(after["prompts"].as_u64());
            out.push_str(&format!(
                "\nIFEval ({} prompts, greedy)   before    after\n",
                prompts.unwrap_or(0)
            ));
            for (label, key) in [
                ("prompt-level strict", "prompt_level_strict_acc"),
                ("prompt-level loose", "prompt_level_loose_acc"),
                ("instruction-level strict", "inst_level_strict_acc"),
                ("instruction-level loose", "inst_level_loose_acc"),
            ] {
                let pct = |v: &Value| {
                    v[key]
                        .as_f64()
                        .map_or("-".to_string(), |x| format!("{:.2}", 100.0 * x))
                };
                out.push_str(&format!(
                    "{label:<28}{:>8} {:>8}\n",
                    pct(before),
                    pct(after)
                ));
            }
        }
        if let Some(merged) = s["exports"]["merged"].as_str() {
            out.push_str(&format!("\nmerged model: {merged}\n"));
        }
        out
    }
}

/// An IFEval phase's summary.json with the folder it came from; null when not run.
fn ifeval(root: &Path, dir: &str) -> Result<Value> {
    let path = root.join(dir).join("summary.json");
    if !path.is_file() {
        return Ok(Value::Null);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    value["dir"] = dir.into();
    Ok(value)
}

/// The last record of a JSON Lines file; None when the file is absent or empty.
fn last_line(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    Ok(read_jsonl::<Value>(path)?.pop())
}

/// The first instructions the queries stage paired, with their functions.
fn examples(root: &Path) -> Result<Vec<Value>> {
    let path = root.join("queries/pairs.jsonl");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for pair in read_jsonl::<Value>(&path)? {
        let id = pair["instruction_id"].clone();
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        out.push(json!({"instruction": pair["instruction"], "funcs": pair["funcs"]}));
        if out.len() == EXAMPLES {
            break;
        }
    }
    Ok(out)
}
