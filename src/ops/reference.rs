//! Slow but differentiable compositions of candle primitives: the oracle the custom ops are
//! tested against, forward and backward. On CPU not used on training paths; on a GPU they are the
//! path of the dense ops that have no kernel of their own (see `ops::cuda`).

use candle_core::{DType, Result, Tensor, D};

/// x * rsqrt(mean(x², -1) + eps) * w
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let rstd = (ms + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&rstd)?.broadcast_mul(w)
}

/// Rotate-half RoPE (Hugging Face Llama convention) on x: (B, T, H, Dh); cos/sin: (T, Dh/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_b, t, _h, dh) = x.dims4()?;
    let half = dh / 2;
    let cos = cos.reshape((1, t, 1, half))?;
    let sin = sin.reshape((1, t, 1, half))?;
    let x1 = x.narrow(3, 0, half)?;
    let x2 = x.narrow(3, half, half)?;
    let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[y1, y2], 3)
}

/// Softmax over the last dim from primitives (exp / sum) so that it backprops.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Causal attention. q: (B, T, Hq, Dh), k/v: (B, S, Hkv, Dh) with S ≥ T; query i sits at
/// position S - T + i. Returns (B, T, Hq, Dh).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    causal_attention_left_padded(q, k, v, scale, &[])
}

/// As [`causal_attention`], with `left_pad[b]` leading key positions of row b hidden from its
/// real queries (see `ops::causal_attention_left_padded`).
pub fn causal_attention_left_padded(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, left_pad: &[usize]) -> Result<Tensor> {
    let (qh, kh, vh, mask) = attention_heads(q, k, v, left_pad)?;
    let scores = (qh.matmul(&kh.t()?)? * scale)?; // B Hq T S
    let p = softmax(&scores.broadcast_add(&mask)?)?;
    p.matmul(&vh)?.transpose(1, 2)?.contiguous()
}

/// Attention's operands by head, (B, Hq, T, Dh) for q and (B, Hq, S, Dh) for k and v (each kv
/// head repeated for its query group), contiguous; and the causal mask (T, S): 0 where query i
/// may see key j (j ≤ S - T + i), -inf elsewhere. With `left_pad` the mask is (B, 1, T, S) and
/// also hides row b's first `left_pad[b]` keys from its real queries; padding queries keep their
/// causal view, so every score row has a visible column and nothing becomes NaN.
pub(crate) fn attention_heads(q: &Tensor, k: &Tensor, v: &Tensor, left_pad: &[usize]) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let (b, t, hq, dh) = q.dims4()?;
    let (_, s, hkv, _) = k.dims4()?;
    let rep = hq / hkv;
    let expand = |x: &Tensor| -> Result<Tensor> {
        // (B, S, Hkv, Dh) -> (B, Hq, S, Dh), each kv head repeated for its query group
        let x = x.transpose(1, 2)?; // B Hkv S Dh
        let x = x.unsqueeze(2)?.expand((b, hkv, rep, s, dh))?;
        x.reshape((b, hq, s, dh))
    };
    let qh = q.transpose(1, 2)?.contiguous()?; // B Hq T Dh
    let kh = expand(k)?.contiguous()?;
    let vh = expand(v)?.contiguous()?;
    let offset = s - t;
    let row_mask = |pad: usize| -> Vec<f32> {
        (0..t)
            .flat_map(|i| {
                let pos = i + offset;
                (0..s).map(move |j| if j <= pos && (j >= pad || pos < pad) { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect()
    };
    let mask = if left_pad.is_empty() {
        Tensor::from_vec(row_mask(0), (t, s), q.device())?
    } else {
        Tensor::from_vec(left_pad.iter().flat_map(|&p| row_mask(p)).collect::<Vec<f32>>(), (b, 1, t, s), q.device())?
    };
    Ok((qh, kh, vh, mask))
}

/// silu(gate) * up
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let silu = (gate * candle_nn::ops::sigmoid(gate)?)?;
    silu * up
}

/// log p(target) per row (N,) under logits (N, V); IGNORE_INDEX rows give 0. No gradient needed.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let tv = targets.to_vec1::<u32>()?;
    let keep: Vec<f32> = tv.iter().map(|&t| if t == super::IGNORE_INDEX { 0.0 } else { 1.0 }).collect();
    let safe: Vec<u32> = tv.iter().map(|&t| if t == super::IGNORE_INDEX { 0 } else { t }).collect();
    let safe = Tensor::from_vec(safe, n, logits.device())?;
    let logits = logits.to_dtype(DType::F32)?;
    let m = logits.max_keepdim(1)?;
    let shifted = logits.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let picked = shifted.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
    (picked - lse.squeeze(1)?)? * Tensor::from_vec(keep, n, logits.device())?
}

/// Mean negative log-likelihood of `targets` (N,) u32 under `logits` (N, V), ignoring
/// `super::IGNORE_INDEX`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    let tv = targets.to_vec1::<u32>()?;
    let mask: Vec<f32> = tv.iter().map(|&t| if t == super::IGNORE_INDEX { 0.0 } else { 1.0 }).collect();
    let count = mask.iter().sum::<f32>().max(1.0);
    let safe: Vec<u32> = tv.iter().map(|&t| if t == super::IGNORE_INDEX { 0 } else { t }).collect();
    let safe = Tensor::from_vec(safe, n, logits.device())?;
    let m = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let picked = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
    let mask = Tensor::from_vec(mask, n, logits.device())?.to_dtype(DType::F32)?;
    let _ = v;
    ((picked * mask)?.sum_all()? * (-1.0 / count as f64))?.to_dtype(DType::F32)
}
