//! `RUN/summary.json`: what a run did, in one file — IFEval before and after with the
//! paired significance of the change and the per-type split by training coverage, the
//! funnel of every stage, the last training metrics of each phase, wall time per
//! phase, the exported paths, and a few example instructions with their functions.
//! Collected from the run folder, so it is the same whether the run went in one go or
//! was resumed.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::layout::RunLayout;
use super::manifest::{RunFolder, StageState};
use super::phase::Phase;
use crate::eval::ifeval::results::read_evaluation;
use crate::eval::ifeval::{CoverageSplit, IfevalChange, Summary as IfevalScores};
use crate::io::{read_jsonl, read_jsonl_if_exists, write_atomic};
use crate::pipeline::funnel::FunnelRow;
use crate::pipeline::queries::QueryPair;
use crate::train::held_out::{HeldOutScores, HELD_OUT_FILE};

/// Example instructions shown in the summary and the report.
const EXAMPLES: usize = 5;

/// `summary.json`. Only `model` is required when reading, so a report can be drawn from
/// a run that has barely started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub autoif_version: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    /// The model being trained.
    pub model: String,
    /// The model that wrote the data.
    #[serde(default)]
    pub supervisor: Option<String>,
    /// The resolved run configuration, as the manifest holds it.
    #[serde(default)]
    pub config: Value,
    #[serde(default)]
    pub ifeval_before: Option<IfevalResult>,
    #[serde(default)]
    pub ifeval_after: Option<IfevalResult>,
    /// The prompt-level change from before to after, prompt by prompt: prompts gained and
    /// lost, strict and loose, with the exact McNemar p-value; present when both ran.
    #[serde(default)]
    pub ifeval_change: Option<IfevalChange>,
    /// Instruction-level accuracy before and after over the IFEval types the run's
    /// training instructions name (`ifeval_types`) and over the rest; present when an
    /// IFEval phase and the queries stage ran.
    #[serde(default)]
    pub ifeval_coverage: Option<CoverageSplit>,
    /// Every stage's and training phase's funnel row, in loop order.
    #[serde(default)]
    pub funnel: Vec<FunnelRow>,
    #[serde(default)]
    pub training: LastMetrics,
    /// Every phase of the loop, switched off ones as `skipped`.
    #[serde(default)]
    pub phases: Vec<PhaseTiming>,
    #[serde(default)]
    pub exports: Option<Exports>,
    #[serde(default)]
    pub examples: Vec<Example>,
}

/// An IFEval phase's scores with the folder that holds its responses and verdicts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IfevalResult {
    #[serde(flatten)]
    pub scores: IfevalScores,
    /// What was scored and how (`data`, `limit`, `max_new_tokens`), as the phase wrote it.
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

/// The last line of each training phase's metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LastMetrics {
    pub sft: Option<Value>,
    pub dpo: Option<Value>,
    pub online_dpo: Option<Value>,
    /// Offline DPO's held-out pairs scored after training (`dpo.held_out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo_held_out: Option<HeldOutScores>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseTiming {
    pub name: String,
    pub state: PhaseState,
    /// Wall time of the phase's last (possibly resumed) execution.
    pub seconds: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseState {
    Done,
    /// Started and not finished: the run was stopped or failed in it.
    Interrupted,
    Pending,
    /// Switched off in the configuration.
    Skipped,
}

impl PhaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseState::Done => "done",
            PhaseState::Interrupted => "interrupted",
            PhaseState::Pending => "pending",
            PhaseState::Skipped => "skipped",
        }
    }
}

/// What the run left for users: paths of the merged model, the adapters and the data
/// sets (by name, in the order they were made; null where a path is missing).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Exports {
    pub merged: Option<String>,
    #[serde(default)]
    pub adapters: Map<String, Value>,
    #[serde(default)]
    pub datasets: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Example {
    pub instruction: String,
    #[serde(default)]
    pub funcs: Vec<String>,
}

impl Summary {
    pub fn collect(run: &RunFolder) -> Result<Summary> {
        let layout = run.layout();
        let manifest = run.manifest()?;
        let state_of = |name: &str| {
            manifest
                .stages
                .iter()
                .find(|s| s.name == name)
                .map(|s| (s.state, s.seconds))
        };
        let phases = Phase::all()
            .into_iter()
            .map(|p| {
                let (state, seconds) = match state_of(p.name()) {
                    Some((StageState::Done, s)) => (PhaseState::Done, s),
                    Some((StageState::Running, _)) => (PhaseState::Interrupted, None),
                    Some((StageState::Pending, _)) => (PhaseState::Pending, None),
                    None => (PhaseState::Skipped, None),
                };
                PhaseTiming {
                    name: p.name().to_string(),
                    state,
                    seconds,
                }
            })
            .collect();
        let funnel = manifest
            .stages
            .iter()
            .flat_map(|s| s.funnel.iter().cloned())
            .collect();
        let ifeval_before = ifeval(&layout, Phase::IfevalBefore)?;
        let ifeval_after = ifeval(&layout, Phase::IfevalAfter)?;
        Ok(Summary {
            autoif_version: Some(manifest.autoif_version.clone()),
            created_at: Some(manifest.created_at.clone()),
            model: manifest.config.model.path.clone(),
            supervisor: Some(manifest.config.supervisor_model().to_string()),
            config: serde_json::to_value(&manifest.config)?,
            ifeval_change: match (&ifeval_before, &ifeval_after) {
                (Some(_), Some(_)) => Some(ifeval_change(&layout)?),
                _ => None,
            },
            ifeval_coverage: match (&ifeval_before, &ifeval_after, training_types(&layout)?) {
                (None, None, _) | (_, _, None) => None,
                (before, after, Some(types)) => Some(CoverageSplit::new(
                    &types,
                    before.as_ref().map(|e| &e.scores),
                    after.as_ref().map(|e| &e.scores),
                )),
            },
            ifeval_before,
            ifeval_after,
            funnel,
            training: LastMetrics {
                sft: last_line(&layout.training_metrics(Phase::Sft))?,
                dpo: last_line(&layout.training_metrics(Phase::Dpo))?,
                online_dpo: last_line(&layout.training_metrics(Phase::OnlineDpo))?,
                dpo_held_out: held_out_scores(&layout.phase_dir(Phase::Dpo).join(HELD_OUT_FILE))?,
            },
            phases,
            exports: Some(exports(&layout)?),
            examples: examples(&layout)?,
        })
    }

    pub fn write(&self, layout: &RunLayout) -> Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        write_atomic(&layout.summary(), text.as_bytes())
    }

    pub fn read(layout: &RunLayout) -> Result<Summary> {
        let path = layout.summary();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read the run summary", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a run summary", path.display()))
    }

    /// The short account printed at the end of a run.
    pub fn text(&self) -> String {
        let mut out = String::from("\nphase            state        seconds\n");
        for p in &self.phases {
            if p.state == PhaseState::Skipped {
                continue;
            }
            let seconds = p.seconds.map_or("-".to_string(), |x| format!("{x:.0}"));
            out.push_str(&format!(
                "{:<16} {:<12} {seconds:>7}\n",
                p.name,
                p.state.as_str()
            ));
        }
        let (before, after) = (&self.ifeval_before, &self.ifeval_after);
        if before.is_some() || after.is_some() {
            let prompts = before.as_ref().or(after.as_ref()).map(|e| e.scores.prompts);
            out.push_str(&format!(
                "\nIFEval ({} prompts, greedy)   before    after\n",
                prompts.unwrap_or(0)
            ));
            let labels = [
                "prompt-level strict",
                "prompt-level loose",
                "instruction-level strict",
                "instruction-level loose",
            ];
            for (i, label) in labels.into_iter().enumerate() {
                let pct = |e: &Option<IfevalResult>| {
                    e.as_ref().map_or("-".to_string(), |e| {
                        format!("{:.2}", 100.0 * e.headline()[i])
                    })
                };
                out.push_str(&format!(
                    "{label:<28}{:>8} {:>8}\n",
                    pct(before),
                    pct(after)
                ));
            }
        }
        if let Some(change) = &self.ifeval_change {
            out.push_str(&format!(
                "\nprompt level, paired over {} prompts:\n  strict: {}\n  loose:  {}\n",
                change.prompts,
                change.strict.line(),
                change.loose.line()
            ));
        }
        if let Some(coverage) = &self.ifeval_coverage {
            out.push('\n');
            out.push_str(&coverage.table());
        }
        if let Some(merged) = self.exports.as_ref().and_then(|e| e.merged.as_deref()) {
            out.push_str(&format!("\nmerged model: {merged}\n"));
        }
        out
    }
}

impl IfevalResult {
    /// The four numbers of the IFEval paper: prompt-level strict and loose,
    /// instruction-level strict and loose.
    pub fn headline(&self) -> [f64; 4] {
        let s = &self.scores;
        [
            s.prompt_level_strict_acc,
            s.prompt_level_loose_acc,
            s.inst_level_strict_acc,
            s.inst_level_loose_acc,
        ]
    }
}

/// An IFEval phase's scores and the folder they came from; `None` when not run.
fn ifeval(layout: &RunLayout, phase: Phase) -> Result<Option<IfevalResult>> {
    let path = layout.ifeval_summary(phase);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut result: IfevalResult = serde_json::from_str(&text)
        .with_context(|| format!("{}: not an IFEval summary", path.display()))?;
    result
        .settings
        .insert("dir".into(), phase.name().to_string().into());
    Ok(Some(result))
}

/// The paired prompt-level change between the two IFEval phases' verdicts.
fn ifeval_change(layout: &RunLayout) -> Result<IfevalChange> {
    let [before, after] = [Phase::IfevalBefore, Phase::IfevalAfter].map(|p| layout.phase_dir(p));
    IfevalChange::between(&read_evaluation(&before)?, &read_evaluation(&after)?).with_context(
        || {
            format!(
                "{} and {}: cannot pair the IFEval verdicts",
                before.display(),
                after.display()
            )
        },
    )
}

/// The IFEval types named by the instructions the queries stage paired with queries (the
/// instructions the training data was built from); `None` before that stage ran.
fn training_types(layout: &RunLayout) -> Result<Option<BTreeSet<String>>> {
    let path = layout.verified_prompts();
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(
        read_jsonl::<QueryPair>(&path)?
            .into_iter()
            .flat_map(|pair| pair.ifeval_types)
            .collect(),
    ))
}

/// The last record of a JSON Lines file; None when the file is absent or empty.
fn last_line(path: &std::path::Path) -> Result<Option<Value>> {
    Ok(read_jsonl_if_exists::<Value>(path)?.and_then(|mut lines| lines.pop()))
}

fn exports(layout: &RunLayout) -> Result<Exports> {
    let existing = |path: std::path::PathBuf| -> Value {
        if path.exists() {
            path.display().to_string().into()
        } else {
            Value::Null
        }
    };
    let mut adapters = Map::new();
    for phase in [Phase::Sft, Phase::Dpo] {
        let dir = layout.phase_dir(phase);
        if dir.join(crate::model::adapter_file::WEIGHTS_FILE).is_file() {
            adapters.insert(phase.name().into(), existing(dir));
        }
    }
    if let Some(last) = last_line(&layout.online_dpo_iterations())? {
        if let Some(i) = last["iteration"].as_u64() {
            adapters.insert(
                Phase::OnlineDpo.name().into(),
                existing(layout.online_dpo_adapter(i as usize)),
            );
        }
    }
    let mut datasets = Map::new();
    for (name, path) in [
        ("sft (TRL)", layout.sft_dataset()),
        ("dpo (TRL)", layout.dpo_dataset()),
        ("LLaMA-Factory", layout.llamafactory_datasets()),
    ] {
        if path.exists() {
            datasets.insert(name.into(), existing(path));
        }
    }
    Ok(Exports {
        merged: existing(layout.merged_model()).as_str().map(String::from),
        adapters,
        datasets,
    })
}

/// The first instructions the queries stage paired, with their functions.
fn examples(layout: &RunLayout) -> Result<Vec<Example>> {
    #[derive(Deserialize)]
    struct PairedInstruction {
        instruction_id: Value,
        instruction: String,
        #[serde(default)]
        funcs: Vec<String>,
    }
    let path = layout.verified_prompts();
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for pair in read_jsonl::<PairedInstruction>(&path)? {
        if seen.contains(&pair.instruction_id) {
            continue;
        }
        seen.push(pair.instruction_id);
        out.push(Example {
            instruction: pair.instruction,
            funcs: pair.funcs,
        });
        if out.len() == EXAMPLES {
            break;
        }
    }
    Ok(out)
}

/// The held-out scores a DPO phase wrote, if it held pairs out.
fn held_out_scores(path: &std::path::Path) -> Result<Option<HeldOutScores>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let scores = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid held-out scores", path.display()))?;
    Ok(Some(scores))
}
