//! Image nodes that need no model (ComfyUI's `EmptyImage`, `ImageInvert`, `ImageBlend`). Images
//! are `[batch, height, width, channels]` floats in 0..=1.
use crate::MAX_RESOLUTION;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::Deserialize;
use weft_engine::node::{
    Inputs, NoParams, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec, PortType, Value,
};
use weft_engine::registry::NodeRegistry;

/// `EmptyImage`: a batch of images of one colour.
pub struct EmptyImage;

/// Parameters of [`EmptyImage`].
#[derive(Deserialize)]
pub struct EmptyImageParams {
    /// Width in pixels.
    pub width: i64,
    /// Height in pixels.
    pub height: i64,
    /// Images in the batch.
    pub batch_size: i64,
    /// The colour as `0xRRGGBB`.
    pub color: i64,
}

impl<B: Backend> Node<B> for EmptyImage {
    type Params = EmptyImageParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("EmptyImage")
            .category("image")
            .describe("A batch of RGB images filled with one colour (0xRRGGBB).")
            .param(
                ParamSpec::int("width")
                    .default(512)
                    .range(1, MAX_RESOLUTION),
            )
            .param(
                ParamSpec::int("height")
                    .default(512)
                    .range(1, MAX_RESOLUTION),
            )
            .param(ParamSpec::int("batch_size").default(1).range(1, 4096))
            .param(
                ParamSpec::int("color")
                    .default(0)
                    .range(0, 0xFF_FFFF)
                    .describe("0xRRGGBB"),
            )
            .output("IMAGE", PortType::IMAGE)
    }

    fn run(
        &self,
        p: Self::Params,
        _: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let size =
            |v: i64| usize::try_from(v).map_err(|_| NodeError::msg(format!("invalid size {v}")));
        let (batch, height, width) = (size(p.batch_size)?, size(p.height)?, size(p.width)?);
        let channel = |shift: i64| ((p.color >> shift) & 0xFF) as f32 / 255.0;
        let rgb = Tensor::<B, 1>::from_floats([channel(16), channel(8), channel(0)], ctx.device());
        let image = rgb.reshape([1, 1, 1, 3]).expand([batch, height, width, 3]);
        // `expand` is a view; a contiguous copy keeps later in-place-ish ops and uploads simple.
        Ok(Outputs::one(Value::Image(image + 0.0)))
    }
}

/// `ImageInvert`: `1 - image`.
pub struct ImageInvert;

impl<B: Backend> Node<B> for ImageInvert {
    type Params = NoParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("ImageInvert")
            .category("image")
            .describe("Inverts the colours: 1 - image.")
            .input("image", PortType::IMAGE)
            .output("IMAGE", PortType::IMAGE)
    }

    fn run(
        &self,
        _: NoParams,
        inputs: Inputs<B>,
        _: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let image = inputs.image("image")?;
        Ok(Outputs::one(Value::Image(image.neg().add_scalar(1.0))))
    }
}

/// `ImageBlend`: blends two images of one size with ComfyUI's modes.
pub struct ImageBlend;

/// The blend modes, as ComfyUI names them.
pub const BLEND_MODES: [&str; 6] = [
    "normal",
    "multiply",
    "screen",
    "overlay",
    "soft_light",
    "difference",
];

/// Parameters of [`ImageBlend`].
#[derive(Deserialize)]
pub struct ImageBlendParams {
    /// How much of the blended result to mix over `image1`.
    pub blend_factor: f64,
    /// One of [`BLEND_MODES`].
    pub blend_mode: String,
}

impl<B: Backend> Node<B> for ImageBlend {
    type Params = ImageBlendParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("ImageBlend")
            .category("image/postprocessing")
            .describe(
                "Blends image2 over image1 (same size) with a blend mode, mixed by blend_factor.",
            )
            .input("image1", PortType::IMAGE)
            .input("image2", PortType::IMAGE)
            .param(
                ParamSpec::float("blend_factor")
                    .default(0.5)
                    .range_f(0.0, 1.0),
            )
            .param(ParamSpec::choice("blend_mode", &BLEND_MODES).default("normal"))
            .output("IMAGE", PortType::IMAGE)
    }

    fn run(
        &self,
        p: Self::Params,
        inputs: Inputs<B>,
        _: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let (a, b) = (inputs.image("image1")?, inputs.image("image2")?);
        if a.dims() != b.dims() {
            return Err(NodeError::Input {
                port: "image2".to_owned(),
                reason: format!(
                    "size {:?} differs from image1's {:?} (resizing is not supported)",
                    b.dims(),
                    a.dims()
                ),
            });
        }
        let blended = blend(a.clone(), b, &p.blend_mode)?;
        let factor = p.blend_factor;
        let mixed = a * (1.0 - factor) + blended * factor;
        Ok(Outputs::one(Value::Image(mixed.clamp(0.0, 1.0))))
    }
}

/// ComfyUI's `ImageBlend.blend_mode`, formula for formula.
fn blend<B: Backend>(
    a: Tensor<B, 4>,
    b: Tensor<B, 4>,
    mode: &str,
) -> Result<Tensor<B, 4>, NodeError> {
    let one_minus = |t: Tensor<B, 4>| t.neg().add_scalar(1.0);
    Ok(match mode {
        "normal" => b,
        "multiply" => a * b,
        "screen" => one_minus(one_minus(a) * one_minus(b)),
        "overlay" => {
            let low = a.clone() * b.clone() * 2.0;
            let high = one_minus(one_minus(a.clone()) * one_minus(b) * 2.0);
            high.mask_where(a.lower_equal_elem(0.5), low)
        }
        "soft_light" => {
            let g = {
                let poly = ((a.clone() * 16.0 - 12.0) * a.clone() + 4.0) * a.clone();
                a.clone()
                    .sqrt()
                    .mask_where(a.clone().lower_equal_elem(0.25), poly)
            };
            let low = a.clone() - one_minus(b.clone() * 2.0) * a.clone() * one_minus(a.clone());
            let high = a.clone() + (b.clone() * 2.0 - 1.0) * (g - a);
            high.mask_where(b.lower_equal_elem(0.5), low)
        }
        "difference" => a - b,
        other => return Err(NodeError::msg(format!("unknown blend mode {other:?}"))),
    })
}

pub(crate) fn register<B: Backend>(registry: &mut NodeRegistry<B>) {
    registry
        .register(EmptyImage)
        .register(ImageInvert)
        .register(ImageBlend);
}
