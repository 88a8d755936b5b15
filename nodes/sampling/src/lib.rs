//! Sampling as ComfyUI does it: torch-identical noise, model sampling (sigma tables, the
//! parameterizations), schedulers and the k-diffusion samplers.
//!
//! The pieces, in the order a KSampler uses them:
//! - [`torch_rng`]: `torch.manual_seed(seed); torch.randn(shape)` on the CPU, bit for bit — the
//!   initial noise, and the default noise of ancestral samplers.
//! - [`model_sampling`]: what ComfyUI calls `model_sampling` — the sigma table of a model
//!   (`ModelSamplingDiscrete`, `ModelSamplingDiscreteFlow`, `ModelSamplingFlux`), the mapping between
//!   sigma and the model's timestep, and the parameterization (EPS, V, CONST) that turns a model
//!   output into a denoised estimate and scales the initial noise.
//! - [`schedulers`]: the sigmas of a run (`simple`, `normal`, `karras`, `exponential`, `sgm_uniform`,
//!   `beta`, …), with `denoise < 1` handled as ComfyUI's `KSampler.set_steps`.
//! - [`samplers`]: `euler`, `euler_ancestral`, `heun`, `dpmpp_2m`, `dpmpp_2m_sde`, `lcm`, … over burn
//!   tensors, calling a [`samplers::Denoiser`] (the model with CFG) once or twice per step;
//!   [`brownian`] is the torchsde Brownian tree behind `dpmpp_2m_sde`'s noise.
//!
//! A KSampler node does what ComfyUI's `common_ksampler` does:
//! 1. `noise = prepare_noise(seed, latent_shape, batch_index)` (zeros when noise is disabled);
//! 2. `sigmas = ksampler_sigmas(&model_sampling, scheduler, sampler, steps, denoise)`;
//! 3. `SamplerRun { sampler, model_sampling, sigmas, seed }.run(&mut CfgDenoiser::new(..), noise,
//!    latent, hooks)`, with the latent in the model's space (ComfyUI applies the latent format's
//!    `process_latent_in` to a latent that is not all zeros) and the result taken back out
//!    (`process_latent_out`).
//!
//! Numerics follow torch's float32 operation order, so where torch's result is defined by IEEE
//! arithmetic alone (the noise, the sigma tables of flow models, euler/heun/ancestral steps) the
//! results are bit-identical; where torch calls MKL or SLEEF transcendental functions (`exp`,
//! `log`, `expm1`, `pow` on tensors) weft uses correctly rounded values, within one float32 ulp of
//! torch's.
//!
//! **Architecture Invariant:** sampling knows no model architecture and no node. A model enters as
//! a [`samplers::Denoiser`]; progress and cancellation enter as [`samplers::SamplerHooks`].
//!
//! **Architecture Invariant:** no `unsafe` here but the call of the AVX2+FMA build of the
//! Box-Muller kernel after the CPU features are detected (`avx_mathfun::normal_fill`).
#![deny(unsafe_code)]
use std::fmt;

pub mod avx_mathfun;
mod beta_dist;
pub mod brownian;
pub mod model_sampling;
pub mod noise;
pub mod samplers;
pub mod schedulers;
pub mod torch_math;
pub mod torch_rng;

pub use model_sampling::{ModelSampling, Parameterization};
pub use samplers::{
    CfgDenoiser, Denoiser, Guidance, NoiseSampler, SamplerHooks, SamplerKind, SamplerRun, StepInfo,
};
pub use schedulers::{Scheduler, ksampler_sigmas};
pub use torch_rng::{TorchGenerator, prepare_noise, torch_randn};

/// Everything that can go wrong while building a schedule or sampling. (`Display` and `Error` are
/// written out because weft-nodes does not depend on thiserror.)
#[derive(Debug)]
pub enum SamplingError {
    /// A scheduler or sampler name that ComfyUI does not have (or weft does not implement yet).
    UnknownName {
        /// "scheduler" or "sampler".
        what: &'static str,
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: Vec<&'static str>,
    },
    /// A parameter outside the range where the computation is defined.
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// The tensors handed to the sampler disagree with each other.
    ShapeMismatch {
        /// Which tensors.
        what: &'static str,
        /// The shapes.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// The hooks asked to stop.
    Cancelled,
    /// The model (the [`samplers::Denoiser`]) failed.
    Model(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for SamplingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownName { what, name, known } => {
                write!(f, "unknown {what} \"{name}\"; known: {}", known.join(", "))
            }
            Self::InvalidParameter { name, reason } => write!(f, "{name}: {reason}"),
            Self::ShapeMismatch {
                what,
                expected,
                found,
            } => {
                write!(f, "{what}: expected shape {expected:?}, found {found:?}")
            }
            Self::Cancelled => write!(f, "cancelled"),
            Self::Model(source) => write!(f, "model: {source}"),
        }
    }
}

impl std::error::Error for SamplingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Model(source) => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl SamplingError {
    /// A parameter out of its range, said in words.
    pub fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParameter {
            name,
            reason: reason.into(),
        }
    }
}
