//! Where a model's weights come from: [`TensorSource`] (named f32 tensors, any storage type) and
//! [`Weights`], the loader the models use to fetch them by original checkpoint name, with the
//! shape checks that turn a bad file into an error instead of a panic.
use super::ModelError;
use super::layers::{Conv2d, GroupNorm, Linear};
use super::low_rank::LowRank;
use super::quant::Matrix;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::collections::BTreeSet;
use weft_engine::formats::ModelFile;
use weft_engine::patcher::LowRankUpdate;

/// Named tensors a model is built from.
///
/// Implementations hand out values as f32, whatever the storage type (F32/F16/BF16/Q*): the
/// models compute in the backend's float type and never see blocks. A [`ModelFile`] dequantizes
/// on each `load`; the ModelPatcher can implement this trait over its device copies. Matrices of
/// linear layers may come in the source's own float type instead ([`load_matrix`](Self::load_matrix)):
/// [`Linear`] multiplies in the weight's dtype.
pub trait TensorSource<B: Backend> {
    /// Names the source in errors (normally the file's path).
    fn origin(&self) -> String;
    /// Every tensor name, as stored (prefix included).
    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_>;
    /// The PyTorch-order shape of `name`, if the source has it.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The values of `name`, flat (row-major, PyTorch order), on `device`.
    fn load(&self, name: &str, device: &B::Device) -> Result<Tensor<B, 1>, ModelError>;
    /// A linear layer's weight matrix: as [`load`](Self::load), but in whatever float type the
    /// source holds it (a patcher's BF16 device copy stays BF16, without a copy).
    fn load_matrix(&self, name: &str, device: &B::Device) -> Result<Tensor<B, 1>, ModelError> {
        self.load(name, device)
    }

    /// A linear layer's weight `name`, `shape` [d_out, d_in]: as [`load_matrix`](Self::load_matrix)
    /// (dense), or the ggml blocks a quantized-resident source holds for it, dequantized by the
    /// layer at each product.
    fn load_linear(
        &self,
        name: &str,
        shape: [usize; 2],
        device: &B::Device,
    ) -> Result<Matrix<B>, ModelError> {
        dense_matrix(&self.origin(), name, self.load_matrix(name, device)?, shape)
    }

    /// The LoRA updates the source keeps beside linear weight `name` rather than merged into it
    /// (a patcher's quantized-resident matrices): the layer adds them as side products.
    fn side_updates(&self, _name: &str) -> Result<Vec<LowRankUpdate>, ModelError> {
        Ok(Vec::new())
    }

    /// The architecture the file declares (GGUF `general.architecture`), if any.
    fn architecture(&self) -> Option<String> {
        None
    }
}

impl<B: Backend> TensorSource<B> for ModelFile {
    fn origin(&self) -> String {
        self.path().display().to_string()
    }

    fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(self.tensors().iter().map(|t| t.name.as_str()))
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensor(name)
            .map(|t| t.shape.iter().map(|&d| d as usize).collect())
    }

    fn load(&self, name: &str, device: &B::Device) -> Result<Tensor<B, 1>, ModelError> {
        let info = self.require(name)?;
        let values = self.dequantize(info)?;
        let n = values.len();
        Ok(Tensor::from_data(TensorData::new(values, [n]), device))
    }

    fn architecture(&self) -> Option<String> {
        match self {
            ModelFile::Gguf(f) => f.header().architecture().map(str::to_owned),
            ModelFile::Safetensors(_) => None,
        }
    }
}

/// Flat `values` of the linear weight `name` as a dense `shape` matrix, or an error (naming
/// `origin`) when a source's values disagree with its own shape, rather than a reshape panic.
pub fn dense_matrix<B: Backend>(
    origin: &str,
    name: &str,
    values: Tensor<B, 1>,
    shape: [usize; 2],
) -> Result<Matrix<B>, ModelError> {
    if values.dims()[0] != shape[0] * shape[1] {
        return Err(ModelError::Shape {
            origin: origin.to_owned(),
            name: name.to_owned(),
            found: values.dims().to_vec(),
            expected: shape.to_vec(),
        });
    }
    Ok(Matrix::Dense(values.reshape(shape)))
}

/// A model's view of a [`TensorSource`]: names relative to a prefix (`model.diffusion_model.`,
/// `first_stage_model.` …), shapes checked against what the architecture expects.
pub struct Weights<'a, B: Backend> {
    source: &'a dyn TensorSource<B>,
    prefix: String,
    device: B::Device,
}

impl<'a, B: Backend> Weights<'a, B> {
    pub fn new(
        source: &'a dyn TensorSource<B>,
        prefix: impl Into<String>,
        device: &B::Device,
    ) -> Self {
        Weights {
            source,
            prefix: prefix.into(),
            device: device.clone(),
        }
    }

    /// The first of `prefixes` under which the source holds `marker` (a tensor every file of the
    /// architecture has), if any.
    pub fn find_prefix<'p>(
        source: &dyn TensorSource<B>,
        marker: &str,
        prefixes: &[&'p str],
    ) -> Option<&'p str> {
        prefixes
            .iter()
            .copied()
            .find(|p| source.shape(&format!("{p}{marker}")).is_some())
    }

    pub fn origin(&self) -> String {
        self.source.origin()
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Whether the source holds `name` (relative to the prefix).
    pub fn has(&self, name: &str) -> bool {
        self.source.shape(&self.full(name)).is_some()
    }

    /// The shape of `name`, or an error naming the file and the tensor.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>, ModelError> {
        self.source
            .shape(&self.full(name))
            .ok_or_else(|| self.missing(name))
    }

    /// How many numbered blocks `stem.N.` the source holds (the highest N plus one).
    pub fn count_blocks(&self, stem: &str) -> usize {
        let start = format!("{}{stem}.", self.prefix);
        let indices: BTreeSet<usize> = self
            .source
            .names()
            .filter_map(|n| n.strip_prefix(&start)?.split('.').next()?.parse().ok())
            .collect();
        indices.last().map_or(0, |&last| last + 1)
    }

    /// An error for a file whose weights contradict each other.
    pub fn config_error(&self, message: impl Into<String>) -> ModelError {
        ModelError::Config {
            origin: self.origin(),
            message: message.into(),
        }
    }

    /// `name` with exactly the shape `expected`.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        expected: [usize; D],
    ) -> Result<Tensor<B, D>, ModelError> {
        self.tensor_as(name, &[&expected], expected)
    }

    /// `name`, stored with any of the shapes in `accepted` (same element count), as `shape`.
    /// Lets a 1x1 conv weight `[o, i, 1, 1]` load as a linear weight `[o, i]`.
    pub fn tensor_as<const D: usize>(
        &self,
        name: &str,
        accepted: &[&[usize]],
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, ModelError> {
        self.fetch(name, accepted, shape)
    }

    /// A linear layer's weight `name` [d_out, d_in] (or `accepted` shapes of as many elements),
    /// in the source's float type or quantized-resident ([`TensorSource::load_linear`]).
    fn matrix(
        &self,
        name: &str,
        accepted: &[&[usize]],
        shape: [usize; 2],
    ) -> Result<Matrix<B>, ModelError> {
        self.check_shape(name, accepted, &shape)?;
        self.source
            .load_linear(&self.full(name), shape, &self.device)
    }

    /// A linear layer over weight `name` (already loaded as `weight`) with `bias`, and the LoRA
    /// updates the source keeps beside the weight as side products.
    fn layer(
        &self,
        name: &str,
        weight: Matrix<B>,
        bias: Option<Tensor<B, 1>>,
    ) -> Result<Linear<B>, ModelError> {
        let dtype = weight.dtype();
        let side = self
            .source
            .side_updates(&self.full(name))?
            .iter()
            .map(|u| LowRank::new(u, dtype, &self.device))
            .collect();
        Ok(Linear::from_matrix(weight, bias).with_side(side))
    }

    /// That the source stores `name` with one of the `accepted` shapes.
    fn check_shape(
        &self,
        name: &str,
        accepted: &[&[usize]],
        shape: &[usize],
    ) -> Result<(), ModelError> {
        let found = self.shape(name)?;
        if !accepted.contains(&found.as_slice()) {
            return Err(ModelError::Shape {
                origin: self.origin(),
                name: self.full(name),
                found,
                expected: shape.to_vec(),
            });
        }
        Ok(())
    }

    fn fetch<const D: usize>(
        &self,
        name: &str,
        accepted: &[&[usize]],
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, ModelError> {
        self.check_shape(name, accepted, &shape)?;
        let values = self.source.load(&self.full(name), &self.device)?;
        if values.dims()[0] != shape.iter().product::<usize>() {
            // A source whose values disagree with its own shape: an error, not a reshape panic.
            return Err(ModelError::Shape {
                origin: self.origin(),
                name: self.full(name),
                found: values.dims().to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(values.reshape(shape))
    }

    /// A linear layer `name.weight` [d_out, d_in] with `name.bias` [d_out].
    pub fn linear(&self, name: &str, d_in: usize, d_out: usize) -> Result<Linear<B>, ModelError> {
        let weight_name = format!("{name}.weight");
        let weight = self.matrix(&weight_name, &[&[d_out, d_in]], [d_out, d_in])?;
        let bias = self.tensor(&format!("{name}.bias"), [d_out])?;
        self.layer(&weight_name, weight, Some(bias))
    }

    /// A linear layer whose bias may be absent (`name.bias`).
    pub fn linear_optional_bias(
        &self,
        name: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Linear<B>, ModelError> {
        let weight_name = format!("{name}.weight");
        let weight = self.matrix(&weight_name, &[&[d_out, d_in]], [d_out, d_in])?;
        let bias_name = format!("{name}.bias");
        let bias = if self.has(&bias_name) {
            Some(self.tensor(&bias_name, [d_out])?)
        } else {
            None
        };
        self.layer(&weight_name, weight, bias)
    }

    /// A channel projection stored either as a linear [c_out, c_in] or a 1x1 conv [c_out, c_in, 1, 1].
    pub fn projection(
        &self,
        name: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Linear<B>, ModelError> {
        let weight_name = format!("{name}.weight");
        let weight = self.matrix(
            &weight_name,
            &[&[d_out, d_in], &[d_out, d_in, 1, 1]],
            [d_out, d_in],
        )?;
        let bias = self.tensor(&format!("{name}.bias"), [d_out])?;
        self.layer(&weight_name, weight, Some(bias))
    }

    /// A square-kernel conv `name.weight` [c_out, c_in, k, k] with `name.bias` [c_out].
    pub fn conv2d(
        &self,
        name: &str,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Conv2d<B>, ModelError> {
        let weight = self.tensor(&format!("{name}.weight"), [c_out, c_in, kernel, kernel])?;
        let bias = self.tensor(&format!("{name}.bias"), [c_out])?;
        Ok(Conv2d::new(weight, bias, stride, padding))
    }

    /// A group norm `name.weight`, `name.bias` [channels].
    pub fn group_norm(
        &self,
        name: &str,
        channels: usize,
        groups: usize,
        eps: f64,
    ) -> Result<GroupNorm<B>, ModelError> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(self.config_error(format!(
                "{name}: {channels} channels cannot form {groups} groups"
            )));
        }
        let gamma = self.tensor(&format!("{name}.weight"), [channels])?;
        let beta = self.tensor(&format!("{name}.bias"), [channels])?;
        Ok(GroupNorm::new(gamma, beta, groups, eps))
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn missing(&self, name: &str) -> ModelError {
        let full = self.full(name);
        let hint = self
            .source
            .names()
            .map(|n| (strsim::levenshtein(n, &full), n))
            .min()
            .filter(|(d, _)| *d <= full.len() / 3 + 2)
            .map(|(_, n)| format!(" (did you mean {n:?}?)"))
            .unwrap_or_default();
        ModelError::MissingTensor {
            origin: self.origin(),
            name: full,
            hint,
        }
    }
}
