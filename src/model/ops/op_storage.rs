//! Reading candle storages inside this crate's custom ops: the contiguous part of a CPU
//! buffer, and with `--features cuda` of a GPU buffer. `what` names the op (and operand)
//! in the errors, which mean a caller broke the op's contract.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result};

/// The elements of a contiguous `layout` over `data`.
pub(super) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: needs contiguous data")))?;
    Ok(&data[start..end])
}

/// The elements of a contiguous f32 CPU storage.
pub(super) fn cpu_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = storage else {
        candle_core::bail!("{what}: needs f32, got {:?}", storage.dtype());
    };
    contiguous(v, layout, what)
}

/// The elements of a contiguous u32 CPU storage.
pub(super) fn cpu_u32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [u32]> {
    let CpuStorage::U32(v) = storage else {
        candle_core::bail!("{what}: needs u32, got {:?}", storage.dtype());
    };
    contiguous(v, layout, what)
}

#[cfg(feature = "cuda")]
pub(super) use cuda::*;

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
    use candle_core::{Layout, Result};

    /// The elements of a contiguous `layout` over a GPU buffer.
    pub(in crate::model::ops) fn cuda_contiguous<'a, T>(
        slice: &'a CudaSlice<T>,
        layout: &Layout,
        what: &str,
    ) -> Result<CudaView<'a, T>> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: needs contiguous data")))?;
        Ok(slice.slice(start..end))
    }

    /// `v` as a kernel's u32 argument.
    pub(in crate::model::ops) fn kernel_u32(v: usize, what: &str) -> Result<u32> {
        u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what}: {v} too large")))
    }
}
