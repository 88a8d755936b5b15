//! Device fast paths behind burn (issue 6): work that burn-cuda does too slowly is run by vendor
//! libraries (cuBLASLt through cudarc) or weft's own NVRTC-compiled kernels (flash attention,
//! dequantization, fused block kernels) directly on burn-cuda's buffers, with burn staying the tensor framework. The
//! host-side logic lives in plain modules unit-tested on the CPU; the CUDA code is behind the
//! `cuda` feature.
pub mod activation;
pub mod attention_plan;
pub mod dequant_plan;
pub mod fused_plan;
pub mod layout;

#[cfg(feature = "cuda")]
pub mod attention;
#[cfg(feature = "cuda")]
pub mod dequant;
#[cfg(feature = "cuda")]
pub mod fence;
#[cfg(feature = "cuda")]
pub mod fused;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
pub mod nvrtc;

pub mod bench;
pub mod bench_attention;
pub mod bench_dequant;
pub mod bench_fused;
