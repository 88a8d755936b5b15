//! Device fast paths behind burn (issue 6): work that burn-cuda does too slowly is run by vendor
//! libraries (cuBLASLt through cudarc) directly on burn-cuda's buffers, with burn staying the
//! tensor framework. The host-side logic lives in plain modules unit-tested on the CPU; the CUDA
//! code is behind the `cuda` feature.
pub mod layout;

#[cfg(feature = "cuda")]
pub mod gemm;

pub mod bench;
