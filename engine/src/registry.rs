//! The node registry and the [`Plugin`] trait that fills it: every node type a workflow may use,
//! by name, with the plugin that registered it.
//!
//! # A plugin's life
//!
//! A binary names its plugins once, `weft::main_with((weft_nodes::Builtin, MyPlugin))`.
//! The CLI picks the backend, creates an empty [`NodeRegistry`] and calls each plugin's
//! [`Plugin::build`], in order. `build` registers node types (and plugin-defined port types); the
//! registry asks each node for its schema and records conflicts — a type name registered twice, a
//! port type nobody registered — which [`NodeRegistry::from_plugins`] returns as one error.
//!
//! ```
//! use burn::tensor::backend::Backend;
//! use weft_engine::node::{Inputs, Node, NodeContext, NodeError, NodeSchema, NoParams, Outputs, PortType, Value};
//! use weft_engine::registry::{NodeRegistry, Plugin};
//!
//! struct Answer;
//! impl<B: Backend> Node<B> for Answer {
//!     type Params = NoParams;
//!     fn schema(&self) -> NodeSchema {
//!         NodeSchema::new("Answer").output("INT", PortType::INT)
//!     }
//!     fn run(&self, _: NoParams, _: Inputs<B>, _: &NodeContext<'_, B>) -> Result<Outputs<B>, NodeError> {
//!         Ok(Outputs::one(Value::Int(42)))
//!     }
//! }
//!
//! struct MyPlugin;
//! impl Plugin for MyPlugin {
//!     fn name(&self) -> &str {
//!         "my-nodes"
//!     }
//!     fn build<B: Backend>(&self, registry: &mut NodeRegistry<B>) {
//!         registry.register(Answer);
//!     }
//! }
//!
//! let registry = NodeRegistry::<burn::backend::Flex>::from_plugins(&MyPlugin).unwrap();
//! assert_eq!(registry.get("Answer").unwrap().plugin, "my-nodes");
//! ```
use crate::node::{
    Fingerprint, Inputs, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamMap, PortType,
};
use burn::tensor::backend::Backend;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A set of node types (and port types) that a binary can include. Implement it once per node crate.
pub trait Plugin {
    /// The plugin's name, shown by `weft nodes` and in conflict errors.
    fn name(&self) -> &str;

    /// Registers the plugin's node types for backend `B`.
    fn build<B: Backend>(&self, registry: &mut NodeRegistry<B>);
}

/// One plugin or a tuple of them: what `main_with` and [`NodeRegistry::from_plugins`] take.
pub trait Plugins {
    /// Calls every plugin's `build`, in order.
    fn build_all<B: Backend>(&self, registry: &mut NodeRegistry<B>);
}

impl<P: Plugin> Plugins for P {
    fn build_all<B: Backend>(&self, registry: &mut NodeRegistry<B>) {
        registry.current_plugin = self.name().to_owned();
        self.build(registry);
    }
}

impl Plugins for () {
    fn build_all<B: Backend>(&self, _registry: &mut NodeRegistry<B>) {}
}

macro_rules! plugins_tuple {
    ($($p:ident),+) => {
        impl<$($p: Plugins),+> Plugins for ($($p,)+) {
            #[allow(non_snake_case)]
            fn build_all<B: Backend>(&self, registry: &mut NodeRegistry<B>) {
                let ($($p,)+) = self;
                $($p.build_all(registry);)+
            }
        }
    };
}
plugins_tuple!(P1);
plugins_tuple!(P1, P2);
plugins_tuple!(P1, P2, P3);
plugins_tuple!(P1, P2, P3, P4);
plugins_tuple!(P1, P2, P3, P4, P5);
plugins_tuple!(P1, P2, P3, P4, P5, P6);
plugins_tuple!(P1, P2, P3, P4, P5, P6, P7);
plugins_tuple!(P1, P2, P3, P4, P5, P6, P7, P8);

/// Conflicts found while plugins registered their nodes.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct RegistryError {
    /// One sentence per conflict.
    pub problems: Vec<String>,
}

/// A node type as the executor sees it: schema checked, parameters still untyped.
pub trait DynNode<B: Backend>: Send + Sync {
    /// Deserializes `params` into the node's `Params`, to catch a schema that disagrees with its struct.
    fn check_params(&self, params: &ParamMap) -> Result<(), NodeError>;
    /// [`Node::fingerprint`] on deserialized parameters.
    fn fingerprint(
        &self,
        params: &ParamMap,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Fingerprint, NodeError>;
    /// [`Node::run`] on deserialized parameters.
    fn run(
        &self,
        params: &ParamMap,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError>;
}

fn typed_params<P: serde::de::DeserializeOwned>(params: &ParamMap) -> Result<P, NodeError> {
    let json = serde_json::Value::Object(
        params
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect(),
    );
    serde_json::from_value(json).map_err(|e| NodeError::Params(e.to_string()))
}

impl<B: Backend, N: Node<B>> DynNode<B> for N {
    fn check_params(&self, params: &ParamMap) -> Result<(), NodeError> {
        typed_params::<N::Params>(params).map(drop)
    }
    fn fingerprint(
        &self,
        params: &ParamMap,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Fingerprint, NodeError> {
        Node::fingerprint(self, &typed_params(params)?, ctx)
    }
    fn run(
        &self,
        params: &ParamMap,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError> {
        Node::run(self, typed_params(params)?, inputs, ctx)
    }
}

/// A registered node type.
pub struct RegisteredNode<B: Backend> {
    /// Its description.
    pub schema: Arc<NodeSchema>,
    /// The plugin that registered it.
    pub plugin: String,
    /// The implementation.
    pub node: Arc<dyn DynNode<B>>,
}

/// A registered port type.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegisteredType {
    /// The type.
    #[serde(rename = "type")]
    pub port_type: PortType,
    /// `"weft-engine"` for the built-in ones, else the plugin's name.
    pub plugin: String,
    /// What its values are.
    pub description: String,
}

/// Every node type a workflow may use, by name.
pub struct NodeRegistry<B: Backend> {
    nodes: BTreeMap<String, RegisteredNode<B>>,
    types: BTreeMap<String, RegisteredType>,
    problems: Vec<String>,
    current_plugin: String,
}

impl<B: Backend> Default for NodeRegistry<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> NodeRegistry<B> {
    /// A registry with the built-in port types and no node types.
    pub fn new() -> Self {
        let types = PortType::BUILTIN
            .iter()
            .map(|t| {
                let registered = RegisteredType {
                    port_type: t.clone(),
                    plugin: "weft-engine".to_owned(),
                    description: String::new(),
                };
                (t.name().to_owned(), registered)
            })
            .collect();
        NodeRegistry {
            nodes: BTreeMap::new(),
            types,
            problems: Vec::new(),
            current_plugin: String::new(),
        }
    }

    /// A registry filled by `plugins`, or every conflict they caused.
    pub fn from_plugins(plugins: &impl Plugins) -> Result<Self, RegistryError> {
        let mut registry = Self::new();
        plugins.build_all(&mut registry);
        registry.check_types();
        if registry.problems.is_empty() {
            Ok(registry)
        } else {
            Err(RegistryError {
                problems: registry.problems,
            })
        }
    }

    /// Registers a node type under its schema's name.
    pub fn register<N: Node<B>>(&mut self, node: N) -> &mut Self {
        let schema = node.schema();
        let name = schema.type_name.clone();
        if let Some(existing) = self.nodes.get(&name) {
            self.problems.push(format!(
                "node type \"{name}\" is registered by both plugin \"{}\" and plugin \"{}\"",
                existing.plugin, self.current_plugin
            ));
            return self;
        }
        let registered = RegisteredNode {
            schema: Arc::new(schema),
            plugin: self.current_plugin.clone(),
            node: Arc::new(node),
        };
        self.nodes.insert(name, registered);
        self
    }

    /// Registers a plugin-defined port type, so that `weft nodes` can describe it and nodes may use it.
    pub fn register_type(&mut self, port_type: PortType, description: &str) -> &mut Self {
        if let Some(existing) = self.types.get(port_type.name()) {
            self.problems.push(format!(
                "port type {port_type} is registered by both \"{}\" and plugin \"{}\"",
                existing.plugin, self.current_plugin
            ));
            return self;
        }
        let registered = RegisteredType {
            port_type: port_type.clone(),
            plugin: self.current_plugin.clone(),
            description: description.to_owned(),
        };
        self.types.insert(port_type.name().to_owned(), registered);
        self
    }

    fn check_types(&mut self) {
        for node in self.nodes.values() {
            let schema = &node.schema;
            let used = schema
                .inputs
                .iter()
                .map(|i| &i.port_type)
                .chain(schema.outputs.iter().map(|o| &o.port_type));
            for port_type in used {
                if !self.types.contains_key(port_type.name()) {
                    self.problems.push(format!(
                        "node type \"{}\" (plugin \"{}\") uses port type {port_type}, which no plugin registered",
                        schema.type_name, node.plugin
                    ));
                }
            }
        }
    }

    /// The node type called `name`.
    pub fn get(&self, name: &str) -> Option<&RegisteredNode<B>> {
        self.nodes.get(name)
    }

    /// Every node type, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &RegisteredNode<B>> {
        self.nodes.values()
    }

    /// Every port type, by name.
    pub fn types(&self) -> impl Iterator<Item = &RegisteredType> {
        self.types.values()
    }

    /// The registered node type name nearest to `name`, if one is near enough to be a typo.
    pub fn suggest(&self, name: &str) -> Option<&str> {
        nearest(name, self.nodes.keys().map(String::as_str))
    }

    /// Deserializes every node type's placeholder parameters into its `Params` struct: a plugin's
    /// own test that its schemas and structs agree. Returns one sentence per disagreement.
    pub fn self_check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for node in self.nodes.values() {
            let params: ParamMap = node
                .schema
                .params
                .iter()
                .map(|p| (p.name.clone(), p.placeholder()))
                .collect();
            if let Err(e) = node.node.check_params(&params) {
                problems.push(format!("node type \"{}\": {e}", node.schema.type_name));
            }
            for p in &node.schema.params {
                if let Some(default) = &p.default
                    && let Err(e) = p.check(default)
                {
                    problems.push(format!(
                        "node type \"{}\": default of \"{}\": {e}",
                        node.schema.type_name, p.name
                    ));
                }
            }
        }
        problems
    }
}

/// The candidate nearest to `name` by edit distance, if it is close enough to be a typo (at most a
/// third of the name's length, and at least 1).
pub fn nearest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .map(|c| (strsim::osa_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}
