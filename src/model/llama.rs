//! A Llama-style decoder: token embedding, N blocks of (RMSNorm → grouped-query attention with
//! RoPE → residual, RMSNorm → feed-forward → residual), final RMSNorm, LM head (optionally tied).
//! Tensor names follow Hugging Face `LlamaForCausalLM`.
//!
//! Activations are kept 2-D, (B·T, D), so every projection is a single GEMM; attention views
//! them as (B, T, H, Dh) without copying.

use super::config::{LlamaConfig, MemoryPlacement};
use super::feed_forward::{FeedForward, ForwardCtx, SwiGluMlp};
use super::kv_cache::KvCache;
use super::linear::Linear;
use super::memory::{value_table, MemoryLayer, ParallelMemory};
use super::params::{Init, ParamBuilder, INIT_STD};
use crate::ops;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};

pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn new(cfg: &LlamaConfig, pb: &ParamBuilder) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let kv = cfg.num_key_value_heads * hd;
        let std = Init::Normal { std: INIT_STD };
        let resid = Init::Normal { std: INIT_STD / (2.0 * cfg.num_hidden_layers as f64).sqrt() };
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: Linear::new(&pb.pp("q_proj"), d, cfg.num_attention_heads * hd, bias, std)?,
            k_proj: Linear::new(&pb.pp("k_proj"), d, kv, bias, std)?,
            v_proj: Linear::new(&pb.pp("v_proj"), d, kv, bias, std)?,
            o_proj: Linear::new(&pb.pp("o_proj"), cfg.num_attention_heads * hd, d, false, resid)?,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
        })
    }

    /// x: (B·T, D) -> (B·T, D). With a cache, attends over cached positions plus these.
    fn forward(
        &self,
        x: &Tensor,
        (b, t): (usize, usize),
        offset: usize,
        rope: &ops::RopeTables,
        cache: Option<(&mut KvCache, usize)>,
        left_pad: &[usize],
    ) -> Result<Tensor> {
        let q = self.q_proj.forward(x)?.reshape((b, t, self.n_heads, self.head_dim))?;
        let k = self.k_proj.forward(x)?.reshape((b, t, self.n_kv_heads, self.head_dim))?;
        let v = self.v_proj.forward(x)?.reshape((b, t, self.n_kv_heads, self.head_dim))?;
        let q = ops::rope(&q, rope, offset)?;
        let k = ops::rope(&k, rope, offset)?;
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let y = ops::causal_attention_left_padded(&q, &k, &v, scale, left_pad)?;
        Ok(self.o_proj.forward(&y.reshape((b * t, self.n_heads * self.head_dim))?)?)
    }
}

pub struct Block {
    pub input_layernorm: Tensor,
    pub self_attn: Attention,
    pub post_attention_layernorm: Tensor,
    pub mlp: Box<dyn FeedForward>,
}

/// The decoder.
pub struct Llama {
    pub cfg: LlamaConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: Tensor,
    /// (V, D); the embedding itself when tied.
    pub lm_head: Tensor,
    rope: ops::RopeTables,
    /// What the LM head multiplies in (the builder's precision, like every `Linear`).
    matmul_dtype: DType,
}

impl Llama {
    /// Build with SwiGLU MLPs in every block, and memory layers in the blocks `cfg.memory` lists
    /// (in place of the MLP or beside it, per `placement`), all reading one value table.
    pub fn new(cfg: &LlamaConfig, pb: &ParamBuilder) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow::anyhow!(e))?;
        let memory = cfg.memory.as_ref().filter(|m| !m.layers.is_empty());
        let values = memory.map(|m| value_table(pb, m)).transpose()?;
        Self::with_ffn(cfg, pb, |lp, i| {
            let mlp = || SwiGluMlp::new(cfg, &lp.pp("mlp"));
            match (memory.filter(|m| m.layers.contains(&i)), &values) {
                (Some(m), Some(v)) => {
                    let mem = MemoryLayer::new(cfg, m, &lp.pp("memory"), i, v)?;
                    Ok(match m.placement {
                        MemoryPlacement::Replace => Box::new(mem),
                        MemoryPlacement::Parallel => Box::new(ParallelMemory::new(mlp()?, mem, &lp.pp("memory"), cfg.hidden_size)?),
                    })
                }
                _ => Ok(Box::new(mlp()?)),
            }
        })
    }

    /// Build with a custom feed-forward per block: `make_ffn(block_builder, layer_index)`.
    pub fn with_ffn(
        cfg: &LlamaConfig,
        pb: &ParamBuilder,
        mut make_ffn: impl FnMut(&ParamBuilder, usize) -> Result<Box<dyn FeedForward>>,
    ) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow::anyhow!(e))?;
        let m = pb.pp("model");
        let d = cfg.hidden_size;
        let embed_tokens = m.pp("embed_tokens").get((cfg.vocab_size, d), "weight", Init::Normal { std: INIT_STD })?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lp = m.pp("layers").pp(i);
            layers.push(Block {
                input_layernorm: lp.pp("input_layernorm").get(d, "weight", Init::Ones)?,
                self_attn: Attention::new(cfg, &lp.pp("self_attn"))?,
                post_attention_layernorm: lp.pp("post_attention_layernorm").get(d, "weight", Init::Ones)?,
                mlp: make_ffn(&lp, i)?,
            });
        }
        let norm = m.pp("norm").get(d, "weight", Init::Ones)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            pb.pp("lm_head").get((cfg.vocab_size, d), "weight", Init::Normal { std: INIT_STD })?
        };
        let inv_freq = super::rope_scaling::inv_freq(cfg.head_dim(), cfg.rope_theta, cfg.rope_scaling.as_ref());
        let rope = ops::RopeTables::from_inv_freq(&inv_freq, cfg.max_position_embeddings, pb.device())?;
        Ok(Self { cfg: cfg.clone(), embed_tokens, layers, norm, lm_head, rope, matmul_dtype: pb.precision().matmul_dtype() })
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Final hidden states (B·T, D) for tokens (B, T) u32 at positions offset..offset+T.
    pub fn hidden(&self, tokens: &Tensor, mut cache: Option<&mut KvCache>, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if offset + t > self.cfg.max_position_embeddings {
            anyhow::bail!("sequence of {} positions exceeds max_position_embeddings = {}", offset + t, self.cfg.max_position_embeddings);
        }
        let mut x = self.embed_tokens.index_select(&tokens.flatten_all()?, 0)?;
        let eps = self.cfg.rms_norm_eps;
        for (i, blk) in self.layers.iter().enumerate() {
            let h = ops::rms_norm(&x, &blk.input_layernorm, eps)?;
            let c = cache.as_deref_mut().map(|c| (c, i));
            let a = blk.self_attn.forward(&h, (b, t), offset, &self.rope, c, &ctx.left_pad)?;
            x = (x + a)?;
            let h = ops::rms_norm(&x, &blk.post_attention_layernorm, eps)?;
            x = (&x + blk.mlp.forward(&h, ctx)?)?;
        }
        Ok(ops::rms_norm(&x, &self.norm, eps)?)
    }

    /// Logits (B·T, V).
    pub fn forward(&self, tokens: &Tensor, cache: Option<&mut KvCache>, ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.head(&self.hidden(tokens, cache, ctx)?)
    }

    /// The LM head: logits (N, V) of hidden states (N, D).
    fn head(&self, h: &Tensor) -> Result<Tensor> {
        Ok(super::linear::matmul_t(h, &self.lm_head, self.matmul_dtype)?)
    }

    /// Logits (B, V) of each row's last position only: what generation needs after a prefill
    /// (the LM head on every prompt position was a fifth of a SmolLM2 prefill).
    pub fn last_logits(&self, tokens: &Tensor, cache: Option<&mut KvCache>, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let h = self.hidden(tokens, cache, ctx)?;
        let last = if t == 1 { h } else { h.reshape((b, t, ()))?.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()? };
        self.head(&last)
    }

    /// Mean next-token loss; `targets` (B, T) u32 with `ops::IGNORE_INDEX` for positions to skip.
    /// The LM head and the loss run only at scored positions: padding and the prompt positions of
    /// completion-only SFT (`IGNORE_INDEX`) would spend a vocabulary-wide product on nothing.
    pub fn loss(&self, inputs: &Tensor, targets: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let h = self.hidden(inputs, None, ctx)?;
        let targets = targets.flatten_all()?;
        let host: Vec<u32> = targets.to_vec1()?;
        let scored: Vec<u32> = (0..host.len() as u32).filter(|&i| host[i as usize] != ops::IGNORE_INDEX).collect();
        let (h, targets) = if scored.len() == host.len() || scored.is_empty() {
            (h, targets)
        } else {
            let idx = Tensor::new(scored.as_slice(), h.device())?;
            (h.index_select(&idx, 0)?, targets.index_select(&idx, 0)?)
        };
        Ok(ops::cross_entropy(&self.head(&h)?, &targets)?)
    }

    /// Per-token log-probabilities of `targets` (B·T,), no gradient.
    pub fn token_logprobs(&self, inputs: &Tensor, targets: &Tensor) -> Result<Vec<f32>> {
        let logits = self.forward(inputs, None, &mut ForwardCtx::inference())?;
        Ok(ops::token_logprobs(&logits, &targets.flatten_all()?)?.to_dtype(DType::F32)?.to_vec1()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ForwardCtx, ParamStore};
    use crate::ops::timing::time_op;

    /// End-to-end: loss forward + backward of the default Llama config (d 256, 4 layers, vocab 4096)
    /// on a batch of 8 × 128 tokens; prints tokens/s of forward+backward (no optimiser step).
    #[test]
    #[ignore]
    fn timing_model_step() {
        let cfg = LlamaConfig::default();
        let store = ParamStore::new();
        let model = Llama::new(&cfg, &ParamBuilder::fresh(&store, 0, &Device::Cpu)).unwrap();
        let (b, t) = (8usize, 128usize);
        let toks: Vec<u32> = (0..b * t).map(|i| ((i * 7919) % cfg.vocab_size) as u32).collect();
        let inputs = Tensor::from_vec(toks.clone(), (b, t), &Device::Cpu).unwrap();
        let targets =
            Tensor::from_vec(toks.iter().map(|x| (x + 1) % cfg.vocab_size as u32).collect::<Vec<_>>(), (b, t), &Device::Cpu).unwrap();
        let fwd = time_op(|| {
            model.loss(&inputs, &targets, &mut ForwardCtx::default()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            Ok(())
        });
        let step = time_op(|| {
            let l = model.loss(&inputs, &targets, &mut ForwardCtx::default()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            l.backward()?;
            Ok(())
        });
        println!("model loss forward: {fwd}; forward+backward: {step} ({} tokens per step)", b * t);
    }
}
