//! Model loaders: `UnetLoaderGGUF` (the Flux DiT), `VAELoader` and `LoraLoaderModelOnly`, and what
//! their MODEL and VAE values carry: a [`ModelHandle`] (the patcher over the file's mapping) with
//! the architecture attached ([`DiffusionModel`], [`VaeModel`]), read from the weights' shapes.
//!
//! Loading a file maps it and reads its header; nothing is uploaded until a node runs the model
//! (`with_model_loaded`), which builds the network from the patcher's weights
//! ([`PatcherSource`]), so LoRA patches, offload and reload all apply.
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use serde::Deserialize;
use std::ops::Range;
use std::sync::Arc;
use weft_engine::memory::MemoryManager;
use weft_engine::node::{
    Fingerprint, Inputs, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec, PortType,
};
use weft_engine::patcher::{
    BurnDevice, LoadOptions, LoraKeyMap, ModelHandle, ModelPatcher, WeightDevice, WeightFormat,
    lora_patches,
};
use weft_engine::registry::NodeRegistry;
use weft_engine::weights::WeightSource;
use weft_models::flux::{self, FluxConfig};
use weft_models::patcher_source::PatcherSource;
use weft_models::vae::VaeConfig;
use weft_models::{LatentFormat, ModelError, TensorSource, Weights};
use weft_sampling::ModelSampling;

/// Where ComfyUI's GGUF UNet loader looks (`models/unet`, `models/diffusion_models`).
pub const UNET_FOLDERS: &[&str] = &["diffusion_models", "unet"];
/// Where `VAELoader` looks.
pub const VAE_FOLDERS: &[&str] = &["vae"];
/// Where `LoraLoaderModelOnly` looks.
pub const LORA_FOLDERS: &[&str] = &["loras"];

/// The device weights go to: the run's memory manager's when there is one, else the node's
/// device as host memory (the CLI's CPU backend).
pub fn weight_device<B: Backend>(ctx: &NodeContext<'_, B>) -> Arc<dyn WeightDevice<B>> {
    match MemoryManager::<B>::from_services(&ctx.env().services) {
        Some(manager) => manager.device().clone(),
        None => Arc::new(BurnDevice::host_mapped(ctx.device().clone())),
    }
}

/// How loaders lay weights out: dequantized to the device's weight dtype
/// (`WeightDevice::weight_dtype`: f32 on the CPU, the form its models compute with; bf16 on
/// CUDA, what its matrix products read), so a loaded model's network is built from its device
/// copies without another copy of the matrices.
pub fn load_options(weight_dtype: DType) -> LoadOptions {
    LoadOptions {
        format: WeightFormat::Dequantized,
        compute_dtype: weight_dtype,
    }
}

/// Finds `name` in `folders` of the models dirs (or as a path) and opens a patcher over it,
/// dequantized- or quantized-resident as the run's memory manager plans it.
pub fn open_patcher<B: Backend>(
    ctx: &NodeContext<'_, B>,
    folders: &[&str],
    name: &str,
) -> Result<ModelPatcher<B>, NodeError> {
    let path = ctx.find_model(folders, name)?;
    match MemoryManager::<B>::from_services(&ctx.env().services) {
        // The manager picks dequantized- or quantized-resident from the room it has.
        Some(manager) => {
            let options = load_options(manager.device().weight_dtype());
            let (patcher, _) = manager
                .open_model(&path, options)
                .map_err(NodeError::other)?;
            Ok(patcher)
        }
        None => {
            let device = weight_device(ctx);
            let options = load_options(device.weight_dtype());
            ModelPatcher::open(&path, device, options).map_err(NodeError::other)
        }
    }
}

/// A model error as a node error (it already names the file and tensor).
pub(crate) fn model_error(error: ModelError) -> NodeError {
    NodeError::other(error)
}

/// What a MODEL value's handle carries besides the weights: a Flux DiT's shape, its model
/// sampling (ComfyUI's `model_sampling` object patch) and its latent format.
#[derive(Debug, Clone)]
pub struct DiffusionModel {
    /// The widths and depths, read from the weights.
    pub config: FluxConfig,
    /// Sigma table and parameterization: dev `ModelSamplingFlux(1.15)`, schnell a discrete flow
    /// with shift 1 (ComfyUI's `supported_models.Flux` / `FluxSchnell`); `ModelSamplingFlux` replaces it.
    pub model_sampling: ModelSampling,
    /// How VAE latents map to the model's space.
    pub latent_format: LatentFormat,
}

impl DiffusionModel {
    /// Reads the architecture of `source` (names and shapes only; no weight is dequantized).
    pub fn detect<B: Backend>(
        source: &dyn TensorSource<B>,
        device: &B::Device,
    ) -> Result<Self, NodeError> {
        let prefix = flux::detect(source).map_err(model_error)?;
        let config =
            FluxConfig::from_weights(&Weights::new(source, prefix, device)).map_err(model_error)?;
        let model_sampling = if config.guidance_embed {
            ModelSampling::flux(1.15)
        } else {
            ModelSampling::discrete_flow(1.0, 1.0)
        }
        .map_err(NodeError::other)?;
        Ok(DiffusionModel {
            config,
            model_sampling,
            latent_format: LatentFormat::FLUX,
        })
    }

    /// The architecture of the MODEL on input `port`, with the handle.
    pub fn from_inputs<B: Backend>(
        inputs: &Inputs<B>,
        port: &str,
    ) -> Result<(Arc<ModelHandle<B>>, DiffusionModel), NodeError> {
        let handle = ModelHandle::<B>::from_inputs(inputs, port)?;
        let arch = handle
            .architecture::<DiffusionModel>()
            .cloned()
            .ok_or_else(|| NodeError::Input {
                port: port.to_owned(),
                reason: format!(
                    "{} is not a diffusion model weft can run",
                    handle.patcher().source().path().display()
                ),
            })?;
        Ok((handle, arch))
    }
}

/// What a VAE value's handle carries: the autoencoder's shape and its latent channels.
#[derive(Debug, Clone)]
pub struct VaeModel {
    /// Widths and depths, read from the weights.
    pub config: VaeConfig,
}

/// Name prefixes of an AutoencoderKL, as `models::vae` accepts them.
const VAE_PREFIXES: &[&str] = &["", "first_stage_model.", "vae."];

impl VaeModel {
    /// Reads the autoencoder's shape from `source` (names and shapes only).
    pub fn detect<B: Backend>(
        source: &dyn TensorSource<B>,
        device: &B::Device,
    ) -> Result<Self, NodeError> {
        let prefix = ["decoder.conv_in.weight", "encoder.conv_in.weight"]
            .iter()
            .find_map(|marker| Weights::find_prefix(source, marker, VAE_PREFIXES))
            .ok_or_else(|| {
                model_error(ModelError::UnsupportedArchitecture {
                    origin: source.origin(),
                    found:
                        "no AutoencoderKL tensors (decoder.conv_in.weight / encoder.conv_in.weight)"
                            .into(),
                    supported: "AutoencoderKL in ldm/BFL naming (Flux ae.safetensors, SD VAEs)"
                        .into(),
                })
            })?;
        let config =
            VaeConfig::from_weights(&Weights::new(source, prefix, device)).map_err(model_error)?;
        Ok(VaeModel { config })
    }

    /// The VAE on input `port`, with the handle.
    pub fn from_inputs<B: Backend>(
        inputs: &Inputs<B>,
        port: &str,
    ) -> Result<(Arc<ModelHandle<B>>, VaeModel), NodeError> {
        let handle = ModelHandle::<B>::from_inputs(inputs, port)?;
        let arch = handle
            .architecture::<VaeModel>()
            .cloned()
            .ok_or_else(|| NodeError::Input {
                port: port.to_owned(),
                reason: format!(
                    "{} is not a VAE",
                    handle.patcher().source().path().display()
                ),
            })?;
        Ok((handle, arch))
    }
}

/// `UnetLoaderGGUF` (ComfyUI-GGUF): a diffusion model from a GGUF (or safetensors) file.
pub struct UnetLoaderGguf;

/// Parameters of [`UnetLoaderGguf`].
#[derive(Deserialize)]
pub struct UnetLoaderParams {
    /// File name under `models/diffusion_models` or `models/unet`, or a path.
    pub unet_name: String,
}

impl<B: Backend> Node<B> for UnetLoaderGguf {
    type Params = UnetLoaderParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("UnetLoaderGGUF")
            .category("bootleg")
            .describe("Loads a diffusion model (Flux dev or schnell) from a city96 GGUF file: mapped, not read; weights load when a sampler runs.")
            .param(ParamSpec::string("unet_name").describe("file under models/diffusion_models or models/unet, or a path"))
            .output("MODEL", PortType::MODEL)
    }

    fn fingerprint(
        &self,
        params: &UnetLoaderParams,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Fingerprint, NodeError> {
        Fingerprint::none().file(&ctx.find_model(UNET_FOLDERS, &params.unet_name)?)
    }

    fn run(
        &self,
        params: UnetLoaderParams,
        _: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let patcher = open_patcher(ctx, UNET_FOLDERS, &params.unet_name)?;
        let arch = DiffusionModel::detect(&PatcherSource::new(&patcher), ctx.device())?;
        tracing::info!("{}: {:?}", patcher.source().path().display(), arch.config);
        Ok(Outputs::one(
            ModelHandle::new(patcher)
                .with_architecture(arch)
                .into_value(PortType::MODEL),
        ))
    }
}

/// `VAELoader`: an AutoencoderKL (Flux `ae.safetensors`, SD VAEs) from safetensors or GGUF.
pub struct VaeLoader;

/// Parameters of [`VaeLoader`].
#[derive(Deserialize)]
pub struct VaeLoaderParams {
    /// File name under `models/vae`, or a path.
    pub vae_name: String,
}

impl<B: Backend> Node<B> for VaeLoader {
    type Params = VaeLoaderParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("VAELoader")
            .category("loaders")
            .describe("Loads a VAE (AutoencoderKL: Flux ae.safetensors, SD VAEs) from safetensors or GGUF.")
            .param(ParamSpec::string("vae_name").describe("file under models/vae, or a path"))
            .output("VAE", PortType::VAE)
    }

    fn fingerprint(
        &self,
        params: &VaeLoaderParams,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Fingerprint, NodeError> {
        Fingerprint::none().file(&ctx.find_model(VAE_FOLDERS, &params.vae_name)?)
    }

    fn run(
        &self,
        params: VaeLoaderParams,
        _: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let patcher = open_patcher(ctx, VAE_FOLDERS, &params.vae_name)?;
        let arch = VaeModel::detect(&PatcherSource::new(&patcher), ctx.device())?;
        Ok(Outputs::one(
            ModelHandle::new(patcher)
                .with_architecture(arch)
                .into_value(PortType::VAE),
        ))
    }
}

/// `LoraLoaderModelOnly`: the MODEL with a LoRA's patches at `strength_model`, on a clone of its
/// patcher (the input model is unchanged; both share the base weights).
pub struct LoraLoaderModelOnly;

/// Parameters of [`LoraLoaderModelOnly`].
#[derive(Deserialize)]
pub struct LoraLoaderParams {
    /// File name under `models/loras`, or a path.
    pub lora_name: String,
    /// How strongly the LoRA applies (negative inverts it).
    pub strength_model: f64,
}

impl<B: Backend> Node<B> for LoraLoaderModelOnly {
    type Params = LoraLoaderParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("LoraLoaderModelOnly")
            .category("loaders")
            .describe("Patches MODEL with a LoRA (kohya, BFL or diffusers naming) at strength_model; the input model stays unpatched.")
            .input("model", PortType::MODEL)
            .param(ParamSpec::string("lora_name").describe("file under models/loras, or a path"))
            .param(ParamSpec::float("strength_model").default(1.0).range_f(-100.0, 100.0))
            .output("MODEL", PortType::MODEL)
    }

    fn fingerprint(
        &self,
        params: &LoraLoaderParams,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Fingerprint, NodeError> {
        Fingerprint::none().file(&ctx.find_model(LORA_FOLDERS, &params.lora_name)?)
    }

    fn run(
        &self,
        params: LoraLoaderParams,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let (model, arch) = DiffusionModel::from_inputs(&inputs, "model")?;
        if params.strength_model == 0.0 {
            return Ok(Outputs::one(
                model.as_ref().clone().into_value(PortType::MODEL),
            ));
        }
        let path = ctx.find_model(LORA_FOLDERS, &params.lora_name)?;
        let lora = Arc::new(WeightSource::open(&path).map_err(NodeError::other)?);
        let mut patcher = model.clone_patcher();
        let keys = flux_diffusers_lora_keys(&arch.config, patcher.source());
        let found = lora_patches(patcher.source(), &lora, params.strength_model as f32, &keys)
            .map_err(NodeError::other)?;
        if found.patches.is_empty() {
            let examples: Vec<&str> = found
                .unmatched
                .iter()
                .take(3)
                .map(|(name, _)| name.as_str())
                .collect();
            return Err(NodeError::msg(format!(
                "{}: no LoRA module matches a weight of {} (unmatched: {})",
                path.display(),
                patcher.source().path().display(),
                examples.join(", ")
            )));
        }
        tracing::info!(
            "{}: {} patches, {} modules unmatched",
            path.display(),
            found.patches.len(),
            found.unmatched.len()
        );
        patcher
            .add_patches(found.patches)
            .map_err(NodeError::other)?;
        Ok(Outputs::one(
            model.with_patcher(patcher).into_value(PortType::MODEL),
        ))
    }
}

/// diffusers/PEFT Flux LoRA names (`transformer_blocks.N.attn.to_q` …) onto BFL weights, with the
/// fused q/k/v (and single-block q/k/v/mlp) rows each one patches — the renames ComfyUI's
/// `lora.py` makes for Flux. Names without a counterpart in `model` are left out.
pub fn flux_diffusers_lora_keys(config: &FluxConfig, model: &WeightSource) -> LoraKeyMap {
    let h = config.hidden;
    let prefix = if model
        .get("model.diffusion_model.double_blocks.0.img_attn.qkv.weight")
        .is_some()
    {
        "model.diffusion_model."
    } else {
        ""
    };
    let mut map = LoraKeyMap::new();
    let mut add = |lora: String, target: &str, rows: Option<Range<usize>>| {
        let target = format!("{prefix}{target}.weight");
        if model.get(&target).is_some() {
            for lora_prefix in ["transformer.", ""] {
                map.insert(format!("{lora_prefix}{lora}"), target.clone(), rows.clone());
            }
        }
    };
    for i in 0..config.depth {
        let (d, b) = (
            format!("transformer_blocks.{i}"),
            format!("double_blocks.{i}"),
        );
        for (k, rows) in [("q", 0..h), ("k", h..2 * h), ("v", 2 * h..3 * h)] {
            add(
                format!("{d}.attn.to_{k}"),
                &format!("{b}.img_attn.qkv"),
                Some(rows.clone()),
            );
            add(
                format!("{d}.attn.add_{k}_proj"),
                &format!("{b}.txt_attn.qkv"),
                Some(rows),
            );
        }
        add(
            format!("{d}.attn.to_out.0"),
            &format!("{b}.img_attn.proj"),
            None,
        );
        add(
            format!("{d}.attn.to_add_out"),
            &format!("{b}.txt_attn.proj"),
            None,
        );
        add(
            format!("{d}.ff.net.0.proj"),
            &format!("{b}.img_mlp.0"),
            None,
        );
        add(format!("{d}.ff.net.2"), &format!("{b}.img_mlp.2"), None);
        add(
            format!("{d}.ff_context.net.0.proj"),
            &format!("{b}.txt_mlp.0"),
            None,
        );
        add(
            format!("{d}.ff_context.net.2"),
            &format!("{b}.txt_mlp.2"),
            None,
        );
        add(
            format!("{d}.norm1.linear"),
            &format!("{b}.img_mod.lin"),
            None,
        );
        add(
            format!("{d}.norm1_context.linear"),
            &format!("{b}.txt_mod.lin"),
            None,
        );
    }
    for i in 0..config.depth_single {
        let (d, b) = (
            format!("single_transformer_blocks.{i}"),
            format!("single_blocks.{i}"),
        );
        let mlp = 3 * h..3 * h + config.mlp_hidden;
        for (k, rows) in [
            ("attn.to_q", 0..h),
            ("attn.to_k", h..2 * h),
            ("attn.to_v", 2 * h..3 * h),
            ("proj_mlp", mlp),
        ] {
            add(format!("{d}.{k}"), &format!("{b}.linear1"), Some(rows));
        }
        add(format!("{d}.proj_out"), &format!("{b}.linear2"), None);
        add(
            format!("{d}.norm.linear"),
            &format!("{b}.modulation.lin"),
            None,
        );
    }
    add("x_embedder".into(), "img_in", None);
    add("context_embedder".into(), "txt_in", None);
    add("proj_out".into(), "final_layer.linear", None);
    map
}

pub(crate) fn register<B: Backend>(registry: &mut NodeRegistry<B>) {
    registry
        .register(UnetLoaderGguf)
        .register(VaeLoader)
        .register(LoraLoaderModelOnly);
}
