//! The training loop on the tiny Llama fixture: overfitting a handful of examples drives
//! the SFT loss near zero and DPO accuracy to 1; an interrupted run resumed from its
//! checkpoint reproduces the uninterrupted run's later losses exactly.

mod common;

use autoif::model::adapter_file::load_adapter;
use autoif::model::chat_template::Message;
use autoif::model::lora::LoraConfig;
use autoif::model::{LoadOptions, Model};
use autoif::train::data::{tokenize_preferences, tokenize_sft, Conversation, PreferencePair};
use autoif::train::entry_points::{train_dpo, PreferenceData};
use autoif::train::optim::ScheduleKind;
use autoif::train::{
    train, DpoConfig, SftConfig, StepMetrics, TrainingArgs, TrainingJob, TrainingOptions,
};
use std::path::Path;

fn tiny() -> Model {
    Model::load(
        common::fixture("tiny-llama").to_str().unwrap(),
        &LoadOptions::cpu(),
    )
    .unwrap()
}

fn conversations() -> Vec<Conversation> {
    [
        ("Say hello.", "HELLO THERE"),
        ("Name a colour.", "blue"),
        ("Add two and two.", "four"),
        ("Write a word.", "fox"),
        ("What is next after one?", "two"),
        ("Give a fruit.", "apple"),
    ]
    .iter()
    .map(|(q, a)| Conversation {
        messages: vec![Message::new("user", *q), Message::new("assistant", *a)],
    })
    .collect()
}

fn pairs() -> Vec<PreferencePair> {
    [
        ("Answer in capitals.", "YES", "yes"),
        ("Answer briefly.", "ok", "the answer is ok"),
        ("Name an animal.", "fox", "the"),
        ("Count to two.", "1 2", "2 1"),
    ]
    .iter()
    .map(|(q, c, r)| PreferencePair {
        prompt: vec![Message::new("user", *q)],
        chosen: c.to_string(),
        rejected: r.to_string(),
    })
    .collect()
}

fn args(lr: f64, epochs: usize, batch_size: usize) -> TrainingArgs {
    TrainingArgs {
        epochs,
        lr,
        schedule: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        batch_size,
        lora: LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            ..LoraConfig::default()
        },
        ..TrainingArgs::default()
    }
}

fn options(out: &Path) -> TrainingOptions {
    TrainingOptions {
        out: out.to_path_buf(),
        resume: None,
        stop_after: None,
        base_model: "tiny-llama".into(),
        progress: false,
    }
}

#[test]
fn sft_overfits_a_handful_of_examples() {
    let mut model = tiny();
    let (examples, _) = tokenize_sft(&model, &conversations()[..4], 128).unwrap();
    let config = SftConfig {
        args: args(1e-2, 60, 4),
    };
    let out = tempfile::tempdir().unwrap();
    let summary = train(
        &mut model.decoder,
        &TrainingJob::Sft {
            examples: &examples,
            config: &config,
        },
        &options(out.path()),
    )
    .unwrap();
    let losses = summary.losses();
    eprintln!(
        "SFT loss {:.4} → {:.4} over {} steps",
        losses[0],
        losses[losses.len() - 1],
        losses.len()
    );
    assert_eq!(losses.len(), 60);
    assert!(
        losses[0] > 4.0,
        "a random model starts near ln(320): {}",
        losses[0]
    );
    assert!(*losses.last().unwrap() < 0.05, "{losses:?}");
    // metrics.jsonl holds one line per step, and the final adapter loads back.
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 60);
    let mut fresh = tiny();
    let config = load_adapter(&mut fresh.decoder, out.path()).unwrap();
    assert_eq!(config.r, 8);
}

#[test]
fn max_steps_ends_training_early_with_the_schedule_over_those_steps() {
    let mut model = tiny();
    let (examples, _) = tokenize_sft(&model, &conversations()[..4], 128).unwrap();
    let mut args = args(1e-3, 5, 1);
    args.max_steps = 3;
    args.schedule = ScheduleKind::Linear;
    let config = SftConfig { args };
    let out = tempfile::tempdir().unwrap();
    let summary = train(
        &mut model.decoder,
        &TrainingJob::Sft {
            examples: &examples,
            config: &config,
        },
        &options(out.path()),
    )
    .unwrap();
    assert_eq!(summary.total_steps, 3, "5 epochs of 4 steps, capped at 3");
    let lrs: Vec<f64> = summary.metrics.iter().map(|m| m.lr).collect();
    // Linear decay to 0 at step 3 (no warm-up): 1e-3, 2/3 of it, 1/3 of it.
    for (lr, expected) in lrs.iter().zip([1e-3, 2e-3 / 3.0, 1e-3 / 3.0]) {
        assert!((lr - expected).abs() < 1e-12, "{lrs:?}");
    }
    assert!(out.path().join("adapter_model.safetensors").is_file());
}

#[test]
fn dpo_reaches_full_accuracy() {
    let mut model = tiny();
    let (tokenized, _) = tokenize_preferences(&model, &pairs(), 128).unwrap();
    let config = DpoConfig {
        args: args(1e-2, 30, 4),
        ..DpoConfig::default()
    };
    let out = tempfile::tempdir().unwrap();
    let summary = train(
        &mut model.decoder,
        &TrainingJob::Dpo {
            pairs: &tokenized,
            config: &config,
        },
        &options(out.path()),
    )
    .unwrap();
    let first = &summary.metrics[0];
    let last = summary.metrics.last().unwrap();
    eprintln!("DPO first {first:?}\nDPO last {last:?}");
    // Adapters start with B = 0, so the policy equals the reference: loss ln 2.
    assert!((first.loss - std::f64::consts::LN_2).abs() < 1e-4);
    let last_dpo = last.dpo.as_ref().unwrap();
    assert_eq!(last_dpo.accuracy, 1.0);
    assert!(last.loss < 0.1, "{last:?}");
    assert!(last_dpo.margin > 2.0);
}

/// Held-out pairs: 40 prompts whose chosen reply is always "YES" and rejected "no", a
/// fifth of the prompts kept out. The policy learns the preference, not the prompts, so
/// it must prefer the chosen reply on prompts it never trained on.
#[test]
fn dpo_held_out_pairs_are_scored_on_prompts_never_trained() {
    let mut model = tiny();
    let items: Vec<PreferencePair> = (0..40)
        .map(|i| PreferencePair {
            prompt: vec![Message::new("user", format!("Question number {i}?"))],
            chosen: "YES".into(),
            rejected: "no".into(),
        })
        .collect();
    let data = PreferenceData {
        path: "pairs.jsonl".into(),
        items,
    };
    let config = DpoConfig {
        args: args(1e-2, 3, 8),
        held_out: 0.2,
        ..DpoConfig::default()
    };
    let out = tempfile::tempdir().unwrap();
    let outcome = train_dpo(&mut model, &data, &config, &options(out.path()), |_| Ok(())).unwrap();
    let held = outcome.held_out.expect("pairs were held out");
    assert!(held.pairs > 0 && held.pairs < 40, "{held:?}");
    assert_eq!(outcome.data.kept + held.pairs, 40);
    assert_eq!(held.reward_accuracy, 1.0, "{held:?}");
    assert!(held.mean_margin > 0.0);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("held_out.json")).unwrap())
            .unwrap();
    assert_eq!(written["pairs"], held.pairs);
}

/// SFT with accumulation over 8 examples: 4 batches of 2, 2 per step, 3 epochs = 6 steps.
fn resume_job_args() -> SftConfig {
    SftConfig {
        args: TrainingArgs {
            epochs: 3,
            lr: 5e-3,
            schedule: ScheduleKind::Cosine,
            warmup_ratio: 0.2,
            batch_size: 2,
            grad_accum: 2,
            save_every: 2,
            ..TrainingArgs::default()
        },
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_losses_exactly() {
    let model = tiny();
    let mut convs = conversations();
    convs.extend(conversations()[..2].iter().map(|c| {
        let mut c = c.clone();
        c.messages[1].content.push_str(" again");
        c
    }));
    let (examples, _) = tokenize_sft(&model, &convs, 128).unwrap();
    drop(model);
    let config = resume_job_args();
    let job = TrainingJob::Sft {
        examples: &examples,
        config: &config,
    };

    let full_dir = tempfile::tempdir().unwrap();
    let full = train(&mut tiny().decoder, &job, &options(full_dir.path())).unwrap();
    assert_eq!(full.total_steps, 6);

    // Interrupted after step 3: the latest checkpoint is step 2.
    let dir = tempfile::tempdir().unwrap();
    let interrupted = TrainingOptions {
        stop_after: Some(3),
        ..options(dir.path())
    };
    let first_part = train(&mut tiny().decoder, &job, &interrupted).unwrap();
    assert_eq!(first_part.metrics.len(), 3);
    let resumed = TrainingOptions {
        resume: Some(dir.path().join("checkpoint-2")),
        ..options(dir.path())
    };
    let second_part = train(&mut tiny().decoder, &job, &resumed).unwrap();
    let full_losses = full.losses();
    assert_eq!(
        second_part.losses(),
        full_losses[2..].to_vec(),
        "resumed losses differ"
    );
    assert_eq!(first_part.losses(), full_losses[..3].to_vec());
    eprintln!("losses {full_losses:?} reproduced from step 3 on");

    // metrics.jsonl reads as one uninterrupted run.
    let steps: Vec<u64> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    // The final adapters are bit-identical.
    let a = std::fs::read(full_dir.path().join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    assert!(a == b, "final adapters differ");

    // A checkpoint refuses to continue another configuration.
    let mut other = resume_job_args();
    other.args.seed = 7;
    let err = train(
        &mut tiny().decoder,
        &TrainingJob::Sft {
            examples: &examples,
            config: &other,
        },
        &resumed,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("settings differ"), "{err:#}");
}

#[test]
fn lora_dropout_changes_the_trajectory_and_resumes_exactly() {
    let model = tiny();
    let (examples, _) = tokenize_sft(&model, &conversations(), 128).unwrap();
    drop(model);
    let mut config = resume_job_args();
    config.args.lora.lora_dropout = 0.3;
    let job = TrainingJob::Sft {
        examples: &examples,
        config: &config,
    };
    let plain_config = resume_job_args();
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = train(
        &mut tiny().decoder,
        &TrainingJob::Sft {
            examples: &examples,
            config: &plain_config,
        },
        &options(plain_dir.path()),
    )
    .unwrap()
    .losses();

    let full_dir = tempfile::tempdir().unwrap();
    let full = train(&mut tiny().decoder, &job, &options(full_dir.path()))
        .unwrap()
        .losses();
    // B starts at zero and the warm-up's first step has learning rate 0, so the first two
    // losses cannot see the dropout; every later one does.
    assert_eq!(full[..2], plain[..2]);
    assert!(
        full[2..].iter().zip(&plain[2..]).all(|(a, b)| a != b),
        "dropout left the losses unchanged: {full:?} vs {plain:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let interrupted = TrainingOptions {
        stop_after: Some(3),
        ..options(dir.path())
    };
    train(&mut tiny().decoder, &job, &interrupted).unwrap();
    let resumed = TrainingOptions {
        resume: Some(dir.path().join("checkpoint-2")),
        ..options(dir.path())
    };
    let second = train(&mut tiny().decoder, &job, &resumed).unwrap().losses();
    assert_eq!(
        second,
        full[2..].to_vec(),
        "dropout masks were not replayed"
    );
}

#[test]
fn dpo_with_precomputed_reference_matches_the_per_step_reference() {
    let model = tiny();
    let (tokenized, _) = tokenize_preferences(&model, &pairs(), 128).unwrap();
    drop(model);
    let config = DpoConfig {
        args: args(1e-2, 3, 2),
        ..DpoConfig::default()
    };
    let precomputed = DpoConfig {
        precompute_ref_log_probs: true,
        ..config.clone()
    };
    let run = |config: &DpoConfig, out: &Path| {
        train(
            &mut tiny().decoder,
            &TrainingJob::Dpo {
                pairs: &tokenized,
                config,
            },
            &options(out),
        )
        .unwrap()
    };
    let per_step_dir = tempfile::tempdir().unwrap();
    let per_step = run(&config, per_step_dir.path());
    let dir = tempfile::tempdir().unwrap();
    let cached = run(&precomputed, dir.path());
    for (a, b) in per_step.metrics.iter().zip(&cached.metrics) {
        let keyed = |m: &StepMetrics| {
            let dpo = m.dpo.as_ref().unwrap();
            [
                ("loss", m.loss),
                ("rewards/margins", dpo.margin),
                ("kl", dpo.kl),
            ]
        };
        for ((key, a), (_, b)) in keyed(a).into_iter().zip(keyed(b)) {
            assert!((a - b).abs() < 1e-5, "{key}: {a} per step, {b} precomputed");
        }
    }
    let cache_path = dir.path().join("reference_logps.json");
    let cache: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cache_path).unwrap()).unwrap();
    assert_eq!(cache["logps"].as_array().unwrap().len(), pairs().len());

    // A second run into the folder reuses the cache and retraces the run exactly; a cache
    // made for other weights is recomputed, not trusted.
    assert_eq!(run(&precomputed, dir.path()).losses(), cached.losses());
    let mut stale = cache.clone();
    stale["weights_fingerprint"] = "other weights".into();
    stale["logps"][0][0] = 123.0.into();
    std::fs::write(&cache_path, stale.to_string()).unwrap();
    assert_eq!(run(&precomputed, dir.path()).losses(), cached.losses());
    let rewritten: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cache_path).unwrap()).unwrap();
    assert_eq!(
        rewritten["weights_fingerprint"],
        cache["weights_fingerprint"]
    );
}

#[test]
fn packing_fills_rows_up_to_max_len_and_keeps_the_loss() {
    let model = tiny();
    let (examples, _) = tokenize_sft(&model, &conversations(), 128).unwrap();
    drop(model);
    // Rows as long as the six examples together.
    let total: usize = examples.iter().map(|e| e.ids.len()).sum();
    let run = |packing: bool, batch_size: usize| {
        let mut config = SftConfig {
            args: args(1e-2, 2, batch_size),
        };
        config.args.max_len = total;
        config.args.packing = packing;
        let out = tempfile::tempdir().unwrap();
        let job = TrainingJob::Sft {
            examples: &examples,
            config: &config,
        };
        train(&mut tiny().decoder, &job, &options(out.path())).unwrap()
    };
    // One row of six examples per step, against a batch of six without packing.
    let packed = run(true, 1);
    let unpacked = run(false, 6);
    assert_eq!(packed.total_steps, 2, "one packed row per epoch");
    assert_eq!(packed.metrics[0].tokens, total);
    for (a, b) in packed.losses().iter().zip(unpacked.losses()) {
        assert!((a - b).abs() < 1e-5 * b.abs(), "packed {a}, unpacked {b}");
    }
    // Without packing, batch size 1 means six steps per epoch.
    assert_eq!(run(false, 1).total_steps, 12);
}

/// The CUDA layout on the CPU: bf16 base weights (through the plain candle ops, and
/// attention through the same `CausalAttention` op in bf16 as on the GPU), f32 adapters
/// and optimizer state.
#[test]
fn bf16_base_weights_train_f32_adapters() {
    let bf16 = LoadOptions {
        dtype: candle_core::DType::BF16,
        ..LoadOptions::cpu()
    };
    let load = || Model::load(common::fixture("tiny-llama").to_str().unwrap(), &bf16).unwrap();
    let mut model = load();
    let (examples, _) = tokenize_sft(&model, &conversations()[..4], 128).unwrap();
    let config = SftConfig {
        args: args(1e-2, 30, 4),
    };
    let out = tempfile::tempdir().unwrap();
    let job = TrainingJob::Sft {
        examples: &examples,
        config: &config,
    };
    let losses = train(&mut model.decoder, &job, &options(out.path()))
        .unwrap()
        .losses();
    eprintln!("bf16 SFT loss {:.3} → {:.3}", losses[0], losses[29]);
    assert!(losses[29] < 0.2 * losses[0], "{losses:?}");
    for (_, layer) in model.decoder.linear_layers() {
        assert_eq!(layer.weight().unwrap().dtype(), candle_core::DType::BF16);
        let adapter = layer.adapter().unwrap();
        assert_eq!(adapter.a.dtype(), candle_core::DType::F32);
        assert_eq!(adapter.b.dtype(), candle_core::DType::F32);
    }
    let mut fresh = load();
    let (pairs, _) = tokenize_preferences(&fresh, &pairs(), 128).unwrap();
    let config = DpoConfig {
        args: args(1e-2, 10, 4),
        ..DpoConfig::default()
    };
    let out = tempfile::tempdir().unwrap();
    let summary = train(
        &mut fresh.decoder,
        &TrainingJob::Dpo {
            pairs: &pairs,
            config: &config,
        },
        &options(out.path()),
    )
    .unwrap();
    let last = summary.metrics.last().unwrap();
    assert_eq!(last.dpo.as_ref().unwrap().accuracy, 1.0, "{last:?}");
}

/// On two or more threads the CPU trainer runs two pieces of a step at once (one per
/// core); on one thread, one after the other. Both give the same losses and adapters bit
/// for bit, for SFT with LoRA dropout (masks seeded per piece) and DPO, with an odd
/// number of pieces per step.
#[test]
fn two_pieces_at_once_give_the_training_of_one_at_a_time() {
    let model = tiny();
    let (examples, _) = tokenize_sft(&model, &conversations(), 128).unwrap();
    let (pairs, _) = tokenize_preferences(&model, &pairs(), 128).unwrap();
    drop(model);
    // A one-token budget: every item is a piece of its own, five or three per step.
    let one_item_pieces = |batch_size| TrainingArgs {
        max_batch_tokens: 1,
        ..args(1e-2, 3, batch_size)
    };
    let mut sft = SftConfig {
        args: one_item_pieces(5),
    };
    sft.args.lora.lora_dropout = 0.3;
    let dpo = DpoConfig {
        args: one_item_pieces(3),
        ..DpoConfig::default()
    };
    let jobs = [
        TrainingJob::Sft {
            examples: &examples,
            config: &sft,
        },
        TrainingJob::Dpo {
            pairs: &pairs,
            config: &dpo,
        },
    ];
    for job in &jobs {
        let on_threads = |threads: usize| {
            let out = tempfile::tempdir().unwrap();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let losses = pool
                .install(|| train(&mut tiny().decoder, job, &options(out.path())))
                .unwrap()
                .losses();
            let adapter = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
            (losses, adapter)
        };
        let (one, two) = (on_threads(1), on_threads(2));
        assert!(one.0.len() >= 3, "{:?}", one.0);
        assert_eq!(one.0, two.0, "{}: losses", job.name());
        assert!(one.1 == two.1, "{}: the adapters differ", job.name());
    }
}
