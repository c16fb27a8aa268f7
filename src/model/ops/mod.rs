//! This crate's custom tensor ops, one concept per file: the fused training kernels with
//! their backward passes, the int8 inference kernels, and with `--features cuda` the GPU
//! drivers of the kernels in `kernels/`. Each op's CPU version is its twin for checking
//! the GPU one.

pub(super) mod adapted_projection;
pub mod base_weight;
pub(super) mod cached_attention;
pub mod causal_attention;
#[cfg(feature = "cuda")]
mod causal_attention_cuda;
pub mod chunked_logprob;
#[cfg(feature = "cuda")]
mod chunked_logprob_cuda;
pub(super) mod dot;
pub(super) mod dropout;
pub mod exact_blocks;
pub mod exact_product;
pub mod frozen;
mod gemm;
pub mod greedy_head;
pub mod int8_gpu_weight;
mod int8_projection;
#[cfg(feature = "cuda")]
mod int8_projection_cuda;
#[cfg(target_arch = "x86_64")]
mod libm_expf;
mod op_storage;
mod out_ptr;
pub mod projection;
pub mod quant;
pub mod silu_product;
pub mod train_ops;
mod vector_exp;
