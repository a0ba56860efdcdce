//! Pretraining end to end on the tiny config: the loss falls, runs are deterministic, and a
//! resumed run reproduces the uninterrupted one bit for bit.

mod common;
use common::{losses, tiny_config};
use memtune::io::checkpoint::Checkpoint;
use memtune::train::pretrain;

#[test]
fn loss_falls_and_runs_are_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let cfg_a = tiny_config(a.path(), &["train.steps=40"]);
    let cfg_b = tiny_config(b.path(), &["train.steps=40"]);
    pretrain::run(&cfg_a, false, &candle_core::Device::Cpu).unwrap();
    pretrain::run(&cfg_b, false, &candle_core::Device::Cpu).unwrap();
    let la = losses(&a.path().join("run"));
    let lb = losses(&b.path().join("run"));
    assert_eq!(la.len(), 40);
    assert_eq!(la, lb, "same config and seed must give the same losses");
    let first: f32 = la[..5].iter().map(|x| x.1).sum::<f32>() / 5.0;
    let last: f32 = la[35..].iter().map(|x| x.1).sum::<f32>() / 5.0;
    assert!(last < first - 1.0, "loss did not fall: {first} -> {last}");
}

#[test]
fn bf16_matmuls_track_the_f32_run_and_keep_f32_masters() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let run = |d: &tempfile::TempDir, p: &str| {
        pretrain::run(&tiny_config(d.path(), &["train.steps=40", &format!("train.precision=\"{p}\"")]), false, &candle_core::Device::Cpu)
            .unwrap();
        losses(&d.path().join("run"))
    };
    let (f32s, bf16, again) = (run(&dirs[0], "f32"), run(&dirs[1], "bf16"), run(&dirs[2], "bf16"));
    assert_eq!(bf16, again, "bf16 runs must be deterministic");
    assert_ne!(bf16, f32s, "train.precision = bf16 changed nothing: the matmuls did not run in bf16");
    for ((step, a), (_, b)) in f32s.iter().zip(&bf16) {
        assert!((a - b).abs() <= 0.02 * a, "step {step}: bf16 loss {b} is more than 2% from f32's {a}");
    }
    assert!(
        bf16[35..].iter().map(|x| x.1).sum::<f32>() / 5.0 < bf16[..5].iter().map(|x| x.1).sum::<f32>() / 5.0 - 1.0,
        "bf16 loss did not fall"
    );
    let ck = Checkpoint::load(&dirs[1].path().join("run/checkpoint"), &candle_core::Device::Cpu).unwrap();
    for (name, t) in ck.model.iter().chain(&ck.optimizer) {
        assert!(matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::U32), "{name} saved as {:?}", t.dtype());
    }
    let resolved = std::fs::read_to_string(dirs[1].path().join("run/checkpoint/experiment.toml")).unwrap();
    assert!(resolved.contains("precision = \"bf16\""), "the run's config does not record its precision");
}

#[test]
fn resume_reproduces_an_uninterrupted_run_bit_for_bit() {
    resume_is_bit_exact(&[], &[]);
}

/// A memory layer in place of block 1's MLP: the value table and its lazy optimiser state
/// (in optimizer.safetensors) resume bit for bit too.
#[test]
fn resume_with_a_memory_layer_is_bit_exact() {
    let memory = [
        "model.memory.layers=[1]",
        "model.memory.n_keys=16",
        "model.memory.heads=2",
        "model.memory.knn=4",
        "model.memory.k_dim=8",
        "model.memory.v_dim=16",
        "model.memory.qk_norm=true",
        "model.memory.value_lr=1e-2",
    ];
    resume_is_bit_exact(&memory, &["value_adamw.step", "value_adamw.rows", "value_adamw.m", "value_adamw.v"]);
    let rowwise: Vec<&str> = memory.iter().copied().chain(["model.memory.value_optimizer=adamw-rowwise"]).collect();
    resume_is_bit_exact(&rowwise, &["value_adamw_rowwise.m", "value_adamw_rowwise.v"]);
}

fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    match t.dtype() {
        candle_core::DType::U32 => t.flatten_all().unwrap().to_vec1().unwrap(),
        _ => t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect(),
    }
}

fn resume_is_bit_exact(extra: &[&str], optimizer_keys: &[&str]) {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let mut opts = vec!["train.steps=16", "train.grad_accum=2", "train.checkpoint_every=4"];
    opts.extend_from_slice(extra);
    let full = tiny_config(a.path(), &opts);
    pretrain::run(&full, false, &candle_core::Device::Cpu).unwrap();

    let cut = tiny_config(b.path(), &opts);
    let out = pretrain::run_until(&cut, false, Some(7), &candle_core::Device::Cpu).unwrap();
    assert_eq!(out.steps, 7);
    drop(out);
    pretrain::run(&cut, true, &candle_core::Device::Cpu).unwrap();

    let (la, lb) = (losses(&a.path().join("run")), losses(&b.path().join("run")));
    assert_eq!(la.len(), 16);
    assert_eq!(la, lb, "resumed losses differ from the uninterrupted run");
    let dev = candle_core::Device::Cpu;
    let ca = Checkpoint::load(&a.path().join("run/checkpoint"), &dev).unwrap();
    let cb = Checkpoint::load(&b.path().join("run/checkpoint"), &dev).unwrap();
    assert_eq!(ca.meta.step, 16);
    for (name, t) in &ca.model {
        assert!(bits(t) == bits(&cb.model[name]), "{name} differs after resume");
    }
    assert_eq!(ca.optimizer.len(), cb.optimizer.len());
    for (name, t) in &ca.optimizer {
        assert!(bits(t) == bits(&cb.optimizer[name]), "optimizer state {name} differs after resume");
    }
    for k in optimizer_keys {
        assert!(ca.optimizer.contains_key(*k), "optimizer.safetensors lacks {k}");
    }
    if !extra.is_empty() {
        assert!(ca.model.contains_key("memory.values") && ca.model.contains_key("model.layers.1.memory.keys"));
        assert!(!ca.optimizer.keys().any(|k| k.ends_with("memory.values")), "the dense optimiser must not own the value table");
        let rows = ca.optimizer.keys().find(|k| k.ends_with(".rows")).map(|k| ca.optimizer[k].dims()[0]).unwrap();
        assert!(rows > 0 && rows <= 256, "{rows} rows with optimiser state");
    }
}

/// The reader world is off by default and then absent from the resolved config, so the
/// pretraining folder of every existing config keeps its hash; on, it is part of the hash.
#[test]
fn reader_world_is_off_by_default_and_part_of_the_pretraining_hash_when_on() {
    use memtune::config::ExperimentConfig;
    use memtune::train::model_dir::pretrain_dir;
    let off = ExperimentConfig::default();
    assert!(!off.to_toml().contains("reading"), "{}", off.to_toml());
    let on = ExperimentConfig::from_toml_str("[data.reading]\nopen_book_fraction = 0.3\n", "exp.toml", &[]).unwrap();
    assert!(on.to_toml().contains("[data.reading]"));
    assert_ne!(pretrain_dir(&off), pretrain_dir(&on));
    let back = ExperimentConfig::from_toml_str(&on.to_toml(), "resolved.toml", &[]).unwrap();
    assert_eq!(back.data.reading, on.data.reading);
}
