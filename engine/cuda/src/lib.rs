//! weft-cuda: every CUDA path under burn-cuda. Work that burn-cuda does too slowly is run by vendor
//! libraries (cuBLASLt through cudarc) or weft's own NVRTC-compiled kernels (flash attention,
//! dequantization, fused block kernels) directly on burn-cuda's buffers, with burn staying the
//! tensor framework; [`weight_device::CudaWeightDevice`] is the engine's `WeightDevice` for CUDA
//! (uploads from the registered mapping, dequantization on the device). The host-side logic lives
//! in plain modules unit-tested on the CPU; the CUDA code is behind the `cuda` feature.
//!
//! Architecture Invariant: the engine never depends on this crate; it implements the engine's
//! device traits. Nothing here knows a model architecture or a node.
pub mod activation;
pub mod attention_plan;
pub mod dequant_plan;
pub mod fence_plan;
pub mod fused_plan;
pub mod layout;
pub mod on_cuda;

#[cfg(feature = "cuda")]
pub mod attention;
#[cfg(feature = "cuda")]
pub mod backend;
#[cfg(feature = "cuda")]
pub mod dequant;
#[cfg(feature = "cuda")]
pub mod fence;
#[cfg(feature = "cuda")]
pub mod fused;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "nvrtc")]
pub mod nvrtc;
#[cfg(feature = "cuda")]
pub mod weight_device;

pub mod bench;
pub mod bench_attention;
pub mod bench_dequant;
pub mod bench_fused;
pub mod bench_support;
