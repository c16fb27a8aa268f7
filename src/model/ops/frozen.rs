//! `x + c` and `x · c` for a tracked `x` and a constant `c` broadcast to `x`'s shape (a
//! bias, a norm's scale, a rotary table, an attention mask, an upstream gradient), with a
//! backward pass that gives `c` no gradient.
//!
//! candle's backward pass computes a gradient for both operands of every binary op and
//! keeps the ones of untracked operands in the gradient store until the pass ends: for a
//! broadcast constant that is a full `x`-sized tensor (an RMS norm's scale costs a
//! `[tokens, hidden]` buffer and a multiply per norm per step). These ops run the same
//! backend kernel as candle's broadcast ops, so their values are identical.

use candle_core::backend::BackendStorage;
use candle_core::op::{Add, BinaryOpT, Mul};
use candle_core::{CpuStorage, CudaStorage, Layout, MetalStorage, Result, Shape, Tensor};

/// `x + c`, `c` broadcast to `x`'s shape; a tracked `c` keeps candle's op and its gradient.
pub fn add_frozen(x: &Tensor, c: &Tensor) -> Result<Tensor> {
    if c.track_op() || !x.track_op() {
        return x.broadcast_add(c);
    }
    x.apply_op2(&c.to_dtype(x.dtype())?, Frozen::Add)
}

/// `x · c`, `c` broadcast to `x`'s shape; a tracked `c` keeps candle's op and its gradient.
pub fn mul_frozen(x: &Tensor, c: &Tensor) -> Result<Tensor> {
    if c.track_op() || !x.track_op() {
        return x.broadcast_mul(c);
    }
    x.apply_op2(&c.to_dtype(x.dtype())?, Frozen::Mul)
}

/// The graph node: which operation, with the constant as its second operand.
#[derive(Clone, Copy)]
enum Frozen {
    Add,
    Mul,
}

impl Frozen {
    fn apply<S: BackendStorage>(
        self,
        x: &S,
        x_layout: &Layout,
        c: &S,
        c_layout: &Layout,
    ) -> Result<(S, Shape)> {
        // A stride-0 view of the constant over x's shape, as `broadcast_as` makes.
        let c_layout = c_layout.broadcast_as(x_layout.shape())?;
        let y = match self {
            Frozen::Add => x.binary_impl::<Add>(c, x_layout, &c_layout)?,
            Frozen::Mul => x.binary_impl::<Mul>(c, x_layout, &c_layout)?,
        };
        Ok((y, x_layout.shape().clone()))
    }
}

impl candle_core::CustomOp2 for Frozen {
    fn name(&self) -> &'static str {
        match self {
            Frozen::Add => Add::NAME,
            Frozen::Mul => Mul::NAME,
        }
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        c: &CpuStorage,
        c_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.apply(x, x_layout, c, c_layout)
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        c: &CudaStorage,
        c_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.apply(x, x_layout, c, c_layout)
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        x_layout: &Layout,
        c: &MetalStorage,
        c_layout: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.apply(x, x_layout, c, c_layout)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        c: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = match self {
            Frozen::Add => grad.clone(),
            Frozen::Mul => grad.broadcast_mul(&c.to_dtype(grad.dtype())?)?,
        };
        Ok((Some(dx), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// Values and the gradient of `x` exactly as candle's ops give them, and nothing in the
    /// gradient store but `x`'s gradient.
    #[test]
    fn same_values_and_input_gradient_and_no_constant_gradient() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::BF16] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 6), &dev)?.to_dtype(dtype)?)?;
            let c = Tensor::randn(0f32, 1.0, (5, 6), &dev)?.to_dtype(dtype)?;
            for (frozen, plain) in [
                (add_frozen(x.as_tensor(), &c)?, x.broadcast_add(&c)?),
                (mul_frozen(x.as_tensor(), &c)?, x.broadcast_mul(&c)?),
            ] {
                let diff = (&frozen - &plain)?.abs()?.to_dtype(DType::F32)?.max_all()?;
                assert_eq!(diff.to_scalar::<f32>()?, 0.0);
                let g_frozen = frozen.sqr()?.sum_all()?.backward()?;
                let g_plain = plain.sqr()?.sum_all()?.backward()?;
                let (a, b) = (g_frozen.get(&x).unwrap(), g_plain.get(&x).unwrap());
                let diff = (a - b)?.abs()?.to_dtype(DType::F32)?.max_all()?;
                assert_eq!(diff.to_scalar::<f32>()?, 0.0);
                // candle's op leaves an x-sized gradient for the broadcast constant; ours
                // leaves only x's.
                assert_eq!(g_plain.get_ids().count(), 2);
                assert!(g_frozen.get_ids().eq([x.id()].iter()));
            }
        }
        Ok(())
    }
}
