//! Exact f32 projections for CPU inference: `y = x · Wᵀ` straight from the weights as
//! loaded (`[out, in]` row-major; no packed copy, which would double the model's memory),
//! for any number of rows.
//!
//! Every output is one dot product summed in a fixed order, whatever the batch, the tile
//! it falls in or the kernel: sixteen lanes, lane `j` accumulating inputs `j, j + 16,
//! j + 32, …` with fused multiply-adds (the last chunk zero-padded), then the lanes added
//! in the fixed tree of `reduce_lanes`. So a sequence gets bit-identical results whatever
//! else shares its batch (greedy decoding does not depend on the batch size), and the
//! AVX-512, AVX2 and portable kernels agree bit for bit.
//!
//! The AVX-512 kernel computes tiles of up to 4 input rows × 4 weight rows: each vector
//! it loads serves four products, so at batch ≥ 4 it is bound by the FMA units rather
//! than by loads. Threads split the work by blocks of weight rows (and of input rows for
//! long prefills), and several projections of one input (q/k/v, gate/up) are one parallel
//! pass, one round of thread wake-ups.
//!
//! With few input rows (decoding) the products are bound by reading the weights, not by
//! the arithmetic: a weight that has a lossless block form (`exact_blocks`: weights
//! dequantized from a GGUF file) is read from that, 0.75–1.125 bytes per weight instead
//! of 4, and each task decodes a tile's weight rows into a buffer the same kernels read.
//! The decoded values are the weight's bits, so the results are too.

use super::exact_blocks::BlockWeight;
use super::out_ptr::OutPtr;
use anyhow::Result;
use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

/// Lanes of one dot product's partial sums (one 512-bit vector of f32).
const LANES: usize = 16;
/// Input rows per kernel tile.
const TILE_ROWS: usize = 4;
/// Weight rows (outputs) per kernel tile.
const TILE_COLS: usize = 4;
/// Weight rows per parallel task: 32 rows of up to a few thousand inputs stay in L2 while
/// every input row of the task passes over them.
const COL_BLOCK: usize = 32;
/// Input rows per parallel task (prefill): bounds the rows a task streams through L2.
const ROW_BLOCK: usize = 64;

/// One weight of a product: its f32 values as loaded (`[out, inp]` row-major), or their
/// lossless block form (`exact_blocks`), which gives the same values bit for bit.
#[derive(Clone, Copy)]
pub enum WeightRows<'a> {
    F32(&'a [f32]),
    Blocks(&'a BlockWeight),
}

impl WeightRows<'_> {
    fn out(self, inp: usize) -> usize {
        match self {
            WeightRows::F32(w) => {
                assert!(
                    inp > 0 && w.len() % inp == 0,
                    "exact product: weight width differs"
                );
                w.len() / inp
            }
            WeightRows::Blocks(b) => {
                assert_eq!(b.inp(), inp, "exact product: weight width differs");
                b.out()
            }
        }
    }
}

/// Up to this many input rows the products read a weight's block form when it has one:
/// with few rows they are bound by reading the weights, with many by the arithmetic,
/// where decoding the blocks would only add work. 128 rather than 64: a decode stream at
/// batch 128 often holds a few more than 64 rows (uneven halves, a prompt's prefill), and
/// reading the f32 weights from memory then cost more than decoding the blocks (IFEval on
/// 541 prompts at batch 128: 5 min 33 s with 64, 5 min 21 s with 128).
pub const BLOCK_ROWS: usize = 128;

/// `x · Wᵀ` for each weight `W` of `weights`, `x` being `[rows, inp]` row-major; returns
/// each product as row-major `[rows, out_i]`.
pub fn products(x: &[f32], rows: usize, inp: usize, weights: &[WeightRows]) -> Vec<Vec<f32>> {
    products_with(Kernel::detect(), x, rows, inp, weights)
}

/// `x · Wᵀ` for each of `weights` when `x` and every weight are CPU f32 tensors (`x`
/// `[rows, in]`, weights `[out, in]` contiguous); `None` otherwise. A weight given with
/// its block form is read from that (see `BLOCK_ROWS`).
pub fn project(
    x: &Tensor,
    weights: &[(&Tensor, Option<&BlockWeight>)],
) -> Result<Option<Vec<Tensor>>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !f32_cpu(x) || x.rank() != 2 || !weights.iter().all(|(w, _)| f32_cpu(w) && w.rank() == 2) {
        return Ok(None);
    }
    let (rows, inp) = x.dims2()?;
    let x = x.contiguous()?;
    let (x_storage, x_layout) = x.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(xs)), Some((xs_start, xs_end))) =
        (&*x_storage, x_layout.contiguous_offsets())
    else {
        return Ok(None);
    };
    let guards: Vec<_> = weights
        .iter()
        .map(|(w, _)| w.storage_and_layout())
        .collect();
    let mut rows_of = Vec::with_capacity(weights.len());
    for ((w, blocks), (storage, layout)) in weights.iter().zip(&guards) {
        let (out, w_in) = w.dims2()?;
        let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
            (&**storage, layout.contiguous_offsets())
        else {
            return Ok(None);
        };
        if w_in != inp {
            anyhow::bail!("exact product: input [{rows}, {inp}] for weight [{out}, {w_in}]");
        }
        rows_of.push(match blocks {
            Some(b) if rows <= BLOCK_ROWS && b.out() == out && b.inp() == inp => {
                WeightRows::Blocks(b)
            }
            _ => WeightRows::F32(&data[start..end]),
        });
    }
    let ys = products(&xs[xs_start..xs_end], rows, inp, &rows_of);
    drop(guards);
    ys.into_iter()
        .zip(weights)
        .map(|(y, (w, _))| Ok(Tensor::from_vec(y, (rows, w.dim(0)?), x.device())?))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn products_with(
    kernel: Kernel,
    x: &[f32],
    rows: usize,
    inp: usize,
    weights: &[WeightRows],
) -> Vec<Vec<f32>> {
    assert_eq!(
        x.len(),
        rows * inp,
        "exact product: input is not [{rows}, {inp}]"
    );
    let outs: Vec<usize> = weights.iter().map(|w| w.out(inp)).collect();
    // Not zeroed: the tiles below write every element (zeroing was 1% of a decode step).
    let mut ys: Vec<Vec<f32>> = outs
        .iter()
        .map(|&out| Vec::with_capacity(rows * out))
        .collect();
    let mut tasks = Vec::new();
    for (i, (y, &out)) in ys.iter_mut().zip(&outs).enumerate() {
        let y = OutPtr(y.as_mut_ptr());
        for r0 in (0..rows).step_by(ROW_BLOCK) {
            for c0 in (0..out).step_by(COL_BLOCK) {
                tasks.push((i, r0, c0, y));
            }
        }
    }
    // `decoded`: a tile's weight rows decoded from blocks, one buffer per run of tasks on
    // a thread rather than one allocation per task.
    tasks
        .into_par_iter()
        .for_each_init(Vec::new, |decoded, (i, r0, c0, y)| {
            let out = outs[i];
            let row_end = (r0 + ROW_BLOCK).min(rows);
            for c in (c0..(c0 + COL_BLOCK).min(out)).step_by(TILE_COLS) {
                let cols = TILE_COLS.min(out - c);
                // A short tile repeats its last weight row; the copies' outputs are dropped.
                let ws: [&[f32]; TILE_COLS] = match weights[i] {
                    WeightRows::F32(w) => {
                        std::array::from_fn(|j| &w[(c + j.min(cols - 1)) * inp..][..inp])
                    }
                    WeightRows::Blocks(b) => {
                        decoded.resize(cols * inp, 0.0);
                        for (j, dst) in decoded.chunks_exact_mut(inp).enumerate() {
                            b.decode_row(c + j, dst);
                        }
                        // The next tile's blocks load while this one's products run.
                        let next = c + TILE_COLS;
                        if next < (c0 + COL_BLOCK).min(out) {
                            b.prefetch_rows(next..next + TILE_COLS);
                        }
                        std::array::from_fn(|j| &decoded[j.min(cols - 1) * inp..][..inp])
                    }
                };
                for r in (r0..row_end).step_by(TILE_ROWS) {
                    let n = TILE_ROWS.min(row_end - r);
                    let xs: [&[f32]; TILE_ROWS] =
                        std::array::from_fn(|j| &x[(r + j.min(n - 1)) * inp..][..inp]);
                    let mut tile = [[0f32; TILE_COLS]; TILE_ROWS];
                    kernel.run(&xs, n, &ws, &mut tile);
                    for (j, tile_row) in tile.iter().enumerate().take(n) {
                        // Safety: tasks write disjoint (row, column) sets of each `[rows, out]`
                        // buffer, which outlives the parallel loop. A whole tile row is one
                        // fixed-size store; a copy of variable length was a `memmove` call
                        // per row, 2% of a decode step.
                        unsafe {
                            let dst = y.get().add((r + j) * out + c);
                            if cols == TILE_COLS {
                                dst.cast::<[f32; TILE_COLS]>().write_unaligned(*tile_row);
                            } else {
                                std::ptr::copy_nonoverlapping(tile_row.as_ptr(), dst, cols);
                            }
                        }
                    }
                }
            }
        });
    for (y, &out) in ys.iter_mut().zip(&outs) {
        // Safety: the tasks above covered every (row, column) of each `[rows, out]` buffer.
        unsafe { y.set_len(rows * out) };
    }
    ys
}

type Tile = [[f32; TILE_COLS]; TILE_ROWS];

/// The tile kernels, chosen from what the CPU supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Fills `tile[r][c]` with `xs[r] · ws[c]` for `r < rows` (rows past it are left
    /// as they are or filled with copies).
    fn run(self, xs: &[&[f32]; TILE_ROWS], rows: usize, ws: &[&[f32]; TILE_COLS], tile: &mut Tile) {
        match self {
            // Safety: `detect` saw the features; every slice holds the same `inp` values.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                match rows {
                    1 => avx512::tile::<1>(xs, ws, tile),
                    2 => avx512::tile::<2>(xs, ws, tile),
                    3 => avx512::tile::<3>(xs, ws, tile),
                    _ => avx512::tile::<4>(xs, ws, tile),
                }
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe {
                for r in (0..rows).step_by(2) {
                    for c in (0..TILE_COLS).step_by(2) {
                        avx2::pair(xs, r, ws, c, tile);
                    }
                }
            },
            Kernel::Portable => {
                for (x, tile_row) in xs.iter().zip(tile.iter_mut()).take(rows) {
                    for (w, y) in ws.iter().zip(tile_row.iter_mut()) {
                        *y = dot_portable(x, w);
                    }
                }
            }
        }
    }
}

/// The reference every kernel matches bit for bit: sixteen lanes of fused multiply-adds
/// (`x[i]·w[i] + acc`), the last chunk zero-padded, then `reduce_lanes`.
pub(super) fn dot_portable(x: &[f32], w: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    for (cx, cw) in x.chunks(LANES).zip(w.chunks(LANES)) {
        for (j, lane) in lanes.iter_mut().enumerate() {
            let (a, b) = (
                cx.get(j).copied().unwrap_or(0.0),
                cw.get(j).copied().unwrap_or(0.0),
            );
            *lane = a.mul_add(b, *lane);
        }
    }
    reduce_lanes(&lanes)
}

/// The fixed summation tree over the sixteen lanes: halves, then quarters, then adjacent
/// pairs (the order `vhaddps` gives).
fn reduce_lanes(l: &[f32; LANES]) -> f32 {
    let s: [f32; 8] = std::array::from_fn(|j| l[j] + l[j + 8]);
    let t: [f32; 4] = std::array::from_fn(|j| s[j] + s[j + 4]);
    (t[0] + t[1]) + (t[2] + t[3])
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, LANES, TILE_COLS, TILE_ROWS};
    use std::arch::x86_64::*;

    /// `R` input rows × 4 weight rows; the accumulators stay in registers (16 at most).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const R: usize>(
        xs: &[&[f32]; TILE_ROWS],
        ws: &[&[f32]; TILE_COLS],
        tile: &mut Tile,
    ) {
        let inp = ws[0].len();
        let mut acc = [[_mm512_setzero_ps(); TILE_COLS]; R];
        let full = inp / LANES;
        let (xp, wp): ([*const f32; R], [*const f32; TILE_COLS]) = (
            std::array::from_fn(|r| xs[r].as_ptr()),
            std::array::from_fn(|c| ws[c].as_ptr()),
        );
        for i in 0..full {
            let o = i * LANES;
            let w: [__m512; TILE_COLS] = std::array::from_fn(|c| _mm512_loadu_ps(wp[c].add(o)));
            for r in 0..R {
                let x = _mm512_loadu_ps(xp[r].add(o));
                for c in 0..TILE_COLS {
                    acc[r][c] = _mm512_fmadd_ps(x, w[c], acc[r][c]);
                }
            }
        }
        let rest = inp - full * LANES;
        if rest > 0 {
            // Masked-off lanes load as zeros: 0·0 + acc, as the portable kernel pads.
            let (m, o) = ((1u32 << rest) as u16 - 1, full * LANES);
            let w: [__m512; TILE_COLS] =
                std::array::from_fn(|c| _mm512_maskz_loadu_ps(m, wp[c].add(o)));
            for r in 0..R {
                let x = _mm512_maskz_loadu_ps(m, xp[r].add(o));
                for c in 0..TILE_COLS {
                    acc[r][c] = _mm512_fmadd_ps(x, w[c], acc[r][c]);
                }
            }
        }
        for r in 0..R {
            let sums = reduce4(acc[r]);
            _mm_storeu_ps(tile[r].as_mut_ptr(), sums);
        }
    }

    /// `reduce_lanes` of four accumulators at once, as a vector of the four sums.
    #[inline(always)]
    unsafe fn reduce4(a: [__m512; 4]) -> __m128 {
        // Halves: [a.lo + a.hi | b.lo + b.hi], lane j + lane j + 8.
        let halves = |x: __m512, y: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y),
            )
        };
        let (ab, cd) = (halves(a[0], a[1]), halves(a[2], a[3]));
        // Quarters: one 128-bit chunk per accumulator, lane j + lane j + 4.
        let q = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd),
        );
        // Adjacent pairs, then the two pair sums: lane 0 of each chunk ends with its total.
        let p = _mm512_add_ps(q, _mm512_permute_ps::<0b10_11_00_01>(q));
        let t = _mm512_add_ps(p, _mm512_permute_ps::<0b01_00_11_10>(p));
        _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, t))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, LANES, TILE_COLS, TILE_ROWS};
    use std::arch::x86_64::*;

    /// Input rows `r, r + 1` × weight rows `c, c + 1` of the tile (16 registers hold 8
    /// accumulators: each dot product's sixteen lanes are two 256-bit halves).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pair(
        xs: &[&[f32]; TILE_ROWS],
        r: usize,
        ws: &[&[f32]; TILE_COLS],
        c: usize,
        tile: &mut Tile,
    ) {
        let inp = ws[0].len();
        let xp = [xs[r].as_ptr(), xs[r + 1].as_ptr()];
        let wp = [ws[c].as_ptr(), ws[c + 1].as_ptr()];
        let mut lo = [[_mm256_setzero_ps(); 2]; 2];
        let mut hi = [[_mm256_setzero_ps(); 2]; 2];
        let full = inp / LANES;
        for i in 0..full {
            let o = i * LANES;
            let w: [[__m256; 2]; 2] = std::array::from_fn(|k| {
                [
                    _mm256_loadu_ps(wp[k].add(o)),
                    _mm256_loadu_ps(wp[k].add(o + 8)),
                ]
            });
            for a in 0..2 {
                let x = [
                    _mm256_loadu_ps(xp[a].add(o)),
                    _mm256_loadu_ps(xp[a].add(o + 8)),
                ];
                for k in 0..2 {
                    lo[a][k] = _mm256_fmadd_ps(x[0], w[k][0], lo[a][k]);
                    hi[a][k] = _mm256_fmadd_ps(x[1], w[k][1], hi[a][k]);
                }
            }
        }
        let rest = inp - full * LANES;
        if rest > 0 {
            let o = full * LANES;
            let mask = |from: usize| {
                let m: [i32; 8] = std::array::from_fn(|j| if from + j < rest { -1 } else { 0 });
                _mm256_loadu_si256(m.as_ptr().cast())
            };
            let (m0, m1) = (mask(0), mask(8));
            let w: [[__m256; 2]; 2] = std::array::from_fn(|k| {
                [
                    _mm256_maskload_ps(wp[k].add(o), m0),
                    _mm256_maskload_ps(wp[k].add(o + 8), m1),
                ]
            });
            for a in 0..2 {
                let x = [
                    _mm256_maskload_ps(xp[a].add(o), m0),
                    _mm256_maskload_ps(xp[a].add(o + 8), m1),
                ];
                for k in 0..2 {
                    lo[a][k] = _mm256_fmadd_ps(x[0], w[k][0], lo[a][k]);
                    hi[a][k] = _mm256_fmadd_ps(x[1], w[k][1], hi[a][k]);
                }
            }
        }
        for a in 0..2 {
            // Halves, quarters, then adjacent pairs twice (`reduce_lanes`).
            let quarter = |k: usize| {
                let s = _mm256_add_ps(lo[a][k], hi[a][k]);
                _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s))
            };
            let p = _mm_hadd_ps(quarter(0), quarter(1));
            let t = _mm_hadd_ps(p, p);
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), t);
            tile[r + a][c] = out[0];
            tile[r + a][c + 1] = out[1];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of mixed signs and magnitudes, so that summation order shows in the bits.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32;
                (v - 0.5) * (1.0 + (i % 7) as f32)
            })
            .collect()
    }

    fn kernels() -> Vec<Kernel> {
        let mut k = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                k.push(Kernel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                k.push(Kernel::Avx512);
            }
        }
        k
    }

    /// Every kernel gives the reference's bits for every output, across tile edges (rows
    /// and outputs not multiples of 4, inputs not a multiple of 16, several row blocks).
    #[test]
    fn kernels_match_the_portable_reference_bit_for_bit() {
        for &(rows, out, inp) in &[
            (1, 5, 3),
            (3, 37, 16),
            (7, 33, 45),
            (70, 9, 576),
            (5, 66, 100),
        ] {
            let x = values(rows * inp, 1);
            let w1 = values(out * inp, 2);
            let w2 = values(3 * inp, 3);
            let want: Vec<Vec<f32>> = [&w1, &w2]
                .iter()
                .map(|w| {
                    (0..rows)
                        .flat_map(|r| {
                            let o = w.len() / inp;
                            let x = &x[r * inp..][..inp];
                            (0..o).map(move |c| dot_portable(x, &w[c * inp..][..inp]))
                        })
                        .collect()
                })
                .collect();
            for kernel in kernels() {
                let got = products_with(
                    kernel,
                    &x,
                    rows,
                    inp,
                    &[WeightRows::F32(&w1), WeightRows::F32(&w2)],
                );
                for (g, w) in got.iter().zip(&want) {
                    let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{kernel:?} differs at rows {rows}, out {out}, in {inp}"
                    );
                }
            }
        }
    }

    /// A weight read from its block form gives the f32 weight's products bit for bit, for
    /// every kernel, one row or a batch spanning several row blocks.
    #[test]
    fn block_weights_give_the_f32_products_bit_for_bit() -> Result<()> {
        use super::super::exact_blocks::tests::dequantized;
        use candle_core::quantized::GgmlDType;
        let (out, inp) = (45, 576);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = dequantized(dtype, out, inp, 21)?;
            let blocks = BlockWeight::encode(&w, out, inp).expect("a block form");
            for rows in [1, 5, 70] {
                let x = values(rows * inp, 8);
                for kernel in kernels() {
                    let dense = products_with(kernel, &x, rows, inp, &[WeightRows::F32(&w)]);
                    let read = products_with(kernel, &x, rows, inp, &[WeightRows::Blocks(&blocks)]);
                    assert!(
                        dense[0]
                            .iter()
                            .zip(&read[0])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{dtype:?}, {kernel:?}, rows {rows}"
                    );
                }
            }
        }
        Ok(())
    }

    /// A row's outputs do not depend on the other rows of the batch.
    #[test]
    fn a_row_gets_the_same_bits_in_any_batch() {
        let (inp, out) = (200, 50);
        let x = values(9 * inp, 4);
        let w = values(out * inp, 5);
        let batch = products(&x, 9, inp, &[WeightRows::F32(&w)]).remove(0);
        for r in 0..9 {
            let alone = products(&x[r * inp..][..inp], 1, inp, &[WeightRows::F32(&w)]).remove(0);
            assert_eq!(
                alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                batch[r * out..][..out]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                "row {r}"
            );
        }
    }

    /// The reference is a dot product: against an f64 sum, within the classic bound of an
    /// f32 sum of n products, γₙ · Σ|x·w| with γₙ = n·u / (1 − n·u), u = 2⁻²⁴ (each
    /// product enters one rounded fused add and no value passes through more than n
    /// roundings: ⌈n/16⌉ in its lane and 4 in the tree).
    #[test]
    fn reference_is_within_the_rounding_bound_of_an_f64_dot() {
        for n in [1usize, 15, 16, 17, 576, 1536] {
            let (x, w) = (values(n, 6), values(n, 7));
            let exact: f64 = x.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
            let magnitude: f64 = x
                .iter()
                .zip(&w)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            let nu = n as f64 * f32::EPSILON as f64 / 2.0;
            let bound = nu / (1.0 - nu) * magnitude;
            let got = dot_portable(&x, &w) as f64;
            assert!(
                (got - exact).abs() <= bound,
                "n {n}: {got} vs {exact} (bound {bound})"
            );
        }
    }

    #[test]
    fn tensors_of_other_dtypes_are_left_to_the_caller() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::ones((2, 4), DType::F32, &dev)?;
        let w16 = Tensor::ones((3, 4), DType::F16, &dev)?;
        assert!(project(&x, &[(&w16, None)])?.is_none());
        let w = Tensor::arange(0f32, 12.0, &dev)?.reshape((3, 4))?;
        let y = project(&x, &[(&w, None)])?
            .expect("f32 on the CPU")
            .remove(0);
        assert_eq!(y.to_vec2::<f32>()?, vec![vec![6.0, 22.0, 38.0]; 2]);
        Ok(())
    }
}
