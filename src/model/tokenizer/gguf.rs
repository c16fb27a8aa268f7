//! Rebuilds a Hugging Face tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! A GGUF carries the vocabulary, merges and token types, but not the normalizer and
//! pre-tokenizer: `tokenizer.ggml.pre` names them. For each name we support we rebuild exactly
//! what that model family's own tokenizer.json does, so ids equal the Hugging Face tokenizer's.

use anyhow::{anyhow, bail, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Meta-Llama-3's tokenizer.json split regex (tiktoken's cl100k pattern).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's tokenizer.json split regex: as Llama 3's, but single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` families we can rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizerFamily {
    /// SmolLM/SmolLM2 (and StarCoder): every digit alone, then GPT-2's byte-level regex.
    SmolLm,
    /// Llama 3: the cl100k split, and whole pre-tokens found in the vocabulary skip the merges.
    Llama3,
    /// Qwen2: NFC, then the cl100k split with single digits.
    Qwen2,
}

const SUPPORTED_PRE: &str = "smollm, llama-bpe, llama3, llama-v3, qwen2";

impl PreTokenizerFamily {
    pub(crate) fn from_gguf_pre(pre: &str) -> Option<Self> {
        match pre {
            "smollm" => Some(Self::SmolLm),
            "llama-bpe" | "llama3" | "llama-v3" => Some(Self::Llama3),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    pub(crate) fn pre_tokenizer(self) -> Result<PreTokenizerWrapper> {
        let split = |regex: &str| -> Result<PreTokenizerWrapper> {
            let split = Split::new(
                SplitPattern::Regex(regex.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|err| anyhow!("cannot compile the pre-tokenizer regex: {err}"))?;
            Ok(split.into())
        };
        let steps: Vec<PreTokenizerWrapper> = match self {
            Self::SmolLm => vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ],
            Self::Llama3 => vec![
                split(LLAMA3_SPLIT)?,
                ByteLevel::new(false, true, false).into(),
            ],
            Self::Qwen2 => vec![
                split(QWEN2_SPLIT)?,
                ByteLevel::new(false, false, false).into(),
            ],
        };
        Ok(Sequence::new(steps).into())
    }

    /// llama.cpp adds BOS for Llama 3 files that do not say; the others never had one.
    fn default_add_bos(self) -> bool {
        self == Self::Llama3
    }
}

/// A tokenizer rebuilt from GGUF metadata, with what the wrapper needs to know about it.
pub(super) struct TokenizerParts {
    pub tokenizer: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos: bool,
}

impl TokenizerParts {
    pub fn read(content: &Content, path: &Path) -> Result<Self> {
        let meta = Metadata { content, path };
        let model = meta.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            bail!(
                "{}: tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") GGUF tokenizers are supported",
                path.display()
            );
        }
        let pre = meta.string("tokenizer.ggml.pre")?;
        let family = PreTokenizerFamily::from_gguf_pre(pre).ok_or_else(|| {
            anyhow!(
                "{}: unsupported GGUF pre-tokenizer {pre:?} (tokenizer.ggml.pre); supported: {SUPPORTED_PRE}",
                path.display()
            )
        })?;
        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        let token_types = meta.integers("tokenizer.ggml.token_type")?;
        if token_types.len() != tokens.len() {
            bail!(
                "{}: tokenizer.ggml.token_type has {} entries for {} tokens",
                path.display(),
                token_types.len(),
                tokens.len()
            );
        }
        let merges = meta
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|merge| {
                merge
                    .split_once(' ')
                    .map(|(left, right)| (left.to_owned(), right.to_owned()))
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: tokenizer.ggml.merges has {merge:?}, not \"a b\"",
                            path.display()
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;

        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.to_string(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(family == PreTokenizerFamily::Llama3)
            .build()
            .map_err(|err| {
                anyhow!(
                    "{}: the GGUF vocabulary and merges do not form a BPE: {err}",
                    path.display()
                )
            })?;

        let mut tokenizer = tokenizers::Tokenizer::new(bpe);
        if family == PreTokenizerFamily::Qwen2 {
            tokenizer.with_normalizer(Some(NFC));
        }
        tokenizer.with_pre_tokenizer(Some(family.pre_tokenizer()?));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        tokenizer.add_special_tokens(&added_tokens(
            &tokens,
            &token_types,
            TOKEN_TYPE_CONTROL,
            true,
        ));
        tokenizer.add_tokens(&added_tokens(
            &tokens,
            &token_types,
            TOKEN_TYPE_USER_DEFINED,
            false,
        ));

        let token_of = |key: &str| -> Result<Option<String>> {
            let Some(id) = meta.optional_integer(key)? else {
                return Ok(None);
            };
            let token = usize::try_from(id).ok().and_then(|id| tokens.get(id));
            match token {
                Some(token) => Ok(Some(token.to_string())),
                None => bail!(
                    "{}: {key} is {id}, outside the {} tokens",
                    path.display(),
                    tokens.len()
                ),
            }
        };
        let bos_token = token_of("tokenizer.ggml.bos_token_id")?;
        let eos_token = token_of("tokenizer.ggml.eos_token_id")?;
        let add_bos = meta
            .optional_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(family.default_add_bos());
        if let Some(bos) = bos_token.as_deref().filter(|_| add_bos) {
            // So that `inner().encode(text, true)` agrees with `Tokenizer::encode`.
            let bos_id = tokenizer
                .token_to_id(bos)
                .expect("BOS is a vocabulary token");
            let template = TemplateProcessing::builder()
                .try_single(vec![bos, "$A"])
                .and_then(|builder| builder.try_pair(vec![bos, "$A", bos, "$B:1"]))
                .map_err(|err| anyhow!("cannot build the BOS template: {err}"))?
                .special_tokens(vec![(bos, bos_id)])
                .build()
                .map_err(|err| anyhow!("cannot build the BOS template: {err}"))?;
            tokenizer.with_post_processor(Some(template));
        }
        Ok(Self {
            tokenizer,
            bos_token,
            eos_token,
            add_bos,
        })
    }
}

/// The tokens of one GGUF token type as added tokens, matched whole in raw text as llama.cpp does.
fn added_tokens(
    tokens: &[&str],
    token_types: &[i64],
    wanted: i64,
    special: bool,
) -> Vec<AddedToken> {
    tokens
        .iter()
        .zip(token_types)
        .filter(|(_, token_type)| **token_type == wanted)
        .map(|(token, _)| AddedToken::from(token.to_string(), special).normalized(false))
        .collect()
}

/// Typed access to GGUF metadata with errors that name the file and the key.
struct Metadata<'a> {
    content: &'a Content,
    path: &'a Path,
}

impl<'a> Metadata<'a> {
    fn optional(&self, key: &str) -> Option<&'a Value> {
        self.content.metadata.get(key)
    }

    fn required(&self, key: &str) -> Result<&'a Value> {
        self.optional(key).ok_or_else(|| {
            anyhow!(
                "{}: GGUF metadata has no {key} (needed for the tokenizer)",
                self.path.display()
            )
        })
    }

    fn wrong_type(&self, key: &str, wanted: &str) -> anyhow::Error {
        anyhow!(
            "{}: GGUF metadata {key} is not {wanted}",
            self.path.display()
        )
    }

    fn string(&self, key: &str) -> Result<&'a str> {
        match self.required(key)? {
            Value::String(text) => Ok(text),
            _ => Err(self.wrong_type(key, "a string")),
        }
    }

    fn array(&self, key: &str) -> Result<&'a [Value]> {
        match self.required(key)? {
            Value::Array(values) => Ok(values),
            _ => Err(self.wrong_type(key, "an array")),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        self.array(key)?
            .iter()
            .map(|value| match value {
                Value::String(text) => Ok(text.as_str()),
                _ => Err(self.wrong_type(key, "an array of strings")),
            })
            .collect()
    }

    fn integers(&self, key: &str) -> Result<Vec<i64>> {
        self.array(key)?
            .iter()
            .map(|value| integer(value).ok_or_else(|| self.wrong_type(key, "an array of integers")))
            .collect()
    }

    fn optional_integer(&self, key: &str) -> Result<Option<i64>> {
        self.optional(key)
            .map(|value| integer(value).ok_or_else(|| self.wrong_type(key, "an integer")))
            .transpose()
    }

    fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.optional(key) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(_) => Err(self.wrong_type(key, "a boolean")),
        }
    }
}

/// Writers differ in the integer width they use for ids and token types.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::U8(v) => Some(i64::from(*v)),
        Value::I8(v) => Some(i64::from(*v)),
        Value::U16(v) => Some(i64::from(*v)),
        Value::I16(v) => Some(i64::from(*v)),
        Value::U32(v) => Some(i64::from(*v)),
        Value::I32(v) => Some(i64::from(*v)),
        Value::U64(v) => i64::try_from(*v).ok(),
        Value::I64(v) => Some(*v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;
    use std::collections::HashMap;

    /// A byte-level vocabulary: "a", "b", "ab", "Ġ", "1", "2", and two control tokens.
    fn content(entries: &[(&str, Value)]) -> Content {
        let strings = |items: &[&str]| {
            Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
        };
        let mut metadata = HashMap::from([
            (
                "tokenizer.ggml.model".to_owned(),
                Value::String("gpt2".into()),
            ),
            (
                "tokenizer.ggml.pre".to_owned(),
                Value::String("smollm".into()),
            ),
            (
                "tokenizer.ggml.tokens".to_owned(),
                strings(&["a", "b", "ab", "Ġ", "1", "2", "<s>", "</s>"]),
            ),
            (
                "tokenizer.ggml.token_type".to_owned(),
                Value::Array(
                    [1, 1, 1, 1, 1, 1, 3, 3]
                        .into_iter()
                        .map(Value::I32)
                        .collect(),
                ),
            ),
            ("tokenizer.ggml.merges".to_owned(), strings(&["a b"])),
            ("tokenizer.ggml.bos_token_id".to_owned(), Value::U32(6)),
            ("tokenizer.ggml.eos_token_id".to_owned(), Value::U32(7)),
        ]);
        for (key, value) in entries {
            metadata.insert(key.to_string(), value.clone());
        }
        Content {
            magic: VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn error(content: &Content) -> String {
        match TokenizerParts::read(content, Path::new("model.gguf")) {
            Ok(_) => panic!("expected an error"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn builds_a_working_tokenizer() {
        let parts = TokenizerParts::read(&content(&[]), Path::new("model.gguf")).unwrap();
        assert_eq!(parts.bos_token.as_deref(), Some("<s>"));
        assert_eq!(parts.eos_token.as_deref(), Some("</s>"));
        assert!(!parts.add_bos);
        let ids = parts
            .tokenizer
            .encode("ab 12<s>", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, vec![2, 3, 4, 5, 6]);
        let decoded = parts.tokenizer.decode(&ids, true).unwrap();
        assert_eq!(decoded, "ab 12");
    }

    #[test]
    fn llama3_adds_bos_by_default_and_through_the_post_processor() {
        let parts = TokenizerParts::read(
            &content(&[("tokenizer.ggml.pre", Value::String("llama-bpe".into()))]),
            Path::new("m.gguf"),
        )
        .unwrap();
        assert!(parts.add_bos);
        assert_eq!(
            parts.tokenizer.encode("ab", true).unwrap().get_ids(),
            &[6, 2]
        );
        let told = content(&[
            ("tokenizer.ggml.pre", Value::String("llama3".into())),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ]);
        let parts = TokenizerParts::read(&told, Path::new("m.gguf")).unwrap();
        assert!(!parts.add_bos);
        assert_eq!(parts.tokenizer.encode("ab", true).unwrap().get_ids(), &[2]);
    }

    #[test]
    fn unknown_pre_tokenizer_is_refused_by_name() {
        let err = error(&content(&[(
            "tokenizer.ggml.pre",
            Value::String("deepseek-llm".into()),
        )]));
        assert!(
            err.contains("model.gguf") && err.contains("\"deepseek-llm\"") && err.contains("qwen2"),
            "{err}"
        );
    }

    #[test]
    fn sentencepiece_model_is_refused() {
        let err = error(&content(&[(
            "tokenizer.ggml.model",
            Value::String("llama".into()),
        )]));
        assert!(
            err.contains("model.gguf") && err.contains("\"llama\""),
            "{err}"
        );
    }

    #[test]
    fn missing_or_mistyped_metadata_is_named() {
        let mut missing = content(&[]);
        missing.metadata.remove("tokenizer.ggml.merges");
        let err = error(&missing);
        assert!(
            err.contains("model.gguf") && err.contains("no tokenizer.ggml.merges"),
            "{err}"
        );

        let mut missing = content(&[]);
        missing.metadata.remove("tokenizer.ggml.pre");
        assert!(error(&missing).contains("no tokenizer.ggml.pre"));

        let err = error(&content(&[("tokenizer.ggml.tokens", Value::U32(3))]));
        assert!(
            err.contains("tokenizer.ggml.tokens is not an array"),
            "{err}"
        );

        let err = error(&content(&[(
            "tokenizer.ggml.token_type",
            Value::Array(vec![Value::I32(1)]),
        )]));
        assert!(err.contains("1 entries for 8 tokens"), "{err}");

        let err = error(&content(&[("tokenizer.ggml.eos_token_id", Value::U32(99))]));
        assert!(
            err.contains("tokenizer.ggml.eos_token_id is 99, outside the 8 tokens"),
            "{err}"
        );

        let err = error(&content(&[(
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("nospace".into())]),
        )]));
        assert!(err.contains("\"nospace\""), "{err}");
    }
}
