//! The noise stochastic samplers add between steps: the [`NoiseSampler`] trait and ComfyUI's
//! default, [`TorchNoiseSampler`] (the Brownian tree is the other one, in [`crate::brownian`]).
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::SamplingError;
use super::torch_rng::TorchGenerator;

/// The noise a stochastic sampler adds between `sigma` and `sigma_next`, unit variance.
pub trait NoiseSampler<B: Backend> {
    /// Noise of the latent's shape for the step from `sigma` to `sigma_next`.
    fn sample(&mut self, sigma: f32, sigma_next: f32) -> Result<Tensor<B, 4>, SamplingError>;
}

/// ComfyUI's `default_noise_sampler` on the CPU: `torch.randn(shape, generator=g)` per call, from a
/// generator seeded once.
pub struct TorchNoiseSampler<B: Backend> {
    generator: TorchGenerator,
    shape: [usize; 4],
    device: B::Device,
}

impl<B: Backend> TorchNoiseSampler<B> {
    /// A sampler whose generator is seeded with `seed` exactly.
    pub fn new(seed: u64, shape: [usize; 4], device: &B::Device) -> Self {
        Self {
            generator: TorchGenerator::manual_seed(seed),
            shape,
            device: device.clone(),
        }
    }

    /// `default_noise_sampler(x, seed)` for a CPU tensor: the generator is seeded with `seed + 1`.
    pub fn comfy_default(seed: u64, shape: [usize; 4], device: &B::Device) -> Self {
        Self::new(seed.wrapping_add(1), shape, device)
    }
}

impl<B: Backend> NoiseSampler<B> for TorchNoiseSampler<B> {
    fn sample(&mut self, _sigma: f32, _sigma_next: f32) -> Result<Tensor<B, 4>, SamplingError> {
        let values = self.generator.randn(&self.shape);
        Ok(Tensor::from_data(
            TensorData::new(values, self.shape),
            &self.device,
        ))
    }
}
