//! The differentiable path carries gradients to the LoRA weights of every projection in
//! every layer, and they agree with finite differences.

mod common;

use autoif::model::logprobs::completion_logprobs;
use autoif::model::lora::{Adapters, LoraAdapter};
use autoif::model::{LoadOptions, Model};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn model_with_adapters() -> (Model, Vec<(String, LoraAdapter)>) {
    let mut model = Model::load(
        common::fixture("tiny-llama").to_str().unwrap(),
        &LoadOptions::cpu(),
    )
    .unwrap();
    // Seeded, so the finite-difference comparison sees the same weights on every run.
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut random = |rows: usize, cols: usize| {
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-0.2f32..0.2))
            .collect();
        Var::from_tensor(&Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()).unwrap()
    };
    let mut adapters = Vec::new();
    for (name, layer) in model.decoder.linear_layers_mut() {
        let (out, inp) = layer.shape();
        // B non-zero (unlike PEFT's init) so that A receives a gradient as well.
        let adapter = LoraAdapter {
            a: random(4, inp),
            b: random(out, 4),
            scale: 2.0,
        };
        layer.set_adapter(Some(adapter.clone())).unwrap();
        adapters.push((name, adapter));
    }
    (model, adapters)
}

fn loss(model: &Model) -> Tensor {
    let pairs = vec![
        (vec![5u32, 17, 42, 9], vec![100u32, 7, 63]),
        (vec![3u32, 8], vec![250u32, 11, 12, 13]),
    ];
    let logprobs = completion_logprobs(&model.decoder, &pairs, Adapters::On).unwrap();
    let total = Tensor::cat(&logprobs, 0).unwrap().sum_all().unwrap();
    total.neg().unwrap()
}

#[test]
fn every_adapter_in_every_layer_gets_a_gradient() {
    let (model, adapters) = model_with_adapters();
    assert_eq!(adapters.len(), 7 * model.config.num_hidden_layers);
    let grads = loss(&model).backward().unwrap();
    for (name, adapter) in &adapters {
        for (which, var) in [("A", &adapter.a), ("B", &adapter.b)] {
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("{name}: no gradient for LoRA {which}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt();
            assert!(norm > 1e-8, "{name}: LoRA {which} gradient is zero");
        }
    }
    // With adapters switched off, the loss does not depend on them at all.
    let pairs = vec![(vec![5u32, 17], vec![100u32])];
    let off = completion_logprobs(&model.decoder, &pairs, Adapters::Off).unwrap();
    let grads = off[0].sum_all().unwrap().backward().unwrap();
    assert!(adapters
        .iter()
        .all(|(_, a)| grads.get(&a.a).is_none() && grads.get(&a.b).is_none()));
}

#[test]
fn gradients_match_finite_differences() {
    let (model, adapters) = model_with_adapters();
    let grads = loss(&model).backward().unwrap();
    // Central differences in f64 arithmetic on f32 losses: pick a few coordinates of the
    // first and last layer's B and A and compare.
    let eps = 1e-2f32;
    let mut checked = 0;
    for idx in [0usize, 3, adapters.len() - 1] {
        let (name, adapter) = &adapters[idx];
        for var in [&adapter.a, &adapter.b] {
            let analytic = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let original = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for coord in [0usize, original.len() / 2] {
                let bumped = |delta: f32| {
                    let mut v = original.clone();
                    v[coord] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    let l = loss(&model)
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap();
                    var.set(
                        &Tensor::from_vec(original.clone(), var.shape(), &Device::Cpu).unwrap(),
                    )
                    .unwrap();
                    l
                };
                let numeric = (bumped(eps) - bumped(-eps)) / (2.0 * eps as f64);
                let a = analytic[coord] as f64;
                // f32 losses: central differences carry ~1e-4 of rounding noise.
                let tolerance = 1e-3 + 2e-2 * numeric.abs();
                assert!(
                    (a - numeric).abs() <= tolerance,
                    "{name} coord {coord}: analytic {a} vs numeric {numeric}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 12);
}
