//! The host side of the stream fence (`fence.rs`): the CUDA C of weft's half, compiled by NVRTC at
//! run time, and in CI without a GPU (`nvrtc.rs`'s tests).

/// The kernels' CUDA C source.
pub const KERNEL_SOURCE: &str = include_str!("kernels/fence.cu");

/// Its entry points.
pub const KERNELS: [&str; 2] = ["weft_fence_wait", "weft_fence_signal"];

/// NVRTC options besides the architecture.
pub const NVRTC_OPTIONS: &[&str] = &[];
