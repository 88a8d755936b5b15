//! Flux's 3-axis rotary position embedding (BFL `EmbedND`): each token has ids (t, row, col); each
//! axis rotates its own slice of the head dimension, pairs (x₂ᵢ, x₂ᵢ₊₁) as complex numbers.
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The rotation angles of one sequence, as cos/sin tables [L, head_dim/2].
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
        let half: usize = axes_dim.iter().sum::<usize>() / 2;
        let mut cos = Vec::with_capacity(ids.len() * half);
        let mut sin = Vec::with_capacity(ids.len() * half);
        for id in ids {
            for (axis, &dim) in axes_dim.iter().enumerate() {
                let pos = f64::from(id[axis]);
                for i in 0..dim / 2 {
                    let omega = 1.0 / theta.powf((2 * i) as f64 / dim as f64);
                    let angle = pos * omega;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [ids.len(), half]), device);
        Rope { cos: table(cos), sin: table(sin) }
    }

    /// Rotates q or k, [B, H, L, D].
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, l, d] = x.dims();
        let pairs = x.reshape([b, h, l, d / 2, 2]);
        let x0 = pairs.clone().narrow(4, 0, 1);
        let x1 = pairs.narrow(4, 1, 1);
        let cos = self.cos.clone().reshape([1, 1, l, d / 2, 1]);
        let sin = self.sin.clone().reshape([1, 1, l, d / 2, 1]);
        let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
        let r1 = x1 * cos + x0 * sin;
        Tensor::cat(vec![r0, r1], 4).reshape([b, h, l, d])
    }

    /// Sequence length the tables cover.
    pub fn len(&self) -> usize {
        self.cos.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
