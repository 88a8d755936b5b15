//! The executor: runs what a graph's output nodes need, in the graph's deterministic order, serves
//! unchanged nodes from a cache kept across runs, reports events, and stops when cancelled.
mod cache;
pub(crate) mod cancel;
pub(crate) mod events;

pub use cache::Signature;
pub use cancel::CancelToken;
pub use events::{Event, EventLog, EventSink, NoEvents};

use crate::graph::{EdgeTarget, Graph};
use crate::node::{Inputs, NodeContext, NodeError, ParamValue, RunEnv, Value};
use burn::tensor::backend::Backend;
use cache::{OutputCache, SignatureInput};
use petgraph::graph::NodeIndex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A node failed.
    #[error("node \"{node_id}\" ({node_type})")]
    Node {
        /// The node's id.
        node_id: String,
        /// Its type.
        node_type: String,
        /// What went wrong.
        #[source]
        source: NodeError,
    },
    /// A node returned outputs that its schema does not declare (a bug in the node).
    #[error("node \"{node_id}\" ({node_type}) broke its schema: {reason}")]
    Contract {
        /// The node's id.
        node_id: String,
        /// Its type.
        node_type: String,
        /// How.
        reason: String,
    },
    /// The run was cancelled.
    #[error("cancelled{}", .node_id.as_ref().map(|n| format!(" at node \"{n}\"")).unwrap_or_default())]
    Cancelled {
        /// The node that was running or next.
        node_id: Option<String>,
    },
}

/// The error and its causes on one line, joined by ": " (how the CLI and tests print errors).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A node that ran.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRun {
    /// The node's id.
    pub node_id: String,
    /// How long it ran.
    pub duration: Duration,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunReport {
    /// The executor's run counter, from 1.
    pub run: u64,
    /// Nodes that ran, in order.
    pub executed: Vec<NodeRun>,
    /// Nodes served from the cache, in order.
    pub cached: Vec<String>,
    /// Nodes that no output node needs: neither run nor looked up.
    pub skipped: Vec<String>,
    /// Wall time of the run.
    pub duration: Duration,
}

impl RunReport {
    /// The ids of the nodes that ran, in order.
    pub fn executed_ids(&self) -> Vec<&str> {
        self.executed.iter().map(|r| r.node_id.as_str()).collect()
    }
}

/// The signature and outputs of each node computed (or served) so far in a run.
type Computed<B> = HashMap<NodeIndex, (Signature, Arc<[Value<B>]>)>;

/// What [`Executor::step`] did with one node: its signature, its outputs, and how long it ran
/// (`None`: served from the cache).
type Step<B> = (Signature, Arc<[Value<B>]>, Option<Duration>);

/// Runs graphs on one device, keeping a cache of outputs between runs.
pub struct Executor<B: Backend> {
    device: B::Device,
    env: RunEnv,
    cache: OutputCache<B>,
    runs: u64,
    last_signatures: HashMap<String, Signature>,
}

impl<B: Backend> Executor<B> {
    /// An executor with an empty cache.
    pub fn new(device: B::Device, env: RunEnv) -> Self {
        Executor {
            device,
            env,
            cache: OutputCache::new(),
            runs: 0,
            last_signatures: HashMap::new(),
        }
    }

    /// The environment nodes see (folders, services).
    pub fn env(&self) -> &RunEnv {
        &self.env
    }

    /// The environment, to change between runs.
    pub fn env_mut(&mut self) -> &mut RunEnv {
        &mut self.env
    }

    /// How many node results the cache holds.
    pub fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    /// Forgets every cached result.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// The outputs node `node_id` produced (or was served) in the last run, if they are cached
    /// (nodes that always run are not).
    pub fn outputs_of(&self, node_id: &str) -> Option<Vec<Value<B>>> {
        let signature = self.last_signatures.get(node_id)?;
        self.cache.peek(*signature).map(|o| o.to_vec())
    }

    /// Runs what `graph`'s output nodes need. Stops at the first failure, or at the next check after
    /// `cancel` is set; either way nothing is cached from the node that did not finish.
    pub fn run(
        &mut self,
        graph: &Graph<B>,
        events: &dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<RunReport, ExecError> {
        self.runs += 1;
        let run = self.runs;
        let started = Instant::now();
        let plan = graph.needed();
        events.event(&Event::RunStarted {
            run,
            planned: plan.len(),
        });
        let mut report = RunReport {
            run,
            ..RunReport::default()
        };
        report.skipped = graph
            .nodes()
            .filter(|n| !plan.iter().any(|&i| graph.node_at(i).id == n.id))
            .map(|n| n.id.clone())
            .collect();

        let mut computed: Computed<B> = HashMap::new();
        self.last_signatures.clear();
        let last_use = last_consumers(graph, &plan);
        for (position, &index) in plan.iter().enumerate() {
            let node = graph.node_at(index);
            let step = if cancel.is_cancelled() {
                Err(ExecError::Cancelled {
                    node_id: Some(node.id.clone()),
                })
            } else {
                self.step(graph, index, &computed, run, events, cancel)
            };
            match step {
                Ok((signature, outputs, duration)) => {
                    match duration {
                        Some(duration) => report.executed.push(NodeRun {
                            node_id: node.id.clone(),
                            duration,
                        }),
                        None => report.cached.push(node.id.clone()),
                    }
                    self.last_signatures.insert(node.id.clone(), signature);
                    computed.insert(index, (signature, outputs));
                    release_unused(graph, &last_use, position, &computed);
                }
                Err(error) => {
                    events.event(&failure_event(&error));
                    return Err(error);
                }
            }
        }

        self.cache.retain_run(run);
        report.duration = started.elapsed();
        events.event(&Event::RunFinished {
            run,
            duration: report.duration,
        });
        Ok(report)
    }

    /// Keys node `index` and serves it from the cache or runs it. Returns its signature, its outputs
    /// and, if it ran, how long it took.
    fn step(
        &mut self,
        graph: &Graph<B>,
        index: NodeIndex,
        computed: &Computed<B>,
        run: u64,
        events: &dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<Step<B>, ExecError> {
        let node = graph.node_at(index);
        let node_type = node.schema.type_name.as_str();
        let fail = |source: NodeError| match source {
            NodeError::Cancelled => ExecError::Cancelled {
                node_id: Some(node.id.clone()),
            },
            source => ExecError::Node {
                node_id: node.id.clone(),
                node_type: node_type.to_owned(),
                source,
            },
        };

        let mut params = node.params.clone();
        let mut inputs = Inputs::new();
        let mut upstream = Vec::new();
        for (source, edge) in graph.incoming(index) {
            // The plan is topological, so every source was computed before its consumers.
            let (source_signature, outputs) = &computed[&source];
            let value = outputs[edge.output].clone();
            match &edge.target {
                EdgeTarget::Input(name) => {
                    upstream.push((name.clone(), *source_signature, edge.output));
                    inputs.insert(name, value);
                }
                EdgeTarget::Param(name) => {
                    params.insert(
                        name.clone(),
                        linked_param(node, name, &value).map_err(fail)?,
                    );
                }
            }
        }

        let ctx = NodeContext::new(&node.id, &self.device, &self.env)
            .with_events(events)
            .with_cancel(cancel.clone());
        let fingerprint = node.node.fingerprint(&params, &ctx).map_err(fail)?;
        let nonce = node.schema.always_run.then_some(run);
        let signature = Signature::of(&SignatureInput {
            node_type,
            params: &params,
            upstream: &upstream,
            fingerprint: &fingerprint,
            nonce,
        });

        if !node.schema.always_run
            && let Some(outputs) = self.cache.get(signature, run)
        {
            tracing::debug!(node = %node.id, node_type, "cached");
            events.event(&Event::NodeCached {
                node_id: node.id.clone(),
                node_type: node_type.to_owned(),
            });
            return Ok((signature, outputs, None));
        }

        tracing::debug!(node = %node.id, node_type, "started");
        events.event(&Event::NodeStarted {
            node_id: node.id.clone(),
            node_type: node_type.to_owned(),
        });
        let started = Instant::now();
        let outputs = node
            .node
            .run(&params, inputs, &ctx)
            .map_err(fail)?
            .into_values();
        check_outputs(&node.schema, &outputs).map_err(|reason| ExecError::Contract {
            node_id: node.id.clone(),
            node_type: node_type.to_owned(),
            reason,
        })?;
        let duration = started.elapsed();
        tracing::debug!(node = %node.id, node_type, ?duration, "finished");
        events.event(&Event::NodeFinished {
            node_id: node.id.clone(),
            node_type: node_type.to_owned(),
            duration,
        });
        let outputs: Arc<[Value<B>]> = outputs.into();
        if !node.schema.always_run {
            self.cache.insert(signature, outputs.clone(), run);
        }
        Ok((signature, outputs, Some(duration)))
    }
}

/// For every planned node, the plan position of its last consumer in the plan (nodes nobody in the
/// plan consumes are absent).
fn last_consumers<B: Backend>(graph: &Graph<B>, plan: &[NodeIndex]) -> HashMap<NodeIndex, usize> {
    let mut last = HashMap::new();
    for (position, &index) in plan.iter().enumerate() {
        for (source, _) in graph.incoming(index) {
            last.insert(source, position);
        }
    }
    last
}

/// Calls the release hooks of the objects whose last consumer in this run just finished (the
/// node at `position`): e.g. a text encoder's weights leave the device before sampling.
fn release_unused<B: Backend>(
    graph: &Graph<B>,
    last_use: &HashMap<NodeIndex, usize>,
    position: usize,
    computed: &Computed<B>,
) {
    for (&source, _) in last_use.iter().filter(|&(_, &p)| p == position) {
        let Some((_, outputs)) = computed.get(&source) else {
            continue;
        };
        for value in outputs.iter() {
            if let Value::Object(object) = value
                && object.release_if_unused()
            {
                tracing::info!(node = %graph.node_at(source).id, "released {} after its last use", object.port_type());
            }
        }
    }
}

/// The event that reports `error`.
fn failure_event(error: &ExecError) -> Event {
    match error {
        ExecError::Cancelled { node_id } => Event::Cancelled {
            node_id: node_id.clone(),
        },
        ExecError::Node {
            node_id,
            node_type,
            source,
        } => Event::NodeFailed {
            node_id: node_id.clone(),
            node_type: node_type.clone(),
            error: error_chain(source),
        },
        ExecError::Contract {
            node_id,
            node_type,
            reason,
        } => Event::NodeFailed {
            node_id: node_id.clone(),
            node_type: node_type.clone(),
            error: reason.clone(),
        },
    }
}

/// A linked value for parameter `name`, checked against its spec like a literal would be.
fn linked_param<B: Backend>(
    node: &crate::graph::GraphNode<B>,
    name: &str,
    value: &Value<B>,
) -> Result<ParamValue, NodeError> {
    let literal = match value {
        Value::Int(v) => ParamValue::Int(*v),
        Value::Float(v) => ParamValue::Float(*v),
        Value::String(v) => ParamValue::String(v.clone()),
        Value::Boolean(v) => ParamValue::Boolean(*v),
        other => {
            return Err(NodeError::Params(format!(
                "parameter \"{name}\" cannot take a {} value",
                other.port_type()
            )));
        }
    };
    let spec = node
        .schema
        .param_spec(name)
        .ok_or_else(|| NodeError::Params(format!("unknown parameter \"{name}\"")))?;
    spec.check(&literal)
        .map_err(|problem| NodeError::Params(format!("parameter \"{name}\" (linked): {problem}")))
}

fn check_outputs<B: Backend>(
    schema: &crate::node::NodeSchema,
    outputs: &[Value<B>],
) -> Result<(), String> {
    if outputs.len() != schema.outputs.len() {
        return Err(format!(
            "returned {} outputs, declares {}",
            outputs.len(),
            schema.outputs.len()
        ));
    }
    for (value, spec) in outputs.iter().zip(&schema.outputs) {
        let found = value.port_type();
        if found != spec.port_type {
            return Err(format!(
                "output \"{}\" should be {}, is {found}",
                spec.name, spec.port_type
            ));
        }
    }
    Ok(())
}
