//! GGUF tensors → Hugging Face tensors: llama.cpp names mapped back to `LlamaForCausalLM` names,
//! quantised blocks dequantised by candle, and the q/k row permutation of llama.cpp's converter
//! undone.
//!
//! The permutation. `convert_hf_to_gguf.py` (`LlamaModel.permute`) stores q_proj / k_proj
//! weights and biases with rows reordered for llama.cpp's interleaved RoPE (pairs (2i, 2i+1)):
//! ```text
//! W.reshape(n_head, 2, head_dim/2, rest).swapaxes(1, 2).reshape(W.shape)
//! ```
//! with n_head = head_count for q and head_count_kv for k. Its inverse, applied here, is
//! `W.reshape(n_head, head_dim/2, 2, rest).swapaxes(1, 2)`: back to rotate-half order (halves
//! [0, head_dim/2) and [head_dim/2, head_dim)), which memtune's RoPE uses.

use super::config::Hyperparams;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek};
use std::path::Path;

/// Per-block tensors: llama.cpp name → Hugging Face name under `model.layers.N.`.
const BLOCK_TENSORS: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Model-level tensors.
const TOP_TENSORS: &[(&str, &str)] =
    &[("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight"), ("output.weight", "lm_head.weight")];

/// Tensors that exist in some GGUF files but mean something memtune's model does not do.
const UNSUPPORTED: &[(&str, &str)] = &[("rope_freqs.weight", "per-dimension RoPE frequency factors (Llama 3.1 RoPE scaling)")];

/// One GGUF tensor to convert.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub gguf: String,
    pub hf: String,
    /// Heads to un-permute the rows over (q: head_count, k: head_count_kv), if permuted.
    pub unpermute_heads: Option<usize>,
}

/// The HF name of a GGUF tensor name (`None` if it is not one memtune knows).
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf)) = TOP_TENSORS.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (kind, suffix) = rest.split_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    let (_, hf) = BLOCK_TENSORS.iter().find(|(g, _)| *g == kind)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Every tensor of the file mapped to its HF name, checked against the hyperparameters: an
/// unknown tensor, a block beyond block_count or a missing tensor is an error naming it.
pub fn plan(file: &Path, names: impl IntoIterator<Item = String>, hp: &Hyperparams) -> Result<Vec<Mapping>> {
    let present: BTreeSet<String> = names.into_iter().collect();
    let mut out = Vec::with_capacity(present.len());
    for g in &present {
        if let Some((_, why)) = UNSUPPORTED.iter().find(|(n, _)| n == g) {
            bail!("GGUF {}: tensor `{g}` ({why}) is not supported", file.display());
        }
        let hf = hf_name(g).ok_or_else(|| anyhow!("GGUF {}: unknown tensor `{g}`", file.display()))?;
        if let Some(layer) = layer_of(g).filter(|&l| l >= hp.num_hidden_layers) {
            bail!("GGUF {}: tensor `{g}` is in block {layer} but block_count is {}", file.display(), hp.num_hidden_layers);
        }
        let unpermute_heads = match g.rsplit('.').nth(1) {
            Some("attn_q") if hp.arch.qk_permuted => Some(hp.num_attention_heads),
            Some("attn_k") if hp.arch.qk_permuted => Some(hp.num_key_value_heads),
            _ => None,
        };
        out.push(Mapping { gguf: g.clone(), hf, unpermute_heads });
    }
    for need in required(hp) {
        if !present.contains(&need) {
            bail!("GGUF {}: tensor `{need}` is missing", file.display());
        }
    }
    Ok(out)
}

fn layer_of(gguf: &str) -> Option<usize> {
    gguf.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

/// The tensors a model of these hyperparameters must have.
fn required(hp: &Hyperparams) -> Vec<String> {
    let mut names = vec!["token_embd.weight".to_string(), "output_norm.weight".to_string()];
    for l in 0..hp.num_hidden_layers {
        names.extend(BLOCK_TENSORS.iter().map(|(g, _)| format!("blk.{l}.{g}.weight")));
        if hp.attention_bias {
            names.extend(["attn_q", "attn_k", "attn_v"].iter().map(|g| format!("blk.{l}.{g}.bias")));
        }
    }
    names
}

/// Read, dequantise (f32), un-permute and cast one tensor.
pub fn convert<R: Read + Seek>(content: &Content, reader: &mut R, file: &Path, m: &Mapping, dtype: DType) -> Result<Tensor> {
    let cpu = Device::Cpu;
    let q = content.tensor(reader, &m.gguf, &cpu).with_context(|| format!("GGUF {}: cannot read tensor `{}`", file.display(), m.gguf))?;
    let t = q.dequantize(&cpu).with_context(|| format!("GGUF {}: cannot dequantise `{}` ({:?})", file.display(), m.gguf, q.dtype()))?;
    let t = match m.unpermute_heads {
        Some(h) => unpermute_rows(&t, h).with_context(|| format!("GGUF {}: tensor `{}`", file.display(), m.gguf))?,
        None => t,
    };
    Ok(t.to_dtype(dtype)?)
}

/// Undo `LlamaModel.permute` on the rows of a q/k weight (rows, cols) or bias (rows,).
pub fn unpermute_rows(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let rows = t.dims()[0];
    let rest = t.elem_count() / rows.max(1);
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        bail!("{rows} rows cannot be split into {n_head} heads of an even size");
    }
    let half = rows / n_head / 2;
    Ok(t.reshape((n_head, half, 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(t.shape())?)
}

/// All conversions in file order, with a progress bar; the HF-named tensors.
pub fn convert_all<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    file: &Path,
    plan: &[Mapping],
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let mut order: Vec<&Mapping> = plan.iter().collect();
    // Reading in offset order keeps the disk access sequential.
    order.sort_by_key(|m| content.tensor_infos.get(&m.gguf).map(|i| i.offset).unwrap_or(0));
    let bar = crate::util::progress_bar("import", order.len());
    let mut out = HashMap::with_capacity(order.len());
    for m in order {
        bar.set_message(m.gguf.clone());
        out.insert(m.hf.clone(), convert(content, reader, file, m, dtype)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(hf_name("blk.12.attn_q.weight").unwrap(), "model.layers.12.self_attn.q_proj.weight");
        assert_eq!(hf_name("blk.0.attn_k.bias").unwrap(), "model.layers.0.self_attn.k_proj.bias");
        assert_eq!(hf_name("blk.3.ffn_norm.weight").unwrap(), "model.layers.3.post_attention_layernorm.weight");
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("blk.x.attn_q.weight").is_none());
        assert!(hf_name("blk.0.attn_qkv.weight").is_none());
    }

    /// llama.cpp's permutation written index by index, as numpy computes it.
    fn permute_like_llama_cpp(w: &[f32], n_head: usize, rows: usize, cols: usize) -> Vec<f32> {
        let half = rows / n_head / 2;
        let mut out = vec![0.0; w.len()];
        // out viewed as (n_head, half, 2, cols) = w viewed as (n_head, 2, half, cols), axes 1 and 2 swapped
        for h in 0..n_head {
            for i in 0..half {
                for j in 0..2 {
                    let dst = ((h * half + i) * 2 + j) * cols;
                    let src = ((h * 2 + j) * half + i) * cols;
                    out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (n_head, rows, cols) = (3, 12, 5);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let permuted = Tensor::from_vec(permute_like_llama_cpp(&w, n_head, rows, cols), (rows, cols), &Device::Cpu).unwrap();
        let back = unpermute_rows(&permuted, n_head).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), w);
        // A bias is a single column.
        let b: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        let pb = Tensor::new(permute_like_llama_cpp(&b, n_head, rows, 1), &Device::Cpu).unwrap();
        assert_eq!(unpermute_rows(&pb, n_head).unwrap().to_vec1::<f32>().unwrap(), b);
        // Row 1 of head 0 in GGUF order is the first row of the second half (rotate-half pairs).
        assert_eq!(permute_like_llama_cpp(&b, n_head, rows, 1)[..4], [0.0, 2.0, 1.0, 3.0]);
    }
}
