//! Model memory nodes: `OffloadModel`, and [`with_model_loaded`], the load-run-release helper the
//! model nodes use (`VAEDecode`'s `release_vae` is its `release` argument).
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use weft_engine::memory::MemoryManager;
use weft_engine::node::{
    Fingerprint, Inputs, Latent, NoParams, Node, NodeContext, NodeError, NodeSchema, Outputs,
    PortType, Value,
};
use weft_engine::patcher::{ModelHandle, ModelPatcher, loads_in_process};
use weft_engine::registry::NodeRegistry;

/// `OffloadModel`: drops a model's device copy and passes a latent through, so that it can sit
/// between the sampler and the decoder and free the diffusion model's memory for the VAE.
pub struct OffloadModel;

impl<B: Backend> Node<B> for OffloadModel {
    type Params = NoParams;

    fn schema(&self) -> NodeSchema {
        NodeSchema::new("OffloadModel")
            .category("advanced/memory")
            .describe(
                "Drops MODEL's device copy (its weights stay in the file mapping; the next node that needs the model loads it again) \
                 and passes `latent` through unchanged. Without `latent` it is a sink, and its LATENT output is an empty batch.",
            )
            .input("model", PortType::MODEL)
            .optional_input("latent", PortType::LATENT)
            .output("LATENT", PortType::LATENT)
            .output_node()
    }

    /// Never served from the cache while a model may be loaded: any load in the process since the
    /// node last ran changes its key. With no load since, nothing became resident, the earlier
    /// offload still holds, and the cached pass-through is exact.
    fn fingerprint(
        &self,
        _params: &NoParams,
        _ctx: &NodeContext<'_, B>,
    ) -> Result<Fingerprint, NodeError> {
        Ok(Fingerprint::none().with(loads_in_process()))
    }

    fn run(
        &self,
        _params: NoParams,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        let model = ModelHandle::<B>::from_inputs(&inputs, "model")?;
        let report = match MemoryManager::<B>::from_services(&ctx.env().services) {
            Some(manager) => manager.offload(model.patcher()),
            None => model.patcher().offload(),
        };
        tracing::info!(
            "{}: offloaded {} weights ({} bytes)",
            ctx.node_id(),
            report.tensors,
            report.bytes
        );
        let latent = match inputs.get("latent") {
            Some(_) => inputs.latent("latent")?,
            None => Latent::new(Tensor::zeros([0, 4, 1, 1], ctx.device())),
        };
        Ok(Outputs::one(Value::Latent(latent)))
    }
}

/// Loads `model` (through the run's [`MemoryManager`] when there is one, which makes room by
/// offloading other models), runs `f` with it, and then, if `release`, drops its device copy —
/// whether `f` succeeded or not. What `VAEDecode` does with `release_vae`.
pub fn with_model_loaded<B: Backend, T>(
    ctx: &NodeContext<'_, B>,
    model: &ModelHandle<B>,
    release: bool,
    f: impl FnOnce(&ModelPatcher<B>) -> Result<T, NodeError>,
) -> Result<T, NodeError> {
    let patcher = model.patcher();
    let manager = MemoryManager::<B>::from_services(&ctx.env().services);
    match &manager {
        Some(manager) => manager
            .load_models(&[patcher])
            .map(drop)
            .map_err(NodeError::other)?,
        None => patcher.load(None).map(drop).map_err(NodeError::other)?,
    }
    let result = f(patcher);
    if release {
        match &manager {
            Some(manager) => manager.release(patcher),
            None => patcher.offload(),
        };
    }
    result
}

pub(crate) fn register<B: Backend>(registry: &mut NodeRegistry<B>) {
    registry.register(OffloadModel);
}
