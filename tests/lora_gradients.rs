//! The differentiable path carries gradients to the LoRA weights of every projection in
//! every layer, and they agree with finite differences.

mod common;

use autoif::model::logprobs::completion_logprobs;
use autoif::model::lora::LoraAdapter;
use autoif::model::{LoadOptions, Model};
use candle_core::{DType, Device, Tensor, Var};

fn model_with_adapters() -> (Model, Vec<(String, LoraAdapter)>) {
    let mut model = Model::load(
        common::fixture("tiny-llama").to_str().unwrap(),
        &LoadOptions::cpu(),
    )
    .unwrap();
    let mut adapters = Vec::new();
    for (i, (name, layer)) in model.decoder.linear_layers_mut().into_iter().enumerate() {
        let (out, inp) = layer.shape();
        let seed_scale = 0.1 + 0.001 * i as f32;
        // B non-zero (unlike PEFT's init) so that A receives a gradient as well.
        let adapter = LoraAdapter {
            a: Var::randn(0f32, seed_scale, (4, inp), &Device::Cpu).unwrap(),
            b: Var::randn(0f32, seed_scale, (out, 4), &Device::Cpu).unwrap(),
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
    let logprobs = completion_logprobs(&model.decoder, &pairs, true).unwrap();
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
    let off = completion_logprobs(&model.decoder, &pairs, false).unwrap();
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
                let err = (a - numeric).abs() / a.abs().max(numeric.abs()).max(1e-2);
                assert!(
                    err < 2e-2,
                    "{name} coord {coord}: analytic {a} vs numeric {numeric}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 12);
}
