//! A colour grade as a value of its own: `ColorGrade` makes a `COLOR_GRADE` (a plugin-defined port
//! type), `ApplyColorGrade` applies it to an IMAGE. One grade can be reused on many images, like a LUT.
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::Deserialize;
use weft_engine::node::{
    Inputs, NoParams, Node, NodeContext, NodeError, NodeSchema, Object, Outputs, ParamSpec,
    PortType, Value,
};

/// The port type of a [`Grade`].
pub const COLOR_GRADE: PortType = PortType::custom("COLOR_GRADE");

/// A colour grade. Applied in this order: contrast around mid-grey, brightness, saturation around
/// Rec. 601 luma, clamp to 0..=1, gamma.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct Grade {
    /// Added to every channel, -1..=1.
    pub brightness: f64,
    /// Scales the distance from 0.5, 0..=3 (1: unchanged).
    pub contrast: f64,
    /// Scales the distance from the pixel's luma, 0..=3 (0: grey, 1: unchanged).
    pub saturation: f64,
    /// Output is `x^(1/gamma)`, 0.1..=5 (1: unchanged).
    pub gamma: f64,
}

impl Grade {
    /// Applies the grade to an IMAGE (`[batch, height, width, 3]`, 0..=1).
    pub fn apply<B: Backend>(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, height, width, channels] = image.dims();
        let x = (image - 0.5) * self.contrast + 0.5 + self.brightness;
        let weights =
            Tensor::<B, 1>::from_floats([0.299, 0.587, 0.114], &x.device()).reshape([1, 1, 1, 3]);
        let luma = (x.clone() * weights)
            .sum_dim(3)
            .expand([batch, height, width, channels]);
        let x = luma.clone() + (x - luma) * self.saturation;
        x.clamp(0.0, 1.0).powf_scalar(1.0 / self.gamma)
    }
}

/// `ColorGrade`: its parameters as a `COLOR_GRADE` value.
pub struct ColorGrade;

impl<B: Backend> Node<B> for ColorGrade {
    type Params = Grade;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("ColorGrade")
            .category("image/postprocessing")
            .describe("A colour grade (brightness, contrast, saturation, gamma) to apply with ApplyColorGrade.")
            .param(ParamSpec::float("brightness").default(0.0).range_f(-1.0, 1.0))
            .param(ParamSpec::float("contrast").default(1.0).range_f(0.0, 3.0))
            .param(ParamSpec::float("saturation").default(1.0).range_f(0.0, 3.0))
            .param(ParamSpec::float("gamma").default(1.0).range_f(0.1, 5.0))
            .output("COLOR_GRADE", COLOR_GRADE)
    }

    fn run(
        &self,
        grade: Grade,
        _: Inputs<B>,
        _: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        Ok(Outputs::one(Value::Object(Object::new(COLOR_GRADE, grade))))
    }
}

/// `ApplyColorGrade`: grades an RGB image.
pub struct ApplyColorGrade;

impl<B: Backend> Node<B> for ApplyColorGrade {
    type Params = NoParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("ApplyColorGrade")
            .category("image/postprocessing")
            .describe("Applies a COLOR_GRADE to an RGB image.")
            .input("image", PortType::IMAGE)
            .input("grade", COLOR_GRADE)
            .output("IMAGE", PortType::IMAGE)
    }

    fn run(
        &self,
        _: NoParams,
        inputs: Inputs<B>,
        _: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let image = inputs.image("image")?;
        let channels = image.dims()[3];
        if channels != 3 {
            return Err(NodeError::Input {
                port: "image".to_owned(),
                reason: format!("expected RGB (3 channels), found {channels}"),
            });
        }
        let grade = inputs.object::<Grade>("grade")?;
        Ok(Outputs::one(Value::Image(grade.apply(image))))
    }
}
