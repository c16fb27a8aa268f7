//! Int8 projections for CPU inference.
//!
//! Decoding is bound by reading the weights: in f32 every token step streams 4 bytes per
//! parameter through the matrix products. Here each projection weight is re-quantized
//! once to 8 bits with one f32 scale per block of 32 inputs (the GGUF Q8_0 recipe; a
//! Q4_1 model's dequantized values lose almost nothing more), and the activations are
//! quantized the same way, per row and block, just before each product. Dot products then
//! run on 8-bit integers with AVX512-VNNI's `vpdpbusd` (64 multiply-adds per instruction)
//! and are scaled back to f32 once per block.
//!
//! Every output element depends only on its own input row and weight column, summed in a
//! fixed order, so a sequence gets bit-identical results whatever else shares the batch.
//! The portable kernel does the same integer sums and the same f32 operations in the same
//! order, so both kernels give bit-identical results too.
//!
//! The inference path uses this (`Precision::Int8`) on copies of the f32 weights; a
//! training run with an int8 base (`int8_projection`) keeps only these blocks and reads
//! them back as f32 (`dequantize`).

use super::out_ptr::OutPtr;
use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, Storage, Tensor, TensorId};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// How the inference path computes its projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// The weights as loaded, in their own dtype.
    Exact,
    /// CPU f32 weights re-quantized to int8 blocks (this module); weights on other
    /// devices or in other dtypes stay exact.
    #[default]
    Int8,
}

/// Inputs per quantization block (one scale each).
pub const BLOCK: usize = 32;
/// Output columns packed side by side: one 512-bit vector of i32 lanes.
const GROUP: usize = 16;
/// Inputs per `vpdpbusd` lane (four byte products summed into one i32).
const QUAD: usize = 4;
const QUADS_PER_BLOCK: usize = BLOCK / QUAD;
/// `vpdpbusd` multiplies unsigned by signed bytes: weights are stored as w + 128 and the
/// activations stay signed, and each row's block sum times 128 takes the offset back out.
const WEIGHT_OFFSET: i32 = 128;
/// Rows computed together by one kernel call: each weight vector loaded serves them all.
const ROW_TILE: usize = 4;
/// Column groups computed together by one kernel call.
const GROUP_TILE: usize = 2;

/// A `[out, in]` weight quantized to int8 blocks and laid out for the kernels: for each
/// group of 16 output columns and each block of 32 inputs, eight 64-byte vectors, each
/// holding 4 consecutive inputs of the 16 columns.
pub struct Int8Weight {
    out: usize,
    inp: usize,
    blocks: usize,
    groups: usize,
    /// `[group][block][quad][column in group][input in quad]`, as w + 128.
    data: Vec<u8>,
    /// `[group][block][column in group]`; zero for the padding columns.
    scales: Vec<f32>,
}

/// Bit for bit: the same shape, int8 values and scales (compared as bits).
impl PartialEq for Int8Weight {
    fn eq(&self, other: &Self) -> bool {
        (self.out, self.inp) == (other.out, other.inp)
            && self.data == other.data
            && self.scales.len() == other.scales.len()
            && self
                .scales
                .iter()
                .zip(&other.scales)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl std::fmt::Debug for Int8Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Int8Weight [{}, {}]", self.out, self.inp)
    }
}

impl Int8Weight {
    /// Quantizes a row-major `[out, inp]` matrix.
    pub fn pack(w: &[f32], out: usize, inp: usize) -> Self {
        assert_eq!(
            w.len(),
            out * inp,
            "weight of {} values for [{out}, {inp}]",
            w.len()
        );
        let blocks = inp.div_ceil(BLOCK);
        let groups = out.div_ceil(GROUP);
        // Padding (columns past `out`, inputs past `inp`) holds w = 0.
        let mut data = vec![WEIGHT_OFFSET as u8; groups * blocks * BLOCK * GROUP];
        let mut scales = vec![0f32; groups * blocks * GROUP];
        data.par_chunks_mut(blocks * BLOCK * GROUP)
            .zip(scales.par_chunks_mut(blocks * GROUP))
            .enumerate()
            .for_each(|(g, (data, scales))| {
                for c in 0..GROUP.min(out - g * GROUP) {
                    let row = &w[(g * GROUP + c) * inp..][..inp];
                    for (b, chunk) in row.chunks(BLOCK).enumerate() {
                        let (scale, q) = quantize_block(chunk);
                        scales[b * GROUP + c] = scale;
                        let base = b * BLOCK * GROUP;
                        for (k, &v) in q.iter().enumerate() {
                            let (quad, j) = (k / QUAD, k % QUAD);
                            data[base + quad * GROUP * QUAD + c * QUAD + j] =
                                (v as i32 + WEIGHT_OFFSET) as u8;
                        }
                    }
                }
            });
        Self {
            out,
            inp,
            blocks,
            groups,
            data,
            scales,
        }
    }

    /// Quantizes a CPU f32 `[out, in]` tensor; `None` for other devices and dtypes.
    pub fn from_tensor(weight: &Tensor) -> Result<Option<Self>> {
        if !weight.device().is_cpu() || weight.dtype() != DType::F32 {
            return Ok(None);
        }
        let (out, inp) = weight.dims2()?;
        with_f32_data(weight, "int8 packing", |w| Some(Self::pack(w, out, inp)))
    }

    /// (out features, in features)
    pub fn shape(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// Bytes held: the int8 values and the block scales, padding included.
    pub fn bytes(&self) -> usize {
        self.data.len() + 4 * self.scales.len()
    }

    /// The quantized values `Ŵ[o][i] = q · scale` of output rows `rows` and inputs `cols`,
    /// row-major `[rows.len(), cols.len()]` into `dst`.
    pub fn dequantize(&self, rows: Range<usize>, cols: Range<usize>, dst: &mut [f32]) {
        assert!(rows.end <= self.out && cols.end <= self.inp && cols.start <= cols.end);
        let width = cols.len();
        assert_eq!(
            dst.len(),
            rows.len() * width,
            "dequantize: destination size"
        );
        for (o, dst_row) in rows.zip(dst.chunks_exact_mut(width.max(1))) {
            let (g, c) = (o / GROUP, o % GROUP);
            let mut i = cols.start;
            while i < cols.end {
                let b = i / BLOCK;
                let block_end = ((b + 1) * BLOCK).min(cols.end);
                let scale = self.scales[(g * self.blocks + b) * GROUP + c];
                let base = (g * self.blocks + b) * BLOCK * GROUP + c * QUAD;
                let value = |q: u8| (q as i32 - WEIGHT_OFFSET) as f32 * scale;
                if block_end - i == BLOCK {
                    // A whole block: its eight quads of four bytes, without index math.
                    let out = &mut dst_row[i - cols.start..][..BLOCK];
                    for (quad, out) in out.chunks_exact_mut(QUAD).enumerate() {
                        let q = &self.data[base + quad * GROUP * QUAD..][..QUAD];
                        for (o, &q) in out.iter_mut().zip(q) {
                            *o = value(q);
                        }
                    }
                } else {
                    for k in i % BLOCK..i % BLOCK + (block_end - i) {
                        let q = self.data[base + (k / QUAD) * GROUP * QUAD + k % QUAD];
                        dst_row[b * BLOCK + k - cols.start] = value(q);
                    }
                }
                i = block_end;
            }
        }
    }

    /// The int8 values row-major `[out, in]` and the scales `[out, in.div_ceil(32)]`, one
    /// per block of 32 inputs: `Ŵ[o][i] = values[o·in + i] · scales[o·blocks + i / 32]`.
    /// The layout the GPU kernel reads (`int8_gpu_weight`), without the padding.
    pub fn row_major(&self) -> (Vec<i8>, Vec<f32>) {
        let mut values = vec![0i8; self.out * self.inp];
        let mut scales = vec![0f32; self.out * self.blocks];
        values
            .par_chunks_mut(self.inp.max(1))
            .zip(scales.par_chunks_mut(self.blocks.max(1)))
            .enumerate()
            .for_each(|(o, (row, row_scales))| {
                let (g, c) = (o / GROUP, o % GROUP);
                for (b, scale) in row_scales.iter_mut().enumerate() {
                    *scale = self.scales[(g * self.blocks + b) * GROUP + c];
                    let base = (g * self.blocks + b) * BLOCK * GROUP + c * QUAD;
                    for k in 0..BLOCK.min(self.inp - b * BLOCK) {
                        let q = self.data[base + (k / QUAD) * GROUP * QUAD + k % QUAD];
                        row[b * BLOCK + k] = (q as i32 - WEIGHT_OFFSET) as i8;
                    }
                }
            });
        (values, scales)
    }

    /// `x · Wᵀ` as row-major `[rows, out]` f32, with the fastest kernel this CPU has.
    pub fn matmul(&self, x: &Int8Rows) -> Vec<f32> {
        products(Kernel::detect(), x, &[self]).remove(0)
    }
}

/// `x · Wᵀ` for each of `weights` (all `[_, in]`), as row-major `[rows, out]` f32: one
/// parallel pass over every weight's column tiles, so projections of the same input
/// (q/k/v, gate/up) share one quantized input and one round of thread wake-ups.
fn products(kernel: Kernel, x: &Int8Rows, weights: &[&Int8Weight]) -> Vec<Vec<f32>> {
    let rows = x.rows;
    let mut ys: Vec<Vec<f32>> = weights.iter().map(|w| vec![0f32; rows * w.out]).collect();
    let mut tasks = Vec::new();
    for (i, (w, y)) in weights.iter().zip(&mut ys).enumerate() {
        assert_eq!(x.inp, w.inp, "int8 product: input width differs");
        let y = OutPtr(y.as_mut_ptr());
        // One task per tile of column groups, over every row: the tile's weights (a few
        // KiB per block row) stay in cache while all the rows pass over them.
        tasks.extend((0..w.groups.div_ceil(GROUP_TILE)).map(|t| (i, t * GROUP_TILE, y)));
    }
    tasks.into_par_iter().for_each(|(i, g0, y)| {
        let w = weights[i];
        let groups = GROUP_TILE.min(w.groups - g0);
        for r0 in (0..rows).step_by(ROW_TILE) {
            let n = ROW_TILE.min(rows - r0);
            let mut tile = [[[0f32; GROUP]; GROUP_TILE]; ROW_TILE];
            kernel.run(x, r0, n, w, g0, groups, &mut tile);
            for (r, tile_row) in tile.iter().enumerate().take(n) {
                for (g, lanes) in tile_row.iter().enumerate().take(groups) {
                    let col0 = (g0 + g) * GROUP;
                    let valid = GROUP.min(w.out - col0);
                    // Safety: tasks cover disjoint (row, column) sets inside each rows ×
                    // out buffer, and the buffers outlive the parallel loop.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            lanes.as_ptr(),
                            y.get().add((r0 + r) * w.out + col0),
                            valid,
                        );
                    }
                }
            }
        }
    });
    ys
}

/// Activations `[rows, in]` quantized per row and block of 32 inputs.
pub struct Int8Rows {
    rows: usize,
    inp: usize,
    /// `[row][blocks · 32]`, zero-padded.
    values: Vec<i8>,
    /// `[row][block]`
    scales: Vec<f32>,
    /// `[row][block]`: −128 · Σ values, the start of each block's integer sum.
    offsets: Vec<i32>,
}

impl Int8Rows {
    /// Quantizes row-major `[rows, inp]` values.
    pub fn quantize(x: &[f32], rows: usize, inp: usize) -> Self {
        assert_eq!(
            x.len(),
            rows * inp,
            "{} values for [{rows}, {inp}]",
            x.len()
        );
        let blocks = inp.div_ceil(BLOCK);
        let mut values = vec![0i8; rows * blocks * BLOCK];
        let mut scales = vec![0f32; rows * blocks];
        let mut offsets = vec![0i32; rows * blocks];
        let (width, per_row) = ((blocks * BLOCK).max(1), blocks.max(1));
        // A decode step's few rows take microseconds; only prefill is worth the threads.
        if rows * inp >= PARALLEL_QUANTIZE {
            values
                .par_chunks_mut(width)
                .zip(scales.par_chunks_mut(per_row))
                .zip(offsets.par_chunks_mut(per_row))
                .enumerate()
                .for_each(|(r, ((v, s), o))| quantize_row(&x[r * inp..][..inp], v, s, o));
        } else {
            values
                .chunks_mut(width)
                .zip(scales.chunks_mut(per_row))
                .zip(offsets.chunks_mut(per_row))
                .enumerate()
                .for_each(|(r, ((v, s), o))| quantize_row(&x[r * inp..][..inp], v, s, o));
        }
        Self {
            rows,
            inp,
            values,
            scales,
            offsets,
        }
    }

    /// Quantizes a CPU f32 `[rows, in]` tensor.
    pub fn from_tensor(x: &Tensor) -> Result<Self> {
        let (rows, inp) = x.dims2()?;
        with_f32_data(x, "int8 activations", |v| Self::quantize(v, rows, inp))
    }
}

/// Runs `f` on the values of a CPU f32 tensor, made contiguous first.
fn with_f32_data<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    else {
        bail!("{what}: expected a contiguous f32 CPU tensor");
    };
    Ok(f(&v[start..end]))
}

/// One row's blocks: values, scales and `vpdpbusd` start offsets. On x86-64 with AVX2
/// it is compiled a second time for 256-bit vectors and chosen at run time.
fn quantize_row(row: &[f32], values: &mut [i8], scales: &mut [f32], offsets: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Safety: the CPU supports the feature the function is compiled for.
        return unsafe { quantize_row_avx2(row, values, scales, offsets) };
    }
    quantize_row_portable(row, values, scales, offsets)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(
    row: &[f32],
    values: &mut [i8],
    scales: &mut [f32],
    offsets: &mut [i32],
) {
    quantize_row_portable(row, values, scales, offsets)
}

#[inline(always)]
fn quantize_row_portable(row: &[f32], values: &mut [i8], scales: &mut [f32], offsets: &mut [i32]) {
    for (b, chunk) in row.chunks(BLOCK).enumerate() {
        let (scale, q) = quantize_block(chunk);
        scales[b] = scale;
        offsets[b] = -WEIGHT_OFFSET * q.iter().map(|&v| v as i32).sum::<i32>();
        values[b * BLOCK..][..BLOCK].copy_from_slice(&q);
    }
}

/// Activation values from which `Int8Rows::quantize` spreads rows over threads.
const PARALLEL_QUANTIZE: usize = 1 << 16;

/// Symmetric 8-bit quantization of up to 32 values: scale = max |v| / 127, q = round(v /
/// scale) (ties to even), zero-padded to a whole block.
#[inline(always)]
fn quantize_block(values: &[f32]) -> (f32, [i8; BLOCK]) {
    // Eight running maxima rather than one chain, so the loop vectorises.
    let mut lanes = [0f32; 8];
    for chunk in values.chunks(8) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
    let mut q = [0i8; BLOCK];
    if amax > 0.0 {
        let inv = 127.0 / amax;
        for (q, &v) in q.iter_mut().zip(values) {
            *q = round_small(v * inv).clamp(-127.0, 127.0) as i8;
        }
    }
    (amax / 127.0, q)
}

/// Round to nearest, ties to even, for |v| < 2²²: adding 1.5 · 2²³ leaves no fraction
/// bits. `f32::round` is a libm call on baseline x86-64 and keeps the loop scalar.
#[inline(always)]
fn round_small(v: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (v + SHIFT) - SHIFT
}

/// The inner product kernels, chosen once per product from what the CPU supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// Plain Rust, compiled a second time with AVX2 where the CPU has it.
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            return Kernel::Avx512Vnni;
        }
        Kernel::Portable
    }

    /// Fills `tile[r][g]` with the 16 outputs of rows `r0 + r` (r < `rows`) and column
    /// group `g0 + g` (g < `groups`).
    #[allow(clippy::too_many_arguments)]
    fn run(
        self,
        x: &Int8Rows,
        r0: usize,
        rows: usize,
        w: &Int8Weight,
        g0: usize,
        groups: usize,
        tile: &mut Tile,
    ) {
        debug_assert!(r0 + rows <= x.rows && g0 + groups <= w.groups);
        match self {
            // Safety: `detect` saw the features; indices are within the buffers, whose
            // sizes `pack` and `quantize` fixed from the same `blocks` and `groups`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => unsafe {
                match (rows, groups) {
                    (1, 1) => vnni::tile::<1, 1>(x, r0, w, g0, tile),
                    (2, 1) => vnni::tile::<2, 1>(x, r0, w, g0, tile),
                    (3, 1) => vnni::tile::<3, 1>(x, r0, w, g0, tile),
                    (4, 1) => vnni::tile::<4, 1>(x, r0, w, g0, tile),
                    (1, 2) => vnni::tile::<1, 2>(x, r0, w, g0, tile),
                    (2, 2) => vnni::tile::<2, 2>(x, r0, w, g0, tile),
                    (3, 2) => vnni::tile::<3, 2>(x, r0, w, g0, tile),
                    (4, 2) => vnni::tile::<4, 2>(x, r0, w, g0, tile),
                    _ => unreachable!("tiles are at most {ROW_TILE} × {GROUP_TILE}"),
                }
            },
            Kernel::Portable => portable::tile(x, r0, rows, w, g0, groups, tile),
        }
    }
}

type Tile = [[[f32; GROUP]; GROUP_TILE]; ROW_TILE];

mod portable {
    use super::*;

    pub(super) fn tile(
        x: &Int8Rows,
        r0: usize,
        rows: usize,
        w: &Int8Weight,
        g0: usize,
        groups: usize,
        tile: &mut Tile,
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // Safety: the CPU supports the features the function is compiled for.
            return unsafe { tile_avx2(x, r0, rows, w, g0, groups, tile) };
        }
        tile_generic(x, r0, rows, w, g0, groups, tile)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_avx2(
        x: &Int8Rows,
        r0: usize,
        rows: usize,
        w: &Int8Weight,
        g0: usize,
        groups: usize,
        tile: &mut Tile,
    ) {
        tile_generic(x, r0, rows, w, g0, groups, tile)
    }

    /// The arithmetic of `vnni::tile`, lane by lane: an exact i32 sum per block, then one
    /// product of the two scales and one fused multiply-add per block.
    #[inline(always)]
    fn tile_generic(
        x: &Int8Rows,
        r0: usize,
        rows: usize,
        w: &Int8Weight,
        g0: usize,
        groups: usize,
        tile: &mut Tile,
    ) {
        let blocks = w.blocks;
        for (r, tile_row) in tile.iter_mut().enumerate().take(rows) {
            let row = r0 + r;
            for (g, acc) in tile_row.iter_mut().enumerate().take(groups) {
                *acc = [0f32; GROUP];
                for b in 0..blocks {
                    let xq = &x.values[(row * blocks + b) * BLOCK..][..BLOCK];
                    let wq = &w.data[((g0 + g) * blocks + b) * BLOCK * GROUP..][..BLOCK * GROUP];
                    let mut sums = [x.offsets[row * blocks + b]; GROUP];
                    for (quad, wv) in wq.chunks_exact(GROUP * QUAD).enumerate() {
                        let xv = &xq[quad * QUAD..][..QUAD];
                        for (sum, wc) in sums.iter_mut().zip(wv.chunks_exact(QUAD)) {
                            for j in 0..QUAD {
                                *sum += wc[j] as i32 * xv[j] as i32;
                            }
                        }
                    }
                    let ws = &w.scales[((g0 + g) * blocks + b) * GROUP..][..GROUP];
                    let xs = x.scales[row * blocks + b];
                    for c in 0..GROUP {
                        acc[c] = (sums[c] as f32).mul_add(ws[c] * xs, acc[c]);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::*;
    use std::arch::x86_64::*;

    /// `R` rows × `G` column groups; `R · G` pairs of i32 and f32 accumulators stay in
    /// registers.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn tile<const R: usize, const G: usize>(
        x: &Int8Rows,
        r0: usize,
        w: &Int8Weight,
        g0: usize,
        tile: &mut Tile,
    ) {
        let blocks = w.blocks;
        let xv = x.values.as_ptr();
        let wd = w.data.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); G]; R];
        for b in 0..blocks {
            let mut sums = [[_mm512_setzero_si512(); G]; R];
            for (r, row_sums) in sums.iter_mut().enumerate() {
                let start = _mm512_set1_epi32(*x.offsets.get_unchecked((r0 + r) * blocks + b));
                *row_sums = [start; G];
            }
            for quad in 0..QUADS_PER_BLOCK {
                let mut wv = [_mm512_setzero_si512(); G];
                for (g, v) in wv.iter_mut().enumerate() {
                    let at = (((g0 + g) * blocks + b) * QUADS_PER_BLOCK + quad) * GROUP * QUAD;
                    *v = _mm512_loadu_si512(wd.add(at) as *const _);
                }
                for (r, row_sums) in sums.iter_mut().enumerate() {
                    let at = ((r0 + r) * blocks + b) * BLOCK + quad * QUAD;
                    let four = _mm512_set1_epi32((xv.add(at) as *const i32).read_unaligned());
                    for (s, v) in row_sums.iter_mut().zip(&wv) {
                        *s = _mm512_dpbusd_epi32(*s, *v, four);
                    }
                }
            }
            for g in 0..G {
                let ws = _mm512_loadu_ps(w.scales.as_ptr().add(((g0 + g) * blocks + b) * GROUP));
                for r in 0..R {
                    let xs = _mm512_set1_ps(*x.scales.get_unchecked((r0 + r) * blocks + b));
                    let scale = _mm512_mul_ps(ws, xs);
                    acc[r][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[r][g]), scale, acc[r][g]);
                }
            }
        }
        for r in 0..R {
            for g in 0..G {
                _mm512_storeu_ps(tile[r][g].as_mut_ptr(), acc[r][g]);
            }
        }
    }
}

/// A weight's int8 copy, built on first use and rebuilt whenever the weight tensor is
/// replaced: it is keyed by the tensor's id, so a merged adapter (a new weight tensor)
/// can never leave a stale copy behind. Base weights are never updated in place.
#[derive(Default)]
pub struct Int8Cache(Mutex<Option<(TensorId, Arc<Int8Weight>)>>);

impl Int8Cache {
    /// The int8 copy of `weight`, or `None` when it is not a CPU f32 tensor.
    pub fn get(&self, weight: &Tensor) -> Result<Option<Arc<Int8Weight>>> {
        if !weight.device().is_cpu() || weight.dtype() != DType::F32 {
            return Ok(None);
        }
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, packed)) = slot.as_ref() {
            if *id == weight.id() {
                return Ok(Some(packed.clone()));
            }
        }
        *slot = None; // drop a stale copy before building the next
        let Some(packed) = Int8Weight::from_tensor(weight)? else {
            return Ok(None);
        };
        let packed = Arc::new(packed);
        *slot = Some((weight.id(), packed.clone()));
        Ok(Some(packed))
    }
}

impl Clone for Int8Cache {
    fn clone(&self) -> Self {
        Self(Mutex::new(
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        ))
    }
}

impl std::fmt::Debug for Int8Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let packed = self.0.lock().map(|s| s.is_some()).unwrap_or(false);
        write!(f, "Int8Cache {{ packed: {packed} }}")
    }
}

/// `x · Wᵀ` for a CPU f32 `x` `[rows, in]` through the int8 copy of each `W`, as
/// `[rows, out]` tensors (see `products`).
pub fn project(x: &Tensor, weights: &[&Int8Weight]) -> Result<Vec<Tensor>> {
    let rows = x.dim(0)?;
    products(Kernel::detect(), &Int8Rows::from_tensor(x)?, weights)
        .into_iter()
        .zip(weights)
        .map(|(y, w)| Ok(Tensor::from_vec(y, (rows, w.out), x.device())?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut impl Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// |x·w − x̂·ŵ| summed over blocks, where each quantized value is within half its
    /// block's step (scale / 2) of the original: |x·w − x̂·ŵ| ≤ Σ |x||w − ŵ| + |ŵ||x −
    /// x̂| ≤ Σ_k (|x_k| · sw / 2 + |ŵ_k| · sx / 2), plus f32 rounding of the sums.
    fn error_bound(x: &[f32], w: &[f32]) -> f32 {
        let mut bound = 0f64;
        for (xb, wb) in x.chunks(BLOCK).zip(w.chunks(BLOCK)) {
            let (sx, _) = quantize_block(xb);
            let (sw, _) = quantize_block(wb);
            for (&xk, &wk) in xb.iter().zip(wb) {
                let w_hat = wk.abs() as f64 + sw as f64 / 2.0;
                bound += xk.abs() as f64 * sw as f64 / 2.0 + w_hat * sx as f64 / 2.0;
            }
        }
        let magnitude: f64 = x.iter().zip(w).map(|(a, b)| (a * b).abs() as f64).sum();
        (bound + 1e-5 * magnitude + 1e-6) as f32
    }

    /// Checks one product against f64 and the bound; returns the worst error / bound.
    fn check(rows: usize, out: usize, inp: usize, seed: u64) -> f32 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let x = random(rows * inp, &mut rng);
        let mut w = random(out * inp, &mut rng);
        // One outlier column, as real weights have: its blocks get coarse steps.
        if out > 2 {
            w[inp..2 * inp].iter_mut().for_each(|v| *v *= 40.0);
        }
        let packed = Int8Weight::pack(&w, out, inp);
        let xq = Int8Rows::quantize(&x, rows, inp);
        let portable = products(Kernel::Portable, &xq, &[&packed]).remove(0);
        let mut worst_ratio = 0f32;
        for r in 0..rows {
            for o in 0..out {
                let (xr, wo) = (&x[r * inp..][..inp], &w[o * inp..][..inp]);
                let exact: f64 = xr.iter().zip(wo).map(|(a, b)| *a as f64 * *b as f64).sum();
                let got = portable[r * out + o];
                let err = (got as f64 - exact).abs() as f32;
                let bound = error_bound(xr, wo);
                assert!(
                    err <= bound,
                    "[{rows}×{inp}]·[{out}×{inp}]ᵀ at ({r}, {o}): {got} vs {exact}, error {err} > bound {bound}"
                );
                worst_ratio = worst_ratio.max(err / bound);
            }
        }
        let detected = products(Kernel::detect(), &xq, &[&packed]).remove(0);
        assert!(
            detected
                .iter()
                .zip(&portable)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{:?} and portable kernels differ",
            Kernel::detect()
        );
        worst_ratio
    }

    #[test]
    fn kernels_match_f32_within_the_quantization_bound() {
        let mut worst_ratio = 0f32;
        for (i, &(rows, out, inp)) in [
            (1, 1, 1),
            (1, 17, 31),
            (3, 33, 100),
            (33, 47, 576),
            (5, 576, 1536),
            (9, 15, 33),
        ]
        .iter()
        .enumerate()
        {
            worst_ratio = worst_ratio.max(check(rows, out, inp, i as u64));
        }
        // The bound is tight enough to catch a wrong kernel: real errors come close to it.
        eprintln!("worst error / bound: {worst_ratio}");
        assert!(worst_ratio > 0.05, "worst error / bound {worst_ratio}");
    }

    #[test]
    fn vnni_kernel_is_the_one_used_when_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            assert_eq!(Kernel::detect(), Kernel::Avx512Vnni);
            return;
        }
        eprintln!("SKIP vnni kernel: this CPU has no AVX512-VNNI; only the portable kernel ran");
    }

    #[test]
    fn rows_do_not_depend_on_their_neighbours() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (out, inp) = (40, 70);
        let w = Int8Weight::pack(&random(out * inp, &mut rng), out, inp);
        let x = random(7 * inp, &mut rng);
        let all = w.matmul(&Int8Rows::quantize(&x, 7, inp));
        for r in 0..7 {
            let alone = w.matmul(&Int8Rows::quantize(&x[r * inp..][..inp], 1, inp));
            assert_eq!(alone, all[r * out..][..out], "row {r}");
        }
    }

    /// The row-major values and scales give back the dequantized weights bit for bit,
    /// also for an input size with a partial last block.
    #[test]
    fn row_major_layout_holds_the_same_weights() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (out, inp) in [(1, 32), (17, 40), (33, 96)] {
            let w = Int8Weight::pack(&random(out * inp, &mut rng), out, inp);
            let (values, scales) = w.row_major();
            let blocks = inp.div_ceil(BLOCK);
            assert_eq!((values.len(), scales.len()), (out * inp, out * blocks));
            let mut want = vec![0f32; out * inp];
            w.dequantize(0..out, 0..inp, &mut want);
            for (n, want) in want.iter().enumerate() {
                let (o, i) = (n / inp, n % inp);
                let got = values[n] as f32 * scales[o * blocks + i / BLOCK];
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "[{out}, {inp}] at ({o}, {i})"
                );
            }
        }
    }

    #[test]
    fn cache_follows_the_weight_tensor() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let cache = Int8Cache::default();
        let a = Tensor::ones((3, 5), DType::F32, &dev)?;
        let first = cache.get(&a)?.unwrap();
        assert!(Arc::ptr_eq(&first, &cache.get(&a.clone())?.unwrap()));
        let b = (a * 2.0)?;
        let second = cache.get(&b)?.unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        let x = Tensor::ones((1, 5), DType::F32, &dev)?;
        let y = project(&x, &[&second, &first])?;
        assert_eq!(y[0].to_vec2::<f32>()?, vec![vec![10.0; 3]]);
        assert_eq!(y[1].to_vec2::<f32>()?, vec![vec![5.0; 3]]);
        let half = Tensor::ones((3, 5), DType::BF16, &dev)?;
        assert!(cache.get(&half)?.is_none());
        Ok(())
    }
}
