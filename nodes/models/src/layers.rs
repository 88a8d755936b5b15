//! Layers shared by the models: a linear layer in PyTorch's weight layout (optionally followed by
//! GELU), conv, group/layer/RMS norms with f32 statistics, scaled dot-product attention and the
//! sinusoidal timestep embedding.
//!
//! Weights keep the layout of the checkpoints ([out, in] for linear layers, as PyTorch and GGUF
//! store them), so loading is a reshape and never a transpose.
use super::low_rank::LowRank;
use super::quant::Matrix;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};

/// `y = x·Wᵀ + b` with `W` stored [d_out, d_in] (PyTorch's layout; burn's own `Linear` is
/// [d_in, d_out]). `W` may be held in another float type than `x` (the BF16 weights of a CUDA
/// load), or as ggml blocks dequantized just before each product ([`Matrix::Quantized`]); `y`
/// has `x`'s type. LoRAs that are not merged into `W` (those of a quantized-resident matrix) are
/// added as side products ([`LowRank`]).
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    weight: Matrix<B>,
    bias: Option<Tensor<B, 1>>,
    side: Vec<LowRank<B>>,
}

impl<B: Backend> Linear<B> {
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self::from_matrix(Matrix::Dense(weight), bias)
    }

    /// A layer over a dense or quantized-resident matrix.
    pub fn from_matrix(weight: Matrix<B>, bias: Option<Tensor<B, 1>>) -> Self {
        Linear {
            weight,
            bias,
            side: Vec::new(),
        }
    }

    /// The layer with `side` low-rank updates added to its output (unmerged LoRAs).
    pub fn with_side(mut self, side: Vec<LowRank<B>>) -> Self {
        self.side = side;
        self
    }

    /// How many low-rank updates the layer adds as side products.
    pub fn side_updates(&self) -> usize {
        self.side.len()
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn d_out(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The weight's float type (BF16 for the matrices of a CUDA load, else F32; a quantized
    /// matrix's dequantization dtype).
    pub fn dtype(&self) -> DType {
        self.weight.dtype()
    }

    /// Whether the weight is held as ggml blocks.
    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Matrix::Quantized(_))
    }

    /// Splits the output rows at `at`: two layers computing outputs `..at` and `at..`. Row ranges
    /// of an [out, in] matrix are contiguous (whole blocks per row when quantized), so neither
    /// copies.
    pub fn split_rows(self, at: usize) -> [Linear<B>; 2] {
        let d_out = self.d_out();
        let part = |start, len| {
            Linear::from_matrix(
                self.weight.narrow_rows(start, len),
                self.bias.clone().map(|b| b.narrow(0, start, len)),
            )
            .with_side(
                self.side
                    .iter()
                    .filter_map(|s| s.narrow_rows(start, len))
                    .collect(),
            )
        };
        [part(0, at), part(at, d_out - at)]
    }

    /// `y` (the product for `x`) with the side updates added.
    fn add_side(&self, x: &Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 2> {
        self.side.iter().fold(y, |y, s| s.add_to(x, y))
    }

    /// `x` as one [rows, d_in] matrix over every leading dimension, and the output's dims.
    fn rows<const D: usize>(&self, x: Tensor<B, D>) -> (Tensor<B, 2>, [usize; D]) {
        let mut dims = x.dims();
        let rows: usize = dims[..D - 1].iter().product();
        dims[D - 1] = self.d_out();
        (x.reshape([rows, self.d_in()]), dims)
    }

    /// Applies the layer to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let (x, dims) = self.rows(x);
        let y = product(&x, &self.weight.values(), self.bias.as_ref());
        self.add_side(&x, y).reshape(dims)
    }

    /// `gelu_tanh(self.forward(x))` (Flux's MLP up-projection). On burn-cuda a large product is
    /// one cuBLASLt call with the GELU in its epilogue ([`super::fast::linear_gelu`]), not a
    /// product and then a pass of the GELU kernel over its output; every other path is exactly
    /// the two calls.
    pub fn forward_gelu<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if !self.side.is_empty() {
            return gelu_tanh(self.forward(x));
        }
        let (x, dims) = self.rows(x);
        let weight = self.weight.values();
        let y = match super::fast::linear_gelu(&x, &weight, self.bias.as_ref()) {
            Some(y) => y,
            None => gelu_tanh(product(&x, &weight, self.bias.as_ref())),
        };
        y.reshape(dims)
    }
}

/// `x·Wᵀ + b` for a [rows, d_in] `x`: the device's fast path, or burn's matmul.
fn product<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Tensor<B, 2> {
    // One 2-D GEMM over every leading dimension; the transpose is a strided view.
    if let Some(y) = super::fast::linear(x, weight, bias) {
        return y;
    }
    // A weight kept in another float type (BF16 device copies) meets `x` in `x`'s type.
    let dtype = x.dtype();
    let mut y = x
        .clone()
        .matmul(to_dtype(weight.clone(), dtype).transpose());
    if let Some(bias) = bias {
        y = y + to_dtype(bias.clone().unsqueeze::<2>(), dtype);
    }
    y
}

/// A 2-D convolution with square kernel, symmetric padding, no dilation or groups.
#[derive(Debug, Clone)]
pub struct Conv2d<B: Backend> {
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    stride: usize,
    padding: usize,
}

impl<B: Backend> Conv2d<B> {
    pub fn new(weight: Tensor<B, 4>, bias: Tensor<B, 1>, stride: usize, padding: usize) -> Self {
        Conv2d {
            weight,
            bias,
            stride,
            padding,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        conv2d(x, self.weight.clone(), Some(self.bias.clone()), options)
    }
}

/// Runs `f` on `x` in f32 and casts the result back: statistics and softmax stay f32 when the
/// activations are f16/bf16 (f16 group norm overflows on large images). A no-op on f32.
pub(crate) fn in_f32<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return f(x);
    }
    let y = f(x.cast(FloatDType::F32));
    match dtype {
        DType::F16 => y.cast(FloatDType::F16),
        DType::BF16 => y.cast(FloatDType::BF16),
        DType::F64 => y.cast(FloatDType::F64),
        _ => y,
    }
}

/// `t` in `dtype` (a no-op when it already is).
pub fn to_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    match t.dtype() == dtype {
        true => t,
        false => t.cast(dtype),
    }
}

/// Group normalization over [B, C, H, W] with a per-channel affine.
#[derive(Debug, Clone)]
pub struct GroupNorm<B: Backend> {
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    groups: usize,
    eps: f64,
}

impl<B: Backend> GroupNorm<B> {
    pub fn new(gamma: Tensor<B, 1>, beta: Tensor<B, 1>, groups: usize, eps: f64) -> Self {
        GroupNorm {
            gamma,
            beta,
            groups,
            eps,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let (groups, eps) = (self.groups, self.eps);
        let normed = in_f32(x.reshape([b, groups, (c / groups) * h * w]), |g| {
            let (var, mean) = g.clone().var_mean_bias(2);
            (g - mean) / (var + eps).sqrt()
        })
        .reshape([b, c, h, w]);
        normed * self.gamma.clone().reshape([1, c, 1, 1]) + self.beta.clone().reshape([1, c, 1, 1])
    }
}

/// GELU, tanh approximation (PyTorch's `approximate="tanh"`, as Flux's MLPs use):
/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`: the fused kernel on burn-cuda, else burn's ops
/// (the engine's formula, which the GEMM's fallback and the benchmarks share).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if let Some(y) = super::fast::gelu_tanh(&x) {
        return y;
    }
    weft_cuda::activation::gelu_tanh(x)
}

/// Layer norm over the last dimension without affine parameters (Flux's `elementwise_affine=False`).
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    in_f32(x, |x| {
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        (x - mean) / (var + eps).sqrt()
    })
}

/// RMS norm over the last dimension, then `* scale` (BFL's `RMSNorm`: statistics in f32).
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    scale: &Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let normed = in_f32(x, |x| {
        let mean_square = x.clone().square().mean_dim(D - 1);
        x * (mean_square + eps).sqrt().recip()
    });
    let mut shape = [1; D];
    shape[D - 1] = scale.dims()[0];
    normed * to_dtype(scale.clone(), dtype).reshape(shape)
}

/// Scaled dot-product attention, no mask: `softmax(q·kᵀ / √d)·v` over [B, H, L, D] inputs.
///
/// burn's path materializes the [L, L] scores (fine for the CPU and tests); on burn-cuda, head dims
/// 64 and 128 go to weft's flash-attention kernel ([`super::fast`]).
pub fn attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    let scale = (q.dims()[3] as f64).sqrt().recip();
    if let Some(out) = super::fast::attention(&q, &k, &v, scale as f32) {
        return out;
    }
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let probs = in_f32(scores, |s| softmax(s, 3));
    probs.matmul(v)
}

/// The sinusoidal embedding of `t * time_factor` (BFL's `timestep_embedding`, diffusers'
/// `Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)`): `[cos(t·f), sin(t·f)]` with
/// `f_i = exp(-ln(10000)·i/half)`. Computed on the host in f32, in torch's order of operations,
/// so the angles (up to ~1000 rad) round as they do in the references.
pub fn timestep_embedding<B: Backend>(
    t: &[f32],
    dim: usize,
    time_factor: f32,
    device: &B::Device,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let ln_period = 10000f64.ln() as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-ln_period * i as f32 / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &ti in t {
        let scaled = ti * time_factor;
        out.extend(freqs.iter().map(|f| (scaled * f).cos()));
        out.extend(freqs.iter().map(|f| (scaled * f).sin()));
        out.extend(std::iter::repeat_n(0.0, dim - 2 * half));
    }
    Tensor::from_data(TensorData::new(out, [t.len(), dim]), device)
}
