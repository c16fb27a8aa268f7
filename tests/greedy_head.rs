//! Greedy decoding through the screened LM head (`EngineOptions::greedy_screen`) on the
//! embedded SmolLM2 GGUF: the same tokens as the full exact head, step by step, with
//! end-of-sequence held off for some requests and two samples sharing a prefill.

mod common;

use autoif::generate::{Backend, EngineOptions, LocalEngine, Prompt, Request, SamplingParams};
use autoif::model::ops::greedy_head;
use autoif::model::ops::quant::Precision;
use autoif::model::{LoadOptions, Model};

fn requests() -> Vec<Request> {
    [
        "Write a haiku about the sea.",
        "List three fruits, separated by commas.",
        "Write a 300+ word summary of the wikipedia page about Raymond III, Count of Tripoli. Do not use any commas.",
        "What is 12 times 12? Reply with the number only.",
        "Write a limerick about a cat, all in lowercase letters.",
        "Explain recursion in one sentence, in JSON format.",
    ]
    .iter()
    .enumerate()
    .map(|(i, p)| Request {
        prompt: Prompt::user(*p),
        n: if i == 1 { 2 } else { 1 },
        params: SamplingParams {
            max_new_tokens: 64,
            // Short answers would end early: hold EOS off for some.
            min_new_tokens: if i % 2 == 1 { 40 } else { 0 },
            ..SamplingParams::default()
        },
    })
    .collect()
}

#[test]
fn screened_greedy_tokens_equal_the_full_exact_head() {
    let Some(path) = common::smollm2("screened_greedy_tokens_equal_the_full_exact_head") else {
        return;
    };
    let model = Model::load(path.to_str().unwrap(), &LoadOptions::cpu()).unwrap();
    let run = |greedy_screen: bool| {
        let mut engine = LocalEngine::new(
            &model,
            EngineOptions {
                max_batch: 4,
                precision: Precision::Exact,
                progress: false,
                greedy_screen,
                ..EngineOptions::default()
            },
        );
        let out = engine.generate(&requests()).unwrap();
        (out, engine.stats())
    };
    let (full, full_stats) = run(false);
    let (screened, stats) = run(true);
    assert_eq!(full_stats.screened_tokens, 0);
    assert_eq!(full.len(), 7);
    for (f, s) in full.iter().zip(&screened) {
        assert_eq!(
            f.token_ids, s.token_ids,
            "request {} sample {}",
            f.request_index, f.sample_index
        );
        assert_eq!(f.text, s.text);
    }
    eprintln!(
        "{} tokens, {} from the screened head, {} of those from the full head",
        stats.generated_tokens, stats.screened_tokens, stats.full_head_tokens
    );
    if greedy_head::int8_is_fast() {
        // The screen ran and decided most rows itself.
        assert!(stats.screened_tokens > 0);
        assert!(
            stats.full_head_tokens * 4 < stats.screened_tokens,
            "{} of {} rows needed the full head",
            stats.full_head_tokens,
            stats.screened_tokens
        );
    } else {
        eprintln!("SKIP screening: this CPU has no AVX512-VNNI, so the engine kept the full head");
        assert_eq!(stats.screened_tokens, 0);
    }
}
