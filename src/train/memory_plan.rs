//! Memory budget of a training or generation configuration, from the model's
//! hyper-parameters alone (nothing is loaded), and the refusal of one that will not fit:
//! GPU memory for a CUDA device, resident memory for the CPU.
//!
//! The estimate follows the code as it is, not an ideal implementation. candle's autograd
//! keeps every intermediate tensor of the tracked forward pass alive until `backward`
//! (each graph node holds its inputs), so "activations" below are the outputs of every op
//! of `Decoder::forward_segments`, counted op by op in `layer_activations`. Attention is
//! either the candle composition (rope, scores, softmax, …) or the fused `CausalAttention`
//! op, which keeps only its output and works in per-layer transient buffers
//! (`Attention`); each adapted projection is one op that keeps only its output
//! (`AdaptedProjection`). Sizes are upper bounds in one respect: every position of every
//! sequence is counted as a scored target token.
//!
//! Peak = weights + LoRA state + max(training step, generation, loading) + overhead, where
//! * training step, activations kept: every layer's activations + the log-prob head's
//!   kept tensors + the backward working set (one layer's activations again, as
//!   gradients, plus the head's transient gradient buffers and, fused, the attention op's
//!   backward buffers);
//! * training step, checkpointed (`gradient_checkpointing`): every layer's input + the
//!   larger of the head's backward (kept + transient) and one layer's backward (its
//!   activations recomputed, their gradients, the attention op's buffers). DPO's
//!   reference pass runs untracked before the policy pass and frees as it goes, so it
//!   never sets the peak;
//! * on the CPU the trainer runs two pieces at once when a step has several
//!   (`TrainShape::pieces_at_once`), and then the training step counts twice;
//! * generation = the KV cache of `gen_batch` sequences of `seq_len` tokens (online DPO
//!   samples between its training steps);
//! * loading (CPU) = the checkpoint file, memory-mapped and read once while the weights
//!   are converted to the compute dtype; with an int8 base (`base_dtype`), also the one
//!   projection weight in the dtype that the loader is quantizing (it quantizes each as
//!   it reads it, `ProjectionStorage::Int8`);
//! * overhead on a GPU = 1 GiB (CUDA context, cuBLAS workspace) + 10% of the rest for
//!   allocator slack; on the CPU the process itself (`CPU_PROCESS_BYTES`).

use crate::model::config::ModelConfig;
use crate::model::config_resolution::resolve_config_or_download;
use crate::model::lora::PROJECTIONS;
use crate::model::ops::causal_attention::KERNEL_HEAD_DIMS;
use crate::model::ops::chunked_logprob::logits_chunk_rows;
use crate::train::{BaseDtype, TrainingArgs};
use anyhow::{bail, Context, Result};
use candle_core::DType;

const GIB: f64 = (1u64 << 30) as f64;
const FIXED_OVERHEAD: u64 = 1 << 30;
/// The CPU process without a model: the binary, its libraries, rayon's threads and a
/// tokenizer. `/usr/bin/time -v` measures 19.4 MiB of peak resident memory for a training
/// step of `autoif train sft` on the tiny Qwen2 fixture (weights of a few hundred KB).
const CPU_PROCESS_BYTES: u64 = 20 << 20;
const SLACK_PERCENT: u64 = 10;
/// Bytes per trainable f32 parameter under AdamW: value, gradient, first and second moment.
const ADAMW_BYTES_PER_PARAM: u64 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sft,
    /// Each batch element is a pair: chosen and rejected sequences share the pass.
    Dpo,
}

/// Where the job runs, which picks the kernels of the training path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanDevice {
    /// CUDA: candle compositions around the fused attention op, the chunked head.
    Gpu,
    /// The CPU: in f32, the norms, SwiGLU and the log-prob head are this crate's fused
    /// ops (`train_ops`), which keep only their outputs.
    Cpu,
}

/// How the per-token log-probabilities are computed from the final hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogprobHead {
    /// `Decoder::logits` then log-softmax and gather: `[tokens, vocab]` logits kept.
    Unfused,
    /// The CPU's fused head and log-softmax op (f32, `head_target_logprob_and_lse`): the
    /// logits kept once, turned into their gradient in place in backward.
    FusedCpu,
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
    /// Activation checkpointing (`TrainingArgs::gradient_checkpointing`).
    pub checkpointing: bool,
    /// How the frozen projections are stored (`TrainingArgs::base_dtype`).
    pub base_dtype: BaseDtype,
    pub device: PlanDevice,
    /// Bytes of the safetensors files the CPU loader memory-maps (0 for GGUF, which is
    /// read one tensor at a time, and for a GPU plan).
    pub mapped_checkpoint_bytes: u64,
    /// Pieces of a step the CPU trainer runs at once (`for_each_piece` in the trainer): 2
    /// when a step has two or more pieces and there are two or more threads, else 1.
    /// The GPU runs one piece at a time whatever this says.
    pub pieces_at_once: usize,
}

impl TrainShape {
    /// `self` as the CPU runs it: f32 norms, SwiGLU and head fused, attention fused.
    pub fn on_cpu(&self) -> TrainShape {
        let fused = self.dtype == DType::F32;
        TrainShape {
            device: PlanDevice::Cpu,
            attention: Attention::Fused,
            logprob_head: if fused {
                LogprobHead::FusedCpu
            } else {
                LogprobHead::Unfused
            },
            ..self.clone()
        }
    }

    /// Whether the norms and SwiGLU run as the fused CPU ops.
    fn fused_cpu_ops(&self) -> bool {
        self.device == PlanDevice::Cpu && self.dtype == DType::F32
    }
}

impl TrainShape {
    /// The largest piece the trainer runs through one forward pass for `args`: pieces hold
    /// at most `max_batch_tokens` tokens but at least one item (a sequence cut at
    /// `max_len`, or a pair of them), and at most a micro-batch of `batch_size` items (or
    /// packed rows of `max_len`); see `data::split_by_tokens`. It is planned as whole
    /// `max_len` sequences where it holds several, so the composed attention's per-sequence
    /// scores are not undercounted. Generation (online DPO) is planned as `gen_batch`
    /// sequences of the same length. Planned for the GPU, where checkpointing is on unless
    /// `args` turn it off.
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
            checkpointing: args.gradient_checkpointing.unwrap_or(true),
            base_dtype: args.base_dtype,
            device: PlanDevice::Gpu,
            mapped_checkpoint_bytes: 0,
            pieces_at_once: 1,
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

/// Parameters of every layer's projection weights (no biases): what an int8 base holds as
/// int8 blocks.
pub fn projection_parameter_count(c: &ModelConfig) -> u64 {
    let per_layer: usize = PROJECTIONS
        .iter()
        .map(|m| {
            let (i, o) = projection_dims(c, m);
            i * o
        })
        .sum();
    (c.num_hidden_layers * per_layer) as u64
}

/// Weights of the largest projection: the most an int8 base holds in the dtype at once
/// while loading.
pub fn largest_projection_parameters(c: &ModelConfig) -> u64 {
    PROJECTIONS
        .iter()
        .map(|m| {
            let (i, o) = projection_dims(c, m);
            (i * o) as u64
        })
        .max()
        .unwrap_or(0)
}

/// Bytes of every layer's projection weights as an int8 base stores them on `device`. On
/// the CPU as `quant::Int8Weight`: per 16 output rows (padded) and 32 inputs (padded), 512
/// int8 values and 16 f32 scales, a little over 1.125 bytes per weight. On a GPU as
/// `int8_gpu_weight::GpuInt8Weight`: row by row, 1 byte per weight and one f32 scale per
/// 32 inputs (the input size a multiple of 32), no padding: 1.125 bytes per weight.
pub fn int8_projection_bytes(c: &ModelConfig, device: PlanDevice) -> u64 {
    let per_layer: usize = PROJECTIONS
        .iter()
        .map(|m| {
            let (i, o) = projection_dims(c, m);
            match device {
                PlanDevice::Cpu => o.div_ceil(16) * i.div_ceil(32) * 16 * (32 + 4),
                PlanDevice::Gpu => o * i + 4 * o * i.div_ceil(32),
            }
        })
        .sum();
    (c.num_hidden_layers * per_layer) as u64
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

/// Bytes one layer of the tracked forward keeps for backward, for `batch` sequences of
/// `seq` tokens, op by op as `Decoder::forward_segments` runs them (s = dtype bytes; a
/// cast to the dtype a tensor already has costs nothing in candle):
/// * each RMS norm, composed: cast to f32, x², x/rms (f32), cast back, × weight; fused
///   (CPU f32): its output;
/// * each projection with LoRA: its output (`AdaptedProjection`, bias included);
///   without: x·Wᵀ, and + bias where there is one;
/// * attention, composed: rope on q and k: −x₂, cat, x·cos, rot·sin, sum (4.5 copies);
///   v made contiguous; scores `[batch, heads, seq, seq]`: q·kᵀ, ×scale, +mask (s each),
///   cast to f32, −max, exp, ÷sum (f32), cast back; then probs·v and its transposed copy;
/// * attention, fused: its output `[tokens, heads·d]` (q, k, v are the projections');
/// * MLP: SiLU(gate) and × up, or the fused SwiGLU's output; two residual sums.
fn layer_activations(c: &ModelConfig, shape: &TrainShape, sequences: usize) -> u64 {
    let s = shape.dtype.size_in_bytes() as u64;
    let cast_to_f32 = if s == 4 { 0 } else { 4 };
    let cast_back = if s == 4 { 0 } else { s };
    let t = (sequences * shape.seq_len) as u64;
    let h = c.hidden_size as u64;
    let fused_ops = shape.fused_cpu_ops();
    let norm = if fused_ops {
        t * h * 4
    } else {
        t * h * (cast_to_f32 + 4 + 4 + cast_back + s)
    };
    let projection = |m: &str| {
        let o = projection_dims(c, m).1 as u64;
        let adapted = shape.lora_targets.iter().any(|x| x == m);
        if adapted || !has_bias(c, m) {
            t * o * s
        } else {
            2 * t * o * s
        }
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
    let mlp = if fused_ops { 1 } else { 2 } * t * c.intermediate_size as u64 * s;
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
        LogprobHead::FusedCpu => {
            // Kept: the selected hidden states, the f32 logits and the op's [n, 2] results.
            // Backward: the logits become their own gradient in place; the hidden states'
            // gradient (f32) is new.
            let kept = hidden + n * v * 4 + n * 2 * 4;
            let transient = n * c.hidden_size as u64 * 4;
            (
                kept,
                transient,
                format!("[{n} × {v}] f32 logits kept, their gradient made in place"),
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
    let attention_transient = attention_backward_bytes(c, shape, tokens);
    let layers = c.num_hidden_layers as u64;
    let attention = match shape.attention {
        Attention::Composed => "composed",
        Attention::Fused => "fused",
    };
    // Kept through the step: every layer's activations, or only every layer's input.
    let (activations, activations_how) = if shape.checkpointing {
        let input = (tokens * c.hidden_size) as u64 * s;
        (
            layers * input,
            format!(
                "{layers} layer inputs × {:.3} GiB (checkpointed; {sequences} sequences × {} tokens, {attention} attention)",
                input as f64 / GIB,
                shape.seq_len
            ),
        )
    } else {
        (
            layer * layers,
            format!(
                "{layers} layers × {:.2} GiB ({sequences} sequences × {} tokens, {attention} attention)",
                layer as f64 / GIB,
                shape.seq_len,
            ),
        )
    };
    // Checkpointed, the head's backward ends before the first layer is run again.
    let (backward, backward_how) = if shape.checkpointing {
        let layer_phase = 2 * layer + attention_transient;
        let head_phase = head_kept + head_transient;
        (
            layer_phase.max(head_phase) - head_kept,
            "the larger of one layer recomputed with its gradients and the head's backward",
        )
    } else {
        (
            layer + head_transient + attention_transient,
            match shape.attention {
                Attention::Composed => "one layer's gradients + the head's transient buffers",
                Attention::Fused => {
                    "one layer's gradients + the head's and fused attention's transient buffers"
                }
            },
        )
    };
    let at_once = match shape.device {
        PlanDevice::Cpu => shape.pieces_at_once.max(1) as u64,
        PlanDevice::Gpu => 1,
    };
    let at_once_how = match at_once {
        1 => String::new(),
        n => format!(" × {n} pieces at once (one per core)"),
    };
    let (activations, head_kept, backward) = (
        at_once * activations,
        at_once * head_kept,
        at_once * backward,
    );
    let training = activations + head_kept + backward;
    // The CPU reads the checkpoint file while converting it: the file's bytes stay
    // resident (page cache mapped into the process) until the weights are built.
    let mapped = match shape.device {
        PlanDevice::Cpu => shape.mapped_checkpoint_bytes,
        PlanDevice::Gpu => 0,
    };
    // An int8 base: the projections as int8 blocks, the rest in the dtype. The loader
    // quantizes each projection as it reads it, so while loading one projection at most
    // is there in the dtype besides the blocks.
    let (weights, weights_how, dense_projection) = match shape.base_dtype {
        BaseDtype::Model => (params * s, format!("{params} parameters × {s} B"), 0),
        BaseDtype::Int8 => {
            let projections = projection_parameter_count(c);
            let int8 = int8_projection_bytes(c, shape.device);
            (
                (params - projections) * s + int8,
                format!(
                    "{projections} projection weights as int8 blocks ({:.2} GiB) + {} other parameters × {s} B",
                    int8 as f64 / GIB,
                    params - projections
                ),
                largest_projection_parameters(c) * s,
            )
        }
    };
    let loading = mapped + dense_projection;
    let mut items = vec![
        Item {
            name: "weights",
            bytes: weights,
            how: weights_how,
        },
        Item {
            name: "LoRA + AdamW state",
            bytes: lora * ADAMW_BYTES_PER_PARAM,
            how: format!("{lora} f32 parameters × (value, grad, m, v)"),
        },
        Item {
            name: "activations (kept)",
            bytes: activations,
            how: activations_how + &at_once_how,
        },
        Item {
            name: "log-prob head (kept)",
            bytes: head_kept,
            how: head_how + &at_once_how,
        },
        Item {
            name: "backward working set",
            bytes: backward,
            how: format!("{backward_how}{at_once_how}"),
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
    if mapped > 0 {
        items.push(Item {
            name: "checkpoint file (loading)",
            bytes: mapped,
            how: "safetensors files, memory-mapped while the weights are built".into(),
        });
    }
    if dense_projection > 0 {
        items.push(Item {
            name: "dense projection (loading)",
            bytes: dense_projection,
            how: format!(
                "the largest projection in {s} B while the loader quantizes it (one at a time)"
            ),
        });
    }
    let resident = weights + lora * ADAMW_BYTES_PER_PARAM;
    let phases = training.max(kv).max(loading);
    let (overhead, overhead_how) = match shape.device {
        PlanDevice::Gpu => (
            FIXED_OVERHEAD + (resident + phases) * SLACK_PERCENT / 100,
            format!("1 GiB context + {SLACK_PERCENT}% allocator slack"),
        ),
        PlanDevice::Cpu => (CPU_PROCESS_BYTES, "the process without a model".into()),
    };
    items.push(Item {
        name: "overhead",
        bytes: overhead,
        how: overhead_how,
    });
    Ok(MemoryPlan {
        total: resident + phases + overhead,
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
            checkpointing: false,
            base_dtype: BaseDtype::Model,
            device: PlanDevice::Gpu,
            mapped_checkpoint_bytes: 0,
            pieces_at_once: 1,
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
        // projections, each its output only (the adapted projection op, bias inside):
        // q, o, down: t·3584·2 = 7,340,032 each; k, v: t·512·2 = 1,048,576 each;
        // gate, up: t·18944·2 = 38,797,312 each; together 101,711,872
        // rope: t·(28+4)·128·2·4.5 = 37,748,736; v copy: t·512·2 = 1,048,576
        // scores: 28·1024²·(3·2 + 4 + 12 + 2) = 29,360,128·24 = 704,643,072
        // attention out: 2·t·3584·2 = 14,680,064; MLP: 2·t·18944·2 = 77,594,624;
        // residuals: 2·t·3584·2 = 14,680,064
        // layer: 117,440,512 + 101,711,872 + 37,748,736 + 1,048,576 + 704,643,072
        //    + 14,680,064 + 77,594,624 + 14,680,064 = 1,069,547,520
        let c = qwen2_7b();
        let s = shape(1, 1024, LogprobHead::Chunked);
        assert_eq!(layer_activations(&c, &s, 1), 1_069_547_520);
        let p = plan(&c, &s).unwrap();
        assert_eq!(p.item("activations (kept)"), 28 * 1_069_547_520);
    }

    #[test]
    fn qwen2_7b_fused_attention_by_hand() {
        // The composed layer above without its attention terms (rope 37,748,736, v copy
        // 1,048,576, scores 704,643,072, attention out 14,680,064), plus the fused op's
        // output t·3584·2 = 7,340,032:
        // 117,440,512 + 101,711,872 + 7,340,032 + 77,594,624 + 14,680,064 = 318,767,104.
        // Its backward buffers, with (28 + 2·4)·128 = 4608 q/k/v columns: rotated f32
        // copies t·4608·4 = 18,874,368, statistics t·28·8 = 229,376, f32 gradients with
        // dk and dv per query head t·3·28·128·4 = 44,040,192, bf16 gradients t·4608·2 =
        // 9,437,184: 72,581,120.
        // The chunked head's transient at 1024 rows (16,384-row chunks): 1024·16,384·8
        // + 1024·3584·4 = 148,897,792. Backward working set: 318,767,104 + 148,897,792
        // + 72,581,120 = 540,246,016.
        let c = qwen2_7b();
        let s = fused(shape(1, 1024, LogprobHead::Chunked));
        assert_eq!(layer_activations(&c, &s, 1), 318_767_104);
        assert_eq!(attention_backward_bytes(&c, &s, 1024), 72_581_120);
        let p = plan(&c, &s).unwrap();
        assert_eq!(p.item("activations (kept)"), 28 * 318_767_104);
        assert_eq!(p.item("backward working set"), 540_246_016);
    }

    #[test]
    fn fused_attention_plans_far_less_for_dpo_at_4k_tokens() {
        // One pair of 4096-token sequences, every activation kept: the composed attention
        // keeps 2·28·4096²·24 B = 21.0 GiB of scores per layer (774.2 GiB peak); fused, the
        // whole plan is 93.9 GiB.
        let c = qwen2_7b();
        let composed = TrainShape {
            algorithm: Algorithm::Dpo,
            ..shape(1, 4096, LogprobHead::Chunked)
        };
        let composed_plan = plan(&c, &composed).unwrap();
        let fused_plan = plan(&c, &fused(composed)).unwrap();
        let gib = |p: &MemoryPlan| p.total as f64 / GIB;
        assert!((gib(&composed_plan) - 774.21).abs() < 0.01);
        assert!((gib(&fused_plan) - 93.94).abs() < 0.01);
        assert!(
            fused_plan.total * 3 < composed_plan.total,
            "fused {:.1} GiB vs composed {:.1} GiB",
            gib(&fused_plan),
            gib(&composed_plan)
        );
    }

    /// Llama-3-8B's config.json.
    const LLAMA3_8B: &str = include_str!("../../tests/fixtures/llama3-8b-config/config.json");

    #[test]
    fn checkpointing_keeps_layer_inputs_and_fits_7b_and_8b_in_24_gib() {
        let gib = |p: &MemoryPlan| p.total as f64 / GIB;
        for (name, c) in [
            ("Qwen2-7B", qwen2_7b()),
            ("Llama-3-8B", ModelConfig::from_hf_json(LLAMA3_8B).unwrap()),
        ] {
            // SFT 1 × 4096 tokens and DPO 1 pair × 2048 a side: 4096 tokens either way.
            for (algorithm, seq_len) in [(Algorithm::Sft, 4096), (Algorithm::Dpo, 2048)] {
                let kept = fused(TrainShape {
                    algorithm,
                    ..shape(1, seq_len, LogprobHead::Chunked)
                });
                let checkpointed = TrainShape {
                    checkpointing: true,
                    ..kept.clone()
                };
                let (kept, checkpointed) =
                    (plan(&c, &kept).unwrap(), plan(&c, &checkpointed).unwrap());
                // Kept through the step: one [4096, hidden] bf16 input per layer.
                assert_eq!(
                    checkpointed.item("activations (kept)"),
                    (c.num_hidden_layers * 4096 * c.hidden_size * 2) as u64
                );
                assert!(
                    gib(&checkpointed) <= 24.0,
                    "{name} {algorithm:?}: {:.2} GiB",
                    gib(&checkpointed)
                );
                assert!(
                    kept.total > 2 * checkpointed.total,
                    "{name} {algorithm:?}: checkpointing saves less than half"
                );
            }
        }
        // By hand, Qwen2-7B SFT 1 × 4096: one fused layer at 4096 tokens is 4 × 318,767,104
        // = 1,275,068,416 B and its attention buffers 4 × 72,581,120 = 290,324,480; the
        // recomputed layer with its gradients, 2,840,461,312 B, outweighs the head's
        // backward (29,392,896 + 192,937,984).
        let c = qwen2_7b();
        let p = plan(
            &c,
            &TrainShape {
                checkpointing: true,
                ..fused(shape(1, 4096, LogprobHead::Chunked))
            },
        )
        .unwrap();
        assert_eq!(
            p.item("backward working set"),
            2 * 1_275_068_416 + 290_324_480 - 29_392_896
        );
    }

    #[test]
    fn an_int8_base_counts_its_blocks_and_one_dense_projection_while_loading() {
        // Qwen2-7B's projections, 233,046,016 weights per layer (no norms or biases), all
        // dimensions multiples of 16 and 32: 1 B + 4 B / 32 = 1.125 B each, 262,176,768 B
        // per layer, × 28 = 7,340,949,504 B. The other 1,090,328,064 parameters stay bf16.
        let c = qwen2_7b();
        assert_eq!(projection_parameter_count(&c), 28 * 233_046_016);
        assert_eq!(int8_projection_bytes(&c, PlanDevice::Gpu), 7_340_949_504);
        assert_eq!(int8_projection_bytes(&c, PlanDevice::Cpu), 7_340_949_504);
        let bf16 = fused(TrainShape {
            checkpointing: true,
            ..shape(1, 4096, LogprobHead::Chunked)
        });
        let int8 = TrainShape {
            base_dtype: BaseDtype::Int8,
            ..bf16.clone()
        };
        let (bf16, int8) = (plan(&c, &bf16).unwrap(), plan(&c, &int8).unwrap());
        let weights = 1_090_328_064 * 2 + 7_340_949_504;
        assert_eq!(int8.item("weights"), weights);
        // The loader quantizes each projection as it reads it: at most the largest one,
        // gate/up 18,944 × 3584, is there in bf16 at once: 135,790,592 B.
        assert_eq!(int8.item("dense projection (loading)"), 18_944 * 3584 * 2);
        assert_eq!(bf16.item("dense projection (loading)"), 0);
        // Peak, SFT 1 × 4096 tokens checkpointed (the step sets it, as with bf16):
        // weights 9,521,605,632 + LoRA and AdamW 40,370,176 · 16 = 645,922,816
        //   = 10,167,528,448 resident;
        // step: 28 layer inputs 28 · 4096 · 3584 · 2 = 822,083,584 + head kept 29,392,896
        //   + backward 2 · 1,275,068,416 + 290,324,480 − 29,392,896 = 2,811,068,416
        //   = 3,662,544,896;
        // overhead 1 GiB + 10% of 13,830,073,344 = 1,073,741,824 + 1,383,007,334
        //   = 2,456,749,158;
        // total 16,286,822,502 B = 15.17 GiB (the bf16 base: 21.02 GiB).
        assert_eq!(int8.total, 16_286_822_502);
        assert!(int8.total < bf16.total);
        eprintln!(
            "Qwen2-7B SFT 1 × 4096 checkpointed: bf16 base {:.2} GiB, int8 base {:.2} GiB (weights {:.2} GiB)",
            bf16.total as f64 / GIB,
            int8.total as f64 / GIB,
            int8.item("weights") as f64 / GIB
        );
    }

    /// The two int8 layouts differ only where an output size is not a multiple of 16: the
    /// CPU pads each projection to groups of 16 output rows, the GPU stores rows as they
    /// are. Qwen2-7B with 3 KV heads of 40 (k/v 120 outputs; q 28 · 40 = 1120 = 70 · 16):
    /// per layer k and v cost 2 · 120 · 3584 · 1.125 = 967,680 B on the GPU and
    /// 2 · 128 · 3584 · 1.125 = 1,032,192 B on the CPU, 64,512 B more, × 28 layers.
    #[test]
    fn the_gpu_int8_layout_pads_no_rows() {
        let mut c = qwen2_7b();
        c.head_dim = 40;
        c.num_key_value_heads = 3;
        let (gpu, cpu) = (
            int8_projection_bytes(&c, PlanDevice::Gpu),
            int8_projection_bytes(&c, PlanDevice::Cpu),
        );
        assert_eq!(cpu - gpu, 28 * 64_512);
        assert_eq!(gpu * 8, projection_parameter_count(&c) * 9);
    }

    /// The GPU count is what `GpuInt8Weight` holds, projection by projection (a small
    /// model with 120-output k/v, built on the CPU device: the layout is the same).
    #[test]
    fn the_gpu_int8_count_is_what_the_gpu_weights_hold() {
        use crate::model::ops::int8_gpu_weight::GpuInt8Weight;
        use crate::model::ops::quant::Int8Weight;
        let mut c = qwen2_7b();
        (c.hidden_size, c.intermediate_size, c.num_hidden_layers) = (64, 96, 2);
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim) = (4, 3, 40);
        let per_layer: usize = PROJECTIONS
            .iter()
            .map(|m| {
                let (i, o) = projection_dims(&c, m);
                let packed = Int8Weight::pack(&vec![0.5; o * i], o, i);
                GpuInt8Weight::upload(&packed, &candle_core::Device::Cpu)
                    .unwrap()
                    .bytes()
            })
            .sum();
        assert_eq!(
            int8_projection_bytes(&c, PlanDevice::Gpu),
            2 * per_layer as u64
        );
    }

    /// Issue 18's target: SFT 1 × 4096 tokens, bf16, checkpointed, LoRA r16 on all seven
    /// projections, plans within 16 GiB on an int8 base for both 7–8B models.
    ///
    /// Llama-3-8B by hand (hidden 4096, MLP 14,336, 32 layers, 32 heads, 8 KV heads of
    /// 128, vocabulary 128,256, untied; t = 4096):
    /// * projections per layer 2 · 4096² + 2 · 4096 · 1024 + 3 · 4096 · 14,336
    ///   = 218,103,808, × 32 = 6,979,321,856 weights, × 1.125 = 7,851,737,088 B of
    ///   blocks; the other 2 · 128,256 · 4096 + 65 · 4096 = 1,050,939,392 parameters in
    ///   bf16: 2,101,878,784 B; weights 9,953,615,872 B;
    /// * LoRA r16 16 · (2 · 8192 + 2 · 5120 + 3 · 18,432) = 1,310,720 per layer, × 32 × 16 B
    ///   = 671,088,640; resident 10,624,704,512;
    /// * one layer's activations: norms 2 · t · 4096 · 16 = 536,870,912, projections
    ///   t · (3 · 4096 + 2 · 1024 + 2 · 14,336) · 2 = 352,321,536, attention t · 4096 · 2
    ///   = 33,554,432, SwiGLU 2 · t · 14,336 · 2 = 234,881,024, residuals 2 · t · 4096 · 2
    ///   = 67,108,864: 1,224,736,768; attention backward buffers (q/k/v 6144 columns)
    ///   t · 6144 · 4 + t · 32 · 8 + t · 3 · 4096 · 4 + t · 6144 · 2 = 353,370,112;
    /// * step: 32 layer inputs t · 4096 · 2 · 32 = 1,073,741,824 + head kept
    ///   t · 4096 · 2 + t · 8 = 33,587,200 + backward 2 · 1,224,736,768 + 353,370,112
    ///   − 33,587,200 = 2,769,256,448: 3,876,585,472 (the largest projection, 117,440,512
    ///   B in bf16, and the KV cache, 536,870,912, are smaller);
    /// * overhead 1 GiB + 10% of 14,501,289,984 = 2,523,870,822;
    /// * total 17,025,160,806 B = 15.86 GiB.
    #[test]
    fn an_int8_base_fits_7b_and_8b_sft_at_4096_tokens_in_16_gib() {
        let llama = ModelConfig::from_hf_json(LLAMA3_8B).unwrap();
        let int8 = TrainShape {
            checkpointing: true,
            base_dtype: BaseDtype::Int8,
            ..fused(shape(1, 4096, LogprobHead::Chunked))
        };
        let p = plan(&llama, &int8).unwrap();
        assert_eq!(p.item("weights"), 9_953_615_872);
        assert_eq!(p.item("dense projection (loading)"), 117_440_512);
        assert_eq!(p.total, 17_025_160_806);
        for (name, c) in [("Qwen2-7B", qwen2_7b()), ("Llama-3-8B", llama)] {
            let int8 = TrainShape {
                checkpointing: true,
                base_dtype: BaseDtype::Int8,
                ..fused(shape(1, 4096, LogprobHead::Chunked))
            };
            let p = plan(&c, &int8).unwrap();
            let gib = p.total as f64 / GIB;
            eprintln!("{name} SFT 1 × 4096, int8 base: {gib:.2} GiB");
            assert!(gib <= 16.0, "{name}: {gib:.2} GiB");
        }
    }

    #[test]
    fn the_cpu_plan_keeps_fused_outputs_and_counts_the_mapped_file() {
        // Qwen2-7B in f32 on the CPU, 1 × 1024 tokens: norms, SwiGLU and the adapted
        // projections keep their outputs only: norms 2·t·h·4 = 29,360,128; projections
        // t·(3584·3 + 512·2 + 18944·2)·4 = 203,423,744; attention t·3584·4 = 14,680,064;
        // SwiGLU t·18944·4 = 77,594,624; residuals 2·t·3584·4 = 29,360,128:
        // 354,418,688.
        let c = qwen2_7b();
        let cpu = TrainShape {
            dtype: DType::F32,
            mapped_checkpoint_bytes: 15_231_233_024,
            pieces_at_once: 2,
            ..shape(1, 1024, LogprobHead::Chunked)
        }
        .on_cpu();
        assert_eq!(cpu.logprob_head, LogprobHead::FusedCpu);
        assert_eq!(layer_activations(&c, &cpu, 1), 354_418_688);
        let p = plan(&c, &cpu).unwrap();
        // Two pieces at once, one per core.
        assert_eq!(p.item("activations (kept)"), 2 * 28 * 354_418_688);
        let step = p.item("activations (kept)")
            + p.item("log-prob head (kept)")
            + p.item("backward working set");
        // The step outweighs the mapped bf16 file, and there is no CUDA context.
        assert_eq!(p.item("checkpoint file (loading)"), 15_231_233_024);
        assert!(step > 15_231_233_024);
        assert_eq!(
            p.total,
            p.item("weights") + p.item("LoRA + AdamW state") + step + CPU_PROCESS_BYTES
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
