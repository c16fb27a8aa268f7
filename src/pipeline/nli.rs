//! Natural-language-inference classifier for the back-translation check: the paper
//! drops an instruction when an NLI model labels (premise = original instruction,
//! hypothesis = back-translation) as *contradiction*. Loads a Hugging Face
//! sequence-classification folder (`config.json`, `model.safetensors`,
//! `tokenizer.json`) for BERT-style and DeBERTa-v2/v3 models and matches
//! transformers' logits.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use candle_transformers::models::{bert, debertav2};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::{EncodeInput, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The label an NLI model gives a pair, with the softmax over all labels in class order.
#[derive(Debug, Clone, PartialEq)]
pub struct NliPrediction {
    pub label: String,
    pub probabilities: Vec<(String, f32)>,
}

/// The fields every supported classification config has, read before the
/// architecture-specific config.
#[derive(Deserialize)]
struct ClassificationConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    id2label: Option<BTreeMap<String, String>>,
    max_position_embeddings: usize,
    pad_token_id: Option<u32>,
}

enum Architecture {
    Bert,
    DebertaV2,
}

/// Pairs per forward pass: enough to keep a CPU busy, small enough that a batch padded
/// to 512 tokens fits a large model's activations in memory.
const BATCH_PAIRS: usize = 16;

const BERT_CLASSIFIER: &str = "BertForSequenceClassification";
const DEBERTA_V2_CLASSIFIER: &str = "DebertaV2ForSequenceClassification";

impl Architecture {
    /// From `architectures` when the config names one, else from `model_type`.
    fn of(config: &ClassificationConfig, path: &Path) -> Result<Self> {
        if let Some(name) = config.architectures.first() {
            return match name.as_str() {
                BERT_CLASSIFIER => Ok(Self::Bert),
                DEBERTA_V2_CLASSIFIER => Ok(Self::DebertaV2),
                other => bail!(
                    "{}: unsupported architecture `{other}` (supported: {BERT_CLASSIFIER}, \
                     {DEBERTA_V2_CLASSIFIER})",
                    path.display()
                ),
            };
        }
        match config.model_type.as_deref() {
            Some("bert") => Ok(Self::Bert),
            Some("deberta-v2") => Ok(Self::DebertaV2),
            Some(other) => bail!(
                "{}: unsupported model_type `{other}` (supported: bert, deberta-v2)",
                path.display()
            ),
            None => bail!(
                "{}: names neither `architectures` nor `model_type`",
                path.display()
            ),
        }
    }
}

/// BERT encoder, then transformers' pooler (dense + tanh on the first token) and a
/// linear classifier over the pooled vector.
struct BertClassifier {
    encoder: bert::BertModel,
    pooler: Linear,
    classifier: Linear,
}

impl BertClassifier {
    fn load(vb: VarBuilder, config: &bert::Config, labels: usize) -> candle_core::Result<Self> {
        Ok(Self {
            encoder: bert::BertModel::load(vb.pp("bert"), config)?,
            pooler: linear(
                config.hidden_size,
                config.hidden_size,
                vb.pp("bert.pooler.dense"),
            )?,
            classifier: linear(config.hidden_size, labels, vb.pp("classifier"))?,
        })
    }
}

/// Class logits for a padded batch of token ids, token types and attention mask.
trait SequenceClassifier: Send + Sync {
    fn logits(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor>;
}

impl SequenceClassifier for BertClassifier {
    fn logits(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = self.encoder.forward(ids, types, Some(mask))?;
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&first)?.tanh()?;
        self.classifier.forward(&pooled)
    }
}

impl SequenceClassifier for debertav2::DebertaV2SeqClassificationModel {
    fn logits(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(ids, Some(types.clone()), Some(mask.clone()))
    }
}

pub struct NliClassifier {
    model: Box<dyn SequenceClassifier>,
    tokenizer: Tokenizer,
    /// Label names by class index.
    labels: Vec<String>,
    contradiction: usize,
    device: Device,
}

impl NliClassifier {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("{}: cannot read", config_path.display()))?;
        let config: ClassificationConfig = serde_json::from_str(&config_text)
            .with_context(|| format!("{}: not a classification config", config_path.display()))?;
        let architecture = Architecture::of(&config, &config_path)?;
        let labels = label_names(config.id2label.as_ref(), &config_path)?;
        let contradiction = labels
            .iter()
            .position(|l| l.eq_ignore_ascii_case("contradiction"))
            .with_context(|| {
                format!(
                    "{}: id2label has no `contradiction` label (labels: {})",
                    config_path.display(),
                    labels.join(", ")
                )
            })?;

        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            bail!("{}: missing", weights.display());
        }
        // SAFETY: the file is memory-mapped read-only and not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .with_context(|| format!("{}: cannot load", weights.display()))?;
        let model: Box<dyn SequenceClassifier> = match architecture {
            Architecture::Bert => {
                let bert_config: bert::Config = serde_json::from_str(&config_text)
                    .with_context(|| format!("{}: not a BERT config", config_path.display()))?;
                let classifier = BertClassifier::load(vb, &bert_config, labels.len())
                    .with_context(|| format!("{}: not a {BERT_CLASSIFIER}", weights.display()))?;
                Box::new(classifier)
            }
            Architecture::DebertaV2 => {
                let deberta_config: debertav2::Config = serde_json::from_str(&config_text)
                    .with_context(|| {
                        format!("{}: not a DeBERTa-v2 config", config_path.display())
                    })?;
                let classifier = debertav2::DebertaV2SeqClassificationModel::load(
                    vb.pp("deberta"),
                    &deberta_config,
                    None,
                )
                .with_context(|| format!("{}: not a {DEBERTA_V2_CLASSIFIER}", weights.display()))?;
                Box::new(classifier)
            }
        };

        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = pair_tokenizer(&tokenizer_path, &config)?;
        Ok(Self {
            model,
            tokenizer,
            labels,
            contradiction,
            device: device.clone(),
        })
    }

    /// Label names by class index, as in `config.json`'s `id2label`.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Classifies (premise, hypothesis) pairs.
    pub fn predict(&self, pairs: &[(&str, &str)]) -> Result<Vec<NliPrediction>> {
        Ok(self
            .logits(pairs)?
            .iter()
            .map(|logits| self.prediction(logits))
            .collect())
    }

    /// Raw classifier logits, one row of class scores per pair. Pairs run in padded
    /// batches of `BATCH_PAIRS`, so memory stays bounded however many come in.
    pub fn logits(&self, pairs: &[(&str, &str)]) -> Result<Vec<Vec<f32>>> {
        let mut rows = Vec::with_capacity(pairs.len());
        for batch in pairs.chunks(BATCH_PAIRS) {
            rows.extend(self.logits_tensor(batch)?.to_vec2::<f32>()?);
        }
        Ok(rows)
    }

    pub fn contradicts(&self, prediction: &NliPrediction) -> bool {
        prediction.label == self.labels[self.contradiction]
    }

    fn logits_tensor(&self, pairs: &[(&str, &str)]) -> Result<Tensor> {
        let inputs: Vec<EncodeInput> = pairs
            .iter()
            .map(|&(premise, hypothesis)| (premise, hypothesis).into())
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| anyhow!("tokenizing NLI pairs: {e}"))?;
        let rows = |field: fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor> {
            let rows: Vec<Tensor> = encodings
                .iter()
                .map(|e| Tensor::new(field(e), &self.device))
                .collect::<candle_core::Result<_>>()?;
            Ok(Tensor::stack(&rows, 0)?)
        };
        let ids = rows(tokenizers::Encoding::get_ids)?;
        let types = rows(tokenizers::Encoding::get_type_ids)?;
        let mask = rows(tokenizers::Encoding::get_attention_mask)?;
        Ok(self
            .model
            .logits(&ids, &types, &mask)?
            .to_dtype(DType::F32)?)
    }

    fn prediction(&self, logits: &[f32]) -> NliPrediction {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f32 = exp.iter().sum();
        let best = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        NliPrediction {
            label: self.labels[best].clone(),
            probabilities: self
                .labels
                .iter()
                .cloned()
                .zip(exp.iter().map(|e| e / total))
                .collect(),
        }
    }
}

/// `id2label` as a list by class index; the keys must be exactly 0..n.
fn label_names(id2label: Option<&BTreeMap<String, String>>, path: &Path) -> Result<Vec<String>> {
    let id2label = id2label.with_context(|| format!("{}: no id2label", path.display()))?;
    let mut labels = vec![None; id2label.len()];
    for (key, label) in id2label {
        let slot = key
            .parse::<usize>()
            .ok()
            .and_then(|i| labels.get_mut(i))
            .with_context(|| {
                format!(
                    "{}: id2label key `{key}` is not a class index below {}",
                    path.display(),
                    id2label.len()
                )
            })?;
        *slot = Some(label.clone());
    }
    // Keys are distinct strings that each parsed to a slot below the count, but "1" and
    // "01" land on the same one.
    labels
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .with_context(|| format!("{}: id2label repeats a class index", path.display()))
}

/// The model's tokenizer, set to pad a batch to its longest pair with the model's pad
/// token and to truncate pairs longest-first to the model's position count, as
/// transformers does with `padding=True, truncation=True`.
fn pair_tokenizer(path: &Path, config: &ClassificationConfig) -> Result<Tokenizer> {
    let mut tokenizer =
        Tokenizer::from_file(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let pad_id = config.pad_token_id.unwrap_or(0);
    let pad_token = tokenizer.id_to_token(pad_id).with_context(|| {
        format!(
            "{}: no token for the model's pad_token_id {pad_id}",
            path.display()
        )
    })?;
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token,
        ..PaddingParams::default()
    }));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: config.max_position_embeddings,
            ..TruncationParams::default()
        }))
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(tokenizer)
}
