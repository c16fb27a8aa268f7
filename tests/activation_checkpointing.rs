//! Activation checkpointing (`Policy::checkpointing`) recomputes each decoder layer in the
//! backward pass; the loss and every LoRA gradient must be the ones of the pass that keeps
//! all activations. Checked for SFT and DPO on the tiny Llama and Qwen2 fixtures (short
//! packed sequences: the plain projection path) and on SmolLM2 (over 128 rows: the fused
//! adapted projection), with and without LoRA dropout.
//!
//! Tolerance: the recomputation runs the same kernels on the same inputs, so only the
//! order in which candle sums a tensor's gradient contributions may differ; each gradient
//! must agree to 1e-5 of its largest magnitude (f32 carries about 6e-8 relative).

mod common;

use autoif::model::lora::{Adapters, LoraConfig};
use autoif::model::{LoadOptions, Model};
use autoif::train::adapters::{adapter_vars, attach_adapters};
use autoif::train::data::{TokenBatch, Tokenized};
use autoif::train::dpo::{dpo_loss, DpoConfig, Reference};
use autoif::train::policy::{Loss, Policy};
use autoif::train::sft::sft_loss;
use candle_core::{DType, Device, Tensor};

const TOLERANCE: f64 = 1e-5;

fn load(path: &str) -> Model {
    let mut model = Model::load(path, &LoadOptions::cpu()).unwrap();
    attach_adapters(&mut model.decoder, &LoraConfig::default(), 3).unwrap();
    // B starts at zero (PEFT's init); give it values so A gets a gradient too.
    for (i, var) in adapter_vars(&model.decoder).iter().enumerate() {
        let t = (Tensor::randn(0f32, 0.05, var.shape(), &Device::Cpu).unwrap()
            * (i % 3 + 1) as f64)
            .unwrap();
        var.set(&t).unwrap();
    }
    model
}

/// Sequences of the given lengths with their second halves as targets.
fn sequences(vocab: usize, lengths: &[usize]) -> Vec<Tokenized> {
    lengths
        .iter()
        .enumerate()
        .map(|(s, &len)| Tokenized {
            ids: (0..len)
                .map(|j| ((j * 37 + s * 11 + 1) % vocab) as u32)
                .collect(),
            labels: (0..len).map(|j| j >= len / 2).collect(),
        })
        .collect()
}

/// The loss and each adapter variable's gradient.
fn gradients(model: &Model, loss: Loss) -> (f64, Vec<Tensor>) {
    let value = loss.value.to_scalar::<f32>().unwrap() as f64;
    let grads = loss.backward(&model.decoder).unwrap();
    let grads = adapter_vars(&model.decoder)
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .expect("every adapter gets a gradient")
                .clone()
        })
        .collect();
    (value, grads)
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Runs `loss` without and with checkpointing and compares.
fn check(name: &str, model: &Model, adapters: Adapters, loss: impl Fn(Policy) -> Loss) {
    let (kept_loss, kept) = gradients(
        model,
        loss(Policy {
            adapters,
            checkpointing: false,
        }),
    );
    let (ckpt_loss, ckpt) = gradients(
        model,
        loss(Policy {
            adapters,
            checkpointing: true,
        }),
    );
    assert!(
        (kept_loss - ckpt_loss).abs() <= TOLERANCE * kept_loss.abs().max(1e-6),
        "{name}: loss {kept_loss} vs {ckpt_loss} checkpointed"
    );
    let mut worst = 0f64;
    for (i, (a, b)) in kept.iter().zip(&ckpt).enumerate() {
        let scale = max_abs(a);
        assert!(
            scale > 0.0,
            "{name}: adapter variable {i} has a zero gradient"
        );
        let rel = max_abs(&(a - b).unwrap()) / scale;
        worst = worst.max(rel);
        assert!(
            rel <= TOLERANCE,
            "{name}: adapter variable {i}: gradients differ by {rel:e} of their largest"
        );
    }
    eprintln!("{name}: loss {kept_loss}, worst relative gradient difference {worst:e}");
}

fn sft(name: &str, model: &Model, lengths: &[usize], adapters: Adapters) {
    let seqs = sequences(model.config.vocab_size, lengths);
    let refs: Vec<&Tokenized> = seqs.iter().collect();
    let batch = TokenBatch::new(&refs, &Device::Cpu).unwrap();
    let normalizer = batch.target_count();
    check(name, model, adapters, |policy| {
        sft_loss(&model.decoder, &batch, normalizer, policy)
            .unwrap()
            .0
    });
}

fn dpo(name: &str, model: &Model, lengths: &[usize], adapters: Adapters) {
    // Chosen sequences first, then the rejected ones (pair i = rows i and i + pairs).
    let chosen = sequences(model.config.vocab_size, lengths);
    let rejected: Vec<Tokenized> = chosen
        .iter()
        .map(|t| {
            let mut r = t.clone();
            let n = r.ids.len();
            for id in &mut r.ids[n / 2..] {
                *id = (*id * 7 + 3) % model.config.vocab_size as u32;
            }
            r
        })
        .collect();
    let refs: Vec<&Tokenized> = chosen.iter().chain(&rejected).collect();
    let batch = TokenBatch::new(&refs, &Device::Cpu).unwrap();
    let config = DpoConfig::default();
    check(name, model, adapters, |policy| {
        dpo_loss(
            &model.decoder,
            &batch,
            &config,
            lengths.len(),
            policy,
            Reference::Compute,
        )
        .unwrap()
        .0
    });
}

const DROPOUT: Adapters = Adapters::Dropout { p: 0.1, seed: 99 };

fn fixture(name: &str) -> Model {
    load(common::fixture(name).to_str().unwrap())
}

#[test]
fn tiny_llama_checkpointed_gradients_equal_kept_ones() {
    let model = fixture("tiny-llama");
    sft("tiny-llama SFT", &model, &[11, 7, 20], Adapters::On);
    sft("tiny-llama SFT dropout", &model, &[11, 7, 20], DROPOUT);
    dpo("tiny-llama DPO dropout", &model, &[9, 14], DROPOUT);
}

#[test]
fn tiny_qwen2_checkpointed_gradients_equal_kept_ones() {
    let model = fixture("tiny-qwen2");
    sft("tiny-qwen2 SFT", &model, &[11, 7, 20], Adapters::On);
    sft("tiny-qwen2 SFT dropout", &model, &[11, 7, 20], DROPOUT);
    dpo("tiny-qwen2 DPO", &model, &[9, 14], Adapters::On);
}

#[test]
fn smollm2_checkpointed_gradients_equal_kept_ones() {
    let Some(path) = common::smollm2("smollm2_checkpointed_gradients_equal_kept_ones") else {
        return;
    };
    let model = load(path.to_str().unwrap());
    // 200 packed rows: the fused adapted projection and attention ops.
    sft("SmolLM2 SFT", &model, &[90, 40, 70], Adapters::On);
    sft("SmolLM2 SFT dropout", &model, &[90, 40, 70], DROPOUT);
    dpo("SmolLM2 DPO", &model, &[80, 60], Adapters::On);
}
