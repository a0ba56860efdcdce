//! Shared building blocks of the custom ops: vectorisable f32 row kernels (a branch-free `exp`,
//! max / sum / dot reductions written with independent accumulators so LLVM vectorises them),
//! compiled twice (baseline x86-64 and AVX2+FMA) and picked at run time; a strided single-threaded
//! GEMM; plus helpers to read the f32 buffer of a CPU tensor, make gradients contiguous cheaply, and
//! split rows into rayon tasks.
//!
//! Correctness reference: `exp` follows Cephes `expf` (range reduction by ln 2, degree-5
//! polynomial, relative error ~2e-7 on [-87, 88]); results below e^-87 are ~1e-38 instead of 0,
//! which is harmless inside softmax sums. The reductions are plain sums re-associated into 16
//! lanes, so they differ from sequential summation only by rounding.

use candle_core::{DType, Layout, Result, Storage, Tensor};

/// Defines `fn name(args) -> ret { body }` twice: with plain arithmetic, and compiled with
/// AVX2+FMA enabled (where `M::fma` is a fused multiply-add); calls dispatch on the CPU's features
/// at run time (the check is one cached atomic load). Inside the body, `M: Mode` is in scope, so
/// it can call `exp_m::<M>` / `sigmoid_m::<M>`.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments, clippy::extra_unused_type_parameters, unused)]
            fn inner<M: $crate::ops::kernels::Mode>($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast($($a: $t),*) $(-> $r)? { inner::<$crate::ops::kernels::Fused>($($a),*) }
                if $crate::ops::kernels::has_avx2_fma() {
                    // SAFETY: the CPU supports the features `fast` was compiled for.
                    return unsafe { fast($($a),*) };
                }
            }
            inner::<$crate::ops::kernels::Plain>($($a),*)
        }
    };
}
pub(crate) use simd_fn;

/// Whether the CPU has AVX2 and FMA (cached by std).
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

const LANES: usize = 16;

/// How a kernel computes a·b + c: two roundings (`Plain`, any CPU) or one (`Fused`, only inside
/// the FMA-enabled copy made by `simd_fn!`, where it compiles to one instruction).
pub trait Mode {
    fn fma(a: f32, b: f32, c: f32) -> f32;
}
pub struct Plain;
pub struct Fused;
impl Mode for Plain {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}
impl Mode for Fused {
    #[inline(always)]
    fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// e^x, branch-free and vectorisable (Cephes expf). x is clamped to [-87.3, 88.3].
#[inline(always)]
pub fn exp_m<M: Mode>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4; // ln 2 split in two for an exact range reduction
    const C2: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.3, 88.3); // keeps 2^n a normal number: n in [-126, 127]
    let t = M::fma(x, LOG2E, MAGIC);
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = M::fma(n, -C2, M::fma(n, -C1, x));
    let mut p = 1.987_569_1e-4f32;
    p = M::fma(p, r, 1.398_199_9e-3);
    p = M::fma(p, r, 8.333_452e-3);
    p = M::fma(p, r, 4.166_579_6e-2);
    p = M::fma(p, r, 1.666_666_5e-1);
    p = M::fma(p, r, 0.5);
    let e = M::fma(p, r * r, r + 1.0);
    e * f32::from_bits(((ni + 127) << 23) as u32)
}

/// 1 / (1 + e^-x)
#[inline(always)]
pub fn sigmoid_m<M: Mode>(x: f32) -> f32 {
    1.0 / (1.0 + exp_m::<M>(-x))
}

/// e^x (scalar, plain arithmetic; kernels use `exp_m`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_m::<Plain>(x)
}

simd_fn! {
    /// max(x), -inf for an empty slice.
    pub fn max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = x.chunks_exact(LANES);
        let rem = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
            }
        }
        let mut m = f32::NEG_INFINITY;
        for &a in acc.iter().chain(rem) {
            m = if a > m { a } else { m };
        }
        m
    }
}

simd_fn! {
    /// Σ x
    pub fn sum(x: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let rem = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] += c[i];
            }
        }
        acc.iter().sum::<f32>() + rem.iter().sum::<f32>()
    }
}

simd_fn! {
    /// Σ x²
    pub fn sum_sq(x: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let rem = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] = M::fma(c[i], c[i], acc[i]);
            }
        }
        acc.iter().sum::<f32>() + rem.iter().map(|v| v * v).sum::<f32>()
    }
}

simd_fn! {
    /// Σ a·b
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let mut acc = [0f32; LANES];
        let ca = a.chunks_exact(LANES);
        let cb = b.chunks_exact(LANES);
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..LANES {
                acc[i] = M::fma(x[i], y[i], acc[i]);
            }
        }
        acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
    }
}

simd_fn! {
    /// Σ e^(x - m)
    pub fn sum_exp_sub(x: &[f32], m: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let rem = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] += exp_m::<M>(c[i] - m);
            }
        }
        acc.iter().sum::<f32>() + rem.iter().map(|&v| exp_m::<M>(v - m)).sum::<f32>()
    }
}

simd_fn! {
    /// x ← e^(x - m) · s, in place.
    pub fn exp_sub_scale_inplace(x: &mut [f32], m: f32, s: f32) {
        for v in x.iter_mut() {
            *v = exp_m::<M>(*v - m) * s;
        }
    }
}

simd_fn! {
    /// out ← e^(x - m) · s
    pub fn exp_sub_scale(x: &[f32], m: f32, s: f32, out: &mut [f32]) {
        assert_eq!(x.len(), out.len());
        for (o, &v) in out.iter_mut().zip(x) {
            *o = exp_m::<M>(v - m) * s;
        }
    }
}

simd_fn! {
    /// y ← y + a·x
    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        assert_eq!(x.len(), y.len());
        for (y, &x) in y.iter_mut().zip(x) {
            *y = M::fma(a, x, *y);
        }
    }
}

/// dst (m×n, row stride dst_rs) = beta · lhs (m×k) · rhs (k×n) [+ dst when `acc`], with the
/// `gemm` crate, single-threaded (callers parallelise over independent products).
/// Strides are (row, col) pairs in elements.
///
/// # Safety
/// The pointers must cover the strided extents described, and `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
#[inline]
pub unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for i in 0..m {
                std::ptr::write_bytes(dst.add(i * dst_rs), 0, n);
            }
        }
        return;
    }
    // One row (attention while decoding): the GEMM would pack all of rhs for a single row, which
    // costs more than the product. Dot products or row sums over contiguous rhs data instead.
    if m == 1 && lhs_cs == 1 && (rhs_rs == 1 || rhs_cs == 1) {
        let x = std::slice::from_raw_parts(lhs, k);
        let y = std::slice::from_raw_parts_mut(dst, n);
        if !acc {
            y.fill(0.0);
        }
        if rhs_rs == 1 {
            for (j, y) in y.iter_mut().enumerate() {
                *y += beta * dot(x, std::slice::from_raw_parts(rhs.add(j * rhs_cs), k));
            }
        } else if beta == 1.0 {
            for (l, &a) in x.iter().enumerate() {
                axpy(y, a, std::slice::from_raw_parts(rhs.add(l * rhs_rs), n));
            }
        } else {
            let mut t = vec![0f32; n];
            for (l, &a) in x.iter().enumerate() {
                axpy(&mut t, a, std::slice::from_raw_parts(rhs.add(l * rhs_rs), n));
            }
            for (y, t) in y.iter_mut().zip(&t) {
                *y += beta * t;
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        acc,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Log of Σ e^x over a row: max + ln Σ e^(x - max).
#[inline]
pub fn logsumexp(x: &[f32]) -> f32 {
    let m = max(x);
    m + sum_exp_sub(x, m).ln()
}

/// The f32 data behind a CPU storage viewed through a contiguous layout.
pub fn storage_f32<'a>(s: &'a Storage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(c) => super::access::slice_f32(c, l),
        _ => candle_core::bail!("custom ops run on the CPU only (got a tensor on another device)"),
    }
}

/// The u32 data behind a CPU storage viewed through a contiguous layout.
pub fn storage_u32<'a>(s: &'a Storage, l: &Layout) -> Result<&'a [u32]> {
    match s {
        Storage::Cpu(c) => super::access::slice_u32(c, l),
        _ => candle_core::bail!("custom ops run on the CPU only (got a tensor on another device)"),
    }
}

/// Error unless `t` is f32 (the custom ops are f32 only).
pub fn expect_f32(op: &str, what: &str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        candle_core::bail!("{op}: {what} must be f32, got {:?} (custom ops are f32 only)", t.dtype());
    }
    Ok(())
}

/// Make a gradient contiguous f32. A gradient that is a broadcast of one value (all strides 0,
/// as arrives from `sum_all`) is expanded with a fill instead of candle's element-wise strided
/// copy.
pub fn contiguous_grad(g: &Tensor) -> Result<Tensor> {
    let g = if g.dtype() == DType::F32 { g.clone() } else { g.to_dtype(DType::F32)? };
    if g.is_contiguous() || g.elem_count() == 0 {
        return g.contiguous();
    }
    let l = g.layout();
    if l.stride().iter().all(|&s| s == 0) && g.device().is_cpu() {
        let (st, _) = g.storage_and_layout();
        let v = match &*st {
            Storage::Cpu(c) => c.as_slice::<f32>()?[l.start_offset()],
            _ => candle_core::bail!("custom ops run on the CPU only"),
        };
        drop(st);
        return Tensor::from_vec(vec![v; g.elem_count()], g.shape(), g.device());
    }
    g.contiguous()
}

/// Rows per rayon task so that each task has about `target` elements (at least one row).
#[inline]
pub fn rows_per_task(row_len: usize, target: usize) -> usize {
    (target / row_len.max(1)).max(1)
}

/// A raw pointer that may be shared between rayon tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// The pointer (a method, so that closures capture the wrapper rather than the raw field).
    #[inline(always)]
    pub fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// A read-only raw pointer shared between rayon tasks.
#[derive(Clone, Copy)]
pub struct SendConstPtr(pub *const f32);
unsafe impl Send for SendConstPtr {}
unsafe impl Sync for SendConstPtr {}
impl SendConstPtr {
    /// The pointer (a method, so that closures capture the wrapper rather than the raw field).
    #[inline(always)]
    pub fn ptr(self) -> *const f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_products_equal_plain_loops_for_both_rhs_layouts() {
        let (k, n) = (37, 23);
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
        let r: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        // rhs (k×n) read as row-major (rs n, cs 1) or as the transpose of an (n×k) row-major matrix (rs 1, cs k).
        for (rs, cs) in [(n, 1), (1, k)] {
            for (acc, beta) in [(false, 1.0f32), (true, 1.0), (false, 0.5), (true, 0.5)] {
                let mut want: Vec<f32> = (0..n).map(|j| j as f32).collect();
                let mut got = want.clone();
                for (j, w) in want.iter_mut().enumerate() {
                    let sum: f32 = (0..k).map(|l| x[l] * r[l * rs + j * cs]).sum();
                    *w = if acc { *w + beta * sum } else { beta * sum };
                }
                unsafe { matmul(1, n, k, got.as_mut_ptr(), n, acc, x.as_ptr(), (k, 1), r.as_ptr(), (rs, cs), beta) };
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "strides ({rs}, {cs}) acc {acc} beta {beta}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn fast_exp_matches_std() {
        let mut worst = 0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let b = x.exp();
            let a = exp_m::<Plain>(x);
            worst = worst.max(((a - b) / b).abs());
            let a = exp_m::<Fused>(x);
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 1e-6, "fast exp relative error {worst}");
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite() && exp(88.3) > 1e38);
    }

    #[test]
    fn reductions() {
        let x: Vec<f32> = (0..37).map(|i| ((i * 7919) % 23) as f32 * 0.1 - 1.0).collect();
        let y: Vec<f32> = (0..37).map(|i| ((i * 104729) % 17) as f32 * 0.1 - 0.8).collect();
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
        assert!(close(max(&x), x.iter().cloned().fold(f32::NEG_INFINITY, f32::max)));
        assert!(close(sum(&x), x.iter().sum()));
        assert!(close(sum_sq(&x), x.iter().map(|v| v * v).sum()));
        assert!(close(dot(&x, &y), x.iter().zip(&y).map(|(a, b)| a * b).sum()));
        let mut z = y.clone();
        axpy(&mut z, 0.5, &x);
        assert!(z.iter().zip(x.iter().zip(&y)).all(|(z, (a, b))| close(*z, b + 0.5 * a)));
        let m = 0.3;
        assert!(close(sum_exp_sub(&x, m), x.iter().map(|v| (v - m).exp()).sum()));
        let lse = logsumexp(&x);
        let want = x.iter().map(|v| v.exp()).sum::<f32>().ln();
        assert!(close(lse, want));
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
