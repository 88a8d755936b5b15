//! `VAEDecode` and `VAEEncode`: between LATENT (the VAE's raw latents, as ComfyUI keeps them) and
//! IMAGE (`[batch, height, width, channels]` in 0..=1), with ComfyUI's pixel mapping
//! (`(x + 1) / 2` clamped; `2x - 1`) and crop. The autoencoder is built from the VAE's patcher for
//! each run; `release_vae` drops its device copy afterwards.
use crate::loaders::{VaeModel, model_error};
use crate::offload::with_model_loaded;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::Deserialize;
use weft_engine::node::{
    Inputs, Latent, NoParams, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec,
    PortType, Value,
};
use weft_engine::registry::NodeRegistry;
use weft_models::patcher_source::PatcherSource;
use weft_models::vae::Vae;

/// `VAEDecode`: latents to images.
pub struct VaeDecode;

/// Parameters of [`VaeDecode`].
#[derive(Deserialize)]
pub struct VaeDecodeParams {
    /// Drop the VAE's device copy after decoding (it reloads from the mapping when next needed).
    pub release_vae: bool,
}

impl<B: Backend> Node<B> for VaeDecode {
    type Params = VaeDecodeParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("VAEDecode")
            .category("latent")
            .describe("Decodes latents into images; with release_vae (default) the VAE's device copy is dropped afterwards.")
            .input("samples", PortType::LATENT)
            .input("vae", PortType::VAE)
            .param(ParamSpec::boolean("release_vae").default(true))
            .output("IMAGE", PortType::IMAGE)
    }

    fn run(
        &self,
        params: VaeDecodeParams,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let (vae, arch) = VaeModel::from_inputs(&inputs, "vae")?;
        let samples = inputs.latent("samples")?.samples;
        let channels = samples.dims()[1];
        if channels != arch.config.z_channels {
            return Err(NodeError::Input {
                port: "samples".into(),
                reason: format!(
                    "the latent has {channels} channels, the VAE takes {}",
                    arch.config.z_channels
                ),
            });
        }
        let decoded = with_model_loaded(ctx, &vae, params.release_vae, |patcher| {
            let model =
                Vae::load(&PatcherSource::new(patcher), ctx.device()).map_err(model_error)?;
            model.decode(samples).map_err(model_error)
        })?;
        let image = ((decoded + 1.0) / 2.0)
            .clamp(0.0, 1.0)
            .permute([0, 2, 3, 1]);
        Ok(Outputs::one(Value::Image(image)))
    }
}

/// `VAEEncode`: images to latents (the posterior's mean, as ComfyUI's regularizer takes it).
pub struct VaeEncode;

impl<B: Backend> Node<B> for VaeEncode {
    type Params = NoParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("VAEEncode")
            .category("latent")
            .describe("Encodes images into latents (the first three channels; sides cropped to whole latent pixels, centred, as ComfyUI does).")
            .input("pixels", PortType::IMAGE)
            .input("vae", PortType::VAE)
            .output("LATENT", PortType::LATENT)
    }

    fn run(
        &self,
        _: NoParams,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let (vae, arch) = VaeModel::from_inputs(&inputs, "vae")?;
        let pixels = crop_to_multiple(inputs.image("pixels")?, arch.config.downscale())?;
        let [batch, height, width, channels] = pixels.dims();
        if channels < 3 {
            return Err(NodeError::Input {
                port: "pixels".into(),
                reason: format!("the image has {channels} channels, the VAE takes 3"),
            });
        }
        let x = pixels
            .slice([0..batch, 0..height, 0..width, 0..3])
            .permute([0, 3, 1, 2])
            * 2.0
            - 1.0;
        let latent = with_model_loaded(ctx, &vae, false, |patcher| {
            let model =
                Vae::load(&PatcherSource::new(patcher), ctx.device()).map_err(model_error)?;
            model.encode(x).map_err(model_error)
        })?;
        Ok(Outputs::one(Value::Latent(Latent::new(latent))))
    }
}

/// ComfyUI's `vae_encode_crop_pixels`: each side floored to a multiple of `factor`, the crop centred.
fn crop_to_multiple<B: Backend>(
    pixels: Tensor<B, 4>,
    factor: usize,
) -> Result<Tensor<B, 4>, NodeError> {
    let [batch, height, width, channels] = pixels.dims();
    let (h, w) = ((height / factor) * factor, (width / factor) * factor);
    if h == 0 || w == 0 {
        return Err(NodeError::Input {
            port: "pixels".into(),
            reason: format!(
                "a {width}x{height} image is smaller than one latent pixel ({factor}x{factor})"
            ),
        });
    }
    if (h, w) == (height, width) {
        return Ok(pixels);
    }
    let (top, left) = ((height % factor) / 2, (width % factor) / 2);
    Ok(pixels.slice([0..batch, top..top + h, left..left + w, 0..channels]))
}

pub(crate) fn register<B: Backend>(registry: &mut NodeRegistry<B>) {
    registry.register(VaeDecode).register(VaeEncode);
}
