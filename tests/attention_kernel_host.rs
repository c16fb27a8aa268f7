//! The CUDA attention kernels (kernels/causal_attention.cu and the tensor-core kernels of
//! kernels/flash_attention.cu), compiled for the host and run there
//! (tests/kernel_host/causal_attention.cpp replays the launches of
//! src/model/ops/causal_attention_cuda.rs), against their CPU twin, the `CausalAttention` op:
//! output and the q, k, v gradients, on random inputs with grouped KV heads, sequences of
//! different lengths and rows outside every sequence. Bounds: relative error (of the
//! whole tensor, in the 2-norm) 1e-5 in f32, 1e-3 in bf16 and f16 against the twin's
//! result rounded to the dtype, as the kernels compute in f32 and round once; the
//! tensor-core kernels round operands too (see `Dtype::tiled_bound`), and are also
//! compared with the scalar kernels on the same inputs. CI has no GPU;
//! this is how it checks the kernels' indexing and arithmetic. Needs a C++17 compiler
//! (`c++`, or `CXX`) with threads.

mod common;

use autoif::model::ops::causal_attention::CausalAttention;
use candle_core::{Device, Tensor, Var};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The host build of the kernels' driver, compiled once per test run.
fn driver() -> &'static Path {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("causal_attention_host");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let status = Command::new(&cxx)
            .args([
                "-std=c++17",
                "-O2",
                "-Wall",
                "-Werror",
                "-pthread",
                "-DAUTOIF_HOST_EMULATION",
            ])
            .arg(root.join("tests/kernel_host/causal_attention.cpp"))
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run the C++ compiler {cxx} (set CXX): {e}"));
        assert!(status.success(), "{cxx} failed on the attention kernels");
        out
    })
}

/// The kernels' element type; the driver's code for it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dtype {
    F32 = 0,
    Bf16 = 1,
    F16 = 2,
}

impl Dtype {
    fn rounded(self, x: Vec<f32>) -> Vec<f32> {
        match self {
            Dtype::F32 => x,
            Dtype::Bf16 => x
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect(),
            Dtype::F16 => x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        }
    }

    fn bound(self) -> f64 {
        if self == Dtype::F32 {
            1e-5
        } else {
            1e-3
        }
    }

    /// The bound for the tensor-core kernels' result `name`. They round the rotated q
    /// and k to the dtype, and the probabilities (for the output and dv) or
    /// p·(dp − δ) (for dq and dk) before the products that take them; dq = ds·k and
    /// dk = dsᵀ·q take the rounded k or q a second time. With the result's own rounding
    /// (which the reference shares) that is four roundings for the output and dv, five
    /// for dq and dk, each off by at most half the dtype's machine epsilon (2⁻⁸ for
    /// bf16, 2⁻¹¹ for f16) relative to the element; the bound sums them as if every
    /// error pushed the same way. The scores' errors reach the results through exp,
    /// i.e. relative to each probability, so they count as relative too.
    fn tiled_bound(self, name: &str) -> f64 {
        let epsilon = match self {
            Dtype::F32 => unreachable!("the tiled kernels take bf16 and f16"),
            Dtype::Bf16 => 2f64.powi(-8),
            Dtype::F16 => 2f64.powi(-11),
        };
        let roundings = if matches!(name, "dq" | "dk") {
            5.0
        } else {
            4.0
        };
        roundings * epsilon / 2.0
    }
}

struct Case {
    rows: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
    segments: Vec<(usize, usize)>,
    dtype: Dtype,
    /// On the tensor-core kernels (bf16 and f16), forward and backward.
    tiled: bool,
}

fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    assert!(norm > 0.0, "reference is all zeros");
    (diff / norm).sqrt()
}

/// (output, [dq | dk | dv]) from the host-compiled kernels.
fn kernels(case: &Case, inputs: &[&[f32]; 6], positions: usize) -> (Vec<f32>, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    let mut bytes = Vec::new();
    let header = [
        case.rows,
        case.heads,
        case.kv_heads,
        case.d,
        positions,
        case.dtype as usize,
        usize::from(case.tiled),
        case.segments.len(),
    ];
    let seg_words = case.segments.iter().flat_map(|&(f, l)| [f, l]);
    for w in header.into_iter().chain(seg_words) {
        bytes.extend_from_slice(&(w as u32).to_le_bytes());
    }
    for x in inputs {
        x.iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    }
    std::fs::write(&input, bytes).unwrap();
    let run = Command::new(driver())
        .arg(&input)
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "kernel driver: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let floats: Vec<f32> = std::fs::read(&output)
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let out_len = case.rows * case.heads * case.d;
    assert_eq!(
        floats.len(),
        out_len + case.rows * (case.heads + 2 * case.kv_heads) * case.d
    );
    (floats[..out_len].to_vec(), floats[out_len..].to_vec())
}

fn check(case: Case, seed: u64) {
    let (rows, d) = (case.rows, case.d);
    let positions = case.segments.iter().map(|s| s.1).max().unwrap();
    let round = |x: Vec<f32>| case.dtype.rounded(x);
    let q = round(common::random_values(rows * case.heads * d, seed, 1.0));
    let k = round(common::random_values(
        rows * case.kv_heads * d,
        seed + 1,
        1.0,
    ));
    let v = round(common::random_values(
        rows * case.kv_heads * d,
        seed + 2,
        1.0,
    ));
    let dout = round(common::random_values(rows * case.heads * d, seed + 3, 1.0));
    // Rope tables as the models build them: angle pos · 10000^(−2i/d).
    let half = d / 2;
    let angle = |pos: usize, i: usize| pos as f32 * 10000f32.powf(-2.0 * i as f32 / d as f32);
    let table = |f: fn(f32) -> f32| -> Vec<f32> {
        (0..positions * half)
            .map(|n| f(angle(n / half, n % half)))
            .collect()
    };
    let (cos, sin) = (table(f32::cos), table(f32::sin));

    let dev = Device::Cpu;
    let var = |x: &[f32], width: usize| Var::from_vec(x.to_vec(), (rows, width * d), &dev).unwrap();
    let (qv, kv, vv) = (
        var(&q, case.heads),
        var(&k, case.kv_heads),
        var(&v, case.kv_heads),
    );
    let op = CausalAttention {
        segments: case.segments.clone(),
        heads: case.heads,
        kv_heads: case.kv_heads,
        head_dim: d,
        cos: Tensor::from_vec(cos.clone(), (positions, half), &dev).unwrap(),
        sin: Tensor::from_vec(sin.clone(), (positions, half), &dev).unwrap(),
    };
    let out = op
        .apply(qv.as_tensor(), kv.as_tensor(), vv.as_tensor())
        .unwrap();
    let g = Tensor::from_vec(dout.clone(), (rows, case.heads * d), &dev).unwrap();
    let grads = (&out * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let grad_of = |x: &Var| -> Vec<f32> {
        grads
            .get(x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let twin_out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();

    let inputs = [&q[..], &k, &v, &dout, &cos, &sin];
    let (got_out, got_grads) = kernels(&case, &inputs, positions);
    if case.tiled {
        // The tensor-core kernels against their other reference, the scalar kernels on
        // the same inputs, whose results are the twin's rounded once (a rounding the
        // tensor-core bound counts already).
        let scalar = Case {
            tiled: false,
            segments: case.segments.clone(),
            ..case
        };
        let (scalar_out, scalar_grads) = kernels(&scalar, &inputs, positions);
        for (name, got, want, bound) in [
            (
                "output",
                &got_out,
                &scalar_out,
                case.dtype.tiled_bound("output"),
            ),
            (
                "dq, dk, dv",
                &got_grads,
                &scalar_grads,
                case.dtype.tiled_bound("dq"),
            ),
        ] {
            let err = relative_error(got, want);
            eprintln!(
                "{name} ({:?}, d {d}): tiled vs scalar {err:.2e}",
                case.dtype
            );
            assert!(
                err <= bound,
                "{name}: tiled vs scalar {err:.2e} > {bound:.1e}"
            );
        }
    }
    let width = (case.heads + 2 * case.kv_heads) * d;
    let columns = |from: usize, n: usize| -> Vec<f32> {
        got_grads
            .chunks(width)
            .flat_map(|row| row[from..from + n].to_vec())
            .collect()
    };
    let (qw, kw) = (case.heads * d, case.kv_heads * d);
    let pairs = [
        ("output", got_out, twin_out),
        ("dq", columns(0, qw), grad_of(&qv)),
        ("dk", columns(qw, kw), grad_of(&kv)),
        ("dv", columns(qw + kw, kw), grad_of(&vv)),
    ];
    for (name, got, want) in pairs {
        let want = round(want);
        let err = relative_error(&got, &want);
        let (dtype, tiled) = (case.dtype, case.tiled);
        let bound = if tiled {
            dtype.tiled_bound(name)
        } else {
            dtype.bound()
        };
        eprintln!("{name} ({dtype:?}, d {d}, tiled {tiled}): relative error {err:.2e}");
        assert!(
            err <= bound,
            "{name}: relative error {err:.2e} > {bound:.1e} ({dtype:?}, tiled {tiled})"
        );
        // Rows outside every sequence stay exactly zero.
        let stride = got.len() / rows;
        for (r, row) in got.chunks(stride).enumerate() {
            if !case.segments.iter().any(|&(f, l)| (f..f + l).contains(&r)) {
                assert!(
                    row.iter().all(|&x| x == 0.0),
                    "{name}: padding row {r} not zero"
                );
            }
        }
    }
}

/// Grouped KV heads (2 query heads per KV head), three sequences of 7, 12 and 1 tokens,
/// padding rows between and after them.
fn grouped_64(dtype: Dtype) -> Case {
    Case {
        rows: 24,
        heads: 4,
        kv_heads: 2,
        d: 64,
        segments: vec![(0, 7), (9, 12), (21, 1)],
        dtype,
        tiled: false,
    }
}

/// Head size 128 with all query heads on one KV head, and a 33-token sequence (longer
/// than a warp, so rows of one sequence fall in different thread blocks' ranges).
fn shared_kv_128(dtype: Dtype) -> Case {
    Case {
        rows: 40,
        heads: 4,
        kv_heads: 1,
        d: 128,
        segments: vec![(0, 5), (5, 33)],
        dtype,
        tiled: false,
    }
}

#[test]
fn f32_kernels_match_the_cpu_twin() {
    check(grouped_64(Dtype::F32), 11);
    check(shared_kv_128(Dtype::F32), 12);
}

#[test]
fn bf16_kernels_match_the_cpu_twin() {
    check(grouped_64(Dtype::Bf16), 21);
    check(shared_kv_128(Dtype::Bf16), 22);
}

#[test]
fn f16_kernels_match_the_cpu_twin() {
    check(grouped_64(Dtype::F16), 31);
    check(shared_kv_128(Dtype::F16), 32);
}

/// Packed sequences long enough for the tensor-core kernels' tiles to matter: blocks of
/// query (or key) rows that start mid-sequence, sequences that end mid-block and mid-tile, key
/// tiles that straddle two sequences, a one-token sequence and padding between them;
/// 6 query heads on 2 KV heads (head size 64) or 3 on 1 (head size 128).
fn tiled_ragged(dtype: Dtype, d: usize) -> Case {
    Case {
        rows: 160,
        heads: if d == 64 { 6 } else { 3 },
        kv_heads: if d == 64 { 2 } else { 1 },
        d,
        segments: vec![(0, 70), (73, 5), (78, 1), (80, 77)],
        dtype,
        tiled: true,
    }
}

#[test]
fn bf16_tensor_core_kernels_match_the_cpu_twin() {
    let tiled = |case: Case| Case {
        tiled: true,
        ..case
    };
    check(tiled(grouped_64(Dtype::Bf16)), 51);
    check(tiled(shared_kv_128(Dtype::Bf16)), 52);
    check(tiled_ragged(Dtype::Bf16, 64), 53);
    check(tiled_ragged(Dtype::Bf16, 128), 54);
}

#[test]
fn f16_tensor_core_kernels_match_the_cpu_twin() {
    let tiled = |case: Case| Case {
        tiled: true,
        ..case
    };
    check(tiled(grouped_64(Dtype::F16)), 61);
    check(tiled(shared_kv_128(Dtype::F16)), 62);
    check(tiled_ragged(Dtype::F16, 64), 63);
    check(tiled_ragged(Dtype::F16, 128), 64);
}

#[test]
fn one_query_head_per_kv_head() {
    let case = Case {
        rows: 18,
        heads: 3,
        kv_heads: 3,
        d: 64,
        segments: vec![(2, 16)],
        dtype: Dtype::F32,
        tiled: false,
    };
    check(case, 41);
}

/// A row's output depends on its own sequence only: breaking one key in the second
/// sequence must change the kernels' output there and nowhere else. (Guards against the
/// comparison passing because both sides share a mistake in the segment bookkeeping.)
fn sequences_are_isolated(case: Case) {
    let (rows, d) = (case.rows, case.d);
    let positions = 12;
    let q = common::random_values(rows * case.heads * d, 41, 1.0);
    let k = common::random_values(rows * case.kv_heads * d, 42, 1.0);
    let v = common::random_values(rows * case.kv_heads * d, 43, 1.0);
    let dout = common::random_values(rows * case.heads * d, 44, 1.0);
    let ones = vec![1.0f32; positions * d / 2];
    let zeros = vec![0.0f32; positions * d / 2];
    let (base, _) = kernels(&case, &[&q, &k, &v, &dout, &ones, &zeros], positions);
    let mut k2 = k.clone();
    // Row 9 is the first key of the second sequence (rows 9..21). Row 9 itself attends
    // to that key alone, with weight 1 whatever it is, so rows 10..21 change.
    k2[9 * case.kv_heads * d] += 5.0;
    let (changed, _) = kernels(&case, &[&q, &k2, &v, &dout, &ones, &zeros], positions);
    let width = case.heads * d;
    for r in 0..rows {
        let same = base[r * width..(r + 1) * width] == changed[r * width..(r + 1) * width];
        assert_eq!(same, !(10..21).contains(&r), "row {r}");
    }
}

#[test]
fn sequences_do_not_see_each_other() {
    sequences_are_isolated(grouped_64(Dtype::F32));
    sequences_are_isolated(Case {
        tiled: true,
        ..grouped_64(Dtype::Bf16)
    });
}
