//! Key/value cache for the inference path. Each batch slot holds one sequence, sized when
//! a request is admitted (prompt + max new tokens), so decoding never reallocates and each
//! sequence keeps its own length and positions.
//!
//! Two storages: on the CPU in f32 each slot's buffers are plain host memory, one key and
//! one value buffer per layer and KV head (f32, or f16 to halve what attention reads:
//! `HostPrecision`), and attention runs directly over them
//! (`attend_host`, one pass over every sequence in the batch — a per-sequence chain of
//! small tensor ops costs more in dispatch than in arithmetic);
//! elsewhere (GPU, half precision) every layer keeps ONE key and ONE value tensor for all
//! slots, `[slots, kv_heads, positions, head_dim]`, so the decoder writes and attends over
//! every slot with a fixed number of tensor ops per layer (`decoder::batched`). Its
//! position axis is the longest capacity admitted so far; a slot's length says how much of
//! its row is valid.

use super::decoder::Segment;
use super::ops::cached_attention::attend_group;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

pub struct SlotCache {
    /// Host storage: per layer, per KV head, keys and values as `[positions, head_dim]`,
    /// row-major, so attention streams each head's positions contiguously; the vectors
    /// grow by whole positions up to their reserved capacity. Empty with tensor storage.
    host: Vec<HostLayer>,
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

/// How host storage keeps keys and values: `f32` or `f16` in configurations and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostPrecision {
    /// As computed: decoding gives the same bits whatever else is in the batch, and the
    /// same as before this choice existed.
    #[default]
    F32,
    /// Rounded to f16 (11 significant bits, as llama.cpp's default cache): half the
    /// memory attention reads, so longer contexts decode faster; logits move by about
    /// one part in 10⁴, which flips a greedy pick where two tokens are that close.
    F16,
}

impl std::str::FromStr for HostPrecision {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => bail!("KV cache precision {s:?}: expected f32 or f16"),
        }
    }
}

/// One KV head's keys or values of a slot and layer, `[positions, head_dim]`.
enum HeadRun {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl HeadRun {
    fn with_capacity(precision: HostPrecision, floats: usize) -> Self {
        match precision {
            HostPrecision::F32 => Self::F32(Vec::with_capacity(floats)),
            HostPrecision::F16 => Self::F16(Vec::with_capacity(floats)),
        }
    }

    fn push(&mut self, x: &[f32]) {
        match self {
            Self::F32(run) => run.extend_from_slice(x),
            Self::F16(run) => run.extend(x.iter().map(|&x| half::f16::from_f32(x))),
        }
    }

    /// The first `floats` values, in a run with room for `capacity`.
    fn prefix(&self, floats: usize, capacity: usize) -> Self {
        fn copy<T: Copy>(run: &[T], capacity: usize) -> Vec<T> {
            let mut copy = Vec::with_capacity(capacity);
            copy.extend_from_slice(run);
            copy
        }
        match self {
            Self::F32(run) => Self::F32(copy(&run[..floats], capacity)),
            Self::F16(run) => Self::F16(copy(&run[..floats], capacity)),
        }
    }
}

/// One layer of a slot's host storage: per KV head.
struct HostLayer {
    keys: Vec<HeadRun>,
    values: Vec<HeadRun>,
}

impl HostLayer {
    fn with_capacity(precision: HostPrecision, kv_heads: usize, floats: usize) -> Self {
        let buffers = || {
            (0..kv_heads)
                .map(|_| HeadRun::with_capacity(precision, floats))
                .collect()
        };
        Self {
            keys: buffers(),
            values: buffers(),
        }
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
    host_precision: HostPrecision,
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
            host_precision: HostPrecision::F32,
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

    /// Host storage keeps keys and values as `precision` says (f32 unless told).
    pub fn with_host_precision(mut self, precision: HostPrecision) -> Self {
        self.host_precision = precision;
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
                let per_head = capacity * self.head_dim;
                (0..self.layers)
                    .map(|_| HostLayer::with_capacity(self.host_precision, self.kv_heads, per_head))
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
            let layer = &mut cache.host[layer];
            for t in seg.start..seg.start + seg.len {
                for g in 0..kvh {
                    layer.keys[g].push(&k[t * row + g * d..][..d]);
                    layer.values[g].push(&v[t * row + g * d..][..d]);
                }
            }
        }
        let rows = q.len() / (heads * d);
        // Which segment, and which position in it, each packed row is.
        let mut owner = Vec::with_capacity(rows);
        for (si, seg) in segments.iter().enumerate() {
            owner.extend((0..seg.len).map(|t| (si, t)));
        }
        // One task per row and KV head: the query heads `g · group ..` read KV head `g`.
        let group = heads / kvh;
        let slots = &self.slots;
        let mut out = vec![0f32; rows * heads * d];
        out.par_chunks_mut(group * d).enumerate().for_each_init(
            Vec::new,
            |scratch, (task, out_heads)| {
                let (r, g) = (task / kvh, task % kvh);
                let (si, t) = owner[r];
                let seg = &segments[si];
                let cache = slots[seg.slot].as_ref().expect("slot checked above");
                let layer = &cache.host[layer];
                // Sees every cached position up to and including its own.
                let visible = cache.len + t + 1;
                let q_heads = &q[(r * heads + g * group) * d..][..group * d];
                let (keys, values) = (&layer.keys[g], &layer.values[g]);
                match (keys, values) {
                    (HeadRun::F32(k), HeadRun::F32(v)) => attend_group(
                        q_heads,
                        (k, v),
                        visible,
                        group,
                        d,
                        scale,
                        scratch,
                        out_heads,
                    ),
                    (HeadRun::F16(k), HeadRun::F16(v)) => attend_group(
                        q_heads,
                        (k, v),
                        visible,
                        group,
                        d,
                        scale,
                        scratch,
                        out_heads,
                    ),
                    _ => unreachable!("a slot's runs share one precision"),
                }
            },
        );
        Ok(out)
    }

    /// Makes `to` hold the first `len` positions of `from` (samples of one prompt share
    /// its prefill).
    pub fn copy_prefix(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let d = self.head_dim;
        let (Some(Some(src)), Some(Some(dst))) = (self.slots.get(from), self.slots.get(to)) else {
            bail!("KV cache slots {from} and {to} must both be allocated");
        };
        if len > src.len || len > dst.capacity {
            bail!("cannot copy {len} positions from slot {from} to slot {to}");
        }
        match &self.tensors {
            None => {
                let prefix = |heads: &[HeadRun]| -> Vec<HeadRun> {
                    heads
                        .iter()
                        .map(|h| h.prefix(len * d, dst.capacity * d))
                        .collect()
                };
                let copied = src
                    .host
                    .iter()
                    .map(|layer| HostLayer {
                        keys: prefix(&layer.keys),
                        values: prefix(&layer.values),
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

    /// Host storage: one more slot, empty, numbered `num_slots()` before the call.
    pub fn add_slot(&mut self) -> Result<()> {
        if self.tensors.is_some() {
            bail!("the KV cache keeps tensors, whose slot count is fixed");
        }
        self.slots.push(None);
        Ok(())
    }

    /// Host storage: moves `slots` into a cache of their own (same shape, every other
    /// slot empty), so two forward passes over disjoint sequences can run at once; `rejoin`
    /// puts them back. Moves the slots' buffer handles, never their contents.
    pub fn split_off(&mut self, slots: &[usize]) -> Result<KvCache> {
        if self.tensors.is_some() {
            bail!("the KV cache keeps tensors; only host storage splits by slot");
        }
        let mut part = KvCache {
            slots: (0..self.slots.len()).map(|_| None).collect(),
            tensors: None,
            host_precision: self.host_precision,
            layers: self.layers,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            dtype: self.dtype,
            device: self.device.clone(),
        };
        for &slot in slots {
            self.slot_mut(slot)?;
            part.slots[slot] = self.slots[slot].take();
        }
        Ok(part)
    }

    /// Takes back the slots `split_off` moved into `part`.
    pub fn rejoin(&mut self, part: KvCache) {
        for (slot, cache) in part.slots.into_iter().enumerate() {
            if cache.is_some() {
                self.slots[slot] = cache;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_off_moves_slots_and_rejoin_returns_them() -> Result<()> {
        let mut cache = KvCache::new(3, 2, 1, 4, DType::F32, &Device::Cpu);
        for slot in 0..3 {
            cache.allocate(slot, 8)?;
            cache.advance(slot, slot + 1);
        }
        let mut part = cache.split_off(&[0, 2])?;
        assert!(cache.slot(0).is_none() && cache.slot(2).is_none());
        assert_eq!(cache.slot(1).map(SlotCache::len), Some(2));
        assert_eq!(part.slot(2).map(SlotCache::len), Some(3));
        assert!(part.slot(1).is_none());
        // A slot moved away cannot be split off again, and the part advances on its own.
        assert!(cache.split_off(&[0]).is_err());
        part.advance(0, 4);
        cache.rejoin(part);
        let lens: Vec<_> = (0..3).map(|s| cache.slot(s).map(SlotCache::len)).collect();
        assert_eq!(lens, vec![Some(5), Some(2), Some(3)]);
        // Tensor storage does not split.
        let mut tensors = KvCache::new(1, 1, 1, 4, DType::F32, &Device::Cpu).with_tensor_storage();
        tensors.allocate(0, 4)?;
        assert!(tensors.split_off(&[0]).is_err());
        Ok(())
    }

    /// An f16 cache attends as an f32 cache that was handed the same keys and values
    /// rounded to f16, bit for bit, through prefill, decoding and a copied prefix; an f32
    /// cache keeps what it is given.
    #[test]
    fn f16_storage_is_f32_storage_of_rounded_values() -> Result<()> {
        let (layers, kv_heads, heads, d) = (2, 1, 3, 64);
        let row = kv_heads * d;
        let value = |i: usize| ((i * 7919 % 1013) as f32 - 506.0) * 3.7e-3;
        let rounded = |x: &[f32]| -> Vec<f32> {
            x.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
        };
        let mut half = KvCache::new(2, layers, kv_heads, d, DType::F32, &Device::Cpu)
            .with_host_precision(HostPrecision::F16);
        let mut full = KvCache::new(2, layers, kv_heads, d, DType::F32, &Device::Cpu);
        for cache in [&mut half, &mut full] {
            cache.allocate(0, 16)?;
            cache.allocate(1, 16)?;
        }
        // Six prompt rows into slot 0, then slot 1 takes its first four and both decode.
        let mut steps = vec![(
            vec![Segment {
                slot: 0,
                start: 0,
                len: 6,
            }],
            6,
        )];
        steps.push((
            vec![
                Segment {
                    slot: 0,
                    start: 0,
                    len: 1,
                },
                Segment {
                    slot: 1,
                    start: 1,
                    len: 1,
                },
            ],
            2,
        ));
        let mut offset = 0;
        for (step, (segments, rows)) in steps.iter().enumerate() {
            if step == 1 {
                half.copy_prefix(0, 1, 4)?;
                full.copy_prefix(0, 1, 4)?;
            }
            let kv: Vec<f32> = (offset..offset + rows * row).map(value).collect();
            let q: Vec<f32> = (0..rows * heads * d).map(|i| value(i + 5000)).collect();
            offset += rows * row;
            for layer in 0..layers {
                let got = half.attend_host(layer, segments, &q, &kv, &kv, heads, 0.125)?;
                let k = rounded(&kv);
                let want = full.attend_host(layer, segments, &q, &k, &k, heads, 0.125)?;
                let bits = |x: &[f32]| -> Vec<u32> { x.iter().map(|x| x.to_bits()).collect() };
                assert_eq!(bits(&got), bits(&want), "step {step}, layer {layer}");
                assert_ne!(k, kv, "the values must not already be f16");
            }
            for seg in segments {
                half.advance(seg.slot, seg.len);
                full.advance(seg.slot, seg.len);
            }
        }
        Ok(())
    }
}
