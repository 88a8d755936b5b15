//! Validation: checks a [`Workflow`] against the registry, collecting every problem at once, and
//! builds the runtime [`Graph`] when there are none.
use super::diagnostic::{Diagnostic, Problem, ValidationReport};
use super::locate::Pos;
use super::workflow::{LinkRef, NodeEntry, Workflow, is_valid_node_id};
use super::{Edge, EdgeTarget, Graph, GraphNode};
use crate::node::{NodeSchema, ParamMap};
use crate::registry::{NodeRegistry, nearest};
use burn::tensor::backend::Backend;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

impl<B: Backend> Graph<B> {
    /// Validates `workflow` against `registry` and builds its graph, or reports every problem.
    pub fn build(
        workflow: &Workflow,
        registry: &NodeRegistry<B>,
    ) -> Result<Self, ValidationReport> {
        let mut builder = Builder {
            workflow,
            diagnostics: Vec::new(),
        };
        let graph = builder.build(registry);
        if builder.diagnostics.is_empty() {
            Ok(graph)
        } else {
            Err(ValidationReport::new(builder.diagnostics))
        }
    }
}

struct Builder<'w> {
    workflow: &'w Workflow,
    diagnostics: Vec<Diagnostic>,
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!(" (did you mean \"{s}\"?)"))
        .unwrap_or_default()
}

impl<'w> Builder<'w> {
    fn report(&mut self, pos: Option<Pos>, node: &str, problem: Problem) {
        self.diagnostics
            .push(self.workflow.diagnostic(pos, Some(node), problem));
    }

    fn build<B: Backend>(&mut self, registry: &NodeRegistry<B>) -> Graph<B> {
        let workflow = self.workflow;
        let mut dag: DiGraph<GraphNode<B>, Edge> = DiGraph::new();
        let mut index_of: HashMap<&str, NodeIndex> = HashMap::new();
        let mut declared: Vec<&str> = Vec::new();
        let mut entries: Vec<(NodeIndex, &str, &NodeEntry)> = Vec::new();

        for (id, entry, occurrence) in workflow.file.nodes.iter_with_occurrence() {
            let key = workflow.key_pos(&["nodes", id], occurrence);
            if !is_valid_node_id(id) {
                self.report(key, id, Problem::InvalidNodeId);
            }
            if occurrence > 0 {
                let first = workflow
                    .key_pos(&["nodes", id], 0)
                    .map_or_else(|| "?".to_owned(), |p| p.to_string());
                self.report(key, id, Problem::DuplicateNode { first });
                continue;
            }
            declared.push(id);
            let Some(registered) = registry.get(&entry.node_type) else {
                let suggestion = registry.suggest(&entry.node_type).map(str::to_owned);
                let problem = Problem::UnknownNodeType {
                    name: entry.node_type.clone(),
                    suggestion,
                };
                self.report(workflow.value_pos(&["nodes", id, "type"], 0), id, problem);
                continue;
            };
            let node = GraphNode {
                id: id.to_owned(),
                schema: registered.schema.clone(),
                params: ParamMap::new(),
                node: registered.node.clone(),
            };
            let index = dag.add_node(node);
            index_of.insert(id, index);
            entries.push((index, id, entry));
        }

        let mut edges = Vec::new();
        for &(index, id, entry) in &entries {
            let before = self.diagnostics.len();
            let schema = dag[index].schema.clone();
            let params = self.check_params(id, entry, &schema);
            let linked = self.check_links(id, entry, &schema, &dag, &index_of, &declared);
            self.check_missing(id, entry, &schema);
            let mut params = params;
            for spec in &schema.params {
                if !params.contains_key(&spec.name)
                    && entry.inputs.get(&spec.name).is_none()
                    && let Some(default) = &spec.default
                {
                    params.insert(spec.name.clone(), default.clone());
                }
            }
            if self.diagnostics.len() == before {
                let mut trial = params.clone();
                for spec in &schema.params {
                    trial
                        .entry(spec.name.clone())
                        .or_insert_with(|| spec.placeholder());
                }
                if let Err(e) = dag[index].node.check_params(&trial) {
                    self.report(
                        workflow.key_pos(&["nodes", id], 0),
                        id,
                        Problem::TypedParams(e.to_string()),
                    );
                }
            }
            dag[index].params = params;
            edges.extend(
                linked
                    .into_iter()
                    .map(|(source, edge)| (source, index, edge)),
            );
        }
        for (source, target, edge) in edges {
            dag.add_edge(source, target, edge);
        }

        self.check_cycles(&dag);
        if self.diagnostics.is_empty() && !dag.node_weights().any(|n| n.schema.output_node) {
            let pos = workflow.key_pos(&["nodes"], 0);
            self.diagnostics
                .push(workflow.diagnostic(pos, None, Problem::NoOutputNode));
        }
        let order = if self.diagnostics.is_empty() {
            topological_order(&dag)
        } else {
            Vec::new()
        };
        Graph { dag, order }
    }

    /// Checks literal parameters; returns the valid ones, normalized.
    fn check_params(&mut self, id: &str, entry: &NodeEntry, schema: &NodeSchema) -> ParamMap {
        let workflow = self.workflow;
        let mut params = ParamMap::new();
        for (name, value, occurrence) in entry.params.iter_with_occurrence() {
            let path = ["nodes", id, "params", name];
            let key = workflow.key_pos(&path, occurrence);
            if occurrence > 0 {
                self.report(key, id, Problem::DuplicateParam(name.to_owned()));
                continue;
            }
            let Some(spec) = schema.param_spec(name) else {
                let hint = if schema.input_spec(name).is_some() {
                    format!(" (\"{name}\" is an input port: link it under `inputs`)")
                } else {
                    did_you_mean(nearest(name, schema.params.iter().map(|p| p.name.as_str())))
                };
                self.report(
                    key,
                    id,
                    Problem::UnknownParam {
                        name: name.to_owned(),
                        hint,
                    },
                );
                continue;
            };
            if entry.inputs.get(name).is_some() {
                self.report(key, id, Problem::ParamAndLink(name.to_owned()));
                continue;
            }
            match spec.check(value) {
                Ok(value) => {
                    params.insert(name.to_owned(), value);
                }
                Err(problem) => {
                    self.report(
                        workflow.value_pos(&path, 0),
                        id,
                        Problem::BadParam {
                            name: name.to_owned(),
                            problem,
                        },
                    );
                }
            }
        }
        params
    }

    /// Checks links; returns the valid ones as (source node, edge).
    #[allow(clippy::too_many_arguments)]
    fn check_links<B: Backend>(
        &mut self,
        id: &str,
        entry: &NodeEntry,
        schema: &NodeSchema,
        dag: &DiGraph<GraphNode<B>, Edge>,
        index_of: &HashMap<&str, NodeIndex>,
        declared: &[&str],
    ) -> Vec<(NodeIndex, Edge)> {
        let workflow = self.workflow;
        let mut links = Vec::new();
        for (name, link, occurrence) in entry.inputs.iter_with_occurrence() {
            let path = ["nodes", id, "inputs", name];
            let key = workflow.key_pos(&path, occurrence);
            let value = workflow.value_pos(&path, occurrence);
            if occurrence > 0 {
                self.report(key, id, Problem::DuplicateInput(name.to_owned()));
                continue;
            }
            let (expected, target) = if let Some(input) = schema.input_spec(name) {
                (input.port_type.clone(), EdgeTarget::Input(name.to_owned()))
            } else if let Some(param) = schema.param_spec(name) {
                (param.port_type(), EdgeTarget::Param(name.to_owned()))
            } else {
                let names = schema
                    .inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .chain(schema.params.iter().map(|p| p.name.as_str()));
                let hint = did_you_mean(nearest(name, names));
                self.report(
                    key,
                    id,
                    Problem::UnknownInput {
                        name: name.to_owned(),
                        hint,
                    },
                );
                continue;
            };
            let Some(link_ref) = LinkRef::parse(link) else {
                self.report(
                    value,
                    id,
                    Problem::BadLink {
                        input: name.to_owned(),
                        link: link.clone(),
                    },
                );
                continue;
            };
            let Some(&source) = index_of.get(link_ref.node) else {
                if !declared.contains(&link_ref.node) {
                    let suggestion =
                        nearest(link_ref.node, declared.iter().copied()).map(str::to_owned);
                    let problem = Problem::LinkToUnknownNode {
                        input: name.to_owned(),
                        target: link_ref.node.to_owned(),
                        suggestion,
                    };
                    self.report(value, id, problem);
                }
                // A node of unknown type is reported where it is declared; its outputs are unknown.
                continue;
            };
            let source_schema = &dag[source].schema;
            let outputs = || {
                source_schema
                    .outputs
                    .iter()
                    .map(|o| format!("\"{}\"", o.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let output = match link_ref.output {
                Some(output) => source_schema.output_index(output).ok_or_else(|| {
                    if source_schema.outputs.is_empty() {
                        "has no outputs".to_owned()
                    } else {
                        format!("has no output \"{output}\"; its outputs: {}", outputs())
                    }
                }),
                None => match source_schema.outputs.len() {
                    1 => Ok(0),
                    0 => Err("has no outputs".to_owned()),
                    n => Err(format!("has {n} outputs; name one: {}", outputs())),
                },
            };
            let output = match output {
                Ok(output) => output,
                Err(reason) => {
                    let problem = Problem::LinkToUnknownOutput {
                        input: name.to_owned(),
                        target: link_ref.node.to_owned(),
                        target_type: source_schema.type_name.clone(),
                        reason,
                    };
                    self.report(value, id, problem);
                    continue;
                }
            };
            let found = source_schema.outputs[output].port_type.clone();
            if found != expected {
                self.report(
                    value,
                    id,
                    Problem::TypeMismatch {
                        input: name.to_owned(),
                        link: link.clone(),
                        expected,
                        found,
                    },
                );
                continue;
            }
            links.push((source, Edge { output, target }));
        }
        links
    }

    fn check_missing(&mut self, id: &str, entry: &NodeEntry, schema: &NodeSchema) {
        let key = self.workflow.key_pos(&["nodes", id], 0);
        for input in schema.inputs.iter().filter(|i| !i.optional) {
            if entry.inputs.get(&input.name).is_none() {
                self.report(
                    key,
                    id,
                    Problem::MissingInput {
                        name: input.name.clone(),
                        port_type: input.port_type.clone(),
                    },
                );
            }
        }
        for param in schema.params.iter().filter(|p| p.default.is_none()) {
            if entry.params.get(&param.name).is_none() && entry.inputs.get(&param.name).is_none() {
                self.report(
                    key,
                    id,
                    Problem::MissingParam {
                        name: param.name.clone(),
                        kind: param.port_type(),
                    },
                );
            }
        }
    }

    fn check_cycles<B: Backend>(&mut self, dag: &DiGraph<GraphNode<B>, Edge>) {
        for component in tarjan_scc(dag) {
            let self_loop = component.len() == 1 && dag.contains_edge(component[0], component[0]);
            if component.len() < 2 && !self_loop {
                continue;
            }
            let members: HashSet<NodeIndex> = component.iter().copied().collect();
            let Some(&start) = component.iter().min() else {
                continue;
            };
            let path = cycle_through(dag, start, &members);
            let ids: Vec<String> = path.iter().map(|&i| dag[i].id.clone()).collect();
            let id = dag[start].id.clone();
            let key = self.workflow.key_pos(&["nodes", &id], 0);
            self.report(key, &id, Problem::Cycle(ids));
        }
    }
}

/// A shortest path from `start` back to itself inside one strongly connected component.
fn cycle_through<N, E>(
    dag: &DiGraph<N, E>,
    start: NodeIndex,
    members: &HashSet<NodeIndex>,
) -> Vec<NodeIndex> {
    let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        let mut next: Vec<NodeIndex> = dag.neighbors(at).filter(|n| members.contains(n)).collect();
        next.sort();
        for n in next {
            if n == start {
                let mut chain = vec![at];
                while let Some(&back) = chain.last().and_then(|last| parent.get(last)) {
                    chain.push(back);
                }
                chain.reverse();
                chain.push(start);
                return chain;
            }
            if n != start && !parent.contains_key(&n) {
                parent.insert(n, at);
                queue.push_back(n);
            }
        }
    }
    vec![start, start]
}

/// Kahn's algorithm with the smallest (earliest in the file) ready node first: deterministic.
fn topological_order<N, E>(dag: &DiGraph<N, E>) -> Vec<NodeIndex> {
    let mut indegree: Vec<usize> = dag
        .node_indices()
        .map(|i| {
            dag.neighbors_directed(i, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<NodeIndex>> = dag
        .node_indices()
        .filter(|i| indegree[i.index()] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(dag.node_count());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for n in dag.neighbors(i) {
            indegree[n.index()] -= 1;
            if indegree[n.index()] == 0 {
                ready.push(Reverse(n));
            }
        }
    }
    order
}
