//! The one decoder for `LlamaForCausalLM` and `Qwen2ForCausalLM`.
//!
//! Qwen2 is Llama with biases on q/k/v, usually tied embeddings and its own rope theta,
//! so both are this file: embeddings → N × (RMSNorm → attention with rotary positions
//! and grouped KV heads → RMSNorm → SwiGLU MLP) → RMSNorm → LM head. Every projection is
//! a `LoraLinear`, and tensor names follow Hugging Face.
//!
//! Two forward paths share these weights:
//! * `forward_packed` — inference. The tokens of many sequences are packed into one
//!   `[tokens, hidden]` matrix (prefill and decode mixed), each sequence has its own
//!   positions and KV-cache slot, and candle's fused kernels are used. With
//!   `Precision::Int8` (the engine's default) CPU f32 projections and the LM head run on
//!   int8 copies of their weights (`quant`); with `Precision::Exact` on the f32 weights
//!   as loaded, through `exact_product`'s batch-invariant kernel (decoding few rows, read
//!   from their lossless block form, `exact_blocks`, when they have one). Off the CPU in
//!   f32 (the GPU, half precision) the KV cache keeps tensors and `batched` runs each
//!   layer as a fixed number of tensor ops for all sequences together.
//! * `forward` — training and scoring. A right-padded `[batch, seq]` batch through ops
//!   that all have a backward pass (candle's fused rms_norm / softmax_last_dim / rope do
//!   not, and would silently cut the gradient to the LoRA weights). On the CPU in f32 the
//!   norms and the SwiGLU product are this crate's fused ops with backward passes
//!   (`train_ops`); the whole attention block is one op (`causal_attention`) on the CPU
//!   in f32/bf16/f16 and, with `--features cuda`, on the GPU; everything else is
//!   compositions of candle ops.

use super::config::{ModelConfig, RopeScaling};
use super::kv_cache::KvCache;
use super::lora::{Adapters, LoraLinear};
use super::ops::causal_attention::CausalAttention;
use super::ops::exact_blocks::BlockCache;
use super::ops::exact_product;
use super::ops::frozen::{add_frozen, mul_frozen};
use super::ops::greedy_head::{self, ScreenCache};
use super::ops::projection::project;
use super::ops::quant::{self, Int8Cache, Precision};
use super::ops::silu_product::silu_product;
use super::ops::train_ops;
use super::weights::Weights;
use super::{LoadOptions, ProjectionStorage};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};

mod batched;
mod checkpointing;
pub use checkpointing::LayerCheckpoints;

/// How the inference path runs each projection.
#[derive(Debug, Clone, Copy)]
struct Projections {
    adapters: Adapters,
    precision: Precision,
}

impl Projections {
    fn apply(self, proj: &LoraLinear, x: &Tensor) -> Result<Tensor> {
        Ok(self.apply_all([proj], x)?.pop().expect("one projection"))
    }

    /// Several projections of the same input (q/k/v, gate/up), computed together.
    fn apply_all<const N: usize>(self, projs: [&LoraLinear; N], x: &Tensor) -> Result<Vec<Tensor>> {
        LoraLinear::forward_inference(&projs, x, self.adapters, self.precision)
    }
}

/// Which kernels a forward pass may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ops {
    Fused,
    Differentiable,
}

pub struct Attention {
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
}

pub struct Mlp {
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
}

pub struct DecoderLayer {
    pub input_layernorm: Tensor,
    pub self_attn: Attention,
    pub post_attention_layernorm: Tensor,
    pub mlp: Mlp,
}

/// One sequence's share of a packed inference batch: `len` consecutive tokens starting at
/// row `start`, continuing the sequence cached in `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub slot: usize,
    pub start: usize,
    pub len: usize,
}

/// `Decoder::greedy_tokens`' answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreedyTokens {
    /// One token per hidden row.
    pub tokens: Vec<u32>,
    /// Rows the screen left to the full exact head.
    pub full_head_rows: usize,
}

pub struct Decoder {
    config: ModelConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Tensor,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
    /// The inference path's int8 copy of the LM head weight, made on first use.
    lm_head_int8: Int8Cache,
    /// The exact path's lossless block form of the LM head weight, searched on first use.
    lm_head_blocks: BlockCache,
    /// Greedy decoding's screen over the LM head (`greedy_head`), made on first use.
    lm_head_screen: ScreenCache,
    /// Per layer, the q/k/v and gate/up weights concatenated for `batched`.
    fused: Vec<batched::FusedLayer>,
    /// `[max_positions, head_dim / 2]`
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
    device: Device,
}

impl Decoder {
    /// Builds the decoder from Hugging Face-named weights, checking every shape, with the
    /// projections stored as `options.projections` says: int8 blocks are made from each
    /// weight as it is read, the dense copy dropped before the next is read.
    pub fn load(config: &ModelConfig, weights: &Weights, options: &LoadOptions) -> Result<Self> {
        let (dtype, device) = (options.dtype, &options.device);
        let int8 = options.projections == ProjectionStorage::Int8;
        if int8 && !(device.is_cuda() || device.is_cpu() && dtype == DType::F32) {
            bail!(
                "int8 projections need f32 weights on the CPU, not {dtype:?} on {:?} (a CUDA device takes any float dtype)",
                device.location()
            );
        }
        let c = config;
        let get = |name: &str, shape: &[usize]| weights.get(name, shape, dtype, device);
        let q_out = c.num_attention_heads * c.head_dim;
        let kv_out = c.num_key_value_heads * c.head_dim;
        let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<LoraLinear> {
            let w = get(&format!("{name}.weight"), &[out, inp])?;
            let b = if bias {
                Some(get(&format!("{name}.bias"), &[out])?)
            } else {
                None
            };
            let mut layer = LoraLinear::new(w, b);
            if int8 {
                layer.quantize_base()?;
            }
            Ok(layer)
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let h = c.hidden_size;
            let bias = c.attention_bias;
            layers.push(DecoderLayer {
                input_layernorm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
                self_attn: Attention {
                    q_proj: linear(&format!("{p}.self_attn.q_proj"), q_out, h, bias)?,
                    k_proj: linear(&format!("{p}.self_attn.k_proj"), kv_out, h, bias)?,
                    v_proj: linear(&format!("{p}.self_attn.v_proj"), kv_out, h, bias)?,
                    o_proj: linear(&format!("{p}.self_attn.o_proj"), h, q_out, false)?,
                },
                post_attention_layernorm: get(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                )?,
                mlp: Mlp {
                    gate_proj: linear(
                        &format!("{p}.mlp.gate_proj"),
                        c.intermediate_size,
                        h,
                        false,
                    )?,
                    up_proj: linear(&format!("{p}.mlp.up_proj"), c.intermediate_size, h, false)?,
                    down_proj: linear(
                        &format!("{p}.mlp.down_proj"),
                        h,
                        c.intermediate_size,
                        false,
                    )?,
                },
            });
        }
        let embed_tokens = get("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        // Some tied checkpoints still carry a copy of lm_head; it is the same tensor.
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(get("lm_head.weight", &[c.vocab_size, c.hidden_size])?)
        };
        let (cos, sin) = rope_tables(c, device)?;
        let mut decoder = Self {
            config: c.clone(),
            embed_tokens,
            layers,
            fused: Vec::new(),
            norm: get("model.norm.weight", &[c.hidden_size])?,
            lm_head,
            lm_head_int8: Int8Cache::default(),
            lm_head_blocks: BlockCache::default(),
            lm_head_screen: ScreenCache::default(),
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            dtype,
            device: device.clone(),
        };
        decoder.fuse_projections()?;
        Ok(decoder)
    }

    /// Where the inference path is `batched` (off the CPU in f32), makes q/k/v and gate/up
    /// views into one concatenated weight each, so the fused GEMMs cost no second copy of
    /// the weights; the CPU f32 path keeps the weights as they are. Load and
    /// `merge_adapters` call it (an f32 merge gives every projection a new weight, which
    /// `batched` would otherwise concatenate into a second copy); adapters and updates
    /// merged beside a 16-bit weight stay on their projections.
    pub fn fuse_projections(&mut self) -> Result<()> {
        let fuse = !(self.device.is_cpu() && self.dtype == DType::F32);
        self.fused = self
            .layers
            .iter_mut()
            .map(|layer| match fuse {
                true => batched::FusedLayer::in_place(layer),
                false => Ok(batched::FusedLayer::default()),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The longest sequence the rotary tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Every projection with its Hugging Face module name (`model.layers.3.self_attn.q_proj`).
    pub fn linear_layers_mut(&mut self) -> Vec<(String, &mut LoraLinear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        out
    }

    /// Read-only twin of `linear_layers_mut`, in the same order.
    pub fn linear_layers(&self) -> Vec<(String, &LoraLinear)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let (a, m) = (&layer.self_attn, &layer.mlp);
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj"), &a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &a.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &m.down_proj));
        }
        out
    }

    fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Logits in f32 for hidden states `[..., hidden]`. Training and scoring pass
    /// `Precision::Exact`; with `Precision::Int8` (the inference path) the LM head runs on
    /// an int8 copy of its weight (CPU f32 only). Exact CPU f32 logits that need no
    /// gradient come from `exact_product`'s kernel.
    pub fn logits(&self, hidden: &Tensor, precision: Precision) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let h = *dims.last().unwrap();
        let flat = hidden.reshape((hidden.elem_count() / h, h))?;
        let head = self.lm_head_weight();
        let packed = match precision {
            Precision::Int8 if flat.dtype() == DType::F32 && flat.device().is_cpu() => {
                self.lm_head_int8.get(head)?
            }
            _ => None,
        };
        let exact = match packed {
            None if !flat.track_op() => {
                let blocks = if flat.dim(0)? <= exact_product::BLOCK_ROWS {
                    self.lm_head_blocks.get(head)?
                } else {
                    None
                };
                exact_product::project(&flat, &[(head, blocks.as_deref())])?
            }
            _ => None,
        };
        let logits = match (packed, exact) {
            (Some(packed), _) => quant::project(&flat, &[&packed])?.remove(0),
            (None, Some(mut exact)) => exact.remove(0),
            (None, None) => project(&flat, head)?.to_dtype(DType::F32)?,
        };
        let mut out = dims;
        *out.last_mut().unwrap() = self.config.vocab_size;
        Ok(logits.reshape(out)?)
    }

    /// The greedy next token of each hidden row `[rows, hidden]`: the first index of the
    /// maximum of its exact logits (`logits` with `Precision::Exact`), with the ids in
    /// `exclude[r]` (one list per row) never picked, bit for bit what the greedy sampler
    /// takes from the full row. The int8 copy of the head screens the vocabulary and only
    /// the rows that may win get exact logits (`greedy_head`); rows the screen cannot
    /// decide get the full exact head. `None` where screening does not apply: off the
    /// CPU, outside f32, or on a CPU without AVX512-VNNI, where the int8 kernel is slow.
    pub fn greedy_tokens(
        &self,
        hidden: &Tensor,
        exclude: &[&[u32]],
    ) -> Result<Option<GreedyTokens>> {
        let head = self.lm_head_weight();
        let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        if !greedy_head::int8_is_fast() || !f32_cpu(hidden) || !f32_cpu(head) {
            return Ok(None);
        }
        let (rows, _) = hidden.dims2()?;
        if exclude.len() != rows {
            bail!(
                "greedy tokens: {} exclusion lists for {rows} rows",
                exclude.len()
            );
        }
        let Some(int8) = self.lm_head_int8.get(head)? else {
            return Ok(None);
        };
        let screen = self.lm_head_screen.get(head, int8)?;
        let picks = greedy_head::with_f32(head, |w| {
            greedy_head::with_f32(hidden, |x| screen.greedy(w, x, rows, exclude))
        })??;
        let full: Vec<u32> = (0..rows as u32)
            .filter(|&r| picks[r as usize].is_none())
            .collect();
        let mut tokens: Vec<u32> = picks.iter().map(|p| p.unwrap_or(0)).collect();
        if !full.is_empty() {
            let index = Tensor::new(full.as_slice(), hidden.device())?;
            let logits = self.logits(&hidden.index_select(&index, 0)?, Precision::Exact)?;
            for (&r, mut row) in full.iter().zip(logits.to_vec2::<f32>()?) {
                tokens[r as usize] = greedy_head::first_argmax(&mut row, exclude[r as usize]);
            }
        }
        Ok(Some(GreedyTokens {
            tokens,
            full_head_rows: full.len(),
        }))
    }

    /// Differentiable forward over right-padded `input_ids` `[batch, seq]` (u32), all
    /// sequences starting at position 0. Returns the final hidden states `[batch, seq,
    /// hidden]`; positions after a sequence's end hold meaningless values (the causal mask
    /// already keeps padding out of every real position). `mode` switches the adapters
    /// off or on (training passes LoRA dropout here).
    pub fn forward(&self, input_ids: &Tensor, mode: Adapters) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let segments: Vec<(usize, usize)> = (0..b).map(|i| (i * t, t)).collect();
        let x = self.forward_segments(&input_ids.flatten_all()?, &segments, mode)?;
        Ok(x.reshape((b, t, self.config.hidden_size))?)
    }

    /// Differentiable forward over sequences laid one after another in `tokens` `[n]`
    /// (u32): `segments` holds each one's `(first token, length)`, each starts at position
    /// 0 and attends only to itself. No padding is needed, so none is computed. Returns
    /// the final hidden states `[n, hidden]`.
    pub fn forward_segments(
        &self,
        tokens: &Tensor,
        segments: &[(usize, usize)],
        mode: Adapters,
    ) -> Result<Tensor> {
        let rope = self.training_rope(segments)?;
        // [n, hidden] throughout: in candle every reshape is a graph node whose backward
        // pass costs a full-size zeroed buffer and an add.
        let mut x = self.embed_tokens.index_select(tokens, 0)?;
        for li in 0..self.layers.len() {
            x = self.training_layer(li, &x, segments, (&rope.0, &rope.1), mode)?;
        }
        self.final_norm(&x)
    }

    /// The rope tables for `segments` in f32, as the attention op reads them: converted
    /// once, not in every layer.
    fn training_rope(&self, segments: &[(usize, usize)]) -> Result<(Tensor, Tensor)> {
        let longest = segments.iter().map(|s| s.1).max().unwrap_or(0);
        if longest > self.max_positions() {
            bail!(
                "sequence of {longest} tokens exceeds the model's {} positions",
                self.max_positions()
            );
        }
        Ok((
            self.cos.narrow(0, 0, longest)?.to_dtype(DType::F32)?,
            self.sin.narrow(0, 0, longest)?.to_dtype(DType::F32)?,
        ))
    }

    /// Decoder layer `li` of the differentiable forward: `x` `[n, hidden]` in, the same
    /// shape out. A pure function of its arguments (dropout masks included), so activation
    /// checkpointing can run it again in the backward pass.
    fn training_layer(
        &self,
        li: usize,
        x: &Tensor,
        segments: &[(usize, usize)],
        rope: (&Tensor, &Tensor),
        mode: Adapters,
    ) -> Result<Tensor> {
        let c = &self.config;
        let layer = &self.layers[li];
        // Projection k of layer li is dropout site 7·li + k.
        let site = |k: u64| mode.at_site(7 * li as u64 + k);
        let h = rms_norm(
            x,
            &layer.input_layernorm,
            c.rms_norm_eps,
            Ops::Differentiable,
        )?;
        let a = &layer.self_attn;
        let attn = self.causal_attention(
            &a.q_proj.forward(&h, site(0))?,
            &a.k_proj.forward(&h, site(1))?,
            &a.v_proj.forward(&h, site(2))?,
            segments,
            rope,
        )?;
        // The residual: `add_frozen` gives the first layer's input (the embeddings, a
        // constant) no gradient, and a tracked input its usual one.
        let x = add_frozen(&a.o_proj.forward(&attn, site(3))?, x)?;
        let h = rms_norm(
            &x,
            &layer.post_attention_layernorm,
            c.rms_norm_eps,
            Ops::Differentiable,
        )?;
        Ok((&x + differentiable_mlp(&layer.mlp, &h, [site(4), site(5), site(6)])?)?)
    }

    /// The final RMS norm of the differentiable forward.
    fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.norm, self.config.rms_norm_eps, Ops::Differentiable)
    }

    /// Inference forward over packed tokens `[n]` (u32) with their absolute `positions`
    /// `[n]` (u32). Each segment's keys and values are appended to its cache slot, which
    /// then advances. Returns final hidden states `[n, hidden]`. `precision` picks the
    /// projections' arithmetic on the CPU in f32 (see `quant`); a cache with tensor
    /// storage goes through `batched`, in the weights' dtype.
    pub fn forward_packed(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        segments: &[Segment],
        cache: &mut KvCache,
        adapters: Adapters,
        precision: Precision,
    ) -> Result<Tensor> {
        if !cache.is_host() {
            return self.forward_batched(tokens, positions, segments, cache, adapters);
        }
        let c = &self.config;
        let proj = Projections {
            adapters,
            precision,
        };
        let mut x = self.embed_tokens.index_select(tokens, 0)?;
        let cos = self.cos.index_select(positions, 0)?;
        let sin = self.sin.index_select(positions, 0)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_layernorm, c.rms_norm_eps, Ops::Fused)?;
            let a = &layer.self_attn;
            let attn = self.packed_attention_host(li, a, &h, &cos, &sin, segments, cache, proj)?;
            x = (x + proj.apply(&a.o_proj, &attn)?)?;
            let h = rms_norm(
                &x,
                &layer.post_attention_layernorm,
                c.rms_norm_eps,
                Ops::Fused,
            )?;
            x = (x + mlp(&layer.mlp, &h, proj)?)?;
        }
        for seg in segments {
            cache.advance(seg.slot, seg.len);
        }
        rms_norm(&x, &self.norm, c.rms_norm_eps, Ops::Fused)
    }

    /// Packed attention over host KV buffers: q/k/v stay `[rows, heads, head_dim]`
    /// (rope in that layout), and the cache computes every row's attention in one pass.
    #[allow(clippy::too_many_arguments)]
    fn packed_attention_host(
        &self,
        layer: usize,
        a: &Attention,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segments: &[Segment],
        cache: &mut KvCache,
        proj: Projections,
    ) -> Result<Tensor> {
        let c = &self.config;
        let n = h.dim(0)?;
        let [q, k, v]: [Tensor; 3] = proj
            .apply_all([&a.q_proj, &a.k_proj, &a.v_proj], h)?
            .try_into()
            .expect("three projections");
        let rows = |x: Tensor, nh: usize, rotate: bool| -> Result<Vec<f32>> {
            let x = x.reshape((1, n, nh, c.head_dim))?;
            let x = if rotate {
                candle_nn::rotary_emb::rope_thd(&x, cos, sin)?
            } else {
                x
            };
            Ok(x.flatten_all()?.to_vec1::<f32>()?)
        };
        let q = rows(q, c.num_attention_heads, true)?;
        let k = rows(k, c.num_key_value_heads, true)?;
        let v = rows(v, c.num_key_value_heads, false)?;
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let out = cache.attend_host(layer, segments, &q, &k, &v, c.num_attention_heads, scale)?;
        Ok(Tensor::from_vec(
            out,
            (n, c.num_attention_heads * c.head_dim),
            &self.device,
        )?)
    }

    /// Differentiable causal attention with rotary positions over the sequences
    /// `segments` (`(first row, length)`, each from position 0): `q` `[rows, heads·d]`,
    /// `k`/`v` `[rows, kv_heads·d]` as the projections give them, the rope tables in f32;
    /// returns `[rows, heads·d]`.
    fn causal_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        segments: &[(usize, usize)],
        (cos, sin): (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        let c = &self.config;
        if CausalAttention::supports(q, c.head_dim) {
            let op = CausalAttention {
                segments: segments.to_vec(),
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                cos: cos.clone(),
                sin: sin.clone(),
            };
            return Ok(op.apply(q, k, v)?);
        }
        // Sequences of one length back to back are one batched product; other layouts
        // go one sequence at a time.
        let t = segments.first().map_or(0, |s| s.1);
        let tiled = segments.iter().enumerate().all(|(i, &s)| s == (i * t, t))
            && segments.len() * t == q.dim(0)?;
        if tiled {
            return self.batched_attention(q, k, v, (segments.len(), t), (cos, sin));
        }
        let outs = segments
            .iter()
            .map(|&(first, len)| {
                let rows = |x: &Tensor| x.narrow(0, first, len);
                self.batched_attention(&rows(q)?, &rows(k)?, &rows(v)?, (1, len), (cos, sin))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// The plain candle composition of `causal_attention` over `b` sequences of `t` tokens
    /// laid back to back (other devices and dtypes).
    fn batched_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (b, t): (usize, usize),
        (cos, sin): (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        let c = &self.config;
        let (nh, kvh, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        // The tables come in f32; their values are the model-dtype tables', so this
        // conversion is exact.
        let table = |x: &Tensor| x.narrow(0, 0, t)?.to_dtype(self.dtype);
        let (cos, sin) = (table(cos)?, table(sin)?);
        let heads = |x: &Tensor, n: usize| x.reshape((b, t, n, d))?.transpose(1, 2);
        let q = rope(&heads(q, nh)?, &cos, &sin, Ops::Differentiable)?;
        let k = rope(&heads(k, kvh)?, &cos, &sin, Ops::Differentiable)?;
        let v = heads(v, kvh)?;
        let group = nh / kvh;
        // Query heads that share a KV head are stacked as rows: [b, kv, group*t, d].
        let q = q.contiguous()?.reshape((b, kvh, group * t, d))?;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k.contiguous()?.transpose(2, 3)?)? * scale)?;
        let mask = causal_mask(t, self.dtype, &self.device)?;
        let masked = add_frozen(&scores.reshape((b, kvh, group, t, t))?, &mask)?.reshape((
            b,
            kvh,
            group * t,
            t,
        ))?;
        let probs =
            softmax(&masked.to_dtype(DType::F32)?, Ops::Differentiable)?.to_dtype(q.dtype())?;
        Ok(probs
            .matmul(&v.contiguous()?)?
            .reshape((b, nh, t, d))?
            .transpose(1, 2)?
            .reshape((b * t, nh * d))?)
    }
}

fn mlp(m: &Mlp, x: &Tensor, proj: Projections) -> Result<Tensor> {
    let [gate, up]: [Tensor; 2] = proj
        .apply_all([&m.gate_proj, &m.up_proj], x)?
        .try_into()
        .expect("two projections");
    proj.apply(&m.down_proj, &silu_product(&gate, &up)?)
}

/// `mlp` for the differentiable path: on the CPU in f32 the gate's SiLU and the product
/// are one fused op with a backward pass. `modes` are the gate, up and down projections'.
fn differentiable_mlp(m: &Mlp, x: &Tensor, modes: [Adapters; 3]) -> Result<Tensor> {
    let gate = m.gate_proj.forward(x, modes[0])?;
    let up = m.up_proj.forward(x, modes[1])?;
    let hidden = if train_ops::fused_applies(&gate) {
        train_ops::swiglu(&gate, &up)?
    } else {
        (candle_nn::ops::silu(&gate)? * up)?
    };
    m.down_proj.forward(&hidden, modes[2])
}

/// Additive mask `[t, t]`: query `i` sees keys `0..=i`. Made on `device` from one
/// position range, not uploaded whole.
fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let positions = Tensor::arange(0u32, t as u32, device)?;
    let zeros = Tensor::zeros((t, t), dtype, device)?;
    let hidden = Tensor::full(f32::NEG_INFINITY, (t, t), device)?.to_dtype(dtype)?;
    Ok(positions
        .reshape((1, t))?
        .broadcast_gt(&positions.reshape((t, 1))?)?
        .where_cond(&hidden, &zeros)?)
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, ops: Ops) -> Result<Tensor> {
    match ops {
        Ops::Fused => Ok(candle_nn::ops::rms_norm(x, weight, eps as f32)?),
        Ops::Differentiable
            if train_ops::fused_applies(x)
                && weight.dtype() == DType::F32
                && !weight.track_op() =>
        {
            Ok(train_ops::rms_norm(x, weight, eps)?)
        }
        Ops::Differentiable => {
            let dtype = x.dtype();
            let x = x.to_dtype(DType::F32)?;
            let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?;
            Ok(mul_frozen(&normed.to_dtype(dtype)?, weight)?)
        }
    }
}

fn softmax(x: &Tensor, ops: Ops) -> Result<Tensor> {
    match ops {
        Ops::Fused => Ok(candle_nn::ops::softmax_last_dim(x)?),
        Ops::Differentiable => {
            let max = x.max_keepdim(D::Minus1)?;
            let e = x.broadcast_sub(&max)?.exp()?;
            Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
        }
    }
}

/// Rotary embedding in the Hugging Face (two halves) convention on `[b, heads, t, d]`
/// with tables `[t, d/2]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, ops: Ops) -> Result<Tensor> {
    match ops {
        Ops::Fused => Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?),
        Ops::Differentiable => {
            let d = x.dim(D::Minus1)?;
            let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
            let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
            let x1 = x.narrow(D::Minus1, 0, d / 2)?;
            let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
            let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            Ok((mul_frozen(x, &cos)? + mul_frozen(&rotated, &sin)?)?)
        }
    }
}

/// cos/sin tables `[positions, head_dim/2]` in f32, with the config's frequency scaling.
fn rope_tables(c: &ModelConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let d = c.head_dim;
    // Computed in f32 as transformers does, so positions far out agree to the last bit
    // that matters.
    let mut inv_freq: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / (c.rope_theta as f32).powf((2 * i) as f32 / d as f32))
        .collect();
    match &c.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            inv_freq.iter_mut().for_each(|f| *f /= *factor as f32);
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let (factor, low, high) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
            );
            let old_len = *original_max_position_embeddings as f32;
            let low_freq_wavelen = old_len / low;
            let high_freq_wavelen = old_len / high;
            for f in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > low_freq_wavelen {
                    *f /= factor;
                } else if wavelen >= high_freq_wavelen {
                    let smooth = (old_len / wavelen - low) / (high - low);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
    }
    // Long-context models advertise 128k positions; tables that long cost memory for
    // nothing on the sequence lengths this tool trains and samples.
    let positions = c.max_position_embeddings.min(32_768);
    let inv = Tensor::from_vec(inv_freq, (1, d / 2), device)?;
    let pos = Tensor::arange(0u32, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}
