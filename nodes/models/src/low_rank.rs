//! LoRA as a side product: [`LowRank`] adds `scale · (x·downᵀ)·upᵀ` to some output rows of a
//! linear layer, so a LoRA on a quantized-resident matrix costs its two small factors and two thin
//! products per call, never a dequantized or merged copy of the matrix. Merging the same update
//! into the dequantized weight gives the same output up to the rounding of the two orders of
//! summation.
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use std::ops::Range;
use weft_engine::patcher::LowRankUpdate;

use super::layers::to_dtype;

/// One low-rank update of a layer's output rows `rows`.
#[derive(Debug, Clone)]
pub struct LowRank<B: Backend> {
    /// `[rank, d_in]`.
    down: Tensor<B, 2>,
    /// `[rows.len(), rank]`.
    up: Tensor<B, 2>,
    scale: f32,
    rows: Range<usize>,
}

impl<B: Backend> LowRank<B> {
    /// `update`'s factors on `device`, in `dtype` (the layer's compute dtype).
    pub fn new(update: &LowRankUpdate, dtype: DType, device: &B::Device) -> Self {
        let (rank, cols, len) = (update.rank, update.cols, update.rows.len());
        let tensor = |values: &[f32], shape: [usize; 2]| {
            to_dtype(
                Tensor::<B, 2>::from_data(TensorData::new(values.to_vec(), shape), device),
                dtype,
            )
        };
        LowRank {
            down: tensor(&update.down, [rank, cols]),
            up: tensor(&update.up, [len, rank]),
            scale: update.scale,
            rows: update.rows.clone(),
        }
    }

    /// The part of the update that falls in output rows `start..start + len`, renumbered from
    /// `start` (for a layer split by rows); `None` when none does.
    pub fn narrow_rows(&self, start: usize, len: usize) -> Option<Self> {
        let from = self.rows.start.max(start);
        let to = self.rows.end.min(start + len);
        (from < to).then(|| LowRank {
            down: self.down.clone(),
            up: self.up.clone().narrow(0, from - self.rows.start, to - from),
            scale: self.scale,
            rows: from - start..to - start,
        })
    }

    /// `y` (`[n, d_out]`, the layer's output for `x` `[n, d_in]`) plus the update.
    pub fn add_to(&self, x: &Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 2> {
        let dtype = y.dtype();
        let [n, d_out] = y.dims();
        let down = to_dtype(self.down.clone(), x.dtype());
        let up = to_dtype(self.up.clone(), x.dtype());
        let delta = to_dtype(
            x.clone().matmul(down.transpose()).matmul(up.transpose()) * self.scale,
            dtype,
        );
        if self.rows == (0..d_out) {
            y + delta
        } else {
            let rows = [0..n, self.rows.clone()];
            let part = y.clone().slice(rows.clone()) + delta;
            y.slice_assign(rows, part)
        }
    }
}
