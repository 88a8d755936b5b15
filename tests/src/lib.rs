//! Test support shared by the integration tests in `tests/`: the test plugin (simple nodes that
//! count their runs), a harness that runs workflow text, and paths into the repository.
use burn::tensor::backend::Backend;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weft_engine::exec::{CancelToken, EventLog, ExecError, Executor, RunReport};
use weft_engine::graph::{Graph, ValidationReport, Workflow};
use weft_engine::node::{
    Fingerprint, Inputs, NoParams, Node, NodeContext, NodeError, NodeSchema, Object, Outputs,
    ParamSpec, PortType, RunEnv, Value,
};
use weft_engine::registry::{NodeRegistry, Plugin};

/// The backend every test runs on.
pub type B = burn::backend::Flex;

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

/// What the test plugin's nodes saw: how often each node ran, in which order, and what sinks received.
#[derive(Default)]
pub struct Probe {
    runs: Mutex<HashMap<String, usize>>,
    order: Mutex<Vec<String>>,
    recorded: Mutex<Vec<(String, i64)>>,
    /// The token `TestSteps` cancels at its `cancel_at` step (pass it to the executor).
    pub cancel: CancelToken,
}

impl Probe {
    fn ran(&self, node_id: &str) {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(node_id.to_owned())
            .or_default() += 1;
        self.order.lock().unwrap().push(node_id.to_owned());
    }

    /// How many times node `node_id` ran (in any run).
    pub fn runs(&self, node_id: &str) -> usize {
        self.runs.lock().unwrap().get(node_id).copied().unwrap_or(0)
    }

    /// The ids of the nodes that ran, in order, since the last call.
    pub fn take_order(&self) -> Vec<String> {
        std::mem::take(&mut *self.order.lock().unwrap())
    }

    /// What `TestRecord` sinks received, in order, since the last call.
    pub fn take_recorded(&self) -> Vec<(String, i64)> {
        std::mem::take(&mut *self.recorded.lock().unwrap())
    }
}

/// The test plugin: integer arithmetic, a sink, a step loop, a failing node, a file reader and a
/// plugin-defined port type, all counting their runs in a shared [`Probe`].
#[derive(Clone, Default)]
pub struct TestPlugin {
    /// Shared with every node the plugin registers.
    pub probe: Arc<Probe>,
}

/// A plugin-defined port type: a pair of integers.
pub const PAIR: PortType = PortType::custom("TEST_PAIR");

/// The value behind a [`PAIR`] port.
pub struct Pair(pub i64, pub i64);

impl Plugin for TestPlugin {
    fn name(&self) -> &str {
        "weft-tests"
    }

    fn build<Bk: Backend>(&self, registry: &mut NodeRegistry<Bk>) {
        let probe = || self.probe.clone();
        registry.register_type(PAIR, "two integers (test plugin)");
        registry
            .register(TestConst(probe()))
            .register(TestAdd(probe()))
            .register(TestScale(probe()))
            .register(TestRecord(probe()))
            .register(TestCounter(probe(), Mutex::new(0)))
            .register(TestSteps(probe()))
            .register(TestFail(probe()))
            .register(TestFileSize(probe()))
            .register(TestMakePair(probe()))
            .register(TestPairSum(probe()))
            .register(TestPairDiff(probe()))
            .register(TestBadOutputs(probe()));
    }
}

#[derive(Deserialize)]
struct ValueParams {
    value: i64,
}

/// `TestConst`: outputs its `value` parameter.
struct TestConst(Arc<Probe>);
impl<Bk: Backend> Node<Bk> for TestConst {
    type Params = ValueParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestConst")
            .category("test")
            .param(ParamSpec::int("value").range(-1000, 1000))
            .output("INT", PortType::INT)
    }
    fn run(
        &self,
        p: ValueParams,
        _: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        Ok(Outputs::one(Value::Int(p.value)))
    }
}

/// `TestAdd`: `a + b`.
struct TestAdd(Arc<Probe>);
impl<Bk: Backend> Node<Bk> for TestAdd {
    type Params = NoParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestAdd")
            .category("test")
            .input("a", PortType::INT)
            .input("b", PortType::INT)
            .output("INT", PortType::INT)
    }
    fn run(
        &self,
        _: NoParams,
        inputs: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        Ok(Outputs::one(Value::Int(
            inputs.int("a")? + inputs.int("b")?,
        )))
    }
}

#[derive(Deserialize)]
struct ScaleParams {
    factor: i64,
    mode: String,
}

/// `TestScale`: `value * factor` (or `value + factor` in mode "add"); outputs the result twice,
/// as `INT` and as `DOUBLE` (2×), so links must name one.
struct TestScale(Arc<Probe>);
impl<Bk: Backend> Node<Bk> for TestScale {
    type Params = ScaleParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestScale")
            .category("test")
            .input("value", PortType::INT)
            .param(ParamSpec::int("factor").default(2).range(0, 100))
            .param(ParamSpec::choice("mode", &["multiply", "add"]).default("multiply"))
            .output("INT", PortType::INT)
            .output("DOUBLE", PortType::INT)
    }
    fn run(
        &self,
        p: ScaleParams,
        inputs: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        let v = inputs.int("value")?;
        let out = if p.mode == "add" {
            v + p.factor
        } else {
            v * p.factor
        };
        Ok(Outputs::one(Value::Int(out)).with(Value::Int(2 * out)))
    }
}

/// `TestRecord`: an output node that records its input in the probe (cacheable, so a cached
/// record does not record again).
struct TestRecord(Arc<Probe>);
impl<Bk: Backend> Node<Bk> for TestRecord {
    type Params = NoParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestRecord")
            .category("test")
            .input("value", PortType::INT)
            .output_node()
    }
    fn run(
        &self,
        _: NoParams,
        inputs: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        self.0
            .recorded
            .lock()
            .unwrap()
            .push((ctx.node_id().to_owned(), inputs.int("value")?));
        Ok(Outputs::none())
    }
}

/// `TestCounter`: always runs; outputs how many times it has run (a stand-in for a random source).
struct TestCounter(Arc<Probe>, Mutex<i64>);
impl<Bk: Backend> Node<Bk> for TestCounter {
    type Params = NoParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestCounter")
            .category("test")
            .output("INT", PortType::INT)
            .always_run()
    }
    fn run(
        &self,
        _: NoParams,
        _: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        let mut n = self.1.lock().unwrap();
        *n += 1;
        Ok(Outputs::one(Value::Int(*n)))
    }
}

#[derive(Deserialize)]
struct StepsParams {
    steps: i64,
    cancel_at: i64,
    delay_ms: i64,
}

/// `TestSteps`: a step loop like a sampler's: progress per step, a cancellation check before each
/// step; cancels the probe's token after step `cancel_at` (0: never); outputs the steps done.
struct TestSteps(Arc<Probe>);
impl<Bk: Backend> Node<Bk> for TestSteps {
    type Params = StepsParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestSteps")
            .category("test")
            .optional_input("after", PortType::INT)
            .param(ParamSpec::int("steps").default(5).range(1, 1_000_000))
            .param(ParamSpec::int("cancel_at").default(0).range(0, 1_000_000))
            .param(ParamSpec::int("delay_ms").default(0).range(0, 1000))
            .output("INT", PortType::INT)
    }
    fn run(
        &self,
        p: StepsParams,
        _: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        for step in 1..=p.steps {
            ctx.check_cancelled()?;
            if p.delay_ms > 0 {
                std::thread::sleep(Duration::from_millis(p.delay_ms as u64));
            }
            self.0
                .recorded
                .lock()
                .unwrap()
                .push((format!("{}:step", ctx.node_id()), step));
            ctx.progress(step as u64, p.steps as u64);
            if step == p.cancel_at {
                self.0.cancel.cancel();
            }
        }
        Ok(Outputs::one(Value::Int(p.steps)))
    }
}

#[derive(Deserialize)]
struct FailParams {
    message: String,
}

/// `TestFail`: fails with its `message`.
struct TestFail(Arc<Probe>);
impl<Bk: Backend> Node<Bk> for TestFail {
    type Params = FailParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestFail")
            .category("test")
            .optional_input("value", PortType::INT)
            .param(ParamSpec::string("message"))
            .output("INT", PortType::INT)
    }
    fn run(
        &self,
        p: FailParams,
        _: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        Err(NodeError::msg(p.message))
    }
}

#[derive(Deserialize)]
struct PathParams {
    path: String,
}

/// `TestFileSize`: a file's length; its fingerprint is the file's size and mtime.
struct TestFileSize(Arc<Probe>);
impl<Bk: Backend> Node<Bk> for TestFileSize {
    type Params = PathParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestFileSize")
            .category("test")
            .param(ParamSpec::string("path"))
            .output("INT", PortType::INT)
    }
    fn fingerprint(
        &self,
        p: &PathParams,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Fingerprint, NodeError> {
        Fingerprint::none().file(&ctx.resolve_path(&p.path))
    }
    fn run(
        &self,
        p: PathParams,
        _: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        let path = ctx.resolve_path(&p.path);
        let len = std::fs::metadata(&path)
            .map_err(|e| NodeError::io(&path, e))?
            .len();
        Ok(Outputs::one(Value::Int(len as i64)))
    }
}

/// `TestMakePair`: `(a, b)` as a plugin-defined `TEST_PAIR` value.
struct TestMakePair(Arc<Probe>);
impl<Bk: Backend> Node<Bk> for TestMakePair {
    type Params = NoParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestMakePair")
            .category("test")
            .input("a", PortType::INT)
            .input("b", PortType::INT)
            .output("PAIR", PAIR)
    }
    fn run(
        &self,
        _: NoParams,
        inputs: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        // Records its release (after its last consumer) in the run order, as "released <id>".
        let (probe, released) = (self.0.clone(), format!("released {}", ctx.node_id()));
        let pair = Object::new(PAIR, Pair(inputs.int("a")?, inputs.int("b")?))
            .release_after_last_use(move || probe.ran(&released));
        Ok(Outputs::one(Value::Object(pair)))
    }
}

/// `TestPairSum`: the sum of a `TEST_PAIR`.
struct TestPairSum(Arc<Probe>);
impl<Bk: Backend> Node<Bk> for TestPairSum {
    type Params = NoParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestPairSum")
            .category("test")
            .input("pair", PAIR)
            .output("INT", PortType::INT)
    }
    fn run(
        &self,
        _: NoParams,
        inputs: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        let pair = inputs.object::<Pair>("pair")?;
        Ok(Outputs::one(Value::Int(pair.0 + pair.1)))
    }
}

/// `TestPairDiff`: the difference of a `TEST_PAIR` (a second, distinct consumer of one pair).
struct TestPairDiff(Arc<Probe>);
impl<Bk: Backend> Node<Bk> for TestPairDiff {
    type Params = NoParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestPairDiff")
            .category("test")
            .input("pair", PAIR)
            .output("INT", PortType::INT)
    }
    fn run(
        &self,
        _: NoParams,
        inputs: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        let pair = inputs.object::<Pair>("pair")?;
        Ok(Outputs::one(Value::Int(pair.0 - pair.1)))
    }
}

/// `TestBadOutputs`: declares an INT output but returns a STRING (a buggy node).
struct TestBadOutputs(Arc<Probe>);
impl<Bk: Backend> Node<Bk> for TestBadOutputs {
    type Params = NoParams;
    fn schema(&self) -> NodeSchema {
        NodeSchema::new("TestBadOutputs")
            .category("test")
            .output("INT", PortType::INT)
    }
    fn run(
        &self,
        _: NoParams,
        _: Inputs<Bk>,
        ctx: &NodeContext<'_, Bk>,
    ) -> Result<Outputs<Bk>, NodeError> {
        self.0.ran(ctx.node_id());
        Ok(Outputs::one(Value::String("not an int".to_owned())))
    }
}

/// A registry with the built-in nodes and `plugin`.
pub fn registry(plugin: &TestPlugin) -> NodeRegistry<B> {
    NodeRegistry::from_plugins(&(weft_nodes::Builtin, plugin.clone()))
        .expect("the built-in and test plugins do not conflict")
}

/// Parses and validates workflow text.
pub fn build(source: &str, registry: &NodeRegistry<B>) -> Result<Graph<B>, ValidationReport> {
    Graph::build(&Workflow::parse(source, None)?, registry)
}

/// An executor with the built-in and test plugins, writing into a temporary folder.
pub struct Harness {
    /// What the test nodes saw.
    pub probe: Arc<Probe>,
    /// Built-in and test nodes.
    pub registry: NodeRegistry<B>,
    /// Keeps its cache between [`Harness::run`] calls.
    pub executor: Executor<B>,
    /// Every event of every run.
    pub events: EventLog,
    /// The output (and base) folder.
    pub dir: tempfile::TempDir,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A fresh harness: empty cache, empty probe, empty temporary folder.
    pub fn new() -> Self {
        let plugin = TestPlugin::default();
        let dir = tempfile::tempdir().expect("a temporary folder");
        let env = RunEnv {
            output_dir: dir.path().join("output"),
            base_dir: dir.path().to_owned(),
            ..RunEnv::default()
        };
        Harness {
            probe: plugin.probe.clone(),
            registry: registry(&plugin),
            executor: Executor::new(Default::default(), env),
            events: EventLog::default(),
            dir,
        }
    }

    /// Validates `source` (panicking with the report if invalid).
    pub fn graph(&self, source: &str) -> Graph<B> {
        build(source, &self.registry).unwrap_or_else(|report| panic!("invalid workflow:\n{report}"))
    }

    /// Runs a graph with the probe's cancel token.
    pub fn run_graph(&mut self, graph: &Graph<B>) -> Result<RunReport, ExecError> {
        let cancel = self.probe.cancel.clone();
        self.executor.run(graph, &self.events, &cancel)
    }

    /// Validates and runs `source`, panicking on failure.
    pub fn run(&mut self, source: &str) -> RunReport {
        let graph = self.graph(source);
        self.run_graph(&graph)
            .unwrap_or_else(|e| panic!("run failed: {}", weft_engine::exec::error_chain(&e)))
    }
}

/// Wraps node entries in a version-1 workflow: `workflow(r#""a": (type: "TestConst", …),"#)`.
pub fn workflow(nodes: &str) -> String {
    format!("Workflow(version: 1, nodes: {{\n{nodes}\n}})")
}
