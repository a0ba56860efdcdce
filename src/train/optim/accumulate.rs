//! Gradient accumulation over micro-batches.

use super::tensors::{private_copy, to_f32};
use super::CHUNK;
use crate::ops::access::{with_f32, with_f32_mut};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use std::collections::HashMap;

/// Sums the gradients of several micro-batches in place and hands back their mean.
/// Each gradient is copied once into a private contiguous f32 buffer (the first time its name is
/// seen); later micro-batches are added into it in parallel. A parameter missing from a
/// micro-batch counts as a zero gradient there.
#[derive(Default)]
pub struct GradAccumulator {
    sums: HashMap<String, Tensor>,
    micro_batches: usize,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one micro-batch's gradients.
    pub fn add(&mut self, grads: &HashMap<String, Tensor>) -> Result<()> {
        for (name, g) in grads {
            match self.sums.get_mut(name) {
                Some(sum) => {
                    if sum.dims() != g.dims() {
                        bail!("gradient of {name}: shape {:?} differs from earlier micro-batches' {:?}", g.dims(), sum.dims());
                    }
                    let g = to_f32(g)?;
                    if !sum.device().is_cpu() {
                        *sum = (&*sum + &g)?;
                        continue;
                    }
                    with_f32_mut(sum, |s| {
                        with_f32(&g, |g| {
                            s.par_chunks_mut(CHUNK)
                                .zip(g.par_chunks(CHUNK))
                                .for_each(|(s, g)| s.iter_mut().zip(g).for_each(|(a, b)| *a += b))
                        })
                    })??;
                }
                None => {
                    self.sums.insert(name.clone(), private_copy(g).with_context(|| format!("gradient of {name}"))?);
                }
            }
        }
        self.micro_batches += 1;
        Ok(())
    }

    /// Micro-batches added since the last `take_mean`.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The mean gradient (sum / number of micro-batches); the accumulator is empty afterwards.
    pub fn take_mean(&mut self) -> Result<HashMap<String, Tensor>> {
        let n = std::mem::take(&mut self.micro_batches);
        let mut sums = std::mem::take(&mut self.sums);
        if n > 1 {
            let inv = 1.0 / n as f32;
            for g in sums.values_mut() {
                if !g.device().is_cpu() {
                    *g = g.affine(inv as f64, 0.0)?;
                    continue;
                }
                with_f32_mut(g, |s| s.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= inv)))?;
            }
        }
        Ok(sums)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::ops::access::to_vec_f32;
    use candle_core::Device;

    #[test]
    fn accumulation_of_two_micro_batches_is_the_mean() {
        let mut acc = GradAccumulator::new();
        let g1 = grads(&[("a", vec![1.0, 2.0, 3.0, 4.0], vec![2, 2]), ("b", vec![4.0], vec![1])]);
        let t = Tensor::new(&[[10.0f32, 20.0], [30.0, 40.0]], &Device::Cpu).unwrap();
        let mut g2 = HashMap::new();
        let tt = t.t().unwrap();
        assert!(!tt.is_contiguous());
        g2.insert("a".to_string(), tt); // [[10, 30], [20, 40]], non-contiguous
        acc.add(&g1).unwrap();
        acc.add(&g2).unwrap();
        assert_eq!(acc.micro_batches(), 2);
        let mean = acc.take_mean().unwrap();
        close(&to_vec_f32(&mean["a"]).unwrap(), &[5.5, 16.0, 11.5, 22.0], 1e-7);
        close(&to_vec_f32(&mean["b"]).unwrap(), &[2.0], 1e-7); // missing in batch 2: counts as zero
        assert_eq!(to_vec_f32(&g1["a"]).unwrap(), vec![1.0, 2.0, 3.0, 4.0]); // inputs untouched
        assert_eq!(to_vec_f32(&t).unwrap(), vec![10.0, 20.0, 30.0, 40.0]);
        assert_eq!(acc.micro_batches(), 0);
    }
}
