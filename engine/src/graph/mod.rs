//! Workflows and the runtime graph: the RON file format ([`Workflow`], a DTO), its validation into
//! [`Diagnostic`]s, command-line overrides, and the petgraph DAG the executor walks ([`Graph`]).
mod build;
mod diagnostic;
mod locate;
mod overrides;
mod workflow;

pub use diagnostic::{Diagnostic, Problem, ValidationReport};
pub use locate::Pos;
pub use overrides::{Assignment, OverrideError, Sweep};
pub use workflow::{
    FORMAT_VERSION, LinkRef, NodeEntry, OrderedMap, Workflow, WorkflowError, WorkflowFile,
    is_valid_node_id,
};

use crate::node::{NodeSchema, ParamMap};
use crate::registry::DynNode;
use burn::tensor::backend::Backend;
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use std::sync::Arc;

/// A validated workflow, ready to run: nodes with their implementations and checked parameters,
/// linked by typed edges, with a deterministic execution order.
pub struct Graph<B: Backend> {
    dag: DiGraph<GraphNode<B>, Edge>,
    order: Vec<NodeIndex>,
}

/// A node of the runtime graph.
pub struct GraphNode<B: Backend> {
    /// The node's id in its workflow.
    pub id: String,
    /// Its type's description.
    pub schema: Arc<NodeSchema>,
    /// Literal parameters, checked and normalized, defaults filled in (linked ones are absent).
    pub params: ParamMap,
    pub(crate) node: Arc<dyn DynNode<B>>,
}

/// A link: which output of the source feeds which input (or parameter) of the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// The index of the source's output.
    pub output: usize,
    /// What it feeds.
    pub target: EdgeTarget,
}

/// What a link feeds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeTarget {
    /// An input port, by name.
    Input(String),
    /// A parameter turned into an input, by name.
    Param(String),
}

impl<B: Backend> Graph<B> {
    /// Every node, in execution order: topological, ties broken by file order.
    pub fn nodes(&self) -> impl Iterator<Item = &GraphNode<B>> {
        self.order.iter().map(|&i| &self.dag[i])
    }

    /// The node called `id`.
    pub fn node(&self, id: &str) -> Option<&GraphNode<B>> {
        self.dag.node_weights().find(|n| n.id == id)
    }

    /// The ids of the nodes a run executes (those the output nodes need), in execution order.
    pub fn plan(&self) -> Vec<&str> {
        self.needed()
            .into_iter()
            .map(|i| self.dag[i].id.as_str())
            .collect()
    }

    /// The nodes that output nodes depend on (output nodes included), in execution order.
    pub(crate) fn needed(&self) -> Vec<NodeIndex> {
        let mut needed = vec![false; self.dag.node_count()];
        let mut stack: Vec<NodeIndex> = self
            .dag
            .node_indices()
            .filter(|&i| self.dag[i].schema.output_node)
            .collect();
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut needed[i.index()], true) {
                continue;
            }
            stack.extend(self.dag.neighbors_directed(i, Direction::Incoming));
        }
        self.order
            .iter()
            .copied()
            .filter(|i| needed[i.index()])
            .collect()
    }

    pub(crate) fn node_at(&self, i: NodeIndex) -> &GraphNode<B> {
        &self.dag[i]
    }

    /// The links into node `i`: (source node, link), in a stable order.
    pub(crate) fn incoming(&self, i: NodeIndex) -> Vec<(NodeIndex, &Edge)> {
        use petgraph::visit::EdgeRef;
        let mut edges: Vec<_> = self
            .dag
            .edges_directed(i, Direction::Incoming)
            .map(|e| (e.source(), e.weight()))
            .collect();
        edges.sort_by(|a, b| a.1.target.cmp(&b.1.target));
        edges
    }
}
