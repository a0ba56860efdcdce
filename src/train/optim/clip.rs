//! Global-norm gradient clipping.

use super::tensors::{make_private, to_f32};
use super::CHUNK;
use crate::ops::access::{with_f32, with_f32_mut};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// Global-norm clipping as `torch.nn.utils.clip_grad_norm_`: the L2 norm over all gradients of
/// `names` (those present in `grads`) is computed in f64; if it exceeds `max_norm` (> 0) every
/// such gradient is scaled in place by max_norm / (norm + 1e-6). Returns the norm before
/// clipping. A non-finite norm is returned without scaling (the caller decides what to do).
///
/// The map is `&mut` because a gradient that is not a contiguous f32 tensor with storage of its
/// own (a broadcast view, or two names sharing one buffer) is replaced by a private copy before
/// scaling, so that nothing is scaled twice and no other tensor changes.
pub fn clip_grad_norm(grads: &mut HashMap<String, Tensor>, names: &[String], max_norm: f64) -> Result<f64> {
    let norm = grad_sum_squares(grads, names)?.sqrt();
    if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
        scale_grads(grads, names, clip_scale(norm, max_norm))?;
    }
    Ok(norm)
}

/// The factor `clip_grad_norm` scales gradients by when `norm` exceeds `max_norm`.
pub fn clip_scale(norm: f64, max_norm: f64) -> f32 {
    (max_norm / (norm + 1e-6)) as f32
}

/// Σ g² over the gradients of `names` present in `grads`, in f64 (name order, then chunk order:
/// the same bits for any thread count).
pub fn grad_sum_squares(grads: &HashMap<String, Tensor>, names: &[String]) -> Result<f64> {
    let mut sq = 0.0f64;
    for n in names.iter().filter(|n| grads.contains_key(*n)) {
        sq += sum_squares(&grads[n]).with_context(|| format!("gradient norm of {n}"))?;
    }
    Ok(sq)
}

/// Multiply the gradients of `names` present in `grads` by `scale`, in place (see
/// `clip_grad_norm` for why the map is `&mut`).
pub fn scale_grads(grads: &mut HashMap<String, Tensor>, names: &[String], scale: f32) -> Result<()> {
    let present: Vec<&String> = names.iter().filter(|n| grads.contains_key(*n)).collect();
    // First give every gradient storage of its own, then scale: scaling before all copies
    // are made would copy an already scaled buffer.
    let mut seen = HashSet::new();
    for n in &present {
        make_private(grads.get_mut(*n).unwrap(), &mut seen)?;
    }
    for n in present {
        if !grads[n].device().is_cpu() {
            // A fresh tensor on the device: nothing else can share it.
            let scaled = grads[n].affine(scale as f64, 0.0)?;
            grads.insert(n.clone(), scaled);
            continue;
        }
        with_f32_mut(&grads[n], |s| s.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= scale)))?;
    }
    Ok(())
}

/// Sum of squares of a tensor's elements in f64. Per-chunk partial sums are collected in order
/// and added sequentially, so the result does not depend on how rayon split the work (bit-exact
/// resumes need the same clipping scale).
fn sum_squares(t: &Tensor) -> Result<f64> {
    let t = to_f32(t)?;
    if !t.device().is_cpu() {
        // On a GPU: one f64 reduction there.
        return Ok(t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?);
    }
    let partial: Vec<f64> =
        with_f32(&t, |s| s.par_chunks(CHUNK).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).collect())?;
    Ok(partial.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::ops::access::to_vec_f32;
    use candle_core::Device;

    #[test]
    fn clipping_scales_to_max_norm() {
        // norm = sqrt(3² + 4² + 12²) = 13
        let mut g = grads(&[("a", vec![3.0, 4.0], vec![2]), ("b", vec![12.0], vec![1])]);
        let names = vec!["a".to_string(), "b".to_string(), "missing".to_string()];
        let norm = clip_grad_norm(&mut g, &names, 1.0).unwrap();
        assert!((norm - 13.0).abs() < 1e-9);
        let after = clip_grad_norm(&mut g, &names, 100.0).unwrap();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        close(&to_vec_f32(&g["a"]).unwrap(), &[3.0 / 13.0, 4.0 / 13.0], 1e-5);
        // Below the threshold nothing changes.
        let before = to_vec_f32(&g["b"]).unwrap();
        clip_grad_norm(&mut g, &names, 2.0).unwrap();
        assert_eq!(before, to_vec_f32(&g["b"]).unwrap());
    }

    #[test]
    fn clipping_handles_views_and_shared_storage() {
        // A stride-0 broadcast gradient and two names sharing one tensor.
        let base = Tensor::new(&[2.0f32], &Device::Cpu).unwrap();
        let bc = base.broadcast_as(4).unwrap(); // norm 4
        let shared = Tensor::new(&[3.0f32, 0.0], &Device::Cpu).unwrap();
        let mut g = HashMap::new();
        g.insert("bc".to_string(), bc);
        g.insert("s1".to_string(), shared.clone());
        g.insert("s2".to_string(), shared.clone());
        // total = sqrt(16 + 9 + 9) = sqrt(34)
        let names: Vec<String> = vec!["bc".into(), "s1".into(), "s2".into()];
        let n = clip_grad_norm(&mut g, &names, 1.0).unwrap();
        assert!((n - 34f64.sqrt()).abs() < 1e-9);
        let after = clip_grad_norm(&mut g, &names, 100.0).unwrap();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        assert_eq!(to_vec_f32(&base).unwrap(), vec![2.0]);
    }
}
