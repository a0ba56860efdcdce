//! What the optimisers share: parameter lookup and checks, private copies of gradients and
//! state, the exported step counter and state maps, and in-place updates over f32 slices.

use super::ParamGroup;
use crate::model::params::ParamStore;
use crate::ops::access::{with_f32, with_f32_mut};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Storage, Tensor};
use std::collections::{BTreeMap, HashMap, HashSet};

pub(super) fn validate_groups(store: &ParamStore, groups: &[ParamGroup]) -> Result<()> {
    let mut seen = HashSet::new();
    for g in groups {
        if !(g.lr_scale.is_finite() && g.weight_decay.is_finite()) {
            bail!("parameter group: lr_scale and weight_decay must be finite, got {} and {}", g.lr_scale, g.weight_decay);
        }
        for n in &g.names {
            if !seen.insert(n.as_str()) {
                bail!("parameter `{n}` is in more than one optimiser group");
            }
            param_tensor(store, n)?;
        }
    }
    Ok(())
}

fn owned_names(groups: &[ParamGroup]) -> HashSet<&str> {
    groups.iter().flat_map(|g| g.names.iter().map(|s| s.as_str())).collect()
}

/// An exported state read back: its step count (`<prefix>.step`) and, per kind of tensor (`m`
/// and `v` for AdamW), `<prefix>.<kind>.<param>` by parameter name, each checked to belong to a
/// parameter the optimiser trains, to have its shape, and copied onto its device. `what` names the
/// optimiser in errors. Keys of other prefixes are ignored.
pub(super) fn owned_state(
    store: &ParamStore,
    groups: &[ParamGroup],
    state: &HashMap<String, Tensor>,
    (prefix, what): (&str, &str),
    kinds: &[&str],
) -> Result<(usize, Vec<BTreeMap<String, Tensor>>)> {
    let t = read_step(state, &format!("{prefix}.step"))?;
    let owned = owned_names(groups);
    let mut out = vec![BTreeMap::new(); kinds.len()];
    for (key, tensor) in state {
        let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else { continue };
        if rest == "step" {
            continue;
        }
        let Some((k, name)) = kinds.iter().enumerate().find_map(|(k, kind)| rest.strip_prefix(kind)?.strip_prefix('.').map(|n| (k, n)))
        else {
            bail!("optimizer state: unknown {what} tensor `{key}`");
        };
        if !owned.contains(name) {
            bail!("optimizer state: `{key}` is for parameter `{name}`, which this optimiser does not train");
        }
        let p = param_tensor(store, name)?;
        if tensor.dims() != p.dims() {
            bail!("optimizer state: `{key}` has shape {:?}, parameter has {:?}", tensor.dims(), p.dims());
        }
        out[k].insert(name.to_string(), private_copy(&tensor.to_device(p.device())?).with_context(|| format!("optimizer state `{key}`"))?);
    }
    Ok((t, out))
}

/// The Var's tensor (shares storage with the model), checked to be an updatable CPU f32 tensor.
pub(super) fn param_tensor(store: &ParamStore, name: &str) -> Result<Tensor> {
    let v = store.get(name).with_context(|| format!("optimiser: no parameter named `{name}` in the store"))?;
    let t = v.as_tensor().clone();
    if !(t.device().is_cpu() || cfg!(feature = "cuda") && t.device().is_cuda()) || t.dtype() != DType::F32 {
        bail!(
            "optimiser: parameter `{name}` is {:?} on {:?}; the optimisers update f32 tensors on the CPU (or CUDA with the cuda feature)",
            t.dtype(),
            t.device()
        );
    }
    if !t.is_contiguous() {
        bail!("optimiser: parameter `{name}` is not contiguous");
    }
    Ok(t)
}

pub(super) fn grad_for(name: &str, g: &Tensor, p: &Tensor) -> Result<Tensor> {
    if g.dims() != p.dims() {
        bail!("gradient of `{name}` has shape {:?}, the parameter {:?}", g.dims(), p.dims());
    }
    to_f32(g).with_context(|| format!("gradient of `{name}`"))
}

/// As f32, on its device (the CPU, or CUDA with the cuda feature).
pub(super) fn to_f32(t: &Tensor) -> Result<Tensor> {
    if !(t.device().is_cpu() || cfg!(feature = "cuda") && t.device().is_cuda()) {
        bail!("expected a CPU (or, with the cuda feature, CUDA) tensor, got one on {:?}", t.device());
    }
    Ok(if t.dtype() == DType::F32 { t.clone() } else { t.to_dtype(DType::F32)? })
}

/// A contiguous f32 CPU copy with storage of its own, detached from any graph.
pub(super) fn private_copy(t: &Tensor) -> Result<Tensor> {
    let t = to_f32(t)?;
    if !t.device().is_cpu() {
        // A compact copy of just the viewed elements, in fresh device storage.
        return Ok(t.affine(1.0, 0.0)?.detach());
    }
    let c = if t.is_contiguous() { t.copy()? } else { t.contiguous()? };
    // A contiguous view into a larger buffer (e.g. a narrow) would copy the whole buffer; keep
    // only the viewed range.
    let c = match c.layout().contiguous_offsets() {
        Some((0, end)) if end == storage_len(&c) => c,
        _ => c.flatten_all()?.to_vec1::<f32>().and_then(|v| Tensor::from_vec(v, c.shape(), &Device::Cpu))?,
    };
    Ok(c.detach())
}

pub(super) fn storage_len(t: &Tensor) -> usize {
    let (s, _) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => c.as_slice::<f32>().map(|s| s.len()).unwrap_or(0),
        _ => 0,
    }
}

pub(super) fn storage_addr(t: &Tensor) -> usize {
    let (s, _) = t.storage_and_layout();
    &*s as *const Storage as usize
}

/// Replace `g` by a private copy unless it is already a contiguous CPU f32 tensor whose storage
/// no other gradient of this call uses.
pub(super) fn make_private(g: &mut Tensor, seen: &mut HashSet<usize>) -> Result<()> {
    if !g.device().is_cpu() {
        // Device gradients are scaled into fresh tensors (`scale_grads`): nothing to unshare.
        return Ok(());
    }
    let ok = g.device().is_cpu() && g.dtype() == DType::F32 && g.is_contiguous() && !seen.contains(&storage_addr(g));
    if !ok {
        *g = private_copy(g)?;
    }
    seen.insert(storage_addr(g));
    Ok(())
}

pub(crate) fn step_tensor(t: usize) -> Result<Tensor> {
    let t = u32::try_from(t).context("optimiser step count exceeds u32")?;
    Ok(Tensor::from_vec(vec![t], 1, &Device::Cpu)?)
}

pub(crate) fn read_step(state: &HashMap<String, Tensor>, key: &str) -> Result<usize> {
    let t = state
        .get(key)
        .with_context(|| format!("optimizer state has no `{key}` (saved by another optimiser, or not an optimiser state?)"))?;
    let v = t.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    match v.as_slice() {
        [s] => Ok(*s as usize),
        _ => bail!("optimizer state: `{key}` should hold one number, holds {}", v.len()),
    }
}

/// Run `f` on the mutable slices of `p` and `a` and the slice of `g`. The closures nest: each
/// `with_f32_mut` holds its tensor's storage lock while the inner ones run, so the tensors must
/// not share storage (parameters, optimiser state and gradients never do).
pub(super) fn update1(p: &Tensor, g: &Tensor, f: impl FnOnce(&mut [f32], &[f32])) -> Result<()> {
    with_f32_mut(p, |p| with_f32(g, |g| f(p, g)))??;
    Ok(())
}

pub(super) fn update2(p: &Tensor, a: &Tensor, g: &Tensor, f: impl FnOnce(&mut [f32], &mut [f32], &[f32])) -> Result<()> {
    with_f32_mut(p, |p| with_f32_mut(a, |a| with_f32(g, |g| f(p, a, g))))???;
    Ok(())
}

pub(super) fn update3(
    p: &Tensor,
    a: &Tensor,
    b: &Tensor,
    g: &Tensor,
    f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32], &[f32]),
) -> Result<()> {
    with_f32_mut(p, |p| with_f32_mut(a, |a| with_f32_mut(b, |b| with_f32(g, |g| f(p, a, b, g)))))????;
    Ok(())
}
