//! Hugging Face checkpoints load exactly: memtune's logits for the committed tiny random
//! `LlamaForCausalLM` (grouped-query attention, untied head), `Qwen2ForCausalLM` (q/k/v bias,
//! tied embeddings, padded vocabulary) and Llama 3.1-style model ("llama3" RoPE scaling) match what transformers computed in f32
//! (`expected_logits.json`, written by `scripts/make-hf-fixtures.py`) to 1e-4, decoding with the
//! KV cache gives what recomputing the whole sequence gives, and the loaded weights train with
//! full finetuning and LoRA.

use candle_core::{Device, IndexOp, Tensor};
use memtune::config::{FinetuneConfig, MethodKind};
use memtune::data::batches::Batch;
use memtune::eval::generate::{argmax, generate, GenerateOptions};
use memtune::model::pretrained::{load_model_dir, LoadedModel};
use memtune::model::{ForwardCtx, KvCache, Llama, LlamaConfig, ParamBuilder};
use memtune::train::methods::{finetune, prepare};
use std::path::Path;

const FIXTURES: &[&str] = &["tests/fixtures/hf-tiny-llama", "tests/fixtures/hf-tiny-qwen2", "tests/fixtures/hf-tiny-llama3"];
/// The bar: max |memtune − transformers| over every logit.
const TOLERANCE: f32 = 1e-4;

struct Expected {
    input_ids: Vec<u32>,
    /// (T, V)
    logits: Vec<Vec<f32>>,
}

fn expected(dir: &str) -> Expected {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(dir).join("expected_logits.json")).unwrap()).unwrap();
    let input_ids = v["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    Expected { input_ids, logits }
}

fn load(dir: &str) -> LoadedModel {
    load_model_dir(Path::new(dir), &Device::Cpu).unwrap_or_else(|e| panic!("{dir}: {e:#}"))
}

fn logits(m: &LoadedModel, ids: &[u32]) -> Vec<Vec<f32>> {
    let x = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    m.model.forward(&x, None, &mut ForwardCtx::inference()).unwrap().to_vec2().unwrap()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!((a.len(), a[0].len()), (b.len(), b[0].len()), "logit shapes differ");
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

#[test]
fn logits_match_transformers() {
    for dir in FIXTURES {
        let m = load(dir);
        let want = expected(dir);
        let err = max_abs_diff(&logits(&m, &want.input_ids), &want.logits);
        let scale = want.logits.iter().flatten().fold(0f32, |a, x| a.max(x.abs()));
        println!("{dir}: {} tokens, max |logit| {scale:.2}, max abs error {err:.2e}", want.input_ids.len());
        assert!(err <= TOLERANCE, "{dir}: max abs logit error {err:e} > {TOLERANCE:e}");
        // The fixture's tokenizer gives the fixture's input ids.
        let text = m.tokenizer.decode(&want.input_ids).unwrap();
        assert_eq!(m.tokenizer.encode(&text).unwrap(), want.input_ids, "{dir}");
    }
}

#[test]
fn the_fixtures_exercise_what_they_claim() {
    let llama = load(FIXTURES[0]);
    let qwen = load(FIXTURES[1]);
    let (l, q) = (&llama.model.cfg, &qwen.model.cfg);
    assert!(!l.tie_word_embeddings && !l.attention_bias && l.num_key_value_heads < l.num_attention_heads);
    assert!(q.tie_word_embeddings && q.attention_bias && q.num_key_value_heads < q.num_attention_heads);
    // RoPE bases other than the default, read from either spelling of config.json.
    assert_ne!(l.rope_theta, 10_000.0);
    assert_ne!(q.rope_theta, 10_000.0);
    assert!(qwen.model.layers[0].self_attn.q_proj.bias.is_some());
    assert!(q.vocab_size > qwen.tokenizer.vocab_size(), "the Qwen2 fixture pads its embedding table");
    let llama3 = load(FIXTURES[2]);
    assert!(llama3.model.cfg.rope_scaling.is_some());
    // The settings read from config.json matter well above the tolerance: computed without them,
    // the logits are far off.
    let off = |m: &LoadedModel, dir: &str, change: fn(&mut LlamaConfig)| {
        let mut cfg = m.model.cfg.clone();
        change(&mut cfg);
        let other = Llama::new(&cfg, &ParamBuilder::existing(&m.store, &Device::Cpu)).unwrap();
        let want = expected(dir);
        let x = Tensor::new(want.input_ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let got: Vec<Vec<f32>> = other.forward(&x, None, &mut ForwardCtx::inference()).unwrap().to_vec2().unwrap();
        max_abs_diff(&got, &want.logits)
    };
    assert!(off(&llama, FIXTURES[0], |c| c.rope_theta = 10_000.0) > 100.0 * TOLERANCE);
    assert!(off(&llama, FIXTURES[0], |c| c.rms_norm_eps = 1e-2) > 100.0 * TOLERANCE);
    assert!(off(&llama3, FIXTURES[2], |c| c.rope_scaling = None) > 100.0 * TOLERANCE);
}

#[test]
fn kv_cache_decoding_matches_full_recompute() {
    for dir in FIXTURES {
        let m = load(dir);
        let prompt = &expected(dir).input_ids[..6];
        let n = 10;
        let cached = generate(&m.model, prompt, &GenerateOptions { max_new_tokens: n, ..Default::default() }).unwrap();
        let mut seq = prompt.to_vec();
        for _ in 0..n {
            let last = logits(&m, &seq).pop().unwrap();
            seq.push(argmax(&last));
        }
        assert_eq!(cached, seq[prompt.len()..], "{dir}");
        // Token by token through the cache, the logits are those of the full forward.
        let full = logits(&m, &seq);
        let mut cache = KvCache::new(m.model.cfg.num_hidden_layers);
        let mut ctx = ForwardCtx::inference();
        let mut stepped = vec![];
        for &t in &seq {
            let x = Tensor::new(&[t], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            stepped.push(m.model.forward(&x, Some(&mut cache), &mut ctx).unwrap().i(0).unwrap().to_vec1::<f32>().unwrap());
        }
        let err = max_abs_diff(&stepped, &full);
        assert!(err <= TOLERANCE, "{dir}: cached vs full logits differ by {err:e}");
    }
}

/// Two copies of one sentence, next-token targets.
fn repeated_batch(ids: &[u32]) -> Batch {
    let (inputs, targets) = (&ids[..ids.len() - 1], &ids[1..]);
    Batch { inputs: [inputs, inputs].concat(), targets: [targets, targets].concat(), batch: 2, seq: inputs.len(), mask: None }
}

#[test]
fn loaded_weights_train_with_full_finetuning_and_lora() {
    for dir in FIXTURES {
        let m = load(dir);
        let ids = expected(dir).input_ids;
        for method in [MethodKind::Full, MethodKind::Lora] {
            let mut ft = FinetuneConfig { method, ..Default::default() };
            ft.full.lr = 1e-3;
            ft.full.steps_per_fact = 8;
            ft.lora.lr = 1e-2;
            ft.lora.steps_per_fact = 8;
            let p = prepare(&ft, &m.model.cfg, &m.store, None, &Device::Cpu).unwrap();
            let (_, out) = finetune(p, vec![repeated_batch(&ids)], |_| {}).unwrap();
            println!("{dir} {method:?}: loss {:.3} -> {:.3}", out.mean_first_loss, out.mean_last_loss);
            assert!(out.mean_last_loss < 0.8 * out.mean_first_loss, "{dir} {method:?}: {out:?}");
        }
        // Finetuning worked on copies: the loaded model is unchanged.
        let err = max_abs_diff(&logits(&m, &ids), &expected(dir).logits);
        assert!(err <= TOLERANCE, "{dir}: base weights moved ({err:e})");
    }
}
