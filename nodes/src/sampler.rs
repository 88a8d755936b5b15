//! `KSampler` and `ModelSamplingFlux`: ComfyUI's `common_ksampler` over the Flux DiT, built for
//! each run from the MODEL's patcher (so LoRA patches and offloads apply), with progress per step
//! and cancellation between model calls.
//!
//! The recipe is `sampling`'s (see its module docs): torch-identical noise from the seed, the
//! KSampler sigmas of the model's sampling, the latent taken into the model's space when it is
//! not empty, the sampler over a CFG denoiser (the negative is never evaluated at cfg 1), and the
//! result taken back out to the VAE's space.
use crate::MAX_RESOLUTION;
use crate::conditioning::{DEFAULT_FLUX_GUIDANCE, GUIDANCE};
use crate::loaders::{DiffusionModel, model_error};
use crate::offload::with_model_loaded;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use serde::Deserialize;
use weft_engine::node::{
    Conditioning, Inputs, Latent, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec,
    PortType, Value,
};
use weft_engine::patcher::ModelHandle;
use weft_engine::registry::NodeRegistry;
use weft_models::flux::{Flux, FluxConditioning};
use weft_models::patcher_source::PatcherSource;
use weft_sampling::model_sampling::flux_shift;
use weft_sampling::{
    CfgDenoiser, Guidance, ModelSampling, SamplerHooks, SamplerKind, SamplerRun, SamplingError,
    Scheduler, ksampler_sigmas, prepare_noise,
};

/// `KSampler`: denoises a latent with a model, ComfyUI's parameters and semantics.
pub struct KSampler;

/// Parameters of [`KSampler`].
#[derive(Deserialize)]
pub struct KSamplerParams {
    /// Seeds the initial noise (`torch.manual_seed(seed); torch.randn`) and stochastic samplers.
    pub seed: u64,
    /// Sampling steps.
    pub steps: usize,
    /// Classifier-free guidance scale; 1.0 skips the negative.
    pub cfg: f64,
    /// ComfyUI's sampler name (`euler`, `dpmpp_2m` …).
    pub sampler_name: String,
    /// ComfyUI's scheduler name (`simple`, `karras` …).
    pub scheduler: String,
    /// How much of the schedule runs (1.0: from pure noise; img2img below).
    pub denoise: f64,
}

fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<&'static str> {
    all.iter().map(|&x| name(x)).collect()
}

fn sampling_error(error: SamplingError) -> NodeError {
    match error {
        SamplingError::Cancelled => NodeError::Cancelled,
        other => NodeError::other(other),
    }
}

/// One side of the guidance as Flux takes it: context and pooled for the whole batch, and the
/// guidance value.
struct FluxCond<B: Backend> {
    context: Tensor<B, 3>,
    pooled: Tensor<B, 2>,
    guidance: f32,
}

impl<B: Backend> FluxCond<B> {
    /// The first (only) entry of `conditioning`, repeated to `batch` when it holds one prompt.
    fn new(conditioning: &Conditioning<B>, port: &str, batch: usize) -> Result<Self, NodeError> {
        let bad = |reason: String| NodeError::Input {
            port: port.to_owned(),
            reason,
        };
        let entry = match conditioning.entries.as_slice() {
            [entry] => entry,
            [] => return Err(bad("the conditioning is empty".into())),
            more => {
                return Err(bad(format!(
                    "{} combined conditionings; combining is not supported yet, use one",
                    more.len()
                )));
            }
        };
        let pooled = entry.pooled.clone().ok_or_else(|| {
            bad("the conditioning has no pooled output (Flux needs CLIP-L's)".into())
        })?;
        let repeat = |n: usize, what: &str| -> Result<usize, NodeError> {
            match n {
                _ if n == batch => Ok(1),
                1 => Ok(batch),
                _ => Err(bad(format!("{what} has batch {n}, the latent has {batch}"))),
            }
        };
        let context = entry
            .context
            .clone()
            .repeat_dim(0, repeat(entry.context.dims()[0], "the context")?);
        let pooled = pooled
            .clone()
            .repeat_dim(0, repeat(pooled.dims()[0], "the pooled output")?);
        let guidance = entry
            .options
            .get(GUIDANCE)
            .copied()
            .unwrap_or(DEFAULT_FLUX_GUIDANCE) as f32;
        Ok(FluxCond {
            context,
            pooled,
            guidance,
        })
    }

    fn as_flux(&self, batch: usize) -> FluxConditioning<B> {
        FluxConditioning {
            context: self.context.clone(),
            y: self.pooled.clone(),
            guidance: Some(vec![self.guidance; batch]),
        }
    }
}

/// Whether any value of `x` is not zero (ComfyUI shifts only a latent that is not empty).
fn is_nonzero<B: Backend>(x: &Tensor<B, 4>) -> bool {
    x.clone().abs().max().into_scalar().elem::<f32>() > 0.0
}

impl<B: Backend> Node<B> for KSampler {
    type Params = KSamplerParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("KSampler")
            .category("sampling")
            .describe(
                "Denoises latent_image with the model, guided by positive and negative (ComfyUI's KSampler: torch-identical noise, \
                 cfg 1 skips the negative, denoise < 1 runs the end of a longer schedule).",
            )
            .input("model", PortType::MODEL)
            .input("positive", PortType::CONDITIONING)
            .input("negative", PortType::CONDITIONING)
            .input("latent_image", PortType::LATENT)
            .param(ParamSpec::int("seed").default(0).range(0, i64::MAX))
            .param(ParamSpec::int("steps").default(20).range(1, 10000))
            .param(ParamSpec::float("cfg").default(8.0).range_f(0.0, 100.0))
            .param(ParamSpec::choice("sampler_name", &names(&SamplerKind::ALL, SamplerKind::name)).default("euler"))
            .param(ParamSpec::choice("scheduler", &names(&Scheduler::ALL, Scheduler::name)).default("simple"))
            .param(ParamSpec::float("denoise").default(1.0).range_f(0.0, 1.0))
            .output("LATENT", PortType::LATENT)
    }

    fn run(
        &self,
        params: KSamplerParams,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let (model, arch) = DiffusionModel::from_inputs(&inputs, "model")?;
        let samples = inputs.latent("latent_image")?.samples;
        let shape = samples.dims();
        let format = arch.latent_format;
        if shape[1] != format.channels {
            return Err(NodeError::Input {
                port: "latent_image".into(),
                reason: format!(
                    "the latent has {} channels, the model takes {}",
                    shape[1], format.channels
                ),
            });
        }
        let sampler = SamplerKind::from_name(&params.sampler_name).map_err(sampling_error)?;
        let scheduler = Scheduler::from_name(&params.scheduler).map_err(sampling_error)?;
        let ms = &arch.model_sampling;
        let sigmas = ksampler_sigmas(ms, scheduler, sampler, params.steps, params.denoise)
            .map_err(sampling_error)?;

        let batch = shape[0];
        let positive = FluxCond::new(&inputs.conditioning("positive")?, "positive", batch)?;
        let negative = match weft_sampling::samplers::cfg_is_skipped(params.cfg) {
            true => None,
            false => Some(FluxCond::new(
                &inputs.conditioning("negative")?,
                "negative",
                batch,
            )?),
        };
        let noise = prepare_noise(params.seed, &shape, None).map_err(sampling_error)?;
        let noise = Tensor::<B, 4>::from_data(TensorData::new(noise, shape), ctx.device());
        let latent_in = if is_nonzero(&samples) {
            format.process_in(samples)
        } else {
            samples
        };

        let out = with_model_loaded(ctx, &model, false, |patcher| {
            let flux =
                Flux::load(&PatcherSource::new(patcher), ctx.device()).map_err(model_error)?;
            let (positive, negative) = (
                positive.as_flux(batch),
                negative.as_ref().map(|n| n.as_flux(batch)),
            );
            let mut denoiser = CfgDenoiser::new(
                ms,
                params.cfg,
                |x: Tensor<B, 4>, timestep: f32, side: Guidance| {
                    let cond = match (side, &negative) {
                        (Guidance::Positive, _) => &positive,
                        (Guidance::Negative, Some(negative)) => negative,
                        (Guidance::Negative, None) => {
                            return Err(SamplingError::invalid(
                                "cfg",
                                "the negative was asked for at cfg 1",
                            ));
                        }
                    };
                    flux.forward_latent(x, &vec![timestep; batch], cond)
                        .map_err(|e| SamplingError::Model(Box::new(e)))
                },
            );
            let total = sigmas.len().saturating_sub(1) as u64;
            let mut hooks = SamplerHooks::none()
                .on_step(|step| ctx.progress(step.step as u64 + 1, total))
                .cancel_when(|| ctx.is_cancelled());
            let run = SamplerRun {
                sampler,
                model_sampling: ms,
                sigmas: &sigmas,
                seed: params.seed,
            };
            run.run(&mut denoiser, noise, latent_in, &mut hooks)
                .map_err(sampling_error)
        })?;
        Ok(Outputs::one(Value::Latent(Latent::new(
            format.process_out(out),
        ))))
    }
}

/// `ModelSamplingFlux`: the model with a resolution-dependent shift of its sigmas.
pub struct ModelSamplingFluxNode;

/// Parameters of [`ModelSamplingFluxNode`].
#[derive(Deserialize)]
pub struct ModelSamplingFluxParams {
    /// The shift at 4096 latent patches (1024²).
    pub max_shift: f64,
    /// The shift at 256 latent patches (256²).
    pub base_shift: f64,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
}

impl<B: Backend> Node<B> for ModelSamplingFluxNode {
    type Params = ModelSamplingFluxParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("ModelSamplingFlux")
            .category("advanced/model")
            .describe("Sets the model's sampling to ModelSamplingFlux with the shift of the image size (linear in patches between base_shift and max_shift).")
            .input("model", PortType::MODEL)
            .param(ParamSpec::float("max_shift").default(1.15).range_f(0.0, 100.0))
            .param(ParamSpec::float("base_shift").default(0.5).range_f(0.0, 100.0))
            .param(ParamSpec::int("width").default(1024).range(16, MAX_RESOLUTION))
            .param(ParamSpec::int("height").default(1024).range(16, MAX_RESOLUTION))
            .output("MODEL", PortType::MODEL)
    }

    fn run(
        &self,
        params: ModelSamplingFluxParams,
        inputs: Inputs<B>,
        _: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let (model, mut arch) = DiffusionModel::from_inputs(&inputs, "model")?;
        let shift = flux_shift(
            params.width,
            params.height,
            params.max_shift,
            params.base_shift,
        );
        arch.model_sampling = ModelSampling::flux(shift).map_err(|e| {
            NodeError::msg(format!(
                "shift {shift} from {}x{}: {e}",
                params.width, params.height
            ))
        })?;
        let handle = ModelHandle::new(model.clone_patcher()).with_architecture(arch);
        Ok(Outputs::one(handle.into_value(PortType::MODEL)))
    }
}

pub(crate) fn register<B: Backend>(registry: &mut NodeRegistry<B>) {
    registry.register(KSampler).register(ModelSamplingFluxNode);
}
