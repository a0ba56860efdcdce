//! What fills a block's feed-forward slot (the SwiGLU MLP, or a memory layer in its place or
//! beside it), and the per-forward context every block is handed.

use super::config::LlamaConfig;
use super::linear::Linear;
use super::memory_trace::MemoryTrace;
use super::params::{Init, ParamBuilder, INIT_STD};
use crate::ops;
use anyhow::Result;
use candle_core::Tensor;

/// Per-forward state handed to every block: lets modules (the memory layer) record what they
/// touched and know which positions are padding.
#[derive(Default)]
pub struct ForwardCtx {
    /// For each of the B·T positions, whether it is a real token (padding is excluded from
    /// access accounting). `None` means every position is real.
    pub token_mask: Option<Vec<bool>>,
    /// What each memory layer read, in layer order: the gathered value rows that receive the
    /// gradient and the accessed slots (see `memory_trace::MemoryTrace`).
    pub memory: Vec<MemoryTrace>,
    /// Inference: memory layers record no traces (nothing is kept alive between calls).
    pub skip_memory_traces: bool,
    /// Per batch row, how many leading positions are padding that attention hides (prompts of
    /// several lengths decoded as one batch); empty: none.
    pub left_pad: Vec<usize>,
    /// When `Some`, each memory layer appends its input (layer, (N, D)): the statistics a retrofit
    /// standardises the memory's query against (`train::retrofit`).
    pub memory_inputs: Option<Vec<(usize, Tensor)>>,
}

impl ForwardCtx {
    /// A context for forwards that will not be differentiated.
    pub fn inference() -> Self {
        Self { skip_memory_traces: true, ..Default::default() }
    }
}

/// What fills a block's feed-forward slot: the SwiGLU MLP, or a memory layer in its place or
/// beside it.
pub trait FeedForward: Send + Sync {
    /// x: (N, D) post-attention-norm activations -> (N, D)
    fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor>;
}

/// down(silu(gate(x)) * up(x))
pub struct SwiGluMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl SwiGluMlp {
    pub fn new(cfg: &LlamaConfig, pb: &ParamBuilder) -> Result<Self> {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let std = Init::Normal { std: INIT_STD };
        let resid = Init::Normal { std: INIT_STD / (2.0 * cfg.num_hidden_layers as f64).sqrt() };
        Ok(Self {
            gate_proj: Linear::new(&pb.pp("gate_proj"), d, f, false, std)?,
            up_proj: Linear::new(&pb.pp("up_proj"), d, f, false, std)?,
            down_proj: Linear::new(&pb.pp("down_proj"), f, d, false, resid)?,
        })
    }
}

impl FeedForward for SwiGluMlp {
    fn forward(&self, x: &Tensor, _ctx: &mut ForwardCtx) -> Result<Tensor> {
        let h = ops::swiglu(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?)?;
        Ok(self.down_proj.forward(&h)?)
    }
}
