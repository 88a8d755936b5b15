//! The sampler loops of ComfyUI's `comfy/k_diffusion/sampling.py`, one function each.
//!
//! Each mirrors its Python counterpart statement by statement: scalars are float32 0-d tensors in
//! ComfyUI, so they are f32 here, combined in the same order; `eta = 1` and `s_noise = 1`, the
//! KSampler's values. Multiplying a tensor by `s_noise = 1.0` is exact, so it is left out.
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{Denoiser, NoiseSampler, SamplerHooks, SamplerKind, StepInfo};
use crate::SamplingError;
use crate::model_sampling::ModelSampling;
use crate::torch_math::{exp, expm1, ln};

const ETA: f32 = 1.0;

/// What every loop needs: the model, the hooks, the model sampling.
pub(super) struct Ctx<'a, 'h, B: Backend> {
    pub denoiser: &'a mut dyn Denoiser<B>,
    pub hooks: &'a mut SamplerHooks<'h, B>,
    pub model_sampling: &'a ModelSampling,
    pub total_steps: usize,
}

impl<B: Backend> Ctx<'_, '_, B> {
    fn denoise(&mut self, x: &Tensor<B, 4>, sigma: f32) -> Result<Tensor<B, 4>, SamplingError> {
        if self
            .hooks
            .is_cancelled
            .as_ref()
            .is_some_and(|cancelled| cancelled())
        {
            return Err(SamplingError::Cancelled);
        }
        self.denoiser.denoise(x.clone(), sigma)
    }

    fn report(
        &mut self,
        step: usize,
        sigma: f32,
        sigma_hat: f32,
        x: &Tensor<B, 4>,
        denoised: &Tensor<B, 4>,
    ) {
        if let Some(on_step) = self.hooks.on_step.as_mut() {
            on_step(&StepInfo {
                step,
                total_steps: self.total_steps,
                sigma,
                sigma_hat,
                x,
                denoised,
            });
        }
    }
}

/// Runs `kind` from the already noise-scaled `x`.
pub(super) fn sample<B: Backend>(
    kind: SamplerKind,
    ctx: &mut Ctx<'_, '_, B>,
    x: Tensor<B, 4>,
    sigmas: &[f32],
    noise: &mut dyn NoiseSampler<B>,
) -> Result<Tensor<B, 4>, SamplingError> {
    let flow = ctx.model_sampling.is_const();
    match kind {
        SamplerKind::Euler => euler(ctx, x, sigmas),
        SamplerKind::EulerAncestral if flow => euler_ancestral_rf(ctx, x, sigmas, noise),
        SamplerKind::EulerAncestral => euler_ancestral(ctx, x, sigmas, noise),
        SamplerKind::Heun => heun(ctx, x, sigmas),
        SamplerKind::Dpm2 => dpm_2(ctx, x, sigmas),
        SamplerKind::Dpm2Ancestral => dpm_2_ancestral(ctx, x, sigmas, noise, flow),
        SamplerKind::Dpmpp2sAncestral if flow => dpmpp_2s_ancestral_rf(ctx, x, sigmas, noise),
        SamplerKind::Dpmpp2sAncestral => dpmpp_2s_ancestral(ctx, x, sigmas, noise),
        SamplerKind::Dpmpp2m => dpmpp_2m(ctx, x, sigmas),
        SamplerKind::Dpmpp2mSde => dpmpp_2m_sde(ctx, x, sigmas, noise, false),
        SamplerKind::Dpmpp2mSdeHeun => dpmpp_2m_sde(ctx, x, sigmas, noise, true),
        SamplerKind::Ddpm => ddpm(ctx, x, sigmas, noise),
        SamplerKind::Lcm => lcm(ctx, x, sigmas, noise),
    }
}

/// `to_d`: the Karras ODE derivative `(x - denoised) / sigma`.
fn to_d<B: Backend>(x: &Tensor<B, 4>, sigma: f32, denoised: &Tensor<B, 4>) -> Tensor<B, 4> {
    (x.clone() - denoised.clone()).div_scalar(sigma)
}

/// `get_ancestral_step`: the sigma to step down to and the noise to add back.
fn ancestral_step(sigma_from: f32, sigma_to: f32, eta: f32) -> (f32, f32) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
    let up = eta * ((to2 * (from2 - to2)) / from2).sqrt();
    let sigma_up = if up < sigma_to { up } else { sigma_to };
    let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
    (sigma_down, sigma_up)
}

/// The rectified-flow ancestral step: `(sigma_down, alpha_ratio, renoise_coeff)`.
fn ancestral_step_rf(sigma: f32, sigma_next: f32, eta: f32) -> (f32, f32, f32) {
    let downstep_ratio = 1.0 + (sigma_next / sigma - 1.0) * eta;
    let sigma_down = sigma_next * downstep_ratio;
    let alpha_next = 1.0 - sigma_next;
    let alpha_down = 1.0 - sigma_down;
    let renoise = (sigma_next * sigma_next
        - (sigma_down * sigma_down * (alpha_next * alpha_next)) / (alpha_down * alpha_down))
        .sqrt();
    (sigma_down, alpha_next / alpha_down, renoise)
}

/// `torch.lerp(start, end, 0.5)`: weights of at least 0.5 use `end - (end - start) * (1 - w)`.
fn lerp_half(start: f32, end: f32) -> f32 {
    end - (end - start) * 0.5
}

fn euler<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
) -> Result<Tensor<B, 4>, SamplingError> {
    for i in 0..sigmas.len() - 1 {
        let sigma_hat = sigmas[i];
        let denoised = ctx.denoise(&x, sigma_hat)?;
        let d = to_d(&x, sigma_hat, &denoised);
        ctx.report(i, sigmas[i], sigma_hat, &x, &denoised);
        let dt = sigmas[i + 1] - sigma_hat;
        x = x + d.mul_scalar(dt);
    }
    Ok(x)
}

fn euler_ancestral<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
    noise: &mut dyn NoiseSampler<B>,
) -> Result<Tensor<B, 4>, SamplingError> {
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        let (sigma_down, sigma_up) = ancestral_step(sigmas[i], sigmas[i + 1], ETA);
        ctx.report(i, sigmas[i], sigmas[i], &x, &denoised);
        if sigma_down == 0.0 {
            x = denoised;
        } else {
            let d = to_d(&x, sigmas[i], &denoised);
            let dt = sigma_down - sigmas[i];
            x = x + d.mul_scalar(dt) + noise.sample(sigmas[i], sigmas[i + 1])?.mul_scalar(sigma_up);
        }
    }
    Ok(x)
}

fn euler_ancestral_rf<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
    noise: &mut dyn NoiseSampler<B>,
) -> Result<Tensor<B, 4>, SamplingError> {
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        ctx.report(i, sigmas[i], sigmas[i], &x, &denoised);
        if sigmas[i + 1] == 0.0 {
            x = denoised;
        } else {
            let (sigma_down, alpha_ratio, renoise) =
                ancestral_step_rf(sigmas[i], sigmas[i + 1], ETA);
            let ratio = sigma_down / sigmas[i];
            x = x.mul_scalar(ratio) + denoised.mul_scalar(1.0 - ratio);
            if ETA > 0.0 {
                x = x.mul_scalar(alpha_ratio)
                    + noise.sample(sigmas[i], sigmas[i + 1])?.mul_scalar(renoise);
            }
        }
    }
    Ok(x)
}

fn heun<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
) -> Result<Tensor<B, 4>, SamplingError> {
    for i in 0..sigmas.len() - 1 {
        let sigma_hat = sigmas[i];
        let denoised = ctx.denoise(&x, sigma_hat)?;
        let d = to_d(&x, sigma_hat, &denoised);
        ctx.report(i, sigmas[i], sigma_hat, &x, &denoised);
        let dt = sigmas[i + 1] - sigma_hat;
        if sigmas[i + 1] == 0.0 {
            x = x + d.mul_scalar(dt);
        } else {
            let x_2 = x.clone() + d.clone().mul_scalar(dt);
            let denoised_2 = ctx.denoise(&x_2, sigmas[i + 1])?;
            let d_2 = to_d(&x_2, sigmas[i + 1], &denoised_2);
            let d_prime = (d + d_2).div_scalar(2.0);
            x = x + d_prime.mul_scalar(dt);
        }
    }
    Ok(x)
}

/// The DPM-Solver-2 midpoint step from `sigma` to `sigma_to`, given the derivative `d` at `sigma`.
fn dpm_2_step<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    x: Tensor<B, 4>,
    d: Tensor<B, 4>,
    sigma: f32,
    sigma_to: f32,
) -> Result<Tensor<B, 4>, SamplingError> {
    let sigma_mid = exp(lerp_half(ln(sigma), ln(sigma_to)));
    let dt_1 = sigma_mid - sigma;
    let dt_2 = sigma_to - sigma;
    let x_2 = x.clone() + d.mul_scalar(dt_1);
    let denoised_2 = ctx.denoise(&x_2, sigma_mid)?;
    let d_2 = to_d(&x_2, sigma_mid, &denoised_2);
    Ok(x + d_2.mul_scalar(dt_2))
}

fn dpm_2<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
) -> Result<Tensor<B, 4>, SamplingError> {
    for i in 0..sigmas.len() - 1 {
        let sigma_hat = sigmas[i];
        let denoised = ctx.denoise(&x, sigma_hat)?;
        let d = to_d(&x, sigma_hat, &denoised);
        ctx.report(i, sigmas[i], sigma_hat, &x, &denoised);
        if sigmas[i + 1] == 0.0 {
            let dt = sigmas[i + 1] - sigma_hat;
            x = x + d.mul_scalar(dt);
        } else {
            x = dpm_2_step(ctx, x, d, sigma_hat, sigmas[i + 1])?;
        }
    }
    Ok(x)
}

fn dpm_2_ancestral<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
    noise: &mut dyn NoiseSampler<B>,
    flow: bool,
) -> Result<Tensor<B, 4>, SamplingError> {
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        let (sigma_down, alpha_ratio, renoise) = if flow {
            ancestral_step_rf(sigmas[i], sigmas[i + 1], ETA)
        } else {
            let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1], ETA);
            (down, 1.0, up)
        };
        ctx.report(i, sigmas[i], sigmas[i], &x, &denoised);
        let d = to_d(&x, sigmas[i], &denoised);
        if sigma_down == 0.0 {
            let dt = sigma_down - sigmas[i];
            x = x + d.mul_scalar(dt);
        } else {
            x = dpm_2_step(ctx, x, d, sigmas[i], sigma_down)?;
            let renoised = noise.sample(sigmas[i], sigmas[i + 1])?.mul_scalar(renoise);
            x = if flow {
                x.mul_scalar(alpha_ratio) + renoised
            } else {
                x + renoised
            };
        }
    }
    Ok(x)
}

fn dpmpp_2s_ancestral<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
    noise: &mut dyn NoiseSampler<B>,
) -> Result<Tensor<B, 4>, SamplingError> {
    let t_fn = |sigma: f32| -ln(sigma);
    let sigma_fn = |t: f32| exp(-t);
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        let (sigma_down, sigma_up) = ancestral_step(sigmas[i], sigmas[i + 1], ETA);
        ctx.report(i, sigmas[i], sigmas[i], &x, &denoised);
        if sigma_down == 0.0 {
            let d = to_d(&x, sigmas[i], &denoised);
            let dt = sigma_down - sigmas[i];
            x = x + d.mul_scalar(dt);
        } else {
            let (t, t_next) = (t_fn(sigmas[i]), t_fn(sigma_down));
            let h = t_next - t;
            let s = t + 0.5 * h;
            let x_2 = x.clone().mul_scalar(sigma_fn(s) / sigma_fn(t))
                - denoised.mul_scalar(expm1(-h * 0.5));
            let denoised_2 = ctx.denoise(&x_2, sigma_fn(s))?;
            x = x.mul_scalar(sigma_fn(t_next) / sigma_fn(t)) - denoised_2.mul_scalar(expm1(-h));
        }
        if sigmas[i + 1] > 0.0 {
            x = x + noise.sample(sigmas[i], sigmas[i + 1])?.mul_scalar(sigma_up);
        }
    }
    Ok(x)
}

fn dpmpp_2s_ancestral_rf<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
    noise: &mut dyn NoiseSampler<B>,
) -> Result<Tensor<B, 4>, SamplingError> {
    let lambda_fn = |sigma: f32| ln((1.0 - sigma) / sigma);
    let sigma_fn = |lambda: f32| 1.0 / (exp(lambda) + 1.0);
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        let (sigma_down, alpha_ratio, renoise) = ancestral_step_rf(sigmas[i], sigmas[i + 1], ETA);
        ctx.report(i, sigmas[i], sigmas[i], &x, &denoised);
        if sigmas[i + 1] == 0.0 {
            let d = to_d(&x, sigmas[i], &denoised);
            let dt = sigma_down - sigmas[i];
            x = x + d.mul_scalar(dt);
        } else {
            // At sigma 1 ComfyUI takes the Python float 0.9999, so `0.9999 / sigma` is
            // `reciprocal(sigma) * 0.9999` in torch.
            let (sigma_s, ratio) = if sigmas[i] == 1.0 {
                (0.9999f32, (1.0 / sigmas[i]) * 0.9999)
            } else {
                let (t_i, t_down) = (lambda_fn(sigmas[i]), lambda_fn(sigma_down));
                let h = t_down - t_i;
                let sigma_s = sigma_fn(t_i + 0.5 * h);
                (sigma_s, sigma_s / sigmas[i])
            };
            let u = x.clone().mul_scalar(ratio) + denoised.mul_scalar(1.0 - ratio);
            let denoised_2 = ctx.denoise(&u, sigma_s)?;
            let down_ratio = sigma_down / sigmas[i];
            x = x.mul_scalar(down_ratio) + denoised_2.mul_scalar(1.0 - down_ratio);
        }
        if sigmas[i + 1] > 0.0 && ETA > 0.0 {
            x = x.mul_scalar(alpha_ratio)
                + noise.sample(sigmas[i], sigmas[i + 1])?.mul_scalar(renoise);
        }
    }
    Ok(x)
}

fn dpmpp_2m<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
) -> Result<Tensor<B, 4>, SamplingError> {
    let t_fn = |sigma: f32| -ln(sigma);
    let sigma_fn = |t: f32| exp(-t);
    let mut old_denoised: Option<Tensor<B, 4>> = None;
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        ctx.report(i, sigmas[i], sigmas[i], &x, &denoised);
        let (t, t_next) = (t_fn(sigmas[i]), t_fn(sigmas[i + 1]));
        let h = t_next - t;
        let ratio = sigma_fn(t_next) / sigma_fn(t);
        let step = expm1(-h);
        x = match old_denoised.take() {
            Some(old) if sigmas[i + 1] != 0.0 => {
                let h_last = t - t_fn(sigmas[i - 1]);
                let r = h_last / h;
                let c_old = 1.0 / (2.0 * r);
                let c_new = 1.0 + c_old;
                let denoised_d = denoised.clone().mul_scalar(c_new) - old.mul_scalar(c_old);
                x.mul_scalar(ratio) - denoised_d.mul_scalar(step)
            }
            _ => x.mul_scalar(ratio) - denoised.clone().mul_scalar(step),
        };
        old_denoised = Some(denoised);
    }
    Ok(x)
}

fn dpmpp_2m_sde<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
    noise: &mut dyn NoiseSampler<B>,
    heun: bool,
) -> Result<Tensor<B, 4>, SamplingError> {
    let ms = ctx.model_sampling;
    let flow = ms.is_const();
    // sigma_to_half_log_snr: -logit(sigma) for flow models, -log(sigma) otherwise.
    let lambda_fn = |sigma: f32| {
        if flow {
            -ln(sigma / (1.0 - sigma))
        } else {
            -ln(sigma)
        }
    };
    // offset_first_sigma_for_snr: a flow schedule starting at sigma 1 has an infinite half-logSNR.
    let mut sigmas = sigmas.to_vec();
    if flow && sigmas.len() > 1 && sigmas[0] >= 1.0 {
        sigmas[0] = ms.percent_to_sigma(1e-4) as f32;
    }
    let mut old_denoised: Option<Tensor<B, 4>> = None;
    let (mut h, mut h_last) = (0.0f32, 0.0f32);
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, sigma)?;
        ctx.report(i, sigma, sigma, &x, &denoised);
        if sigma_next == 0.0 {
            x = denoised.clone();
        } else {
            let (lambda_s, lambda_t) = (lambda_fn(sigma), lambda_fn(sigma_next));
            h = lambda_t - lambda_s;
            let h_eta = h * (ETA + 1.0);
            let alpha_t = sigma_next * exp(lambda_t);
            let neg_expm1 = -expm1(-h_eta);
            x = x.mul_scalar(sigma_next / sigma * exp(-h * ETA))
                + denoised.clone().mul_scalar(alpha_t * neg_expm1);
            if let Some(old) = &old_denoised {
                let r = h_last / h;
                let coeff = if heun {
                    alpha_t * (neg_expm1 / -h_eta + 1.0) * (1.0 / r)
                } else {
                    0.5 * alpha_t * neg_expm1 * (1.0 / r)
                };
                x = x + (denoised.clone() - old.clone()).mul_scalar(coeff);
            }
            let scale = (-expm1(-2.0 * h * ETA)).sqrt();
            x = x + noise
                .sample(sigma, sigma_next)?
                .mul_scalar(sigma_next)
                .mul_scalar(scale);
        }
        old_denoised = Some(denoised);
        h_last = h;
    }
    Ok(x)
}

fn ddpm<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
    noise: &mut dyn NoiseSampler<B>,
) -> Result<Tensor<B, 4>, SamplingError> {
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_prev) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, sigma)?;
        ctx.report(i, sigma, sigma, &x, &denoised);
        let eps = (x.clone() - denoised).div_scalar(sigma);
        let x_scaled = x.div_scalar((1.0 + sigma * sigma).sqrt());
        // DDPMSampler_step
        let alpha_cumprod = 1.0 / (sigma * sigma + 1.0);
        let alpha_cumprod_prev = 1.0 / (sigma_prev * sigma_prev + 1.0);
        let alpha = alpha_cumprod / alpha_cumprod_prev;
        let mut mu = (x_scaled
            - eps
                .mul_scalar(1.0 - alpha)
                .div_scalar((1.0 - alpha_cumprod).sqrt()))
        .mul_scalar((1.0 / alpha).sqrt());
        if sigma_prev > 0.0 {
            let scale = ((1.0 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt();
            mu = mu + noise.sample(sigma, sigma_prev)?.mul_scalar(scale);
        }
        x = mu;
        if sigma_prev != 0.0 {
            x = x.mul_scalar((1.0 + sigma_prev * sigma_prev).sqrt());
        }
    }
    Ok(x)
}

fn lcm<B: Backend>(
    ctx: &mut Ctx<'_, '_, B>,
    mut x: Tensor<B, 4>,
    sigmas: &[f32],
    noise: &mut dyn NoiseSampler<B>,
) -> Result<Tensor<B, 4>, SamplingError> {
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        ctx.report(i, sigmas[i], sigmas[i], &x, &denoised);
        x = denoised;
        if sigmas[i + 1] > 0.0 {
            let fresh = noise.sample(sigmas[i], sigmas[i + 1])?;
            x = ctx
                .model_sampling
                .noise_scaling(sigmas[i + 1], fresh, x, false);
        }
    }
    Ok(x)
}
