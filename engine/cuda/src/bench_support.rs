//! What the `weft bench` micro-benchmarks share: the `cuda:N` argument, the bf16 tolerance rule,
//! and the device-side reductions their checks use.

/// Parses `cuda:N`.
pub fn cuda_index(device: &str) -> Option<usize> {
    device.strip_prefix("cuda:").and_then(|i| i.parse().ok())
}

/// Whether a bf16 result is within tolerance of its f32 reference: `max_abs_diff` at most 2⁻⁷ of
/// the reference's largest value `max_abs_ref` (two bf16 roundings of the largest magnitude) plus
/// a small absolute floor. NaN fails. The rule of `weft bench fused` and of the GEMM epilogue.
pub fn within_bf16_tolerance(max_abs_diff: f32, max_abs_ref: f32) -> bool {
    max_abs_diff <= max_abs_ref * (1.0 / 128.0) + 1e-3
}

#[cfg(feature = "cuda")]
pub use reductions::{max_abs, nan_count};

#[cfg(feature = "cuda")]
mod reductions {
    use crate::backend::CudaBackend;
    use burn::tensor::{DType, ElementConversion, Tensor};

    /// The largest |x| (for the benches' error checks).
    pub fn max_abs<const D: usize>(x: Tensor<CudaBackend, D>) -> f32 {
        x.cast(DType::F32).abs().max().into_scalar().elem::<f32>()
    }

    /// How many elements of `x` are NaN.
    pub fn nan_count<const D: usize>(x: &Tensor<CudaBackend, D>) -> i64 {
        x.clone().is_nan().int().sum().into_scalar().elem::<i64>()
    }
}
