//! Peak memory of a target log-prob forward + backward at 4096 tokens over SmolLM2's 49,152
//! vocabulary: unfused (the head's f32 logits, then `train_ops::target_logprob_and_lse`),
//! the fused head (`head_target_logprob_and_lse`, the CPU training path) and
//! `chunked_logprob`. Each runs in its own child process, which reports how far
//! its peak resident set grew above where it stood once the inputs existed (Linux
//! `VmHWM`). The hidden size is small (128): logits memory does not depend on it, and it
//! keeps the products quick.

use autoif::model::ops::chunked_logprob::chunked_target_logprobs;
use autoif::model::ops::train_ops::{head_target_logprob_and_lse, target_logprob_and_lse};
use candle_core::{Device, Tensor, Var};
use std::process::Command;

const TOKENS: usize = 4096;
const VOCAB: usize = 49152;
const HIDDEN: usize = 128;
const CHILD_ENV: &str = "AUTOIF_LOGPROB_MEMORY_CHILD";

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn inputs() -> (Tensor, Tensor, Tensor) {
    let values = |len: usize, k: f32| -> Vec<f32> {
        (0..len).map(|i| ((i as f32 * k).sin()) * 0.5).collect()
    };
    let dev = Device::Cpu;
    let hidden = Tensor::from_vec(values(TOKENS * HIDDEN, 0.37), (TOKENS, HIDDEN), &dev).unwrap();
    let head = Tensor::from_vec(values(VOCAB * HIDDEN, 0.11), (VOCAB, HIDDEN), &dev).unwrap();
    let targets: Vec<u32> = (0..TOKENS).map(|i| (i * 7919 % VOCAB) as u32).collect();
    (
        hidden,
        head,
        Tensor::from_vec(targets, TOKENS, &dev).unwrap(),
    )
}

/// In the child: runs one path and prints the growth of the peak resident set and Σ logp.
#[test]
fn child_reports_peak_memory() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (hidden, head, targets) = inputs();
    let before = status_kib("VmHWM:");
    let started = std::time::Instant::now();
    let var = Var::from_tensor(&hidden).unwrap();
    let logp = match mode.as_str() {
        "unfused" => {
            let logits = var.as_tensor().matmul(&head.t().unwrap()).unwrap();
            target_logprob_and_lse(&logits, &targets)
                .unwrap()
                .narrow(1, 0, 1)
                .unwrap()
                .squeeze(1)
                .unwrap()
        }
        "fused-head" => head_target_logprob_and_lse(var.as_tensor(), &head, &targets)
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .squeeze(1)
            .unwrap(),
        "chunked" => chunked_target_logprobs(var.as_tensor(), &head, &targets).unwrap(),
        other => panic!("unknown mode {other}"),
    };
    let loss = logp.sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let grad_norm = grads
        .get(var.as_tensor())
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let peak = status_kib("VmHWM:");
    println!(
        "PEAK_GROWTH_KIB={} SECONDS={:.2} SUM={} GRAD_NORM_SQ={}",
        peak.saturating_sub(before),
        started.elapsed().as_secs_f64(),
        loss.to_scalar::<f32>().unwrap(),
        grad_norm
    );
}

/// (peak growth KiB, seconds, Σ logp, ‖grad‖²) of one child.
fn run_child(mode: &str) -> (u64, f64, f64, f64) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_reports_peak_memory",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{mode} child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The libtest harness may print the report on its own "test … " line.
    let line = stdout
        .lines()
        .find_map(|l| l.find("PEAK_GROWTH_KIB=").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no report from the {mode} child:\n{stdout}"));
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .unwrap()
            .parse()
            .unwrap()
    };
    (
        field("PEAK_GROWTH_KIB=") as u64,
        field("SECONDS="),
        field("SUM="),
        field("GRAD_NORM_SQ="),
    )
}

#[test]
fn chunked_peak_memory_is_far_below_the_unfused_one() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let (unfused, unfused_s, unfused_sum, unfused_grad) = run_child("unfused");
    let (chunked, chunked_s, chunked_sum, chunked_grad) = run_child("chunked");
    let logits_mib = (TOKENS * VOCAB * 4) >> 20;
    println!(
        "forward + backward at {TOKENS} tokens × {VOCAB} vocab ({logits_mib} MiB of f32 logits): peak growth unfused {} MiB in {unfused_s:.2} s, chunked {} MiB in {chunked_s:.2} s",
        unfused >> 10,
        chunked >> 10
    );
    // Same function: the sums of log-probabilities and gradient norms agree.
    assert!(
        (unfused_sum - chunked_sum).abs() <= 1e-4 * unfused_sum.abs(),
        "{unfused_sum} vs {chunked_sum}"
    );
    assert!(
        (unfused_grad - chunked_grad).abs() <= 1e-3 * unfused_grad,
        "{unfused_grad} vs {chunked_grad}"
    );
    // The unfused path holds at least the logits and their gradient.
    assert!(
        unfused >> 10 >= logits_mib as u64,
        "unfused grew only {} MiB",
        unfused >> 10
    );
    assert!(
        chunked * 3 <= unfused,
        "chunked {chunked} KiB vs unfused {unfused} KiB"
    );
}

/// The fused head keeps the logits and makes their gradient in place: one `[tokens,
/// vocab]` buffer where the unfused path's backward holds three.
#[test]
fn the_fused_head_holds_one_logits_buffer() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let (unfused, _, unfused_sum, unfused_grad) = run_child("unfused");
    let (fused, fused_s, fused_sum, fused_grad) = run_child("fused-head");
    let logits_kib = ((TOKENS * VOCAB * 4) >> 10) as u64;
    println!(
        "peak growth: unfused {} MiB, fused head {} MiB in {fused_s:.2} s ({} MiB of logits)",
        unfused >> 10,
        fused >> 10,
        logits_kib >> 10
    );
    // The same arithmetic: equal sums and gradient norms.
    assert!(
        (unfused_sum - fused_sum).abs() <= 1e-6 * unfused_sum.abs(),
        "{unfused_sum} vs {fused_sum}"
    );
    assert!(
        (unfused_grad - fused_grad).abs() <= 1e-5 * unfused_grad,
        "{unfused_grad} vs {fused_grad}"
    );
    // One buffer of logits plus the small hidden-state gradient (2 MiB here), against at
    // least two for the unfused path.
    assert!(
        fused <= logits_kib + logits_kib / 4,
        "fused head grew {fused} KiB for {logits_kib} KiB of logits"
    );
    assert!(unfused >= 2 * logits_kib, "unfused grew only {unfused} KiB");
}
