//! What a device offers: the total memory of a CUDA device, the budget the training
//! commands plan against.

use anyhow::Result;
use candle_core::Device;

/// The total memory of the CUDA device `device`.
#[cfg(feature = "cuda")]
pub fn cuda_total_memory(device: &Device) -> Result<u64> {
    // The context's query binds it to this thread first, which cuMemGetInfo needs.
    let (_free, total) = device
        .as_cuda_device()?
        .cuda_stream()
        .context()
        .mem_get_info()?;
    Ok(total as u64)
}

/// The total memory of the CUDA device `device`.
#[cfg(not(feature = "cuda"))]
pub fn cuda_total_memory(_: &Device) -> Result<u64> {
    unreachable!("a CUDA device exists only with --features cuda")
}
