//! LoRA: the adapted model equals the base at step 0; only adapters train (base weights stay
//! bit-identical); the delta is scaled by alpha / r; PEFT layout on disk; merging reproduces the
//! adapted model.

use candle_core::{Device, Tensor};
use memtune::model::lora::{adapter_names, merge_into_base, save_peft, LoraConfig};
use memtune::model::{ForwardCtx, Llama, LlamaConfig, ParamBuilder, ParamStore};
use memtune::train::optim::{default_groups, AdamW, AdamWParams};
use memtune::train::trainer::Trainer;

fn cfg() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 40,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 32,
        ..Default::default()
    }
}

fn logits(m: &Llama, x: &Tensor) -> Vec<f32> {
    m.forward(x, None, &mut ForwardCtx::inference()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn lora_model(store: &ParamStore, lc: &LoraConfig) -> Llama {
    let pb =
        ParamBuilder::existing(store, &Device::Cpu).with_init_missing(5).with_lora(lc.clone()).with_trainable(|n| n.contains(".lora_"));
    Llama::new(&cfg(), &pb).unwrap()
}

#[test]
fn lora_trains_only_adapters_and_merges_back() {
    let dev = Device::Cpu;
    let store = ParamStore::new();
    let base = Llama::new(&cfg(), &ParamBuilder::fresh(&store, 1, &dev)).unwrap();
    let x = Tensor::from_vec((0..24u32).map(|i| i * 5 % 40).collect::<Vec<_>>(), (2, 12), &dev).unwrap();
    let y = Tensor::from_vec((0..24u32).map(|i| (i * 7 + 3) % 40).collect::<Vec<_>>(), (2, 12), &dev).unwrap();
    let before = logits(&base, &x);
    let base_weights: Vec<(String, Vec<f32>)> =
        store.all().iter().map(|(n, v)| (n.clone(), v.flatten_all().unwrap().to_vec1().unwrap())).collect();

    let lc = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec!["q".into(), "v".into(), "down".into()] };
    let model = lora_model(&store, &lc);
    assert_eq!(adapter_names(&store).len(), 2 * 3 * 2, "A and B for 3 targets in 2 layers");
    assert_eq!(logits(&model, &x), before, "B = 0: the adapted model equals the base");

    // train adapters only
    let names = adapter_names(&store);
    let opt = AdamW::new(&store, default_groups(&store, &names, 0.0), AdamWParams::default()).unwrap();
    let mut tc = memtune::config::TrainConfig { lr: 5e-2, warmup_steps: 0, steps: 30, grad_clip: 0.0, ..Default::default() };
    tc.schedule = memtune::config::ScheduleKind::Constant;
    let mut tr = Trainer::new(&model, &store, names.clone(), Box::new(opt), tc);
    let mut src = memtune::data::batches::PackedStream::new(
        {
            let (x, y) = (x.clone(), y.clone());
            move |_k: u64| -> anyhow::Result<Vec<u32>> {
                Ok(x.flatten_all()?.to_vec1::<u32>()?.into_iter().chain(y.flatten_all()?.to_vec1::<u32>()?).collect())
            }
        },
        0,
        2,
        12,
        "fixed",
        0,
        0,
    )
    .unwrap();
    let first = tr.step(&mut src, 0).unwrap().loss;
    let mut last = first;
    for s in 1..30 {
        last = tr.step(&mut src, s).unwrap().loss;
    }
    assert!(last < first - 0.3, "adapters did not learn: {first} -> {last}");
    for (n, w) in &base_weights {
        let now: Vec<f32> = store.get(n).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(now.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()), "{n} changed");
    }
    let adapted = logits(&model, &x);
    assert_ne!(adapted, before);

    // PEFT layout
    let d = tempfile::tempdir().unwrap();
    save_peft(&store, &lc, "base", d.path()).unwrap();
    let saved = candle_core::safetensors::load(d.path().join("adapter_model.safetensors"), &dev).unwrap();
    assert!(saved.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert_eq!(saved["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].dims(), &[32, 4]);
    let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(conf["r"], 4);
    assert_eq!(conf["lora_alpha"], 8.0);
    assert_eq!(conf["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));

    // merged base reproduces the adapted model
    merge_into_base(&store, &lc).unwrap();
    assert!(adapter_names(&store).is_empty());
    let merged = Llama::new(&cfg(), &ParamBuilder::existing(&store, &dev)).unwrap();
    let m = logits(&merged, &x);
    let err = m.iter().zip(&adapted).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-4, "merged logits differ by {err}");
}

#[test]
fn delta_is_scaled_by_alpha_over_rank_only() {
    let dev = Device::Cpu;
    let store = ParamStore::new();
    Llama::new(&cfg(), &ParamBuilder::fresh(&store, 1, &dev)).unwrap();
    let lc = LoraConfig { rank: 2, alpha: 6.0, dropout: 0.0, targets: vec!["o".into()] };
    let model = lora_model(&store, &lc);
    let lin = &model.layers[0].self_attn.o_proj;
    let ad = lin.lora.as_ref().unwrap();
    store
        .get("model.layers.0.self_attn.o_proj.lora_B.weight")
        .unwrap()
        .set(&Tensor::ones((32, 2), candle_core::DType::F32, &dev).unwrap())
        .unwrap();
    let x = Tensor::ones((3, 32), candle_core::DType::F32, &dev).unwrap();
    let y = lin.forward(&x).unwrap();
    let base = x.matmul(&lin.weight.t().unwrap()).unwrap();
    let manual = (x.matmul(&ad.a.t().unwrap()).unwrap().matmul(&ad.b.t().unwrap()).unwrap() * 3.0).unwrap();
    let diff = ((y - base).unwrap() - manual).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "{diff}");
    assert!(LoraConfig { targets: vec!["qq".into()], ..lc.clone() }.validate().is_err());
}
