//! The memory nodes in workflows: `OffloadModel` frees the model and passes the latent through,
//! and is never served from the cache while the model is loaded; `with_model_loaded` (the
//! release path `VAEDecode`'s `release_vae` uses) releases a model after its node, even a failing one.
use super::{cpu, small_model};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::Deserialize;
use std::sync::Arc;
use weft_engine::exec::{EventLog, Executor};
use weft_engine::graph::{Graph, Workflow};
use weft_engine::memory::{MemoryManager, MemoryMode, MemoryPolicy};
use weft_engine::node::{
    Inputs, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec, PortType, RunEnv, Value,
};
use weft_engine::patcher::{BurnDevice, LoadOptions, ModelHandle, ModelPatcher};
use weft_engine::registry::{NodeRegistry, Plugin};
use weft_nodes::offload::with_model_loaded;
use weft_tests::{B, workflow};

/// `TestLoadModel`: opens `path` as a MODEL (and loads it, as a sampler would).
struct TestLoadModel;
/// `TestDecode`: uses the VAE's first weight through `with_model_loaded`, releasing it after
/// when `release_vae`; `fail` makes the work fail after the load.
struct TestDecode;

#[derive(Deserialize)]
struct PathParams {
    path: String,
}

#[derive(Deserialize)]
struct DecodeParams {
    release_vae: bool,
    fail: bool,
}

impl<Bk: Backend> Node<Bk> for TestLoadModel {
    type Params = PathParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestLoadModel")
            .param(ParamSpec::text("path"))
            .output("MODEL", PortType::MODEL)
    }
    fn run(
        &self,
        params: PathParams,
        _: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        let device = Arc::new(BurnDevice::<Bk>::host(ctx.device().clone()));
        let patcher = ModelPatcher::open(
            ctx.resolve_path(&params.path),
            device,
            LoadOptions::default(),
        )
        .map_err(NodeError::other)?;
        let handle = ModelHandle::new(patcher);
        with_model_loaded(ctx, &handle, false, |_| Ok(()))?;
        Ok(Outputs::one(handle.into_value(PortType::MODEL)))
    }
}

impl<Bk: Backend> Node<Bk> for TestDecode {
    type Params = DecodeParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestDecode")
            .input("vae", PortType::MODEL)
            .param(ParamSpec::boolean("release_vae").default(true))
            .param(ParamSpec::boolean("fail").default(false))
            .output("IMAGE", PortType::IMAGE)
            .output_node()
    }
    fn run(
        &self,
        params: DecodeParams,
        inputs: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        let vae = ModelHandle::<Bk>::from_inputs(&inputs, "vae")?;
        let first = with_model_loaded(ctx, &vae, params.release_vae, |patcher| {
            if params.fail {
                return Err(NodeError::msg("decode failed"));
            }
            let name = patcher.source().tensors()[0].name.clone();
            let weight = patcher
                .resident(&name)
                .ok_or_else(|| NodeError::msg("the VAE is not loaded while decoding"))?;
            Ok(weight.read_back().map_err(NodeError::other)?[0])
        })?;
        Ok(Outputs::one(Value::Image(Tensor::full(
            [1, 1, 1, 1],
            f32::from(first),
            ctx.device(),
        ))))
    }
}

struct MemoryTestPlugin;

impl Plugin for MemoryTestPlugin {
    fn name(&self) -> &str {
        "weft-tests-memory"
    }
    fn build<Bk: Backend>(&self, registry: &mut NodeRegistry<Bk>) {
        registry.register(TestLoadModel).register(TestDecode);
    }
}

struct Run {
    executor: Executor<B>,
    registry: NodeRegistry<B>,
    dir: tempfile::TempDir,
}

impl Run {
    fn new(manager: Option<MemoryManager<B>>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        small_model(dir.path(), "model.gguf");
        small_model(dir.path(), "vae.gguf");
        let mut env = RunEnv {
            output_dir: dir.path().join("out"),
            base_dir: dir.path().to_owned(),
            ..RunEnv::default()
        };
        if let Some(manager) = manager {
            env.services.insert(Arc::new(manager));
        }
        let registry =
            NodeRegistry::from_plugins(&(weft_nodes::Builtin, MemoryTestPlugin)).unwrap();
        Run {
            executor: Executor::new(Default::default(), env),
            registry,
            dir,
        }
    }

    fn run(&mut self, nodes: &str) -> weft_engine::exec::RunReport {
        let source = workflow(nodes);
        let graph = Graph::build(&Workflow::parse(&source, None).unwrap(), &self.registry)
            .unwrap_or_else(|r| panic!("{r}"));
        self.executor
            .run(&graph, &EventLog::default(), &Default::default())
            .unwrap_or_else(|e| panic!("{}", weft_engine::exec::error_chain(&e)))
    }

    fn model(&self, node: &str) -> Arc<ModelHandle<B>> {
        let outputs = self.executor.outputs_of(node).expect("cached outputs");
        let Value::Object(object) = &outputs[0] else {
            panic!("a MODEL")
        };
        object
            .downcast_arc::<ModelHandle<B>>()
            .expect("a ModelHandle")
    }
}

const OFFLOAD: &str = r#"
    "model": (type: "TestLoadModel", params: { "path": "model.gguf" }),
    "latent": (type: "EmptySD3LatentImage", params: { "width": 64, "height": 32, "batch_size": 2 }),
    "offload": (type: "OffloadModel", inputs: { "model": "model", "latent": "latent" }),
"#;

#[test]
fn offload_model_frees_the_model_and_passes_the_latent_through() {
    for manager in [
        None,
        Some(MemoryManager::new(cpu(), MemoryPolicy::default())),
    ] {
        let mut run = Run::new(manager);
        let report = run.run(OFFLOAD);
        assert!(report.executed_ids().contains(&"offload"));
        let model = run.model("model");
        assert_eq!(
            model.patcher().device_bytes(),
            0,
            "OffloadModel left the model on the device"
        );
        assert!(model.patcher().loads() >= 1, "the loader loaded it first");
        let outputs = run.executor.outputs_of("offload").unwrap();
        let Value::Latent(latent) = &outputs[0] else {
            panic!("a LATENT")
        };
        assert_eq!(latent.samples.dims(), [2, 16, 4, 8]);
    }
}

#[test]
fn offload_model_is_never_served_from_the_cache_while_its_model_is_loaded() {
    let mut run = Run::new(None);
    run.run(OFFLOAD);
    let model = run.model("model");
    // Something loads the model between runs (the loader itself is cached and does not).
    model.patcher().load(None).unwrap();
    assert!(model.patcher().device_bytes() > 0);
    let second = run.run(OFFLOAD);
    assert!(
        second.cached.contains(&"model".to_owned()),
        "the loader is cached"
    );
    assert!(
        second.executed_ids().contains(&"offload"),
        "OffloadModel was served from the cache with its model loaded"
    );
    assert_eq!(model.patcher().device_bytes(), 0);
}

#[test]
fn offload_model_without_a_latent_is_a_sink() {
    let mut run = Run::new(None);
    let report = run.run(r#""model": (type: "TestLoadModel", params: { "path": "model.gguf" }), "offload": (type: "OffloadModel", inputs: { "model": "model" }),"#);
    assert!(report.executed_ids().contains(&"offload"));
    assert_eq!(run.model("model").patcher().device_bytes(), 0);
}

const DECODE: &str = r#"
    "vae": (type: "TestLoadModel", params: { "path": "vae.gguf" }),
    "decode": (type: "TestDecode", inputs: { "vae": "vae" }, params: { "release_vae": RELEASE }),
"#;

#[test]
fn the_release_path_drops_the_vae_after_decoding_and_keeps_it_when_asked() {
    for (release, manager) in [(true, false), (false, false), (true, true)] {
        let manager = manager.then(|| {
            MemoryManager::new(
                cpu(),
                MemoryPolicy {
                    mode: MemoryMode::Normal,
                    reserve_bytes: 0,
                    capacity: Some(1 << 30),
                    ..Default::default()
                },
            )
        });
        let mut run = Run::new(manager);
        run.run(&DECODE.replace("RELEASE", &release.to_string()));
        let vae = run.model("vae");
        let outputs = run.executor.outputs_of("decode").unwrap();
        let Value::Image(image) = &outputs[0] else {
            panic!("an IMAGE")
        };
        let first_byte = run.dir.path().join("vae.gguf");
        let source = weft_engine::weights::WeightSource::open(&first_byte).unwrap();
        let expected = f32::from(source.bytes(&source.tensors()[0])[0]);
        assert_eq!(
            image.to_data().to_vec::<f32>().unwrap(),
            [expected],
            "the decoder read the loaded weight"
        );
        if release {
            assert_eq!(
                vae.patcher().device_bytes(),
                0,
                "release_vae left the VAE on the device"
            );
        } else {
            assert_eq!(
                vae.patcher().device_bytes(),
                vae.patcher().full_bytes(),
                "release_vae = false keeps it loaded"
            );
        }
        if let Some(manager) = run.executor.env().services.get::<MemoryManager<B>>() {
            assert!(
                manager
                    .loaded()
                    .iter()
                    .all(|m| !m.path.ends_with("vae.gguf") || !release),
                "a released model is forgotten"
            );
        }
    }
}

#[test]
fn the_release_path_releases_even_when_the_work_fails() {
    let mut run = Run::new(None);
    let source = workflow(
        r#""vae": (type: "TestLoadModel", params: { "path": "vae.gguf" }),
           "decode": (type: "TestDecode", inputs: { "vae": "vae" }, params: { "fail": true }),"#,
    );
    let graph = Graph::build(&Workflow::parse(&source, None).unwrap(), &run.registry).unwrap();
    let err = run
        .executor
        .run(&graph, &EventLog::default(), &Default::default())
        .unwrap_err();
    assert!(weft_engine::exec::error_chain(&err).contains("decode failed"));
    assert_eq!(run.model("vae").patcher().device_bytes(), 0);
}
