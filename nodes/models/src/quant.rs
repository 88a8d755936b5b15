//! Quantized-resident weights: a linear layer's matrix kept as its ggml blocks, exactly as the
//! GGUF file stores them ([`QuantMatrix`]), and dequantized into a transient tensor of the compute
//! dtype just before each product. The model never exists dequantized at once: the device holds
//! about the file's size, plus one layer's dequantized matrix at a time (burn's pool reuses its
//! buffer from layer to layer).
//!
//! On a host-memory device (the CPU) the blocks are not copied at all: they are read in place
//! from the file's read-only mapping ([`weft_engine::patcher::MappedBlocks`]), so a CPU run holds
//! the mapped pages, one layer's values and the activations.
//!
//! On burn-cuda the blocks are dequantized on the device by weft-cuda's kernels, ordered against
//! burn's stream without host waits ([`crate::fast::dequantize`]); elsewhere they are read back
//! and dequantized by the CPU dequantizer, bit-exact with gguf-py. Both give the values a
//! dequantize-then-load would have given, so a quantized-resident layer computes what the
//! dequantized one computes (exactly on the CPU, within the compute dtype's rounding on the GPU).
use super::ModelError;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};
use weft_engine::formats::gguf::{GgmlType, dequant};
use weft_engine::patcher::MappedBlocks;

/// Where a [`QuantMatrix`]'s blocks are.
#[derive(Debug, Clone)]
enum Blocks<B: Backend> {
    /// A `U8` tensor on the device.
    Device(Tensor<B, 1, Int>),
    /// Bytes `range` of a tensor left in the file's mapping (a host-memory device), read by the
    /// CPU dequantizer into a tensor on `device`.
    Mapped {
        blocks: MappedBlocks,
        range: std::ops::Range<usize>,
        device: B::Device,
    },
}

/// A `[rows, cols]` matrix held as ggml blocks (row-major: each row is whole blocks), on the
/// device or in the file's mapping, dequantized to `dtype` when used.
#[derive(Debug, Clone)]
pub struct QuantMatrix<B: Backend> {
    blocks: Blocks<B>,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    dtype: DType,
}

impl<B: Backend> QuantMatrix<B> {
    /// `blocks` of type `ty` encoding a `[rows, cols]` matrix, to be dequantized into `dtype`
    /// (F32, F16 or BF16). Errors, naming `origin` and `name`, when the sizes disagree or a row
    /// does not end on a block boundary (so that row ranges are byte ranges).
    pub fn new(
        blocks: Tensor<B, 1, Int>,
        ty: GgmlType,
        shape: [usize; 2],
        dtype: DType,
        origin: &str,
        name: &str,
    ) -> Result<Self, ModelError> {
        let found = blocks.dims()[0];
        Self::checked(
            Blocks::Device(blocks),
            found,
            ty,
            shape,
            dtype,
            origin,
            name,
        )
    }

    /// The blocks of `mapped` read in place from the file's mapping, dequantized into tensors on
    /// `device` (a host-memory device: the CPU). Errors as [`new`](Self::new).
    pub fn mapped(
        mapped: MappedBlocks,
        shape: [usize; 2],
        dtype: DType,
        device: &B::Device,
        origin: &str,
        name: &str,
    ) -> Result<Self, ModelError> {
        let (ty, found) = (mapped.ggml_type(), mapped.bytes().len());
        let blocks = Blocks::Mapped {
            blocks: mapped,
            range: 0..found,
            device: device.clone(),
        };
        Self::checked(blocks, found, ty, shape, dtype, origin, name)
    }

    fn checked(
        blocks: Blocks<B>,
        found: usize,
        ty: GgmlType,
        [rows, cols]: [usize; 2],
        dtype: DType,
        origin: &str,
        name: &str,
    ) -> Result<Self, ModelError> {
        let config = |message: String| ModelError::Config {
            origin: origin.to_owned(),
            message: format!("tensor {name:?}: {message}"),
        };
        if !ty.is_quantized() {
            return Err(config(format!("{} is not a quantized type", ty.name())));
        }
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(config(format!("cannot dequantize into {dtype:?}")));
        }
        let block = ty.block_size();
        if block == 0 || !cols.is_multiple_of(block) {
            return Err(config(format!(
                "rows of {cols} values are not whole {} blocks of {block}",
                ty.name()
            )));
        }
        let elements = rows.checked_mul(cols).map(|n| n as u64);
        let expected = elements.and_then(|n| ty.bytes_for(n));
        if expected != Some(found as u64) {
            return Err(config(format!(
                "{found} bytes of {} blocks do not hold [{rows}, {cols}]",
                ty.name()
            )));
        }
        Ok(QuantMatrix {
            blocks,
            ty,
            rows,
            cols,
            dtype,
        })
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The ggml type of the blocks.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// The dtype the matrix is dequantized into.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes the blocks take.
    pub fn nbytes(&self) -> usize {
        match &self.blocks {
            Blocks::Device(t) => t.dims()[0],
            Blocks::Mapped { range, .. } => range.len(),
        }
    }

    /// Whether the blocks are read in place from the file's mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.blocks, Blocks::Mapped { .. })
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    /// Rows `start..start + len` (a byte range of the blocks, no copy).
    pub fn narrow_rows(&self, start: usize, len: usize) -> QuantMatrix<B> {
        let row = self.row_bytes();
        let blocks = match &self.blocks {
            Blocks::Device(t) => Blocks::Device(t.clone().narrow(0, start * row, len * row)),
            Blocks::Mapped {
                blocks,
                range,
                device,
            } => Blocks::Mapped {
                blocks: blocks.clone(),
                range: range.start + start * row..range.start + (start + len) * row,
                device: device.clone(),
            },
        };
        QuantMatrix {
            blocks,
            rows: len,
            ..self.clone()
        }
    }

    /// The matrix's values in [`dtype`](Self::dtype): on the device where the backend has the
    /// kernels, else through the CPU dequantizer.
    pub fn dequantize(&self) -> Tensor<B, 2> {
        let n = self.rows * self.cols;
        if let Blocks::Device(blocks) = &self.blocks
            && let Some(values) = super::fast::dequantize(blocks, self.ty, n, self.dtype)
        {
            return values.reshape([self.rows, self.cols]);
        }
        self.dequantize_on_host()
    }

    /// The CPU dequantizer's values (reading device blocks back first; mapped blocks in place).
    pub fn dequantize_on_host(&self) -> Tensor<B, 2> {
        match &self.blocks {
            Blocks::Device(blocks) => {
                let data = blocks.clone().into_data();
                self.host_values(data.as_bytes(), &blocks.device())
            }
            Blocks::Mapped {
                blocks,
                range,
                device,
            } => self.host_values(&blocks.bytes()[range.clone()], device),
        }
    }

    fn host_values(&self, bytes: &[u8], device: &B::Device) -> Tensor<B, 2> {
        let mut values = vec![0f32; self.rows * self.cols];
        dequant::dequantize(self.ty, bytes, &mut values, "quantized matrix")
            .expect("QuantMatrix::new checked that the blocks hold the matrix");
        let values =
            Tensor::<B, 1>::from_data(TensorData::new(values, [self.rows * self.cols]), device)
                .reshape([self.rows, self.cols]);
        match self.dtype {
            DType::F16 => values.cast(FloatDType::F16),
            DType::BF16 => values.cast(FloatDType::BF16),
            _ => values,
        }
    }
}

/// A linear layer's weight matrix `[d_out, d_in]`: dense (floats, in the source's dtype) or
/// quantized-resident.
#[derive(Debug, Clone)]
pub enum Matrix<B: Backend> {
    /// Float values.
    Dense(Tensor<B, 2>),
    /// ggml blocks, dequantized at each use.
    Quantized(QuantMatrix<B>),
}

impl<B: Backend> Matrix<B> {
    /// `[d_out, d_in]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Matrix::Dense(w) => w.dims(),
            Matrix::Quantized(q) => q.dims(),
        }
    }

    /// The float type the products see (a quantized matrix's dequantization dtype).
    pub fn dtype(&self) -> DType {
        match self {
            Matrix::Dense(w) => w.dtype(),
            Matrix::Quantized(q) => q.dtype(),
        }
    }

    /// Rows `start..start + len`, without a copy.
    pub fn narrow_rows(&self, start: usize, len: usize) -> Matrix<B> {
        match self {
            Matrix::Dense(w) => Matrix::Dense(w.clone().narrow(0, start, len)),
            Matrix::Quantized(q) => Matrix::Quantized(q.narrow_rows(start, len)),
        }
    }

    /// The values as a float tensor: the dense one itself, or a fresh dequantization.
    pub fn values(&self) -> Tensor<B, 2> {
        match self {
            Matrix::Dense(w) => w.clone(),
            Matrix::Quantized(q) => q.dequantize(),
        }
    }
}
