//! The CUDA path against the CPU path (`--features cuda`; each test prints "skipped: no CUDA GPU"
//! and passes when `Device::new_cuda(0)` fails).
//!
//! Every op runs on the same inputs on both devices, forward and backward (the gradient of
//! Σ out ⊙ r for a fixed random r). Tolerances, relative to the largest magnitude of the CPU result
//! (`assert_close`): 1e-4 for forward values and gradients of the ops (f32 with other summation
//! orders: cuBLAS, the kernels' per-thread sums), 1e-5 for the element-wise updates, and for the
//! product-key selection exact equality of the slots where the arithmetic is exact (small-integer
//! inputs, ties included) and ≥ 99% equal rows on random inputs (a near-tie within rounding may
//! order differently). The short training run (configs/tiny-memory-test.toml, 20 steps) must give
//! the CPU's losses within 2e-3 relative at step 1 and 2% at every step (both runs start from the
//! same weights and batches; rounding differences grow slowly through training and the memory's
//! discrete selection). With bf16 matmuls on the GPU the same run must stay within 3% of the CPU's
//! f32 losses at every step.

#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use memtune::config::{ExperimentConfig, Precision};
use memtune::data::batches::SyntheticStream;
use memtune::data::synthetic::World;
use memtune::data::tokenizer::{train_bpe, Tokenizer};
use memtune::model::memory_trace::AccessCounts;
use memtune::model::{FeedForward, ForwardCtx, Llama, MemoryConfig, ParamBuilder, ParamStore};
use memtune::ops::gradcheck::{assert_close, randn};
use memtune::ops::{self, RopeTables, IGNORE_INDEX};
use memtune::train::optim::{default_groups, AdamW, AdamWParams, Optimizer};
use memtune::train::pretrain::make_optimizer;
use memtune::train::trainer::{dense_names, Trainer};
use memtune::train::values::{LazyAdamW, RowGrads, SparseSgd, ValueBatch, ValueUpdate};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// The GPU, or None (after printing why the test is skipped).
fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("skipped: no CUDA GPU ({e})");
            None
        }
    }
}

fn cpu(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu).unwrap()
}

/// f on `inputs` placed on `dev` (as Vars): (output, gradients of Σ out ⊙ r for every input), on the CPU.
fn run_with_grads(dev: &Device, inputs: &[Tensor], r_seed: u64, f: &dyn Fn(&[Tensor]) -> Tensor) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&t.to_device(dev).unwrap()).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let r = randn(y.shape().clone(), r_seed).unwrap().to_device(dev).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = ts.iter().map(|t| cpu(grads.get(t).expect("input has a gradient"))).collect();
    (cpu(&y), gs)
}

/// The op on both devices: forward and every input gradient within `tol`.
fn compare(what: &str, g: &Device, inputs: &[Tensor], tol: f64, f: &dyn Fn(&[Tensor]) -> Tensor) {
    let (yc, gc) = run_with_grads(&Device::Cpu, inputs, 99, f);
    let (yg, gg) = run_with_grads(g, inputs, 99, f);
    assert_close(&yg, &yc, tol, &format!("{what} forward"));
    for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
        assert_close(a, b, tol, &format!("{what} gradient of input {i}"));
    }
}

#[test]
fn dense_ops_match_cpu() {
    let Some(g) = gpu() else { return };
    compare("rms_norm", &g, &[randn((6, 5, 48), 1).unwrap(), randn(48, 2).unwrap()], 1e-4, &|a| ops::rms_norm(&a[0], &a[1], 1e-5).unwrap());
    compare("softmax_rows", &g, &[randn((7, 3, 33), 3).unwrap()], 1e-4, &|a| ops::softmax_rows(&a[0]).unwrap());
    compare("swiglu", &g, &[randn((9, 40), 4).unwrap(), randn((9, 40), 5).unwrap()], 1e-4, &|a| ops::swiglu(&a[0], &a[1]).unwrap());
    let tables_c = RopeTables::new(16, 32, 10000.0, &Device::Cpu).unwrap();
    let tables_g = RopeTables::new(16, 32, 10000.0, &g).unwrap();
    let x = randn((2, 7, 3, 16), 6).unwrap();
    let (yc, gc) = run_with_grads(&Device::Cpu, &[x.clone()], 7, &|a| ops::rope(&a[0], &tables_c, 3).unwrap());
    let (yg, gg) = run_with_grads(&g, &[x], 7, &|a| ops::rope(&a[0], &tables_g, 3).unwrap());
    assert_close(&yg, &yc, 1e-4, "rope forward");
    assert_close(&gg[0], &gc[0], 1e-4, "rope gradient");
    // Grouped-query attention with a KV prefix (S > T).
    let (q, k, v) = (randn((2, 5, 4, 8), 8).unwrap(), randn((2, 9, 2, 8), 9).unwrap(), randn((2, 9, 2, 8), 10).unwrap());
    compare("causal_attention", &g, &[q, k, v], 1e-4, &|a| ops::causal_attention(&a[0], &a[1], &a[2], 0.35).unwrap());
    // Cross-entropy with ignored targets; the targets are not differentiated.
    let targets = vec![3u32, IGNORE_INDEX, 0, 49, 7, IGNORE_INDEX, 12, 30];
    let logits = randn((8, 50), 11).unwrap();
    let loss = |dev: &Device| {
        let t = Tensor::new(targets.as_slice(), dev).unwrap();
        let x = Var::from_tensor(&logits.to_device(dev).unwrap()).unwrap();
        let l = ops::cross_entropy(x.as_tensor(), &t).unwrap();
        let gx = l.backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let lp = ops::token_logprobs(x.as_tensor(), &t).unwrap();
        (cpu(&l), cpu(&gx), cpu(&lp))
    };
    let ((lc, gc, pc), (lg, gg, pg)) = (loss(&Device::Cpu), loss(&g));
    assert_close(&lg, &lc, 1e-5, "cross_entropy forward");
    assert_close(&gg, &gc, 1e-4, "cross_entropy gradient");
    assert_close(&pg, &pc, 1e-5, "token_logprobs");
}

/// Small-integer inputs: every dot product and sum is exact in f32 on both devices, and ties are
/// frequent, so the selection (tie-breaking included) must be identical.
fn integer_tensor(shape: &[usize], seed: u64) -> Tensor {
    (randn(shape.to_vec(), seed).unwrap() * 1.5).unwrap().round().unwrap()
}

#[test]
fn product_key_topk_matches_cpu() {
    let Some(g) = gpu() else { return };
    for (n_tok, heads, k_dim, n, knn, seed) in
        [(70usize, 2usize, 8usize, 16usize, 4usize, 1u64), (5, 3, 6, 9, 9, 2), (33, 1, 4, 40, 7, 3), (300, 4, 32, 128, 32, 4)]
    {
        let q = integer_tensor(&[n_tok, heads, k_dim], seed);
        let keys = integer_tensor(&[heads, 2, n, k_dim / 2], seed + 10);
        let f = |a: &[Tensor]| ops::product_key_topk(&a[0], &a[1], knn).unwrap().0;
        let (_, hc) = ops::product_key_topk(&q, &keys, knn).unwrap();
        let (_, hg) = ops::product_key_topk(&q.to_device(&g).unwrap(), &keys.to_device(&g).unwrap(), knn).unwrap();
        assert_eq!(*hg.get().unwrap(), *hc.get().unwrap(), "slots (integer inputs, n_keys {n}, knn {knn})");
        compare(&format!("product_key_topk (n_keys {n}, knn {knn})"), &g, &[q, keys], 1e-5, &f);
    }
    // Random inputs: scores rank by rank, and nearly all rows' slots.
    let (n_tok, heads, k_dim, n, knn) = (512, 4, 64, 256, 16);
    let q = randn((n_tok, heads, k_dim), 5).unwrap();
    let keys = randn((heads, 2, n, k_dim / 2), 6).unwrap();
    let (sc, hc) = ops::product_key_topk(&q, &keys, knn).unwrap();
    let (sg, hg) = ops::product_key_topk(&q.to_device(&g).unwrap(), &keys.to_device(&g).unwrap(), knn).unwrap();
    assert_close(&cpu(&sg), &sc, 1e-4, "product_key_topk scores (random inputs)");
    let (a, b) = (hg.get().unwrap(), hc.get().unwrap());
    let rows_differ = a.chunks(knn).zip(b.chunks(knn)).filter(|(x, y)| x != y).count();
    println!("product_key_topk: {rows_differ} of {} (token, head) rows differ in their slots", n_tok * heads);
    assert!(rows_differ * 100 <= n_tok * heads, "{rows_differ} rows differ");
}

#[test]
fn embedding_bag_matches_cpu() {
    let Some(g) = gpu() else { return };
    let (n, m, u, d) = (90, 8, 50, 37);
    // Every row used, with repeats (as the memory layer's unique rows are).
    let mut inv: Vec<u32> = (0..n * m).map(|i| ((i as u64 * 7919 + 31) % u as u64) as u32).collect();
    for (i, x) in inv.iter_mut().take(u).enumerate() {
        *x = i as u32;
    }
    let inv = Arc::new(inv);
    let inputs = [randn((n, 2, m / 2), 62).unwrap(), randn((u, d), 63).unwrap()];
    compare("embedding_bag", &g, &inputs, 1e-4, &|a| ops::embedding_bag(&a[0], &a[1], inv.clone()).unwrap());
}

/// The memory layer's read: rows in place from a table through the slots, gradients on a leaf.
#[test]
fn embedding_bag_from_table_matches_cpu() {
    let Some(g) = gpu() else { return };
    let (n, m, rows, d) = (90, 8, 300, 37);
    let slots: Vec<u32> = (0..(n * m) as u64).map(|i| ((i * i * 7 + 3) % rows as u64) as u32).collect();
    let (unique, inv) = memtune::ops::slots::unique_inverse(&slots);
    let (slots, inv) = (Arc::new(slots), Arc::new(inv));
    let table = randn((rows, d), 64).unwrap();
    let inputs = [randn((n, 2, m / 2), 65).unwrap(), Tensor::zeros((unique.len(), d), DType::F32, &Device::Cpu).unwrap()];
    compare("embedding_bag_from_table", &g, &inputs, 1e-4, &|a| {
        ops::embedding_bag_from_table(&a[0], &a[1], inv.clone(), &table.to_device(a[0].device()).unwrap(), slots.clone()).unwrap()
    });
}

fn small_memory() -> MemoryConfig {
    MemoryConfig { layers: vec![0], n_keys: 32, heads: 2, knn: 8, k_dim: 32, v_dim: 24, qk_norm: true, ..Default::default() }
}

#[test]
fn memory_layer_slots_output_and_value_gradients_match_cpu() {
    let Some(g) = gpu() else { return };
    let m = small_memory();
    let a = common::memory_layer_inputs(&m, 64, 40, 1);
    let run = |dev: &Device| {
        let a: Vec<Tensor> = a.iter().map(|t| t.to_device(dev).unwrap()).collect();
        let layer = common::memory_layer(&m, &a);
        let mut ctx = ForwardCtx::default();
        let y = layer.forward(&a[0], &mut ctx).unwrap();
        let r = randn(y.shape().clone(), 5).unwrap().to_device(dev).unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let rg = RowGrads::from_traces(&ctx.memory, &grads).unwrap().unwrap();
        (ctx.memory[0].slots.clone(), cpu(&y), rg.rows.clone(), cpu(&rg.grads))
    };
    let (sc, yc, rc, gc) = run(&Device::Cpu);
    let (sg, yg, rgr, gg) = run(&g);
    assert_eq!(sg, sc, "memory layer slots");
    assert_eq!(rgr, rc, "touched rows");
    assert_close(&yg, &yc, 1e-4, "memory layer output");
    assert_close(&gg, &gc, 1e-4, "value row gradients");
}

fn row_grads(rows: &[u32], d: usize, seed: u64, dev: &Device) -> RowGrads {
    RowGrads::new(rows.to_vec(), randn((rows.len(), d), seed).unwrap().to_device(dev).unwrap()).unwrap()
}

#[test]
fn sparse_value_updates_match_cpu() {
    let Some(g) = gpu() else { return };
    let (n, d) = (300, 24);
    let table0 = randn((n, d), 1).unwrap();
    let steps: [&[u32]; 4] = [&[0, 3, 31, 32, 299], &[3, 32, 33], &[0, 3, 40, 299], &[40]];
    let access = AccessCounts::default();
    let hp = AdamWParams { beta1: 0.9, beta2: 0.95, eps: 1e-8 };
    let run = |dev: &Device, make: &dyn Fn() -> Box<dyn ValueUpdate>| {
        let table = table0.to_device(dev).unwrap().copy().unwrap();
        let mut opt = make();
        let mut merged_sq = vec![];
        for (s, rows) in steps.iter().enumerate() {
            let a = row_grads(rows, d, 10 + s as u64, dev);
            let b = row_grads(&[3, 5], d, 20 + s as u64, dev);
            let gr = a.merge(&b).unwrap();
            gr.scale(0.5).unwrap();
            merged_sq.push(gr.sum_squares().unwrap());
            opt.step(&table, &ValueBatch { grads: &gr, access: &access, lr_mult: 0.7, step: s }).unwrap();
        }
        let state: HashMap<String, Tensor> = opt.state_tensors().unwrap().into_iter().map(|(k, v)| (k, cpu(&v))).collect();
        (cpu(&table), state, merged_sq)
    };
    let makers: [(&str, Box<dyn Fn() -> Box<dyn ValueUpdate>>); 3] = [
        ("lazy AdamW", Box::new(move || Box::new(LazyAdamW::new(n, d, 0.01, hp, 0.1, false)))),
        ("lazy AdamW row-wise", Box::new(move || Box::new(LazyAdamW::new(n, d, 0.01, hp, 0.0, true)))),
        ("sparse SGD", Box::new(|| Box::new(SparseSgd::new(0.3)))),
    ];
    for (what, make) in makers.iter() {
        let (tc, stc, sqc) = run(&Device::Cpu, make.as_ref());
        let (tg, stg, sqg) = run(&g, make.as_ref());
        assert_close(&tg, &tc, 1e-5, &format!("{what}: table"));
        for (a, b) in sqg.iter().zip(&sqc) {
            assert!((a - b).abs() <= 1e-5 * b.abs(), "{what}: Σ g² {a} vs {b}");
        }
        let mut keys: Vec<&String> = stc.keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            {
                let mut k: Vec<&String> = stg.keys().collect();
                k.sort();
                k
            },
            "{what}: state names"
        );
        for k in keys {
            if stc[k].dtype() == DType::U32 {
                assert_eq!(stg[k].to_vec1::<u32>().unwrap(), stc[k].to_vec1::<u32>().unwrap(), "{what}: {k}");
            } else {
                assert_close(&stg[k], &stc[k], 1e-5, &format!("{what}: {k}"));
            }
        }
        // The exported GPU state loads back and continues on the GPU as the CPU does.
        if what.starts_with("lazy") {
            let rowwise = what.contains("row-wise");
            let mut a = LazyAdamW::new(n, d, 0.01, hp, 0.0, rowwise);
            a.load_state(&stg).unwrap();
            let mut b = LazyAdamW::new(n, d, 0.01, hp, 0.0, rowwise);
            b.load_state(&stc).unwrap();
            let (ta, tb) = (tg.to_device(&g).unwrap(), tc.copy().unwrap());
            let access = AccessCounts::default();
            a.step(&ta, &ValueBatch { grads: &row_grads(&[3, 40, 41], d, 30, &g), access: &access, lr_mult: 1.0, step: 4 }).unwrap();
            b.step(&tb, &ValueBatch { grads: &row_grads(&[3, 40, 41], d, 30, &Device::Cpu), access: &access, lr_mult: 1.0, step: 4 })
                .unwrap();
            assert_close(&cpu(&ta), &tb, 1e-5, &format!("{what}: step after reload"));
        }
    }
}

#[test]
fn dense_adamw_matches_cpu() {
    let Some(g) = gpu() else { return };
    let run = |dev: &Device| {
        let store = ParamStore::new();
        store.insert("a", Var::from_tensor(&randn((33, 17), 1).unwrap().to_device(dev).unwrap()).unwrap());
        store.insert("b", Var::from_tensor(&randn(50, 2).unwrap().to_device(dev).unwrap()).unwrap());
        let names = vec!["a".to_string(), "b".to_string()];
        let mut opt = AdamW::new(&store, default_groups(&store, &names, 0.1), AdamWParams::default()).unwrap();
        for s in 0..3 {
            let grads: HashMap<String, Tensor> = [("a", (33usize, 17usize)), ("b", (50, 1))]
                .iter()
                .map(|(n, sh)| {
                    (n.to_string(), randn(*sh, 10 + s).unwrap().reshape(store.get(n).unwrap().shape()).unwrap().to_device(dev).unwrap())
                })
                .collect();
            opt.step(&grads, 1e-2).unwrap();
        }
        (cpu(store.get("a").unwrap().as_tensor()), cpu(store.get("b").unwrap().as_tensor()))
    };
    let ((ac, bc), (ag, bg)) = (run(&Device::Cpu), run(&g));
    assert_close(&ag, &ac, 1e-5, "AdamW a");
    assert_close(&bg, &bc, 1e-5, "AdamW b");
}

/// configs/tiny-memory-test.toml at 20 steps, its world and tokenizer: made once per test binary.
fn tiny_memory() -> &'static (ExperimentConfig, World, Tokenizer) {
    static SETUP: OnceLock<(ExperimentConfig, World, Tokenizer)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let cfg = ExperimentConfig::from_toml_str(
            include_str!("../configs/tiny-memory-test.toml"),
            "tiny-memory-test.toml",
            &["train.steps=20".to_string()],
        )
        .unwrap();
        let world = World::generate(&cfg.data.world);
        let tok = train_bpe(world.corpus_sample(400, 0), cfg.model.vocab_size).unwrap();
        (cfg, world, tok)
    })
}

/// Losses of the 20 steps on `dev`, matmuls in `precision`, from the same weights and batches on
/// every device.
fn tiny_memory_losses(dev: &Device, precision: Precision) -> Vec<f32> {
    let (cfg, world, tok) = tiny_memory();
    let t = &cfg.train;
    let store = ParamStore::new();
    let model = Llama::new(&cfg.model, &ParamBuilder::fresh(&store, 0, dev).with_precision(precision)).unwrap();
    let mut source = SyntheticStream::new(world.clone(), tok.clone(), t.seed, cfg.data.qa_fraction, t.batch_size, t.seq_len).unwrap();
    let names = dense_names(&store);
    let opt = make_optimizer(cfg, &store, &names).unwrap();
    let mut trainer = Trainer::new(&model, &store, names, opt, t.clone());
    (0..t.steps).map(|s| trainer.step(&mut source, s).unwrap().loss).collect()
}

/// The CPU f32 run both training tests compare with, run once.
fn cpu_f32_losses() -> &'static [f32] {
    static LOSSES: OnceLock<Vec<f32>> = OnceLock::new();
    LOSSES.get_or_init(|| tiny_memory_losses(&Device::Cpu, Precision::F32))
}

#[test]
fn short_training_run_reproduces_cpu_losses() {
    let Some(g) = gpu() else { return };
    let (lc, lg) = (cpu_f32_losses(), tiny_memory_losses(&g, Precision::F32));
    println!("CPU losses {lc:?}\nGPU losses {lg:?}");
    assert!((lg[0] - lc[0]).abs() <= 2e-3 * lc[0], "step 1: GPU {} vs CPU {}", lg[0], lc[0]);
    for (s, (a, b)) in lg.iter().zip(lc).enumerate() {
        assert!((a - b).abs() <= 0.02 * b, "step {}: GPU {a} vs CPU {b}", s + 1);
    }
    assert!(lg[19] < lg[0], "the GPU run does not learn: {lg:?}");
}

/// bf16 matmuls (cuBLAS, tensor cores) on f32 masters: the loss curve stays within 3% of the f32
/// CPU run's at every step (bf16 rounds each operand to 8 significant bits).
#[test]
fn bf16_training_run_tracks_the_f32_cpu_losses() {
    let Some(g) = gpu() else { return };
    let (lc, lg) = (cpu_f32_losses(), tiny_memory_losses(&g, Precision::Bf16));
    println!("CPU f32 losses {lc:?}\nGPU bf16 losses {lg:?}");
    assert_ne!(lc, lg);
    for (s, (a, b)) in lg.iter().zip(lc).enumerate() {
        assert!((a - b).abs() <= 0.03 * b, "step {}: GPU bf16 {a} vs CPU f32 {b}", s + 1);
    }
    assert!(lg[19] < lg[0], "the bf16 GPU run does not learn: {lg:?}");
}
