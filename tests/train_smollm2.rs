//! On the embedded SmolLM2: SFT on ten "answer in all capital letters" examples changes the
//! greedy output on a held-out prompt to capitals (5 steps, about a minute on two cores;
//! skipped with a message when the GGUF has not been fetched).

mod common;

use autoif::generate::{Backend, EngineOptions, LocalEngine, Prompt, Request, SamplingParams};
use autoif::model::chat_template::Message;
use autoif::model::{LoadOptions, Model};
use autoif::train::data::{tokenize_sft, Conversation};
use autoif::train::optim::ScheduleKind;
use autoif::train::{train, SftConfig, TrainingArgs, TrainingJob, TrainingOptions};

const EXAMPLES: [(&str, &str); 10] = [
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
    (
        "What is frozen water called?",
        "FROZEN WATER IS CALLED ICE.",
    ),
    ("What colour is grass?", "GRASS IS GREEN."),
    ("How many legs does a cat have?", "A CAT HAS FOUR LEGS."),
    (
        "What star is closest to Earth?",
        "THE SUN IS THE CLOSEST STAR.",
    ),
];

fn greedy(model: &Model, prompt: &str) -> String {
    let mut engine = LocalEngine::new(
        model,
        EngineOptions {
            progress: false,
            ..EngineOptions::default()
        },
    );
    let request = Request {
        prompt: Prompt::Chat(vec![Message::new("user", prompt)]),
        n: 1,
        params: SamplingParams {
            max_new_tokens: 24,
            ..SamplingParams::default()
        },
    };
    engine.generate(&[request]).unwrap().remove(0).text
}

fn capital_share(text: &str) -> f64 {
    let letters: Vec<char> = text.chars().filter(|c| c.is_alphabetic()).collect();
    letters.iter().filter(|c| c.is_uppercase()).count() as f64 / letters.len().max(1) as f64
}

#[test]
fn ten_all_capital_examples_change_the_greedy_output() {
    let Some(path) = common::smollm2("ten_all_capital_examples_change_the_greedy_output") else {
        return;
    };
    let mut model = Model::load(path.to_str().unwrap(), &LoadOptions::cpu()).unwrap();
    let held_out = "What is the largest ocean on Earth?";
    let before = greedy(&model, held_out);
    let conversations: Vec<Conversation> = EXAMPLES
        .iter()
        .map(|(q, a)| Conversation {
            messages: vec![Message::new("user", *q), Message::new("assistant", *a)],
        })
        .collect();
    let (examples, _) = tokenize_sft(&model, &conversations, 256).unwrap();
    let config = SftConfig {
        args: TrainingArgs {
            epochs: 5,
            lr: 2e-3,
            schedule: ScheduleKind::Linear,
            warmup_ratio: 0.0,
            batch_size: 10,
            ..TrainingArgs::default()
        },
    };
    let out = tempfile::tempdir().unwrap();
    let summary = train(
        &mut model.decoder,
        &TrainingJob::Sft {
            examples: &examples,
            config: &config,
        },
        &TrainingOptions {
            out: out.path().to_path_buf(),
            resume: None,
            stop_after: None,
            base_model: "SmolLM2".into(),
            progress: false,
        },
    )
    .unwrap();
    let after = greedy(&model, held_out);
    eprintln!(
        "losses {:?}\nbefore: {before}\nafter:  {after}",
        summary.losses()
    );
    assert!(capital_share(&before) < 0.3, "{before}");
    assert!(capital_share(&after) > 0.9, "{after}");
}
