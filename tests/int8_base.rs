//! Training on an int8 base (`--base-dtype int8`) on the embedded SmolLM2: the SFT loss
//! curve tracks the f32 base's step by step, every projection is stored as int8 blocks
//! only, and the trained adapter, saved in PEFT's layout, loads onto the f32 base with
//! the loss it had on the int8 one (skipped with a message when the GGUF has not been
//! fetched). About four minutes on two busy cores. And the loader's int8 projections
//! (each quantized as it is read) are bit for bit the blocks of quantizing after loading.

mod common;

use autoif::model::adapter_file::load_adapter;
use autoif::model::chat_template::Message;
use autoif::model::decoder::Decoder;
use autoif::model::lora::Adapters;
use autoif::model::ops::base_weight::BaseWeight;
use autoif::model::{LoadOptions, Model, ProjectionStorage};
use autoif::train::adapters::quantize_base;
use autoif::train::data::{tokenize_sft, Conversation, TokenBatch, Tokenized};
use autoif::train::optim::ScheduleKind;
use autoif::train::policy::Policy;
use autoif::train::sft::sft_loss;
use autoif::train::{train, BaseDtype, SftConfig, TrainingArgs, TrainingJob, TrainingOptions};
use candle_core::{DType, Tensor};
use std::path::Path;

const EXAMPLES: [(&str, &str); 8] = [
    (
        "What is the capital of France?",
        "THE CAPITAL OF FRANCE IS PARIS.",
    ),
    ("Name a primary colour.", "RED IS A PRIMARY COLOUR."),
    (
        "How many days are in a week?",
        "THERE ARE SEVEN DAYS IN A WEEK.",
    ),
    ("What do bees make?", "BEES MAKE HONEY."),
    ("What is two plus two?", "TWO PLUS TWO IS FOUR."),
    ("Which animal barks?", "A DOG BARKS."),
    ("What colour is grass?", "GRASS IS GREEN."),
    ("How many legs does a cat have?", "A CAT HAS FOUR LEGS."),
];

/// Per-step |loss(int8 base) − loss(f32 base)| allowed: `RELATIVE` of the f32 base's loss
/// plus `ABSOLUTE` nats per target token. At step 0 (adapters zero) the gap is the base's
/// quantization alone, each Q8_0 weight within half a step (max |w| of its 32-block / 254)
/// of the f32 one: measured 0.029 nats of 2.96 (1.0%). The two runs then train on slightly
/// different functions; measured at most 2.5% of the loss (0.0009 of 0.037 at step 4),
/// and the absolute term covers the last steps, whose losses are near zero (docs/gpu.md).
const RELATIVE: f64 = 0.03;
const ABSOLUTE: f64 = 0.002;

fn tolerance(reference: f64) -> f64 {
    RELATIVE * reference.abs() + ABSOLUTE
}

fn examples(model: &Model) -> Vec<Tokenized> {
    let conversations: Vec<Conversation> = EXAMPLES
        .iter()
        .map(|(q, a)| Conversation {
            messages: vec![Message::new("user", *q), Message::new("assistant", *a)],
        })
        .collect();
    tokenize_sft(model, &conversations, 256).unwrap().0
}

/// Trains 6 steps of SFT (all examples per step) on `base_dtype`, saving into `out`;
/// returns the per-step losses.
fn train_on(
    model: &mut Model,
    examples: &[Tokenized],
    base_dtype: BaseDtype,
    out: &Path,
) -> Vec<f64> {
    let config = SftConfig {
        args: TrainingArgs {
            epochs: 6,
            lr: 2e-3,
            schedule: ScheduleKind::Constant,
            warmup_ratio: 0.0,
            batch_size: examples.len(),
            base_dtype,
            ..TrainingArgs::default()
        },
    };
    let outcome = train(
        &mut model.decoder,
        &TrainingJob::Sft {
            examples,
            config: &config,
        },
        &TrainingOptions {
            out: out.to_path_buf(),
            resume: None,
            stop_after: None,
            base_model: "SmolLM2".into(),
            progress: false,
        },
    )
    .unwrap();
    outcome.losses()
}

/// The mean NLL per target token of `examples`, adapters on.
fn loss(model: &Model, examples: &[Tokenized]) -> f64 {
    let refs: Vec<&Tokenized> = examples.iter().collect();
    let batch = TokenBatch::new(&refs, model.decoder.device()).unwrap();
    let policy = Policy {
        adapters: Adapters::On,
        checkpointing: false,
    };
    let (loss, _) = sft_loss(&model.decoder, &batch, batch.target_count(), policy).unwrap();
    loss.value.to_scalar::<f32>().unwrap() as f64
}

#[test]
fn smollm2_sft_on_an_int8_base_tracks_the_f32_base_and_its_adapter_loads_on_f32() {
    let Some(path) = common::smollm2("smollm2_sft_on_an_int8_base_tracks_the_f32_base") else {
        return;
    };
    let path = path.to_str().unwrap();
    let load = || Model::load(path, &LoadOptions::cpu()).unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let mut f32_model = load();
    let examples = examples(&f32_model);
    let f32_losses = train_on(
        &mut f32_model,
        &examples,
        BaseDtype::Model,
        &tmp.path().join("f32"),
    );
    let mut int8_model = load();
    let int8_out = tmp.path().join("int8");
    let int8_losses = train_on(&mut int8_model, &examples, BaseDtype::Int8, &int8_out);

    eprintln!("step  f32 base   int8 base  |difference|  tolerance");
    for (step, (a, b)) in f32_losses.iter().zip(&int8_losses).enumerate() {
        eprintln!(
            "{step:>4}  {a:.5}  {b:.5}  {:.5}  {:.5}",
            (a - b).abs(),
            tolerance(*a)
        );
    }
    assert_eq!(f32_losses.len(), 6);
    assert_eq!(int8_losses.len(), 6);
    for (step, (a, b)) in f32_losses.iter().zip(&int8_losses).enumerate() {
        assert!(
            (a - b).abs() <= tolerance(*a),
            "step {step}: the int8 base's loss {b:.5} differs from the f32 base's {a:.5} by more than {:.5}",
            tolerance(*a)
        );
    }
    // Not vacuous: the base really is int8 (and not the f32 copy), and training moved.
    let layers = int8_model.decoder.linear_layers();
    assert!(layers.iter().all(|(_, l)| l.base_is_int8()));
    assert!(f32_model
        .decoder
        .linear_layers()
        .iter()
        .all(|(_, l)| !l.base_is_int8()));
    assert!(
        int8_losses[0] != f32_losses[0],
        "quantization changed nothing"
    );
    assert!(int8_losses[5] < int8_losses[0] - 0.5, "{int8_losses:?}");

    // The adapter trained on the int8 base, as saved (PEFT layout), on the f32 base.
    let on_int8 = loss(&int8_model, &examples);
    let mut transferred = load();
    let before = loss(&transferred, &examples);
    load_adapter(&mut transferred.decoder, &int8_out).unwrap();
    let on_f32 = loss(&transferred, &examples);
    eprintln!(
        "loss: f32 base alone {before:.5}; int8-trained adapter on the int8 base {on_int8:.5}, on the f32 base {on_f32:.5}"
    );
    assert!(
        (on_f32 - on_int8).abs() <= tolerance(on_int8),
        "the adapter gives {on_f32:.4} on the f32 base but {on_int8:.4} on the int8 one"
    );
    assert!(on_f32 < before - 0.5, "{before} → {on_f32}");
}

/// Every tensor of `d` that is not a projection weight: embeddings, norms, the LM head and
/// the q/k/v biases.
fn dense_tensors(d: &Decoder) -> Vec<(String, Tensor)> {
    let mut out = vec![
        ("embed_tokens".to_string(), d.embed_tokens.clone()),
        ("norm".to_string(), d.norm.clone()),
    ];
    out.extend(d.lm_head.clone().map(|t| ("lm_head".to_string(), t)));
    for (i, layer) in d.layers.iter().enumerate() {
        out.push((
            format!("{i}.input_layernorm"),
            layer.input_layernorm.clone(),
        ));
        out.push((
            format!("{i}.post_attention_layernorm"),
            layer.post_attention_layernorm.clone(),
        ));
    }
    for (name, layer) in d.linear_layers() {
        out.extend(layer.bias().map(|b| (format!("{name}.bias"), b.clone())));
    }
    out
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// `ProjectionStorage::Int8` quantizes each projection as the loader reads it, so the dense
/// projections never coexist; the blocks must be those the trainer made from the dense load
/// (`quantize_base`), bit for bit, and every other tensor the dense load's: sharded
/// safetensors with q/k/v biases (tiny Qwen2), one safetensors file (tiny Llama), and the
/// GGUF, read one tensor at a time with Llama's Q/K rows un-permuted (SmolLM2, when fetched).
#[test]
fn quantizing_as_the_loader_reads_gives_the_blocks_of_quantizing_after_loading() {
    let mut models = vec![common::fixture("tiny-qwen2"), common::fixture("tiny-llama")];
    models.extend(common::smollm2(
        "quantizing_as_the_loader_reads_gives_the_blocks_of_quantizing_after_loading (GGUF part)",
    ));
    let int8 = LoadOptions {
        projections: ProjectionStorage::Int8,
        ..LoadOptions::cpu()
    };
    for path in &models {
        let path = path.to_str().unwrap();
        let mut after = Model::load(path, &LoadOptions::cpu()).unwrap();
        assert!(after
            .decoder
            .linear_layers()
            .iter()
            .all(|(_, l)| !l.base_is_int8()));
        quantize_base(&mut after.decoder).unwrap();
        let at_load = Model::load(path, &int8).unwrap();
        let (want, got) = (
            after.decoder.linear_layers(),
            at_load.decoder.linear_layers(),
        );
        assert_eq!(want.len(), got.len());
        for ((name, w), (_, g)) in want.iter().zip(&got) {
            let (BaseWeight::Int8(w), BaseWeight::Int8(g)) = (w.base(), g.base()) else {
                panic!("{path}: {name} is not stored as int8 blocks");
            };
            assert!(w == g, "{path}: {name}: the int8 blocks differ");
        }
        let (want, got) = (
            dense_tensors(&after.decoder),
            dense_tensors(&at_load.decoder),
        );
        assert_eq!(want.len(), got.len());
        for ((name, w), (_, g)) in want.iter().zip(&got) {
            assert!(bits(w) == bits(g), "{path}: {name} differs");
        }
        eprintln!(
            "{path}: {} projections, {} other tensors identical",
            at_load.decoder.linear_layers().len(),
            want.len()
        );
    }
    // An int8 base is CPU f32 only: refused before a weight is read.
    let bf16 = LoadOptions {
        dtype: DType::BF16,
        ..int8
    };
    let err = Model::load(models[0].to_str().unwrap(), &bf16)
        .err()
        .expect("bf16 int8 refused")
        .to_string();
    assert!(
        err.starts_with("int8 projections need f32 weights on the CPU, not BF16"),
        "{err}"
    );
}
