//! Flux's 3-axis rotary position embedding (BFL `EmbedND`): each token has ids (t, row, col); each
//! axis rotates its own slice of the head dimension, pairs (x₂ᵢ, x₂ᵢ₊₁) as complex numbers.
use crate::layers::in_f32;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The rotation angles of one sequence, as tables [L, head_dim] with each angle repeated for
/// both members of its pair: `cos` = (c₀, c₀, c₁, c₁ …), `sin` = (s₀, s₀, s₁, s₁ …).
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    /// The tables for `ids` (one (t, row, col) per token, text first then image, as the tokens
    /// are concatenated). `axes_dim` sums to the head dimension.
    ///
    /// Angles are computed in f64 and rounded once to f32, as BFL and diffusers do.
    pub fn new(ids: &[[f32; 3]], axes_dim: [usize; 3], theta: f64, device: &B::Device) -> Self {
        let head_dim: usize = axes_dim.iter().sum();
        let mut cos = Vec::with_capacity(ids.len() * head_dim);
        let mut sin = Vec::with_capacity(ids.len() * head_dim);
        // (axis, frequency) for each pair of the head dimension, in order.
        let omegas: Vec<(usize, f64)> = axes_dim
            .iter()
            .enumerate()
            .flat_map(|(axis, &dim)| {
                (0..dim / 2).map(move |i| (axis, 1.0 / theta.powf((2 * i) as f64 / dim as f64)))
            })
            .collect();
        for id in ids {
            for &(axis, omega) in &omegas {
                let angle = f64::from(id[axis]) * omega;
                cos.extend([angle.cos() as f32; 2]);
                sin.extend([angle.sin() as f32; 2]);
            }
        }
        let table =
            |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [ids.len(), head_dim]), device);
        Rope {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// Rotates q or k, [B, H, L, D]: pair (x₀, x₁) becomes (x₀·c − x₁·s, x₁·c + x₀·s).
    ///
    /// Written as `x·cos + rot(x)·sin` with rot(x) = (−x₁, x₀) so that the products are
    /// contiguous, broadcast element-wise ops (the same roundings as the pairwise form).
    /// Computed in f32 whatever `x`'s type, and rounded back once (BFL's `apply_rope`).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        in_f32(x, |x| self.rotate(x))
    }

    fn rotate(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, l, d] = x.dims();
        let pairs = x.clone().reshape([b, h, l, d / 2, 2]);
        let rotated = Tensor::cat(
            vec![pairs.clone().narrow(4, 1, 1).neg(), pairs.narrow(4, 0, 1)],
            4,
        )
        .reshape([b, h, l, d]);
        x * self.cos.clone().reshape([1, 1, l, d])
            + rotated * self.sin.clone().reshape([1, 1, l, d])
    }

    /// The cosine table [L, head_dim] (f32).
    pub fn cos(&self) -> &Tensor<B, 2> {
        &self.cos
    }

    /// The sine table [L, head_dim] (f32).
    pub fn sin(&self) -> &Tensor<B, 2> {
        &self.sin
    }

    /// Sequence length the tables cover.
    pub fn len(&self) -> usize {
        self.cos.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
