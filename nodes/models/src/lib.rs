//! Model architectures, named as in the original checkpoints: the Flux DiT ([`flux`]) and the
//! AutoencoderKL ([`vae`]), with the layers they share ([`layers`]) and the way they receive
//! weights ([`source`]); [`fast`] sends layers to device kernels where the backend has them.
//!
//! A model is built from a [`TensorSource`]: anything that yields named f32 tensors. A
//! [`weft_engine::formats::ModelFile`] is one (tensors dequantized on load); the ModelPatcher can
//! be another (patched device copies). Models only do math on what the source hands them, so
//! weight *sourcing* (mmap, offload, LoRA) stays outside this module.
//!
//! Architecture Invariant: models never read files or metadata other than through
//! [`TensorSource`], and never panic on a bad file: a missing tensor or a wrong shape is a
//! [`ModelError`] that names the file and the tensor.
pub mod fast;
pub mod flux;
pub mod layers;
pub mod low_rank;
pub mod patcher_source;
pub mod profile;
pub mod quant;
pub mod source;
pub mod text;
pub mod vae;

pub use source::{TensorSource, Weights};

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Runs `f` as op `name` of the `WEFT_PROFILE=1` profile (`crate::profile`), waiting for
/// `like`'s device around it; a plain call when profiling is off.
pub(crate) fn op<B: Backend, const D: usize, R>(
    name: &'static str,
    like: &Tensor<B, D>,
    f: impl FnOnce() -> R,
) -> R {
    if !crate::profile::enabled() {
        return f();
    }
    let device = like.device();
    crate::profile::op(name, || drop(B::sync(&device)), f)
}
use weft_engine::formats::FormatError;

/// Why a model could not be built or run. File variants name the file (`origin`) and tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or dequantizing failed; the inner error names the file and tensor.
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{origin}: no tensor named {name:?}{hint}")]
    MissingTensor {
        origin: String,
        name: String,
        hint: String,
    },
    #[error("{origin}: tensor {name:?} has shape {found:?}, expected {expected:?}")]
    Shape {
        origin: String,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{origin}: architecture {found:?} is not supported here (supported: {supported})")]
    UnsupportedArchitecture {
        origin: String,
        found: String,
        supported: String,
    },
    /// The weights exist but do not describe a model we can build (inconsistent widths …).
    #[error("{origin}: {message}")]
    Config { origin: String, message: String },
    /// A forward call got inputs of the wrong shape.
    #[error("{model}: {message}")]
    Input {
        model: &'static str,
        message: String,
    },
}

impl ModelError {
    pub(crate) fn input(model: &'static str, message: impl Into<String>) -> Self {
        ModelError::Input {
            model,
            message: message.into(),
        }
    }
}

/// How a model family's latents relate to the VAE's raw latents (ComfyUI's `latent_format`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatentFormat {
    pub channels: usize,
    pub scale: f64,
    pub shift: f64,
}

impl LatentFormat {
    /// Flux (and SD3-style 16-channel VAEs as Flux uses them).
    pub const FLUX: LatentFormat = LatentFormat {
        channels: 16,
        scale: 0.3611,
        shift: 0.1159,
    };
    /// SD 1.x.
    pub const SD15: LatentFormat = LatentFormat {
        channels: 4,
        scale: 0.18215,
        shift: 0.0,
    };

    /// The usual format for a VAE with `channels` latent channels. The weights cannot tell SD 1.x
    /// from SDXL (0.13025); the diffusion model, which owns the format in ComfyUI, decides.
    pub fn for_channels(channels: usize) -> Option<LatentFormat> {
        match channels {
            16 => Some(Self::FLUX),
            4 => Some(Self::SD15),
            _ => None,
        }
    }

    /// VAE latent → model latent: `(x - shift) * scale`.
    pub fn process_in<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        (x - self.shift) * self.scale
    }

    /// Model latent → VAE latent: `x / scale + shift`.
    pub fn process_out<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        x / self.scale + self.shift
    }
}
