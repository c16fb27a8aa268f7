//! The tokenizers we rebuild from GGUF metadata give the same ids and text as Hugging Face's.
//!
//! Reference numbers come from `scripts/make-tokenizer-fixtures.py` (transformers/tokenizers):
//! * SmolLM2-135M-Instruct's GGUF (the embedded default model) on a hand-written corpus and on
//!   every IFEval prompt and GPT-4 response;
//! * the `qwen2` and `llama-bpe` pre-tokenizers on small BPEs trained through those families' real
//!   tokenizer.json pipelines, written here into GGUF files.

mod common;

use autoif::model::tokenizer::Tokenizer;
use candle_core::quantized::gguf_file::{self, Content, Value};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
    decoded_skip_special: String,
    #[serde(default)]
    splits: Vec<String>,
}

#[derive(Deserialize, PartialEq, Debug)]
struct IdsDigest {
    n: usize,
    sha256: String,
}

#[derive(Deserialize)]
struct SmolLm2Fixture {
    bos_token: String,
    eos_token: String,
    add_bos_token: bool,
    vocab_size: usize,
    special_tokens: BTreeMap<String, u32>,
    cases: Vec<Case>,
    ifeval: BTreeMap<String, IdsDigest>,
}

#[derive(Deserialize)]
struct FamilyFixture {
    pre: String,
    tokens: Vec<String>,
    token_types: Vec<i32>,
    merges: Vec<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos_token: bool,
    cases: Vec<Case>,
    ifeval: BTreeMap<String, IdsDigest>,
}

fn digest(ids: &[u32]) -> IdsDigest {
    let joined = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    IdsDigest {
        n: ids.len(),
        sha256: format!("{:x}", Sha256::digest(joined.as_bytes())),
    }
}

/// IFEval prompts (`prompt:KEY`) and GPT-4 responses (`response:INDEX`), as the script keys them.
fn ifeval_texts() -> BTreeMap<String, String> {
    let dir = Path::new(MANIFEST_DIR).join("../shared/data/ifeval");
    let mut texts = BTreeMap::new();
    let lines = |name: &str| -> Vec<serde_json::Value> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    for row in lines("input_data.jsonl") {
        texts.insert(
            format!("prompt:{}", row["key"]),
            row["prompt"].as_str().unwrap().to_owned(),
        );
    }
    for (index, row) in lines("gpt4_responses.jsonl").into_iter().enumerate() {
        texts.insert(
            format!("response:{index}"),
            row["response"].as_str().unwrap().to_owned(),
        );
    }
    texts
}

/// Compares every case; returns one line per mismatch so a failure shows all of them.
fn compare_cases(tokenizer: &Tokenizer, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let ids = tokenizer.encode_raw(&case.text).unwrap();
        if ids != case.ids {
            failures.push(format!(
                "ids of {:?}: ours {ids:?}, Hugging Face {:?}",
                case.text, case.ids
            ));
        }
        let decoded = tokenizer.decode(&case.ids, false).unwrap();
        if decoded != case.decoded {
            failures.push(format!(
                "decode of {:?}: ours {decoded:?}, Hugging Face {:?}",
                case.text, case.decoded
            ));
        }
        let skipped = tokenizer.decode(&case.ids, true).unwrap();
        if skipped != case.decoded_skip_special {
            failures.push(format!(
                "decode (skip special) of {:?}: ours {skipped:?}, Hugging Face {:?}",
                case.text, case.decoded_skip_special
            ));
        }
    }
    failures
}

fn compare_digests(tokenizer: &Tokenizer, expected: &BTreeMap<String, IdsDigest>) -> Vec<String> {
    let texts = ifeval_texts();
    assert_eq!(
        texts.len(),
        1082,
        "IFEval has 541 prompts and 541 responses"
    );
    let mut compared = 0;
    let mut failures = Vec::new();
    for (key, want) in expected {
        let text = texts
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not in the IFEval data"));
        let got = digest(&tokenizer.encode_raw(text).unwrap());
        if &got != want {
            failures.push(format!(
                "{key}: ours {} tokens, Hugging Face {} ({:?}...)",
                got.n,
                want.n,
                &text[..40.min(text.len())]
            ));
        }
        compared += 1;
    }
    assert!(
        compared >= 541,
        "only {compared} IFEval texts in the fixture"
    );
    failures
}

fn assert_no_failures(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn smollm2_gguf() -> Option<PathBuf> {
    let path = Path::new(MANIFEST_DIR).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        // Straight to stderr: libtest hides what `eprintln!` prints in a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: {} is missing (run scripts/fetch-models.sh)",
            path.display()
        );
        None
    }
}

fn read_gguf(path: &Path) -> Content {
    let mut file = std::fs::File::open(path).unwrap();
    Content::read(&mut file).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn smollm2_gguf_tokenizer_matches_hugging_face() {
    let Some(path) = smollm2_gguf() else { return };
    let fixture: SmolLm2Fixture = read_json(&common::fixture("smollm2_tokenizer.json"));
    let tokenizer = Tokenizer::from_gguf(&read_gguf(&path), &path).unwrap();

    assert_eq!(tokenizer.bos_token(), Some(fixture.bos_token.as_str()));
    assert_eq!(tokenizer.eos_token(), Some(fixture.eos_token.as_str()));
    assert_eq!(tokenizer.add_bos(), fixture.add_bos_token);
    assert_eq!(tokenizer.vocab_size(), fixture.vocab_size);
    for (token, id) in &fixture.special_tokens {
        assert_eq!(tokenizer.token_to_id(token), Some(*id), "{token}");
        assert!(
            tokenizer.inner().get_added_tokens_decoder()[id].special,
            "{token} is special"
        );
    }
    assert!(fixture.cases.len() >= 60);
    assert_no_failures("SmolLM2 corpus", &compare_cases(&tokenizer, &fixture.cases));
    assert_no_failures(
        "SmolLM2 on IFEval",
        &compare_digests(&tokenizer, &fixture.ifeval),
    );
    // No BOS for SmolLM2: `encode` is `encode_raw`.
    assert_eq!(
        tokenizer.encode("Hello world").unwrap(),
        tokenizer.encode_raw("Hello world").unwrap()
    );
}

/// The GGUF-built tokenizer saved as tokenizer.json and loaded back the Hugging Face way.
#[test]
fn smollm2_tokenizer_json_round_trip_through_hf_files() {
    let Some(path) = smollm2_gguf() else { return };
    let fixture: SmolLm2Fixture = read_json(&common::fixture("smollm2_tokenizer.json"));
    let from_gguf = Tokenizer::from_gguf(&read_gguf(&path), &path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("tokenizer.json");
    from_gguf.inner().save(&json, false).unwrap();
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(
        &config,
        serde_json::json!({"bos_token": fixture.bos_token, "eos_token": fixture.eos_token, "add_bos_token": false})
            .to_string(),
    )
    .unwrap();
    let from_files = Tokenizer::from_hf_files(&json, Some(&config)).unwrap();
    assert_eq!(from_files.eos_token_id(), from_gguf.eos_token_id());
    assert_no_failures(
        "SmolLM2 from tokenizer.json",
        &compare_cases(&from_files, &fixture.cases),
    );
}

/// Writes the family's vocabulary into a GGUF the way llama.cpp's converter lays it out.
fn write_family_gguf(family: &FamilyFixture, path: &Path) {
    let strings =
        |items: &[String]| Value::Array(items.iter().cloned().map(Value::String).collect());
    let id_of = |token: &Option<String>| {
        token
            .as_ref()
            .map(|t| Value::U32(family.tokens.iter().position(|x| x == t).unwrap() as u32))
    };
    let mut metadata = vec![
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(family.pre.clone())),
        ("tokenizer.ggml.tokens", strings(&family.tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(family.token_types.iter().copied().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges", strings(&family.merges)),
        (
            "tokenizer.ggml.add_bos_token",
            Value::Bool(family.add_bos_token),
        ),
    ];
    if let Some(bos) = id_of(&family.bos_token) {
        metadata.push(("tokenizer.ggml.bos_token_id", bos));
    }
    if let Some(eos) = id_of(&family.eos_token) {
        metadata.push(("tokenizer.ggml.eos_token_id", eos));
    }
    let refs: Vec<(&str, &Value)> = metadata.iter().map(|(key, value)| (*key, value)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &refs, &[]).unwrap();
}

fn pre_tokenizer_splits(tokenizer: &Tokenizer, text: &str) -> Vec<String> {
    let mut pretokenized = PreTokenizedString::from(text);
    tokenizer
        .inner()
        .get_pre_tokenizer()
        .unwrap()
        .pre_tokenize(&mut pretokenized)
        .unwrap();
    pretokenized
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(piece, _, _)| piece.to_owned())
        .collect()
}

#[test]
fn qwen2_and_llama3_gguf_tokenizers_match_hugging_face() {
    let families: BTreeMap<String, FamilyFixture> =
        read_json(&common::fixture("bpe_families.json"));
    assert_eq!(families.keys().collect::<Vec<_>>(), ["llama-bpe", "qwen2"]);
    let dir = tempfile::tempdir().unwrap();
    for (name, family) in &families {
        let path = dir.path().join(format!("{name}.gguf"));
        write_family_gguf(family, &path);
        let tokenizer = Tokenizer::from_gguf(&read_gguf(&path), &path).unwrap();
        assert_eq!(tokenizer.bos_token(), family.bos_token.as_deref(), "{name}");
        assert_eq!(tokenizer.eos_token(), family.eos_token.as_deref(), "{name}");

        let mut failures = Vec::new();
        for case in &family.cases {
            let splits = pre_tokenizer_splits(&tokenizer, &case.text);
            if splits != case.splits {
                failures.push(format!(
                    "{name} splits of {:?}: ours {splits:?}, Hugging Face {:?}",
                    case.text, case.splits
                ));
            }
        }
        failures.extend(compare_cases(&tokenizer, &family.cases));
        failures.extend(compare_digests(&tokenizer, &family.ifeval));
        assert_no_failures(name, &failures);

        let raw = tokenizer.encode_raw("Hi 123").unwrap();
        let with_bos = tokenizer.encode("Hi 123").unwrap();
        if family.add_bos_token {
            assert_eq!(
                with_bos[0],
                tokenizer.bos_token_id().unwrap(),
                "{name} adds BOS"
            );
            assert_eq!(&with_bos[1..], raw.as_slice());
        } else {
            assert_eq!(with_bos, raw, "{name} adds nothing");
        }
    }
}

#[test]
fn unsupported_gguf_pre_tokenizer_is_refused_with_the_file_name() {
    let families: BTreeMap<String, FamilyFixture> =
        read_json(&common::fixture("bpe_families.json"));
    let mut family = families.into_values().next().unwrap();
    family.pre = "chatglm-bpe".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("glm.gguf");
    write_family_gguf(&family, &path);
    let err = Tokenizer::from_gguf(&read_gguf(&path), &path)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("glm.gguf") && err.contains("\"chatglm-bpe\""),
        "{err}"
    );
}
