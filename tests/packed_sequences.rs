//! Sequences laid back to back without padding (`Decoder::forward_segments`, which every
//! training batch uses) give each sequence the hidden states, and the LoRA weights the
//! gradients, that the sequence gets on its own: no sequence sees another. Checked on the
//! fused CPU path (f32) and on the plain candle path (f64).

mod common;

use autoif::model::lora::Adapters;
use autoif::model::lora::LoraConfig;
use autoif::model::{LoadOptions, Model};
use autoif::train::adapters::{adapter_vars, attach_adapters};
use candle_core::{DType, Device, Tensor, Var};

fn load(name: &str, dtype: DType) -> Model {
    let options = LoadOptions {
        dtype,
        ..LoadOptions::cpu()
    };
    let mut model = Model::load(common::fixture(name).to_str().unwrap(), &options).unwrap();
    attach_adapters(&mut model.decoder, &LoraConfig::default(), 3).unwrap();
    // B starts at zero; give it values so the adapters take part.
    for var in adapter_vars(&model.decoder) {
        let t = Tensor::randn(0f32, 0.05, var.shape(), &Device::Cpu).unwrap();
        var.set(&t).unwrap();
    }
    model
}

fn sequences(vocab: u32) -> Vec<Vec<u32>> {
    [5usize, 9, 3]
        .iter()
        .enumerate()
        .map(|(s, &len)| {
            (0..len as u32)
                .map(|j| (j * 37 + s as u32 * 11 + 1) % vocab)
                .collect()
        })
        .collect()
}

/// Hidden states of every sequence and the gradients of Σ hidden · weights.
fn run(model: &Model, seqs: &[Vec<u32>], packed: bool) -> (Vec<Tensor>, Vec<Tensor>) {
    let dev = Device::Cpu;
    let vars: Vec<Var> = adapter_vars(&model.decoder);
    let hidden: Vec<Tensor> = if packed {
        let ids: Vec<u32> = seqs.concat();
        let mut segments = Vec::new();
        let mut first = 0;
        for s in seqs {
            segments.push((first, s.len()));
            first += s.len();
        }
        let n = ids.len();
        let all = model
            .decoder
            .forward_segments(
                &Tensor::from_vec(ids, n, &dev).unwrap(),
                &segments,
                Adapters::On,
            )
            .unwrap();
        segments
            .iter()
            .map(|&(first, len)| all.narrow(0, first, len).unwrap())
            .collect()
    } else {
        seqs.iter()
            .map(|s| {
                let input = Tensor::from_vec(s.clone(), (1, s.len()), &dev).unwrap();
                model
                    .decoder
                    .forward(&input, Adapters::On)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
            })
            .collect()
    };
    let mut loss = Tensor::zeros((), DType::F32, &dev).unwrap();
    for (i, h) in hidden.iter().enumerate() {
        let h = h.to_dtype(DType::F32).unwrap();
        let w = ((h.ones_like().unwrap() * (i as f64 + 1.0)).unwrap().cos()).unwrap();
        loss = (loss + (h * w).unwrap().sum_all().unwrap()).unwrap();
    }
    let grads = loss.backward().unwrap();
    let grads = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).unwrap().clone())
        .collect();
    (hidden, grads)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn check(name: &str, dtype: DType, tolerance: f64) {
    let model = load(name, dtype);
    let seqs = sequences(model.config.vocab_size as u32);
    let (h_alone, g_alone) = run(&model, &seqs, false);
    let (h_packed, g_packed) = run(&model, &seqs, true);
    for (i, (a, b)) in h_alone.iter().zip(&h_packed).enumerate() {
        let d = max_diff(a, b);
        assert!(
            d < tolerance,
            "{name} {dtype:?}: sequence {i} hidden differs by {d}"
        );
    }
    let worst = g_alone
        .iter()
        .zip(&g_packed)
        .map(|(a, b)| max_diff(a, b))
        .fold(0.0, f64::max);
    assert!(
        worst < tolerance,
        "{name} {dtype:?}: LoRA gradients differ by {worst}"
    );
}

#[test]
fn packed_llama_sequences_equal_separate_ones_fused_f32() {
    check("tiny-llama", DType::F32, 1e-4);
}

#[test]
fn packed_qwen2_sequences_equal_separate_ones_fused_f32() {
    check("tiny-qwen2", DType::F32, 1e-4);
}

#[test]
fn packed_llama_sequences_equal_separate_ones_plain_f64() {
    check("tiny-llama", DType::F64, 1e-4);
}
