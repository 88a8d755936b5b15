//! Device fast paths for the model layers, chosen by backend type: on burn-cuda,
//! [`super::layers::attention`] runs weft's flash-attention kernel
//! (`weft_engine::device::attention`, head dims 64 and 128) instead of burn's materialized
//! softmax; any other backend, head dim or failure keeps burn's path. The model code stays generic
//! over `B`: the CUDA backend is recognised through `Any`, without `unsafe`.
//!
//! f32 activations are rounded to bf16 for the kernel (it accumulates in f32) and the result is
//! converted back, so outputs move by bf16 rounding (issue 6 allows bf16 tolerance on the GPU).
//!
//! When: from [`MIN_FLASH_SCORES`] attention scores per head (sequences of about 1000 tokens) up.
//! Below that burn's path is as fast: each kernel call waits for burn's queue and casts its inputs,
//! and on the quickstart (272 tokens) 240 calls made its sampling 0.58 s against burn's 0.49 s,
//! while at 1000 tokens the kernel is 12x burn's attention (docs/BENCHMARKS.md).
//! `WEFT_FLASH_ATTENTION=0` turns the path off, `=1` takes it for every size; a kernel that cannot
//! be built (no NVRTC, too little shared memory) turns it off for the process with one warning.
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Query × key positions from which the flash kernel is used (see the module doc).
pub const MIN_FLASH_SCORES: usize = 1000 * 1000;

/// `softmax(q·kᵀ·scale)·v` through the device's fast kernel, or None for burn's path.
pub fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    scale: f32,
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "cuda")]
    {
        cuda::attention(q, k, v, scale)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (q, k, v, scale);
        None
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, FloatDType, Tensor};
    use std::any::Any;
    use std::sync::atomic::{AtomicBool, Ordering};
    use weft_engine::device::attention::CudaAttention;
    use weft_engine::patcher::cuda::CudaBackend;

    /// Set once the kernel is unavailable (or turned off) for this process.
    static OFF: AtomicBool = AtomicBool::new(false);

    fn as_cuda<B: Backend>(t: &Tensor<B, 4>) -> Option<&Tensor<CudaBackend, 4>> {
        (t as &dyn Any).downcast_ref::<Tensor<CudaBackend, 4>>()
    }

    pub fn attention<B: Backend>(
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        scale: f32,
    ) -> Option<Tensor<B, 4>> {
        if OFF.load(Ordering::Relaxed) {
            return None;
        }
        let (q, k, v) = (as_cuda(q)?, as_cuda(k)?, as_cuda(v)?);
        if !matches!(q.dims()[3], 64 | 128) {
            return None;
        }
        match std::env::var("WEFT_FLASH_ATTENTION").as_deref() {
            Ok("0") => {
                OFF.store(true, Ordering::Relaxed);
                return None;
            }
            Ok("1") => {}
            _ if q.dims()[2] * k.dims()[2] < super::MIN_FLASH_SCORES => return None,
            _ => {}
        }
        let kernel = match CudaAttention::shared(q.device().index) {
            Ok(kernel) => kernel,
            Err(e) => {
                tracing::warn!("flash attention unavailable, using burn's attention: {e}");
                OFF.store(true, Ordering::Relaxed);
                return None;
            }
        };
        let dtype = q.dtype();
        let narrow = |t: &Tensor<CudaBackend, 4>| match dtype {
            DType::F32 => t.clone().cast(FloatDType::BF16),
            _ => t.clone(),
        };
        let out = match kernel.attention(narrow(q), narrow(k), narrow(v), scale) {
            Ok(out) => out,
            Err(e) => {
                tracing::debug!("flash attention not taken ({e}); using burn's attention");
                return None;
            }
        };
        let out = match dtype {
            DType::F32 => out.cast(FloatDType::F32),
            _ => out,
        };
        let out: Box<dyn Any> = Box::new(out);
        out.downcast::<Tensor<B, 4>>().ok().map(|t| *t)
    }
}
