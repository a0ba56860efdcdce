//! Evidence that a memory layer is used, on the synthetic world: a model with a memory layer in
//! place of its MLP reaches a clearly lower held-out loss than the same model with that
//! feed-forward slot left empty, recovers most of what the SwiGLU MLP in that slot gains, and
//! spreads its accesses over most of its slots.
//!
//! The model is configs/tiny-memory-test.toml cut to one block (the memory in place of its MLP).
//! With the config's two blocks, the second block's feed-forward slot does not matter in a run
//! this short: held-out loss with its MLP 0.637, with the slot empty 0.648 at 800 steps (0.492 vs
//! 0.490 at 1,600), the seed-to-seed spread ±0.03; so no feed-forward there, memory or MLP, can
//! beat the empty slot by a margin. With one block, measured with init/data seeds 0, 1, 2 (the
//! test runs seed 0): held-out loss memory 0.782 / 0.734 / 0.746, empty slot 0.963 / 0.929 / 0.935,
//! MLP 0.761 / 0.757 / 0.747 (~23 s for the three runs on 2 cores).
//!
//! All three models are built from the same seed (identical embeddings and attention at init),
//! trained on the same stream for the same number of steps and scored on the same held-out
//! stream.

use anyhow::Result;
use candle_core::{Device, Tensor};
use memtune::config::ExperimentConfig;
use memtune::data::batches::{BatchSource, SyntheticStream};
use memtune::data::synthetic::World;
use memtune::data::tokenizer::{train_bpe, Tokenizer};
use memtune::eval::inspect::inspect;
use memtune::model::{FeedForward, ForwardCtx, Llama, LlamaConfig, ParamBuilder, ParamStore};
use memtune::train::pretrain::{make_optimizer, HELDOUT_SEED};
use memtune::train::trainer::{dense_names, heldout_loss, Trainer};

const STEPS: usize = 600;

/// An empty feed-forward slot: the block is attention only.
struct Empty;
impl FeedForward for Empty {
    fn forward(&self, x: &Tensor, _ctx: &mut ForwardCtx) -> Result<Tensor> {
        Ok(x.zeros_like()?)
    }
}

/// Train `model` for the config's steps; held-out loss over 16 batches.
fn train(cfg: &ExperimentConfig, model: &Llama, store: &ParamStore, world: &World, tok: &Tokenizer) -> f32 {
    let t = &cfg.train;
    let stream = |seed| SyntheticStream::new(world.clone(), tok.clone(), seed, cfg.data.qa_fraction, t.batch_size, t.seq_len).unwrap();
    let mut source = stream(t.seed);
    let names = dense_names(store);
    let opt = make_optimizer(cfg, store, &names).unwrap();
    let mut trainer = Trainer::new(model, store, names, opt, t.clone());
    for s in 0..t.steps {
        trainer.step(&mut source, s).unwrap();
    }
    heldout_loss(model, &mut stream(t.seed ^ HELDOUT_SEED), 16).unwrap()
}

#[test]
fn memory_layer_lowers_heldout_loss_and_reaches_most_slots() {
    let sets = ["model.num_hidden_layers=1".to_string(), "model.memory.layers=[0]".into(), format!("train.steps={STEPS}")];
    let cfg = ExperimentConfig::from_toml_str(include_str!("../configs/tiny-memory-test.toml"), "tiny-memory-test.toml", &sets).unwrap();
    let world = World::generate(&cfg.data.world);
    let tok = train_bpe(world.corpus_sample(400, 0), cfg.model.vocab_size).unwrap();
    let dev = Device::Cpu;

    let store = ParamStore::new();
    let with_memory = Llama::new(&cfg.model, &ParamBuilder::fresh(&store, 0, &dev)).unwrap();
    let loss_memory = train(&cfg, &with_memory, &store, &world, &tok);

    let plain = LlamaConfig { memory: None, ..cfg.model.clone() };
    let store_empty = ParamStore::new();
    let empty = Llama::with_ffn(&plain, &ParamBuilder::fresh(&store_empty, 0, &dev), |_, _| -> Result<Box<dyn FeedForward>> {
        Ok(Box::new(Empty))
    })
    .unwrap();
    let loss_empty = train(&cfg, &empty, &store_empty, &world, &tok);

    let store_mlp = ParamStore::new();
    let mlp = Llama::new(&plain, &ParamBuilder::fresh(&store_mlp, 0, &dev)).unwrap();
    let loss_mlp = train(&cfg, &mlp, &store_mlp, &world, &tok);

    let msg = format!("held-out loss after {STEPS} steps: memory {loss_memory:.4}, empty slot {loss_empty:.4}, MLP {loss_mlp:.4}");
    println!("{msg}");
    // Measured: memory 0.18–0.19 below the empty slot.
    assert!(loss_memory < loss_empty - 0.05, "the memory does not beat the empty slot clearly; {msg}");
    // Measured: the memory's gain over the empty slot is 0.90–1.13 of the MLP's.
    assert!(loss_empty - loss_memory > 0.75 * (loss_empty - loss_mlp), "the memory recovers too little of the MLP's gain; {msg}");

    let mut held =
        SyntheticStream::new(world.clone(), tok.clone(), 7, cfg.data.qa_fraction, cfg.train.batch_size, cfg.train.seq_len).unwrap();
    let report = inspect(&with_memory, &mut held as &mut dyn BatchSource, 16, 5).unwrap();
    println!(
        "memory: {:.3} of {} slots reached, access entropy {:.2} of {:.2} bits",
        report.pooled.fraction_used, report.n_slots, report.pooled.entropy_bits, report.pooled.max_entropy_bits
    );
    assert!(report.pooled.fraction_used > 0.5, "only {:.2} of {} slots reached", report.pooled.fraction_used, report.n_slots);
    assert!(report.pooled.entropy_bits > 0.8 * report.pooled.max_entropy_bits, "access entropy {} bits", report.pooled.entropy_bits);
}
