//! Per-sequence key/value cache for the inference path. Each batch slot owns
//! preallocated `[kv_heads, capacity, head_dim]` buffers per layer, sized when a request
//! is admitted (prompt + max new tokens), so decoding never reallocates and each
//! sequence keeps its own length and positions.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

pub struct SlotCache {
    /// (keys, values) per layer.
    layers: Vec<(Tensor, Tensor)>,
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

pub struct KvCache {
    slots: Vec<Option<SlotCache>>,
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
        Self {
            slots: (0..num_slots).map(|_| None).collect(),
            layers,
            kv_heads,
            head_dim,
            dtype,
            device: device.clone(),
        }
    }

    pub fn num_slots(&self) -> usize {
        self.slots.len()
    }

    /// Gives `slot` fresh buffers for `capacity` positions, dropping what it held.
    pub fn allocate(&mut self, slot: usize, capacity: usize) -> Result<()> {
        let shape = (self.kv_heads, capacity, self.head_dim);
        let layers = (0..self.layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, self.dtype, &self.device)?,
                    Tensor::zeros(shape, self.dtype, &self.device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        self.slots[slot] = Some(SlotCache {
            layers,
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

    /// Writes `k`, `v` (`[kv_heads, n, head_dim]`) of `layer` after the slot's current
    /// length and returns all keys and values so far. The slot's length advances only
    /// through `advance`, once every layer has been written.
    pub fn append(
        &mut self,
        slot: usize,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let Some(cache) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            bail!("KV cache slot {slot} is not allocated");
        };
        let n = k.dim(1)?;
        let end = cache.len + n;
        if end > cache.capacity {
            bail!(
                "KV cache slot {slot} is full ({} positions)",
                cache.capacity
            );
        }
        let (kc, vc) = &cache.layers[layer];
        kc.slice_set(&k.contiguous()?, 1, cache.len)?;
        vc.slice_set(&v.contiguous()?, 1, cache.len)?;
        Ok((kc.narrow(1, 0, end)?, vc.narrow(1, 0, end)?))
    }

    /// Makes `to` hold the first `len` positions of `from` (samples of one prompt share
    /// its prefill).
    pub fn copy_prefix(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let (Some(Some(src)), Some(Some(dst))) = (self.slots.get(from), self.slots.get(to)) else {
            bail!("KV cache slots {from} and {to} must both be allocated");
        };
        if len > src.len || len > dst.capacity {
            bail!("cannot copy {len} positions from slot {from} to slot {to}");
        }
        for ((sk, sv), (dk, dv)) in src.layers.iter().zip(&dst.layers) {
            dk.slice_set(&sk.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
            dv.slice_set(&sv.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
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
