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
    pretrain::run(&cfg_a, false).unwrap();
    pretrain::run(&cfg_b, false).unwrap();
    let la = losses(&a.path().join("run"));
    let lb = losses(&b.path().join("run"));
    assert_eq!(la.len(), 40);
    assert_eq!(la, lb, "same config and seed must give the same losses");
    let first: f32 = la[..5].iter().map(|x| x.1).sum::<f32>() / 5.0;
    let last: f32 = la[35..].iter().map(|x| x.1).sum::<f32>() / 5.0;
    assert!(last < first - 1.0, "loss did not fall: {first} -> {last}");
}

#[test]
fn resume_reproduces_an_uninterrupted_run_bit_for_bit() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let opts = ["train.steps=16", "train.grad_accum=2", "train.checkpoint_every=4"];
    let full = tiny_config(a.path(), &opts);
    pretrain::run(&full, false).unwrap();

    let cut = tiny_config(b.path(), &opts);
    let out = pretrain::run_until(&cut, false, Some(7)).unwrap();
    assert_eq!(out.steps, 7);
    drop(out);
    pretrain::run(&cut, true).unwrap();

    let (la, lb) = (losses(&a.path().join("run")), losses(&b.path().join("run")));
    assert_eq!(la.len(), 16);
    assert_eq!(la, lb, "resumed losses differ from the uninterrupted run");
    let dev = candle_core::Device::Cpu;
    let ca = Checkpoint::load(&a.path().join("run/checkpoint"), &dev).unwrap();
    let cb = Checkpoint::load(&b.path().join("run/checkpoint"), &dev).unwrap();
    assert_eq!(ca.meta.step, 16);
    for (name, t) in &ca.model {
        let u = &cb.model[name];
        let (x, y): (Vec<f32>, Vec<f32>) = (t.flatten_all().unwrap().to_vec1().unwrap(), u.flatten_all().unwrap().to_vec1().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after resume");
    }
}
