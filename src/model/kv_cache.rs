//! Key/value cache for the inference path. Each batch slot holds one sequence, sized when
//! a request is admitted (prompt + max new tokens), so decoding never reallocates and each
//! sequence keeps its own length and positions.
//!
//! Two storages: on the CPU in f32 each slot's buffers are plain host memory and attention
//! runs directly over them (`attend_host`, one pass over every sequence in the batch — a
//! per-sequence chain of small tensor ops costs more in dispatch than in arithmetic);
//! elsewhere (GPU, half precision) every layer keeps ONE key and ONE value tensor for all
//! slots, `[slots, kv_heads, positions, head_dim]`, so the decoder writes and attends over
//! every slot with a fixed number of tensor ops per layer (`decoder::batched`). Its
//! position axis is the longest capacity admitted so far; a slot's length says how much of
//! its row is valid.

use super::decoder::Segment;
use super::ops::dot::dot_portable;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

pub struct SlotCache {
    /// Host storage: per layer, keys and values as `[positions, kv_heads, head_dim]`,
    /// row-major; the vectors grow by whole positions up to their reserved capacity. Empty
    /// with tensor storage.
    host: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
    capacity: usize,
}

impl SlotCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Tensor storage: per layer, the keys and values of every slot.
struct SlottedTensors {
    /// `[slots, kv_heads, positions, head_dim]` each; empty until a slot is allocated.
    layers: Vec<(Tensor, Tensor)>,
    positions: usize,
}

pub struct KvCache {
    slots: Vec<Option<SlotCache>>,
    /// `None`: host storage.
    tensors: Option<SlottedTensors>,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

impl KvCache {
    pub fn new(
        num_slots: usize,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        let host = device.is_cpu() && dtype == DType::F32;
        Self {
            slots: (0..num_slots).map(|_| None).collect(),
            tensors: (!host).then(|| SlottedTensors {
                layers: Vec::new(),
                positions: 0,
            }),
            layers,
            kv_heads,
            head_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Keeps tensor storage even where host buffers would be used, so the path the GPU
    /// takes (`decoder::batched`) can be checked on the CPU in f32.
    pub fn with_tensor_storage(mut self) -> Self {
        if self.tensors.is_none() {
            self.tensors = Some(SlottedTensors {
                layers: Vec::new(),
                positions: 0,
            });
        }
        self
    }

    pub fn num_slots(&self) -> usize {
        self.slots.len()
    }

    /// Whether attention runs over host buffers (`attend_host`) rather than the slotted
    /// tensors (`write_rows`, `layer_tensors`).
    pub fn is_host(&self) -> bool {
        self.tensors.is_none()
    }

    /// Tensor storage: gives every slot room for `capacity` positions now, so that admitting
    /// requests up to that size later allocates and copies nothing (the engine reserves
    /// its longest request first). Host storage reserves per slot, in `allocate`.
    pub fn reserve(&mut self, capacity: usize) -> Result<()> {
        if let Some(tensors) = &mut self.tensors {
            let shape = (self.slots.len(), self.kv_heads, self.head_dim);
            tensors.reserve(capacity, shape, self.layers, self.dtype, &self.device)?;
        }
        Ok(())
    }

    /// Gives `slot` room for `capacity` positions, dropping what it held.
    pub fn allocate(&mut self, slot: usize, capacity: usize) -> Result<()> {
        let host = match &mut self.tensors {
            None => {
                // Reserved, not zeroed: the pages are touched only as positions are written.
                let row = self.kv_heads * self.head_dim;
                (0..self.layers)
                    .map(|_| {
                        (
                            Vec::with_capacity(capacity * row),
                            Vec::with_capacity(capacity * row),
                        )
                    })
                    .collect()
            }
            Some(tensors) => {
                let shape = (self.slots.len(), self.kv_heads, self.head_dim);
                tensors.reserve(capacity, shape, self.layers, self.dtype, &self.device)?;
                Vec::new()
            }
        };
        self.slots[slot] = Some(SlotCache {
            host,
            len: 0,
            capacity,
        });
        Ok(())
    }

    pub fn free(&mut self, slot: usize) {
        self.slots[slot] = None;
    }

    pub fn slot(&self, slot: usize) -> Option<&SlotCache> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, slot: usize) -> Result<&mut SlotCache> {
        match self.slots.get_mut(slot).and_then(Option::as_mut) {
            Some(cache) => Ok(cache),
            None => bail!("KV cache slot {slot} is not allocated"),
        }
    }

    /// Tensor storage: the length of the position axis every slot shares.
    pub(super) fn positions(&self) -> usize {
        self.tensors.as_ref().map_or(0, |t| t.positions)
    }

    /// Tensor storage: keys and values of `layer`, `[slots, kv_heads, positions,
    /// head_dim]`.
    pub(super) fn layer_tensors(&self, layer: usize) -> Result<&(Tensor, Tensor)> {
        match self.tensors.as_ref().and_then(|t| t.layers.get(layer)) {
            Some(kv) => Ok(kv),
            None => bail!("KV cache: no tensor storage for layer {layer}"),
        }
    }

    /// Tensor storage: writes `k` and `v` (`[rows · kv_heads, head_dim]`) of `layer` into
    /// the rows `index` names of the flattened `[slots · kv_heads · positions, head_dim]`
    /// buffers (`index` is that shape's u32 row number, repeated along `head_dim`): one
    /// scatter each for every sequence of the step. Slot lengths advance through
    /// `advance`, once every layer has been written.
    pub(super) fn write_rows(
        &self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        index: &Tensor,
    ) -> Result<()> {
        let (kc, vc) = self.layer_tensors(layer)?;
        let rows = kc.elem_count() / self.head_dim;
        let flat = |t: &Tensor| t.reshape((rows, self.head_dim));
        flat(kc)?.scatter_set(index, k, 0)?;
        flat(vc)?.scatter_set(index, v, 0)?;
        Ok(())
    }

    /// Host storage: appends each segment's keys and values of `layer` to its slot and
    /// returns causal attention for every packed row. `q` is `[rows, heads, head_dim]`,
    /// `k` and `v` are `[rows, kv_heads, head_dim]` (row-major); the result is `[rows,
    /// heads * head_dim]`. Query head `h` reads KV head `h / (heads / kv_heads)`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_host(
        &mut self,
        layer: usize,
        segments: &[Segment],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        heads: usize,
        scale: f32,
    ) -> Result<Vec<f32>> {
        if self.tensors.is_some() {
            bail!("the KV cache keeps tensors; attention over them is decoder::batched");
        }
        let (kvh, d) = (self.kv_heads, self.head_dim);
        let row = kvh * d;
        for seg in segments {
            let cache = self.slot_mut(seg.slot)?;
            if cache.len + seg.len > cache.capacity {
                bail!(
                    "KV cache slot {} is full ({} positions)",
                    seg.slot,
                    cache.capacity
                );
            }
            let (kc, vc) = &mut cache.host[layer];
            kc.extend_from_slice(&k[seg.start * row..(seg.start + seg.len) * row]);
            vc.extend_from_slice(&v[seg.start * row..(seg.start + seg.len) * row]);
        }
        let rows = q.len() / (heads * d);
        // Which segment, and which position in it, each packed row is.
        let mut owner = Vec::with_capacity(rows);
        for (si, seg) in segments.iter().enumerate() {
            owner.extend((0..seg.len).map(|t| (si, t)));
        }
        let shape = HeadShape { heads, kvh, d };
        let slots = &self.slots;
        let mut out = vec![0f32; rows * heads * d];
        out.par_chunks_mut(heads * d)
            .zip(owner.par_iter())
            .enumerate()
            .for_each(|(r, (out_row, &(si, t)))| {
                let seg = &segments[si];
                let cache = slots[seg.slot].as_ref().expect("slot checked above");
                let (kc, vc) = &cache.host[layer];
                // Sees every cached position up to and including its own.
                let visible = cache.len + t + 1;
                let q_row = &q[r * heads * d..][..heads * d];
                attend_row(q_row, (kc, vc), visible, shape, scale, out_row);
            });
        Ok(out)
    }

    /// Makes `to` hold the first `len` positions of `from` (samples of one prompt share
    /// its prefill).
    pub fn copy_prefix(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let row = self.kv_heads * self.head_dim;
        let (Some(Some(src)), Some(Some(dst))) = (self.slots.get(from), self.slots.get(to)) else {
            bail!("KV cache slots {from} and {to} must both be allocated");
        };
        if len > src.len || len > dst.capacity {
            bail!("cannot copy {len} positions from slot {from} to slot {to}");
        }
        match &self.tensors {
            None => {
                let copied = src
                    .host
                    .iter()
                    .map(|(k, v)| {
                        let mut kc = Vec::with_capacity(dst.capacity * row);
                        let mut vc = Vec::with_capacity(dst.capacity * row);
                        kc.extend_from_slice(&k[..len * row]);
                        vc.extend_from_slice(&v[..len * row]);
                        (kc, vc)
                    })
                    .collect();
                self.slots[to].as_mut().unwrap().host = copied;
            }
            // The whole row of the slot: one copy per tensor, whatever `len`.
            Some(tensors) => {
                for (k, v) in &tensors.layers {
                    k.slice_set(&k.narrow(0, from, 1)?.copy()?, 0, to)?;
                    v.slice_set(&v.narrow(0, from, 1)?.copy()?, 0, to)?;
                }
            }
        }
        self.slots[to].as_mut().unwrap().len = len;
        Ok(())
    }

    pub fn advance(&mut self, slot: usize, n: usize) {
        if let Some(cache) = self.slots[slot].as_mut() {
            cache.len += n;
        }
    }
}

impl SlottedTensors {
    /// Makes the position axis at least `capacity` long, copying what the slots hold;
    /// `(slots, kv_heads, head_dim)` is the rest of the shape.
    fn reserve(
        &mut self,
        capacity: usize,
        (slots, kv_heads, head_dim): (usize, usize, usize),
        layers: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<()> {
        if capacity <= self.positions && !self.layers.is_empty() {
            return Ok(());
        }
        let positions = capacity;
        let shape = (slots, kv_heads, positions, head_dim);
        // Layer by layer, so the old and the new buffers coexist for one layer only.
        for layer in 0..layers {
            let k = Tensor::zeros(shape, dtype, device)?;
            let v = Tensor::zeros(shape, dtype, device)?;
            match self.layers.get_mut(layer) {
                Some(old) => {
                    k.slice_set(&old.0, 2, 0)?;
                    v.slice_set(&old.1, 2, 0)?;
                    *old = (k, v);
                }
                None => self.layers.push((k, v)),
            }
        }
        self.positions = positions;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct HeadShape {
    heads: usize,
    kvh: usize,
    d: usize,
}

/// Attention of one query row (all heads) over the first `visible` cached positions,
/// written to `out` `[heads · d]` (zeroed). With AVX-512 and a head size of 64 or 128 it
/// runs on 512-bit vectors with each head's output kept in registers; otherwise the
/// portable loop, compiled a second time for AVX2 where the CPU has it.
fn attend_row(
    q: &[f32],
    kv: (&[f32], &[f32]),
    visible: usize,
    shape: HeadShape,
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // Safety: the CPU supports the features the functions are compiled for, and
            // `attend_host` sized the slices for `visible` positions of this shape.
            match shape.d {
                64 => return unsafe { avx512::attend_row::<4>(q, kv, visible, shape, scale, out) },
                128 => {
                    return unsafe { avx512::attend_row::<8>(q, kv, visible, shape, scale, out) }
                }
                _ => {}
            }
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // Safety: the CPU supports the features the function is compiled for.
            return unsafe { attend_row_avx2(q, kv, visible, shape, scale, out) };
        }
    }
    attend_row_portable(q, kv, visible, shape, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_row_avx2(
    q: &[f32],
    kv: (&[f32], &[f32]),
    visible: usize,
    shape: HeadShape,
    scale: f32,
    out: &mut [f32],
) {
    attend_row_portable(q, kv, visible, shape, scale, out)
}

#[inline(always)]
fn attend_row_portable(
    q: &[f32],
    (kc, vc): (&[f32], &[f32]),
    visible: usize,
    HeadShape { heads, kvh, d }: HeadShape,
    scale: f32,
    out: &mut [f32],
) {
    let row = kvh * d;
    let group = heads / kvh;
    let mut scores = vec![0f32; visible];
    for h in 0..heads {
        let kv = h / group;
        let qh = &q[h * d..][..d];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            let kj = &kc[j * row + kv * d..][..d];
            *s = dot_portable(qh, kj) * scale;
            max = max.max(*s);
        }
        let mut total = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        let oh = &mut out[h * d..(h + 1) * d];
        for (j, &p) in scores.iter().enumerate() {
            let vj = &vc[j * row + kv * d..][..d];
            let w = p / total;
            for (o, &x) in oh.iter_mut().zip(vj) {
                *o += w * x;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::HeadShape;
    use std::arch::x86_64::*;

    /// `s ← exp(s − max)` over `scores` (all ≤ max), 16 at a time; returns Σ s.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted_in_place(scores: &mut [f32], max: f32) -> f32 {
        let shift = _mm512_set1_ps(max);
        let mut total = _mm512_setzero_ps();
        for chunk in scores.chunks_mut(16) {
            let mask: __mmask16 = (1u32 << chunk.len()).wrapping_sub(1) as __mmask16;
            let x = _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, chunk.as_ptr()), shift);
            let e = _mm512_maskz_mov_ps(mask, exp(x));
            _mm512_mask_storeu_ps(chunk.as_mut_ptr(), mask, e);
            total = _mm512_add_ps(total, e);
        }
        _mm512_reduce_add_ps(total)
    }

    /// eˣ for x ≤ 0 to within a few ulp: x = n·ln 2 + r with |r| ≤ ln 2 / 2, eʳ by its
    /// degree-6 Taylor polynomial, then scaled by 2ⁿ (`vscalefps`, which flushes the very
    /// negative to 0). libm's scalar `expf` was a tenth of a decode step.
    #[target_feature(enable = "avx512f")]
    unsafe fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 in two parts, so n · ln 2 is subtracted without rounding error.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// `attend_row` for a head size of 16 · `C`: the query head and the output head
    /// live in `C` registers each while the cached positions stream past.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend_row<const C: usize>(
        q: &[f32],
        (kc, vc): (&[f32], &[f32]),
        visible: usize,
        HeadShape { heads, kvh, d }: HeadShape,
        scale: f32,
        out: &mut [f32],
    ) {
        assert!(d == 16 * C && q.len() >= heads * d && out.len() >= heads * d);
        assert!(kc.len() >= visible * kvh * d && vc.len() >= visible * kvh * d);
        let row = kvh * d;
        let group = heads / kvh;
        let mut scores = vec![0f32; visible];
        for h in 0..heads {
            let kv = h / group;
            let mut qh = [_mm512_setzero_ps(); C];
            for (c, v) in qh.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(q.as_ptr().add(h * d + 16 * c));
            }
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                let kj = kc.as_ptr().add(j * row + kv * d);
                let mut acc = _mm512_mul_ps(qh[0], _mm512_loadu_ps(kj));
                for (c, qv) in qh.iter().enumerate().skip(1) {
                    acc = _mm512_fmadd_ps(*qv, _mm512_loadu_ps(kj.add(16 * c)), acc);
                }
                *s = _mm512_reduce_add_ps(acc) * scale;
                max = max.max(*s);
            }
            let inv_total = 1.0 / exp_shifted_in_place(&mut scores, max);
            let mut oh = [_mm512_setzero_ps(); C];
            for (j, &p) in scores.iter().enumerate() {
                let vj = vc.as_ptr().add(j * row + kv * d);
                let w = _mm512_set1_ps(p * inv_total);
                for (c, o) in oh.iter_mut().enumerate() {
                    *o = _mm512_fmadd_ps(w, _mm512_loadu_ps(vj.add(16 * c)), *o);
                }
            }
            for (c, o) in oh.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(h * d + 16 * c), *o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The dispatched kernel (AVX-512 for head sizes 64 and 128 where the CPU has it)
    /// against the portable loop: same attention up to f32 summation order.
    #[test]
    fn attention_kernels_agree() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (heads, kvh, d, visible) in [(9, 3, 64, 37), (4, 2, 128, 5), (4, 4, 16, 9)] {
            let shape = HeadShape { heads, kvh, d };
            let mut random =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
            let q = random(heads * d);
            let (k, v) = (random(visible * kvh * d), random(visible * kvh * d));
            let mut fast = vec![0f32; heads * d];
            let mut plain = vec![0f32; heads * d];
            attend_row(&q, (&k, &v), visible, shape, 0.125, &mut fast);
            attend_row_portable(&q, (&k, &v), visible, shape, 0.125, &mut plain);
            for (i, (a, b)) in fast.iter().zip(&plain).enumerate() {
                assert!((a - b).abs() <= 1e-5, "d={d}: element {i}: {a} vs {b}");
            }
            assert!(plain.iter().any(|x| x.abs() > 1e-3));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_matches_libm() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIP vector exp: no AVX-512 on this CPU");
            return;
        }
        let xs: Vec<f32> = (0..2000)
            .map(|i| -(i as f32) * 0.0517)
            .chain([0.0, -1e-8, -88.0, -200.0, f32::NEG_INFINITY])
            .collect();
        let mut got = xs.clone();
        // Safety: the CPU has AVX-512F (checked above).
        let total = unsafe { avx512::exp_shifted_in_place(&mut got, 0.0) };
        for (&x, &e) in xs.iter().zip(&got) {
            let want = x.exp();
            assert!(
                (e - want).abs() <= 4.0 * f32::EPSILON * want.max(f32::MIN_POSITIVE),
                "exp({x}) = {e}, libm {want}"
            );
        }
        let want_total: f32 = xs.iter().map(|x| x.exp()).sum();
        assert!((total - want_total).abs() <= 1e-5 * want_total);
    }
}
