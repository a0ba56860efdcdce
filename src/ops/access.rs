//! Raw access to the f32 buffers behind CPU tensors, for custom ops and the optimisers.

use candle_core::{CpuStorage, Device, Layout, Result, Shape, Storage, Tensor};
use std::sync::Mutex;

/// The contiguous f32 data of a CPU storage viewed through `layout`.
pub fn slice_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("expected a contiguous f32 tensor, got strides {:?}", l.stride()),
    }
}

/// The contiguous u32 data of a CPU storage viewed through `layout`.
pub fn slice_u32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let data = s.as_slice::<u32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("expected a contiguous u32 tensor, got strides {:?}", l.stride()),
    }
}

/// Run `f` on the f32 data of a tensor (made contiguous first if needed).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => Ok(f(slice_f32(s, layout)?)),
        _ => candle_core::bail!("with_f32: tensor is not on the CPU"),
    }
}

/// Copy a tensor's f32 data out into a Vec (any device).
pub fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()
}

struct InplaceClosure<F>(Mutex<Option<F>>);

impl<F: FnOnce(&mut [f32])> candle_core::InplaceOp1 for InplaceClosure<F> {
    fn name(&self) -> &'static str {
        "inplace-closure"
    }
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (a, b) =
            layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("in-place update needs a contiguous tensor".into()))?;
        let data = match storage {
            CpuStorage::F32(v) => &mut v[a..b],
            _ => candle_core::bail!("in-place update needs an f32 tensor"),
        };
        let f = self.0.lock().unwrap().take().expect("closure runs once");
        f(data);
        Ok(())
    }
}

/// Mutate a CPU f32 tensor's storage in place. Every tensor sharing the storage (a `Var` and its
/// clones) sees the change. This is how the optimisers update parameters without temporaries.
pub fn with_f32_mut<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
    let mut out = None;
    let op = InplaceClosure(Mutex::new(Some(|d: &mut [f32]| out = Some(f(d)))));
    t.inplace_op1(&op)?;
    drop(op);
    Ok(out.expect("in-place closure ran"))
}

/// Build an f32 CPU tensor from a Vec.
pub fn tensor_from_vec(v: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape.into(), &Device::Cpu)
}
