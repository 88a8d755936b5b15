//! `Linear::forward_gelu`, Flux's MLP up-projection and GELU as one call (one cuBLASLt product
//! with the GELU in its epilogue on burn-cuda): everywhere else it is exactly
//! `gelu_tanh(forward(x))`, bit for bit, so the CPU models compute what they did before.
use crate::memory::values;
use burn::tensor::{DType, Tensor, TensorData};
use weft_models::layers::{Linear, gelu_tanh};
use weft_tests::B;

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn data<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
}

/// `gelu_tanh(x·Wᵀ + b)` in f64, `x` [rows, d_in], `W` [d_out, d_in].
fn reference(x: &[f32], w: &[f32], b: Option<&[f32]>, d_in: usize, d_out: usize) -> Vec<f64> {
    (0..x.len() / d_in * d_out)
        .map(|i| {
            let (r, o) = (i / d_out, i % d_out);
            let y: f64 = (0..d_in)
                .map(|k| f64::from(x[r * d_in + k]) * f64::from(w[o * d_in + k]))
                .sum::<f64>()
                + b.map_or(0.0, |b| f64::from(b[o]));
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (y + 0.044715 * y.powi(3));
            0.5 * y * (1.0 + inner.tanh())
        })
        .collect()
}

#[test]
fn forward_gelu_is_gelu_of_forward_bit_for_bit() {
    let (d_in, d_out) = (24, 40);
    // Scaled so the products reach well into GELU's negative and saturating ranges.
    let w: Vec<f32> = values(41, d_out * d_in).iter().map(|v| v * 0.8).collect();
    let b = values(42, d_out);
    let x = values(43, 2 * 5 * d_in);
    for bias in [Some(b.clone()), None] {
        let layer = Linear::new(
            tensor(w.clone(), [d_out, d_in]),
            bias.clone().map(|b| tensor(b, [d_out])),
        );
        let input = tensor(x.clone(), [2, 5, d_in]);
        let fused = layer.forward_gelu(input.clone());
        assert_eq!((fused.dims(), fused.dtype()), ([2, 5, d_out], DType::F32));
        let got = data(fused);
        assert_eq!(
            got,
            data(gelu_tanh(layer.forward(input))),
            "bias: {}",
            bias.is_some()
        );

        // And it is the GELU of the product, not the bare product.
        let want = reference(&x, &w, bias.as_deref(), d_in, d_out);
        assert!(
            want.iter().any(|&v| v < -0.1),
            "no negative products to tell GELU apart"
        );
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "element {i}: got {g}, want {w}"
            );
        }
    }
}

#[test]
fn forward_gelu_matches_for_bf16_weights_and_activations() {
    let (d_in, d_out) = (32, 16);
    let w = tensor(values(51, d_out * d_in), [d_out, d_in]).cast(DType::BF16);
    let b = tensor(values(52, d_out), [d_out]);
    let layer = Linear::new(w, Some(b));
    // f32 activations through a BF16 weight (a CUDA load's copies), and bf16 activations (Flux's
    // activation dtype with BF16 weights).
    for dtype in [DType::F32, DType::BF16] {
        let x = tensor(values(53, 3 * d_in), [3, d_in]).cast(dtype);
        let fused = layer.forward_gelu(x.clone());
        assert_eq!(fused.dtype(), dtype);
        assert_eq!(
            data(fused),
            data(gelu_tanh(layer.forward(x))),
            "{dtype:?} activations"
        );
    }
}
