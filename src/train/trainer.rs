//! The one training loop. A step: forward and backward over `grad_accum` micro-batches, a finite
//! loss check, global-norm clipping, one optimiser update. What is trained is decided by which
//! parameters the model was built with as trainable and which names the optimiser is given.

use super::optim::{clip_grad_norm, grads_by_name, GradAccumulator, Optimizer};
use super::schedule::lr_at;
use crate::config::TrainConfig;
use crate::data::batches::BatchSource;
use crate::model::{ForwardCtx, Llama, ParamStore};
use crate::MemtuneError;
use anyhow::Result;

#[derive(Clone, Debug, serde::Serialize)]
pub struct StepStats {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
}

pub struct Trainer<'a> {
    pub model: &'a Llama,
    pub store: &'a ParamStore,
    /// Names of the parameters this run updates.
    pub trainable: Vec<String>,
    pub optimizer: Box<dyn Optimizer + 'a>,
    pub cfg: TrainConfig,
}

impl<'a> Trainer<'a> {
    /// One optimiser step (0-based `step` picks the learning rate).
    pub fn step(&mut self, source: &mut dyn BatchSource, step: usize) -> Result<StepStats> {
        let dev = self.model.device().clone();
        let mut acc = GradAccumulator::new();
        let mut single = None;
        let mut loss_sum = 0.0f32;
        let mut tokens = 0;
        for _ in 0..self.cfg.grad_accum {
            let batch = source.next_batch()?;
            tokens += batch.batch * batch.seq;
            let (inputs, targets) = batch.to_tensors(&dev)?;
            let loss = self.model.loss(&inputs, &targets, &mut ForwardCtx::default())?;
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(MemtuneError::NonFiniteLoss { step: step + 1, loss: l }.into());
            }
            loss_sum += l;
            let grads = grads_by_name(self.store, &self.trainable, &loss.backward()?);
            if self.cfg.grad_accum == 1 {
                single = Some(grads);
            } else {
                acc.add(&grads)?;
            }
        }
        let mut grads = match single {
            Some(g) => g,
            None => acc.take_mean()?,
        };
        // grad_clip = 0 disables clipping; the norm is still reported.
        let grad_norm = clip_grad_norm(&mut grads, &self.trainable, self.cfg.grad_clip)?;
        if !grad_norm.is_finite() {
            return Err(MemtuneError::NonFiniteLoss { step: step + 1, loss: f32::NAN }.into());
        }
        let lr = lr_at(step, &self.cfg);
        self.optimizer.step(&grads, lr)?;
        Ok(StepStats { step: step + 1, loss: loss_sum / self.cfg.grad_accum as f32, lr, grad_norm, tokens })
    }
}

/// Mean loss over `n` batches, no gradient.
pub fn heldout_loss(model: &Llama, source: &mut dyn BatchSource, n: usize) -> Result<f32> {
    let dev = model.device().clone();
    let mut total = 0.0;
    for _ in 0..n {
        let b = source.next_batch()?;
        let (i, t) = b.to_tensors(&dev)?;
        total += model.loss(&i, &t, &mut ForwardCtx::default())?.to_scalar::<f32>()?;
    }
    Ok(total / n.max(1) as f32)
}
