//! The tensor path of `Decoder::forward_packed`, which the GPU takes (and half precision
//! anywhere): a fixed number of tensor ops per layer, whatever the batch.
//!
//! * One upload per step (`StepPlan`) carries every index the step needs; the masks are
//!   built from it on the device, once per step, not per layer or sequence.
//! * q/k/v and gate/up are one GEMM each over weights concatenated at load (the layer's
//!   projections then hold views into them, so no weight is stored twice), narrowed after.
//! * Each layer writes the step's keys and values of every sequence into the cache with one
//!   scatter, then attends in at most two batched products: the decoding rows over every
//!   slot at once (`[slots, kv_heads, positions, head_dim]`, read in place, other slots'
//!   rows discarded), and the prefilling rows padded to their longest segment with their
//!   slots' keys gathered. Both mask by length on the device. This is the padded stepping
//!   stone toward a flash-decoding kernel that reads each slot only to its own length.

use super::{rms_norm, Decoder, DecoderLayer, Ops, Segment};
use crate::model::kv_cache::KvCache;
use crate::model::lora::{Adapters, LoraLinear};
use crate::model::transfer;
use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Tensor, TensorId};
use std::sync::{Arc, Mutex};

/// Weights of several projections of one input, concatenated along their outputs.
pub(super) struct Fused {
    /// The parts' weight and bias ids this was made from: a merge gives a part a new
    /// weight, and the concatenation is then made again.
    ids: Vec<TensorId>,
    weight: Tensor,
    bias: Option<Tensor>,
}

/// A layer's fused q/k/v and gate/up weights, made on first use unless load made them.
#[derive(Default)]
pub(super) struct FusedLayer {
    qkv: Mutex<Option<Arc<Fused>>>,
    gate_up: Mutex<Option<Arc<Fused>>>,
}

/// A part's weight as stored. Only dense weights come here: an int8 base's projections
/// run one by one (`project_each`).
fn dense(part: &LoraLinear) -> Result<&Tensor> {
    part.dense_weight()
        .ok_or_else(|| anyhow!("the batched decode path needs dense weights, not an int8 base"))
}

fn part_ids(parts: &[&LoraLinear]) -> Result<Vec<TensorId>> {
    let mut ids = Vec::new();
    for p in parts {
        ids.push(dense(p)?.id());
        ids.extend(p.bias().map(Tensor::id));
    }
    Ok(ids)
}

impl Fused {
    /// Concatenates the parts' weights (and biases, when any part has one).
    fn of(parts: &[&LoraLinear]) -> Result<Self> {
        let weights = parts.iter().map(|p| dense(p)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            ids: part_ids(parts)?,
            weight: Tensor::cat(&weights, 0)?,
            bias: fused_bias(parts)?,
        })
    }

    /// The cached concatenation of `parts`, made again when a part's weight changed.
    fn get(cache: &Mutex<Option<Arc<Fused>>>, parts: &[&LoraLinear]) -> Result<Arc<Fused>> {
        let mut slot = cache.lock().unwrap_or_else(|e| e.into_inner());
        let ids = part_ids(parts)?;
        if let Some(fused) = slot.as_ref().filter(|f| f.ids == ids) {
            return Ok(fused.clone());
        }
        *slot = None; // drop a stale copy before making the next
        let fused = Arc::new(Self::of(parts)?);
        *slot = Some(fused.clone());
        Ok(fused)
    }
}

fn fused_bias(parts: &[&LoraLinear]) -> Result<Option<Tensor>> {
    if parts.iter().all(|p| p.bias().is_none()) {
        return Ok(None);
    }
    let biases = parts
        .iter()
        .map(|p| match p.bias() {
            Some(b) => Ok(b.clone()),
            None => Ok(Tensor::zeros(
                p.shape().0,
                dense(p)?.dtype(),
                dense(p)?.device(),
            )?),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Tensor::cat(&biases, 0)?))
}

impl FusedLayer {
    /// Fuses a layer's q/k/v and gate/up in place (see `fuse_views`).
    pub(super) fn in_place(layer: &mut DecoderLayer) -> Result<Self> {
        if layer.self_attn.q_proj.base_is_int8() {
            // An int8 base (all projections) has no dense weights to concatenate.
            return Ok(Self::default());
        }
        let a = &mut layer.self_attn;
        let qkv = fuse_views(&mut [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj])?;
        let m = &mut layer.mlp;
        let gate_up = fuse_views(&mut [&mut m.gate_proj, &mut m.up_proj])?;
        Ok(Self {
            qkv: Mutex::new(Some(Arc::new(qkv))),
            gate_up: Mutex::new(Some(Arc::new(gate_up))),
        })
    }
}

/// Concatenates `parts`' weights and points each part at its rows of the result, so the
/// fused GEMM costs no second copy of the weights. Adapters and merged updates stay on
/// their parts.
fn fuse_views(parts: &mut [&mut LoraLinear]) -> Result<Fused> {
    let fused = {
        let shared: Vec<&LoraLinear> = parts.iter().map(|p| &**p).collect();
        Fused::of(&shared)?
    };
    let mut offset = 0;
    for part in parts.iter_mut() {
        let out = part.shape().0;
        part.share_weight(fused.weight.narrow(0, offset, out)?)?;
        offset += out;
    }
    let shared: Vec<&LoraLinear> = parts.iter().map(|p| &**p).collect();
    Ok(Fused {
        ids: part_ids(&shared)?,
        ..fused
    })
}

/// `x · Wᵀ + b` for the projections `parts`, whose weights `weight` concatenates (or one
/// projection's own), plus each part's adapter as `adapters` says: one GEMM for the base
/// weights in their dtype, with the weight read transposed in place.
fn project(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    parts: &[&LoraLinear],
    adapters: Adapters,
) -> Result<Tensor> {
    let mut y = x.matmul(&weight.t()?)?;
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    if matches!(adapters, Adapters::Dropout { .. }) && parts.iter().any(|p| p.adapter().is_some()) {
        bail!("the batched decode path runs adapters on or off, not with dropout");
    }
    let updates = parts
        .iter()
        .map(|p| p.low_rank_update(x, adapters))
        .collect::<Result<Vec<_>>>()?;
    if updates.iter().all(Option::is_none) {
        return Ok(y);
    }
    let rows = x.dim(0)?;
    let deltas = updates
        .into_iter()
        .zip(parts)
        .map(|(update, p)| match update {
            Some(u) => Ok(u.to_dtype(y.dtype())?),
            None => Ok(Tensor::zeros((rows, p.shape().0), y.dtype(), y.device())?),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((y + Tensor::cat(&deltas, 1)?)?)
}

/// `project` for `parts` side by side: one GEMM over the concatenation of their weights
/// cached in `fused`, or, for an int8 base (on the GPU, `--base-dtype int8`), which has
/// no dense weights to concatenate, each part's own product (`project_each`).
fn project_fused(
    x: &Tensor,
    fused: &Mutex<Option<Arc<Fused>>>,
    parts: &[&LoraLinear],
    adapters: Adapters,
) -> Result<Tensor> {
    if parts.iter().any(|p| p.base_is_int8()) {
        return project_each(x, parts, adapters);
    }
    let w = Fused::get(fused, parts)?;
    project(x, &w.weight, w.bias.as_ref(), parts, adapters)
}

/// `project` for one part, or `project_each` on an int8 base.
fn project_one(x: &Tensor, part: &LoraLinear, adapters: Adapters) -> Result<Tensor> {
    if part.base_is_int8() {
        return project_each(x, &[part], adapters);
    }
    project(x, dense(part)?, part.bias(), &[part], adapters)
}

/// Each part's projection of `x` through its own forward (an int8 base's kernel), side by
/// side.
fn project_each(x: &Tensor, parts: &[&LoraLinear], adapters: Adapters) -> Result<Tensor> {
    let ys = parts
        .iter()
        .map(|p| p.forward(x, adapters))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&ys, 1)?)
}

/// Added to a masked score: large and negative rather than −∞, since the mask is made by
/// multiplying a 0/1 tensor (0 · −∞ would be NaN).
const MASKED: f64 = -1e30;

/// Everything a step's layers need to know about where its rows go, uploaded once.
pub(super) struct StepPlan {
    /// `[rows · kv_heads, head_dim]` u32: each (row, KV head)'s row of the flattened cache
    /// tensors (see `KvCache::write_rows`).
    write_index: Tensor,
    decode: Option<DecodeGroup>,
    prefill: Option<PrefillGroup>,
    /// `[rows]` u32: each packed row's row of the group outputs laid one after another
    /// (decoding, then prefilling).
    gather: Tensor,
}

/// The rows that decode one token: attention over every slot at once.
struct DecodeGroup {
    /// `[slots]` u32: the packed row of each slot's token (row 0 for a slot that has none;
    /// its output is discarded).
    slot_rows: Tensor,
    /// `[slots, 1, 1, keys]` f32: 0 where a slot's token sees the position, `MASKED`
    /// where not.
    mask: Tensor,
    /// Positions read: the longest sequence among the decoding slots.
    keys: usize,
}

/// The rows of segments longer than one token, padded to the longest.
struct PrefillGroup {
    /// `[segments · len]` u32: the packed row of each padded row (padding repeats a
    /// segment's last row).
    rows: Tensor,
    /// `[segments · kv_heads · keys]` u32: the flattened cache rows each segment reads.
    kv_rows: Tensor,
    /// `[segments, 1, 1, len, keys]` f32, the causal mask with each segment's past.
    mask: Tensor,
    segments: usize,
    len: usize,
    keys: usize,
}

/// u32 pieces laid one after another in one buffer, for one upload.
#[derive(Default)]
struct Pieces {
    data: Vec<u32>,
    spans: Vec<(usize, usize)>,
}

impl Pieces {
    /// Appends `values`; returns the piece's number.
    fn push(&mut self, values: impl IntoIterator<Item = u32>) -> usize {
        let start = self.data.len();
        self.data.extend(values);
        self.spans.push((start, self.data.len() - start));
        self.spans.len() - 1
    }
}

impl StepPlan {
    /// The plan for `segments` (as `forward_packed` takes them) over `cache`'s slots, with
    /// `kv_heads` heads of `head_dim`. Checks every slot first: allocated, listed once,
    /// with room for its tokens.
    pub(super) fn new(
        segments: &[Segment],
        cache: &KvCache,
        (kv_heads, head_dim): (usize, usize),
        device: &candle_core::Device,
    ) -> Result<Self> {
        let slots = cache.num_slots();
        let positions = cache.positions();
        let mut seen = vec![false; slots];
        let mut past = Vec::with_capacity(segments.len());
        for seg in segments {
            let Some(slot) = cache.slot(seg.slot) else {
                bail!("KV cache slot {} is not allocated", seg.slot);
            };
            if std::mem::replace(&mut seen[seg.slot], true) {
                bail!("KV cache slot {} has two segments in one step", seg.slot);
            }
            if slot.len() + seg.len > slot.capacity() {
                bail!(
                    "KV cache slot {} is full ({} positions)",
                    seg.slot,
                    slot.capacity()
                );
            }
            past.push(slot.len());
        }
        let rows = segments.iter().map(|s| s.start + s.len).max().unwrap_or(0);
        // Row of the flattened cache: (slot · kv_heads + head) · positions + position.
        let cache_row = |slot: usize, head: usize, pos: usize| {
            ((slot * kv_heads + head) * positions + pos) as u32
        };
        let mut pieces = Pieces::default();
        let mut write = vec![0u32; rows * kv_heads];
        for (seg, &p) in segments.iter().zip(&past) {
            for t in 0..seg.len {
                for h in 0..kv_heads {
                    write[(seg.start + t) * kv_heads + h] = cache_row(seg.slot, h, p + t);
                }
            }
        }
        let write = pieces.push(write);
        let mut gather = vec![0u32; rows];

        let decoding: Vec<(&Segment, usize)> = segments
            .iter()
            .zip(past.iter().copied())
            .filter(|(s, _)| s.len == 1)
            .collect();
        let decode = (!decoding.is_empty()).then(|| {
            let (mut slot_rows, mut query_pos) = (vec![0u32; slots], vec![0u32; slots]);
            for &(seg, p) in &decoding {
                slot_rows[seg.slot] = seg.start as u32;
                query_pos[seg.slot] = p as u32;
                gather[seg.start] = seg.slot as u32;
            }
            let keys = decoding.iter().map(|&(_, p)| p + 1).max().unwrap_or(1);
            (pieces.push(slot_rows), pieces.push(query_pos), keys)
        });

        let prefilling: Vec<(&Segment, usize)> = segments
            .iter()
            .zip(past.iter().copied())
            .filter(|(s, _)| s.len > 1)
            .collect();
        let prefill = (!prefilling.is_empty()).then(|| {
            let base = if decode.is_some() { slots } else { 0 };
            let len = prefilling.iter().map(|(s, _)| s.len).max().unwrap_or(0);
            let keys = prefilling
                .iter()
                .map(|&(s, p)| p + s.len)
                .max()
                .unwrap_or(0);
            let n = prefilling.len();
            let (mut rows_p, mut query_pos) = (vec![0u32; n * len], vec![0u32; n * len]);
            let mut kv_rows = Vec::with_capacity(n * kv_heads * keys);
            for (i, &(seg, p)) in prefilling.iter().enumerate() {
                for t in 0..len {
                    let real = t.min(seg.len - 1);
                    rows_p[i * len + t] = (seg.start + real) as u32;
                    query_pos[i * len + t] = (p + real) as u32;
                }
                for t in 0..seg.len {
                    gather[seg.start + t] = (base + i * len + t) as u32;
                }
                for h in 0..kv_heads {
                    kv_rows.extend((0..keys).map(|j| cache_row(seg.slot, h, j)));
                }
            }
            (
                pieces.push(rows_p),
                pieces.push(query_pos),
                pieces.push(kv_rows),
                (n, len, keys),
            )
        });
        let gather = pieces.push(gather);
        let longest = decode.map_or(0, |d| d.2).max(prefill.map_or(0, |p| p.3 .2));
        let key_pos = pieces.push(0..longest as u32);

        let all = transfer::upload_u32(&pieces.data, device)?;
        let piece = |i: usize| all.narrow(0, pieces.spans[i].0, pieces.spans[i].1);
        // `[queries, keys]` additive mask: key j is visible to a query at position p when
        // j ≤ p.
        let mask = |query_pos: &Tensor, keys: usize| -> Result<Tensor> {
            let n = query_pos.dim(0)?;
            Ok(piece(key_pos)?
                .narrow(0, 0, keys)?
                .reshape((1, keys))?
                .broadcast_gt(&query_pos.reshape((n, 1))?)?
                .to_dtype(DType::F32)?
                .affine(MASKED, 0.0)?)
        };
        let write_rows = rows * kv_heads;
        Ok(Self {
            write_index: piece(write)?
                .reshape((write_rows, 1))?
                .broadcast_as((write_rows, head_dim))?
                .contiguous()?,
            decode: decode
                .map(|(slot_rows, query_pos, keys)| -> Result<DecodeGroup> {
                    Ok(DecodeGroup {
                        slot_rows: piece(slot_rows)?,
                        mask: mask(&piece(query_pos)?, keys)?.reshape((slots, 1, 1, keys))?,
                        keys,
                    })
                })
                .transpose()?,
            prefill: prefill
                .map(
                    |(rows, query_pos, kv_rows, (n, len, keys))| -> Result<PrefillGroup> {
                        Ok(PrefillGroup {
                            rows: piece(rows)?,
                            kv_rows: piece(kv_rows)?,
                            mask: mask(&piece(query_pos)?, keys)?.reshape((n, 1, 1, len, keys))?,
                            segments: n,
                            len,
                            keys,
                        })
                    },
                )
                .transpose()?,
            gather: piece(gather)?,
        })
    }

    /// Attention of every packed row: `q` `[rows, heads · head_dim]` with rope applied,
    /// over `cache` (one layer's `[slots, kv_heads, positions, head_dim]` keys and values,
    /// this step's already written). Returns `[rows, heads · head_dim]` in `dtype`.
    fn attend(
        &self,
        q: &Tensor,
        (kc, vc): &(Tensor, Tensor),
        heads: usize,
        dtype: DType,
    ) -> Result<Tensor> {
        let (slots, kv_heads, _, d) = kc.dims4()?;
        let group = heads / kv_heads;
        let scale = 1.0 / (d as f64).sqrt();
        // Scores in f32, scaled and masked, to probabilities in the model's dtype.
        let probs = |scores: Tensor, mask: &Tensor| -> Result<Tensor> {
            let scores = scores.to_dtype(DType::F32)?.affine(scale, 0.0)?;
            Ok(candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?.to_dtype(dtype)?)
        };
        let mut outs = Vec::with_capacity(2);
        if let Some(g) = &self.decode {
            // Query heads that share a KV head are the rows of one product: [slots, kv,
            // group, d] against the slots' keys in place.
            let q = q
                .index_select(&g.slot_rows, 0)?
                .reshape((slots, kv_heads, group, d))?;
            let keys = kc.narrow(2, 0, g.keys)?;
            let values = vc.narrow(2, 0, g.keys)?;
            let p = probs(q.matmul(&keys.t()?)?, &g.mask)?;
            outs.push(p.matmul(&values)?.reshape((slots, heads * d))?);
        }
        if let Some(g) = &self.prefill {
            let (n, len, keys) = (g.segments, g.len, g.keys);
            // [n, len, kv, group, d] → [n, kv, group · len, d]
            let q = q
                .index_select(&g.rows, 0)?
                .reshape((n, len, kv_heads, group, d))?
                .permute((0, 2, 3, 1, 4))?
                .contiguous()?
                .reshape((n, kv_heads, group * len, d))?;
            let read = |c: &Tensor| -> Result<Tensor> {
                Ok(c.reshape((c.elem_count() / d, d))?
                    .index_select(&g.kv_rows, 0)?
                    .reshape((n, kv_heads, keys, d))?)
            };
            let (k, v) = (read(kc)?, read(vc)?);
            let scores = q
                .matmul(&k.t()?)?
                .reshape((n, kv_heads, group, len, keys))?;
            let p = probs(scores, &g.mask)?.reshape((n, kv_heads, group * len, keys))?;
            outs.push(
                p.matmul(&v)?
                    .reshape((n, kv_heads, group, len, d))?
                    .permute((0, 3, 1, 2, 4))?
                    .contiguous()?
                    .reshape((n * len, heads * d))?,
            );
        }
        let out = match outs.len() {
            1 => outs.pop().expect("one group"),
            _ => Tensor::cat(&outs, 0)?,
        };
        Ok(out.index_select(&self.gather, 0)?)
    }
}

impl Decoder {
    /// `forward_packed` over tensor KV storage (see the module doc). `adapters` on or off;
    /// the projections run in the weights' dtype (`Precision` picks CPU f32 kernels, which
    /// this path does not use).
    pub(super) fn forward_batched(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        segments: &[Segment],
        cache: &mut KvCache,
        adapters: Adapters,
    ) -> Result<Tensor> {
        let c = &self.config;
        let plan = StepPlan::new(
            segments,
            cache,
            (c.num_key_value_heads, c.head_dim),
            &self.device,
        )?;
        let mut x = self.embed_tokens.index_select(tokens, 0)?;
        let cos = self.cos.index_select(positions, 0)?;
        let sin = self.sin.index_select(positions, 0)?;
        for li in 0..self.layers.len() {
            x = self.batched_layer(li, &x, (&cos, &sin), &plan, cache, adapters)?;
        }
        for seg in segments {
            cache.advance(seg.slot, seg.len);
        }
        rms_norm(&x, &self.norm, c.rms_norm_eps, Ops::Fused)
    }

    fn batched_layer(
        &self,
        li: usize,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        plan: &StepPlan,
        cache: &KvCache,
        adapters: Adapters,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (layer, fused) = (&self.layers[li], &self.fused[li]);
        let (n, heads, kv_heads, d) = (
            x.dim(0)?,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        );
        let h = rms_norm(x, &layer.input_layernorm, c.rms_norm_eps, Ops::Fused)?;
        let a = &layer.self_attn;
        let parts = [&a.q_proj, &a.k_proj, &a.v_proj];
        let qkv = project_fused(&h, &fused.qkv, &parts, adapters)?;
        // Rope on the packed rows as they are, [1, rows, heads, d], each row at its own
        // position through the gathered tables.
        let roped = |from: usize, nh: usize| -> Result<Tensor> {
            let x = qkv.narrow(1, from, nh * d)?.contiguous()?;
            Ok(candle_nn::rotary_emb::rope_thd(
                &x.reshape((1, n, nh, d))?,
                cos,
                sin,
            )?)
        };
        let q = roped(0, heads)?.reshape((n, heads * d))?;
        let k = roped(heads * d, kv_heads)?.reshape((n * kv_heads, d))?;
        let v = qkv
            .narrow(1, (heads + kv_heads) * d, kv_heads * d)?
            .contiguous()?
            .reshape((n * kv_heads, d))?;
        cache.write_rows(li, &k, &v, &plan.write_index)?;
        let attn = plan.attend(&q, cache.layer_tensors(li)?, heads, self.dtype)?;
        let o = &a.o_proj;
        let x = (x + project_one(&attn, o, adapters)?)?;

        let h = rms_norm(
            &x,
            &layer.post_attention_layernorm,
            c.rms_norm_eps,
            Ops::Fused,
        )?;
        let m = &layer.mlp;
        let parts = [&m.gate_proj, &m.up_proj];
        let gate_up = project_fused(&h, &fused.gate_up, &parts, adapters)?;
        let inter = c.intermediate_size;
        let act = (candle_nn::ops::silu(&gate_up.narrow(1, 0, inter)?)?
            * gate_up.narrow(1, inter, inter)?)?;
        let down = &m.down_proj;
        Ok((x + project_one(&act, down, adapters)?)?)
    }
}
