//! The one training loop. A step: forward and backward over `grad_accum` micro-batches, a finite
//! loss check, global-norm clipping, one optimiser update. What is trained is decided by which
//! parameters the model was built with as trainable and which names the optimiser is given.
//!
//! The memory value table is not among those names: its gradient arrives as row gradients of the
//! rows each forward touched (`ForwardCtx::memory`), which the loop averages and clips with the
//! dense gradients and hands to the `values` update, a method of its own (lazy AdamW for
//! pretraining; SGD on the top-t rows for sparse memory finetuning). `None` freezes the values.

use super::optim::{clip_scale, grad_sum_squares, grads_by_name, scale_grads, GradAccumulator, Optimizer};
use super::schedule::{lr_at, lr_multiplier};
use super::values::{value_update_from_config, RowGrads, ValueBatch, ValueUpdate};
use crate::config::TrainConfig;
use crate::data::batches::BatchSource;
use crate::model::{access_counts, AccessCounts, ForwardCtx, Llama, ParamStore, VALUES_NAME};
use crate::MemtuneError;
use anyhow::{Context, Result};

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
    /// Names of the dense parameters this run updates (never `memory.values`).
    pub trainable: Vec<String>,
    pub optimizer: Box<dyn Optimizer + 'a>,
    /// How the memory value table is updated from its row gradients; `None`: values frozen.
    pub values: Option<Box<dyn ValueUpdate + 'a>>,
    pub cfg: TrainConfig,
}

/// Everything in `store` but the memory value table: the names a dense optimiser may own.
pub fn dense_names(store: &ParamStore) -> Vec<String> {
    store.names().into_iter().filter(|n| n != VALUES_NAME).collect()
}

impl<'a> Trainer<'a> {
    /// A trainer whose value update (if the model has memory layers) is the one the model config
    /// asks for: lazy AdamW at `memory.value_lr` (see `values::value_update_from_config`).
    /// Replace `values` for another method.
    pub fn new(
        model: &'a Llama,
        store: &'a ParamStore,
        trainable: Vec<String>,
        optimizer: Box<dyn Optimizer + 'a>,
        cfg: TrainConfig,
    ) -> Self {
        let values = value_update_from_config(&model.cfg, &cfg);
        Self { model, store, trainable, optimizer, values, cfg }
    }

    /// One optimiser step (0-based `step` picks the learning rate).
    pub fn step(&mut self, source: &mut dyn BatchSource, step: usize) -> Result<StepStats> {
        let dev = self.model.device().clone();
        let mut acc = GradAccumulator::new();
        let mut single = None;
        let mut loss_sum = 0.0f32;
        let mut tokens = 0;
        let mut value_grads: Option<RowGrads> = None;
        let mut access = AccessCounts::default();
        for _ in 0..self.cfg.grad_accum {
            let batch = source.next_batch()?;
            tokens += batch.batch * batch.seq;
            let (inputs, targets) = batch.to_tensors(&dev)?;
            // Padding (a batch's mask) is excluded from memory access accounting.
            let mut ctx = ForwardCtx { skip_memory_traces: self.values.is_none(), token_mask: batch.mask.clone(), ..Default::default() };
            let loss = self.model.loss(&inputs, &targets, &mut ctx)?;
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(MemtuneError::NonFiniteLoss { step: step + 1, loss: l }.into());
            }
            loss_sum += l;
            let backward = loss.backward()?;
            let grads = grads_by_name(self.store, &self.trainable, &backward);
            if let Some(g) = RowGrads::from_traces(&ctx.memory, &backward)? {
                value_grads = Some(match value_grads {
                    None => g,
                    Some(sum) => sum.merge(&g)?,
                });
            }
            access.merge(&access_counts(&ctx.memory));
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
        if let Some(vg) = &value_grads {
            if self.cfg.grad_accum > 1 {
                vg.scale(1.0 / self.cfg.grad_accum as f32)?;
            }
        }
        // One global norm over the dense and the value gradients, as if the table's gradient were
        // dense (its other rows are zero). grad_clip = 0 disables clipping; the norm is still reported.
        let value_sq = value_grads.as_ref().map(|g| g.sum_squares()).transpose()?.unwrap_or(0.0);
        let grad_norm = (grad_sum_squares(&grads, &self.trainable)? + value_sq).sqrt();
        if !grad_norm.is_finite() {
            return Err(MemtuneError::NonFiniteLoss { step: step + 1, loss: f32::NAN }.into());
        }
        if self.cfg.grad_clip > 0.0 && grad_norm > self.cfg.grad_clip {
            let s = clip_scale(grad_norm, self.cfg.grad_clip);
            scale_grads(&mut grads, &self.trainable, s)?;
            if let Some(vg) = &value_grads {
                vg.scale(s)?;
            }
        }
        let lr = lr_at(step, &self.cfg);
        self.optimizer.step(&grads, lr)?;
        if let (Some(update), Some(vg)) = (self.values.as_mut(), &value_grads) {
            let table =
                self.store.get(VALUES_NAME).with_context(|| format!("the model has memory traces but the store has no `{VALUES_NAME}`"))?;
            let batch = ValueBatch { grads: vg, access: &access, lr_mult: lr_multiplier(step, &self.cfg), step };
            update.step(table.as_tensor(), &batch).with_context(|| format!("{} update of {VALUES_NAME}", update.name()))?;
        }
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
        total += model.loss(&i, &t, &mut ForwardCtx::inference())?.to_scalar::<f32>()?;
    }
    Ok(total / n.max(1) as f32)
}
