//! The k-diffusion samplers as ComfyUI runs them (`KSAMPLER.sample` and
//! `comfy/k_diffusion/sampling.py`), over burn tensors on any backend.
//!
//! A run: the unit noise is scaled to the first sigma (`noise_scaling`), the sampler walks the
//! sigmas calling the [`Denoiser`] — the model with its conditioning and CFG, which returns the
//! denoised estimate — and the result is unscaled (`inverse_noise_scaling`). Flow (CONST) models
//! take the rectified-flow variants where ComfyUI has them (`euler_ancestral`, `dpm_2_ancestral`,
//! `dpmpp_2s_ancestral`)
//! and the half-logSNR of flow matching in `dpmpp_2m_sde`.
//!
//! Scalar coefficients are computed in f32 in torch's order and tensor updates are applied in
//! the same order as ComfyUI's expressions, so a run matches ComfyUI on the CPU to the last bit
//! where no transcendental function is involved, and to float32 rounding elsewhere.
//!
//! Stochastic samplers draw noise from a [`NoiseSampler`]. The default, [`TorchNoiseSampler`], is
//! ComfyUI's `default_noise_sampler` on the CPU: one `torch.randn(x.shape)` per call from a torch
//! generator seeded with `seed + 1` (ComfyUI ≥ 0.7, PR #11528, adds 1 on the CPU so that it
//! differs from the initial noise; for earlier versions pass [`TorchNoiseSampler::new`] with the
//! seed itself to [`SamplerRun::run_with_noise`]). ComfyUI on a GPU draws from CUDA's Philox
//! generator instead, which depends on the device and is not reproduced. `dpmpp_2m_sde` uses
//! ComfyUI's Brownian tree, which runs on the CPU there too ([`super::brownian`]).
mod cfg;
mod k_diffusion;

pub use super::noise::{NoiseSampler, TorchNoiseSampler};
pub use cfg::{CfgDenoiser, Guidance, cfg_combine, cfg_is_skipped};

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::SamplingError;
use super::brownian::BrownianTreeNoiseSampler;
use super::model_sampling::ModelSampling;

/// A ComfyUI sampler, by its `sampler_name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// `euler`: Karras et al. (2022) Algorithm 2 without churn.
    Euler,
    /// `euler_ancestral`: Euler steps to a lower sigma plus fresh noise (RF variant for flow models).
    EulerAncestral,
    /// `heun`: second order, two model calls per step.
    Heun,
    /// `dpm_2`: DPM-Solver-2 midpoint steps.
    Dpm2,
    /// `dpm_2_ancestral`: DPM-Solver-2 with ancestral noise (RF variant for flow models).
    Dpm2Ancestral,
    /// `dpmpp_2s_ancestral`: DPM-Solver++(2S) with ancestral noise (RF variant for flow models).
    Dpmpp2sAncestral,
    /// `dpmpp_2m`: DPM-Solver++(2M).
    Dpmpp2m,
    /// `dpmpp_2m_sde`: DPM-Solver++(2M) SDE, midpoint solver, Brownian-tree noise.
    Dpmpp2mSde,
    /// `dpmpp_2m_sde_heun`: DPM-Solver++(2M) SDE, Heun solver.
    Dpmpp2mSdeHeun,
    /// `ddpm`: ancestral DDPM steps.
    Ddpm,
    /// `lcm`: latent consistency sampling (denoise, then renoise to the next sigma).
    Lcm,
}

impl SamplerKind {
    /// Every sampler weft implements, in ComfyUI's order.
    pub const ALL: [SamplerKind; 11] = [
        Self::Euler,
        Self::EulerAncestral,
        Self::Heun,
        Self::Dpm2,
        Self::Dpm2Ancestral,
        Self::Dpmpp2sAncestral,
        Self::Dpmpp2m,
        Self::Dpmpp2mSde,
        Self::Dpmpp2mSdeHeun,
        Self::Ddpm,
        Self::Lcm,
    ];

    /// The ComfyUI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Euler => "euler",
            Self::EulerAncestral => "euler_ancestral",
            Self::Heun => "heun",
            Self::Dpm2 => "dpm_2",
            Self::Dpm2Ancestral => "dpm_2_ancestral",
            Self::Dpmpp2sAncestral => "dpmpp_2s_ancestral",
            Self::Dpmpp2m => "dpmpp_2m",
            Self::Dpmpp2mSde => "dpmpp_2m_sde",
            Self::Dpmpp2mSdeHeun => "dpmpp_2m_sde_heun",
            Self::Ddpm => "ddpm",
            Self::Lcm => "lcm",
        }
    }

    /// The sampler of a ComfyUI name.
    pub fn from_name(name: &str) -> Result<Self, SamplingError> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| SamplingError::UnknownName {
                what: "sampler",
                name: name.to_owned(),
                known: Self::ALL.iter().map(|s| s.name()).collect(),
            })
    }

    /// ComfyUI's `DISCARD_PENULTIMATE_SIGMA_SAMPLERS`: the schedule gets a step more and loses its
    /// second-to-last sigma.
    pub fn discards_penultimate_sigma(self) -> bool {
        matches!(self, Self::Dpm2 | Self::Dpm2Ancestral)
    }

    /// Whether the sampler draws noise while it runs.
    pub fn is_stochastic(self) -> bool {
        matches!(
            self,
            Self::EulerAncestral
                | Self::Dpm2Ancestral
                | Self::Dpmpp2sAncestral
                | Self::Dpmpp2mSde
                | Self::Dpmpp2mSdeHeun
                | Self::Ddpm
                | Self::Lcm
        )
    }
}

/// The model as a sampler sees it: the denoised estimate of `x` at noise level `sigma`.
///
/// This is where the network, `calculate_input`/`calculate_denoised` and CFG live (see
/// [`CfgDenoiser`]). Closures `FnMut(Tensor, f32) -> Result<Tensor>`
/// are denoisers.
pub trait Denoiser<B: Backend> {
    /// The denoised estimate (ComfyUI's `model(x, sigma)` inside a sampler).
    fn denoise(&mut self, x: Tensor<B, 4>, sigma: f32) -> Result<Tensor<B, 4>, SamplingError>;
}

impl<B: Backend, F> Denoiser<B> for F
where
    F: FnMut(Tensor<B, 4>, f32) -> Result<Tensor<B, 4>, SamplingError>,
{
    fn denoise(&mut self, x: Tensor<B, 4>, sigma: f32) -> Result<Tensor<B, 4>, SamplingError> {
        self(x, sigma)
    }
}

/// What a sampler reports after each model evaluation of a step (ComfyUI's callback dict).
pub struct StepInfo<'a, B: Backend> {
    /// The step, from 0.
    pub step: usize,
    /// The number of steps (`len(sigmas) - 1`).
    pub total_steps: usize,
    /// The step's sigma.
    pub sigma: f32,
    /// The sigma the model saw.
    pub sigma_hat: f32,
    /// The latent before the step.
    pub x: &'a Tensor<B, 4>,
    /// The model's denoised estimate.
    pub denoised: &'a Tensor<B, 4>,
}

type StepCallback<'a, B> = Box<dyn FnMut(&StepInfo<'_, B>) + 'a>;

/// Progress and cancellation: called once per step, and asked before every model evaluation.
pub struct SamplerHooks<'a, B: Backend> {
    on_step: Option<StepCallback<'a, B>>,
    is_cancelled: Option<Box<dyn Fn() -> bool + 'a>>,
}

impl<B: Backend> Default for SamplerHooks<'_, B> {
    fn default() -> Self {
        Self {
            on_step: None,
            is_cancelled: None,
        }
    }
}

impl<'a, B: Backend> SamplerHooks<'a, B> {
    /// No progress reports, never cancelled.
    pub fn none() -> Self {
        Self::default()
    }

    /// Calls `on_step` after the first model evaluation of every step.
    pub fn on_step(mut self, on_step: impl FnMut(&StepInfo<'_, B>) + 'a) -> Self {
        self.on_step = Some(Box::new(on_step));
        self
    }

    /// Stops with [`SamplingError::Cancelled`] before the next model evaluation once
    /// `is_cancelled` returns true.
    pub fn cancel_when(mut self, is_cancelled: impl Fn() -> bool + 'a) -> Self {
        self.is_cancelled = Some(Box::new(is_cancelled));
        self
    }
}

/// One sampling run: which sampler, over which sigmas, for which model sampling.
pub struct SamplerRun<'a> {
    /// The sampler.
    pub sampler: SamplerKind,
    /// The model's sampling (parameterization and sigma table).
    pub model_sampling: &'a ModelSampling,
    /// The sigmas, largest first (see [`super::ksampler_sigmas`]).
    pub sigmas: &'a [f32],
    /// The KSampler seed: stochastic samplers seed their default noise from it.
    pub seed: u64,
}

impl SamplerRun<'_> {
    /// Samples from unit `noise` (`torch_randn(seed, shape)` for ComfyUI's KSampler) around
    /// `latent_image` (zeros for text-to-image), with ComfyUI's default noise sampler.
    pub fn run<B: Backend>(
        &self,
        denoiser: &mut dyn Denoiser<B>,
        noise: Tensor<B, 4>,
        latent_image: Tensor<B, 4>,
        hooks: &mut SamplerHooks<'_, B>,
    ) -> Result<Tensor<B, 4>, SamplingError> {
        let shape = latent_image.dims();
        let device = latent_image.device();
        // ComfyUI builds the tree over [min positive sigma, max sigma] of the schedule.
        let sigma_min = self
            .sigmas
            .iter()
            .copied()
            .filter(|&s| s > 0.0)
            .fold(f32::INFINITY, f32::min);
        let sigma_max = self.sigmas.iter().copied().fold(0.0, f32::max);
        let brownian = matches!(
            self.sampler,
            SamplerKind::Dpmpp2mSde | SamplerKind::Dpmpp2mSdeHeun
        );
        let mut noise_sampler: Box<dyn NoiseSampler<B>> =
            if brownian && sigma_min.is_finite() && sigma_max.is_finite() {
                Box::new(BrownianTreeNoiseSampler::new(
                    sigma_min, sigma_max, self.seed, shape, &device,
                ))
            } else {
                Box::new(TorchNoiseSampler::comfy_default(self.seed, shape, &device))
            };
        self.run_with_noise(denoiser, noise, latent_image, noise_sampler.as_mut(), hooks)
    }

    /// As [`run`](Self::run), with the given noise sampler for stochastic samplers.
    pub fn run_with_noise<B: Backend>(
        &self,
        denoiser: &mut dyn Denoiser<B>,
        noise: Tensor<B, 4>,
        latent_image: Tensor<B, 4>,
        noise_sampler: &mut dyn NoiseSampler<B>,
        hooks: &mut SamplerHooks<'_, B>,
    ) -> Result<Tensor<B, 4>, SamplingError> {
        if noise.dims() != latent_image.dims() {
            return Err(SamplingError::ShapeMismatch {
                what: "noise and latent image",
                expected: latent_image.dims().to_vec(),
                found: noise.dims().to_vec(),
            });
        }
        if let Some(bad) = self.sigmas.iter().find(|s| !s.is_finite() || **s < 0.0) {
            return Err(SamplingError::invalid(
                "sigmas",
                format!("{bad} is not a finite, non-negative sigma"),
            ));
        }
        let (Some(&first), Some(&last)) = (self.sigmas.first(), self.sigmas.last()) else {
            return Ok(latent_image);
        };
        let ms = self.model_sampling;
        let x = ms.noise_scaling(first, noise, latent_image, ms.max_denoise(first));
        let mut ctx = k_diffusion::Ctx {
            denoiser,
            hooks,
            model_sampling: ms,
            total_steps: self.sigmas.len() - 1,
        };
        let x = k_diffusion::sample(self.sampler, &mut ctx, x, self.sigmas, noise_sampler)?;
        Ok(ms.inverse_noise_scaling(last, x))
    }
}
