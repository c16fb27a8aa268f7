//! A lossless compact copy of an f32 weight, which the exact products read instead of the
//! weight when decoding few rows.
//!
//! Decoding one sequence reads every weight once per token, so the exact path's speed
//! there is the memory bandwidth over four bytes per weight (538 MB per token for
//! SmolLM2-135M). Weights dequantized from a GGUF file hold much less than that: within
//! each block of 32 inputs of a row, Q4_1 gives `q·a + b` (4-bit `q`) and Q8_0 gives
//! `q·a` (8-bit `q`), computed in f32 as candle's `to_float` does (a product rounded, then
//! a sum rounded). This module finds such a form from the f32 values alone (no link to the
//! file is needed, so it also holds after any copy of the tensor) and keeps it only when
//! every decoded value has the weight's exact bits. The products then read 0.75 or 1.125
//! bytes per weight and give the f32 weight's results bit for bit; a weight with no such
//! form (trained, merged, or loaded in f32) stays as it is.

use anyhow::Result;
use candle_core::{CpuStorage, DType, Storage, Tensor, TensorId};
use half::f16;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// The bytes of `v`.
fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // Safety: any f32 is four initialised bytes, and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// Inputs per block: the GGUF block size of Q4_1 and Q8_0.
const BLOCK: usize = 32;

/// A `[out, inp]` f32 weight as blocks of `BLOCK` inputs along each row.
#[derive(Debug)]
pub struct BlockWeight {
    out: usize,
    inp: usize,
    code: Code,
}

/// One value per block in `scale` and `offset`, blocks in row-major order.
#[derive(Debug)]
enum Code {
    /// `fl(fl(q·scale) + offset)` with `q` in 0..16: block byte `j` holds element `j` in
    /// its low nibble and element `j + 16` in its high one (Q4_1's layout).
    Affine4 {
        scale: Vec<f32>,
        offset: Vec<f32>,
        nibbles: Vec<u8>,
    },
    /// `fl(q·scale)` with `q` an i8.
    Scaled8 { scale: Vec<f32>, q: Vec<i8> },
}

impl BlockWeight {
    /// The block form of `w` (`[out, inp]` row-major), or `None` when some value is not
    /// reproduced bit for bit (or `inp` is not a whole number of blocks).
    pub fn encode(w: &[f32], out: usize, inp: usize) -> Option<Self> {
        if inp == 0 || !inp.is_multiple_of(BLOCK) || w.len() != out * inp {
            return None;
        }
        let blocks = w.len() / BLOCK;
        // Blocks per parallel task.
        const TASK: usize = 256;
        let mut scale = vec![0f32; blocks];
        let mut offset = vec![0f32; blocks];
        let mut nibbles = vec![0u8; blocks * BLOCK / 2];
        let affine = w
            .par_chunks(BLOCK * TASK)
            .zip(scale.par_chunks_mut(TASK))
            .zip(offset.par_chunks_mut(TASK))
            .zip(nibbles.par_chunks_mut(TASK * BLOCK / 2))
            .all(|(((w, a), b), n)| {
                search(|| {
                    w.chunks_exact(BLOCK)
                        .zip(a.iter_mut().zip(b.iter_mut()))
                        .zip(n.chunks_exact_mut(BLOCK / 2))
                        .all(
                            |((v, (a, b)), n)| match affine4(v.try_into().expect("a block")) {
                                Some(code) => {
                                    (*a, *b) = (code.0, code.1);
                                    n.copy_from_slice(&code.2);
                                    true
                                }
                                None => false,
                            },
                        )
                })
            });
        let code = if affine {
            Code::Affine4 {
                scale,
                offset,
                nibbles,
            }
        } else {
            drop((offset, nibbles));
            let mut q = vec![0i8; blocks * BLOCK];
            let scaled = w
                .par_chunks(BLOCK * TASK)
                .zip(scale.par_chunks_mut(TASK))
                .zip(q.par_chunks_mut(TASK * BLOCK))
                .all(|((w, a), q)| {
                    search(|| {
                        w.chunks_exact(BLOCK)
                            .zip(a.iter_mut())
                            .zip(q.chunks_exact_mut(BLOCK))
                            .all(
                                |((v, a), q)| match scaled8(v.try_into().expect("a block")) {
                                    Some(code) => {
                                        *a = code.0;
                                        q.copy_from_slice(&code.1);
                                        true
                                    }
                                    None => false,
                                },
                            )
                    })
                });
            if !scaled {
                return None;
            }
            Code::Scaled8 { scale, q }
        };
        Some(Self { out, inp, code })
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inp(&self) -> usize {
        self.inp
    }

    /// Asks the CPU to start loading the blocks of weight rows `rows` (clamped to the
    /// weight) into its caches, so that decoding them later does not wait on memory.
    pub fn prefetch_rows(&self, rows: std::ops::Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        {
            let rows = rows.start.min(self.out)..rows.end.min(self.out);
            let blocks = self.inp / BLOCK;
            let (first, last) = (rows.start * blocks, rows.end * blocks);
            let lines = |bytes: &[u8]| {
                for line in bytes.chunks(64) {
                    // Safety: a prefetch is a hint on a valid address; it reads nothing.
                    unsafe {
                        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                        _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
                    }
                }
            };
            let floats = |v: &[f32]| lines(bytemuck_f32(&v[first..last]));
            match &self.code {
                Code::Affine4 {
                    scale,
                    offset,
                    nibbles,
                } => {
                    lines(&nibbles[first * BLOCK / 2..last * BLOCK / 2]);
                    floats(scale);
                    floats(offset);
                }
                Code::Scaled8 { scale, q } => {
                    let q = &q[first * BLOCK..last * BLOCK];
                    // Safety: i8 and u8 have the same size and alignment.
                    lines(unsafe { std::slice::from_raw_parts(q.as_ptr().cast(), q.len()) });
                    floats(scale);
                }
            }
        }
    }

    /// Weight row `row`, `inp` values, into `dst`.
    pub fn decode_row(&self, row: usize, dst: &mut [f32]) {
        let dst = &mut dst[..self.inp];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // Safety: the CPU supports the feature, and `dst` holds the row.
            return unsafe { self.decode_row_avx512(row, dst) };
        }
        self.decode_row_portable(row, dst)
    }

    /// `decode_row_portable` with 16 values per instruction: the same IEEE products and
    /// sums (for Q4_1 once per block's 16 codes, then looked up), so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn decode_row_avx512(&self, row: usize, dst: &mut [f32]) {
        use std::arch::x86_64::*;
        let blocks = self.inp / BLOCK;
        let first = row * blocks;
        let out = dst.as_mut_ptr();
        match &self.code {
            Code::Affine4 {
                scale,
                offset,
                nibbles,
            } => {
                let (scale, offset) = (&scale[first..][..blocks], &offset[first..][..blocks]);
                let nib = nibbles[first * BLOCK / 2..][..blocks * BLOCK / 2].as_ptr();
                let codes = _mm512_setr_ps(
                    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0,
                    15.0,
                );
                for k in 0..blocks {
                    // A block has 16 values: compute them once, then look each weight up
                    // by its nibble (the permute reads an index's low 4 bits).
                    let (a, b) = (_mm512_set1_ps(scale[k]), _mm512_set1_ps(offset[k]));
                    let table = _mm512_add_ps(_mm512_mul_ps(codes, a), b);
                    let n = _mm512_cvtepu8_epi32(_mm_loadu_si128(nib.add(k * 16).cast()));
                    _mm512_storeu_ps(out.add(k * BLOCK), _mm512_permutexvar_ps(n, table));
                    let high = _mm512_srli_epi32::<4>(n);
                    _mm512_storeu_ps(out.add(k * BLOCK + 16), _mm512_permutexvar_ps(high, table));
                }
            }
            Code::Scaled8 { scale, q } => {
                let scale = &scale[first..][..blocks];
                let q = q[first * BLOCK..][..self.inp].as_ptr();
                for (k, &a) in scale.iter().enumerate() {
                    let a = _mm512_set1_ps(a);
                    for h in 0..2 {
                        let o = k * BLOCK + h * 16;
                        let v = _mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(o).cast()));
                        _mm512_storeu_ps(out.add(o), _mm512_mul_ps(_mm512_cvtepi32_ps(v), a));
                    }
                }
            }
        }
    }

    /// The reference decoding: candle's `to_float` arithmetic, one value at a time.
    fn decode_row_portable(&self, row: usize, dst: &mut [f32]) {
        let blocks = self.inp / BLOCK;
        let first = row * blocks;
        let dst = &mut dst[..self.inp];
        match &self.code {
            Code::Affine4 {
                scale,
                offset,
                nibbles,
            } => {
                let nibbles = &nibbles[first * BLOCK / 2..][..blocks * BLOCK / 2];
                for (k, (out, nib)) in dst
                    .chunks_exact_mut(BLOCK)
                    .zip(nibbles.chunks_exact(BLOCK / 2))
                    .enumerate()
                {
                    let (a, b) = (scale[first + k], offset[first + k]);
                    let (lo, hi) = out.split_at_mut(BLOCK / 2);
                    for ((l, h), &n) in lo.iter_mut().zip(hi).zip(nib) {
                        *l = (n & 15) as f32 * a + b;
                        *h = (n >> 4) as f32 * a + b;
                    }
                }
            }
            Code::Scaled8 { scale, q } => {
                let q = &q[first * BLOCK..][..self.inp];
                for (k, (out, q)) in dst
                    .chunks_exact_mut(BLOCK)
                    .zip(q.chunks_exact(BLOCK))
                    .enumerate()
                {
                    let a = scale[first + k];
                    for (o, &v) in out.iter_mut().zip(q) {
                        *o = v as f32 * a;
                    }
                }
            }
        }
    }

    /// Bytes the products read per weight.
    pub fn bytes_per_weight(&self) -> f64 {
        match self.code {
            Code::Affine4 { .. } => 0.5 + 8.0 / BLOCK as f64,
            Code::Scaled8 { .. } => 1.0 + 4.0 / BLOCK as f64,
        }
    }
}

/// Runs the block search `f`, compiled for 512-bit vectors where the CPU has them (its
/// loops over a block's 32 values then run a few instructions each).
fn search(f: impl FnOnce() -> bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        unsafe fn wide(f: impl FnOnce() -> bool) -> bool {
            f()
        }
        // Safety: the CPU supports the feature the copy is compiled for.
        return unsafe { wide(f) };
    }
    f()
}

/// Scale candidates near `ideal`: the half-precision values around it first (GGUF stores
/// block scales as f16), then f32 neighbours.
fn scale_candidates(ideal: f32) -> impl Iterator<Item = f32> {
    let h = f16::from_f32(ideal).to_bits() as i32;
    let s = ideal.to_bits() as i32;
    let halves = [0, -1, 1, -2, 2]
        .into_iter()
        .map(move |d| f16::from_bits((h + d) as u16).to_f32());
    let singles = [0, -1, 1, -2, 2, -3, 3]
        .into_iter()
        .map(move |d| f32::from_bits((s + d) as u32));
    halves.chain(singles).filter(|a| a.is_finite() && *a > 0.0)
}

/// The levels `q` in `lo..=hi` whose `decode(q)` is each value of `v` bit for bit, where
/// `level(x)` is near `x`'s level (rounding of the product and the sum can put the
/// nearest level one off, so both neighbours are tried where it misses).
#[inline(always)]
fn levels(
    v: &[f32; BLOCK],
    (lo, hi): (i32, i32),
    level: impl Fn(f32) -> f32,
    decode: impl Fn(i32) -> f32,
) -> Option<[i32; BLOCK]> {
    let mut q = [0i32; BLOCK];
    let mut all = true;
    // Branch-free, so that the common case (every guess right) vectorises.
    for (q, &x) in q.iter_mut().zip(v) {
        let g = level(x);
        let r = (g.abs() + 0.5) as i32;
        *q = (if g < 0.0 { -r } else { r }).clamp(lo, hi);
        all &= decode(*q).to_bits() == x.to_bits();
    }
    if !all {
        for (q, &x) in q.iter_mut().zip(v) {
            if decode(*q).to_bits() != x.to_bits() {
                *q = [*q - 1, *q + 1]
                    .into_iter()
                    .filter(|c| (lo..=hi).contains(c))
                    .find(|&c| decode(c).to_bits() == x.to_bits())?;
            }
        }
    }
    Some(q)
}

/// `(a, b, nibbles)` with `fl(fl(q·a) + b)` equal to every value of `v`, if some `a` near
/// the range / 15 works with `b` the block's minimum (Q4_1 quantizes the minimum to 0).
#[inline(always)]
fn affine4(v: &[f32; BLOCK]) -> Option<(f32, f32, [u8; BLOCK / 2])> {
    let (mut b, mut top) = (v[0], v[0]);
    for &x in v {
        b = if x < b { x } else { b };
        top = if x > top { x } else { top };
    }
    if !b.is_finite() || !top.is_finite() {
        return None;
    }
    let fits = |a: f32| {
        let inv = if a > 0.0 { 1.0 / a } else { 0.0 };
        let q = levels(v, (0, 15), |x| (x - b) * inv, |q| q as f32 * a + b)?;
        Some(std::array::from_fn(|j| {
            (q[j] | (q[j + BLOCK / 2] << 4)) as u8
        }))
    };
    if top == b {
        return fits(0.0).map(|n| (0.0, b, n));
    }
    scale_candidates((top - b) / 15.0).find_map(|a| fits(a).map(|n| (a, b, n)))
}

/// `(a, q)` with `fl(q·a)` equal to every value of `v`, if some `a` near the largest
/// magnitude / 127 works (Q8_0 quantizes it to ±127).
#[inline(always)]
fn scaled8(v: &[f32; BLOCK]) -> Option<(f32, [i8; BLOCK])> {
    let mut top = 0f32;
    for &x in v {
        top = if x.abs() > top { x.abs() } else { top };
    }
    if !top.is_finite() {
        return None;
    }
    let fits = |a: f32| {
        let inv = if a > 0.0 { 1.0 / a } else { 0.0 };
        let q = levels(v, (-128, 127), |x| x * inv, |q| q as f32 * a)?;
        Some(q.map(|q| q as i8))
    };
    if top == 0.0 {
        return fits(0.0).map(|q| (0.0, q));
    }
    scale_candidates(top / 127.0).find_map(|a| fits(a).map(|q| (a, q)))
}

/// The block form of one weight tensor, made on first use and kept while the tensor is
/// the same (a weight replaced by a merge gets a new one). `None` is kept too: a weight
/// with no block form is searched once.
#[derive(Default)]
pub struct BlockCache(Mutex<Option<(TensorId, Option<Arc<BlockWeight>>)>>);

impl BlockCache {
    /// The block form of `weight` when it is a contiguous CPU f32 `[out, in]` tensor that
    /// has one.
    pub fn get(&self, weight: &Tensor) -> Result<Option<Arc<BlockWeight>>> {
        if !weight.device().is_cpu() || weight.dtype() != DType::F32 || weight.rank() != 2 {
            return Ok(None);
        }
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, blocks)) = slot.as_ref() {
            if *id == weight.id() {
                return Ok(blocks.clone());
            }
        }
        *slot = None; // drop a stale copy before building the next
        let (out, inp) = weight.dims2()?;
        let blocks = {
            let (storage, layout) = weight.storage_and_layout();
            match (&*storage, layout.contiguous_offsets()) {
                (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => {
                    BlockWeight::encode(&data[start..end], out, inp).map(Arc::new)
                }
                _ => None,
            }
        };
        *slot = Some((weight.id(), blocks.clone()));
        Ok(blocks)
    }
}

impl Clone for BlockCache {
    fn clone(&self) -> Self {
        Self(Mutex::new(
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        ))
    }
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.lock().map(|s| s.is_some()).unwrap_or(false);
        write!(f, "BlockCache {{ searched: {held} }}")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    /// `[out, inp]` values through a GGUF quantization and candle's dequantization: the
    /// f32 weights the loader produces from such a file.
    pub(in crate::model::ops) fn dequantized(
        dtype: GgmlDType,
        out: usize,
        inp: usize,
        seed: u64,
    ) -> Result<Vec<f32>> {
        let dev = Device::Cpu;
        let mut state = seed;
        let values: Vec<f32> = (0..out * inp)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Mostly small weights with a few large ones, and blocks offset from zero.
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                u * 0.1 + if state.is_multiple_of(97) { 0.5 } else { 0.0 }
            })
            .collect();
        let t = Tensor::from_vec(values, (out, inp), &dev)?;
        let q = QTensor::quantize(&t, dtype)?;
        Ok(q.dequantize(&dev)?.flatten_all()?.to_vec1()?)
    }

    fn assert_decodes_to(blocks: &BlockWeight, w: &[f32]) {
        let mut row = vec![0f32; blocks.inp()];
        for r in 0..blocks.out() {
            blocks.decode_row(r, &mut row);
            let want = &w[r * blocks.inp()..][..blocks.inp()];
            for (i, (a, b)) in row.iter().zip(want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "row {r}, input {i}: {a} vs {b}");
            }
        }
    }

    /// Weights dequantized from Q4_1 and Q8_0 get their block forms back, and every
    /// decoded value has the weight's bits (with both the vectorised and portable loops).
    #[test]
    fn gguf_weights_decode_bit_for_bit() -> Result<()> {
        for (dtype, bytes) in [(GgmlDType::Q4_1, 0.75), (GgmlDType::Q8_0, 1.125)] {
            let (out, inp) = (37, 576);
            let w = dequantized(dtype, out, inp, 11)?;
            let blocks = BlockWeight::encode(&w, out, inp).expect("a block form");
            assert_eq!(blocks.bytes_per_weight(), bytes, "{dtype:?}");
            assert_decodes_to(&blocks, &w);
            let mut row = vec![0f32; inp];
            blocks.decode_row_portable(out - 1, &mut row);
            assert_eq!(
                row.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                w[(out - 1) * inp..]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            );
        }
        Ok(())
    }

    /// Constant blocks (zero, negative zero, any value) and blocks far from zero.
    #[test]
    fn edge_blocks_round_trip_or_are_refused() {
        let inp = BLOCK * 4;
        let mut w = vec![0f32; inp];
        w[BLOCK..2 * BLOCK].fill(-0.75);
        for (i, v) in w[2 * BLOCK..3 * BLOCK].iter_mut().enumerate() {
            *v = 100.0 + (i % 16) as f32 * 0.125;
        }
        w[3 * BLOCK..].fill(3.0);
        let blocks = BlockWeight::encode(&w, 1, inp).expect("a block form");
        assert_decodes_to(&blocks, &w);
        w[0] = -0.0;
        w[1] = 0.0;
        // Now the first block holds both zeros, which no `fl(fl(q·a) + b)` gives (q·a is
        // +0 or more, and +0 + ±0 is +0), and the other blocks have no `fl(q·a)` form.
        assert!(BlockWeight::encode(&w, 1, inp).is_none());
    }

    /// Weights with more than 256 distinct values per block, or a width that is not whole
    /// blocks, stay f32.
    #[test]
    fn other_weights_are_refused() {
        let w: Vec<f32> = (0..4 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        assert!(BlockWeight::encode(&w, 4, 64).is_none());
        let w = vec![1f32; 3 * 40];
        assert!(BlockWeight::encode(&w, 3, 40).is_none());
    }

    /// The cache builds once per tensor, keeps a refusal, and rebuilds for a new tensor.
    #[test]
    fn cache_follows_the_tensor() -> Result<()> {
        let dev = Device::Cpu;
        let cache = BlockCache::default();
        let w = Tensor::from_vec(dequantized(GgmlDType::Q8_0, 4, 64, 3)?, (4, 64), &dev)?;
        let first = cache.get(&w)?.expect("a block form");
        assert!(Arc::ptr_eq(&first, &cache.get(&w)?.expect("kept")));
        let plain = Tensor::randn(0f32, 1.0, (4, 64), &dev)?;
        assert!(cache.get(&plain)?.is_none());
        assert!(cache.get(&plain)?.is_none());
        let again = cache.get(&w)?.expect("rebuilt");
        assert!(!Arc::ptr_eq(&first, &again));
        Ok(())
    }
}
