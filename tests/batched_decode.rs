//! The decoder's batched tensor path — what a GPU runs — checked on the CPU: a fixed
//! number of tensors per decode step whatever the batch, host↔device copies only for the
//! inputs and the logits, and the same logits and greedy tokens as the CPU f32 host path,
//! through ragged slots, freed and reused slots and continuous batching.

mod common;

use autoif::generate::{Backend, EngineOptions, LocalEngine, Prompt, Request, SamplingParams};
use autoif::model::decoder::Segment;
use autoif::model::kv_cache::KvCache;
use autoif::model::lora::{Adapters, LoraAdapter};
use autoif::model::ops::quant::Precision;
use autoif::model::transfer::Transfers;
use autoif::model::{LoadOptions, Model};
use candle_core::{DType, Device, Tensor, Var};
use common::{fixture, max_abs_diff};
use rand::{Rng, SeedableRng};
use std::sync::Mutex;

/// Tensor ids are global: the tests here run one at a time so that counting them in one
/// test sees no other test's tensors.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn load(name: &str, dtype: DType) -> Model {
    let options = LoadOptions {
        dtype,
        ..LoadOptions::cpu()
    };
    Model::load(fixture(name).to_str().unwrap(), &options).unwrap()
}

/// The id the next tensor gets: candle numbers tensors from one counter, so the difference
/// of two readings is how many tensors (views included) were made in between.
fn next_tensor_id() -> usize {
    let probe = Tensor::zeros((), DType::U8, &Device::Cpu).unwrap();
    let id = format!("{:?}", probe.id());
    id.trim_start_matches("TensorId(")
        .trim_end_matches(')')
        .parse()
        .unwrap()
}

/// `count` raw prompts of different lengths (the tiny tokenizers split every character).
fn requests(count: usize, new_tokens: usize) -> Vec<Request> {
    (0..count)
        .map(|i| Request {
            prompt: Prompt::Text(format!("prompt {i}: {}", "ab".repeat(1 + i % 5))),
            n: 1,
            params: SamplingParams {
                max_new_tokens: new_tokens,
                min_new_tokens: new_tokens,
                ..SamplingParams::default()
            },
        })
        .collect()
}

fn engine_options(max_batch: usize, tensor_kv_cache: bool) -> EngineOptions {
    EngineOptions {
        max_batch,
        precision: Precision::Exact,
        progress: false,
        tensor_kv_cache,
        ..EngineOptions::default()
    }
}

/// Tensors made and copies made by one engine run of `batch` requests, all admitted in
/// the first step, each decoding exactly `new_tokens` tokens (one step each).
fn run_counts(model: &Model, batch: usize, new_tokens: usize) -> (usize, Transfers) {
    let reqs = requests(batch, new_tokens);
    let mut engine = LocalEngine::new(model, engine_options(batch, false));
    let (ids, copies) = (next_tensor_id(), Transfers::now());
    let done = engine.generate(&reqs).unwrap();
    let made = next_tensor_id() - ids - 1;
    assert!(done.iter().all(|c| c.token_ids.len() == new_tokens));
    (made, Transfers::since(copies))
}

/// Per decode step: the difference of a 9-token and a 5-token run over 4, which cancels
/// the admission and the prefill step.
fn per_decode_step(model: &Model, batch: usize) -> (usize, Transfers) {
    let (short_tensors, short_copies) = run_counts(model, batch, 5);
    let (long_tensors, long_copies) = run_counts(model, batch, 9);
    let tensors = long_tensors - short_tensors;
    assert_eq!(
        tensors % 4,
        0,
        "batch {batch}: {tensors} tensors over 4 steps"
    );
    let copies = Transfers {
        uploads: long_copies.uploads - short_copies.uploads,
        downloads: long_copies.downloads - short_copies.downloads,
    };
    assert_eq!(copies.uploads % 4, 0);
    (
        tensors / 4,
        Transfers {
            uploads: copies.uploads / 4,
            downloads: copies.downloads / 4,
        },
    )
}

/// The launch-count and transfer-count checks of issue 22: in bf16 (the GPU's storage)
/// a decode step makes the same number of tensors at batch 2 and batch 64, a number that
/// follows the layers; at batch 1 a few fewer, as some views of a single row are already
/// contiguous and candle makes no copy. Each step copies only its inputs up and its
/// logits down.
#[test]
fn decode_step_cost_follows_layers_not_batch() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["tiny-llama", "tiny-qwen2"] {
        let model = load(name, DType::BF16);
        let layers = model.config.num_hidden_layers;
        let (one, copies_one) = per_decode_step(&model, 1);
        let (two, copies_two) = per_decode_step(&model, 2);
        let (many, copies_many) = per_decode_step(&model, 64);
        eprintln!(
            "{name} ({layers} layers): tensors per decode step {one} at batch 1, {two} at batch 2, {many} at batch 64; copies {copies_many:?}"
        );
        assert_eq!(
            two, many,
            "{name}: tensors per decode step depend on the batch"
        );
        assert!(one <= many, "{name}: batch 1 makes {one}, batch 64 {many}");
        // Per layer: norms, fused projections, rope, cache writes, one attention product
        // pair, the MLP — views included; the constant is the step's plan, the LM head
        // and the sampling rows.
        assert!(
            many <= 60 * layers + 60,
            "{name}: {many} tensors per decode step for {layers} layers"
        );
        // Tokens, positions, the decoder's index plan and the logits' rows up; logits
        // down. None per layer or per sequence.
        for copies in [copies_one, copies_two, copies_many] {
            assert_eq!(copies.uploads, 4, "{name}: uploads per decode step");
            assert_eq!(copies.downloads, 1, "{name}: downloads per decode step");
        }
    }
}

/// The tensor count grows with layers: a copy of the model with one layer fewer makes
/// fewer tensors per step by the same amount whatever the batch.
#[test]
fn decode_step_tensors_grow_per_layer() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let model = load("tiny-llama", DType::BF16);
    let mut fewer = load("tiny-llama", DType::BF16);
    fewer.decoder.layers.pop();
    let (full, _) = per_decode_step(&model, 8);
    let (less, _) = per_decode_step(&fewer, 8);
    let per_layer = full - less;
    eprintln!("tiny-llama: {per_layer} tensors per layer per decode step");
    assert!(per_layer > 0 && per_layer <= 60);
    let (less_64, _) = per_decode_step(&fewer, 64);
    assert_eq!(less, less_64);
}

/// One scripted schedule of packed steps over three slots: ragged prefills, decoding,
/// a slot freed and given a new sequence while the others decode, and a continuation of
/// several tokens after a cached past. Returns each step's logits `[rows, vocab]` in f32.
fn run_schedule(model: &Model, tensor_storage: bool, adapters: Adapters) -> Vec<Tensor> {
    let c = &model.config;
    let mut cache = KvCache::new(
        3,
        c.num_hidden_layers,
        c.num_key_value_heads,
        c.head_dim,
        model.decoder.dtype(),
        &Device::Cpu,
    );
    if tensor_storage {
        cache = cache.with_tensor_storage();
    }
    assert_eq!(cache.is_host(), !tensor_storage);
    let token = |i: usize| ((i * 37 + 11) % c.vocab_size) as u32;
    let mut next = 0;
    let mut logits = Vec::new();
    // (slot, tokens this step); a slot listed with `None` is freed and reallocated first.
    let steps: Vec<Vec<(usize, usize, Option<usize>)>> = vec![
        vec![(0, 5, Some(40)), (1, 9, Some(40)), (2, 3, Some(24))],
        vec![(0, 1, None), (1, 1, None), (2, 1, None)],
        vec![(0, 1, None), (2, 1, None)],
        vec![(0, 1, None), (1, 6, Some(30)), (2, 1, None)],
        vec![(0, 1, None), (1, 1, None), (2, 1, None)],
        vec![(0, 4, None), (1, 1, None), (2, 1, None)],
        vec![(0, 1, None), (1, 1, None), (2, 1, None)],
    ];
    for step in steps {
        let (mut tokens, mut positions, mut segments) = (Vec::new(), Vec::new(), Vec::new());
        for (slot, len, fresh) in step {
            if let Some(capacity) = fresh {
                cache.free(slot);
                cache.allocate(slot, capacity).unwrap();
            }
            let past = cache.slot(slot).unwrap().len();
            segments.push(Segment {
                slot,
                start: tokens.len(),
                len,
            });
            for t in 0..len {
                tokens.push(token(next));
                next += 1;
                positions.push((past + t) as u32);
            }
        }
        let n = tokens.len();
        let hidden = model
            .decoder
            .forward_packed(
                &Tensor::from_vec(tokens, n, &Device::Cpu).unwrap(),
                &Tensor::from_vec(positions, n, &Device::Cpu).unwrap(),
                &segments,
                &mut cache,
                adapters,
                Precision::Exact,
            )
            .unwrap();
        logits.push(
            model
                .decoder
                .logits(&hidden, Precision::Exact)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        );
    }
    logits
}

/// Largest |logit| over all steps, for relative bounds.
fn largest(steps: &[Tensor]) -> f32 {
    steps
        .iter()
        .map(|t| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0.0, f32::max)
}

fn argmax_rows(t: &Tensor) -> Vec<u32> {
    t.argmax(1).unwrap().to_vec1::<u32>().unwrap()
}

/// How far bf16 logits are from f32 on this model anyway: the differentiable forward (a
/// separate implementation) over the reference prompt, relative to the largest logit.
fn bf16_baseline(name: &str, f32_model: &Model, bf16_model: &Model) -> f32 {
    let reference = common::load_reference(name);
    let ids = common::ids(&reference["prefill.ids"]);
    let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
    let logits = |m: &Model| {
        let hidden = m.decoder.forward(&input, Adapters::On).unwrap();
        let logits = m.decoder.logits(&hidden, Precision::Exact).unwrap();
        logits.to_dtype(DType::F32).unwrap()
    };
    let want = logits(f32_model);
    max_abs_diff(&logits(bf16_model), &want) / largest(&[want])
}

/// The batched path against the host path on the same schedule: in f32 the same logits
/// up to summation order and the same greedy choice at every row; in bf16 no further from
/// f32 than bf16 itself puts the model (the differentiable forward's distance, with 50%
/// slack), and the same greedy choice wherever f32's best two are further apart than
/// twice that distance.
#[test]
fn batched_path_matches_the_host_path_through_a_schedule() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["tiny-llama", "tiny-qwen2"] {
        let f32_model = load(name, DType::F32);
        let bf16_model = load(name, DType::BF16);
        let host = run_schedule(&f32_model, false, Adapters::On);
        let batched = run_schedule(&f32_model, true, Adapters::On);
        let bf16 = run_schedule(&bf16_model, true, Adapters::On);
        let scale = largest(&host);
        let (mut worst_f32, mut worst_bf16) = (0f32, 0f32);
        for (i, ((h, b), l)) in host.iter().zip(&batched).zip(&bf16).enumerate() {
            worst_f32 = worst_f32.max(max_abs_diff(b, h) / scale);
            worst_bf16 = worst_bf16.max(max_abs_diff(l, h) / scale);
            assert_eq!(argmax_rows(b), argmax_rows(h), "{name}: f32 step {i}");
        }
        let baseline = bf16_baseline(name, &f32_model, &bf16_model);
        let (mut compared, mut rows) = (0, 0);
        for (i, (h, l)) in host.iter().zip(&bf16).enumerate() {
            let chosen = argmax_rows(l);
            for (r, (row, want)) in h
                .to_vec2::<f32>()
                .unwrap()
                .iter()
                .zip(argmax_rows(h))
                .enumerate()
            {
                let mut sorted = row.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                rows += 1;
                if sorted[0] - sorted[1] > 2.0 * worst_bf16 * scale {
                    compared += 1;
                    assert_eq!(chosen[r], want, "{name}: bf16 step {i} row {r}");
                }
            }
        }
        eprintln!(
            "{name}: batched f32 within {worst_f32:e} of the largest logit ({scale}), bf16 within {worst_bf16:e} (bf16 differentiable forward: {baseline:e}); bf16 greedy compared at {compared}/{rows} rows"
        );
        assert!(
            worst_f32 <= 1e-5,
            "{name}: f32 batched path off by {worst_f32:e}"
        );
        assert!(
            worst_bf16 <= 1.5 * baseline,
            "{name}: bf16 batched path off by {worst_bf16:e}, bf16 itself {baseline:e}"
        );
        assert!(
            compared >= 10,
            "{name}: only {compared} clear choices to compare"
        );
    }
}

/// Continuous batching through the engine: more requests than slots, different lengths,
/// so slots are freed and reused mid-run and prefills share steps with decoding; two
/// samples of one prompt share its prefill. The batched path decodes exactly the host
/// path's greedy tokens in f32.
#[test]
fn engine_tokens_match_with_continuous_batching() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["tiny-llama", "tiny-qwen2"] {
        let model = load(name, DType::F32);
        let mut reqs: Vec<Request> = (0..7)
            .map(|i| {
                let mut r = requests(i + 1, 3 + 2 * i).pop().unwrap();
                r.n = if i == 2 { 2 } else { 1 };
                r
            })
            .collect();
        reqs[5].params.min_new_tokens = 0;
        let host = LocalEngine::new(&model, engine_options(3, false))
            .generate(&reqs)
            .unwrap();
        let batched = LocalEngine::new(&model, engine_options(3, true))
            .generate(&reqs)
            .unwrap();
        assert_eq!(host.len(), 8);
        for (h, b) in host.iter().zip(&batched) {
            assert_eq!(
                h.token_ids, b.token_ids,
                "{name}: request {} sample {}",
                h.request_index, h.sample_index
            );
        }
        // The bf16 model (the batched path by default) runs the same schedule to the
        // same lengths where EOS is held off.
        let bf16 = load(name, DType::BF16);
        let out = LocalEngine::new(&bf16, engine_options(3, false))
            .generate(&reqs)
            .unwrap();
        let first_same = out
            .iter()
            .zip(&host)
            .filter(|(a, b)| a.token_ids.first() == b.token_ids.first())
            .count();
        eprintln!("{name}: bf16 engine's first token equals f32's in {first_same}/8 completions");
        for (a, b) in out.iter().zip(&host) {
            if reqs[a.request_index].params.min_new_tokens > 0 {
                assert_eq!(a.token_ids.len(), b.token_ids.len());
            }
        }
    }
}

/// Largest difference between two schedules' logits, relative to the first's largest.
fn schedule_distance(a: &[Tensor], b: &[Tensor]) -> f32 {
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f32::max);
    d / largest(a)
}

/// LoRA adapters (online DPO samples with them on) and their merge, on the batched path:
/// with random adapters on every projection its logits equal the host path's in f32; after
/// merging, the adapters-off logits are the adapted ones — in bf16 too, where the merge
/// gives q/k/v and gate/up new weights and the fused copies must follow — and fusing the
/// merged weights into views again changes nothing.
#[test]
fn batched_path_follows_adapters_and_their_merge() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for dtype in [DType::F32, DType::BF16] {
        let mut model = load("tiny-qwen2", dtype);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(22);
        let mut random = |shape: (usize, usize)| {
            let values: Vec<f32> = (0..shape.0 * shape.1)
                .map(|_| rng.random_range(-0.5f32..0.5))
                .collect();
            Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
        };
        for (_, layer) in model.decoder.linear_layers_mut() {
            let (out, inp) = layer.shape();
            let adapter = LoraAdapter {
                a: random((4, inp)),
                b: random((out, 4)),
                scale: 2.0,
            };
            layer.set_adapter(Some(adapter)).unwrap();
        }
        let on = run_schedule(&model, true, Adapters::On);
        let off = run_schedule(&model, true, Adapters::Off);
        let effect = schedule_distance(&on, &off);
        if dtype == DType::F32 {
            let host = run_schedule(&model, false, Adapters::On);
            let d = schedule_distance(&host, &on);
            eprintln!("f32: adapters move the logits by {effect:e}; batched vs host {d:e}");
            assert!(
                d <= 1e-5,
                "f32 adapted batched path off the host path by {d:e}"
            );
        }
        for (_, layer) in model.decoder.linear_layers_mut() {
            layer.merge_adapter().unwrap();
        }
        let merged = run_schedule(&model, true, Adapters::Off);
        let d = schedule_distance(&on, &merged);
        eprintln!("{dtype:?}: adapters move the logits by {effect:e}; merged vs adapted {d:e}");
        assert!(
            effect > 0.1,
            "{dtype:?}: the adapters change little ({effect:e})"
        );
        assert!(d <= effect / 5.0, "{dtype:?}: merged logits off by {d:e}");
        // Fusing the merged weights again (views into one tensor, where the batched path
        // fuses) changes no logit.
        model.decoder.fuse_projections().unwrap();
        let k_proj = &model.decoder.layers[0].self_attn.k_proj;
        let offset = k_proj
            .weight()
            .unwrap()
            .storage_and_layout()
            .1
            .start_offset();
        assert_eq!(
            offset > 0,
            dtype == DType::BF16,
            "k_proj is a view in bf16 only"
        );
        let refused = run_schedule(&model, true, Adapters::Off);
        assert_eq!(schedule_distance(&merged, &refused), 0.0);
    }
}
