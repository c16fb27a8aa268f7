//! The settings every training algorithm shares, and the checks they must pass.

use super::optim::{AdamWConfig, ScheduleKind};
use crate::model::lora::LoraConfig;
use crate::model::ProjectionStorage;
use crate::validation::Problems;
use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// How the frozen base projections are stored while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseDtype {
    /// As the model is loaded (`--dtype`).
    #[default]
    Model,
    /// Each projection weight re-quantized to int8 blocks (one f32 scale per 32 inputs)
    /// and its dense copy dropped, QLoRA-style: a quarter of the f32 weight memory. On the
    /// CPU in f32; on a CUDA device in any float dtype.
    Int8,
}

impl BaseDtype {
    fn is_model(&self) -> bool {
        *self == BaseDtype::Model
    }

    /// How the loader should store the projections for training on this base: an int8
    /// base is quantized as it is read, so the dense projections never exist all at once.
    pub fn projection_storage(self) -> ProjectionStorage {
        match self {
            BaseDtype::Model => ProjectionStorage::Dense,
            BaseDtype::Int8 => ProjectionStorage::Int8,
        }
    }
}

/// Settings every algorithm shares (transformers' `TrainingArguments` role).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingArgs {
    pub epochs: usize,
    /// Stop after this many optimizer steps even if the epochs are not done (the
    /// schedule decays over these steps); 0: no limit.
    #[serde(default)]
    pub max_steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub schedule: ScheduleKind,
    /// Fraction of the optimizer steps spent warming up linearly from 0.
    pub warmup_ratio: f64,
    /// Sequences (SFT) or pairs (DPO) per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Longer sequences are cut to this many tokens.
    pub max_len: usize,
    /// Pack items into rows of up to `max_len` tokens (each item still attends only to
    /// itself) and take `batch_size` rows per micro-batch, instead of `batch_size` items:
    /// steps of many short examples carry as many tokens as steps of long ones.
    #[serde(default)]
    pub packing: bool,
    /// A micro-batch is run in pieces of at most this many padded tokens (at least one
    /// sequence or pair each), accumulating gradients: the same update in bounded memory.
    /// 0: no limit.
    pub max_batch_tokens: usize,
    /// Activation checkpointing: keep each decoder layer's input instead of its
    /// activations and run the layer again in the backward pass (the same gradients, about
    /// a third more compute, a fraction of the activation memory). `None`: on for CUDA,
    /// off on the CPU (see `checkpointing_on`).
    #[serde(default)]
    pub gradient_checkpointing: Option<bool>,
    /// How the frozen base projections are stored (`BaseDtype`). Not written when it is
    /// the default, so the settings of earlier runs (and their resumes) read the same.
    #[serde(default, skip_serializing_if = "BaseDtype::is_model")]
    pub base_dtype: BaseDtype,
    /// Global gradient norm clip; 0 disables clipping.
    pub max_grad_norm: f64,
    pub adamw: AdamWConfig,
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps; 0: only the final adapter.
    pub save_every: usize,
    pub lora: LoraConfig,
}

impl Default for TrainingArgs {
    fn default() -> Self {
        Self {
            epochs: 3,
            max_steps: 0,
            lr: 2e-4,
            schedule: ScheduleKind::Linear,
            warmup_ratio: 0.1,
            batch_size: 4,
            grad_accum: 1,
            max_len: 1024,
            packing: false,
            max_batch_tokens: 512,
            gradient_checkpointing: None,
            base_dtype: BaseDtype::Model,
            max_grad_norm: 1.0,
            adamw: AdamWConfig::default(),
            seed: 42,
            save_every: 0,
            lora: LoraConfig::default(),
        }
    }
}

impl TrainingArgs {
    /// Whether training on `device` checkpoints activations: as set, else on for a GPU,
    /// where memory is the limit, and off on the CPU, where time is.
    pub fn checkpointing_on(&self, device: &candle_core::Device) -> bool {
        self.gradient_checkpointing.unwrap_or(device.is_cuda())
    }

    /// Refuses a `base_dtype` the weights loaded on `device` as `dtype` cannot take (the
    /// int8 base runs on the CPU in f32, and on a CUDA device in f32, bf16 or f16),
    /// naming the setting as `key`.
    pub fn check_base_dtype(&self, device: &Device, dtype: DType, key: &str) -> Result<()> {
        let supported = if device.is_cuda() {
            matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
        } else {
            device.is_cpu() && dtype == DType::F32
        };
        if self.base_dtype == BaseDtype::Int8 && !supported {
            bail!(
                "{key} int8: the int8 base runs on the CPU in f32 and on a CUDA device in f32, bf16 or f16, not {dtype:?} on {:?}; use the model's dtype, f32 or a GPU",
                device.location()
            );
        }
        Ok(())
    }

    /// Refuses settings the loop cannot run, one line per bad value.
    pub fn validate(&self) -> Result<()> {
        self.problems().into_result()
    }

    /// Every value the loop cannot run, keys relative to these args (`lora.r`).
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        p.at_least("epochs", self.epochs, 1);
        p.positive("lr", self.lr);
        p.within("warmup_ratio", self.warmup_ratio, 0.0, 1.0, false);
        p.at_least("batch_size", self.batch_size, 1);
        p.at_least("grad_accum", self.grad_accum, 1);
        p.at_least("max_len", self.max_len, 2);
        p.non_negative("max_grad_norm", self.max_grad_norm);
        p.nest("adamw", self.adamw.problems());
        p.nest("lora", self.lora.problems());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_dtype_is_written_only_when_int8() {
        let default = serde_json::to_value(TrainingArgs::default()).unwrap();
        assert!(default.get("base_dtype").is_none(), "{default}");
        let mut value = default.clone();
        value["base_dtype"] = "int8".into();
        let int8: TrainingArgs = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(int8.base_dtype, BaseDtype::Int8);
        assert_eq!(serde_json::to_value(&int8).unwrap(), value);
        value["base_dtype"] = "int4".into();
        let err = serde_json::from_value::<TrainingArgs>(value).unwrap_err();
        assert!(err.to_string().contains("int4"), "{err}");
    }

    #[test]
    fn an_int8_base_is_refused_off_the_cpu_or_in_another_dtype() {
        let int8 = TrainingArgs {
            base_dtype: BaseDtype::Int8,
            ..TrainingArgs::default()
        };
        assert!(int8
            .check_base_dtype(&Device::Cpu, DType::F32, "base_dtype")
            .is_ok());
        let err = int8
            .check_base_dtype(&Device::Cpu, DType::BF16, "sft.args.base_dtype")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sft.args.base_dtype int8: "), "{err}");
        assert_eq!(err.lines().count(), 1);
        assert!(TrainingArgs::default()
            .check_base_dtype(&Device::Cpu, DType::BF16, "base_dtype")
            .is_ok());
    }
}
