//! The tokenizer: a Hugging Face `tokenizer.json`, or the byte-level BPE a GGUF file describes in
//! its metadata, behind one type that also knows the BOS/EOS tokens and whether to add BOS.

mod gguf;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Whether `encode` puts BOS in front, as the model's tokenizer config asks.
    add_bos: bool,
    /// The longest vocabulary entry in UTF-8 bytes: no token stands for more input than
    /// this (byte-level BPE writes each input byte as a 1- or 2-byte character,
    /// SentencePiece a space as the 3-byte `▁`), which bounds a text's token count from
    /// below before it is tokenized.
    max_token_bytes: usize,
}

impl Tokenizer {
    /// From a Hugging Face folder's tokenizer.json (+ optional tokenizer_config.json for
    /// bos/eos tokens and add_bos_token; the chat template is read separately).
    ///
    /// Without an `add_bos_token` entry, BOS is added when the tokenizer.json's own
    /// post-processor adds it (Llama 3 does this), as transformers does.
    pub fn from_hf_files(tokenizer_json: &Path, tokenizer_config: Option<&Path>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|err| {
            anyhow!(
                "{}: not a valid tokenizer.json: {err}",
                tokenizer_json.display()
            )
        })?;
        let config = match tokenizer_config {
            Some(path) => read_json(path)?,
            None => Json::Null,
        };
        let bos_token = special_token_entry(&config, "bos_token", tokenizer_config)?;
        let eos_token = special_token_entry(&config, "eos_token", tokenizer_config)?;
        let add_bos = match config.get("add_bos_token") {
            Some(Json::Bool(add)) => *add,
            Some(Json::Null) | None => post_processor_adds_bos(&inner, bos_token.as_deref())?,
            Some(other) => bail!(
                "{}: add_bos_token must be true or false, not {other}",
                config_path_display(tokenizer_config)
            ),
        };
        let tokenizer = Self::new(inner, bos_token, eos_token, add_bos);
        tokenizer.check_special_tokens_exist(tokenizer_config.unwrap_or(tokenizer_json))?;
        Ok(tokenizer)
    }

    /// Rebuilt from GGUF metadata (tokenizer.ggml.*): GPT-2-style BPE (`tokenizer.ggml.model` =
    /// "gpt2") with the pre-tokenizer chosen by `tokenizer.ggml.pre` (`smollm`,
    /// `llama-bpe`/`llama3`/`llama-v3`, `qwen2`); anything else is refused with an error naming
    /// the file and the value. Control tokens become special added tokens, user-defined tokens
    /// plain added tokens.
    pub fn from_gguf(
        content: &candle_core::quantized::gguf_file::Content,
        path: &Path,
    ) -> Result<Self> {
        let parts = gguf::TokenizerParts::read(content, path)?;
        Ok(Self::new(
            parts.tokenizer,
            parts.bos_token,
            parts.eos_token,
            parts.add_bos,
        ))
    }

    fn new(
        inner: tokenizers::Tokenizer,
        bos_token: Option<String>,
        eos_token: Option<String>,
        add_bos: bool,
    ) -> Self {
        let max_token_bytes = inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1);
        Self {
            inner,
            bos_token,
            eos_token,
            add_bos,
            max_token_bytes,
        }
    }

    /// At least this many tokens encode a text of `bytes` bytes, known without
    /// tokenizing it: a prompt far beyond the context is refused at once, not after
    /// seconds of tokenizing megabytes. Halved as a margin for normalizers that shorten
    /// the text (NFC composing accents).
    pub fn min_tokens(&self, bytes: usize) -> usize {
        bytes / (2 * self.max_token_bytes.max(1))
    }

    fn check_special_tokens_exist(&self, source: &Path) -> Result<()> {
        for token in [&self.bos_token, &self.eos_token].into_iter().flatten() {
            if self.inner.token_to_id(token).is_none() {
                bail!(
                    "{}: special token {token:?} is not in the vocabulary",
                    source.display()
                );
            }
        }
        Ok(())
    }

    /// Token ids of `text`, with BOS in front when the tokenizer config says add_bos.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_raw(text)?;
        if let Some(bos) = self.bos_token_id().filter(|_| self.add_bos) {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Token ids of `text` and nothing else (special tokens written in the text still match).
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|err| anyhow!("cannot tokenize text: {err}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|err| anyhow!("cannot decode token ids: {err}"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token
            .as_deref()
            .and_then(|token| self.token_to_id(token))
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token
            .as_deref()
            .and_then(|token| self.token_to_id(token))
    }

    /// Whether `encode` adds BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).map_err(|err| anyhow!("{}: invalid JSON: {err}", path.display()))
}

fn config_path_display(path: Option<&Path>) -> String {
    path.map_or_else(
        || "tokenizer config".to_owned(),
        |p| p.display().to_string(),
    )
}

/// `bos_token`/`eos_token` of a tokenizer_config.json: a string, an AddedToken object with a
/// `content`, or null.
fn special_token_entry(config: &Json, key: &str, path: Option<&Path>) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(token)) => Ok(Some(token.clone())),
        Some(Json::Object(object)) => match object.get("content") {
            Some(Json::String(token)) => Ok(Some(token.clone())),
            _ => bail!(
                "{}: {key} has no string \"content\"",
                config_path_display(path)
            ),
        },
        Some(other) => bail!(
            "{}: {key} must be a string, not {other}",
            config_path_display(path)
        ),
    }
}

/// Whether the tokenizer.json's post-processor puts BOS first when special tokens are added.
fn post_processor_adds_bos(inner: &tokenizers::Tokenizer, bos_token: Option<&str>) -> Result<bool> {
    let Some(bos_id) = bos_token.and_then(|token| inner.token_to_id(token)) else {
        return Ok(false);
    };
    let encoding = inner
        .encode("", true)
        .map_err(|err| anyhow!("cannot run the tokenizer's post-processor: {err}"))?;
    Ok(encoding.get_ids().first() == Some(&bos_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    /// A three-letter byte-level BPE with one special token and a post-processor adding it.
    const TOKENIZER_JSON: &str = r#"{
      "version": "1.0", "truncation": null, "padding": null,
      "added_tokens": [{"id": 4, "content": "<s>", "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": true}],
      "normalizer": null,
      "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
      "post_processor": {"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [4], "tokens": ["<s>"]}}},
      "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
      "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "<s>": 4}, "merges": ["a b"]}
    }"#;

    #[test]
    fn hf_files_take_bos_from_config_or_post_processor() {
        let dir = tempfile::tempdir().unwrap();
        let json = write(dir.path(), "tokenizer.json", TOKENIZER_JSON);

        let plain = Tokenizer::from_hf_files(&json, None).unwrap();
        assert_eq!(plain.encode("ab a").unwrap(), vec![2, 3, 0]);
        assert_eq!(plain.bos_token(), None);

        let config = write(
            dir.path(),
            "a.json",
            r#"{"bos_token": {"content": "<s>"}, "eos_token": "<s>"}"#,
        );
        let from_post_processor = Tokenizer::from_hf_files(&json, Some(&config)).unwrap();
        assert!(from_post_processor.add_bos());
        assert_eq!(from_post_processor.encode("ab").unwrap(), vec![4, 2]);
        assert_eq!(from_post_processor.encode_raw("ab").unwrap(), vec![2]);
        assert_eq!(from_post_processor.decode(&[4, 2], true).unwrap(), "ab");
        assert_eq!(from_post_processor.decode(&[4, 2], false).unwrap(), "<s>ab");

        let config = write(
            dir.path(),
            "b.json",
            r#"{"bos_token": "<s>", "add_bos_token": false}"#,
        );
        let told_not_to = Tokenizer::from_hf_files(&json, Some(&config)).unwrap();
        assert_eq!(told_not_to.encode("ab").unwrap(), vec![2]);
    }

    #[test]
    fn hf_files_bad_input_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let json = write(dir.path(), "tokenizer.json", TOKENIZER_JSON);
        let broken = write(dir.path(), "broken.json", "{\"model\": ");
        let err = Tokenizer::from_hf_files(&broken, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("broken.json") && err.contains("not a valid tokenizer.json"),
            "{err}"
        );

        let config = write(dir.path(), "config.json", r#"{"eos_token": "</s>"}"#);
        let err = Tokenizer::from_hf_files(&json, Some(&config))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("\"</s>\" is not in the vocabulary"),
            "{err}"
        );

        let config = write(dir.path(), "flag.json", r#"{"add_bos_token": "yes"}"#);
        let err = Tokenizer::from_hf_files(&json, Some(&config))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("flag.json") && err.contains("add_bos_token"),
            "{err}"
        );

        let missing = dir.path().join("missing.json");
        let err = format!(
            "{:#}",
            Tokenizer::from_hf_files(&json, Some(&missing))
                .err()
                .unwrap()
        );
        assert!(err.contains("missing.json: cannot read"), "{err}");
    }
}
