//! Every trainable tensor of the model receives a non-zero, finite gradient, in every variant
//! (tied/untied embeddings, GQA, q/k/v bias). A fused op without backward would zero some of them.

use candle_core::{Device, Tensor};
use memtune::model::{ForwardCtx, Llama, LlamaConfig, ParamBuilder, ParamStore};

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
    let dev = Device::Cpu;
    let store = ParamStore::new();
    let model = Llama::new(cfg, &ParamBuilder::fresh(&store, 7, &dev)).unwrap();
    let ids: Vec<u32> = (0..2 * 12).map(|i| (i * 7 % 48) as u32).collect();
    let inputs = Tensor::from_vec(ids[..].to_vec(), (2, 12), &dev).unwrap();
    let targets = Tensor::from_vec(ids.iter().map(|i| (i + 1) % 48).collect::<Vec<u32>>(), (2, 12), &dev).unwrap();
    let loss = model.loss(&inputs, &targets, &mut ForwardCtx::default()).unwrap();
    let grads = loss.backward().unwrap();
    let names = store.names();
    assert!(!names.is_empty());
    for (name, var) in store.all() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite gradient");
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}

#[test]
fn every_parameter_gets_a_gradient_untied_mha() {
    check(&tiny(false, 4, false));
}

#[test]
fn every_parameter_gets_a_gradient_tied_gqa_bias() {
    check(&tiny(true, 2, true));
}
