//! Slot bookkeeping shared by the memory ops and their CUDA kernels: the handle through which
//! `product_key_topk` hands its selected slots to the layer, the distinct rows a batch touched,
//! and the reverse index that lets a backward sum each row's contributions without atomics.

use candle_core::Result;
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// The slot indices (N, H, knn) chosen by one `product_key_topk` call, set by its forward.
#[derive(Clone, Debug, Default)]
pub struct SlotHandle(Arc<OnceLock<Arc<Vec<u32>>>>);

impl SlotHandle {
    /// The selected slots, token-major (N, H, knn); `None` before the forward ran.
    pub fn get(&self) -> Option<Arc<Vec<u32>>> {
        self.0.get().cloned()
    }

    /// Record the slots (once; the CUDA path sets them after its selection kernel).
    pub(crate) fn set(&self, slots: Arc<Vec<u32>>) -> Result<()> {
        if self.0.set(slots).is_err() {
            candle_core::bail!("product_key_topk: an op instance runs its forward once");
        }
        Ok(())
    }
}

/// (distinct values ascending, position of each input value among them).
pub fn unique_inverse(slots: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut rows = slots.to_vec();
    rows.par_sort_unstable();
    rows.dedup();
    let inverse = slots.par_iter().map(|s| rows.binary_search(s).expect("value is among the rows") as u32).collect();
    (rows, inverse)
}

/// Reverse index of `inv` over `n_rows` rows, by a stable counting sort: the entries of row u are
/// order[start[u]..start[u + 1]], in (t, m) order.
pub fn reverse_index(inv: &[u32], n_rows: usize) -> (Vec<u32>, Vec<u32>) {
    let mut start = vec![0u32; n_rows + 1];
    for &u in inv {
        start[u as usize + 1] += 1;
    }
    for u in 0..n_rows {
        start[u + 1] += start[u];
    }
    let mut fill = start.clone();
    let mut order = vec![0u32; inv.len()];
    for (e, &u) in inv.iter().enumerate() {
        order[fill[u as usize] as usize] = e as u32;
        fill[u as usize] += 1;
    }
    (start, order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_inverse_roundtrip() {
        let s = vec![5u32, 3, 5, 9, 0, 3];
        let (rows, inv) = unique_inverse(&s);
        assert_eq!(rows, vec![0, 3, 5, 9]);
        assert_eq!(inv.iter().map(|&i| rows[i as usize]).collect::<Vec<_>>(), s);
    }

    #[test]
    fn reverse_index_lists_each_rows_entries_in_order() {
        let (start, order) = reverse_index(&[2, 0, 2, 1, 0], 3);
        assert_eq!(start, vec![0, 2, 3, 5]);
        assert_eq!(order, vec![1, 4, 3, 0, 2]);
    }
}
