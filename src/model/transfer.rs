//! Host↔device copies of the inference path, counted. On a GPU each one is a transfer
//! and a synchronisation point, so the decode loop goes through these two functions and
//! nothing else: a test then counts them per step (the inputs and the logits, none per
//! layer) on any device, the CPU included.

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::cell::Cell;

thread_local! {
    static UPLOADS: Cell<usize> = const { Cell::new(0) };
    static DOWNLOADS: Cell<usize> = const { Cell::new(0) };
}

/// Copies made so far on this thread (the decode loop runs its transfers on the thread
/// that calls it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfers {
    pub uploads: usize,
    pub downloads: usize,
}

impl Transfers {
    pub fn now() -> Self {
        Self {
            uploads: UPLOADS.get(),
            downloads: DOWNLOADS.get(),
        }
    }

    /// Copies made since `earlier`.
    pub fn since(earlier: Self) -> Self {
        let now = Self::now();
        Self {
            uploads: now.uploads - earlier.uploads,
            downloads: now.downloads - earlier.downloads,
        }
    }
}

/// A host vector of u32 as a 1-D tensor on `device`.
pub fn upload_u32(data: &[u32], device: &Device) -> Result<Tensor> {
    UPLOADS.set(UPLOADS.get() + 1);
    Ok(Tensor::new(data, device)?)
}

/// A `[rows, cols]` tensor's rows in f32 on the host.
pub fn download_rows_f32(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    DOWNLOADS.set(DOWNLOADS.get() + 1);
    Ok(t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}
