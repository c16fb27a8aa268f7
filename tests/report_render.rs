//! The run report from a realistic fake run folder: the page's structure and numbers,
//! its well-formedness, and (where Chromium is installed) that a headless browser parses
//! it to the same DOM, screenshots it and logs no console error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use autoif::run::report::write_report;
use serde_json::{json, Value};

const SFT_STEPS: usize = 30;
const DPO_STEPS: usize = 30;
/// Funnel rows (one chart each) + SFT loss + DPO loss, rewards, accuracy + online DPO +
/// per instruction type.
const EXPECTED_CHARTS: usize = 4 + 1 + 3 + 1 + 1;

fn write_jsonl(path: &Path, lines: &[Value]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn ifeval(prompt_strict: f64, inst_strict: f64, no_comma: f64, dir: &str) -> Value {
    json!({
        "prompts": 120, "instructions": 180,
        "prompt_level_strict_acc": prompt_strict, "prompt_level_loose_acc": 0.27,
        "inst_level_strict_acc": inst_strict, "inst_level_loose_acc": 0.38,
        "per_instruction_type": {
            "punctuation:no_comma": {"count": 10, "strict": no_comma, "loose": 0.5},
            "change_case:english_lowercase": {"count": 8, "strict": 0.25, "loose": 0.375},
            "detectable_format:number_highlighted_sections": {"count": 6, "strict": 0.5, "loose": 0.5},
            "length_constraints:number_words": {"count": 12, "strict": 0.5, "loose": 0.5833},
        },
        "per_category": {"punctuation": {"count": 10, "strict": no_comma, "loose": 0.5}},
        "dir": dir,
    })
}

/// A run folder as `autoif run` leaves it after every phase.
fn fake_run(dir: &Path) {
    let summary = json!({
        "autoif_version": "0.1.0",
        "model": "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "config": {"model": {"path": "models/SmolLM2-135M-Instruct.Q4_1.gguf"}, "train": {"sft": {"lr": 2e-4}}},
        "ifeval_before": ifeval(0.25, 0.35, 0.4, "ifeval_before"),
        "ifeval_after": ifeval(0.2833, 0.3278, 0.6, "ifeval_after"),
        "funnel": [
            {"stage": "augment", "unit": "instructions", "in": 120, "out": 96, "dropped": {"duplicate": 24}},
            {"stage": "crossval", "unit": "instructions", "in": 96, "out": 40, "dropped": {"no_function": 50, "no_case": 6}},
            {"stage": "responses", "unit": "responses", "in": 640, "out": 210, "dropped": {"low_pass_rate": 400, "empty_response": 30}},
            {"stage": "score", "unit": "responses", "in": 210, "out": 150, "dropped": {"low_score": 60}},
        ],
        "training": {
            "sft": {"step": SFT_STEPS, "loss": 1.25, "lr": 0.0},
            "dpo": {"step": DPO_STEPS, "loss": 0.61, "rewards/margins": 0.2},
            "online_dpo": {"iteration": 2, "pairs": 0},
        },
        "phases": [
            {"name": "ifeval_before", "state": "done", "seconds": 301.2},
            {"name": "augment", "state": "done", "seconds": 120.0},
            {"name": "sft", "state": "done", "seconds": 900.5},
            {"name": "dpo", "state": "done", "seconds": 600.0},
            {"name": "online_dpo", "state": "done", "seconds": 400.0},
            {"name": "ifeval_after", "state": "done", "seconds": 298.3},
            {"name": "backtranslate", "state": "skipped", "seconds": null},
        ],
        "exports": {
            "merged": "RUN/export/merged",
            "adapters": {"sft": "RUN/export/adapter-sft", "dpo": "RUN/export/adapter-dpo"},
            "datasets": {"sft": "RUN/export/sft.jsonl", "dpo": "RUN/export/dpo.jsonl"},
        },
        "examples": [
            {"instruction": "Answer in lowercase letters only.",
             "funcs": ["def evaluate(response):\n    return response == response.lower()"]},
            {"instruction": "Wrap your answer in <answer> tags & say \"done\".",
             "funcs": ["def evaluate(response):\n    return response.startswith('<answer>') and 'done' in response"]},
        ],
    });
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary).unwrap(),
    )
    .unwrap();

    let sft: Vec<Value> = (1..=SFT_STEPS)
        .map(|step| {
            let loss = 2.5 * (-(step as f64) / 12.0).exp() + 1.1;
            json!({"step": step, "epoch": step as f64 / 10.0, "loss": loss, "lr": 2e-4,
                   "grad_norm": 1.3, "tokens": 2048, "tokens_per_s": 510.0,
                   "elapsed_s": step as f64 * 4.0})
        })
        .collect();
    write_jsonl(&dir.join("sft/metrics.jsonl"), &sft);
    let dpo: Vec<Value> = (1..=DPO_STEPS)
        .map(|step| {
            let t = step as f64 / DPO_STEPS as f64;
            json!({"step": step, "epoch": t, "loss": 0.693 - 0.08 * t, "lr": 5e-5,
                   "grad_norm": 0.8, "tokens": 4096, "tokens_per_s": 300.0, "elapsed_s": step as f64 * 9.0,
                   "rewards/chosen": 0.1 * t, "rewards/rejected": -0.1 * t,
                   "rewards/margins": 0.2 * t, "rewards/accuracies": (0.4 + 0.5 * t).min(1.0),
                   "logps/chosen": -80.0, "logps/rejected": -95.0, "kl": 0.01 * t})
        })
        .collect();
    write_jsonl(&dir.join("dpo/metrics.jsonl"), &dpo);
    write_jsonl(
        &dir.join("online_dpo/iterations.jsonl"),
        &[
            json!({"iteration": 1, "prompts": 40, "samples": 160, "mean_pass_rate": 0.31,
                   "chosen_share": 0.2, "pairs": 25, "loss": 0.68, "rewards/accuracies": 0.6,
                   "rewards/margins": 0.05, "seconds": 200.0}),
            json!({"iteration": 2, "prompts": 40, "samples": 160, "mean_pass_rate": 0.37,
                   "chosen_share": 0.25, "pairs": 0, "seconds": 150.0}),
        ],
    );
}

/// Every non-void element is closed in order (the page escapes all text, so a `<` in the
/// markup always starts a tag).
fn assert_balanced(html: &str) {
    const VOID: [&str; 4] = ["meta", "br", "hr", "img"];
    let tag = regex::Regex::new(r"<(/?)([A-Za-z][A-Za-z0-9]*)\b[^<>]*?(/?)>").unwrap();
    let mut open: Vec<String> = Vec::new();
    for cap in tag.captures_iter(html) {
        let name = cap[2].to_ascii_lowercase();
        if &cap[3] == "/" || VOID.contains(&name.as_str()) {
            continue;
        }
        if &cap[1] == "/" {
            assert_eq!(
                open.pop().as_deref(),
                Some(name.as_str()),
                "</{name}> closes the wrong element"
            );
        } else {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
}

#[test]
fn report_of_a_full_run() {
    let dir = tempfile::tempdir().unwrap();
    fake_run(dir.path());
    let path = write_report(dir.path()).unwrap();
    assert_eq!(path, dir.path().join("report.html"));
    let html = std::fs::read_to_string(&path).unwrap();

    assert_eq!(html.matches("<svg").count(), EXPECTED_CHARTS);
    assert_eq!(html.matches("</svg>").count(), EXPECTED_CHARTS);
    assert_balanced(&html);
    assert!(!html.contains("<script"));
    // No external resources: the only URL is the SVG namespace.
    assert!(!html.contains("https://"));
    assert_eq!(
        html.matches("http://").count(),
        html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
    );
    assert!(!html.contains("not run"), "every phase has its data");

    assert!(html.contains("IFEval on 120 prompts (first 120 of the 541), greedy"));
    assert!(html.contains("<td class=\"num\">25.00%</td><td class=\"num\">28.33%</td>"));
    assert!(html.contains("<span class=\"up\">+3.33 pts</span>"));
    assert!(html.contains("<span class=\"down\">-2.22 pts</span>"));
    // 301.2 + 120 + 900.5 + 600 + 400 + 298.3 seconds.
    assert!(html.contains("<dd>43 min 40 s</dd>"));
    // Paired per-type bars, sorted by type name: 4 types × (before, after).
    let per_type = &html[html.find("<section id=\"per-type\">").unwrap()..];
    let labels: Vec<usize> = [
        "change_case:english_lowercase",
        "detectable_format:number_highlighted_sections",
        "length_constraints:number_words",
        "punctuation:no_comma",
    ]
    .iter()
    .map(|t| per_type.find(&format!(">{t}</text>")).unwrap())
    .collect();
    assert!(
        labels.windows(2).all(|w| w[0] < w[1]),
        "sorted by type name"
    );
    assert!(per_type.contains("<title>before: 40.0%</title>"));
    assert!(per_type.contains("<title>after: 60.0%</title>"));
    // The funnel lists its drop reasons; the SFT curve has one point per step.
    assert!(html.contains("<li>low_pass_rate: 400</li>"));
    let sft = &html[html.find("<section id=\"sft\">").unwrap()..];
    let path_data = sft
        .split("<path d=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(path_data.matches(['M', 'L']).count(), SFT_STEPS);
    // Text from the files arrives escaped.
    assert!(html.contains("Wrap your answer in &lt;answer&gt; tags &amp; say &quot;done&quot;."));
    assert!(html.contains("startswith(&#39;&lt;answer&gt;&#39;)"));
    assert!(html.contains("<code>RUN/export/merged</code>"));

    match chromium() {
        Some(chromium) => check_in_browser(&chromium, &path, &html),
        None => println!("SKIP: chromium not installed"),
    }
}

fn chromium() -> Option<PathBuf> {
    let usr_bin = PathBuf::from("/usr/bin/chromium");
    if usr_bin.is_file() {
        return Some(usr_bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
}

/// Runs headless Chromium with `args` on the page, killing it after a minute.
fn headless(chromium: &Path, profile: &Path, args: &[&str], page: &Path) -> Output {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("chromium ran for more than a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn assert_no_console_errors(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    for marker in ["Uncaught", "ERROR:CONSOLE"] {
        assert!(!stderr.contains(marker), "console error in:\n{stderr}");
    }
    assert!(output.status.success(), "chromium failed:\n{stderr}");
}

fn check_in_browser(chromium: &Path, page: &Path, html: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let png = scratch.path().join("report.png");
    let shot = headless(
        chromium,
        &scratch.path().join("profile"),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,3000",
            "--hide-scrollbars",
        ],
        page,
    );
    assert_no_console_errors(&shot);
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert!(width >= 1000 && height >= 2500, "{width}×{height}");
    // A blank 1200×3000 page compresses to a few KB; charts and text take far more.
    assert!(bytes.len() > 40_000, "{} bytes", bytes.len());

    let dump = headless(
        chromium,
        &scratch.path().join("profile"),
        &["--dump-dom"],
        page,
    );
    assert_no_console_errors(&dump);
    let dom = String::from_utf8_lossy(&dump.stdout);
    assert_eq!(dom.matches("<svg").count(), html.matches("<svg").count());
    assert_eq!(
        dom.matches("<section").count(),
        html.matches("<section").count()
    );
    assert!(dom.contains("IFEval on 120 prompts (first 120 of the 541), greedy"));
    println!(
        "chromium: {width}×{height} PNG of {} bytes, DOM of {} bytes",
        bytes.len(),
        dom.len()
    );
}
