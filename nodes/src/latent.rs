//! Latent nodes that need no model: empty latents of the shapes ComfyUI's samplers start from.
use crate::MAX_RESOLUTION;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::Deserialize;
use weft_engine::node::{
    Inputs, Latent, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec, PortType, Value,
};
use weft_engine::registry::NodeRegistry;

/// `EmptyLatentImage`: zeros of shape `[batch, 4, height/8, width/8]` (SD1.x, SDXL).
pub struct EmptyLatentImage;

/// `EmptySD3LatentImage`: zeros of shape `[batch, 16, height/8, width/8]` (SD3, Flux).
pub struct EmptySD3LatentImage;

/// The parameters of both empty-latent nodes.
#[derive(Deserialize)]
pub struct EmptyLatentParams {
    /// Image width in pixels (floored to a multiple of 8).
    pub width: i64,
    /// Image height in pixels (floored to a multiple of 8).
    pub height: i64,
    /// Latents in the batch.
    pub batch_size: i64,
}

fn schema(name: &str, description: &str, default_size: i64) -> NodeSchema {
    NodeSchema::new(name)
        .category("latent")
        .describe(description)
        .param(
            ParamSpec::int("width")
                .default(default_size)
                .range(16, MAX_RESOLUTION),
        )
        .param(
            ParamSpec::int("height")
                .default(default_size)
                .range(16, MAX_RESOLUTION),
        )
        .param(ParamSpec::int("batch_size").default(1).range(1, 4096))
        .output("LATENT", PortType::LATENT)
}

fn zeros<B: Backend>(
    params: &EmptyLatentParams,
    channels: usize,
    device: &B::Device,
) -> Result<Outputs<B>, NodeError> {
    let dim =
        |v: i64| usize::try_from(v / 8).map_err(|_| NodeError::msg(format!("invalid size {v}")));
    let shape = [
        usize::try_from(params.batch_size).map_err(|_| NodeError::msg("invalid batch size"))?,
        channels,
        dim(params.height)?,
        dim(params.width)?,
    ];
    Ok(Outputs::one(Value::Latent(Latent::new(Tensor::zeros(
        shape, device,
    )))))
}

impl<B: Backend> Node<B> for EmptyLatentImage {
    type Params = EmptyLatentParams;

    fn schema(&self) -> NodeSchema {
        schema(
            "EmptyLatentImage",
            "A batch of empty 4-channel latents (SD1.x, SDXL).",
            512,
        )
    }

    fn run(
        &self,
        params: Self::Params,
        _: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        zeros(&params, 4, ctx.device())
    }
}

impl<B: Backend> Node<B> for EmptySD3LatentImage {
    type Params = EmptyLatentParams;

    fn schema(&self) -> NodeSchema {
        schema(
            "EmptySD3LatentImage",
            "A batch of empty 16-channel latents (SD3, Flux).",
            1024,
        )
    }

    fn run(
        &self,
        params: Self::Params,
        _: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        zeros(&params, 16, ctx.device())
    }
}

pub(crate) fn register<B: Backend>(registry: &mut NodeRegistry<B>) {
    registry
        .register(EmptyLatentImage)
        .register(EmptySD3LatentImage);
}
