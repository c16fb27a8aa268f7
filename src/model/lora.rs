//! Linear layers with an optional LoRA adapter (PEFT's formulation: `y = x Wᵀ + b +
//! (alpha / r) · x Aᵀ Bᵀ`) that each forward call can switch off. With the adapter off the
//! layer is the base model, which is how DPO gets its reference model for free.

use super::dot::dot;
use super::op_storage::cpu_f32;
use super::quant::{self, Int8Cache, Precision};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;

/// A trainable low-rank update. `a` is `[r, in]`, `b` is `[out, r]`; both stay in f32
/// whatever the base weights' dtype.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Var,
    pub b: Var,
    /// alpha / r
    pub scale: f64,
}

/// Which projections get adapters, and their size. Field names follow PEFT's
/// `LoraConfig` so `adapter_config.json` maps one to one.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Module names as in Hugging Face (`q_proj`, ..., `down_proj`).
    pub target_modules: Vec<String>,
}

/// Every projection of a decoder layer, by its Hugging Face module name.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl Default for LoraConfig {
    /// All attention and MLP projections, rank 16, alpha 32.
    fn default() -> Self {
        Self {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            target_modules: PROJECTIONS.map(String::from).to_vec(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// Whether the projection `model.layers.3.self_attn.q_proj` is targeted.
    pub fn targets(&self, module_name: &str) -> bool {
        let last = module_name.rsplit('.').next().unwrap_or(module_name);
        self.target_modules.iter().any(|t| t == last)
    }

    /// A fresh adapter initialised as PEFT does by default: A from Kaiming-uniform with
    /// a = √5 (bound 1/√in), B zero, so the adapted model starts equal to the base.
    pub fn init_adapter(
        &self,
        out: usize,
        inp: usize,
        rng: &mut impl rand::Rng,
        device: &candle_core::Device,
    ) -> Result<LoraAdapter> {
        let bound = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..self.r * inp)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Ok(LoraAdapter {
            a: Var::from_tensor(&Tensor::from_vec(a, (self.r, inp), device)?)?,
            b: Var::zeros((out, self.r), DType::F32, device)?,
            scale: self.scale(),
        })
    }
}

/// How a forward pass treats the LoRA adapters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Adapters {
    /// The base model: how DPO gets its reference.
    Off,
    On,
    /// Training with PEFT's LoRA dropout: each adapter's input has elements zeroed with
    /// probability `p` and the rest scaled by `1 / (1 − p)`; the base path sees the input
    /// unchanged. The masks are a pure function of `seed` and the projection, so a step
    /// (and a resumed run) replays exactly.
    Dropout {
        p: f32,
        seed: u64,
    },
}

impl From<bool> for Adapters {
    fn from(on: bool) -> Self {
        if on {
            Adapters::On
        } else {
            Adapters::Off
        }
    }
}

impl Adapters {
    pub fn enabled(self) -> bool {
        self != Adapters::Off
    }

    /// The mode for one projection of the model (`site` numbers them): each projection
    /// draws its own dropout mask, as each PEFT LoRA layer has its own dropout module.
    pub fn at_site(self, site: u64) -> Self {
        match self {
            Adapters::Dropout { p, seed } => Adapters::Dropout {
                p,
                seed: splitmix64(seed ^ splitmix64(site)),
            },
            other => other,
        }
    }
}

/// SplitMix64's output function: a well-mixed 64-bit hash of a counter.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An inverted-dropout mask `[rows, cols]`: 0 with probability `p`, else `1 / (1 − p)`.
/// Element `i` is decided by a hash of `(seed, i)` alone, so the mask is the same however
/// the work is split across threads.
pub fn dropout_mask(
    (rows, cols): (usize, usize),
    p: f32,
    seed: u64,
    device: &candle_core::Device,
) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        bail!("LoRA dropout must be in [0, 1), got {p}");
    }
    let keep = 1.0 / (1.0 - p);
    // Compare 24 random bits with p scaled to the same range.
    let threshold = (p as f64 * (1u64 << 24) as f64) as u64;
    let mut mask = vec![0f32; rows * cols];
    mask.par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(row, out)| {
            for (col, m) in out.iter_mut().enumerate() {
                let bits = splitmix64(seed ^ ((row * cols + col) as u64)) >> 40;
                *m = if bits < threshold { 0.0 } else { keep };
            }
        });
    Ok(Tensor::from_vec(mask, (rows, cols), device)?)
}

#[derive(Debug, Clone)]
pub struct LoraLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<LoraAdapter>,
    /// The inference path's int8 copy of `weight`, made on first use.
    int8: Int8Cache,
}

impl LoraLinear {
    /// `weight` is `[out, in]` (Hugging Face layout), `bias` is `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            adapter: None,
            int8: Int8Cache::default(),
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn adapter(&self) -> Option<&LoraAdapter> {
        self.adapter.as_ref()
    }

    /// (out features, in features)
    pub fn shape(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[0], d[1])
    }

    pub fn set_adapter(&mut self, adapter: Option<LoraAdapter>) -> Result<()> {
        if let Some(ad) = &adapter {
            let (out, inp) = self.shape();
            let (r, a_in) = ad.a.dims2()?;
            let (b_out, b_r) = ad.b.dims2()?;
            if a_in != inp || b_out != out || b_r != r {
                bail!(
                    "LoRA shapes A {:?} and B {:?} do not fit a [{out}, {inp}] layer",
                    ad.a.dims(),
                    ad.b.dims()
                );
            }
        }
        self.adapter = adapter;
        Ok(())
    }

    /// Folds the adapter into the base weight (`W += scale · B A`) and removes it, so the
    /// merged layer with adapters off computes what the adapted layer computed.
    pub fn merge_adapter(&mut self) -> Result<()> {
        if let Some(ad) = self.adapter.take() {
            let delta = (ad.b.as_tensor().matmul(ad.a.as_tensor())? * ad.scale)?;
            let merged = (self.weight.to_dtype(DType::F32)? + delta)?;
            // Detached: the merged weight is a constant, not a function of the old adapter.
            self.weight = merged.to_dtype(self.weight.dtype())?.detach();
        }
        Ok(())
    }

    /// `x` is `[..., in]`. The adapter path runs only when `adapters` is true.
    pub fn forward(&self, x: &Tensor, adapters: bool) -> Result<Tensor> {
        self.forward_with(x, adapters.into())
    }

    /// `forward` with dropout on the adapter's input when `mode` asks for it.
    pub fn forward_with(&self, x: &Tensor, mode: Adapters) -> Result<Tensor> {
        let adapters = mode.enabled();
        let dims = x.dims().to_vec();
        let inp = *dims
            .last()
            .expect("linear input has at least one dimension");
        let rows = x.elem_count() / inp;
        // A reshape is a graph node (and a gradient buffer) even when it changes nothing.
        let x2 = if dims.len() == 2 {
            x.clone()
        } else {
            x.reshape((rows, inp))?
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
        let dropout = matches!(mode, Adapters::Dropout { p, .. } if p > 0.0);
        // The fused op has no place for a second, masked input: dropout takes the plain path.
        let fused = self.adapter.as_ref().filter(|_| adapters && !dropout);
        if let Some(ad) = fused {
            if AdaptedProjection::applies(&x2, &self.weight) {
                let op = AdaptedProjection {
                    weight: self.weight.clone(),
                    scale: ad.scale,
                };
                let mut y = x2
                    .contiguous()?
                    .apply_op3(ad.a.as_tensor(), ad.b.as_tensor(), op)?;
                if let Some(b) = &self.bias {
                    y = y.broadcast_add(b)?;
                }
                return Ok(if out_dims.len() == 2 {
                    y
                } else {
                    y.reshape(out_dims)?
                });
            }
        }
        let y = self.add_bias_and_adapter(&x2, project(&x2, &self.weight)?, mode)?;
        Ok(y.reshape(out_dims)?)
    }

    /// The inference path's projections of one input `x` `[rows, in]` by each of
    /// `layers`. With `Precision::Int8` and CPU f32 weights the base products run on the
    /// weights' int8 copies (made on first use, remade when a weight changes), sharing one
    /// quantized input and one parallel pass; the biases and adapters stay in f32.
    pub fn forward_inference(
        layers: &[&LoraLinear],
        x: &Tensor,
        adapters: bool,
        precision: Precision,
    ) -> Result<Vec<Tensor>> {
        if precision == Precision::Int8 && x.dtype() == DType::F32 && x.device().is_cpu() {
            let packed = layers
                .iter()
                .map(|l| l.int8.get(&l.weight))
                .collect::<Result<Vec<_>>>()?;
            if let Some(packed) = packed.into_iter().collect::<Option<Vec<_>>>() {
                let weights: Vec<_> = packed.iter().map(AsRef::as_ref).collect();
                return quant::project(x, &weights)?
                    .into_iter()
                    .zip(layers)
                    .map(|(y, l)| l.add_bias_and_adapter(x, y, adapters.into()))
                    .collect();
            }
        }
        layers.iter().map(|l| l.forward(x, adapters)).collect()
    }

    /// `y + b + scale · (x Aᵀ) Bᵀ` for `y = x Wᵀ` (`x` `[rows, in]`), the adapter as
    /// `mode` says, its input masked under dropout: the tail of every projection path.
    fn add_bias_and_adapter(&self, x: &Tensor, mut y: Tensor, mode: Adapters) -> Result<Tensor> {
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let Some(ad) = self.adapter.as_ref().filter(|_| mode.enabled()) else {
            return Ok(y);
        };
        let mut xa = x.to_dtype(ad.a.dtype())?;
        if let Adapters::Dropout { p, seed } = mode {
            if p > 0.0 {
                xa = (xa * dropout_mask(x.dims2()?, p, seed, x.device())?)?;
            }
        }
        // Scaled at rank r, the narrow end, rather than on the [rows, out] output.
        let low = (xa.matmul(&ad.a.as_tensor().t()?)? * ad.scale)?;
        let up = low.matmul(&ad.b.as_tensor().t()?)?.to_dtype(y.dtype())?;
        Ok((y + up)?)
    }
}

/// `x [rows, in] · Wᵀ` for `W [out, in]`. With few rows (decoding) candle's gemm runs
/// 2–3× faster as `(W · xᵀ)ᵀ`, which keeps the large weight as the packed-friendly
/// left operand; long sequences (prefill, training) use the direct form.
pub fn project(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if x.track_op() && x.device().is_cpu() {
        let op = FrozenProjection {
            weight: weight.clone(),
        };
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    project_untracked(x, weight)
}

/// Up to this many rows, `x · Wᵀ` runs as `(W · xᵀ)ᵀ` (see `project`).
const FEW_ROWS: usize = 128;

fn project_untracked(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if let Some(y) = project_streaming(x, weight)? {
        return Ok(y);
    }
    if x.dim(0)? <= FEW_ROWS {
        Ok(weight.matmul(&x.t()?)?.t()?.contiguous()?)
    } else {
        Ok(x.matmul(&weight.t()?)?)
    }
}

/// Decoding one to a few sequences on the CPU: reads each weight row once and takes its
/// dot product with every input row. gemm packs the whole weight first, which for a
/// handful of rows costs several times the arithmetic (the 49k-row LM head most of all).
/// `None` when the case does not apply.
fn project_streaming(x: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    const MAX_ROWS: usize = 4;
    let rows = x.dim(0)?;
    if rows > MAX_ROWS
        || !x.device().is_cpu()
        || x.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || !weight.is_contiguous()
    {
        return Ok(None);
    }
    let (out, inp) = weight.dims2()?;
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let (storage, layout) = weight.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(w)) = &*storage else {
        return Ok(None);
    };
    let w = &w[layout.start_offset()..layout.start_offset() + out * inp];
    // y_t[o][r] = W[o] · x[r], in parallel over blocks of weight rows.
    let mut y_t = vec![0f32; out * rows];
    y_t.par_chunks_mut(64 * rows)
        .enumerate()
        .for_each(|(block, chunk)| {
            for (i, y) in chunk.chunks_mut(rows).enumerate() {
                let o = block * 64 + i;
                let w_row = &w[o * inp..(o + 1) * inp];
                for (r, y) in y.iter_mut().enumerate() {
                    *y = dot(w_row, &xs[r * inp..(r + 1) * inp]);
                }
            }
        });
    drop(storage);
    let y = Tensor::from_vec(y_t, (out, rows), x.device())?;
    Ok(Some(if rows == 1 {
        y.reshape((1, out))?
    } else {
        y.t()?.contiguous()?
    }))
}

/// `x · Wᵀ` for a base weight that is never trained, with a backward pass that returns
/// only the gradient of `x`. candle's matmul backward would also compute a weight gradient
/// (a third of a training step's matmul work) and hold it until the pass ends (a second
/// copy of every weight).
struct FrozenProjection {
    weight: Tensor,
}

impl candle_core::CustomOp1 for FrozenProjection {
    fn name(&self) -> &'static str {
        "frozen-projection"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::{CpuStorage, Device, Shape, Storage};
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("frozen projection needs a contiguous input".into())
        })?;
        let dims = layout.shape().dims2()?;
        // f32 straight into the output buffer: the LM head's output is the [tokens, vocab]
        // logits, which the general path below copies twice.
        if let (CpuStorage::F32(v), true) = (storage, self.weight.is_contiguous()) {
            let (w_storage, w_layout) = self.weight.storage_and_layout();
            if let Storage::Cpu(w_cpu @ CpuStorage::F32(_)) = &*w_storage {
                let w = cpu_f32(w_cpu, w_layout, "projection: the weight")?;
                let ((rows, inp), (out, w_in)) = (dims, self.weight.dims2()?);
                if inp != w_in {
                    candle_core::bail!(
                        "frozen projection: input {dims:?} for weight [{out}, {w_in}]"
                    );
                }
                let mut y = vec![0f32; rows * out];
                gemm_rhs_transposed(&mut y, &v[start..end], w, (rows, out, inp), false, 1.0);
                return Ok((CpuStorage::F32(y), Shape::from((rows, out))));
            }
        }
        let x = match storage {
            CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
            CpuStorage::BF16(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
            CpuStorage::F16(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], dims, &Device::Cpu)?,
            _ => candle_core::bail!("frozen projection: unsupported input dtype"),
        };
        let y = project_untracked(&x, &self.weight)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .contiguous()?;
        let shape = y.shape().clone();
        let (y_storage, y_layout) = y.storage_and_layout();
        let (s, e) = y_layout
            .contiguous_offsets()
            .expect("contiguous() gives contiguous offsets");
        let out = match &*y_storage {
            Storage::Cpu(CpuStorage::F32(v)) => CpuStorage::F32(v[s..e].to_vec()),
            Storage::Cpu(CpuStorage::BF16(v)) => CpuStorage::BF16(v[s..e].to_vec()),
            Storage::Cpu(CpuStorage::F16(v)) => CpuStorage::F16(v[s..e].to_vec()),
            Storage::Cpu(CpuStorage::F64(v)) => CpuStorage::F64(v[s..e].to_vec()),
            _ => candle_core::bail!("frozen projection: unexpected output storage"),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight.to_dtype(grad.dtype())?)?))
    }
}

/// `x · Wᵀ + scale · (x · Aᵀ) · Bᵀ` for `x` `[rows, in]` with a frozen base weight `W`
/// and an adapter (`A` `[r, in]`, `B` `[out, r]`) in one op, for training on the CPU in
/// f32. Built from separate candle ops the layer is six graph nodes, and the backward pass
/// allocates, zeroes and adds a gradient buffer for each; here the adapter's product is
/// accumulated straight into the base output and the backward pass gives the three
/// gradients at once (none for `W`, as `FrozenProjection`).
struct AdaptedProjection {
    weight: Tensor,
    scale: f64,
}

impl AdaptedProjection {
    /// Long inputs (training, prefill) on the CPU in f32; decoding's few rows keep the
    /// kernels `project` picks for them.
    fn applies(x: &Tensor, weight: &Tensor) -> bool {
        x.dim(0).is_ok_and(|rows| rows > FEW_ROWS)
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && weight.is_contiguous()
    }
}

/// `dst [m, n] = alpha · dst + beta · lhs [m, k] · rhs [k, n]` over row-major slices,
/// with `rhs` given transposed (`[n, k]` row-major), as weights are stored.
#[allow(clippy::too_many_arguments)]
fn gemm_rhs_transposed(
    dst: &mut [f32],
    lhs: &[f32],
    rhs_t: &[f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    beta: f32,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs_t.len() >= n * k);
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // Safety: the three buffers hold the m×n, m×k and n×k matrices the strides describe
    // (checked above), and `dst` does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs_t.as_ptr(),
            k as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

impl candle_core::CustomOp3 for AdaptedProjection {
    fn name(&self) -> &'static str {
        "adapted-projection"
    }

    fn cpu_fwd(
        &self,
        x_storage: &candle_core::CpuStorage,
        x_layout: &candle_core::Layout,
        a_storage: &candle_core::CpuStorage,
        a_layout: &candle_core::Layout,
        b_storage: &candle_core::CpuStorage,
        b_layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (rows, inp) = x_layout.shape().dims2()?;
        let (r, a_in) = a_layout.shape().dims2()?;
        let (out, b_r) = b_layout.shape().dims2()?;
        let (w_out, w_in) = self.weight.dims2()?;
        if a_in != inp || b_r != r || w_out != out || w_in != inp {
            candle_core::bail!(
                "adapted projection: x {:?}, A {:?}, B {:?}, W {:?} do not fit",
                x_layout.shape(),
                a_layout.shape(),
                b_layout.shape(),
                self.weight.shape()
            );
        }
        let x = cpu_f32(x_storage, x_layout, "projection: the input")?;
        let a = cpu_f32(a_storage, a_layout, "projection: A")?;
        let b = cpu_f32(b_storage, b_layout, "projection: B")?;
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(w_cpu) = &*w_storage else {
            candle_core::bail!("adapted projection: the weight is not on the CPU");
        };
        let w = cpu_f32(w_cpu, w_layout, "projection: the weight")?;
        let mut y = vec![0f32; rows * out];
        gemm_rhs_transposed(&mut y, x, w, (rows, out, inp), false, 1.0);
        // Scaled at rank r, the narrow end, as the unfused path does.
        let mut low = vec![0f32; rows * r];
        gemm_rhs_transposed(&mut low, x, a, (rows, r, inp), false, self.scale as f32);
        gemm_rhs_transposed(&mut y, &low, b, (rows, out, r), true, 1.0);
        Ok((
            candle_core::CpuStorage::F32(y),
            candle_core::Shape::from((rows, out)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let grad = grad.contiguous()?;
        // d/d(low), with low = scale · x Aᵀ: [rows, r].
        let grad_low = grad.matmul(&b)?;
        let dx = (grad.matmul(&self.weight)? + (grad_low.matmul(&a)? * self.scale)?)?;
        let da = (grad_low.t()?.matmul(&x)? * self.scale)?;
        let low = (x.matmul(&a.t()?)? * self.scale)?;
        let db = grad.t()?.matmul(&low)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adapter_switches_off_and_merges() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (4, 3), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3), &dev)?;
        let mut layer = LoraLinear::new(w.clone(), None);
        let base = layer.forward(&x, true)?;
        layer.set_adapter(Some(LoraAdapter {
            a: Var::randn(0f32, 1.0, (2, 3), &dev)?,
            b: Var::randn(0f32, 1.0, (4, 2), &dev)?,
            scale: 0.5,
        }))?;
        let adapted = layer.forward(&x, true)?;
        let off = layer.forward(&x, false)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        assert_eq!(diff(&off, &base)?, 0.0);
        assert!(diff(&adapted, &base)? > 1e-3);
        layer.merge_adapter()?;
        assert!(layer.adapter().is_none());
        assert!(diff(&layer.forward(&x, false)?, &adapted)? < 1e-5);
        Ok(())
    }

    #[test]
    fn dropout_mask_keeps_one_minus_p_scaled_up() -> Result<()> {
        let mask = dropout_mask((300, 100), 0.25, 7, &Device::Cpu)?;
        let values = mask.flatten_all()?.to_vec1::<f32>()?;
        let kept = values.iter().filter(|&&v| v != 0.0).count() as f64 / values.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        assert!(values
            .iter()
            .all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
        let again = dropout_mask((300, 100), 0.25, 7, &Device::Cpu)?;
        assert_eq!(values, again.flatten_all()?.to_vec1::<f32>()?);
        let other = dropout_mask((300, 100), 0.25, 8, &Device::Cpu)?;
        assert_ne!(values, other.flatten_all()?.to_vec1::<f32>()?);
        assert!(dropout_mask((2, 2), 1.0, 0, &Device::Cpu).is_err());
        Ok(())
    }

    #[test]
    fn dropout_masks_only_the_adapter_input() -> Result<()> {
        let dev = Device::Cpu;
        // 200 rows: the fused projection's size class, which dropout must leave.
        let x = Tensor::randn(0f32, 1.0, (200, 6), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (5, 6), &dev)?;
        let mut layer = LoraLinear::new(w.clone(), None);
        let (a, b) = (
            Var::randn(0f32, 1.0, (3, 6), &dev)?,
            Var::randn(0f32, 1.0, (5, 3), &dev)?,
        );
        layer.set_adapter(Some(LoraAdapter {
            a: a.clone(),
            b: b.clone(),
            scale: 2.0,
        }))?;
        let (p, seed) = (0.5, 11);
        let got = layer.forward_with(&x, Adapters::Dropout { p, seed })?;
        let masked = (&x * dropout_mask((200, 6), p, seed, &dev)?)?;
        let want = (x.matmul(&w.t()?)?
            + (masked
                .matmul(&a.as_tensor().t()?)?
                .matmul(&b.as_tensor().t()?)?
                * 2.0)?)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");
        let none = layer.forward_with(&x, Adapters::Dropout { p: 0.0, seed })?;
        let on = layer.forward_with(&x, Adapters::On)?;
        assert_eq!(
            (none - on)?.abs()?.max_all()?.to_scalar::<f32>()?,
            0.0,
            "p = 0 is no dropout"
        );
        // Projections draw different masks.
        let site = |s| Adapters::Dropout { p, seed }.at_site(s);
        assert_ne!(site(0), site(1));
        Ok(())
    }

    #[test]
    fn int8_inference_follows_the_adapter_and_its_merge() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 64), &dev)?;
        let mut layer = LoraLinear::new(Tensor::randn(0f32, 1.0, (40, 64), &dev)?, None);
        let int8 = |layer: &LoraLinear, adapters| -> Result<Tensor> {
            Ok(LoraLinear::forward_inference(&[layer], &x, adapters, Precision::Int8)?.remove(0))
        };
        // Relative to the output's size: int8 blocks keep about 2 significant digits.
        let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            Ok(d / b.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        let base = int8(&layer, true)?; // packs the weight
        assert!(rel(&base, &layer.forward(&x, false)?)? < 0.05);
        layer.set_adapter(Some(LoraAdapter {
            a: Var::randn(0f32, 1.0, (4, 64), &dev)?,
            b: Var::randn(0f32, 1.0, (40, 4), &dev)?,
            scale: 0.5,
        }))?;
        let adapted = layer.forward(&x, true)?;
        assert!(rel(&int8(&layer, true)?, &adapted)? < 0.05);
        assert!(rel(&int8(&layer, false)?, &adapted)? > 0.5);
        // The merged weight is a new tensor, so its int8 copy is made again.
        layer.merge_adapter()?;
        assert!(rel(&int8(&layer, false)?, &adapted)? < 0.05);
        Ok(())
    }

    #[test]
    fn int8_inference_adds_the_bias_after_the_product() -> Result<()> {
        // Qwen2's q/k/v: the bias is exact, only the product is int8.
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 64), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (40, 64), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 40, &dev)?;
        let with = LoraLinear::new(w.clone(), Some(bias.clone()));
        let without = LoraLinear::new(w, None);
        let int8 = |layer: &LoraLinear| -> Result<Tensor> {
            Ok(LoraLinear::forward_inference(&[layer], &x, true, Precision::Int8)?.remove(0))
        };
        let added = (int8(&with)? - int8(&without)?)?;
        let diff = added
            .broadcast_sub(&bias)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        let exact = with.forward(&x, true)?;
        let rel = (int8(&with)? - &exact)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?
            / exact.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(rel < 0.05, "{rel}");
        // q, k and v run as one group over one quantized input: the same outputs.
        let group = LoraLinear::forward_inference(&[&with, &without], &x, true, Precision::Int8)?;
        for (got, want) in group.iter().zip([int8(&with)?, int8(&without)?]) {
            assert_eq!((got - want)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        }
        Ok(())
    }

    #[test]
    fn refuses_mismatched_adapter() {
        let dev = Device::Cpu;
        let mut layer = LoraLinear::new(Tensor::zeros((4, 3), DType::F32, &dev).unwrap(), None);
        let ad = LoraAdapter {
            a: Var::zeros((2, 5), DType::F32, &dev).unwrap(),
            b: Var::zeros((4, 2), DType::F32, &dev).unwrap(),
            scale: 1.0,
        };
        assert!(layer.set_adapter(Some(ad)).is_err());
    }
}
