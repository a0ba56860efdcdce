//! Test-only timing helper for the ops' `#[ignore]`d speed checks
//! (`cargo test --release --lib ops:: -- --ignored --nocapture --test-threads=1 timing`).

use candle_core::Result;
use std::time::Instant;

/// Wall time in milliseconds of `f` over 20 runs after two warm-up runs, as "min / median"
/// (the machine is shared; the minimum is the figure least disturbed by other work).
pub fn time_op(mut f: impl FnMut() -> Result<()>) -> String {
    for _ in 0..2 {
        f().unwrap();
    }
    let mut ts: Vec<f64> = (0..20)
        .map(|_| {
            let t0 = Instant::now();
            f().unwrap();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!("{:.3} ms min / {:.3} ms median", ts[0], ts[ts.len() / 2])
}

/// End-to-end: loss forward + backward of the default Llama config (d 256, 4 layers, vocab 4096)
/// on a batch of 8 × 128 tokens; prints tokens/s of forward+backward (no optimiser step).
#[test]
#[ignore]
fn timing_model_step() {
    use crate::model::config::LlamaConfig;
    use crate::model::llama::{ForwardCtx, Llama};
    use crate::model::params::{ParamBuilder, ParamStore};
    use candle_core::{Device, Tensor};
    let cfg = LlamaConfig::default();
    let store = ParamStore::new();
    let model = Llama::new(&cfg, &ParamBuilder::fresh(&store, 0, &Device::Cpu)).unwrap();
    let (b, t) = (8usize, 128usize);
    let toks: Vec<u32> = (0..b * t).map(|i| ((i * 7919) % cfg.vocab_size) as u32).collect();
    let inputs = Tensor::from_vec(toks.clone(), (b, t), &Device::Cpu).unwrap();
    let targets = Tensor::from_vec(toks.iter().map(|x| (x + 1) % cfg.vocab_size as u32).collect::<Vec<_>>(), (b, t), &Device::Cpu).unwrap();
    let fwd = time_op(|| {
        model.loss(&inputs, &targets, &mut ForwardCtx::default()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(())
    });
    let step = time_op(|| {
        let l = model.loss(&inputs, &targets, &mut ForwardCtx::default()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        l.backward()?;
        Ok(())
    });
    println!("model loss forward: {fwd}; forward+backward: {step} ({} tokens per step)", b * t);
}
