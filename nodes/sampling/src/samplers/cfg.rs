//! Classifier-free guidance around a raw model, as ComfyUI's `CFGGuider` and `sampling_function`:
//! the [`Denoiser`] a KSampler hands to the samplers.
//!
//! Per model call: the input is scaled for the model (`calculate_input`), the network sees it with
//! the timestep of sigma (`ModelSampling::timestep`), its output becomes a denoised estimate
//! (`calculate_denoised`) for the positive and — unless `cfg` is 1 — the negative conditioning,
//! and the two combine as `uncond + (cond - uncond) · cfg`. At `cfg == 1` (`math.isclose`) ComfyUI
//! skips the negative pass and returns the positive estimate unchanged; so does this.
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::Denoiser;
use crate::SamplingError;
use crate::model_sampling::ModelSampling;
use crate::torch_math::isclose;

/// Which conditioning a model pass uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guidance {
    /// The positive prompt.
    Positive,
    /// The negative prompt (the unconditional pass).
    Negative,
}

/// ComfyUI's CFG: `uncond + (cond - uncond) * cfg`, on denoised estimates.
pub fn cfg_combine<B: Backend>(cond: Tensor<B, 4>, uncond: Tensor<B, 4>, cfg: f32) -> Tensor<B, 4> {
    uncond.clone() + (cond - uncond).mul_scalar(cfg)
}

/// Whether ComfyUI skips the unconditional pass: `math.isclose(cfg, 1.0)`.
pub fn cfg_is_skipped(cfg: f64) -> bool {
    isclose(cfg, 1.0, 1e-9, 0.0)
}

/// A [`Denoiser`] from a raw model: `model(input, timestep, guidance)` returns the network's output
/// (noise, v or velocity, by the model sampling's parameterization).
pub struct CfgDenoiser<'a, F> {
    model_sampling: &'a ModelSampling,
    cfg: f64,
    model: F,
}

impl<'a, F> CfgDenoiser<'a, F> {
    /// Guides `model` with scale `cfg`.
    pub fn new(model_sampling: &'a ModelSampling, cfg: f64, model: F) -> Self {
        Self {
            model_sampling,
            cfg,
            model,
        }
    }
}

impl<B: Backend, F> Denoiser<B> for CfgDenoiser<'_, F>
where
    F: FnMut(Tensor<B, 4>, f32, Guidance) -> Result<Tensor<B, 4>, SamplingError>,
{
    fn denoise(&mut self, x: Tensor<B, 4>, sigma: f32) -> Result<Tensor<B, 4>, SamplingError> {
        let ms = self.model_sampling;
        let input = ms.calculate_input(sigma, x.clone());
        let timestep = ms.timestep(sigma);
        let cond = ms.calculate_denoised(
            sigma,
            (self.model)(input.clone(), timestep, Guidance::Positive)?,
            x.clone(),
        );
        if cfg_is_skipped(self.cfg) {
            return Ok(cond);
        }
        let uncond =
            ms.calculate_denoised(sigma, (self.model)(input, timestep, Guidance::Negative)?, x);
        Ok(cfg_combine(cond, uncond, self.cfg as f32))
    }
}
