//! The activations a fast path may apply to its output, and their burn formulation: what runs
//! where a device kernel is not taken (the GEMM's fallback, the model layers off the GPU) and the
//! benchmarks' reference. One formula, so every path computes the same function.
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The activation applied to a product's output, after its bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    Identity,
    /// GELU, tanh approximation: what cuBLASLt's GELU epilogues compute, and Flux's MLPs use.
    GeluTanh,
}

impl Activation {
    /// The activation in burn's ops.
    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Identity => x,
            Activation::GeluTanh => gelu_tanh(x),
        }
    }
}

/// GELU, tanh approximation (PyTorch's `approximate="tanh"`):
/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, with x³ as products (burn's `powf` is slow).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * SQRT_2_OVER_PI;
    x * (inner.tanh() + 1.0) * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    fn gelu_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
    }

    #[test]
    fn gelu_tanh_matches_the_formula() {
        let xs = [-6.0f32, -2.5, -1.0, -0.1, 0.0, 0.3, 1.0, 2.0, 7.5];
        let x = Tensor::<Flex, 1>::from_data(
            TensorData::new(xs.to_vec(), [xs.len()]),
            &Default::default(),
        );
        let got = Activation::GeluTanh
            .apply(x)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (x, y) in xs.iter().zip(got) {
            let want = gelu_f64(*x as f64);
            assert!(
                (y as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                "gelu({x}) = {y}, want {want}"
            );
        }
    }

    #[test]
    fn identity_is_a_no_op() {
        let data = TensorData::new(vec![-1.5f32, 0.0, 2.0], [3]);
        let x = Tensor::<Flex, 1>::from_data(data.clone(), &Default::default());
        Activation::Identity
            .apply(x)
            .into_data()
            .assert_eq(&data, true);
    }
}
