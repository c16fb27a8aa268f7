//! GPU memory budget of a training or generation configuration, from the model's
//! hyper-parameters alone (nothing is loaded), and the refusal of one that will not fit.
//!
//! The estimate follows the code as it is, not an ideal implementation. candle's autograd
//! keeps every intermediate tensor of the tracked forward pass alive until `backward`
//! (each graph node holds its inputs), so "activations" below are the outputs of every op
//! of `Decoder::forward_segments`, counted op by op in `layer_activations`. Attention is
//! either the candle composition (rope, scores, softmax, …) or the fused `CausalAttention`
//! op, which keeps only its output and works in per-layer transient buffers
//! (`Attention`). Sizes are upper bounds in one respect: every position of every sequence
//! is counted as a scored target token.
//!
//! Peak = weights + LoRA state + max(training step, generation) + overhead, where
//! * training step = activations of the tracked pass (all layers, kept) + the log-prob
//!   head's kept tensors + the backward working set (one layer's activations again, as
//!   gradients, plus the head's transient gradient buffers and, fused, the attention op's
//!   backward buffers). DPO's reference pass runs untracked before the policy pass and
//!   frees as it goes, so it never sets the peak;
//! * generation = the KV cache of `gen_batch` sequences of `seq_len` tokens;
//! * overhead = 1 GiB (CUDA context, cuBLAS workspace) + 10% of the rest for allocator
//!   slack.

use crate::model::config::ModelConfig;
use crate::model::config_resolution::resolve_config_or_download;
use crate::model::lora::PROJECTIONS;
use crate::model::ops::causal_attention::KERNEL_HEAD_DIMS;
use crate::model::ops::chunked_logprob::logits_chunk_rows;
use crate::train::TrainingArgs;
use anyhow::{bail, Context, Result};
use candle_core::DType;

const GIB: f64 = (1u64 << 30) as f64;
const FIXED_OVERHEAD: u64 = 1 << 30;
const SLACK_PERCENT: u64 = 10;
/// Bytes per trainable f32 parameter under AdamW: value, gradient, first and second moment.
const ADAMW_BYTES_PER_PARAM: u64 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sft,
    /// Each batch element is a pair: chosen and rejected sequences share the pass.
    Dpo,
}

/// How the per-token log-probabilities are computed from the final hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogprobHead {
    /// `Decoder::logits` then log-softmax and gather: `[tokens, vocab]` logits kept.
    Unfused,
    /// `chunked_logprob`: one vocabulary chunk at a time.
    Chunked,
}

/// How the tracked forward pass computes causal self-attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// The candle composition (rope, q·kᵀ, mask, softmax, ·v): keeps the
    /// `[batch, heads, seq, seq]` scores six times per layer for backward.
    Composed,
    /// The `CausalAttention` op (CPU, and CUDA in every float dtype): keeps only its output
    /// and recomputes the probabilities in backward.
    Fused,
}

/// The shape of a training job, as far as memory goes.
#[derive(Debug, Clone)]
pub struct TrainShape {
    pub dtype: DType,
    pub lora_rank: usize,
    /// Hugging Face module names (`q_proj`, …, `down_proj`).
    pub lora_targets: Vec<String>,
    /// Sequences per micro-batch (SFT) or pairs (DPO).
    pub batch: usize,
    pub seq_len: usize,
    pub algorithm: Algorithm,
    pub logprob_head: LogprobHead,
    pub attention: Attention,
    /// Sequences decoded at once when generating (online DPO, IFEval, responses).
    pub gen_batch: usize,
}

impl TrainShape {
    /// The largest piece the trainer runs through one forward pass for `args`: pieces hold
    /// at most `max_batch_tokens` tokens but at least one item (a sequence cut at
    /// `max_len`, or a pair of them), and at most a micro-batch of `batch_size` items (or
    /// packed rows of `max_len`); see `data::split_by_tokens`. It is planned as whole
    /// `max_len` sequences where it holds several, so the composed attention's per-sequence
    /// scores are not undercounted. Generation (online DPO) is planned as `gen_batch`
    /// sequences of the same length.
    pub fn largest_piece(
        args: &TrainingArgs,
        algorithm: Algorithm,
        dtype: DType,
        gen_batch: usize,
    ) -> TrainShape {
        let per_item = match algorithm {
            Algorithm::Sft => 1,
            Algorithm::Dpo => 2,
        };
        let item = per_item * args.max_len;
        let micro_batch = args.batch_size * item;
        let piece = match args.max_batch_tokens {
            0 => micro_batch,
            budget => micro_batch.min(budget.max(item)),
        };
        let batch = piece.div_ceil(item).max(1);
        TrainShape {
            dtype,
            lora_rank: args.lora.r,
            lora_targets: args.lora.target_modules.clone(),
            batch,
            seq_len: piece.div_ceil(per_item * batch),
            algorithm,
            logprob_head: LogprobHead::Chunked,
            attention: Attention::Fused,
            gen_batch,
        }
    }
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub name: &'static str,
    pub bytes: u64,
    pub how: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    pub items: Vec<Item>,
    pub total: u64,
}

impl MemoryPlan {
    pub fn item(&self, name: &str) -> u64 {
        self.items
            .iter()
            .find(|i| i.name == name)
            .map_or(0, |i| i.bytes)
    }

    /// The plan as an aligned text table, GiB with two decimals.
    pub fn table(&self) -> String {
        let mut out = format!("{:<28} {:>10}  {}\n", "item", "GiB", "how");
        for item in &self.items {
            out += &format!(
                "{:<28} {:>10.2}  {}\n",
                item.name,
                item.bytes as f64 / GIB,
                item.how
            );
        }
        out += &format!("{:<28} {:>10.2}\n", "total (peak)", self.total as f64 / GIB);
        out
    }

    /// One-line refusal when the peak exceeds `gpu_bytes`, advising to lower `knobs`.
    pub fn check_fits(&self, gpu_bytes: u64, knobs: &str) -> Result<()> {
        if self.total > gpu_bytes {
            let largest = self
                .items
                .iter()
                .max_by_key(|i| i.bytes)
                .expect("a plan has items");
            bail!(
                "this configuration needs about {:.2} GiB of GPU memory but {:.2} GiB is available (largest item: {}, {:.2} GiB); lower {knobs}",
                self.total as f64 / GIB,
                gpu_bytes as f64 / GIB,
                largest.name,
                largest.bytes as f64 / GIB
            );
        }
        Ok(())
    }
}

/// (input, output) features of a projection, by its Hugging Face name.
fn projection_dims(c: &ModelConfig, module: &str) -> (usize, usize) {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    match module {
        "q_proj" => (h, q),
        "k_proj" | "v_proj" => (h, kv),
        "o_proj" => (q, h),
        "gate_proj" | "up_proj" => (h, i),
        "down_proj" => (i, h),
        other => unreachable!("projection {other}"),
    }
}

fn has_bias(c: &ModelConfig, module: &str) -> bool {
    c.attention_bias && matches!(module, "q_proj" | "k_proj" | "v_proj")
}

/// Parameters of the model: embeddings, every layer's projections (and q/k/v biases),
/// norms, and an untied LM head.
pub fn parameter_count(c: &ModelConfig) -> u64 {
    let per_layer: usize = PROJECTIONS
        .iter()
        .map(|m| {
            let (i, o) = projection_dims(c, m);
            i * o + if has_bias(c, m) { o } else { 0 }
        })
        .sum::<usize>()
        + 2 * c.hidden_size;
    let embed = c.vocab_size * c.hidden_size;
    let head = if c.tie_word_embeddings { 0 } else { embed };
    (c.num_hidden_layers * per_layer + embed + head + c.hidden_size) as u64
}

/// Trainable LoRA parameters: `r · (in + out)` per targeted projection per layer.
pub fn lora_parameter_count(c: &ModelConfig, rank: usize, targets: &[String]) -> Result<u64> {
    let mut per_layer = 0;
    for t in targets {
        if !PROJECTIONS.contains(&t.as_str()) {
            bail!(
                "unknown LoRA target `{t}` (expected one of {})",
                PROJECTIONS.join(", ")
            );
        }
        let (i, o) = projection_dims(c, t);
        per_layer += rank * (i + o);
    }
    Ok((c.num_hidden_layers * per_layer) as u64)
}

/// Bytes one layer of the tracked GPU forward keeps for backward, for `batch` sequences
/// of `seq` tokens, op by op as `Decoder::forward_segments` runs them off the CPU (s =
/// dtype bytes; a cast to the dtype a tensor already has costs nothing in candle):
/// * each RMS norm: cast to f32, x², x/rms (f32), cast back, × weight;
/// * each projection: x·Wᵀ (+ bias); with LoRA also x in f32, x·Aᵀ and its scaling
///   (rank wide, f32), ·Bᵀ (f32), cast, sum;
/// * attention, composed: rope on q and k: −x₂, cat, x·cos, rot·sin, sum (4.5 copies);
///   v made contiguous; scores `[batch, heads, seq, seq]`: q·kᵀ, ×scale, +mask (s each),
///   cast to f32, −max, exp, ÷sum (f32), cast back; then probs·v and its transposed copy;
/// * attention, fused: its output `[tokens, heads·d]` (q, k, v are the projections');
/// * MLP: SiLU(gate), × up; two residual sums.
fn layer_activations(c: &ModelConfig, shape: &TrainShape, sequences: usize) -> u64 {
    let s = shape.dtype.size_in_bytes() as u64;
    let cast_to_f32 = if s == 4 { 0 } else { 4 };
    let cast_back = if s == 4 { 0 } else { s };
    let t = (sequences * shape.seq_len) as u64;
    let h = c.hidden_size as u64;
    let norm = t * h * (cast_to_f32 + 4 + 4 + cast_back + s);
    let r = shape.lora_rank as u64;
    let projection = |m: &str| {
        let (i, o) = projection_dims(c, m);
        let (i, o) = (i as u64, o as u64);
        let mut bytes = t * o * s;
        if has_bias(c, m) {
            bytes += t * o * s;
        }
        if shape.lora_targets.iter().any(|x| x == m) {
            bytes += t * (i * cast_to_f32 + 2 * r * 4 + o * 4 + o * cast_back + o * s);
        }
        bytes
    };
    let projections: u64 = PROJECTIONS.iter().map(|m| projection(m)).sum();
    let (nh, kvh, d) = (
        c.num_attention_heads as u64,
        c.num_key_value_heads as u64,
        c.head_dim as u64,
    );
    let attention = match shape.attention {
        Attention::Composed => {
            // 4.5 copies, counted in halves to stay in integers.
            let rope = t * (nh + kvh) * d * s * 9 / 2;
            let v_copy = t * kvh * d * s;
            let scores = sequences as u64
                * nh
                * (shape.seq_len as u64).pow(2)
                * (3 * s + cast_to_f32 + 3 * 4 + cast_back);
            let out = 2 * t * nh * d * s;
            rope + v_copy + scores + out
        }
        Attention::Fused => t * nh * d * s,
    };
    let mlp = 2 * t * c.intermediate_size as u64 * s;
    let residuals = 2 * t * h * s;
    2 * norm + projections + attention + mlp + residuals
}

/// Transient bytes of the fused attention op's backward pass over `tokens` rows, one
/// layer at a time: f32 rotated copies of q, k and v, two f32 softmax statistics per
/// (row, head), f32 gradients of q, k and v (dk and dv one part per query head, summed
/// when stored), and those gradients in the model dtype. Its
/// forward pass needs only the rotated copies, so the backward sets its peak. Zero for the
/// composed attention, whose backward buffers are the layer's gradients.
fn attention_backward_bytes(c: &ModelConfig, shape: &TrainShape, tokens: usize) -> u64 {
    if shape.attention == Attention::Composed {
        return 0;
    }
    let s = shape.dtype.size_in_bytes() as u64;
    let t = tokens as u64;
    let nh = c.num_attention_heads as u64;
    let d = c.head_dim as u64;
    let qkv = t * (nh + 2 * c.num_key_value_heads as u64) * d;
    let grad_parts = t * 3 * nh * d;
    qkv * 4 + t * nh * 8 + grad_parts * 4 + qkv * s
}

/// (kept for backward, transient in backward) bytes of the log-prob head over `tokens`
/// scored positions.
fn logprob_head_bytes(c: &ModelConfig, shape: &TrainShape, tokens: usize) -> (u64, u64, String) {
    let s = shape.dtype.size_in_bytes() as u64;
    let n = tokens as u64;
    let v = c.vocab_size as u64;
    let hidden = n * c.hidden_size as u64 * s;
    match shape.logprob_head {
        LogprobHead::Unfused => {
            let cast = if s == 4 { 0 } else { 4 };
            // logits (s), f32 copy, shifted, exp, log-probs (f32); backward: two f32
            // [tokens, vocab] gradient buffers alive at once.
            let kept = hidden + n * v * (s + cast + 12);
            let transient = n * v * 8;
            (
                kept,
                transient,
                format!(
                    "[{n} × {v}] logits: {}+{} B/elem kept, 8 in backward",
                    s,
                    cast + 12
                ),
            )
        }
        LogprobHead::Chunked => {
            let chunk = logits_chunk_rows(tokens, c.vocab_size) as u64;
            // Kept: the selected hidden states and [n, 2] f32 results. Backward: one
            // chunk of f32 logits, its gradient in 4 bytes (f32, or two 16-bit halves),
            // and the f32 gradient of the hidden states.
            let kept = hidden + n * 2 * 4;
            let transient = n * chunk * 8 + n * c.hidden_size as u64 * 4;
            (
                kept,
                transient,
                format!("chunks of {chunk} vocab rows: [{n} × {chunk}] × 8 B"),
            )
        }
    }
}

/// The plan for `shape` on model `c`.
pub fn plan(c: &ModelConfig, shape: &TrainShape) -> Result<MemoryPlan> {
    let s = shape.dtype.size_in_bytes() as u64;
    let sequences = match shape.algorithm {
        Algorithm::Sft => shape.batch,
        Algorithm::Dpo => 2 * shape.batch,
    };
    let params = parameter_count(c);
    let lora = lora_parameter_count(c, shape.lora_rank, &shape.lora_targets)?;
    let layer = layer_activations(c, shape, sequences);
    let tokens = sequences * shape.seq_len;
    let (head_kept, head_transient, head_how) = logprob_head_bytes(c, shape, tokens);
    let kv = (shape.gen_batch * shape.seq_len * c.num_hidden_layers) as u64
        * 2
        * (c.num_key_value_heads * c.head_dim) as u64
        * s;
    let activations = layer * c.num_hidden_layers as u64;
    let attention_transient = attention_backward_bytes(c, shape, tokens);
    let backward = layer + head_transient + attention_transient;
    let training = activations + head_kept + backward;
    let mut items = vec![
        Item {
            name: "weights",
            bytes: params * s,
            how: format!("{params} parameters × {s} B"),
        },
        Item {
            name: "LoRA + AdamW state",
            bytes: lora * ADAMW_BYTES_PER_PARAM,
            how: format!("{lora} f32 parameters × (value, grad, m, v)"),
        },
        Item {
            name: "activations (kept)",
            bytes: activations,
            how: format!(
                "{} layers × {:.2} GiB ({sequences} sequences × {} tokens, {} attention)",
                c.num_hidden_layers,
                layer as f64 / GIB,
                shape.seq_len,
                match shape.attention {
                    Attention::Composed => "composed",
                    Attention::Fused => "fused",
                }
            ),
        },
        Item {
            name: "log-prob head (kept)",
            bytes: head_kept,
            how: head_how,
        },
        Item {
            name: "backward working set",
            bytes: backward,
            how: match shape.attention {
                Attention::Composed => "one layer's gradients + the head's transient buffers",
                Attention::Fused => {
                    "one layer's gradients + the head's and fused attention's transient buffers"
                }
            }
            .into(),
        },
        Item {
            name: "KV cache (generation)",
            bytes: kv,
            how: format!(
                "{} seqs × {} tokens × {} layers × 2 × {} kv heads × {} dims × {s} B",
                shape.gen_batch,
                shape.seq_len,
                c.num_hidden_layers,
                c.num_key_value_heads,
                c.head_dim
            ),
        },
    ];
    let resident = params * s + lora * ADAMW_BYTES_PER_PARAM;
    let phases = training.max(kv);
    let slack = (resident + phases) * SLACK_PERCENT / 100;
    items.push(Item {
        name: "overhead",
        bytes: FIXED_OVERHEAD + slack,
        how: format!("1 GiB context + {SLACK_PERCENT}% allocator slack"),
    });
    Ok(MemoryPlan {
        total: resident + phases + FIXED_OVERHEAD + slack,
        items,
    })
}

/// For `autoif train` / `autoif run` before anything is loaded: reads `model`'s config
/// (downloading a hub id's config.json alone when it is not cached: the weights follow
/// anyway), plans each of `shapes`, and fails with one line naming the model when the
/// largest peak exceeds `gpu_bytes`.
pub fn ensure_fits(model: &str, shapes: &[TrainShape], gpu_bytes: u64, knobs: &str) -> Result<()> {
    if shapes.is_empty() {
        return Ok(());
    }
    let config = resolve_config_or_download(model)?;
    let mut plans = shapes
        .iter()
        .map(|shape| plan(&config, &on_gpu(&config, shape)))
        .collect::<Result<Vec<_>>>()?;
    plans.sort_by_key(|p| p.total);
    let largest = plans.last().expect("at least one shape");
    largest
        .check_fits(gpu_bytes, knobs)
        .with_context(|| model.to_string())
}

/// `shape` as the GPU runs it for `config`: the fused attention kernels exist for some
/// head sizes only, others take the candle composition.
pub fn on_gpu(config: &ModelConfig, shape: &TrainShape) -> TrainShape {
    let mut shape = shape.clone();
    if !KERNEL_HEAD_DIMS.contains(&config.head_dim) {
        shape.attention = Attention::Composed;
    }
    shape
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2-7B's config.json.
    const QWEN2_7B: &str = include_str!("../../tests/fixtures/qwen2-7b-config/config.json");

    fn qwen2_7b() -> ModelConfig {
        ModelConfig::from_hf_json(QWEN2_7B).unwrap()
    }

    fn all_targets() -> Vec<String> {
        PROJECTIONS.map(String::from).to_vec()
    }

    fn shape(batch: usize, seq_len: usize, head: LogprobHead) -> TrainShape {
        TrainShape {
            dtype: DType::BF16,
            lora_rank: 16,
            lora_targets: all_targets(),
            batch,
            seq_len,
            algorithm: Algorithm::Sft,
            logprob_head: head,
            attention: Attention::Composed,
            gen_batch: batch,
        }
    }

    fn fused(shape: TrainShape) -> TrainShape {
        TrainShape {
            attention: Attention::Fused,
            ..shape
        }
    }

    #[test]
    fn qwen2_7b_parameter_counts() {
        let c = qwen2_7b();
        assert!(c.attention_bias, "Qwen2 has q/k/v biases");
        // Per layer: q 3584² = 12,845,056 (+3584 bias), k and v 3584·512 = 1,835,008
        // (+512 each), o 12,845,056, gate/up/down 3584·18944 = 67,895,296 each, two norms
        // 7168: 233,057,792. × 28 = 6,525,618,176; embeddings and the untied head
        // 2 × 152064·3584 = 1,089,994,752; final norm 3584 → 7,615,616,512 (Qwen2-7B's
        // published 7.62B).
        assert_eq!(parameter_count(&c), 7_615_616_512);
        // LoRA r=16 on all seven: 16·(3584+3584)·2 + 16·(3584+512)·2 + 16·(3584+18944)·3
        // = 229,376 + 131,072 + 1,081,344 = 1,441,792 per layer; × 28 = 40,370,176 (what
        // PEFT prints for this model and adapter).
        assert_eq!(
            lora_parameter_count(&c, 16, &all_targets()).unwrap(),
            40_370_176
        );
        let p = plan(&c, &shape(1, 512, LogprobHead::Chunked)).unwrap();
        assert_eq!(p.item("weights"), 7_615_616_512 * 2);
        assert_eq!(p.item("LoRA + AdamW state"), 40_370_176 * 16);
    }

    #[test]
    fn qwen2_7b_kv_cache() {
        // 8 sequences × 4096 tokens × 28 layers × 2 (k, v) × 4 kv heads × 128 dims × 2 B
        // = 1,879,048,192 B = 1.75 GiB.
        let p = plan(&qwen2_7b(), &shape(8, 4096, LogprobHead::Chunked)).unwrap();
        assert_eq!(p.item("KV cache (generation)"), 1_879_048_192);
    }

    #[test]
    fn qwen2_7b_layer_activations_by_hand() {
        // One sequence of 1024 tokens in bf16 (s = 2), r = 16 on all seven projections:
        // t = 1024, h = 3584.
        // norms: 2 × t·h·(4+4+4+2+2) = 2 × 1024·3584·16 = 117,440,512
        // q: t·3584·2 (out) + t·3584·2 (bias) + t·(3584·4 + 128 + 3584·4 + 3584·2 + 3584·2)
        //    = 7,340,032 + 7,340,032 + 1024·43,136 = 58,851,328
        // k, v: t·512·2 + t·512·2 + t·(3584·4 + 128 + 512·8) = 1024·(2048 + 18,560)
        //    = 21,102,592 each
        // o: t·3584·2 + t·(3584·4 + 128 + 3584·8) = 1024·50,304 = 51,511,296
        // gate, up: t·18944·2 + t·(3584·4 + 128 + 18944·8) = 1024·203,904 = 208,797,696 each
        // down: t·3584·2 + t·(18944·4 + 128 + 3584·8) = 1024·111,744 = 114,425,856
        // projections: 58,851,328 + 2·21,102,592 + 51,511,296 + 2·208,797,696 + 114,425,856
        //    = 684,589,056
        // rope: t·(28+4)·128·2·4.5 = 37,748,736; v copy: t·512·2 = 1,048,576
        // scores: 28·1024²·(3·2 + 4 + 12 + 2) = 29,360,128·24 = 704,643,072
        // attention out: 2·t·3584·2 = 14,680,064; MLP: 2·t·18944·2 = 77,594,624;
        // residuals: 2·t·3584·2 = 14,680,064
        // layer: 117,440,512 + 684,589,056 + 37,748,736 + 1,048,576 + 704,643,072
        //    + 14,680,064 + 77,594,624 + 14,680,064 = 1,652,424,704
        let c = qwen2_7b();
        let s = shape(1, 1024, LogprobHead::Chunked);
        assert_eq!(layer_activations(&c, &s, 1), 1_652_424_704);
        let p = plan(&c, &s).unwrap();
        assert_eq!(p.item("activations (kept)"), 28 * 1_652_424_704);
    }

    #[test]
    fn qwen2_7b_fused_attention_by_hand() {
        // The composed layer above without its attention terms (rope 37,748,736, v copy
        // 1,048,576, scores 704,643,072, attention out 14,680,064), plus the fused op's
        // output t·3584·2 = 7,340,032:
        // 117,440,512 + 684,589,056 + 7,340,032 + 77,594,624 + 14,680,064 = 901,644,288.
        // Its backward buffers, with (28 + 2·4)·128 = 4608 q/k/v columns: rotated f32
        // copies t·4608·4 = 18,874,368, statistics t·28·8 = 229,376, f32 gradients with
        // dk and dv per query head t·3·28·128·4 = 44,040,192, bf16 gradients t·4608·2 =
        // 9,437,184: 72,581,120.
        // The chunked head's transient at 1024 rows (16,384-row chunks): 1024·16,384·8
        // + 1024·3584·4 = 148,897,792. Backward working set: 901,644,288 + 148,897,792
        // + 72,581,120 = 1,123,123,200.
        let c = qwen2_7b();
        let s = fused(shape(1, 1024, LogprobHead::Chunked));
        assert_eq!(layer_activations(&c, &s, 1), 901_644_288);
        assert_eq!(attention_backward_bytes(&c, &s, 1024), 72_581_120);
        let p = plan(&c, &s).unwrap();
        assert_eq!(p.item("activations (kept)"), 28 * 901_644_288);
        assert_eq!(p.item("backward working set"), 1_123_123_200);
    }

    #[test]
    fn fused_attention_plans_far_less_for_dpo_at_4k_tokens() {
        // One pair of 4096-token sequences: the composed attention keeps
        // 2·28·4096²·24 B = 21.0 GiB of scores per layer (912.7 GiB peak); fused, the
        // whole plan is 232.5 GiB, the LoRA projections' activations now its largest part.
        let c = qwen2_7b();
        let composed = TrainShape {
            algorithm: Algorithm::Dpo,
            ..shape(1, 4096, LogprobHead::Chunked)
        };
        let composed_plan = plan(&c, &composed).unwrap();
        let fused_plan = plan(&c, &fused(composed)).unwrap();
        let gib = |p: &MemoryPlan| p.total as f64 / GIB;
        assert!((gib(&composed_plan) - 912.75).abs() < 0.01);
        assert!((gib(&fused_plan) - 232.48).abs() < 0.01);
        assert!(
            fused_plan.total * 3 < composed_plan.total,
            "fused {:.1} GiB vs composed {:.1} GiB",
            gib(&fused_plan),
            gib(&composed_plan)
        );
    }

    #[test]
    fn the_largest_piece_follows_the_token_budget() {
        let piece = |batch_size, max_len, max_batch_tokens, algorithm| {
            let args = TrainingArgs {
                batch_size,
                max_len,
                max_batch_tokens,
                ..TrainingArgs::default()
            };
            let s = TrainShape::largest_piece(&args, algorithm, DType::BF16, 0);
            (s.batch, s.seq_len)
        };
        // Defaults (4 items, max_len 1024, 512-token pieces): one item alone.
        assert_eq!(piece(4, 1024, 512, Algorithm::Sft), (1, 1024));
        assert_eq!(piece(4, 1024, 512, Algorithm::Dpo), (1, 1024));
        // configs/qwen2-7b.toml: 8 sequences or 4 pairs of 2048, 8192-token pieces.
        assert_eq!(piece(8, 2048, 8192, Algorithm::Sft), (4, 2048));
        assert_eq!(piece(4, 2048, 8192, Algorithm::Dpo), (2, 2048));
        // No budget: the whole micro-batch; a budget between items: split evenly.
        assert_eq!(piece(3, 512, 0, Algorithm::Dpo), (3, 512));
        assert_eq!(piece(4, 1024, 1500, Algorithm::Sft), (2, 750));
    }

    #[test]
    fn chunked_head_needs_far_less_than_the_unfused_one_at_4k_tokens() {
        // One 4096-token sequence: 4096 × 152064 = 622,854,144 logits.
        // Unfused, kept: hidden 4096·3584·2 = 29,360,128 + logits × (2 + 4 + 12) B
        //   = 11,211,374,592 → 11,240,734,720; backward transient × 8 B = 4,982,833,152.
        // Chunked: chunk = 64 MiB / (4 B · 4096) = 4096 rows; kept: 29,360,128 + 4096·8
        //   = 29,392,896; transient 4096·4096·8 + 4096·3584·4 = 134,217,728 + 58,720,256
        //   = 192,937,984.
        // Logits memory (kept + transient): 16,223,567,872 vs 222,330,880, 72.97× smaller.
        let c = qwen2_7b();
        let unfused = shape(1, 4096, LogprobHead::Unfused);
        let chunked = shape(1, 4096, LogprobHead::Chunked);
        assert_eq!(
            logprob_head_bytes(&c, &unfused, 4096).0 + logprob_head_bytes(&c, &unfused, 4096).1,
            16_223_567_872
        );
        let (kept, transient, _) = logprob_head_bytes(&c, &chunked, 4096);
        assert_eq!((kept, transient), (29_392_896, 192_937_984));
        let full = plan(&c, &unfused).unwrap();
        let fused = plan(&c, &chunked).unwrap();
        let head = |p: &MemoryPlan| {
            p.item("log-prob head (kept)") + p.item("backward working set")
                - layer_activations(&c, &chunked, 1)
        };
        let ratio = head(&full) as f64 / head(&fused) as f64;
        assert!(ratio >= 3.0, "only {ratio:.1}× smaller");
        assert!((ratio - 72.97).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn refuses_what_does_not_fit_in_one_line() {
        let c = qwen2_7b();
        let small = plan(&c, &shape(1, 512, LogprobHead::Chunked)).unwrap();
        small.check_fits(80 << 30, "--batch").unwrap();
        // Composed attention keeps [28, 4096, 4096] scores per layer: ~11 GiB × 28 layers.
        let big = plan(&c, &shape(1, 4096, LogprobHead::Chunked)).unwrap();
        let err = big
            .check_fits(80 << 30, "--batch or --seq-len")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("this configuration needs about"), "{err}");
        assert!(err.contains("80.00 GiB is available"), "{err}");
        assert!(err.contains("largest item: activations (kept)"), "{err}");
        assert!(err.ends_with("; lower --batch or --seq-len"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn rejects_unknown_lora_targets() {
        let err = lora_parameter_count(&qwen2_7b(), 8, &["lm_head".into()]).unwrap_err();
        assert!(err.to_string().contains("unknown LoRA target `lm_head`"));
    }
}
