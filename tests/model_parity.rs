//! Logits of the decoder against transformers on tiny random-weight Llama (GQA, Llama 3
//! rope scaling, untied) and Qwen2 (q/k/v bias, tied, sharded) models. Fixtures come from
//! scripts/make-model-fixtures.py.

mod common;

use autoif::model::decoder::Segment;
use autoif::model::kv_cache::KvCache;
use autoif::model::lora::Adapters;
use autoif::model::ops::quant::Precision;
use autoif::model::{LoadOptions, Model};
use candle_core::{Device, Tensor};
use common::{fixture, ids, load_reference, max_abs_diff};

const TOLERANCE: f32 = 1e-4;

fn load(name: &str) -> Model {
    Model::load(fixture(name).to_str().unwrap(), &LoadOptions::cpu()).unwrap()
}

fn cache_for(model: &Model, slots: usize) -> KvCache {
    let c = &model.config;
    KvCache::new(
        slots,
        c.num_hidden_layers,
        c.num_key_value_heads,
        c.head_dim,
        model.decoder.dtype(),
        &Device::Cpu,
    )
}

fn u32s(v: &[u32]) -> Tensor {
    Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
}

fn full_prefill(name: &str) {
    let model = load(name);
    let reference = load_reference(name);
    let ids = ids(&reference["prefill.ids"]);
    let expected = &reference["prefill.logits"];

    // Differentiable path.
    let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let hidden = model.decoder.forward(&input, Adapters::On).unwrap();
    let logits = model
        .decoder
        .logits(&hidden, Precision::Exact)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let d = max_abs_diff(&logits, expected);
    assert!(
        d <= TOLERANCE,
        "{name}: differentiable prefill max |Δlogit| = {d}"
    );

    // Inference path, one segment.
    let mut cache = cache_for(&model, 1);
    cache.allocate(0, ids.len()).unwrap();
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    let seg = [Segment {
        slot: 0,
        start: 0,
        len: ids.len(),
    }];
    let hidden = model
        .decoder
        .forward_packed(
            &u32s(&ids),
            &u32s(&positions),
            &seg,
            &mut cache,
            Adapters::On,
            Precision::Exact,
        )
        .unwrap();
    let d = max_abs_diff(
        &model.decoder.logits(&hidden, Precision::Exact).unwrap(),
        expected,
    );
    assert!(d <= TOLERANCE, "{name}: packed prefill max |Δlogit| = {d}");
    eprintln!("{name}: prefill within {d:e}");
}

fn token_by_token_decode(name: &str) {
    let model = load(name);
    let reference = load_reference(name);
    let ids = ids(&reference["prefill.ids"]);
    let expected = &reference["decode.logits"];
    let mut cache = cache_for(&model, 1);
    cache.allocate(0, ids.len()).unwrap();
    let mut rows = Vec::new();
    for (pos, &tok) in ids.iter().enumerate() {
        let seg = [Segment {
            slot: 0,
            start: 0,
            len: 1,
        }];
        let hidden = model
            .decoder
            .forward_packed(
                &u32s(&[tok]),
                &u32s(&[pos as u32]),
                &seg,
                &mut cache,
                Adapters::On,
                Precision::Exact,
            )
            .unwrap();
        rows.push(model.decoder.logits(&hidden, Precision::Exact).unwrap());
    }
    let logits = Tensor::cat(&rows, 0).unwrap();
    let d = max_abs_diff(&logits, expected);
    assert!(d <= TOLERANCE, "{name}: KV-cache decode max |Δlogit| = {d}");
    eprintln!("{name}: decode within {d:e}");
}

/// Four sequences of different lengths: prefilled together in one packed step (all but
/// their last token), then their last tokens decoded together in a second step; and the
/// same sequences right-padded through the differentiable path.
fn batch_of_different_lengths(name: &str) {
    let model = load(name);
    let reference = load_reference(name);
    let seqs: Vec<Vec<u32>> = (0..4)
        .map(|i| ids(&reference[&format!("batch.ids.{i}")]))
        .collect();
    let expected: Vec<&Tensor> = (0..4)
        .map(|i| &reference[&format!("batch.logits.{i}")])
        .collect();

    let mut cache = cache_for(&model, 4);
    let (mut tokens, mut positions, mut segments) = (Vec::new(), Vec::new(), Vec::new());
    for (slot, s) in seqs.iter().enumerate() {
        cache.allocate(slot, s.len()).unwrap();
        let n = s.len() - 1;
        segments.push(Segment {
            slot,
            start: tokens.len(),
            len: n,
        });
        tokens.extend_from_slice(&s[..n]);
        positions.extend(0..n as u32);
    }
    let hidden = model
        .decoder
        .forward_packed(
            &u32s(&tokens),
            &u32s(&positions),
            &segments,
            &mut cache,
            Adapters::On,
            Precision::Exact,
        )
        .unwrap();
    let logits = model.decoder.logits(&hidden, Precision::Exact).unwrap();
    for (i, seg) in segments.iter().enumerate() {
        let got = logits.narrow(0, seg.start, seg.len).unwrap();
        let want = expected[i].narrow(0, 0, seg.len).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(
            d <= TOLERANCE,
            "{name}: packed batch prefill of sequence {i}: {d}"
        );
    }
    let last: Vec<u32> = seqs.iter().map(|s| *s.last().unwrap()).collect();
    let last_pos: Vec<u32> = seqs.iter().map(|s| (s.len() - 1) as u32).collect();
    let segments: Vec<Segment> = (0..4)
        .map(|i| Segment {
            slot: i,
            start: i,
            len: 1,
        })
        .collect();
    let hidden = model
        .decoder
        .forward_packed(
            &u32s(&last),
            &u32s(&last_pos),
            &segments,
            &mut cache,
            Adapters::On,
            Precision::Exact,
        )
        .unwrap();
    let logits = model.decoder.logits(&hidden, Precision::Exact).unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let got = logits.narrow(0, i, 1).unwrap();
        let want = expected[i].narrow(0, s.len() - 1, 1).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(
            d <= TOLERANCE,
            "{name}: batched decode step of sequence {i}: {d}"
        );
    }

    let width = seqs.iter().map(Vec::len).max().unwrap();
    let mut padded = Vec::new();
    for s in &seqs {
        padded.extend_from_slice(s);
        padded.extend(std::iter::repeat_n(0u32, width - s.len()));
    }
    let input = Tensor::from_vec(padded, (4, width), &Device::Cpu).unwrap();
    let logits = model
        .decoder
        .logits(
            &model.decoder.forward(&input, Adapters::On).unwrap(),
            Precision::Exact,
        )
        .unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let got = logits.get(i).unwrap().narrow(0, 0, s.len()).unwrap();
        let d = max_abs_diff(&got, expected[i]);
        assert!(
            d <= TOLERANCE,
            "{name}: padded differentiable batch, sequence {i}: {d}"
        );
    }
}

#[test]
fn llama_prefill_matches_transformers() {
    full_prefill("tiny-llama");
}

#[test]
fn qwen2_prefill_matches_transformers() {
    full_prefill("tiny-qwen2");
}

#[test]
fn llama_decode_matches_transformers() {
    token_by_token_decode("tiny-llama");
}

#[test]
fn qwen2_decode_matches_transformers() {
    token_by_token_decode("tiny-qwen2");
}

#[test]
fn llama_batch_matches_transformers() {
    batch_of_different_lengths("tiny-llama");
}

#[test]
fn qwen2_batch_matches_transformers() {
    batch_of_different_lengths("tiny-qwen2");
}

/// Off the CPU-f32 fast path (GPU, half precision) the KV cache keeps tensors and
/// attention runs as tensor ops: the same checks through that path, in f32 on the CPU.
#[test]
fn tensor_cache_path_matches_transformers() {
    let model = load("tiny-qwen2");
    let reference = load_reference("tiny-qwen2");
    let ids = ids(&reference["prefill.ids"]);
    let mut cache = cache_for(&model, 2).with_tensor_storage();
    assert!(!cache.is_host());
    cache.allocate(0, ids.len()).unwrap();
    cache.allocate(1, ids.len()).unwrap();
    // Prefill all but the last token in slot 0, then decode the last token there while
    // slot 1 prefills the whole sequence in the same packed step.
    let n = ids.len() - 1;
    let positions: Vec<u32> = (0..n as u32).collect();
    let seg = [Segment {
        slot: 0,
        start: 0,
        len: n,
    }];
    model
        .decoder
        .forward_packed(
            &u32s(&ids[..n]),
            &u32s(&positions),
            &seg,
            &mut cache,
            Adapters::On,
            Precision::Exact,
        )
        .unwrap();
    let mut tokens = vec![ids[n]];
    tokens.extend_from_slice(&ids);
    let mut positions = vec![n as u32];
    positions.extend(0..ids.len() as u32);
    let segs = [
        Segment {
            slot: 0,
            start: 0,
            len: 1,
        },
        Segment {
            slot: 1,
            start: 1,
            len: ids.len(),
        },
    ];
    let hidden = model
        .decoder
        .forward_packed(
            &u32s(&tokens),
            &u32s(&positions),
            &segs,
            &mut cache,
            Adapters::On,
            Precision::Exact,
        )
        .unwrap();
    let logits = model.decoder.logits(&hidden, Precision::Exact).unwrap();
    let d_decode = max_abs_diff(
        &logits.narrow(0, 0, 1).unwrap(),
        &reference["decode.logits"].narrow(0, n, 1).unwrap(),
    );
    let d_prefill = max_abs_diff(
        &logits.narrow(0, 1, ids.len()).unwrap(),
        &reference["prefill.logits"],
    );
    assert!(
        d_decode <= TOLERANCE && d_prefill <= TOLERANCE,
        "decode {d_decode}, prefill {d_prefill}"
    );
}
