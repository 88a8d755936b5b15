//! [`on_cuda`]: runs backend-generic work on burn-cuda with weft's CUDA weight device, so that a
//! caller (the `weft` command line) names no CUDA type and needs no `cfg` of its own: with the
//! `cuda` feature off, the same call is an error that says how to build with it.
use burn::tensor::backend::Backend;
use std::sync::Arc;
use weft_engine::patcher::{DeviceError, WeightDevice};

/// Work generic over the burn backend: given a device and the weight device that uploads to it.
pub trait OnBackend {
    /// What the work returns.
    type Output;
    /// Runs on backend `B`.
    fn run<B: Backend>(self, device: B::Device, weights: Arc<dyn WeightDevice<B>>) -> Self::Output;
}

/// Runs `work` on CUDA device `index` (burn-cuda without fusion; weights uploaded from the
/// registered mapping of the process's [`weft_engine::weights::MmapCache`]).
pub fn on_cuda<W: OnBackend>(index: usize, work: W) -> Result<W::Output, DeviceError> {
    #[cfg(feature = "cuda")]
    {
        use crate::backend::CudaBackend;
        use crate::weight_device::CudaWeightDevice;
        let weights = CudaWeightDevice::new(index, weft_engine::weights::MmapCache::global())?;
        let device = weights.device().clone();
        Ok(work.run::<CudaBackend>(device, Arc::new(weights)))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = work;
        Err(DeviceError::Backend(format!(
            "cuda:{index}: this weft was built without CUDA (cargo build --release -p weft --features cuda)"
        )))
    }
}
