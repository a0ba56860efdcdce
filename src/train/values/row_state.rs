//! The optimiser state of a lazy AdamW's touched rows, as it moves between the host pages, the
//! device and `optimizer.safetensors`.

/// The state of a lazy AdamW's touched rows, rows ascending: what moves between the host pages,
/// the device and `optimizer.safetensors`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowState {
    pub rows: Vec<u32>,
    /// Steps taken by each row.
    pub steps: Vec<u32>,
    /// (rows, dim) first moments.
    pub m: Vec<f32>,
    /// (rows, dim) second moments, or one per row for the row-wise variant.
    pub v: Vec<f32>,
}
