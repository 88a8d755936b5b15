//! A node type's description: its name, typed input and output ports, parameters, and how the
//! executor treats it. Validation, `weft nodes` and the executor read only this.
use super::param::ParamSpec;
use super::port::PortType;
use serde::Serialize;

/// Everything the engine knows about a node type without running it.
///
/// Built with chained calls:
///
/// ```
/// use weft_engine::node::{NodeSchema, ParamSpec, PortType};
/// let schema = NodeSchema::new("EmptyLatentImage")
///     .category("latent")
///     .describe("A batch of empty (zero) latents for SD1.x/SDXL.")
///     .param(ParamSpec::int("width").default(512).range(16, 16384))
///     .output("LATENT", PortType::LATENT);
/// assert_eq!(schema.outputs[0].port_type, PortType::LATENT);
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct NodeSchema {
    /// The name workflows use (`"KSampler"`); unique in a registry.
    #[serde(rename = "type")]
    pub type_name: String,
    /// A slash-separated group for listings (`"image/postprocess"`).
    pub category: String,
    /// What the node does, for `weft nodes`.
    pub description: String,
    /// Ports fed by links from other nodes' outputs.
    pub inputs: Vec<InputSpec>,
    /// Literal settings (each may also be fed by a link of its port type).
    pub params: Vec<ParamSpec>,
    /// What the node produces, in order.
    pub outputs: Vec<OutputSpec>,
    /// A sink (saves, previews): the executor runs what output nodes need, and nothing else.
    pub output_node: bool,
    /// Never served from the cache (its result depends on more than its inputs, or running is the point).
    pub always_run: bool,
}

/// An input port.
#[derive(Clone, Debug, Serialize)]
pub struct InputSpec {
    /// The name workflows link to.
    pub name: String,
    /// The type a linked output must have.
    #[serde(rename = "type")]
    pub port_type: PortType,
    /// Whether the node runs without it.
    pub optional: bool,
}

/// An output port.
#[derive(Clone, Debug, Serialize)]
pub struct OutputSpec {
    /// The name links use (`"vae.VAE"`); by ComfyUI's habit, the type's name.
    pub name: String,
    /// The type of the value produced.
    #[serde(rename = "type")]
    pub port_type: PortType,
}

impl NodeSchema {
    /// A node type with no ports or parameters yet.
    pub fn new(type_name: &str) -> Self {
        NodeSchema {
            type_name: type_name.to_owned(),
            category: String::new(),
            description: String::new(),
            inputs: Vec::new(),
            params: Vec::new(),
            outputs: Vec::new(),
            output_node: false,
            always_run: false,
        }
    }

    /// Sets the category.
    pub fn category(mut self, category: &str) -> Self {
        self.category = category.to_owned();
        self
    }

    /// Sets the description.
    pub fn describe(mut self, description: &str) -> Self {
        self.description = description.to_owned();
        self
    }

    /// Adds a required input port.
    pub fn input(mut self, name: &str, port_type: PortType) -> Self {
        self.inputs.push(InputSpec {
            name: name.to_owned(),
            port_type,
            optional: false,
        });
        self
    }

    /// Adds an optional input port.
    pub fn optional_input(mut self, name: &str, port_type: PortType) -> Self {
        self.inputs.push(InputSpec {
            name: name.to_owned(),
            port_type,
            optional: true,
        });
        self
    }

    /// Adds a parameter.
    pub fn param(mut self, spec: ParamSpec) -> Self {
        self.params.push(spec);
        self
    }

    /// Adds an output port.
    pub fn output(mut self, name: &str, port_type: PortType) -> Self {
        self.outputs.push(OutputSpec {
            name: name.to_owned(),
            port_type,
        });
        self
    }

    /// Marks the node as a sink whose needs the executor runs.
    pub fn output_node(mut self) -> Self {
        self.output_node = true;
        self
    }

    /// Opts the node out of the cache: it runs every time, and so does everything downstream.
    pub fn always_run(mut self) -> Self {
        self.always_run = true;
        self
    }

    /// The input port called `name`.
    pub fn input_spec(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// The parameter called `name`.
    pub fn param_spec(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The index of the output called `name`.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o.name == name)
    }
}
