//! The fused training kernels (`train_ops`, `CausalAttention`, the adapted projection in
//! `LoraLinear`) give the values and gradients
//! of the plain candle op compositions they replace, in f32 on the CPU.

mod common;

use autoif::model::lora::{Adapters, LoraAdapter, LoraLinear};
use autoif::model::ops::causal_attention::CausalAttention;
use autoif::model::ops::train_ops;
use candle_core::{DType, Device, Tensor, Var, D};

const TOLERANCE: f32 = 1e-5;

fn random(shape: &[usize], seed: u64) -> Tensor {
    // A cheap deterministic generator, so failures reproduce.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Largest absolute difference, relative to the larger magnitude when that exceeds 1.
fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1.0);
    let diff = common::max_abs_diff(got, want);
    assert!(
        diff <= TOLERANCE * scale,
        "{what}: max difference {diff} (scale {scale})"
    );
}

/// Value and gradient of `Σ weights · f(x)` with respect to `x`.
fn value_and_grad(x: &Var, weights: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
    let y = f(x.as_tensor());
    let loss = (&y * weights).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    (y, grads.get(x.as_tensor()).unwrap().clone())
}

#[test]
fn target_logprob_and_lse_match_log_softmax() {
    let (n, vocab) = (7, 53);
    let logits = Var::from_tensor(&(random(&[n, vocab], 1) * 3.0).unwrap()).unwrap();
    let targets = Tensor::from_vec(
        (0..n as u32).map(|i| (i * 11) % vocab as u32).collect(),
        n,
        &Device::Cpu,
    )
    .unwrap();
    let weights = random(&[n, 2], 2);
    let (fused, fused_grad) = value_and_grad(&logits, &weights, |x| {
        train_ops::target_logprob_and_lse(x, &targets).unwrap()
    });
    let (plain, plain_grad) = value_and_grad(&logits, &weights, |x| {
        let lse = x
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap();
        let picked = x.gather(&targets.unsqueeze(1).unwrap(), 1).unwrap();
        Tensor::cat(&[&(picked - &lse).unwrap(), &lse], 1).unwrap()
    });
    assert_close("log-probabilities and lse", &fused, &plain);
    assert_close("gradient", &fused_grad, &plain_grad);
}

/// The LM head fused with the log-probabilities: the composition's values and hidden-state
/// gradient (the same kernels, so equal to rounding), and no gradient for the head.
#[test]
fn head_target_logprob_matches_the_head_then_the_logprobs() {
    let (n, h, vocab) = (9, 24, 61);
    let hidden = Var::from_tensor(&random(&[n, h], 11)).unwrap();
    let head = (random(&[vocab, h], 12) * 0.5).unwrap();
    let targets = Tensor::from_vec(
        (0..n as u32).map(|i| (i * 17) % vocab as u32).collect(),
        n,
        &Device::Cpu,
    )
    .unwrap();
    let weights = random(&[n, 2], 13);
    let (fused, fused_grad) = value_and_grad(&hidden, &weights, |x| {
        train_ops::head_target_logprob_and_lse(x, &head, &targets).unwrap()
    });
    let (composed, composed_grad) = value_and_grad(&hidden, &weights, |x| {
        let logits = x.matmul(&head.t().unwrap()).unwrap();
        train_ops::target_logprob_and_lse(&logits, &targets).unwrap()
    });
    assert_close("log-probabilities and lse", &fused, &composed);
    assert_close("gradient", &fused_grad, &composed_grad);
    let loss = (train_ops::head_target_logprob_and_lse(hidden.as_tensor(), &head, &targets)
        .unwrap()
        * &weights)
        .unwrap()
        .sum_all()
        .unwrap();
    assert!(loss.backward().unwrap().get(&head).is_none());
}

#[test]
fn target_logprob_refuses_a_target_outside_the_vocabulary() {
    let logits = random(&[2, 5], 3);
    let targets = Tensor::new(&[1u32, 5], &Device::Cpu).unwrap();
    let err = train_ops::target_logprob_and_lse(&logits, &targets).unwrap_err();
    assert!(err.to_string().contains("target 5 outside"), "{err}");
}

#[test]
fn rms_norm_matches_its_definition() {
    let eps = 1e-5;
    let x = Var::from_tensor(&random(&[2, 3, 16], 6)).unwrap();
    let weight = random(&[16], 7);
    let weights = random(&[2, 3, 16], 8);
    let (fused, fused_grad) = value_and_grad(&x, &weights, |x| {
        train_ops::rms_norm(x, &weight, eps).unwrap()
    });
    let (plain, plain_grad) = value_and_grad(&x, &weights, |x| {
        let mean_sq = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        x.broadcast_div(&(mean_sq + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&weight)
            .unwrap()
    });
    assert_close("normalised", &fused, &plain);
    assert_close("gradient", &fused_grad, &plain_grad);
}

#[test]
fn swiglu_matches_silu_times_up() {
    let gate = Var::from_tensor(&random(&[3, 40], 9)).unwrap();
    let up = Var::from_tensor(&random(&[3, 40], 10)).unwrap();
    let weights = random(&[3, 40], 11);
    let run = |fused: bool| {
        let y = if fused {
            train_ops::swiglu(gate.as_tensor(), up.as_tensor()).unwrap()
        } else {
            (candle_nn::ops::silu(gate.as_tensor()).unwrap() * up.as_tensor()).unwrap()
        };
        let grads = (&y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        (
            y,
            grads.get(gate.as_tensor()).unwrap().clone(),
            grads.get(up.as_tensor()).unwrap().clone(),
        )
    };
    let (fused, fused_dgate, fused_dup) = run(true);
    let (plain, plain_dgate, plain_dup) = run(false);
    assert_close("product", &fused, &plain);
    assert_close("gradient of gate", &fused_dgate, &plain_dgate);
    assert_close("gradient of up", &fused_dup, &plain_dup);
}

#[test]
fn fused_ops_apply_only_to_f32_on_the_cpu() {
    let x = random(&[2, 2], 15);
    assert!(train_ops::fused_applies(&x));
    assert!(!train_ops::fused_applies(&x.to_dtype(DType::BF16).unwrap()));
}

/// Rotary embedding (two halves) on `[b, heads, t, d]` with tables `[t, d/2]`.
fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let d = x.dim(D::Minus1).unwrap();
    let full = |table: &Tensor| Tensor::cat(&[table, table], D::Minus1).unwrap();
    let x1 = x.narrow(D::Minus1, 0, d / 2).unwrap();
    let x2 = x.narrow(D::Minus1, d / 2, d / 2).unwrap();
    let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
    (x.broadcast_mul(&full(cos)).unwrap() + rotated.broadcast_mul(&full(sin)).unwrap()).unwrap()
}

#[test]
fn causal_attention_matches_rope_masked_softmax_attention() {
    // Two sequences of 6 tokens, 4 query heads sharing 2 KV heads of width 8.
    check_causal_attention(2, 6);
}

/// Sequences longer than the op's 64-row blocks of queries, the last block partial: the
/// blocks skip the keys after their last row, and the gradients of k and v add up over
/// the blocks.
#[test]
fn causal_attention_matches_over_several_blocks_of_queries() {
    check_causal_attention(2, 150);
}

/// The op against the plain composition over `b` sequences of `t` tokens, 4 query heads
/// sharing 2 KV heads of width 8: output and the gradients of q, k and v.
fn check_causal_attention(b: usize, t: usize) {
    let (heads, kv_heads, d) = (4, 2, 8);
    let q = Var::from_tensor(&random(&[b * t, heads * d], 16)).unwrap();
    let k = Var::from_tensor(&random(&[b * t, kv_heads * d], 17)).unwrap();
    let v = Var::from_tensor(&random(&[b * t, kv_heads * d], 18)).unwrap();
    let angles = random(&[t, d / 2], 19);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let weights = random(&[b * t, heads * d], 20);
    let run = |fused: bool| {
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let out = if fused {
            CausalAttention {
                segments: (0..b).map(|i| (i * t, t)).collect(),
                heads,
                kv_heads,
                head_dim: d,
                cos: cos.clone(),
                sin: sin.clone(),
            }
            .apply(qt, kt, vt)
            .unwrap()
        } else {
            let split = |x: &Tensor, n: usize| {
                x.reshape((b, t, n, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let group = heads / kv_heads;
            let repeat = |x: Tensor| {
                // [b, kv, t, d] → [b, heads, t, d], each KV head serving `group` heads.
                x.unsqueeze(2)
                    .unwrap()
                    .repeat((1, 1, group, 1, 1))
                    .unwrap()
                    .reshape((b, heads, t, d))
                    .unwrap()
            };
            let qh = rope_reference(&split(qt, heads), &cos, &sin);
            let kh = repeat(rope_reference(&split(kt, kv_heads), &cos, &sin));
            let vh = repeat(split(vt, kv_heads));
            let mask: Vec<f32> = (0..t)
                .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
                .collect();
            let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
            let scores = (qh.matmul(&kh.t().unwrap()).unwrap() / (d as f64).sqrt())
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            let max = scores.max_keepdim(D::Minus1).unwrap();
            let e = scores.broadcast_sub(&max).unwrap().exp().unwrap();
            let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
            probs
                .matmul(&vh)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b * t, heads * d))
                .unwrap()
        };
        let grads = (&out * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grad = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
        (out, grad(&q), grad(&k), grad(&v))
    };
    let (fused, fq, fk, fv) = run(true);
    let (plain, pq, pk, pv) = run(false);
    assert_close("attention output", &fused, &plain);
    assert_close("gradient of q", &fq, &pq);
    assert_close("gradient of k", &fk, &pk);
    assert_close("gradient of v", &fv, &pv);
}

#[test]
fn adapted_projection_matches_the_separate_ops() {
    // Over 128 rows the layer runs as one fused op; 100-row halves take the separate ops.
    let (rows, inp, out, r) = (200, 24, 20, 4);
    let x = Var::from_tensor(&random(&[rows, inp], 21)).unwrap();
    let a = Var::from_tensor(&random(&[r, inp], 22)).unwrap();
    let b = Var::from_tensor(&random(&[out, r], 23)).unwrap();
    let mut layer = LoraLinear::new(random(&[out, inp], 24), None);
    layer
        .set_adapter(Some(LoraAdapter {
            a: a.clone(),
            b: b.clone(),
            scale: 2.0,
        }))
        .unwrap();
    let weights = random(&[rows, out], 25);
    let run = |fused: bool| {
        let y = if fused {
            layer.forward(x.as_tensor(), Adapters::On).unwrap()
        } else {
            let half = |i: usize| {
                let part = x.as_tensor().narrow(0, i * rows / 2, rows / 2).unwrap();
                layer.forward(&part, Adapters::On).unwrap()
            };
            Tensor::cat(&[half(0), half(1)], 0).unwrap()
        };
        let grads = (&y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grad = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
        (y, grad(&x), grad(&a), grad(&b))
    };
    let (fused, fx, fa, fb) = run(true);
    let (plain, px, pa, pb) = run(false);
    assert_close("projection", &fused, &plain);
    assert_close("gradient of x", &fx, &px);
    assert_close("gradient of A", &fa, &pa);
    assert_close("gradient of B", &fb, &pb);
}
