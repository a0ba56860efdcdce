//! Test-only timing helper for the ops' `#[ignore]`d speed checks
//! (`cargo test --release --lib -- --ignored --nocapture --test-threads=1 timing`).

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
