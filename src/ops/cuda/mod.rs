//! The CUDA side of the custom ops (built with `--features cuda`): the PTX of `kernels/*.cu`
//! (compiled by build.rs), loading it into a device, and the plumbing to launch a kernel on the
//! buffers of candle tensors, either into a fresh output or in place on a tensor's storage.
//!
//! Which op runs how on CUDA:
//! - kernels (`kernels/memory.cu`): product-key top-k selection, the embedding bag forward and
//!   backward, the sparse value updates (SGD, lazy AdamW), the dense AdamW update, in-place scaling;
//!   (`kernels/dense.cu`): RMSNorm, softmax over the last dim, SwiGLU, RoPE, cross-entropy and
//!   token log-probs, forward and backward;
//! - compositions of candle primitives (`ops::reference`, whose CUDA kernels and autograd are
//!   candle's): attention, and the product-key scores'
//!   backward (index_select / matmul recomputation of the chosen scores).

pub mod dense;
pub mod memory;
pub mod update;

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchArgs, LaunchConfig};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CudaStorage, DType, Device, InplaceOp1, Layout, Result, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex};

/// PTX of each `kernels/NAME.cu` as `NAME` (upper case).
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/memtune_ptx.rs"));
}

/// Module name under which `kernels/memory.cu` is loaded (once per device).
const MEMORY_MODULE: &str = "memtune-memory";
/// Module name of `kernels/dense.cu`.
const DENSE_MODULE: &str = "memtune-dense";

/// Threads per block of the row / element-wise kernels.
pub const BLOCK: u32 = 256;

/// A loaded kernel, its name (for errors) and the device's stream it launches on.
pub struct Kernel {
    name: String,
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    fn load(dev: &CudaDevice, name: &str, module: &str, ptx: &str) -> Result<Kernel> {
        let func = dev.get_or_load_custom_func(name, module, ptx)?.into_cuda_function();
        Ok(Kernel { name: name.to_string(), func, stream: dev.cuda_stream() })
    }

    /// Arguments are pushed in the kernel's parameter order, then `launch`.
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }

    /// Launch with the arguments pushed on `b`; an error names the kernel.
    ///
    /// # Safety
    /// `b`'s arguments must match the kernel's parameters in number, order and type, and the
    /// buffers must be large enough for `cfg`'s threads.
    pub unsafe fn launch(&self, mut b: LaunchArgs<'_>, cfg: LaunchConfig) -> Result<()> {
        unsafe { b.launch(cfg) }.map(|_| ()).w().map_err(|e| candle_core::Error::Msg(format!("CUDA kernel {}: {e}", self.name)))
    }
}

/// A kernel of `kernels/memory.cu` (the module is loaded once per device).
pub fn func(dev: &CudaDevice, name: &str) -> Result<Kernel> {
    Kernel::load(dev, name, MEMORY_MODULE, ptx::MEMORY)
}

/// A kernel of `kernels/dense.cu`.
pub fn dense_func(dev: &CudaDevice, name: &str) -> Result<Kernel> {
    Kernel::load(dev, name, DENSE_MODULE, ptx::DENSE)
}

/// One block of BLOCK threads per row.
pub fn cfg_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One thread per element, BLOCK per block.
pub fn cfg_1d(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: ((n as u32).div_ceil(BLOCK).max(1), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One block row per item and columns of a D-wide row across grid.y.
pub fn cfg_rows(rows: usize, d: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, (d as u32).div_ceil(BLOCK).max(1), 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// The CUDA device of a tensor (error if it is elsewhere).
pub fn device_of(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Ok(d.clone()),
        d => candle_core::bail!("expected a CUDA tensor, got one on {d:?}"),
    }
}

/// The contiguous f32 buffer of a CUDA storage viewed through `l`.
pub fn view_f32<'a>(s: &'a Storage, l: &Layout) -> Result<CudaView<'a, f32>> {
    view::<f32>(s, l)
}

/// The contiguous u32 buffer of a CUDA storage viewed through `l`.
pub fn view_u32<'a>(s: &'a Storage, l: &Layout) -> Result<CudaView<'a, u32>> {
    view::<u32>(s, l)
}

fn view<'a, T: candle_core::cuda_backend::CudaDType>(s: &'a Storage, l: &Layout) -> Result<CudaView<'a, T>> {
    let Storage::Cuda(c) = s else { candle_core::bail!("expected a CUDA tensor") };
    contiguous_view(c, l)
}

/// The contiguous buffer of `c` that `l` covers (an error for strided layouts).
fn contiguous_view<'a, T: candle_core::cuda_backend::CudaDType>(c: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("expected a contiguous tensor, got strides {:?}", l.stride()) };
    Ok(c.as_cuda_slice::<T>()?.slice(a..b))
}

/// The contiguous f32 buffer of a `cuda_fwd` input.
pub fn input_f32<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
    contiguous_view(s, l)
}

/// The contiguous u32 buffer of a `cuda_fwd` input.
pub fn input_u32<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, u32>> {
    contiguous_view(s, l)
}

/// A tensor (no gradient) owning `slice`, of shape `shape`.
pub fn wrap<T: candle_core::cuda_backend::CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

/// A zeroed f32 buffer of `n` elements.
pub fn zeros_f32(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    dev.alloc_zeros::<f32>(n.max(1))
}

/// Upload host u32 data.
pub fn upload_u32(dev: &CudaDevice, v: &[u32]) -> Result<CudaSlice<u32>> {
    upload(dev, v)
}

/// Upload host f32 data.
pub fn upload_f32(dev: &CudaDevice, v: &[f32]) -> Result<CudaSlice<f32>> {
    upload(dev, v)
}

/// Host data on the device; an empty slice becomes one zero (kernels never get a null buffer).
fn upload<
    T: 'static
        + candle_core::cuda_backend::CudaDType
        + candle_core::cuda_backend::cudarc::driver::DeviceRepr
        + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits,
>(
    dev: &CudaDevice,
    v: &[T],
) -> Result<CudaSlice<T>> {
    if v.is_empty() {
        return dev.alloc_zeros::<T>(1);
    }
    dev.clone_htod(v)
}

/// Contiguous f32 on the same device (the kernels read plain row-major buffers).
pub fn contiguous_f32(t: &Tensor) -> Result<Tensor> {
    let t = if t.dtype() == DType::F32 { t.clone() } else { t.to_dtype(DType::F32)? };
    t.contiguous()
}

struct InplaceLaunch<F>(Mutex<Option<F>>);

impl<F: FnOnce(&CudaDevice, &mut CudaViewMut<'_, f32>) -> Result<()>> InplaceOp1 for InplaceLaunch<F> {
    fn name(&self) -> &'static str {
        "memtune-inplace-cuda"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("in-place CUDA launch on a CPU tensor")
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("in-place update needs a contiguous tensor") };
        let dev = s.device.clone();
        let mut view = s.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let f = self.0.lock().unwrap().take().expect("launch runs once");
        f(&dev, &mut view)
    }
}

/// Run `f` with the device buffer of the contiguous f32 CUDA tensor `t`, writable: kernels launched
/// there update `t` (and every tensor sharing its storage, e.g. a `Var`) in place. Other tensors
/// `f` reads must not share `t`'s storage (their read lock would wait on this write lock).
pub fn inplace<F>(t: &Tensor, f: F) -> Result<()>
where
    F: FnOnce(&CudaDevice, &mut CudaViewMut<'_, f32>) -> Result<()>,
{
    if t.dtype() != DType::F32 {
        candle_core::bail!("in-place CUDA update needs an f32 tensor, got {:?}", t.dtype());
    }
    t.inplace_op1(&InplaceLaunch(Mutex::new(Some(f))))
}

/// x ← s·x, in place.
pub fn scale_inplace(x: &Tensor, s: f32) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
    let n = x.elem_count();
    if n == 0 {
        return Ok(());
    }
    inplace(x, |dev, xs| {
        let f = func(dev, "scale_inplace")?;
        let mut b = f.builder();
        b.arg(xs);
        b.arg(&n);
        b.arg(&s);
        unsafe { f.launch(b, cfg_1d(n)) }
    })
}
