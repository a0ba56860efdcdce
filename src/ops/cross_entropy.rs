//! Fused log-softmax + NLL. (placeholder: reference)
use candle_core::{Result, Tensor, D};

/// Mean NLL of targets (N,) u32 under logits (N, V); IGNORE_INDEX targets are skipped.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    super::reference::cross_entropy(logits, targets)
}

/// log p(target) per row, (N,), no gradient. IGNORE_INDEX rows give 0.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(&logits.detach(), D::Minus1)?;
    let tv = targets.to_vec1::<u32>()?;
    let safe: Vec<u32> = tv.iter().map(|&t| if t == super::IGNORE_INDEX { 0 } else { t }).collect();
    let safe = Tensor::new(safe, logits.device())?;
    let picked = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
    let mask: Vec<f32> = tv.iter().map(|&t| if t == super::IGNORE_INDEX { 0.0 } else { 1.0 }).collect();
    picked * Tensor::new(mask, logits.device())?
}
