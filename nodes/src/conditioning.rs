//! Conditioning nodes that need no text encoder: `LoadConditioning` (precomputed text embeddings
//! from a safetensors file — how prompts enter without CLIP/T5), `FluxGuidance` and
//! `ConditioningZeroOut`, with ComfyUI's semantics.
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Deserialize;
use std::collections::BTreeMap;
use weft_engine::formats::ModelFile;
use weft_engine::node::{
    Conditioning, ConditioningEntry, Fingerprint, Inputs, NoParams, Node, NodeContext, NodeError,
    NodeSchema, Outputs, ParamSpec, PortType, Value,
};
use weft_engine::registry::NodeRegistry;
use weft_engine::weights::WeightSource;

/// The option key Flux reads its distilled guidance from (ComfyUI's `"guidance"`).
pub const GUIDANCE: &str = "guidance";
/// The guidance ComfyUI's Flux uses when a conditioning carries none.
pub const DEFAULT_FLUX_GUIDANCE: f64 = 3.5;
/// Where `LoadConditioning` looks besides the workflow's folder.
pub const CONDITIONING_FOLDERS: &[&str] = &["conditioning"];

/// One conditioning of one entry.
pub fn single<B: Backend>(
    context: Tensor<B, 3>,
    pooled: Option<Tensor<B, 2>>,
    options: BTreeMap<String, f64>,
) -> Conditioning<B> {
    Conditioning {
        entries: vec![ConditioningEntry {
            context,
            pooled,
            options,
        }],
    }
}

/// `LoadConditioning`: a text encoder's output computed elsewhere (T5 context, CLIP pooled),
/// read from a safetensors (or GGUF) file.
pub struct LoadConditioning;

/// Parameters of [`LoadConditioning`].
#[derive(Deserialize)]
pub struct LoadConditioningParams {
    /// The file: a path (relative to the workflow's folder) or a name under `models/conditioning`.
    pub file: String,
    /// The context tensor: `[tokens, width]` or `[batch, tokens, width]`.
    pub context_key: String,
    /// The pooled tensor: `[width]` or `[batch, width]`; empty for none.
    pub pooled_key: String,
}

impl<B: Backend> Node<B> for LoadConditioning {
    type Params = LoadConditioningParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("LoadConditioning")
            .category("conditioning")
            .describe(
                "Reads precomputed text embeddings (context [batch?, tokens, width], pooled [batch?, width]) from a safetensors file, \
                 e.g. T5-XXL's and CLIP-L's outputs for Flux.",
            )
            .param(ParamSpec::string("file").describe("path relative to the workflow, or a name under models/conditioning"))
            .param(ParamSpec::string("context_key").default("context"))
            .param(ParamSpec::string("pooled_key").default("pooled").describe("empty: no pooled output"))
            .output("CONDITIONING", PortType::CONDITIONING)
    }

    fn fingerprint(
        &self,
        params: &LoadConditioningParams,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Fingerprint, NodeError> {
        Fingerprint::none().file(&ctx.find_model(CONDITIONING_FOLDERS, &params.file)?)
    }

    fn run(
        &self,
        params: LoadConditioningParams,
        _: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let path = ctx.find_model(CONDITIONING_FOLDERS, &params.file)?;
        let source = WeightSource::open(&path).map_err(NodeError::other)?;
        let file = source.file();
        let context = read(file, &params.context_key, ctx.device())?;
        let context: Tensor<B, 3> = match context.dims().len() {
            2 => context.reshape_3(1)?,
            _ => context.reshape_3(0)?,
        };
        let pooled = match params.pooled_key.as_str() {
            "" => None,
            key => Some(read(file, key, ctx.device())?.reshape_2()?),
        };
        if let Some(pooled) = &pooled
            && pooled.dims()[0] != context.dims()[0]
        {
            return Err(NodeError::msg(format!(
                "{}: {:?} has batch {} but {:?} has batch {}",
                path.display(),
                params.pooled_key,
                pooled.dims()[0],
                params.context_key,
                context.dims()[0]
            )));
        }
        Ok(Outputs::one(Value::Conditioning(single(
            context,
            pooled,
            BTreeMap::new(),
        ))))
    }
}

/// A tensor of a file as f32 values with its shape, before it is given a rank.
struct Loaded<B: Backend> {
    values: Tensor<B, 1>,
    shape: Vec<usize>,
    origin: String,
}

impl<B: Backend> Loaded<B> {
    fn dims(&self) -> &[usize] {
        &self.shape
    }

    fn wrong(&self, expected: &str) -> NodeError {
        NodeError::msg(format!(
            "{} has shape {:?}, expected {expected}",
            self.origin, self.shape
        ))
    }

    /// As `[batch, tokens, width]`; `lead` leading ones are added first.
    fn reshape_3(self, lead: usize) -> Result<Tensor<B, 3>, NodeError> {
        let mut shape = vec![1; lead];
        shape.extend(&self.shape);
        match shape.as_slice() {
            &[b, l, d] if b > 0 && l > 0 && d > 0 => Ok(self.values.reshape([b, l, d])),
            _ => Err(self.wrong("[tokens, width] or [batch, tokens, width]")),
        }
    }

    /// As `[batch, width]`.
    fn reshape_2(self) -> Result<Tensor<B, 2>, NodeError> {
        match *self.shape.as_slice() {
            [d] if d > 0 => Ok(self.values.reshape([1, d])),
            [b, d] if b > 0 && d > 0 => Ok(self.values.reshape([b, d])),
            _ => Err(self.wrong("[width] or [batch, width]")),
        }
    }
}

fn read<B: Backend>(
    file: &ModelFile,
    key: &str,
    device: &B::Device,
) -> Result<Loaded<B>, NodeError> {
    let info = file.tensor(key).ok_or_else(|| {
        let names: Vec<&str> = file
            .tensors()
            .iter()
            .map(|t| t.name.as_str())
            .take(8)
            .collect();
        NodeError::msg(format!(
            "{}: no tensor {key:?} (it has: {})",
            file.path().display(),
            names.join(", ")
        ))
    })?;
    let values = file.dequantize(info).map_err(NodeError::other)?;
    let n = values.len();
    Ok(Loaded {
        values: Tensor::from_data(TensorData::new(values, [n]), device),
        shape: info.shape.iter().map(|&d| d as usize).collect(),
        origin: format!("{}: tensor {key:?}", file.path().display()),
    })
}

/// `FluxGuidance`: sets the distilled guidance Flux dev conditions on.
pub struct FluxGuidance;

/// Parameters of [`FluxGuidance`].
#[derive(Deserialize)]
pub struct FluxGuidanceParams {
    /// The guidance value (ComfyUI's default 3.5).
    pub guidance: f64,
}

impl<B: Backend> Node<B> for FluxGuidance {
    type Params = FluxGuidanceParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("FluxGuidance")
            .category("advanced/conditioning/flux")
            .describe("Sets the guidance Flux dev is conditioned on (its distilled CFG) in every entry of the conditioning.")
            .input("conditioning", PortType::CONDITIONING)
            .param(ParamSpec::float("guidance").default(DEFAULT_FLUX_GUIDANCE).range_f(0.0, 100.0))
            .output("CONDITIONING", PortType::CONDITIONING)
    }

    fn run(
        &self,
        params: FluxGuidanceParams,
        inputs: Inputs<B>,
        _: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let mut conditioning = inputs.conditioning("conditioning")?;
        for entry in &mut conditioning.entries {
            entry.options.insert(GUIDANCE.to_owned(), params.guidance);
        }
        Ok(Outputs::one(Value::Conditioning(conditioning)))
    }
}

/// `ConditioningZeroOut`: zeros of the same shapes (context and pooled), options kept — the
/// usual negative for Flux when cfg is above 1.
pub struct ConditioningZeroOut;

impl<B: Backend> Node<B> for ConditioningZeroOut {
    type Params = NoParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("ConditioningZeroOut")
            .category("advanced/conditioning")
            .describe("Replaces the context and pooled output with zeros of the same shapes, keeping the options.")
            .input("conditioning", PortType::CONDITIONING)
            .output("CONDITIONING", PortType::CONDITIONING)
    }

    fn run(
        &self,
        _: NoParams,
        inputs: Inputs<B>,
        _: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let mut conditioning = inputs.conditioning("conditioning")?;
        for entry in &mut conditioning.entries {
            entry.context = entry.context.zeros_like();
            entry.pooled = entry.pooled.as_ref().map(Tensor::zeros_like);
        }
        Ok(Outputs::one(Value::Conditioning(conditioning)))
    }
}

pub(crate) fn register<B: Backend>(registry: &mut NodeRegistry<B>) {
    registry
        .register(LoadConditioning)
        .register(FluxGuidance)
        .register(ConditioningZeroOut);
}
