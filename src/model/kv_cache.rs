//! Key/value cache for incremental decoding: per layer, keys and values of all past positions,
//! (B, S, Hkv, Dh), already rotated.

use candle_core::{Result, Tensor};

#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self { layers: vec![None; n_layers] }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dim(1).unwrap_or(0)).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append this step's k/v for `layer`; returns the full k/v to attend over.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.layers[layer] {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 1)?, Tensor::cat(&[pv, v], 1)?),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Repeat the cache along the batch dim (prefill a prompt once, then sample k continuations).
    pub fn repeat_batch(&self, n: usize) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                None => Ok(None),
                Some((k, v)) => Ok(Some((k.repeat((n, 1, 1, 1))?, v.repeat((n, 1, 1, 1))?))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }
}
