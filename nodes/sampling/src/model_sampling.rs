//! ComfyUI's `model_sampling`: a model's sigma table and how sigma maps to its timestep, plus the
//! parameterization (EPS, V, CONST) that turns a model output into a denoised estimate.
//!
//! Three tables, as in `comfy/model_sampling.py`:
//! - [`ModelSampling::discrete`]: `ModelSamplingDiscrete`, 1000 DDPM steps from a beta schedule
//!   (SD 1.x, SDXL). Sigmas are computed in f64 and stored as f32, log-sigmas are `log` of the f64
//!   sigmas rounded to f32, as ComfyUI's `set_sigmas` does.
//! - [`ModelSampling::discrete_flow`]: `ModelSamplingDiscreteFlow` (`ModelSamplingSD3`, and
//!   `ModelSamplingAuraFlow` with multiplier 1), `sigma = shift·t / (1 + (shift - 1)·t)`.
//! - [`ModelSampling::flux`]: `ModelSamplingFlux`, `sigma = e^shift / (e^shift + 1/t - 1)` over
//!   10000 steps; [`flux_shift`] is the resolution-dependent shift of the `ModelSamplingFlux` node.
//!
//! Flow tables are pure float32 arithmetic in torch and are reproduced bit for bit.
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::SamplingError;
use super::torch_math::{self, linspace_f64};

/// How a model's output becomes a denoised estimate (ComfyUI's `EPS`, `V_PREDICTION`, `CONST`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parameterization {
    /// The model predicts the noise (SD 1.x, SDXL).
    Eps,
    /// The model predicts v (SD 2.x 768-v).
    VPrediction,
    /// Rectified flow: the model predicts the velocity, `x = (1 - sigma)·x0 + sigma·noise` (Flux, SD3).
    Const,
}

/// The beta schedule of a discrete (DDPM) model, under ComfyUI's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    /// ComfyUI's `"linear"` (diffusers' `scaled_linear`): linear in sqrt(beta). SD 1.x and SDXL.
    Linear,
    /// ComfyUI's `"sqrt_linear"` (diffusers' `linear`): linear in beta.
    SqrtLinear,
}

#[derive(Clone, Debug)]
enum Table {
    Discrete { log_sigmas: Vec<f32> },
    DiscreteFlow { shift: f64, multiplier: f64 },
    Flux { shift: f64 },
}

/// A model's sampling: its sigma table, the sigma ↔ timestep maps, and its parameterization.
#[derive(Clone, Debug)]
pub struct ModelSampling {
    parameterization: Parameterization,
    table: Table,
    sigmas: Vec<f32>,
}

/// The shift the `ModelSamplingFlux` node computes for an image size (defaults: max_shift 1.15,
/// base_shift 0.5): linear in the number of 2×2 latent patches, 0.5 at 256 and 1.15 at 4096.
pub fn flux_shift(width: u32, height: u32, max_shift: f64, base_shift: f64) -> f64 {
    let (x1, x2) = (256.0, 4096.0);
    let slope = (max_shift - base_shift) / (x2 - x1);
    let intercept = base_shift - slope * x1;
    (f64::from(width) * f64::from(height) / (8.0 * 8.0 * 2.0 * 2.0)) * slope + intercept
}

fn check_shift(shift: f64) -> Result<(), SamplingError> {
    if shift.is_finite() && shift > 0.0 {
        Ok(())
    } else {
        Err(SamplingError::invalid(
            "shift",
            format!("{shift} is not a positive number"),
        ))
    }
}

/// `time_snr_shift(alpha, t)` on a float32 tensor element, in torch's order.
fn time_snr_shift_f32(shift: f64, t: f32) -> f32 {
    if shift == 1.0 {
        return t;
    }
    (shift as f32 * t) / (1.0 + (shift - 1.0) as f32 * t)
}

/// `flux_time_shift(mu, 1.0, t)` on a float32 tensor element: `e^mu / (e^mu + (1/t - 1))`, where
/// the Python float divided by a tensor is `reciprocal(tensor) * e^mu`.
fn flux_time_shift_f32(mu: f64, t: f32) -> f32 {
    let e = mu.exp() as f32;
    let denominator = e + (1.0 / t - 1.0);
    (1.0 / denominator) * e
}

impl ModelSampling {
    /// `ModelSamplingDiscrete` with the given beta schedule.
    pub fn discrete(
        parameterization: Parameterization,
        schedule: BetaSchedule,
        timesteps: usize,
        linear_start: f64,
        linear_end: f64,
    ) -> Result<Self, SamplingError> {
        if timesteps < 2 {
            return Err(SamplingError::invalid(
                "timesteps",
                format!("{timesteps} is fewer than 2"),
            ));
        }
        let valid = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !valid(linear_start) || !valid(linear_end) {
            return Err(SamplingError::invalid(
                "betas",
                format!("{linear_start}..{linear_end} is not inside (0, 1)"),
            ));
        }
        let betas: Vec<f64> = match schedule {
            BetaSchedule::Linear => linspace_f64(linear_start.sqrt(), linear_end.sqrt(), timesteps)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            BetaSchedule::SqrtLinear => linspace_f64(linear_start, linear_end, timesteps),
        };
        let mut alphas_cumprod = 1.0;
        let mut sigmas = Vec::with_capacity(timesteps);
        let mut log_sigmas = Vec::with_capacity(timesteps);
        for beta in betas {
            alphas_cumprod *= 1.0 - beta;
            let sigma = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt();
            sigmas.push(sigma as f32);
            log_sigmas.push(sigma.ln() as f32);
        }
        Ok(Self {
            parameterization,
            table: Table::Discrete { log_sigmas },
            sigmas,
        })
    }

    /// SD 1.x / SDXL: EPS, ComfyUI's `"linear"` betas from 0.00085 to 0.012 over 1000 steps.
    pub fn sd1() -> Self {
        Self::discrete(
            Parameterization::Eps,
            BetaSchedule::Linear,
            1000,
            0.00085,
            0.012,
        )
        .unwrap_or_else(|_| unreachable!("a constant, valid schedule"))
    }

    /// `ModelSamplingDiscreteFlow` + `CONST`, as the `ModelSamplingSD3` node builds it (multiplier
    /// 1000; `ModelSamplingAuraFlow` uses 1.0).
    pub fn discrete_flow(shift: f64, multiplier: f64) -> Result<Self, SamplingError> {
        check_shift(shift)?;
        if !(multiplier.is_finite() && multiplier > 0.0) {
            return Err(SamplingError::invalid(
                "multiplier",
                format!("{multiplier} is not a positive number"),
            ));
        }
        let sigmas = (1..=1000u32)
            .map(|i| {
                let timestep = (i as f32 / 1000.0) * multiplier as f32;
                time_snr_shift_f32(shift, timestep / multiplier as f32)
            })
            .collect();
        Ok(Self {
            parameterization: Parameterization::Const,
            table: Table::DiscreteFlow { shift, multiplier },
            sigmas,
        })
    }

    /// `ModelSamplingFlux` + `CONST`. Flux dev's own default is shift 1.15, schnell's 1.0; the
    /// `ModelSamplingFlux` node sets [`flux_shift`] of the image size.
    pub fn flux(shift: f64) -> Result<Self, SamplingError> {
        check_shift(shift)?;
        let sigmas = (1..=10000u32)
            .map(|i| flux_time_shift_f32(shift, i as f32 / 10000.0))
            .collect();
        Ok(Self {
            parameterization: Parameterization::Const,
            table: Table::Flux { shift },
            sigmas,
        })
    }

    /// The parameterization.
    pub fn parameterization(&self) -> Parameterization {
        self.parameterization
    }

    /// Whether this is a rectified-flow model (ComfyUI: `isinstance(model_sampling, CONST)`).
    pub fn is_const(&self) -> bool {
        self.parameterization == Parameterization::Const
    }

    /// The sigma table, smallest first.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The smallest sigma of the table.
    pub fn sigma_min(&self) -> f32 {
        self.sigmas[0]
    }

    /// The largest sigma of the table.
    pub fn sigma_max(&self) -> f32 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// The model's timestep for a sigma (what the network is conditioned on). For a discrete
    /// model this is the index of the nearest log-sigma, as an integer-valued float.
    pub fn timestep(&self, sigma: f32) -> f32 {
        match &self.table {
            Table::Discrete { log_sigmas } => {
                let log_sigma = torch_math::ln(sigma);
                let mut best = (0usize, f32::INFINITY);
                for (i, &ls) in log_sigmas.iter().enumerate() {
                    let dist = (log_sigma - ls).abs();
                    if dist < best.1 {
                        best = (i, dist);
                    }
                }
                best.0 as f32
            }
            Table::DiscreteFlow { multiplier, .. } => sigma * *multiplier as f32,
            Table::Flux { .. } => sigma,
        }
    }

    /// The sigma of a (possibly fractional) timestep.
    pub fn sigma(&self, timestep: f32) -> f32 {
        match &self.table {
            Table::Discrete { log_sigmas } => {
                let t = timestep.clamp(0.0, (log_sigmas.len() - 1) as f32);
                let (low, high) = (t.floor() as usize, t.ceil() as usize);
                let w = t - t.trunc();
                let log_sigma = (1.0 - w) * log_sigmas[low] + w * log_sigmas[high];
                torch_math::exp(log_sigma)
            }
            Table::DiscreteFlow { shift, multiplier } => {
                time_snr_shift_f32(*shift, timestep / *multiplier as f32)
            }
            Table::Flux { shift } => flux_time_shift_f32(*shift, timestep),
        }
    }

    /// The sigma at which `percent` of the sampling is done (0 → the largest sigma).
    pub fn percent_to_sigma(&self, percent: f64) -> f64 {
        match &self.table {
            Table::Discrete { .. } => {
                if percent <= 0.0 {
                    return 999_999_999.9;
                }
                if percent >= 1.0 {
                    return 0.0;
                }
                f64::from(self.sigma(((1.0 - percent) * 999.0) as f32))
            }
            Table::DiscreteFlow { shift, .. } | Table::Flux { shift } => {
                if percent <= 0.0 {
                    return 1.0;
                }
                if percent >= 1.0 {
                    return 0.0;
                }
                let t = 1.0 - percent;
                match self.table {
                    Table::Flux { .. } => shift.exp() / (shift.exp() + (1.0 / t - 1.0)),
                    _ if *shift == 1.0 => t,
                    _ => shift * t / (1.0 + (shift - 1.0) * t),
                }
            }
        }
    }

    /// The model's input at noise level `sigma` (`calculate_input`): EPS and V models see
    /// `x / sqrt(sigma² + 1)`, flow models `x` itself.
    pub fn calculate_input<B: Backend>(&self, sigma: f32, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.parameterization {
            Parameterization::Eps | Parameterization::VPrediction => {
                x.div_scalar((sigma * sigma + 1.0).sqrt())
            }
            Parameterization::Const => x,
        }
    }

    /// The denoised estimate from the model's output (`calculate_denoised`).
    pub fn calculate_denoised<B: Backend>(
        &self,
        sigma: f32,
        model_output: Tensor<B, 4>,
        model_input: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        match self.parameterization {
            Parameterization::Eps | Parameterization::Const => {
                model_input - model_output.mul_scalar(sigma)
            }
            Parameterization::VPrediction => {
                let variance = sigma * sigma + 1.0;
                model_input.div_scalar(variance)
                    - model_output.mul_scalar(sigma).div_scalar(variance.sqrt())
            }
        }
    }

    /// The starting latent from unit noise (`noise_scaling`): EPS/V `noise·sigma + latent` (or
    /// `noise·sqrt(1 + sigma²) + latent` when starting from the largest sigma), flow models
    /// `sigma·noise + (1 - sigma)·latent`.
    pub fn noise_scaling<B: Backend>(
        &self,
        sigma: f32,
        noise: Tensor<B, 4>,
        latent_image: Tensor<B, 4>,
        max_denoise: bool,
    ) -> Tensor<B, 4> {
        match self.parameterization {
            Parameterization::Eps | Parameterization::VPrediction => {
                let scale = if max_denoise {
                    (1.0 + sigma * sigma).sqrt()
                } else {
                    sigma
                };
                noise.mul_scalar(scale) + latent_image
            }
            Parameterization::Const => {
                noise.mul_scalar(sigma) + latent_image.mul_scalar(1.0 - sigma)
            }
        }
    }

    /// Undoes [`noise_scaling`](Self::noise_scaling) at the end of sampling (`inverse_noise_scaling`).
    pub fn inverse_noise_scaling<B: Backend>(
        &self,
        sigma: f32,
        latent: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        match self.parameterization {
            Parameterization::Eps | Parameterization::VPrediction => latent,
            Parameterization::Const => latent.div_scalar(1.0 - sigma),
        }
    }

    /// ComfyUI's `Sampler.max_denoise`: whether sampling starts at (or above) the largest sigma.
    pub fn max_denoise(&self, first_sigma: f32) -> bool {
        let (max, first) = (f64::from(self.sigma_max()), f64::from(first_sigma));
        torch_math::isclose(max, first, 1e-5, 0.0) || first > max
    }
}
