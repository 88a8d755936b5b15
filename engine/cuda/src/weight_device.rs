//! The CUDA upload path (feature `cuda`): weights go from the file mapping into burn-cuda buffers
//! with `cuMemcpyHtoD`, the mapping page-locked once, read-only (`cuMemHostRegister` with
//! `CU_MEMHOSTREGISTER_READ_ONLY`), so copies run at PCIe speed with no staging copy in RAM.
//!
//! Measured on the lent H100 (design brief): registering takes ~20 ms per GiB, and a copy from a
//! registered mapping runs at ~55 GB/s against 9-10 GB/s unregistered and 0.5 GB/s through
//! burn's `from_data`. The registration lives with the mapping in the [`MmapCache`] (released
//! just before the mapping is unmapped), so a reload pays only the copy.
//!
//! Quantized weights (and stored floats of another width) go up as their stored bytes and are
//! dequantized on the device into the compute dtype by `crate::dequant`'s kernels (bit
//! for bit the host dequantizer's values rounded): a Q8_0 file moves 1.06 bytes per weight over
//! PCIe instead of 2 (bf16) or 4 (f32), and the CPU does no per-weight work. Dequantization is
//! done once, at load, for every weight the load keeps; weights past the memory budget are
//! streamed the same way at forward time (`ModelPatcher::weight`). BF16 is the default dtype
//! (the matrix products' input type); `WEFT_WEIGHT_DTYPE=f32|f16|bf16` overrides it.
//!
//! Direction is the safety argument: `cuMemcpyHtoD` only reads host memory, the registration is
//! read-only for the device, and the destination is a buffer burn-cuda just allocated.
use crate::dequant::CudaDequant;
use crate::dequant_plan;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use burn_cubecl::cubecl::Runtime;
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use cudarc::driver::{CudaContext, CudaStream, sys};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use weft_engine::patcher::{
    DeviceCapacity, DeviceError, DeviceUsage, HostData, WeightDevice, element_count,
};
use weft_engine::weights::{MmapCache, WeightSource};
use weft_formats::gguf::GgmlType;

/// Bytes of stored blocks a load may hold on the device while their dequantization is queued;
/// past this the load waits for the kernels, so its transient memory stays bounded.
const MAX_QUEUED_BLOCK_BYTES: u64 = 1 << 30;

use crate::backend::CudaBackend;

fn driver(what: &str, result: sys::CUresult) -> Result<(), DeviceError> {
    result
        .result()
        .map_err(|e| DeviceError::Backend(format!("{what}: {e:?}")))
}

/// A mapping page-locked for the device, read-only; unregistered on drop.
struct HostRegistration {
    context: Arc<CudaContext>,
    ptr: usize,
    /// Registered by us (and so to be unregistered by us).
    owned: bool,
}

impl HostRegistration {
    fn new(context: &Arc<CudaContext>, bytes: &[u8]) -> Self {
        let mut registration = HostRegistration {
            context: context.clone(),
            ptr: bytes.as_ptr() as usize,
            owned: false,
        };
        if bytes.is_empty() || context.bind_to_thread().is_err() {
            return registration;
        }
        let page = page_size();
        let len = bytes.len().div_ceil(page) * page;
        // SAFETY: `bytes` is a whole mapping (page-aligned start; its last page is mapped to its
        // end, so rounding the length up to a page stays inside it). READ_ONLY: the device may
        // only read it, and the driver does not write to registered memory. The mapping outlives
        // the registration: the cache drops attachments before the mapping, and a temporary
        // registration is dropped at the end of the load that holds the source.
        let result = unsafe {
            sys::cuMemHostRegister_v2(
                bytes.as_ptr() as *mut _,
                len,
                sys::CU_MEMHOSTREGISTER_READ_ONLY,
            )
        };
        match result {
            sys::CUresult::CUDA_SUCCESS => registration.owned = true,
            sys::CUresult::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED => {}
            other => tracing::warn!(
                "cuMemHostRegister of a {len}-byte mapping failed ({other:?}); uploading unregistered (slower)"
            ),
        }
        registration
    }
}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        if self.owned && self.context.bind_to_thread().is_ok() {
            // SAFETY: `ptr` is the start of a range this value registered and nobody else
            // unregisters.
            let _ = unsafe { sys::cuMemHostUnregister(self.ptr as *mut _) };
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// Weights to a CUDA device through burn-cuda's allocator and the driver's copy.
pub struct CudaWeightDevice {
    device: CudaDevice,
    context: Arc<CudaContext>,
    /// The copies of a load are queued here and waited for once, in `end_load`.
    stream: Arc<CudaStream>,
    cache: &'static MmapCache,
    /// Registrations of the load in progress that are not the cache's (kept until `end_load`).
    temporary: Mutex<Vec<HostRegistration>>,
    /// The dequantization kernels, built on first use; `None` when they cannot be (no NVRTC).
    dequant: OnceLock<Option<Arc<CudaDequant>>>,
    /// Stored bytes whose dequantization is queued and not yet waited for.
    queued: AtomicU64,
    /// The dtype weights are dequantized to by default.
    weight_dtype: DType,
}

/// `WEFT_WEIGHT_DTYPE` (f32, f16, bf16), or BF16.
fn weight_dtype_setting() -> DType {
    match std::env::var("WEFT_WEIGHT_DTYPE").ok().as_deref() {
        Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some("bf16") | None => DType::BF16,
        Some(other) => {
            tracing::warn!("WEFT_WEIGHT_DTYPE={other:?} is not f32, f16 or bf16; using bf16");
            DType::BF16
        }
    }
}

impl CudaWeightDevice {
    /// Device `index`, sharing burn-cuda's (primary) context; mappings of `cache` stay
    /// registered while cached.
    pub fn new(index: usize, cache: &'static MmapCache) -> Result<Self, DeviceError> {
        let fail = |e| DeviceError::Backend(format!("cuda:{index}: {e:?}"));
        let context = CudaContext::new(index).map_err(fail)?;
        let stream = context.new_stream().map_err(fail)?;
        Ok(CudaWeightDevice {
            device: CudaDevice { index },
            context,
            stream,
            cache,
            temporary: Mutex::new(Vec::new()),
            dequant: OnceLock::new(),
            queued: AtomicU64::new(0),
            weight_dtype: weight_dtype_setting(),
        })
    }

    /// The dequantization kernels of this device, if they can be built.
    fn dequant(&self) -> Option<&Arc<CudaDequant>> {
        self.dequant
            .get_or_init(|| match CudaDequant::shared(self.device.index) {
                Ok(kernels) => Some(kernels),
                Err(e) => {
                    tracing::warn!(
                        "cuda:{}: no dequantization kernels ({e}); dequantizing on the CPU",
                        self.device.index
                    );
                    None
                }
            })
            .as_ref()
    }

    /// Waits for the queued dequantizations (which frees the blocks they read).
    fn wait_dequant(&self) -> Result<(), DeviceError> {
        self.queued.store(0, Ordering::Relaxed);
        match self.dequant.get() {
            Some(Some(kernels)) => kernels
                .wait()
                .map_err(|e| DeviceError::Backend(format!("dequantizing: {e}"))),
            _ => Ok(()),
        }
    }

    /// The device pointer of a contiguous burn-cuda tensor (offset applied).
    fn device_ptr(&self, tensor: &CubeTensor<CudaRuntime>, what: &str) -> Result<u64, DeviceError> {
        if !tensor.is_contiguous() {
            return Err(DeviceError::Backend(format!(
                "{what}: burn-cuda allocated a non-contiguous buffer"
            )));
        }
        let resource = tensor
            .client
            .get_resource(tensor.handle.clone())
            .map_err(|e| DeviceError::Backend(format!("{what}: {e:?}")))?;
        Ok(resource.resource().ptr)
    }

    /// Queues a copy of `src` to device address `dst` on the load's stream.
    ///
    /// From the registered mapping the copy is a DMA that runs while the next buffer is
    /// allocated; from pageable memory (a buffer the patcher computed) the driver stages `src`
    /// before returning, so the caller may free it at once. `end_load` waits for every copy.
    fn copy(&self, dst: u64, src: &[u8], what: &str) -> Result<(), DeviceError> {
        if src.is_empty() {
            return Ok(());
        }
        self.context
            .bind_to_thread()
            .map_err(|e| DeviceError::Backend(format!("{what}: {e:?}")))?;
        // SAFETY: `dst` is a live device buffer of at least `src.len()` bytes (allocated by
        // burn-cuda for exactly these elements, and kept alive by the tensor the caller holds
        // until `end_load` has waited for the stream); the copy reads `src` and writes only
        // device memory. A mapped `src` outlives the load (the patcher holds its source).
        driver(what, unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst, src.as_ptr().cast(), src.len(), self.stream.cu_stream())
        })
    }
}

impl WeightDevice<CudaBackend> for CudaWeightDevice {
    fn device(&self) -> &CudaDevice {
        &self.device
    }

    fn describe(&self) -> String {
        format!("cuda:{}", self.device.index)
    }

    fn begin_load(&self, source: &WeightSource) -> Result<(), DeviceError> {
        // Buffers the pool hands out may have been freed by tensors whose kernels are still
        // queued on burn-cuda's stream: wait for them before overwriting.
        CudaBackend::sync(&self.device)
            .map_err(|e| DeviceError::Backend(format!("sync: {e:?}")))?;
        let map = source.mapping();
        if self
            .cache
            .attachment(map, |m| HostRegistration::new(&self.context, m.bytes()))
            .is_none()
        {
            let registration = HostRegistration::new(&self.context, map.bytes());
            self.temporary
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(registration);
        }
        Ok(())
    }

    fn upload_float(
        &self,
        data: HostData<'_>,
        dtype: DType,
        what: &str,
    ) -> Result<Tensor<CudaBackend, 1>, DeviceError> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(DeviceError::Backend(format!(
                "{what}: {dtype:?} is not a float type for weights"
            )));
        }
        let bytes = data.as_bytes();
        let n = element_count(bytes.len(), dtype, what)?;
        let tensor = Tensor::<CudaBackend, 1>::empty([n], (&self.device, dtype));
        let primitive = tensor.clone().into_primitive().tensor();
        self.copy(self.device_ptr(&primitive, what)?, bytes, what)?;
        Ok(tensor)
    }

    fn upload_blocks(
        &self,
        bytes: &[u8],
        what: &str,
    ) -> Result<Tensor<CudaBackend, 1, Int>, DeviceError> {
        let tensor = Tensor::<CudaBackend, 1, Int>::empty([bytes.len()], (&self.device, DType::U8));
        let primitive = tensor.clone().into_primitive();
        self.copy(self.device_ptr(&primitive, what)?, bytes, what)?;
        Ok(tensor)
    }

    fn weight_dtype(&self) -> DType {
        self.weight_dtype
    }

    fn dequantizes(&self, ty: GgmlType, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
            && dequant_plan::is_supported(ty)
            && self.dequant().is_some()
    }

    fn upload_dequantized(
        &self,
        bytes: &[u8],
        ty: GgmlType,
        elements: usize,
        dtype: DType,
        what: &str,
    ) -> Result<Tensor<CudaBackend, 1>, DeviceError> {
        let fail = |e: crate::dequant_plan::GpuDequantError| {
            DeviceError::Backend(format!("{what}: dequantizing {ty}: {e}"))
        };
        let kernels = self
            .dequant()
            .ok_or_else(|| DeviceError::Backend(format!("{what}: no dequantization kernels")))?;
        let blocks = self.upload_blocks(bytes, what)?;
        // The kernel reads the blocks once the copy queued on the load's stream has landed.
        kernels.wait_for(&self.stream).map_err(fail)?;
        let out = kernels
            .enqueue(ty, &blocks, elements, dtype)
            .map_err(fail)?;
        let queued = self.queued.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if queued + bytes.len() as u64 >= MAX_QUEUED_BLOCK_BYTES {
            self.wait_dequant()?;
        }
        Ok(out)
    }

    fn end_load(&self) -> Result<(), DeviceError> {
        // Every copy has landed and every dequantization is done before burn-cuda's stream can
        // read the buffers, and before a temporary registration goes.
        let result = self
            .stream
            .synchronize()
            .map_err(|e| DeviceError::Backend(format!("waiting for the copies: {e:?}")))
            .and(self.wait_dequant());
        self.temporary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        result
    }

    fn release(&self) {
        let _ = CudaBackend::sync(&self.device);
        CudaBackend::memory_cleanup(&self.device);
    }

    fn usage(&self) -> Option<DeviceUsage> {
        let usage = CudaRuntime::client(&self.device).memory_usage().ok()?;
        Some(DeviceUsage {
            bytes_in_use: usage.bytes_in_use,
            bytes_reserved: usage.bytes_reserved,
        })
    }

    fn capacity(&self) -> Option<DeviceCapacity> {
        self.context.bind_to_thread().ok()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two valid out-pointers.
        unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) }
            .result()
            .ok()?;
        Some(DeviceCapacity {
            free: free as u64,
            total: total as u64,
        })
    }
}

/// The parts of the upload path that need no GPU: the page rounding the registration uses.
#[cfg(test)]
mod tests {
    #[test]
    fn page_size_is_a_power_of_two() {
        assert!(super::page_size().is_power_of_two());
    }
}
