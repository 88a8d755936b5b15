//! [`PatcherSource`]: a [`TensorSource`] over a [`ModelPatcher`], so that models built for a node's
//! run read the patcher's weights — its device copies when loaded, LoRA patches baked in — rather
//! than the file.
//!
//! The models ask for f32 (they compute in f32 on the CPU). A resident F32 copy is handed out as
//! it is (a shared handle, no copy); anything else (an F16/BF16 copy, or a weight that is not
//! resident and streams from the mapping) goes through `ModelPatcher::float_weight` and a cast.
//! Linear layers' matrices are handed out in the copy's own dtype (`load_matrix`): on CUDA the
//! BF16 device copies feed the matrix products directly; ggml blocks (a quantized-resident load)
//! are handed out as they are (`load_linear`), for the layer to dequantize at each product.
use super::quant::{Matrix, QuantMatrix};
use super::source::dense_matrix;
use super::{ModelError, TensorSource};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor};
use weft_engine::patcher::{DeviceWeight, LowRankUpdate, ModelPatcher};

/// A patcher's weights, by their names in the model file.
pub struct PatcherSource<'a, B: Backend> {
    patcher: &'a ModelPatcher<B>,
}

impl<'a, B: Backend> PatcherSource<'a, B> {
    /// The weights of `patcher`, with its patches.
    pub fn new(patcher: &'a ModelPatcher<B>) -> Self {
        PatcherSource { patcher }
    }

    /// The patcher's float weight `name` in its own dtype, on `device`.
    fn native(&self, name: &str, device: &B::Device) -> Result<Tensor<B, 1>, ModelError> {
        let weight = self
            .patcher
            .float_weight(name)
            .map_err(|e| ModelError::Config {
                origin: self.origin(),
                message: format!("weight {name:?}: {e}"),
            })?;
        // The patcher's device is the node's device in every loader; a mismatch would be a bug
        // in the caller, and moving is the safe answer.
        Ok(if &weight.device() == device {
            weight
        } else {
            weight.to_device(device)
        })
    }
}

impl<B: Backend> TensorSource<B> for PatcherSource<'_, B> {
    fn origin(&self) -> String {
        self.patcher.source().path().display().to_string()
    }

    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(
            self.patcher
                .source()
                .tensors()
                .iter()
                .map(|t| t.name.as_str()),
        )
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.patcher
            .source()
            .get(name)
            .map(|t| t.shape.iter().map(|&d| d as usize).collect())
    }

    fn load(&self, name: &str, device: &B::Device) -> Result<Tensor<B, 1>, ModelError> {
        let weight = self.native(name, device)?;
        Ok(if weight.dtype() == DType::F32 {
            weight
        } else {
            weight.cast(FloatDType::F32)
        })
    }

    fn load_matrix(&self, name: &str, device: &B::Device) -> Result<Tensor<B, 1>, ModelError> {
        self.native(name, device)
    }

    /// The patcher's copy as it is: blocks (a quantized-resident load, or an unpatched quantized
    /// weight streamed from the mapping under `WeightFormat::AsStored`) become a [`QuantMatrix`]
    /// dequantized at each product into the patcher's compute dtype; floats stay floats.
    fn load_linear(
        &self,
        name: &str,
        shape: [usize; 2],
        device: &B::Device,
    ) -> Result<Matrix<B>, ModelError> {
        let weight = self.patcher.weight(name).map_err(|e| ModelError::Config {
            origin: self.origin(),
            message: format!("weight {name:?}: {e}"),
        })?;
        match weight {
            DeviceWeight::Blocks { tensor, ty, .. } => {
                let tensor = if &tensor.device() == device {
                    tensor
                } else {
                    tensor.to_device(device)
                };
                let dtype = self.patcher.options().compute_dtype;
                QuantMatrix::new(tensor, ty, shape, dtype, &self.origin(), name)
                    .map(Matrix::Quantized)
            }
            DeviceWeight::Mapped(blocks) => {
                let dtype = self.patcher.options().compute_dtype;
                QuantMatrix::mapped(blocks, shape, dtype, device, &self.origin(), name)
                    .map(Matrix::Quantized)
            }
            DeviceWeight::Float { tensor, .. } => {
                let tensor = if &tensor.device() == device {
                    tensor
                } else {
                    tensor.to_device(device)
                };
                dense_matrix(&self.origin(), name, tensor, shape)
            }
        }
    }

    fn side_updates(&self, name: &str) -> Result<Vec<LowRankUpdate>, ModelError> {
        self.patcher
            .side_updates(name)
            .map_err(|e| ModelError::Config {
                origin: self.origin(),
                message: format!("LoRA on {name:?}: {e}"),
            })
    }

    fn architecture(&self) -> Option<String> {
        match self.patcher.source().file() {
            weft_engine::formats::ModelFile::Gguf(f) => {
                f.header().architecture().map(str::to_owned)
            }
            weft_engine::formats::ModelFile::Safetensors(_) => None,
        }
    }
}
