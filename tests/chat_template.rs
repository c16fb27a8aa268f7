//! Chat templates render exactly what transformers' `apply_chat_template` renders.
//!
//! `tests/fixtures/chat_templates/expected.json` holds transformers' output (from
//! `scripts/make-tokenizer-fixtures.py`) for the SmolLM2 (ChatML, from the GGUF), Qwen2-Instruct
//! and Llama-3-Instruct templates, plus one that uses the Python-isms real templates rely on.

mod common;

use autoif::model::chat_template::{ChatTemplate, Message};
use candle_core::quantized::gguf_file::{Content, Value};
use serde::Deserialize;
use std::io::Write;
use std::path::Path;

fn template_source(name: &str) -> String {
    let path = common::fixture("chat_templates").join(format!("{name}.jinja"));
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[derive(Deserialize)]
struct Case {
    template: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    conversation: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    rendered: String,
}

#[derive(Deserialize)]
struct Raising {
    template: String,
    messages: Vec<Message>,
    error: String,
    ok_messages: Vec<Message>,
    ok_rendered: String,
}

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
    raising: Raising,
}

fn expected() -> Expected {
    let path = common::fixture("chat_templates").join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn renders_like_transformers_for_every_case() {
    let expected = expected();
    let mut failures = Vec::new();
    for case in &expected.cases {
        let template = ChatTemplate::new(
            &template_source(&case.template),
            case.bos_token.as_deref(),
            case.eos_token.as_deref(),
        )
        .unwrap_or_else(|err| panic!("{}: {err}", case.template));
        let rendered = template
            .render(&case.messages, case.add_generation_prompt)
            .unwrap();
        if rendered != case.rendered {
            failures.push(format!(
                "{} / {} / add_generation_prompt={}:\n ours:         {rendered:?}\n transformers: {:?}",
                case.template, case.conversation, case.add_generation_prompt, case.rendered
            ));
        }
    }
    for template in ["smollm2", "qwen2", "llama3", "pythonic"] {
        let count = expected
            .cases
            .iter()
            .filter(|case| case.template == template)
            .count();
        assert!(count >= 14, "{template} has only {count} cases");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        expected.cases.len(),
        failures.join("\n")
    );
}

#[test]
fn raise_exception_fails_with_the_templates_message() {
    let raising = expected().raising;
    let template = ChatTemplate::new(&template_source(&raising.template), None, None).unwrap();
    let err = template
        .render(&raising.messages, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&raising.error),
        "{err:?} lacks {:?}",
        raising.error
    );
    assert_eq!(
        template.render(&raising.ok_messages, false).unwrap(),
        raising.ok_rendered
    );
}

#[test]
fn smollm2_fixture_is_the_ggufs_own_template() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        // Straight to stderr: libtest hides what `eprintln!` prints in a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: {} is missing (run scripts/fetch-models.sh)",
            path.display()
        );
        return;
    }
    let content = Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
    let Some(Value::String(source)) = content.metadata.get("tokenizer.chat_template") else {
        panic!("{}: no tokenizer.chat_template", path.display());
    };
    assert_eq!(source, &template_source("smollm2"));
}
