//! [`CudaBackend`]: the burn backend every CUDA path here works on, named once.
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::cuda::CudaRuntime;

/// burn-cuda without fusion: its tensors are plain `CubeTensor`s whose device pointers the upload
/// path and the kernels can reach.
pub type CudaBackend = CubeBackend<CudaRuntime, f32, i32, u8>;
