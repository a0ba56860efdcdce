//! `memtune bench matmul`: GFLOP/s of the f32 matrix products a training step is made of, taken
//! the way the model takes them (`model::linear::matmul_t` on 2-D activations: candle's CPU GEMM,
//! dot products for a few rows), to hold against the machine's peak and against PyTorch's
//! (`scripts/matmul-vs-pytorch.sh`).

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::time::Instant;

/// One product: (m, k) × (k, n), as x (m, k) times wᵀ with w stored (n, k) like a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

impl std::str::FromStr for Shape {
    type Err = anyhow::Error;
    /// `MxKxN`, e.g. `1024x256x688`.
    fn from_str(s: &str) -> Result<Self> {
        let d: Vec<usize> = s
            .split('x')
            .map(|p| p.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("matmul shape `{s}`: {e} (expected MxKxN, e.g. 1024x256x688)"))?;
        ensure!(d.len() == 3 && d.iter().all(|&x| x > 0), "matmul shape `{s}`: expected three positive sizes MxKxN, e.g. 1024x256x688");
        Ok(Shape { m: d[0], k: d[1], n: d[2] })
    }
}

#[derive(Debug, Serialize)]
pub struct MatmulReport {
    pub cpu: String,
    pub simd: &'static str,
    pub threads: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Median over `reps` timed products.
    pub ms: f64,
    pub gflop_per_s: f64,
}

/// Time `reps` products of each shape after `warmup` untimed ones; one report per shape.
pub fn run(shapes: &[Shape], warmup: usize, reps: usize, device: &Device) -> Result<Vec<MatmulReport>> {
    ensure!(reps > 0, "bench matmul needs --reps ≥ 1");
    let (cpu, simd, threads) = (super::machine::cpu_model(), super::machine::gemm_simd(), rayon::current_num_threads());
    shapes
        .iter()
        .map(|&s| {
            let x = Tensor::randn(0f32, 1.0, (s.m, s.k), device)?;
            let w = Tensor::randn(0f32, 0.05, (s.n, s.k), device)?;
            for _ in 0..warmup {
                crate::model::linear::matmul_t(&x, &w, DType::F32)?.device().synchronize()?;
            }
            let mut times: Vec<f64> = (0..reps)
                .map(|_| {
                    let t0 = Instant::now();
                    let y = crate::model::linear::matmul_t(&x, &w, DType::F32)?;
                    y.device().synchronize()?;
                    Ok(t0.elapsed().as_secs_f64())
                })
                .collect::<Result<_>>()?;
            times.sort_by(f64::total_cmp);
            let secs = times[times.len() / 2];
            Ok(MatmulReport {
                cpu: cpu.clone(),
                simd,
                threads,
                m: s.m,
                k: s.k,
                n: s.n,
                ms: secs * 1e3,
                gflop_per_s: 2.0 * (s.m * s.k * s.n) as f64 / secs / 1e9,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_bad_ones_name_the_input() {
        assert_eq!("1024x256x688".parse::<Shape>().unwrap(), Shape { m: 1024, k: 256, n: 688 });
        for bad in ["1024x256", "1024xax688", "0x1x1"] {
            let e = bad.parse::<Shape>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
