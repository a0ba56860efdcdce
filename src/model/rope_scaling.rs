//! RoPE frequency scaling of Llama 3.1 and later (`rope_type = "llama3"` in `config.json`): the
//! inverse frequencies of plain RoPE are kept for short wavelengths, divided by `factor` for long
//! ones, and blended in between, so a model trained on `original_max_position_embeddings`
//! positions reads longer contexts.
//!
//! With wavelength λ = 2π / f of each inverse frequency f, L = original_max_position_embeddings:
//!   λ < L / high_freq_factor:  f
//!   λ > L / low_freq_factor:   f / factor
//!   otherwise, s = (L / λ − low_freq_factor) / (high_freq_factor − low_freq_factor):
//!                              (1 − s) · f / factor + s · f
//! Correctness reference: transformers `_compute_llama3_parameters` (modeling_rope_utils.py),
//! checked end to end by the `hf-tiny-llama3` fixture in tests/hf_exactness.rs.

use serde::{Deserialize, Serialize};

/// The scaling kinds memtune computes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum RopeType {
    #[serde(rename = "llama3")]
    Llama3,
}

/// `[model.rope_scaling]`, or `rope_scaling` / `rope_parameters` of a Hugging Face config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    pub rope_type: RopeType,
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

impl RopeScaling {
    /// Read the scaling fields of a Hugging Face rope dict (`key` names it in errors); other keys
    /// there (`rope_theta`, `type`) are not this struct's.
    pub fn from_hf(key: &str, r: &serde_json::Value) -> anyhow::Result<Self> {
        let num = |k: &str| r.get(k).and_then(|v| v.as_f64()).ok_or_else(|| anyhow::anyhow!("{key}.{k} is missing or not a number"));
        let s = Self {
            rope_type: RopeType::Llama3,
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        };
        s.validate().map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.factor > 0.0 && self.low_freq_factor > 0.0 && self.high_freq_factor > self.low_freq_factor) {
            return Err(format!(
                "needs factor > 0 and high_freq_factor > low_freq_factor > 0 (got factor {}, low_freq_factor {}, high_freq_factor {})",
                self.factor, self.low_freq_factor, self.high_freq_factor
            ));
        }
        if self.original_max_position_embeddings == 0 {
            return Err("original_max_position_embeddings must be > 0".into());
        }
        Ok(())
    }

    /// Scale plain RoPE's inverse frequencies in place.
    pub fn apply(&self, inv_freq: &mut [f64]) {
        let l = self.original_max_position_embeddings as f64;
        let (low_wavelen, high_wavelen) = (l / self.low_freq_factor, l / self.high_freq_factor);
        for f in inv_freq {
            let wavelen = 2.0 * std::f64::consts::PI / *f;
            *f = if wavelen < high_wavelen {
                *f
            } else if wavelen > low_wavelen {
                *f / self.factor
            } else {
                let s = (l / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor);
                (1.0 - s) * *f / self.factor + s * *f
            };
        }
    }
}

/// Plain RoPE's inverse frequencies θ^(−2i/d), i < d/2, with `scaling` applied.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f64> {
    let mut inv: Vec<f64> = (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect();
    if let Some(s) = scaling {
        s.apply(&mut inv);
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_bands() {
        let s = RopeScaling {
            rope_type: RopeType::Llama3,
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 32,
        };
        let plain = inv_freq(16, 20_000.0, None);
        let scaled = inv_freq(16, 20_000.0, Some(&s));
        // wavelengths 6.3 (< 8: kept), 21 (between 8 and 32: blended), 71 and up (> 32: / 8)
        assert_eq!(scaled[0], plain[0]);
        assert!(scaled[1] < plain[1] && scaled[1] > plain[1] / 8.0);
        for i in 2..8 {
            assert!((scaled[i] - plain[i] / 8.0).abs() < 1e-15);
        }
        let bad = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0});
        let e = RopeScaling::from_hf("rope_scaling", &bad).unwrap_err().to_string();
        assert!(e.contains("rope_scaling.high_freq_factor"), "{e}");
    }
}
