//! Every trainable tensor of the model receives a non-zero, finite gradient, in every variant
//! (tied/untied embeddings, GQA, q/k/v bias, memory layers). A fused op without backward would
//! zero some of them. The memory value table is handed to the model detached; its gradient arrives
//! on the gathered rows of each memory trace, and every touched row must get one.

use candle_core::{DType, Device, Tensor};
use memtune::config::Precision;
use memtune::model::{ForwardCtx, Llama, LlamaConfig, MemoryConfig, ParamBuilder, ParamStore, VALUES_NAME};

fn tiny(tie: bool, kv_heads: usize, bias: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 48,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: kv_heads,
        max_position_embeddings: 32,
        tie_word_embeddings: tie,
        attention_bias: bias,
        ..Default::default()
    }
}

fn check(cfg: &LlamaConfig) {
    check_in(cfg, Precision::F32);
}

fn check_in(cfg: &LlamaConfig, precision: Precision) {
    let dev = Device::Cpu;
    let store = ParamStore::new();
    let model = Llama::new(cfg, &ParamBuilder::fresh(&store, 7, &dev).with_precision(precision)).unwrap();
    let ids: Vec<u32> = (0..2 * 12).map(|i| (i * 7 % 48) as u32).collect();
    let inputs = Tensor::from_vec(ids[..].to_vec(), (2, 12), &dev).unwrap();
    let targets = Tensor::from_vec(ids.iter().map(|i| (i + 1) % 48).collect::<Vec<u32>>(), (2, 12), &dev).unwrap();
    let mut ctx = ForwardCtx::default();
    let loss = model.loss(&inputs, &targets, &mut ctx).unwrap();
    let grads = loss.backward().unwrap();
    let names = store.names();
    assert!(!names.is_empty());
    for (name, var) in store.all() {
        if name == VALUES_NAME {
            assert!(grads.get(var.as_tensor()).is_none(), "the value table must never get a dense gradient");
            continue;
        }
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        assert_eq!((var.dtype(), g.dtype()), (DType::F32, DType::F32), "{name}: masters and their gradients are f32 in every precision");
        let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite gradient");
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
    let n_memory = cfg.memory.as_ref().map_or(0, |m| m.layers.len());
    assert_eq!(ctx.memory.len(), n_memory);
    for tr in &ctx.memory {
        let g = grads.get(tr.values.as_tensor()).unwrap_or_else(|| panic!("layer {}: no value gradient", tr.layer));
        let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        let d = v.len() / tr.rows.len();
        for (i, row) in v.chunks(d).enumerate() {
            assert!(row.iter().all(|x| x.is_finite()), "layer {}: non-finite gradient of value row {}", tr.layer, tr.rows[i]);
            assert!(row.iter().any(|&x| x != 0.0), "layer {}: touched value row {} got a zero gradient", tr.layer, tr.rows[i]);
        }
    }
}

fn with_memory(mut cfg: LlamaConfig, layers: Vec<usize>, qk_norm: bool) -> LlamaConfig {
    cfg.memory = Some(MemoryConfig { layers, n_keys: 8, heads: 2, knn: 4, k_dim: 8, v_dim: 16, qk_norm, ..Default::default() });
    cfg
}

#[test]
fn every_parameter_gets_a_gradient_untied_mha() {
    check(&tiny(false, 4, false));
}

#[test]
fn every_parameter_gets_a_gradient_tied_gqa_bias() {
    check(&tiny(true, 2, true));
}

#[test]
fn every_parameter_gets_a_gradient_with_memory_layers() {
    // Memory in place of the MLP of one block, with and without qk-norm; and in two blocks
    // sharing the value table.
    check(&with_memory(tiny(false, 4, false), vec![1], false));
    check(&with_memory(tiny(true, 2, true), vec![0], true));
    check(&with_memory(tiny(false, 2, false), vec![0, 1], true));
}

#[test]
fn every_parameter_gets_a_gradient_with_bf16_matmuls() {
    // Mixed precision: the projections multiply bf16 casts; each cast's backward must carry the
    // gradient back to its f32 master.
    check_in(&tiny(false, 2, true), Precision::Bf16);
    check_in(&with_memory(tiny(true, 4, false), vec![1], true), Precision::Bf16);
}
