//! Decoding with the KV cache gives what recomputing the whole sequence gives; sampling is
//! seeded; scoring returns one log-probability per token.

use candle_core::{Device, IndexOp, Tensor};
use memtune::eval::generate::{argmax, generate, greedy_batch, sample_many, GenerateOptions};
use memtune::model::{ForwardCtx, Llama, LlamaConfig, ParamBuilder, ParamStore};

fn model(kv_heads: usize) -> Llama {
    let cfg = LlamaConfig {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: kv_heads,
        max_position_embeddings: 48,
        attention_bias: true,
        ..Default::default()
    };
    // a larger init std so the random model's greedy choices are not all the same token
    Llama::new(&cfg, &ParamBuilder::fresh(&ParamStore::new(), 3, &Device::Cpu)).unwrap()
}

fn greedy_without_cache(m: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let x = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = m.forward(&x, None, &mut ForwardCtx::default()).unwrap();
        let last: Vec<f32> = logits.i(seq.len() - 1).unwrap().to_vec1().unwrap();
        seq.push(argmax(&last));
    }
    seq[prompt.len()..].to_vec()
}

#[test]
fn kv_cache_decoding_matches_full_recompute() {
    for kv in [4, 2] {
        let m = model(kv);
        let prompt = [5u32, 17, 33, 2, 9];
        let opts = GenerateOptions { max_new_tokens: 20, ..Default::default() };
        let cached = generate(&m, &prompt, &opts).unwrap();
        assert_eq!(cached, greedy_without_cache(&m, &prompt, 20), "kv heads {kv}");
    }
}

#[test]
fn prompts_of_several_lengths_decode_in_one_batch_as_they_do_alone() {
    for kv in [4, 2] {
        let m = model(kv);
        let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 33, 2, 9, 40, 12], vec![8], vec![1, 2, 3], vec![60, 61, 62, 63, 7, 7, 7]];
        let batched = greedy_batch(&m, &prompts, 15, &[]).unwrap();
        for (p, got) in prompts.iter().zip(&batched) {
            let alone = generate(&m, p, &GenerateOptions { max_new_tokens: 15, ..Default::default() }).unwrap();
            assert_eq!(got, &alone, "kv heads {kv}, prompt {p:?}");
        }
    }
}

#[test]
fn sampling_is_seeded_and_batched_samples_share_the_prompt() {
    let m = model(2);
    let prompt = [1u32, 2, 3];
    let opts = GenerateOptions { max_new_tokens: 12, temperature: 1.0, top_p: 0.95, seed: 11, stop_tokens: vec![] };
    let a = sample_many(&m, &prompt, 4, &opts).unwrap();
    let b = sample_many(&m, &prompt, 4, &opts).unwrap();
    assert_eq!(a, b, "same seed, same samples");
    assert_eq!(a.len(), 4);
    assert!(a.iter().all(|s| s.len() == 12));
    assert!(a.iter().any(|s| s != &a[0]), "temperature 1 should give different samples");
    let c = sample_many(&m, &prompt, 4, &GenerateOptions { seed: 12, ..opts.clone() }).unwrap();
    assert_ne!(a, c);
}

#[test]
fn generation_stops_at_a_stop_token_and_at_the_context_limit() {
    let m = model(4);
    let prompt = [5u32, 17, 33];
    let free = generate(&m, &prompt, &GenerateOptions { max_new_tokens: 10, ..Default::default() }).unwrap();
    let stop = free[3];
    let cut = generate(&m, &prompt, &GenerateOptions { max_new_tokens: 10, stop_tokens: vec![stop], ..Default::default() }).unwrap();
    let first = free.iter().position(|&t| t == stop).unwrap();
    assert_eq!(cut, free[..=first].to_vec());
    let long = generate(&m, &prompt, &GenerateOptions { max_new_tokens: 1000, ..Default::default() }).unwrap();
    assert_eq!(long.len(), 48 - prompt.len());
}
