//! The Flux half of `weft bench model` and `weft bench synth-flux` ([`FluxBench`]): the network
//! built from the loaded patcher as `KSampler` builds it, random conditioning and latent, and
//! Euler flow-matching steps through [`Flux::forward_latent`].
use crate::bench_model::{BenchError, BenchInputs, DenoiseBench, ModelBench};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use std::path::Path;
use weft_engine::patcher::{LoadOptions, ModelPatcher};
use weft_models::flux::synthetic::{SynthQuant, SynthShape, write_synthetic_flux};
use weft_models::flux::{Flux, FluxConditioning};
use weft_models::patcher_source::PatcherSource;
use weft_nodes::loaders::load_options;
use weft_sampling::prepare_noise;

/// Flux for `weft bench model` / `weft bench synth-flux` (what [`crate::main_with`] passes).
pub struct FluxBench;

/// The guidance dev models get (ComfyUI's default for Flux).
const GUIDANCE: f32 = 3.5;

impl ModelBench for FluxBench {
    fn load_options(&self, weight_dtype: DType) -> LoadOptions {
        load_options(weight_dtype)
    }

    fn prepare<B: Backend>(
        &self,
        patcher: &ModelPatcher<B>,
        device: &B::Device,
        inputs: &BenchInputs,
    ) -> Result<Box<dyn DenoiseBench<B>>, BenchError> {
        let flux = Flux::load(&PatcherSource::new(patcher), device)?;
        let config = flux.config().clone();
        let side = inputs.res / 8;
        let channels = config.in_channels / 4;
        let randn = |seed: u64, shape: Vec<usize>| -> Result<TensorData, BenchError> {
            Ok(TensorData::new(prepare_noise(seed, &shape, None)?, shape))
        };
        let latent =
            Tensor::<B, 4>::from_data(randn(inputs.seed, vec![1, channels, side, side])?, device);
        let cond = FluxConditioning {
            context: Tensor::from_data(
                randn(
                    inputs.seed.wrapping_add(1),
                    vec![1, inputs.text_tokens, config.context_dim],
                )?,
                device,
            ),
            y: Tensor::from_data(
                randn(inputs.seed.wrapping_add(2), vec![1, config.vec_dim])?,
                device,
            ),
            guidance: config.guidance_embed.then(|| vec![GUIDANCE]),
        };
        Ok(Box::new(FluxSteps {
            describe: format!(
                "flux {} (hidden {}, {} heads of {}, mlp {}, {} double + {} single blocks, context {}, pooled {})",
                if config.guidance_embed {
                    "dev"
                } else {
                    "schnell"
                },
                config.hidden,
                config.heads,
                config.head_dim,
                config.mlp_hidden,
                config.depth,
                config.depth_single,
                config.context_dim,
                config.vec_dim
            ),
            image_tokens: side.div_ceil(2) * side.div_ceil(2),
            flux,
            cond,
            latent,
        }))
    }

    fn synthesize(
        &self,
        out: &Path,
        shape: &str,
        quant: &str,
        seed: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<String, BenchError> {
        let (shape, quant): (SynthShape, SynthQuant) = (shape.parse()?, quant.parse()?);
        let made = write_synthetic_flux(out, shape, quant, seed, progress)?;
        let types: Vec<String> = made
            .tensors_by_type
            .iter()
            .map(|(ty, n)| format!("{n} {ty}"))
            .collect();
        Ok(format!(
            "wrote {}: {} bytes ({:.2} GB), {} tensors ({}), {} parameters",
            out.display(),
            made.file_bytes,
            made.file_bytes as f64 / 1e9,
            made.tensors,
            types.join(", "),
            made.parameters
        ))
    }
}

struct FluxSteps<B: Backend> {
    describe: String,
    image_tokens: usize,
    flux: Flux<B>,
    cond: FluxConditioning<B>,
    latent: Tensor<B, 4>,
}

impl<B: Backend> DenoiseBench<B> for FluxSteps<B> {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn image_tokens(&self) -> usize {
        self.image_tokens
    }

    fn text_tokens(&self) -> usize {
        self.cond.context.dims()[1]
    }

    fn step(&mut self, sigma: f32, sigma_next: f32) -> Result<(), BenchError> {
        // Flow matching: the model predicts the velocity v, and x moves along it (Euler).
        let v = self
            .flux
            .forward_latent(self.latent.clone(), &[sigma], &self.cond)?;
        self.latent = self.latent.clone() + v * (sigma_next - sigma);
        Ok(())
    }

    fn latent_is_finite(&self) -> Result<bool, BenchError> {
        let values = self
            .latent
            .clone()
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| format!("reading the latent: {e:?}"))?;
        Ok(values.iter().all(|v| v.is_finite()))
    }
}
