//! Optimisation: AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW`), clipping
//! by global norm, gradient accumulation, and the warm-up + decay learning-rate schedules of
//! `transformers`. All state is f32 and can be written to and read from safetensors, so a
//! resumed run continues bit for bit.

use crate::validation::Problems;
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults except weight decay, which LoRA recipes (PEFT, LLaMA-Factory)
    /// leave at 0: the low-rank update is already a strong constraint.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamWConfig {
    /// Values PyTorch's AdamW refuses too: betas in [0, 1), ε > 0, decay ≥ 0.
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        p.within("beta1", self.beta1, 0.0, 1.0, true);
        p.within("beta2", self.beta2, 0.0, 1.0, true);
        p.positive("eps", self.eps);
        p.non_negative("weight_decay", self.weight_decay);
        p
    }
}

/// AdamW over a fixed list of variables, with first and second moments per variable.
pub struct AdamW {
    config: AdamWConfig,
    vars: Vec<Var>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Optimizer steps taken (the bias corrections use it).
    steps: usize,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let zeros = |v: &Var| Tensor::zeros(v.shape(), DType::F32, v.device());
        let exp_avg = vars.iter().map(zeros).collect::<candle_core::Result<_>>()?;
        let exp_avg_sq = vars.iter().map(zeros).collect::<candle_core::Result<_>>()?;
        Ok(Self {
            config,
            vars,
            exp_avg,
            exp_avg_sq,
            steps: 0,
        })
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to the i-th variable.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.vars.len() {
            bail!(
                "{} gradients for {} variables",
                grads.len(),
                self.vars.len()
            );
        }
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let moments = self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut());
        for ((var, g), (exp_avg, exp_avg_sq)) in self.vars.iter().zip(grads).zip(moments) {
            let m = ((&*exp_avg * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&*exp_avg_sq * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            // Decoupled decay: shrink the weight itself, not the gradient.
            let mut p = var.as_tensor().clone();
            if c.weight_decay != 0.0 {
                p = (p * (1.0 - lr * c.weight_decay))?;
            }
            let denom = ((v.sqrt()? / bias2_sqrt)? + c.eps)?;
            let update = (m.div(&denom)? * (lr / bias1))?;
            var.set(&(p - update)?)?;
            *exp_avg = m;
            *exp_avg_sq = v;
        }
        Ok(())
    }

    /// The moments keyed `optimizer.{i}.exp_avg` / `.exp_avg_sq`, for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for i in 0..self.vars.len() {
            out.push((format!("optimizer.{i}.exp_avg"), self.exp_avg[i].clone()));
            out.push((
                format!("optimizer.{i}.exp_avg_sq"),
                self.exp_avg_sq[i].clone(),
            ));
        }
        out
    }

    /// Restores the moments written by `state_tensors` after `steps` updates.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for i in 0..self.vars.len() {
            for (key, slot) in [
                (format!("optimizer.{i}.exp_avg"), &mut self.exp_avg[i]),
                (format!("optimizer.{i}.exp_avg_sq"), &mut self.exp_avg_sq[i]),
            ] {
                let t = tensors
                    .get(&key)
                    .with_context(|| format!("optimizer state lacks {key}"))?;
                if t.dims() != slot.dims() {
                    bail!(
                        "optimizer state {key} has shape {:?}, expected {:?}",
                        t.dims(),
                        slot.dims()
                    );
                }
                *slot = t.to_dtype(DType::F32)?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Sums the gradients of several backward passes (micro-batches) for a list of variables.
pub struct GradAccumulator {
    sums: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(n_vars: usize) -> Self {
        Self {
            sums: vec![None; n_vars],
        }
    }

    pub fn add(&mut self, vars: &[Var], grads: &GradStore) -> Result<()> {
        for (sum, var) in self.sums.iter_mut().zip(vars) {
            if let Some(g) = grads.get(var) {
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    /// The summed gradients, zeros for variables no pass reached; resets the sums.
    pub fn take(&mut self, vars: &[Var]) -> Result<Vec<Tensor>> {
        self.sums
            .iter_mut()
            .zip(vars)
            .map(|(sum, var)| match sum.take() {
                Some(g) => Ok(g),
                None => Ok(Tensor::zeros(var.shape(), DType::F32, var.device())?),
            })
            .collect()
    }
}

/// Scales the gradients so their global L2 norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`), and returns the norm before clipping. The sums of
/// squares stay on the gradients' device (each tensor's in f32, widened to f64 and added
/// there), so a step waits for the device once, when the total is read, not once per
/// tensor (~400 per step on a 7B model); the scaling needs no read.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let partial = grads
        .iter()
        .map(|g| g.sqr()?.sum_all()?.to_dtype(DType::F64))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let total = Tensor::stack(&partial, 0)?.sum_all()?;
    let norm = read_to_host(&total)?.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

/// A device scalar read on the host: the one place clipping waits for the device, and
/// where the tests count those waits.
fn read_to_host(t: &Tensor) -> Result<f64> {
    #[cfg(test)]
    tests::HOST_READS.with(|n| n.set(n.get() + 1));
    Ok(t.to_scalar::<f64>()?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

/// Linear warm-up from 0 to `peak` over `warmup_steps`, then constant, linear decay to 0
/// or half-cosine decay to 0 at `total_steps` (transformers' `get_*_schedule_with_warmup`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub kind: ScheduleKind,
}

impl LrSchedule {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let (s, w, n) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < self.warmup_steps {
            return self.peak * s / w.max(1.0);
        }
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((n - s) / (n - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (s - w) / (n - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        };
        self.peak * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two AdamW steps on f(p) = sum(p²) against values computed by hand from PyTorch's
    /// update rule (lr 0.1, weight decay 0.01).
    #[test]
    fn adamw_matches_the_reference_update() -> Result<()> {
        let p = Var::from_slice(&[1.0f32, -2.0], 2, &Device::Cpu)?;
        let config = AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![p.clone()], config)?;
        let mut expected = [1.0f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for t in 1..=2 {
            let grads = vec![(p.as_tensor() * 2.0)?];
            let g: Vec<f64> = expected.iter().map(|x| 2.0 * x).collect();
            for i in 0..2 {
                expected[i] *= 1.0 - 0.1 * 0.01;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8;
                expected[i] -= 0.1 * mh / denom;
            }
            opt.step(&grads, 0.1)?;
        }
        let got = p.as_tensor().to_vec1::<f32>()?;
        for i in 0..2 {
            assert!(
                (got[i] as f64 - expected[i]).abs() < 1e-6,
                "{got:?} vs {expected:?}"
            );
        }
        Ok(())
    }

    thread_local! {
        /// Calls of `read_to_host` on this thread.
        pub(super) static HOST_READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn clipping_reads_the_device_once() -> Result<()> {
        let mut grads = (0..50)
            .map(|i| Tensor::full(i as f32, (3, 4), &Device::Cpu))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let want = (0..50).map(|i| 12.0 * (i * i) as f64).sum::<f64>().sqrt();
        HOST_READS.with(|n| n.set(0));
        let norm = clip_grad_norm(&mut grads, 1.0)?;
        assert_eq!(HOST_READS.with(|n| n.get()), 1);
        assert!((norm - want).abs() < 1e-9 * want, "{norm} vs {want}");
        assert_eq!(clip_grad_norm(&mut [], 1.0)?, 0.0);
        Ok(())
    }

    #[test]
    fn clipping_scales_to_the_max_norm() -> Result<()> {
        let mut grads = vec![
            Tensor::new(&[3.0f32], &Device::Cpu)?,
            Tensor::new(&[4.0f32], &Device::Cpu)?,
        ];
        let norm = clip_grad_norm(&mut grads, 1.0)?;
        assert!((norm - 5.0).abs() < 1e-9);
        let a = grads[0].to_vec1::<f32>()?[0];
        let b = grads[1].to_vec1::<f32>()?[0];
        assert!(((a * a + b * b).sqrt() - 1.0).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn schedules_warm_up_then_decay() {
        let s = |kind| LrSchedule {
            peak: 1.0,
            warmup_steps: 2,
            total_steps: 10,
            kind,
        };
        assert_eq!(s(ScheduleKind::Linear).lr(0), 0.0);
        assert_eq!(s(ScheduleKind::Linear).lr(1), 0.5);
        assert_eq!(s(ScheduleKind::Linear).lr(2), 1.0);
        assert!((s(ScheduleKind::Linear).lr(6) - 0.5).abs() < 1e-12);
        assert!((s(ScheduleKind::Cosine).lr(6) - 0.5).abs() < 1e-12);
        assert!(s(ScheduleKind::Cosine).lr(10).abs() < 1e-12);
        assert_eq!(s(ScheduleKind::Constant).lr(9), 1.0);
    }
}
