//! Device copies of weights: [`DeviceWeight`] (a burn tensor made from a fresh buffer) and
//! [`WeightDevice`], how a backend receives them, reports its memory and gives it back.
//!
//! Architecture Invariant: an upload reads host bytes (`&[u8]` of the mapping, or a buffer the
//! patcher computed) and writes only into memory it allocates; no device copy aliases the mapping.
#![forbid(unsafe_code)]

use crate::weights::WeightSource;
use burn::tensor::backend::Backend;
use burn::tensor::{Bytes, DType, Int, Tensor, TensorData};
use std::sync::Arc;
use weft_formats::gguf::GgmlType;

/// One weight on the device.
pub enum DeviceWeight<B: Backend> {
    /// Floating-point values (F32, F16 or BF16), flat; `shape` is the PyTorch-order shape.
    Float {
        /// The values.
        tensor: Tensor<B, 1>,
        /// PyTorch order.
        shape: Vec<usize>,
    },
    /// A quantized weight's ggml blocks, byte for byte as stored, for kernels that dequantize on
    /// the fly (`U8` tensor).
    Blocks {
        /// The blocks.
        tensor: Tensor<B, 1, Int>,
        /// Their ggml type.
        ty: GgmlType,
        /// PyTorch order.
        shape: Vec<usize>,
    },
    /// A quantized weight's blocks left in the file's read-only mapping, on a device whose memory
    /// is the host's ([`WeightDevice::reads_mapping`]): nothing is copied; the CPU dequantizer
    /// reads the mapped pages at each product. Never handed to burn (burn may write its tensors
    /// in place), so the mapping stays unwritable.
    Mapped(MappedBlocks),
}

/// One quantized tensor's blocks in the mapping of a [`WeightSource`].
#[derive(Debug, Clone)]
pub struct MappedBlocks {
    source: Arc<WeightSource>,
    index: usize,
    ty: GgmlType,
    shape: Vec<usize>,
}

impl MappedBlocks {
    /// Tensor `index` of `source`; `None` unless it is stored as quantized blocks.
    pub fn new(source: Arc<WeightSource>, index: usize) -> Option<Self> {
        let info = source.tensors().get(index)?;
        let ty = info.dtype.ggml().filter(|t| t.is_quantized())?;
        let shape = info.shape.iter().map(|&d| d as usize).collect();
        Some(MappedBlocks {
            source,
            index,
            ty,
            shape,
        })
    }

    /// The blocks, as stored (a view of the mapping).
    pub fn bytes(&self) -> &[u8] {
        self.source.bytes(&self.source.tensors()[self.index])
    }

    /// Their ggml type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// PyTorch order.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
}

impl<B: Backend> Clone for DeviceWeight<B> {
    fn clone(&self) -> Self {
        match self {
            DeviceWeight::Float { tensor, shape } => DeviceWeight::Float {
                tensor: tensor.clone(),
                shape: shape.clone(),
            },
            DeviceWeight::Blocks { tensor, ty, shape } => DeviceWeight::Blocks {
                tensor: tensor.clone(),
                ty: *ty,
                shape: shape.clone(),
            },
            DeviceWeight::Mapped(blocks) => DeviceWeight::Mapped(blocks.clone()),
        }
    }
}

impl<B: Backend> std::fmt::Debug for DeviceWeight<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceWeight::Float { tensor, shape } => {
                write!(f, "Float({:?}, {shape:?})", tensor.dtype())
            }
            DeviceWeight::Blocks { ty, shape, .. } => write!(f, "Blocks({ty}, {shape:?})"),
            DeviceWeight::Mapped(m) => write!(f, "Mapped({}, {:?})", m.ty, m.shape),
        }
    }
}

impl<B: Backend> DeviceWeight<B> {
    /// PyTorch-order shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            DeviceWeight::Float { shape, .. } | DeviceWeight::Blocks { shape, .. } => shape,
            DeviceWeight::Mapped(m) => &m.shape,
        }
    }

    /// The device tensor's element type (`U8` for blocks, mapped or not).
    pub fn dtype(&self) -> DType {
        match self {
            DeviceWeight::Float { tensor, .. } => tensor.dtype(),
            DeviceWeight::Blocks { tensor, .. } => tensor.dtype(),
            DeviceWeight::Mapped(_) => DType::U8,
        }
    }

    /// Bytes the device copy takes (none for blocks left in the mapping).
    pub fn device_bytes(&self) -> u64 {
        let (n, dtype) = match self {
            DeviceWeight::Float { tensor, .. } => (tensor.dims()[0], tensor.dtype()),
            DeviceWeight::Blocks { tensor, .. } => (tensor.dims()[0], tensor.dtype()),
            DeviceWeight::Mapped(_) => return 0,
        };
        (n * dtype.size()) as u64
    }

    /// A floating-point weight in its PyTorch-order shape; `None` for quantized blocks or a rank
    /// other than `D`.
    pub fn float<const D: usize>(&self) -> Option<Tensor<B, D>> {
        match self {
            DeviceWeight::Float { tensor, shape } if shape.len() == D => {
                let dims: [usize; D] = shape.as_slice().try_into().ok()?;
                Some(tensor.clone().reshape(dims))
            }
            _ => None,
        }
    }

    /// The bytes the device holds, read back to the host: for checking a load against the file,
    /// never for offloading (offload drops device copies; it never reads them back).
    pub fn read_back(&self) -> Result<Vec<u8>, DeviceError> {
        let data = match self {
            DeviceWeight::Float { tensor, .. } => tensor.to_data(),
            DeviceWeight::Blocks { tensor, .. } => tensor.to_data(),
            DeviceWeight::Mapped(m) => return Ok(m.bytes().to_vec()),
        };
        Ok(data.as_bytes().to_vec())
    }
}

/// Host bytes to upload.
pub enum HostData<'a> {
    /// A view of the mapping: stored bytes, copied into a fresh device buffer.
    Mapped(&'a [u8]),
    /// Values the patcher computed (dequantized, patched): f32.
    F32(Vec<f32>),
    /// Values the patcher computed: f16 or bf16 bit patterns.
    Half(Vec<u16>),
}

impl HostData<'_> {
    /// The bytes, wherever they are.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HostData::Mapped(bytes) => bytes,
            HostData::F32(values) => bytemuck::cast_slice(values),
            HostData::Half(values) => bytemuck::cast_slice(values),
        }
    }
}

/// A device's memory as its allocator sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceUsage {
    /// Bytes in live allocations.
    pub bytes_in_use: u64,
    /// Bytes the allocator holds from the driver (in use or pooled).
    pub bytes_reserved: u64,
}

/// How much memory a device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeviceCapacity {
    /// Free now.
    pub free: u64,
    /// In all.
    pub total: u64,
}

/// Why an upload or a device query failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A buffer does not hold the elements its type and length say.
    #[error("{what}: {bytes} bytes do not hold {elements} elements of {dtype:?}")]
    Size {
        /// What was uploaded.
        what: String,
        /// Its byte length.
        bytes: usize,
        /// The element count expected.
        elements: usize,
        /// The element type.
        dtype: DType,
    },
    /// The backend refused (a driver call failed, out of memory).
    #[error("{0}")]
    Backend(String),
}

/// How a backend receives weights, and gives their memory back.
///
/// [`BurnDevice`] serves every burn backend through `Tensor::from_data`; the CUDA implementation
/// (`cuda` feature) copies from a registered mapping with `cuMemcpyHtoD` instead.
pub trait WeightDevice<B: Backend>: Send + Sync + 'static {
    /// The burn device weights go to.
    fn device(&self) -> &B::Device;

    /// A name for logs (`cpu`, `cuda:0`).
    fn describe(&self) -> String;

    /// Called before uploads from `source` (CUDA: page-locks the mapping once, read-only).
    fn begin_load(&self, _source: &WeightSource) -> Result<(), DeviceError> {
        Ok(())
    }

    /// A new float tensor of `dtype` (F32, F16 or BF16) holding `data`.
    fn upload_float(
        &self,
        data: HostData<'_>,
        dtype: DType,
        what: &str,
    ) -> Result<Tensor<B, 1>, DeviceError>;

    /// A new `U8` tensor holding `bytes` (a quantized weight's blocks).
    fn upload_blocks(&self, bytes: &[u8], what: &str) -> Result<Tensor<B, 1, Int>, DeviceError>;

    /// Whether quantized blocks kept as stored stay in the file's mapping instead of being copied
    /// ([`DeviceWeight::Mapped`]): a device whose memory is the host's, where the CPU
    /// dequantizer reads the mapped pages in place.
    fn reads_mapping(&self) -> bool {
        false
    }

    /// The dtype weights are dequantized to on this device when the loader does not say
    /// (CUDA: BF16, what its matrix products run on; host memory: F32, what the CPU computes in).
    fn weight_dtype(&self) -> DType {
        DType::F32
    }

    /// Whether [`upload_dequantized`](Self::upload_dequantized) turns `ty`'s stored bytes into
    /// `dtype` on the device, bit for bit the host dequantizer's values rounded to `dtype`.
    fn dequantizes(&self, _ty: GgmlType, _dtype: DType) -> bool {
        false
    }

    /// A new float tensor of `dtype` made on the device from `bytes`, the stored bytes of a
    /// `ty` tensor of `elements` values: the upload moves the file's bytes, not the wider floats.
    /// Only called where [`dequantizes`](Self::dequantizes) said yes; the values may be read
    /// once [`end_load`](Self::end_load) has returned.
    fn upload_dequantized(
        &self,
        _bytes: &[u8],
        ty: GgmlType,
        _elements: usize,
        dtype: DType,
        what: &str,
    ) -> Result<Tensor<B, 1>, DeviceError> {
        Err(DeviceError::Backend(format!(
            "{what}: this device does not dequantize {ty} to {dtype:?}"
        )))
    }

    /// Called after a batch of uploads: every copy has landed when it returns.
    fn end_load(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Gives memory freed by dropped device copies back to where it came from (burn-cuda: sync,
    /// then the pool's cleanup; host memory: the C allocator's free pages to the OS).
    fn release(&self);

    /// The allocator's view of the device's memory, where the backend reports one.
    fn usage(&self) -> Option<DeviceUsage> {
        None
    }

    /// Free and total memory, where known.
    fn capacity(&self) -> Option<DeviceCapacity> {
        None
    }
}

/// Checks that `bytes` holds whole elements of `dtype`; returns the element count.
pub fn element_count(bytes: usize, dtype: DType, what: &str) -> Result<usize, DeviceError> {
    let size = dtype.size();
    if size == 0 || !bytes.is_multiple_of(size) {
        return Err(DeviceError::Size {
            what: what.to_owned(),
            bytes,
            elements: bytes / size.max(1),
            dtype,
        });
    }
    Ok(bytes / size)
}

/// A fresh host buffer holding `data`, aligned for `dtype`: what a CPU backend's tensor owns.
/// Mapped bytes are copied; computed buffers are moved.
pub(crate) fn fresh_bytes(data: HostData<'_>, dtype: DType) -> Bytes {
    fn copy<T: bytemuck::Pod + Send + Sync>(src: &[u8]) -> Bytes {
        let mut out = vec![T::zeroed(); src.len() / size_of::<T>()];
        bytemuck::cast_slice_mut(&mut out).copy_from_slice(src);
        Bytes::from_elems(out)
    }
    match data {
        HostData::F32(values) => Bytes::from_elems(values),
        HostData::Half(values) => Bytes::from_elems(values),
        HostData::Mapped(src) => match dtype.size() {
            4 => copy::<u32>(src),
            2 => copy::<u16>(src),
            8 => copy::<u64>(src),
            _ => Bytes::from_elems(src.to_vec()),
        },
    }
}

/// Any burn backend, through `Tensor::from_data` on a fresh buffer. On burn-flex the tensor takes
/// the buffer over without a copy, so a load costs one memcpy from the mapping per weight.
pub struct BurnDevice<B: Backend> {
    device: B::Device,
    host_memory: bool,
    reads_mapping: bool,
}

impl<B: Backend> BurnDevice<B> {
    /// A device whose memory is the host's (burn-flex): release returns freed pages to the OS and
    /// capacity is the host's available memory.
    pub fn host(device: B::Device) -> Self {
        BurnDevice {
            device,
            host_memory: true,
            reads_mapping: false,
        }
    }

    /// [`host`](Self::host), but quantized blocks kept as stored are not copied: they stay in
    /// the file's mapping ([`DeviceWeight::Mapped`]) and the CPU dequantizer reads them there at
    /// each product, so a quantized-resident model costs its mapped pages, not a second copy.
    pub fn host_mapped(device: B::Device) -> Self {
        BurnDevice {
            reads_mapping: true,
            ..Self::host(device)
        }
    }

    /// Any other device, through burn's generic upload path (slow on CUDA: prefer the `cuda`
    /// feature's device there).
    pub fn new(device: B::Device) -> Self {
        BurnDevice {
            device,
            host_memory: false,
            reads_mapping: false,
        }
    }
}

impl<B: Backend> WeightDevice<B> for BurnDevice<B> {
    fn device(&self) -> &B::Device {
        &self.device
    }

    fn describe(&self) -> String {
        format!(
            "{} ({})",
            B::name(&self.device),
            if self.host_memory {
                "host memory"
            } else {
                "device memory"
            }
        )
    }

    fn upload_float(
        &self,
        data: HostData<'_>,
        dtype: DType,
        what: &str,
    ) -> Result<Tensor<B, 1>, DeviceError> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(DeviceError::Backend(format!(
                "{what}: {dtype:?} is not a float type for weights"
            )));
        }
        let n = element_count(data.as_bytes().len(), dtype, what)?;
        let bytes = fresh_bytes(data, dtype);
        Ok(Tensor::from_data(
            TensorData::from_bytes(bytes, [n], dtype),
            (&self.device, dtype),
        ))
    }

    fn reads_mapping(&self) -> bool {
        self.reads_mapping
    }

    fn upload_blocks(&self, bytes: &[u8], _what: &str) -> Result<Tensor<B, 1, Int>, DeviceError> {
        let data = TensorData::from_bytes(
            fresh_bytes(HostData::Mapped(bytes), DType::U8),
            [bytes.len()],
            DType::U8,
        );
        Ok(Tensor::from_data(data, (&self.device, DType::U8)))
    }

    fn release(&self) {
        // Errors here mean the device is gone; there is nothing left to give back.
        let _ = B::sync(&self.device);
        B::memory_cleanup(&self.device);
        if self.host_memory {
            crate::memory::host::return_free_pages_to_os();
        }
    }

    fn capacity(&self) -> Option<DeviceCapacity> {
        if self.host_memory {
            crate::memory::proc::host_memory().map(|m| DeviceCapacity {
                free: m.available,
                total: m.total,
            })
        } else {
            None
        }
    }
}
