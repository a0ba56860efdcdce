//! What a memory layer read in one forward (its trace: the slots, the distinct rows and the leaf
//! that receives their gradient) and the access counts TF-IDF ranks slots by.

use candle_core::Var;
use std::sync::Arc;

/// What one memory layer read in one forward.
pub struct MemoryTrace {
    /// Index of the block.
    pub layer: usize,
    pub n_tokens: usize,
    pub heads: usize,
    pub knn: usize,
    /// Selected slots (n_tokens, heads, knn), token-major.
    pub slots: Arc<Vec<u32>>,
    /// The distinct selected slots, ascending: row i of `values` is slot `rows[i]` of the table.
    pub rows: Arc<Vec<u32>>,
    /// For each entry of `slots`, its position in `rows`.
    pub inverse: Arc<Vec<u32>>,
    /// A zero (U, v_dim) leaf standing for the rows (the forward reads them in place from the
    /// table): its gradient is the table's sparse gradient, row i for slot `rows[i]`.
    pub values: Var,
    /// `ForwardCtx::token_mask` of the forward (None: every position is a real token).
    pub token_mask: Option<Vec<bool>>,
}

impl MemoryTrace {
    fn is_real(&self, t: usize) -> bool {
        self.token_mask.as_ref().is_none_or(|m| m[t])
    }

    /// Accesses (token × head × top-k) of each of `rows` by real tokens; padding is not counted.
    pub fn row_access_counts(&self) -> Vec<u32> {
        let mut c = vec![0u32; self.rows.len()];
        let per_tok = self.heads * self.knn;
        for t in (0..self.n_tokens).filter(|&t| self.is_real(t)) {
            for &u in &self.inverse[t * per_tok..(t + 1) * per_tok] {
                c[u as usize] += 1;
            }
        }
        c
    }

    /// Slot → number of accesses by real tokens.
    pub fn access_counts(&self) -> AccessCounts {
        let c = self.row_access_counts();
        let (slots, counts) = self.rows.iter().zip(&c).filter(|(_, &n)| n > 0).map(|(&s, &n)| (s, n)).unzip();
        AccessCounts { slots, counts }
    }
}

/// Accesses per slot (over tokens × heads × top-k, padding excluded), sparse and sorted by slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessCounts {
    /// Accessed slots, ascending.
    pub slots: Vec<u32>,
    /// Number of accesses of each slot (> 0).
    pub counts: Vec<u32>,
}

impl AccessCounts {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Σ counts
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&c| c as u64).sum()
    }

    /// Accesses of `slot` (0 if never accessed).
    pub fn get(&self, slot: u32) -> u32 {
        self.slots.binary_search(&slot).map(|i| self.counts[i]).unwrap_or(0)
    }

    /// Add another batch's (or layer's) counts.
    pub fn merge(&mut self, other: &AccessCounts) {
        let (a, b) = (std::mem::take(self), other);
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let take_a = j == b.len() || (i < a.len() && a.slots[i] <= b.slots[j]);
            let take_b = i == a.len() || (j < b.len() && b.slots[j] <= a.slots[i]);
            let slot = if take_a { a.slots[i] } else { b.slots[j] };
            let mut n = 0;
            if take_a {
                n += a.counts[i];
                i += 1;
            }
            if take_b {
                n += b.counts[j];
                j += 1;
            }
            self.slots.push(slot);
            self.counts.push(n);
        }
    }
}

/// Access counts of one forward over all its memory layers (a slot read by two layers counts
/// twice: it is the same row of the shared table).
pub fn access_counts(traces: &[MemoryTrace]) -> AccessCounts {
    let mut out = AccessCounts::default();
    for t in traces {
        out.merge(&t.access_counts());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::slots::unique_inverse;
    use candle_core::{DType, Device};

    #[test]
    fn access_counts_merge_and_mask() {
        let a = AccessCounts { slots: vec![1, 4, 7], counts: vec![2, 1, 3] };
        let b = AccessCounts { slots: vec![0, 4, 9], counts: vec![1, 5, 1] };
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(m, AccessCounts { slots: vec![0, 1, 4, 7, 9], counts: vec![1, 2, 6, 3, 1] });
        assert_eq!((m.total(), m.get(4), m.get(5)), (13, 6, 0));
        // Two tokens, one head, knn 2; the second token is padding.
        let slots = Arc::new(vec![8u32, 3, 3, 6]);
        let (rows, inv) = unique_inverse(&slots);
        let trace = MemoryTrace {
            layer: 0,
            n_tokens: 2,
            heads: 1,
            knn: 2,
            slots,
            rows: Arc::new(rows),
            inverse: Arc::new(inv),
            values: Var::zeros((3, 1), DType::F32, &Device::Cpu).unwrap(),
            token_mask: Some(vec![true, false]),
        };
        assert_eq!(trace.access_counts(), AccessCounts { slots: vec![3, 8], counts: vec![1, 1] });
        assert_eq!(trace.row_access_counts(), vec![1, 0, 1]);
    }
}
