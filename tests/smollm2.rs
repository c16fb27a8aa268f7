//! The embedded SmolLM2-135M-Instruct GGUF end to end: log-probabilities against
//! transformers on the same dequantized weights, greedy tokens, and the engine's sampling
//! guarantees. Comparisons with transformers run the exact path; the engine's guarantees
//! hold on both paths; the int8 path stays close to the exact one.

mod common;

use autoif::generate::{Backend, EngineOptions, LocalEngine, Prompt, Request, SamplingParams};
use autoif::model::decoder::Segment;
use autoif::model::kv_cache::{HostPrecision, KvCache};
use autoif::model::logprobs::completion_logprobs;
use autoif::model::lora::Adapters;
use autoif::model::ops::quant::Precision;
use autoif::model::{LoadOptions, Model};
use candle_core::{Device, Tensor};
use std::sync::OnceLock;

fn model() -> Option<&'static Model> {
    static MODEL: OnceLock<Option<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = common::smollm2("smollm2")?;
            Some(Model::load(path.to_str().unwrap(), &LoadOptions::cpu()).unwrap())
        })
        .as_ref()
}

/// transformers' log-probabilities and greedy tokens for SmolLM2.
fn transformers_reference() -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixture("smollm2_logprobs.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn u32_list(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn logprobs_match_transformers_on_dequantized_weights() {
    let Some(model) = model() else { return };
    let fx = transformers_reference();
    let mut worst = 0f32;
    for case in fx["logprobs"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompt = model
            .tokenizer
            .encode(case["prompt"].as_str().unwrap())
            .unwrap();
        let completion = model
            .tokenizer
            .encode_raw(case["completion"].as_str().unwrap())
            .unwrap();
        assert_eq!(prompt, u32_list(&case["prompt_ids"]), "{name}: prompt ids");
        assert_eq!(
            completion,
            u32_list(&case["completion_ids"]),
            "{name}: completion ids"
        );
        let got =
            completion_logprobs(&model.decoder, &[(prompt, completion)], Adapters::Off).unwrap();
        let got = got[0].to_vec1::<f32>().unwrap();
        let want: Vec<f32> = case["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = (g - w).abs();
            worst = worst.max(d);
            assert!(
                d <= 2e-3,
                "{name}: token {i}: autoif {g} vs transformers {w}"
            );
        }
    }
    eprintln!("max |Δlogprob| over all cases: {worst:e}");
}

#[test]
fn greedy_tokens_match_transformers() {
    let Some(model) = model() else { return };
    let fx = transformers_reference();
    let requests: Vec<Request> = fx["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| Request {
            prompt: Prompt::Chat(serde_json::from_value(case["messages"].clone()).unwrap()),
            n: 1,
            params: SamplingParams {
                max_new_tokens: 5,
                ..SamplingParams::default()
            },
        })
        .collect();
    let mut engine = LocalEngine::new(
        model,
        EngineOptions {
            precision: Precision::Exact,
            progress: false,
            ..EngineOptions::default()
        },
    );
    for (case, req) in fx["greedy"].as_array().unwrap().iter().zip(&requests) {
        assert_eq!(
            engine.prompt_ids(&req.prompt).unwrap(),
            u32_list(&case["prompt_ids"]),
            "chat template + tokenizer"
        );
    }
    let out = engine.generate(&requests).unwrap();
    for (case, completion) in fx["greedy"].as_array().unwrap().iter().zip(&out) {
        assert_eq!(completion.token_ids, u32_list(&case["greedy_ids"]));
        assert_eq!(completion.text, case["greedy_text"].as_str().unwrap());
    }
}

fn prompts() -> Vec<Prompt> {
    [
        "Write a haiku about the sea.",
        "List three fruits, separated by commas.",
        "Explain recursion in one sentence.",
        "What is 12 times 12? Reply with the number only.",
        "Say hello in French.",
    ]
    .iter()
    .map(|p| Prompt::user(*p))
    .collect()
}

/// One greedy request per prompt of `prompts()`, each up to `max_new_tokens`.
fn greedy_requests(max_new_tokens: usize) -> Vec<Request> {
    prompts()
        .into_iter()
        .map(|prompt| Request {
            prompt,
            n: 1,
            params: SamplingParams {
                max_new_tokens,
                ..SamplingParams::default()
            },
        })
        .collect()
}

#[test]
fn n_samples_with_temperature_are_reproducible_alone_or_batched() {
    let Some(model) = model() else { return };
    for precision in [Precision::Int8, Precision::Exact] {
        samples_are_reproducible_alone_or_batched(model, precision);
    }
}

fn samples_are_reproducible_alone_or_batched(model: &Model, precision: Precision) {
    let params = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        max_new_tokens: 24,
        seed: 7,
        ..SamplingParams::default()
    };
    let sampled = Request {
        prompt: prompts()[0].clone(),
        n: 4,
        params: params.clone(),
    };
    let options = EngineOptions {
        precision,
        progress: false,
        ..EngineOptions::default()
    };

    let alone = LocalEngine::new(model, options.clone())
        .generate(std::slice::from_ref(&sampled))
        .unwrap();
    assert_eq!(alone.len(), 4);
    assert_eq!(
        alone.iter().map(|c| c.sample_index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let distinct: std::collections::HashSet<_> = alone.iter().map(|c| c.text.clone()).collect();
    assert!(
        distinct.len() > 1,
        "{precision:?}: 4 samples at temperature 0.9 were all identical: {alone:?}"
    );

    // The same request next to others, with a batch too small for everything at once so
    // slots are refilled mid-run: each sample keeps its text.
    let mut mixed: Vec<Request> = prompts()[1..]
        .iter()
        .map(|p| Request {
            prompt: p.clone(),
            n: 2,
            params: SamplingParams {
                seed: 99,
                ..params.clone()
            },
        })
        .collect();
    mixed.insert(2, sampled.clone());
    let batched = LocalEngine::new(
        model,
        EngineOptions {
            max_batch: 5,
            ..options
        },
    )
    .generate(&mixed)
    .unwrap();
    let again: Vec<_> = batched.iter().filter(|c| c.request_index == 2).collect();
    assert_eq!(again.len(), 4);
    for (a, b) in alone.iter().zip(again) {
        assert_eq!(
            a.text, b.text,
            "{precision:?}: sample {} changed when batched",
            a.sample_index
        );
    }
}

#[test]
fn greedy_batched_equals_greedy_one_at_a_time() {
    let Some(model) = model() else { return };
    for (precision, kv_cache) in [
        (Precision::Int8, HostPrecision::F32),
        (Precision::Exact, HostPrecision::F32),
        (Precision::Exact, HostPrecision::F16),
    ] {
        greedy_batched_equals_one_at_a_time(model, precision, kv_cache);
    }
}

fn greedy_batched_equals_one_at_a_time(
    model: &Model,
    precision: Precision,
    kv_cache: HostPrecision,
) {
    let requests = greedy_requests(32);
    let options = EngineOptions {
        precision,
        kv_cache,
        progress: false,
        ..EngineOptions::default()
    };
    let batched = LocalEngine::new(
        model,
        EngineOptions {
            max_batch: 5,
            ..options.clone()
        },
    )
    .generate(&requests)
    .unwrap();
    for (i, req) in requests.iter().enumerate() {
        let single = LocalEngine::new(
            model,
            EngineOptions {
                max_batch: 1,
                ..options.clone()
            },
        )
        .generate(std::slice::from_ref(req))
        .unwrap();
        let case = format!("{precision:?}, {kv_cache:?} cache: prompt {i}");
        assert_eq!(single[0].text, batched[i].text, "{case}");
        assert_eq!(single[0].token_ids, batched[i].token_ids, "{case}");
    }
}

/// On two or more threads the engine runs each step as two passes over halves of its
/// sequences at once; on one thread, as one pass. Both give the same tokens, greedy and
/// sampled, with slots refilled mid-run and samples sharing a prefill.
#[test]
fn two_streams_give_the_tokens_of_one() {
    let Some(model) = model() else { return };
    let requests: Vec<Request> = prompts()
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| Request {
            prompt,
            n: 1 + i % 2,
            params: SamplingParams {
                temperature: if i % 2 == 0 { 0.0 } else { 0.8 },
                max_new_tokens: 12 + 5 * i,
                seed: 3,
                ..SamplingParams::default()
            },
        })
        .collect();
    for precision in [Precision::Int8, Precision::Exact] {
        let on_threads = |threads: usize| {
            let options = EngineOptions {
                max_batch: 4,
                precision,
                progress: false,
                ..EngineOptions::default()
            };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| LocalEngine::new(model, options).generate(&requests))
                .unwrap()
        };
        let (one, two) = (on_threads(1), on_threads(2));
        assert_eq!(one.len(), 7);
        for (a, b) in one.iter().zip(&two) {
            assert_eq!(
                a.token_ids, b.token_ids,
                "{precision:?}: request {} sample {}",
                a.request_index, a.sample_index
            );
        }
    }
}

/// Jobs with chat prompts start with the template's opening tokens: the engine computes
/// them once and copies them into each slot, and every job's tokens stay those of a run
/// where it is alone (and so computes its whole prompt).
#[test]
fn the_shared_template_opening_is_computed_once() {
    let Some(model) = model() else { return };
    let requests = greedy_requests(16);
    let options = EngineOptions {
        max_batch: 2,
        precision: Precision::Exact,
        progress: false,
        ..EngineOptions::default()
    };
    let mut engine = LocalEngine::new(model, options.clone());
    let together = engine.generate(&requests).unwrap();
    let shared = engine.stats().shared_prompt_tokens;
    assert!(
        shared >= 4 * requests.len() && shared % requests.len() == 0,
        "{shared} shared prompt tokens"
    );
    for (request, completion) in requests.iter().zip(&together) {
        let mut alone = LocalEngine::new(model, options.clone());
        let single = alone.generate(std::slice::from_ref(request)).unwrap();
        assert_eq!(alone.stats().shared_prompt_tokens, 0);
        assert_eq!(single[0].token_ids, completion.token_ids);
    }
}

#[test]
fn stop_strings_and_max_new_tokens_end_generation() {
    let Some(model) = model() else { return };
    let options = EngineOptions {
        progress: false,
        ..EngineOptions::default()
    };
    let request = |stop: Vec<String>, max_new_tokens| Request {
        prompt: Prompt::user("Count from 1 to 20, separated by commas."),
        n: 1,
        params: SamplingParams {
            max_new_tokens,
            stop,
            ..SamplingParams::default()
        },
    };
    let full = LocalEngine::new(model, options.clone())
        .generate(&[request(vec![], 64)])
        .unwrap();
    assert!(
        full[0].text.contains('5'),
        "unexpected text: {:?}",
        full[0].text
    );
    let cut = LocalEngine::new(model, options.clone())
        .generate(&[request(vec!["5".into()], 64)])
        .unwrap();
    assert_eq!(cut[0].finish_reason, autoif::generate::FinishReason::Stop);
    assert!(!cut[0].text.contains('5'));
    assert!(full[0].text.starts_with(&cut[0].text));
    let short = LocalEngine::new(model, options)
        .generate(&[request(vec![], 3)])
        .unwrap();
    assert_eq!(short[0].token_ids.len(), 3);
    assert_eq!(
        short[0].finish_reason,
        autoif::generate::FinishReason::Length
    );
}

/// Log-probabilities of every next token over a prompt, through the inference path.
fn packed_logprobs(model: &Model, ids: &[u32], precision: Precision) -> Vec<Vec<f32>> {
    let c = &model.config;
    let mut cache = KvCache::new(
        1,
        c.num_hidden_layers,
        c.num_key_value_heads,
        c.head_dim,
        model.decoder.dtype(),
        &Device::Cpu,
    );
    cache.allocate(0, ids.len()).unwrap();
    let n = ids.len();
    let tokens = Tensor::from_vec(ids.to_vec(), n, &Device::Cpu).unwrap();
    let positions = Tensor::from_vec((0..n as u32).collect(), n, &Device::Cpu).unwrap();
    let segment = [Segment {
        slot: 0,
        start: 0,
        len: n,
    }];
    let hidden = model
        .decoder
        .forward_packed(
            &tokens,
            &positions,
            &segment,
            &mut cache,
            Adapters::On,
            precision,
        )
        .unwrap();
    let logits = model.decoder.logits(&hidden, precision).unwrap();
    candle_nn::ops::log_softmax(&logits, 1)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// Keys and values kept in f16 decode greedily as f32 does except at near-ties: where
/// the two continuations of a prompt part, the f32 path's log-probabilities of the two
/// tokens chosen there are within 0.1 nats (teacher-forced, exact weights). Measured
/// 2026-12-04: none of these five part within 64 tokens; on IFEval's 541 prompts, 18
/// of 541 responses part within 512 tokens.
#[test]
fn f16_kv_cache_parts_from_f32_only_at_near_ties() {
    let Some(model) = model() else { return };
    let requests = greedy_requests(64);
    let options = |kv_cache| EngineOptions {
        precision: Precision::Exact,
        kv_cache,
        progress: false,
        ..EngineOptions::default()
    };
    let mut engine = LocalEngine::new(model, options(HostPrecision::F32));
    let full = engine.generate(&requests).unwrap();
    let half = LocalEngine::new(model, options(HostPrecision::F16))
        .generate(&requests)
        .unwrap();
    let mut parted = 0;
    for ((request, f), h) in requests.iter().zip(&full).zip(&half) {
        let (f, h) = (&f.token_ids, &h.token_ids);
        let common = f.iter().zip(h).take_while(|(a, b)| a == b).count();
        if common == f.len() && common == h.len() {
            continue;
        }
        parted += 1;
        let mut ids = engine.prompt_ids(&request.prompt).unwrap();
        ids.extend(&f[..common]);
        let logprobs = packed_logprobs(model, &ids, Precision::Exact);
        let last = logprobs.last().unwrap();
        // A continuation that ends at `common` chose an end-of-sequence token there.
        let chosen = |tokens: &[u32]| match tokens.get(common) {
            Some(&t) => last[t as usize],
            None => model
                .eos_token_ids
                .iter()
                .map(|&t| last[t as usize])
                .fold(f32::NEG_INFINITY, f32::max),
        };
        let gap = (chosen(f) - chosen(h)).abs();
        assert!(
            gap <= 0.1,
            "{request:?}: parted after {common} tokens, gap {gap} nats"
        );
    }
    eprintln!(
        "f16 KV cache: {parted} of {} continuations part from f32",
        requests.len()
    );
}

/// The int8 path's numbers against the exact path's, teacher-forced over each prompt
/// followed by the exact path's greedy continuation (5 prompts, 305 positions). Measured
/// 2026-11-26: the log-probability of the exact path's first choice moves by 0.05 nats
/// on average and by at most 0.30–0.36; the first choice differs at 6–14 positions
/// (2–5%), each a near-tie in the exact path (at most 0.28 nats between the two choices).
/// Asserted: mean ≤ 0.1, worst ≤ 0.5, first choice the same at ≥ 90% of positions, and a
/// differing choice only where the exact path's two candidates are within 1 nat.
#[test]
fn int8_inference_stays_close_to_exact() {
    let Some(model) = model() else { return };
    let requests = greedy_requests(32);
    let mut engine = LocalEngine::new(
        model,
        EngineOptions {
            precision: Precision::Exact,
            progress: false,
            ..EngineOptions::default()
        },
    );
    let greedy = engine.generate(&requests).unwrap();
    let (mut worst, mut sum, mut positions, mut differ, mut widest_gap) = (0f32, 0f32, 0, 0, 0f32);
    for (request, completion) in requests.iter().zip(&greedy) {
        let mut ids = engine.prompt_ids(&request.prompt).unwrap();
        ids.extend(&completion.token_ids);
        let exact = packed_logprobs(model, &ids, Precision::Exact);
        let int8 = packed_logprobs(model, &ids, Precision::Int8);
        for (e, q) in exact.iter().zip(&int8) {
            let best = argmax(e);
            let d = (e[best] - q[best]).abs();
            worst = worst.max(d);
            sum += d;
            positions += 1;
            let chosen = argmax(q);
            if chosen != best {
                differ += 1;
                widest_gap = widest_gap.max(e[best] - e[chosen]);
            }
        }
    }
    let mean = sum / positions as f32;
    eprintln!(
        "int8 vs exact over {positions} positions: |Δlogprob| of the exact first choice mean {mean:.4}, max {worst:.4}; first choice differs at {differ} positions, exact gap there at most {widest_gap:.4}"
    );
    assert!(mean <= 0.1, "mean |Δlogprob| {mean}");
    assert!(worst <= 0.5, "max |Δlogprob| {worst}");
    assert!(
        differ * 10 <= positions,
        "first choice differs at {differ}/{positions}"
    );
    assert!(
        widest_gap <= 1.0,
        "a first choice moved across a gap of {widest_gap} nats"
    );
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}
