//! The run's HTML report: one self-contained page (inline CSS, inline SVG charts, no
//! script, no network) built from the files `autoif run` leaves in the run folder:
//! `summary.json`, the trainers' `metrics.jsonl` and online DPO's `iterations.jsonl`.
//! Every file but `summary.json` may be missing; its section then says "not run".

pub mod svg;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

use super::layout::RunLayout;
use super::phase::Phase;
use super::summary::{IfevalResult, Summary};
use crate::eval::ifeval::paired::format_p;
use crate::eval::ifeval::{Accuracy, CoverageSplit, IfevalChange, TypeGroup};
use crate::io::{read_jsonl_if_exists, write_atomic};
use svg::{
    BarGroup, BarOptions, BarSeries, LineOptions, Series, ValueFormat, CHART_WIDTH, MUTED, PALETTE,
};

/// How many prompts IFEval has; a run may score only the first N.
const IFEVAL_PROMPTS: usize = 541;

/// Reads the run folder `run` and writes `run/report.html` (atomically); returns its path.
pub fn write_report(run: &Path) -> Result<PathBuf> {
    let layout = RunLayout::new(run);
    let data = RunData::read(&layout)?;
    let generated = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let path = layout.report();
    write_atomic(&path, render(&data, &generated).as_bytes())?;
    Ok(path)
}

/// `text` with the characters that mean something in HTML and XML replaced by entities.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Everything the page shows; `None` for a file the run has not written.
struct RunData {
    summary: Summary,
    sft: Option<Vec<Value>>,
    dpo: Option<Vec<Value>>,
    online_dpo: Option<Vec<Value>>,
}

impl RunData {
    fn read(layout: &RunLayout) -> Result<Self> {
        let metrics = |phase| read_jsonl_if_exists(&layout.training_metrics(phase));
        Ok(Self {
            summary: Summary::read(layout)?,
            sft: metrics(Phase::Sft)?,
            dpo: metrics(Phase::Dpo)?,
            online_dpo: metrics(Phase::OnlineDpo)?,
        })
    }

    fn phase_state(&self, phase: Phase) -> Option<&'static str> {
        self.summary
            .phases
            .iter()
            .find(|p| p.name == phase.name())
            .map(|p| p.state.as_str())
    }
}

/// (x, y) points of `key` against `x_key` (the line number when absent); lines without a
/// finite number there (a `null` loss, say) are left out.
fn points(lines: &[Value], x_key: &str, key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, line)| {
            let x = line[x_key].as_f64().unwrap_or((i + 1) as f64);
            line[key].as_f64().filter(|y| y.is_finite()).map(|y| (x, y))
        })
        .collect()
}

const STYLE: &str = "\
:root{color-scheme:light}\
body{margin:0;background:#f8fafc;color:#0f172a;\
font:15px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,\"Helvetica Neue\",Arial,sans-serif}\
main{box-sizing:border-box;max-width:960px;margin:0 auto;padding:24px 20px 48px}\
h1{font-size:24px;margin:0 0 12px}\
h2{font-size:18px;margin:36px 0 12px;padding-bottom:4px;border-bottom:1px solid #e2e8f0}\
h3{font-size:15px;margin:18px 0 6px}\
table{border-collapse:collapse;width:100%;background:#fff;font-size:14px;margin:8px 0}\
th,td{border:1px solid #e2e8f0;padding:6px 10px;text-align:left;vertical-align:top}\
th{background:#f1f5f9;font-weight:600}\
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
tr.group td{background:#f1f5f9}\
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}\
dl.meta dt{color:#64748b}dl.meta dd{margin:0}\
.up{color:#15803d}.down{color:#b91c1c}.flat{color:#64748b}\
.state-done{color:#15803d}.state-failed{color:#b91c1c}\
.not-run{color:#64748b;font-style:italic}.note{color:#475569;font-size:13px}\
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}\
pre{background:#fff;border:1px solid #e2e8f0;border-radius:4px;padding:10px;\
overflow-x:auto;font-size:13px;line-height:1.4;white-space:pre-wrap}\
svg{display:block;max-width:100%;height:auto;background:#fff;border:1px solid #e2e8f0;\
border-radius:4px;margin:8px 0}\
td svg{border:0;margin:0}\
ul{margin:0;padding-left:18px}";

/// The whole page; `generated` is the date shown in the header.
fn render(data: &RunData, generated: &str) -> String {
    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    let _ = writeln!(
        page,
        "<title>AutoIF run report: {}</title><style>{STYLE}</style></head><body><main>",
        escape(&data.summary.model)
    );
    for section in [
        header(data, generated),
        ifeval_table(data),
        phase_table(data),
        funnel(data),
        sft(data),
        dpo(data),
        online_dpo(data),
        per_instruction_type(data),
        examples(data),
        exports(data),
        config(data),
    ] {
        page.push_str(&section);
        page.push('\n');
    }
    page.push_str("</main></body></html>\n");
    page
}

fn section(id: &str, title: &str, body: &str) -> String {
    format!("<section id=\"{id}\"><h2>{title}</h2>{body}</section>")
}

/// The "not run" line of a section whose data is missing, with the phase's state when
/// the summary knows it.
fn not_run(state: Option<&str>) -> String {
    match state {
        Some(state) if state != "done" => {
            format!("<p class=\"not-run\">not run (phase {})</p>", escape(state))
        }
        _ => "<p class=\"not-run\">not run</p>".to_string(),
    }
}

fn percent(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// Seconds as "1 h 02 min 03 s", "4 min 05 s" or "12.3 s".
fn duration(seconds: f64) -> String {
    let whole = seconds.round() as u64;
    match whole {
        0..=59 => format!("{seconds:.1} s"),
        60..=3599 => format!("{} min {:02} s", whole / 60, whole % 60),
        _ => format!(
            "{} h {:02} min {:02} s",
            whole / 3600,
            whole / 60 % 60,
            whole % 60
        ),
    }
}

/// A metric for a table cell: whole numbers as such, others with four significant digits.
fn metric(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if x == 0.0 || (1e-3..1e5).contains(&x.abs()) {
                format!("{}", (x * 1e4).round() / 1e4)
            } else {
                format!("{x:.3e}")
            }
        }
        Value::String(s) => escape(s),
        Value::Null => "—".to_string(),
        other => escape(&other.to_string()),
    }
}

fn header(data: &RunData, generated: &str) -> String {
    let s = &data.summary;
    let total: f64 = s.phases.iter().filter_map(|p| p.seconds).sum();
    let prompts = s
        .ifeval_before
        .as_ref()
        .or(s.ifeval_after.as_ref())
        .map(|e| e.scores.prompts);
    let ifeval = match prompts {
        Some(n) if n >= IFEVAL_PROMPTS => {
            format!("IFEval on {n} prompts (all of the {IFEVAL_PROMPTS}), greedy")
        }
        Some(n) => format!("IFEval on {n} prompts (first {n} of the {IFEVAL_PROMPTS}), greedy"),
        None => "IFEval not run".to_string(),
    };
    let mut rows = vec![
        ("Model", escape(&s.model)),
        ("Report date", escape(generated)),
        ("Total wall time", duration(total)),
        ("IFEval", ifeval),
    ];
    if let Some(version) = &s.autoif_version {
        rows.push(("autoif", escape(version)));
    }
    let mut out = String::from("<header><h1>AutoIF run report</h1><dl class=\"meta\">");
    for (name, value) in rows {
        let _ = write!(out, "<dt>{name}</dt><dd>{value}</dd>");
    }
    out.push_str("</dl></header>");
    out
}

fn ifeval_table(data: &RunData) -> String {
    let (before, after) = (&data.summary.ifeval_before, &data.summary.ifeval_after);
    if before.is_none() && after.is_none() {
        return section("ifeval", "IFEval before / after", &not_run(None));
    }
    let names = [
        "prompt-level strict",
        "prompt-level loose",
        "instruction-level strict",
        "instruction-level loose",
    ];
    let mut body = String::from(
        "<table><tr><th>accuracy</th><th class=\"num\">before</th>\
         <th class=\"num\">after</th><th class=\"num\">change</th></tr>",
    );
    for (i, name) in names.into_iter().enumerate() {
        let cell = |e: &Option<IfevalResult>| {
            e.as_ref()
                .map_or("<span class=\"not-run\">not run</span>".to_string(), |e| {
                    percent(e.headline()[i])
                })
        };
        let change = match (before, after) {
            (Some(b), Some(a)) => {
                let points = 100.0 * (a.headline()[i] - b.headline()[i]);
                let class = if points > 0.005 {
                    "up"
                } else if points < -0.005 {
                    "down"
                } else {
                    "flat"
                };
                format!("<span class=\"{class}\">{points:+.2} pts</span>")
            }
            _ => "—".to_string(),
        };
        let _ = write!(
            body,
            "<tr><td>{name}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{change}</td></tr>",
            cell(before),
            cell(after)
        );
    }
    body.push_str("</table>");
    if let Some(change) = &data.summary.ifeval_change {
        body.push_str(&paired_table(change));
    }
    section("ifeval", "IFEval before / after", &body)
}

/// The prompt-level change prompt by prompt, with its exact McNemar p-value.
fn paired_table(change: &IfevalChange) -> String {
    let mut out = format!(
        "<h3>Prompt level, paired over {} prompts</h3><table><tr><th>mode</th>\
         <th class=\"num\">passed before</th><th class=\"num\">passed after</th>\
         <th class=\"num\">gained</th><th class=\"num\">lost</th>\
         <th class=\"num\">exact McNemar p</th></tr>",
        change.prompts
    );
    for (mode, c) in [("strict", &change.strict), ("loose", &change.loose)] {
        let _ = write!(
            out,
            "<tr><td>{mode}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            c.passed_before,
            c.passed_after,
            c.gained,
            c.lost,
            format_p(c.p_value)
        );
    }
    out.push_str(
        "</table><p class=\"note\">Gained: prompts that failed before and pass after; lost: the \
         reverse. p: two-sided exact McNemar test on those two counts, the chance of a split at \
         least this uneven if training changed nothing. Below 0.05 is the usual bar.</p>",
    );
    out
}

fn phase_table(data: &RunData) -> String {
    let phases = &data.summary.phases;
    if phases.is_empty() {
        return section("phases", "Phases", &not_run(None));
    }
    let mut body =
        String::from("<table><tr><th>phase</th><th>state</th><th class=\"num\">seconds</th></tr>");
    for phase in phases {
        let seconds = phase.seconds.map_or("—".to_string(), |s| format!("{s:.1}"));
        let state = phase.state.as_str();
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"state-{state}\">{state}</td><td class=\"num\">{seconds}</td></tr>",
            escape(&phase.name)
        );
    }
    body.push_str("</table>");
    section("phases", "Phases", &body)
}

/// One row per funnel stage: its own in-versus-out bars (units differ between stages,
/// so each row has its own scale) and the drop reasons.
fn funnel(data: &RunData) -> String {
    let rows = &data.summary.funnel;
    if rows.is_empty() {
        return section("funnel", "Stage funnel", &not_run(None));
    }
    let series = [
        BarSeries {
            name: "in".into(),
            color: MUTED,
        },
        BarSeries {
            name: "out".into(),
            color: PALETTE[0],
        },
    ];
    let swatch = |s: &BarSeries| format!("<span style=\"color:{}\">■</span> {}", s.color, s.name);
    let mut body = format!(
        "<table><tr><th>stage</th><th>{} / {}</th><th class=\"num\">kept</th><th>dropped</th></tr>",
        swatch(&series[0]),
        swatch(&series[1])
    );
    for row in rows {
        let chart = svg::bar_chart(
            &[BarGroup {
                label: String::new(),
                values: vec![Some(row.input as f64), Some(row.output as f64)],
            }],
            &series,
            &BarOptions {
                title: String::new(),
                x_label: String::new(),
                width: 460.0,
                x_bounds: None,
                format: ValueFormat::Count,
                legend: false,
            },
        );
        let kept = if row.input == 0 {
            "—".to_string()
        } else {
            percent(row.output as f64 / row.input as f64)
        };
        let dropped = if row.dropped.is_empty() {
            "none".to_string()
        } else {
            let items: String = row
                .dropped
                .iter()
                .map(|(reason, n)| format!("<li>{}: {n}</li>", escape(reason)))
                .collect();
            format!("<ul>{items}</ul>")
        };
        let _ = write!(
            body,
            "<tr><td>{}<br><span class=\"note\">{}</span></td><td>{chart}</td>\
             <td class=\"num\">{kept}</td><td>{dropped}</td></tr>",
            escape(&row.stage),
            escape(&row.unit)
        );
    }
    body.push_str("</table>");
    section("funnel", "Stage funnel", &body)
}

fn single_series(name: &str, points: Vec<(f64, f64)>) -> Vec<Series> {
    vec![Series {
        name: name.to_string(),
        color: PALETTE[0],
        points,
    }]
}

/// The last metrics line the summary holds for a phase, as one line of key = value.
fn final_metrics(line: &Option<Value>) -> String {
    let Some(Value::Object(map)) = line else {
        return String::new();
    };
    let items: Vec<String> = map
        .iter()
        .map(|(key, value)| format!("{} = {}", escape(key), metric(value)))
        .collect();
    format!("<p class=\"note\">Last logged: {}</p>", items.join(" · "))
}

fn sft(data: &RunData) -> String {
    let Some(lines) = &data.sft else {
        return section("sft", "SFT loss", &not_run(data.phase_state(Phase::Sft)));
    };
    let chart = svg::line_chart(
        &single_series("loss", points(lines, "step", "loss")),
        &LineOptions::new("SFT loss per optimizer step", "step", "loss"),
    );
    let body = format!("{chart}{}", final_metrics(&data.summary.training.sft));
    section("sft", "SFT loss", &body)
}

fn dpo(data: &RunData) -> String {
    let Some(lines) = &data.dpo else {
        return section("dpo", "DPO", &not_run(data.phase_state(Phase::Dpo)));
    };
    let loss = svg::line_chart(
        &single_series("loss", points(lines, "step", "loss")),
        &LineOptions::new("DPO loss per optimizer step", "step", "loss"),
    );
    let margins = svg::line_chart(
        &[
            ("margin (chosen − rejected)", "rewards/margins", PALETTE[0]),
            ("chosen", "rewards/chosen", PALETTE[2]),
            ("rejected", "rewards/rejected", PALETTE[1]),
        ]
        .map(|(name, key, color)| Series {
            name: name.to_string(),
            color,
            points: points(lines, "step", key),
        }),
        &LineOptions::new("DPO implicit rewards", "step", "reward"),
    );
    let accuracy = svg::line_chart(
        &single_series("accuracy", points(lines, "step", "rewards/accuracies")),
        &LineOptions {
            y_bounds: Some((0.0, 1.0)),
            ..LineOptions::new(
                "DPO reward accuracy (share of pairs with chosen > rejected)",
                "step",
                "accuracy",
            )
        },
    );
    let body = format!(
        "{loss}{margins}{accuracy}{}",
        final_metrics(&data.summary.training.dpo)
    );
    section("dpo", "DPO", &body)
}

fn online_dpo(data: &RunData) -> String {
    let Some(lines) = &data.online_dpo else {
        return section(
            "online-dpo",
            "Online DPO",
            &not_run(data.phase_state(Phase::OnlineDpo)),
        );
    };
    let chart = svg::line_chart(
        &[
            ("mean pass rate", "mean_pass_rate", PALETTE[0]),
            ("chosen share", "chosen_share", PALETTE[2]),
        ]
        .map(|(name, key, color)| Series {
            name: name.to_string(),
            color,
            points: points(lines, "iteration", key),
        }),
        &LineOptions {
            y_bounds: Some((0.0, 1.0)),
            ..LineOptions::new(
                "Online DPO: verification pass rate of the policy's samples",
                "iteration",
                "fraction",
            )
        },
    );
    // (heading, key); "—" where an iteration without pairs trained nothing.
    let columns = [
        ("iteration", "iteration"),
        ("prompts", "prompts"),
        ("samples", "samples"),
        ("pass rate", "mean_pass_rate"),
        ("chosen share", "chosen_share"),
        ("pairs", "pairs"),
        ("loss", "loss"),
        ("reward acc.", "rewards/accuracies"),
        ("margin", "rewards/margins"),
        ("seconds", "seconds"),
    ];
    let mut table = String::from("<table><tr>");
    for (heading, _) in columns {
        let _ = write!(table, "<th class=\"num\">{heading}</th>");
    }
    table.push_str("</tr>");
    for line in lines {
        table.push_str("<tr>");
        for (_, key) in columns {
            let _ = write!(table, "<td class=\"num\">{}</td>", metric(&line[key]));
        }
        table.push_str("</tr>");
    }
    table.push_str("</table>");
    let body = format!(
        "{chart}{table}{}",
        final_metrics(&data.summary.training.online_dpo)
    );
    section("online-dpo", "Online DPO", &body)
}

/// Strict instruction-level accuracy per instruction type, before beside after.
fn per_instruction_type(data: &RunData) -> String {
    let title = "IFEval per instruction type";
    let evals: Vec<(&str, &'static str, &IfevalResult)> = [
        ("before", MUTED, &data.summary.ifeval_before),
        ("after", PALETTE[0], &data.summary.ifeval_after),
    ]
    .into_iter()
    .filter_map(|(name, color, e)| e.as_ref().map(|e| (name, color, e)))
    .collect();
    if evals.is_empty() {
        return section("per-type", title, &not_run(None));
    }
    let types: BTreeSet<&String> = evals
        .iter()
        .flat_map(|(_, _, e)| e.scores.per_instruction_type.keys())
        .collect();
    let groups: Vec<BarGroup> = types
        .into_iter()
        .map(|name| BarGroup {
            label: name.clone(),
            values: evals
                .iter()
                .map(|(_, _, e)| e.scores.per_instruction_type.get(name).map(|a| a.strict))
                .collect(),
        })
        .collect();
    let series: Vec<BarSeries> = evals
        .iter()
        .map(|&(name, color, _)| BarSeries {
            name: name.to_string(),
            color,
        })
        .collect();
    let chart = svg::bar_chart(
        &groups,
        &series,
        &BarOptions {
            title: "Strict accuracy per instruction type".into(),
            x_label: "instructions followed (strict)".into(),
            width: CHART_WIDTH,
            x_bounds: Some((0.0, 1.0)),
            format: ValueFormat::Percent,
            legend: true,
        },
    );
    let split = data
        .summary
        .ifeval_coverage
        .as_ref()
        .map(|c| coverage_table(c, &evals))
        .unwrap_or_default();
    section("per-type", title, &format!("{chart}{split}"))
}

/// The per-type table in two groups, the types the training instructions name and the
/// rest, each with its pooled instruction-level accuracy before and after.
fn coverage_table(split: &CoverageSplit, evals: &[(&str, &'static str, &IfevalResult)]) -> String {
    let cell = |a: Option<&Accuracy>, f: fn(&Accuracy) -> f64| {
        a.map_or("—".to_string(), |a| percent(f(a)))
    };
    let lookup = |side: &str, name: &str| {
        evals
            .iter()
            .find(|(n, _, _)| *n == side)
            .and_then(|(_, _, e)| e.scores.per_instruction_type.get(name))
            .copied()
    };
    let row = |label: String, before: Option<Accuracy>, after: Option<Accuracy>, class: &str| {
        let n = before.or(after).map_or(0, |a| a.count);
        format!(
            "<tr class=\"{class}\"><td>{label}</td><td class=\"num\">{n}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            cell(before.as_ref(), |a| a.strict),
            cell(after.as_ref(), |a| a.strict),
            cell(before.as_ref(), |a| a.loose),
            cell(after.as_ref(), |a| a.loose)
        )
    };
    let mut out = String::from(
        "<h3>Types the training instructions cover, and the rest</h3><table><tr>\
         <th>instruction type</th><th class=\"num\">n</th><th class=\"num\">strict before</th>\
         <th class=\"num\">strict after</th><th class=\"num\">loose before</th>\
         <th class=\"num\">loose after</th></tr>",
    );
    for (name, group) in [
        ("covered by training instructions", &split.covered),
        ("not covered", &split.not_covered),
    ] {
        let TypeGroup {
            types,
            before,
            after,
        } = group;
        out.push_str(&row(
            format!(
                "<strong>{name}</strong> ({} type{})",
                types.len(),
                if types.len() == 1 { "" } else { "s" }
            ),
            *before,
            *after,
            "group",
        ));
        for t in types {
            out.push_str(&row(
                format!("&nbsp;&nbsp;{}", escape(t)),
                lookup("before", t),
                lookup("after", t),
                "type",
            ));
        }
    }
    out.push_str("</table>");
    let note = if split.training_types.is_empty() {
        "The training instructions name no IFEval instruction type (model-written \
         instructions do not; hand-written ones name them in <code>ifeval_types</code>), so \
         every type counts as not covered."
            .to_string()
    } else {
        "Instruction level. Covered: the IFEval types the training instructions name in \
         <code>ifeval_types</code>; a gain on the other types is one that generalises beyond \
         what was trained."
            .to_string()
    };
    let _ = write!(out, "<p class=\"note\">{note}</p>");
    out
}

fn examples(data: &RunData) -> String {
    let title = "Example instructions and their kept functions";
    let examples = &data.summary.examples;
    if examples.is_empty() {
        return section("examples", title, &not_run(None));
    }
    let mut body = String::new();
    for (i, example) in examples.iter().enumerate() {
        let _ = write!(body, "<h3>{}. {}</h3>", i + 1, escape(&example.instruction));
        if example.funcs.is_empty() {
            body.push_str("<p class=\"note\">no function kept</p>");
        }
        for func in &example.funcs {
            let _ = write!(body, "<pre>{}</pre>", escape(func));
        }
    }
    section("examples", title, &body)
}

fn exports(data: &RunData) -> String {
    let Some(exports) = &data.summary.exports else {
        return section(
            "exports",
            "Exports",
            &not_run(data.phase_state(Phase::Export)),
        );
    };
    let mut rows: Vec<(String, Option<&str>)> =
        vec![("merged model".into(), exports.merged.as_deref())];
    for (kind, paths) in [
        ("adapter", &exports.adapters),
        ("data set", &exports.datasets),
    ] {
        rows.extend(
            paths
                .iter()
                .map(|(name, path)| (format!("{name} {kind}"), path.as_str())),
        );
    }
    let mut body = String::from("<table><tr><th>export</th><th>path</th></tr>");
    for (name, path) in rows {
        let path = path.map_or(
            "<span class=\"not-run\">not written</span>".to_string(),
            |p| format!("<code>{}</code>", escape(p)),
        );
        let _ = write!(body, "<tr><td>{}</td><td>{path}</td></tr>", escape(&name));
    }
    body.push_str("</table>");
    section("exports", "Exports", &body)
}

fn config(data: &RunData) -> String {
    if data.summary.config.is_null() {
        return String::new();
    }
    let text = serde_json::to_string_pretty(&data.summary.config).unwrap_or_default();
    section(
        "config",
        "Configuration",
        &format!(
            "<details><summary>resolved run configuration</summary><pre>{}</pre></details>",
            escape(&text)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(extra: Value) -> Summary {
        let mut base = json!({
            "model": "models/tiny.gguf",
            "phases": [
                {"name": "ifeval_before", "state": "done", "seconds": 61.5},
                {"name": "sft", "state": "skipped", "seconds": null},
            ],
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn data(summary: Summary) -> RunData {
        RunData {
            summary,
            sft: None,
            dpo: None,
            online_dpo: None,
        }
    }

    #[test]
    fn escapes_markup_from_files() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        let page = render(
            &data(summary(json!({
                "model": "m<i>",
                "examples": [{"instruction": "Say <script>alert(1)</script> & stop",
                              "funcs": ["def evaluate(r):\n    return '<' in r"]}],
                "funnel": [{"stage": "<s>", "unit": "u&", "in": 3, "out": 1,
                            "dropped": {"x<y": 2}}],
            }))),
            "today",
        );
        assert!(!page.contains("<script"), "no script element");
        assert!(page.contains("Say &lt;script&gt;alert(1)&lt;/script&gt; &amp; stop"));
        assert!(page.contains("return &#39;&lt;&#39; in r"));
        assert!(page.contains("m&lt;i&gt;") && !page.contains("<i>"));
        assert!(page.contains("&lt;s&gt;") && page.contains("x&lt;y: 2"));
    }

    #[test]
    fn missing_phases_render_not_run() {
        let page = render(&data(summary(json!({}))), "today");
        for id in [
            "ifeval",
            "funnel",
            "sft",
            "dpo",
            "online-dpo",
            "per-type",
            "examples",
            "exports",
        ] {
            let start = page.find(&format!("<section id=\"{id}\">")).unwrap();
            let end = start + page[start..].find("</section>").unwrap();
            assert!(page[start..end].contains("not run"), "section {id}");
        }
        assert!(
            page.contains("not run (phase skipped)"),
            "the sft phase's state"
        );
        assert!(page.contains("IFEval not run"));
        assert!(page.contains("1 min 02 s"), "total wall time");
        assert!(!page.contains("<svg"));
    }

    #[test]
    fn nan_and_null_losses_are_skipped() {
        let lines: Vec<Value> = vec![
            json!({"step": 1, "loss": 2.0}),
            json!({"step": 2, "loss": null}),
            json!({"step": 3, "loss": 1.5}),
        ];
        assert_eq!(points(&lines, "step", "loss"), vec![(1.0, 2.0), (3.0, 1.5)]);
        let mut run = data(summary(json!({})));
        run.sft = Some(lines);
        run.dpo = Some(vec![json!({"step": 1, "loss": null})]);
        run.online_dpo = Some(vec![]);
        let page = render(&run, "today");
        assert!(!page.contains("NaN"));
        assert_eq!(page.matches("<svg").count(), 1 + 3 + 1);
        assert!(
            page.contains("no data"),
            "an all-null DPO run draws empty charts"
        );
    }

    #[test]
    fn ifeval_deltas_in_points() {
        let eval = |strict: f64| {
            json!({"prompts": 120, "instructions": 180,
                   "prompt_level_strict_acc": strict, "prompt_level_loose_acc": 0.3,
                   "inst_level_strict_acc": 0.35, "inst_level_loose_acc": 0.38,
                   "per_instruction_type": {"punctuation:no_comma": {"count": 10, "strict": 0.4, "loose": 0.5}},
                   "per_category": {}, "dir": "x"})
        };
        let page = render(
            &data(summary(json!({
                "ifeval_before": eval(0.25), "ifeval_after": eval(0.2),
            }))),
            "today",
        );
        assert!(page.contains("IFEval on 120 prompts (first 120 of the 541), greedy"));
        assert!(page.contains("<span class=\"down\">-5.00 pts</span>"));
        assert_eq!(
            page.matches("<span class=\"flat\">+0.00 pts</span>")
                .count(),
            3
        );
        assert!(page.contains(">40.0%</text>"));
    }

    #[test]
    fn paired_change_and_coverage_split_are_shown() {
        let eval = |strict: f64| {
            json!({"prompts": 541, "instructions": 6,
                   "prompt_level_strict_acc": 0.1, "prompt_level_loose_acc": 0.2,
                   "inst_level_strict_acc": 0.3, "inst_level_loose_acc": 0.4,
                   "per_instruction_type": {
                       "punctuation:no_comma": {"count": 4, "strict": strict, "loose": 0.5},
                       "startend:quotation": {"count": 2, "strict": 0.5, "loose": 0.5}},
                   "per_category": {}})
        };
        let change = |gained: usize, lost: usize| {
            json!({"passed_before": 100, "passed_after": 100 + gained - lost,
                   "gained": gained, "lost": lost,
                   "p_value": crate::eval::ifeval::mcnemar_exact_p(gained, lost)})
        };
        let page = render(
            &data(summary(json!({
                "ifeval_before": eval(0.25), "ifeval_after": eval(0.75),
                "ifeval_change": {"prompts": 541, "strict": change(10, 0),
                                  "loose": change(28, 25)},
                "ifeval_coverage": {
                    "training_types": ["punctuation:no_comma"],
                    "covered": {"types": ["punctuation:no_comma"],
                                "before": {"count": 4, "strict": 0.25, "loose": 0.5},
                                "after": {"count": 4, "strict": 0.75, "loose": 0.5}},
                    "not_covered": {"types": ["startend:quotation"],
                                    "before": {"count": 2, "strict": 0.5, "loose": 0.5},
                                    "after": {"count": 2, "strict": 0.5, "loose": 0.5}}},
            }))),
            "today",
        );
        assert!(page.contains("Prompt level, paired over 541 prompts"));
        assert!(page.contains(
            "<td>loose</td><td class=\"num\">100</td><td class=\"num\">103</td>\
             <td class=\"num\">28</td><td class=\"num\">25</td><td class=\"num\">0.7838</td>"
        ));
        assert!(
            page.contains("<td class=\"num\">0.0020</td>"),
            "10 gained, 0 lost"
        );
        assert!(page.contains("<strong>covered by training instructions</strong> (1 type)"));
        assert!(page.contains(
            "<td class=\"num\">4</td><td class=\"num\">25.00%</td><td class=\"num\">75.00%</td>"
        ));
        let not_covered = page.find("<strong>not covered</strong>").unwrap();
        assert!(page[not_covered..].contains("startend:quotation"));
        assert!(!page[not_covered..].contains("punctuation:no_comma"));
    }

    #[test]
    fn unreadable_files_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_report(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("summary.json: cannot read"));
        std::fs::write(dir.path().join("summary.json"), r#"{"model": "m"}"#).unwrap();
        std::fs::create_dir(dir.path().join("sft")).unwrap();
        std::fs::write(
            dir.path().join("sft/metrics.jsonl"),
            "{\"step\": 1}\n{\"ste",
        )
        .unwrap();
        let err = format!("{:#}", write_report(dir.path()).unwrap_err());
        assert!(err.contains("sft/metrics.jsonl:2: not valid JSON"), "{err}");
        assert!(!RunLayout::new(dir.path()).report().exists());
    }
}
