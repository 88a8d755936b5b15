//! ComfyUI's schedulers (`SCHEDULER_HANDLERS` in `comfy/samplers.py`): the sigmas of a run, from
//! the largest to a final 0, and `KSampler.set_steps`' handling of `denoise < 1`.
//!
//! Each follows ComfyUI's arithmetic: Python-float (f64) expressions stay f64, torch float32
//! tensor expressions are evaluated in f32 in the same order, and the list goes through
//! `torch.FloatTensor` (one rounding to f32) where ComfyUI's does.
use super::SamplingError;
use super::beta_dist::beta_ppf;
use super::model_sampling::ModelSampling;
use super::samplers::SamplerKind;
use super::torch_math::{self, isclose, linspace_f32};

/// The most steps a schedule may have (ComfyUI's KSampler allows 10000; `denoise` multiplies them).
pub const MAX_STEPS: usize = 1_000_000;

/// A ComfyUI scheduler, by its `scheduler` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheduler {
    /// `simple`: evenly spaced entries of the model's sigma table.
    Simple,
    /// `sgm_uniform`: `normal` without its last timestep.
    SgmUniform,
    /// `karras`: Karras et al. (2022), rho = 7, between the table's extremes.
    Karras,
    /// `exponential`: evenly spaced in log sigma.
    Exponential,
    /// `ddim_uniform`: every n-th table entry from the start.
    DdimUniform,
    /// `beta`: table entries at Beta(0.6, 0.6) quantiles (arXiv 2407.12173).
    Beta,
    /// `normal`: evenly spaced timesteps.
    Normal,
    /// `linear_quadratic`: Mochi's schedule, linear then quadratic.
    LinearQuadratic,
    /// `kl_optimal`: evenly spaced in arctan sigma.
    KlOptimal,
}

impl Scheduler {
    /// Every scheduler, in ComfyUI's order.
    pub const ALL: [Scheduler; 9] = [
        Self::Simple,
        Self::SgmUniform,
        Self::Karras,
        Self::Exponential,
        Self::DdimUniform,
        Self::Beta,
        Self::Normal,
        Self::LinearQuadratic,
        Self::KlOptimal,
    ];

    /// The ComfyUI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::SgmUniform => "sgm_uniform",
            Self::Karras => "karras",
            Self::Exponential => "exponential",
            Self::DdimUniform => "ddim_uniform",
            Self::Beta => "beta",
            Self::Normal => "normal",
            Self::LinearQuadratic => "linear_quadratic",
            Self::KlOptimal => "kl_optimal",
        }
    }

    /// The scheduler of a ComfyUI name.
    pub fn from_name(name: &str) -> Result<Self, SamplingError> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| SamplingError::UnknownName {
                what: "scheduler",
                name: name.to_owned(),
                known: Self::ALL.iter().map(|s| s.name()).collect(),
            })
    }

    /// `calculate_sigmas(model_sampling, scheduler, steps)`: the run's sigmas, ending in 0.
    pub fn sigmas(self, ms: &ModelSampling, steps: usize) -> Result<Vec<f32>, SamplingError> {
        if steps == 0 || steps > MAX_STEPS {
            return Err(SamplingError::invalid(
                "steps",
                format!("{steps} is not in 1..={MAX_STEPS}"),
            ));
        }
        let (sigma_min, sigma_max) = (f64::from(ms.sigma_min()), f64::from(ms.sigma_max()));
        Ok(match self {
            Self::Simple => simple(ms, steps),
            Self::SgmUniform => normal(ms, steps, true),
            Self::Karras => karras(steps, sigma_min, sigma_max, 7.0),
            Self::Exponential => exponential(steps, sigma_min, sigma_max),
            Self::DdimUniform => ddim_uniform(ms, steps),
            Self::Beta => beta(ms, steps, 0.6, 0.6),
            Self::Normal => normal(ms, steps, false),
            Self::LinearQuadratic => linear_quadratic(ms, steps, 0.025),
            Self::KlOptimal => {
                if steps < 2 {
                    return Err(SamplingError::invalid(
                        "steps",
                        "kl_optimal needs at least 2 steps (ComfyUI divides by steps - 1)",
                    ));
                }
                kl_optimal(steps, sigma_min, sigma_max)
            }
        })
    }
}

/// `KSampler.set_steps` + `calculate_sigmas`: the sigmas a ComfyUI KSampler runs. With
/// `denoise < 1` the schedule is made for `int(steps / denoise)` steps and its last `steps + 1`
/// sigmas are kept; `denoise <= 0` gives no sigmas (the latent passes through unchanged).
/// Samplers that discard the penultimate sigma (`dpm_2`, `dpm_2_ancestral`) get one step more.
pub fn ksampler_sigmas(
    ms: &ModelSampling,
    scheduler: Scheduler,
    sampler: SamplerKind,
    steps: usize,
    denoise: f64,
) -> Result<Vec<f32>, SamplingError> {
    if denoise.is_nan() {
        return Err(SamplingError::invalid("denoise", "is NaN"));
    }
    let calculate = |steps: usize| -> Result<Vec<f32>, SamplingError> {
        if !sampler.discards_penultimate_sigma() {
            return scheduler.sigmas(ms, steps);
        }
        let mut sigmas = scheduler.sigmas(ms, steps + 1)?;
        let last = sigmas.pop().unwrap_or(0.0);
        sigmas.pop();
        sigmas.push(last);
        Ok(sigmas)
    };
    if denoise > 0.9999 {
        return calculate(steps);
    }
    if denoise <= 0.0 {
        return Ok(Vec::new());
    }
    let new_steps = steps as f64 / denoise;
    if new_steps > MAX_STEPS as f64 {
        return Err(SamplingError::invalid(
            "denoise",
            format!("{denoise} stretches {steps} steps past {MAX_STEPS}"),
        ));
    }
    let new_steps = new_steps as usize;
    let sigmas = calculate(new_steps)?;
    let keep = (steps + 1).min(sigmas.len());
    Ok(sigmas[sigmas.len() - keep..].to_vec())
}

fn simple(ms: &ModelSampling, steps: usize) -> Vec<f32> {
    let table = ms.sigmas();
    let stride = table.len() as f64 / steps as f64;
    let mut sigmas: Vec<f32> = (0..steps)
        .map(|x| table[table.len() - 1 - (x as f64 * stride) as usize])
        .collect();
    sigmas.push(0.0);
    sigmas
}

fn normal(ms: &ModelSampling, steps: usize, sgm: bool) -> Vec<f32> {
    let start = ms.timestep(ms.sigma_max());
    let end = ms.timestep(ms.sigma_min());
    let mut append_zero = true;
    let timesteps = if sgm {
        let mut t = linspace_f32(start, end, steps + 1);
        t.pop();
        t
    } else {
        let mut steps = steps;
        if isclose(f64::from(ms.sigma(end)), 0.0, 1e-9, 0.00001) {
            steps += 1;
            append_zero = false;
        }
        linspace_f32(start, end, steps)
    };
    let mut sigmas: Vec<f32> = timesteps.into_iter().map(|t| ms.sigma(t)).collect();
    if append_zero {
        sigmas.push(0.0);
    }
    sigmas
}

/// `get_sigmas_karras`: `(max^(1/rho) + ramp·(min^(1/rho) - max^(1/rho)))^rho` over a float32 ramp.
pub fn karras(steps: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f32> {
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    let span = (min_inv_rho - max_inv_rho) as f32;
    let mut sigmas: Vec<f32> = linspace_f32(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| torch_math::powf(ramp * span + max_inv_rho as f32, rho))
        .collect();
    sigmas.push(0.0);
    sigmas
}

/// `get_sigmas_exponential`: `exp` of a float32 linspace from `ln sigma_max` to `ln sigma_min`.
pub fn exponential(steps: usize, sigma_min: f64, sigma_max: f64) -> Vec<f32> {
    let mut sigmas: Vec<f32> = linspace_f32(sigma_max.ln() as f32, sigma_min.ln() as f32, steps)
        .into_iter()
        .map(torch_math::exp)
        .collect();
    sigmas.push(0.0);
    sigmas
}

fn ddim_uniform(ms: &ModelSampling, steps: usize) -> Vec<f32> {
    let table = ms.sigmas();
    let mut steps = steps;
    let mut sigmas = if isclose(f64::from(table[1]), 0.0, 1e-9, 0.00001) {
        steps += 1;
        Vec::new()
    } else {
        vec![0.0]
    };
    let stride = (table.len() / steps).max(1);
    sigmas.extend(table.iter().skip(1).step_by(stride));
    sigmas.reverse();
    sigmas
}

fn beta(ms: &ModelSampling, steps: usize, alpha: f64, beta: f64) -> Vec<f32> {
    let table = ms.sigmas();
    let total_timesteps = (table.len() - 1) as f64;
    let step = 1.0 / steps as f64;
    let mut sigmas = Vec::with_capacity(steps + 1);
    let mut last_t = -1.0;
    for i in 0..steps {
        let q = 1.0 - i as f64 * step;
        let t = (beta_ppf(q, alpha, beta) * total_timesteps).round_ties_even();
        if t != last_t {
            sigmas.push(table[t as usize]);
        }
        last_t = t;
    }
    sigmas.push(0.0);
    sigmas
}

fn linear_quadratic(ms: &ModelSampling, steps: usize, threshold_noise: f64) -> Vec<f32> {
    let schedule: Vec<f64> = if steps == 1 {
        vec![1.0, 0.0]
    } else {
        let linear_steps = steps / 2;
        let (ls, n) = (linear_steps as f64, steps as f64);
        let mut schedule: Vec<f64> = (0..linear_steps)
            .map(|i| i as f64 * threshold_noise / ls)
            .collect();
        let step_diff = ls - threshold_noise * n;
        let quadratic_steps = (steps - linear_steps) as f64;
        let quadratic_coef = step_diff / (ls * quadratic_steps.powi(2));
        let linear_coef = threshold_noise / ls - 2.0 * step_diff / quadratic_steps.powi(2);
        let constant = quadratic_coef * ls.powi(2);
        schedule.extend((linear_steps..steps).map(|i| {
            let i = i as f64;
            quadratic_coef * (i * i) + linear_coef * i + constant
        }));
        schedule.push(1.0);
        schedule.into_iter().map(|x| 1.0 - x).collect()
    };
    let sigma_max = ms.sigma_max();
    schedule.into_iter().map(|s| s as f32 * sigma_max).collect()
}

fn kl_optimal(steps: usize, sigma_min: f64, sigma_max: f64) -> Vec<f32> {
    let (atan_min, atan_max) = (sigma_min.atan() as f32, sigma_max.atan() as f32);
    let mut sigmas: Vec<f32> = (0..steps)
        .map(|i| {
            let w = i as f32 / (steps - 1) as f32;
            torch_math::tan(w * atan_min + (1.0 - w) * atan_max)
        })
        .collect();
    sigmas.push(0.0);
    sigmas
}
