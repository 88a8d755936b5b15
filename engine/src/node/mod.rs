//! The node API: the [`Node`] trait, port types, values, parameters and the context a running node
//! gets. A node crate needs this module and [`registry`](crate::registry), nothing else.
//!
//! # A node's life
//!
//! 1. **Registration.** A [`Plugin`](crate::registry::Plugin) calls
//!    [`NodeRegistry::register`](crate::registry::NodeRegistry::register) with a value of your node
//!    type. The registry asks it for its [`NodeSchema`] once: its name, typed ports and parameters.
//! 2. **Validation.** `weft validate` and `weft run` check a workflow against the schema — unknown
//!    or missing parameters, ranges, choices, link types — and then try to deserialize each node's
//!    [`Node::Params`] from its parameters, so a schema that disagrees with its struct is caught
//!    before anything runs.
//! 3. **Keying.** When the executor reaches the node, its upstream nodes are done. It deserializes
//!    the parameters (literals, defaults, and values from links) into `Params`, asks
//!    [`Node::fingerprint`] for the outside state the node reads, and hashes (type, parameters,
//!    upstream keys, fingerprint) into the node's cache key. If the key is cached, the node does not run.
//! 4. **Running.** [`Node::run`] gets the typed parameters, the linked [`Inputs`] and a
//!    [`NodeContext`] (device, output folder, progress, cancellation) and returns [`Outputs`] in the
//!    order the schema declares them. The executor checks their types and caches them.
//!
//! # Example
//!
//! ```
//! use burn::tensor::backend::Backend;
//! use serde::Deserialize;
//! use weft_engine::node::{Inputs, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec, PortType, Value};
//!
//! /// Scales an image's brightness.
//! pub struct Brightness;
//!
//! #[derive(Deserialize)]
//! pub struct BrightnessParams {
//!     factor: f64,
//! }
//!
//! impl<B: Backend> Node<B> for Brightness {
//!     type Params = BrightnessParams;
//!
//!     fn schema(&self) -> NodeSchema {
//!         NodeSchema::new("ImageBrightness")
//!             .category("image/postprocess")
//!             .input("image", PortType::IMAGE)
//!             .param(ParamSpec::float("factor").default(1.0).range_f(0.0, 4.0))
//!             .output("IMAGE", PortType::IMAGE)
//!     }
//!
//!     fn run(&self, params: BrightnessParams, inputs: Inputs<B>, _ctx: &NodeContext<'_, B>) -> Result<Outputs<B>, NodeError> {
//!         let image = inputs.image("image")?;
//!         Ok(Outputs::one(Value::Image((image * params.factor).clamp(0.0, 1.0))))
//!     }
//! }
//!
//! // Unit-testing a node needs no workflow: build its inputs and a context by hand.
//! type B = burn::backend::Flex;
//! let device = Default::default();
//! let env = weft_engine::node::RunEnv::default();
//! let image = burn::tensor::Tensor::<B, 4>::full([1, 2, 2, 3], 0.25, &device);
//! let out = Brightness
//!     .run(BrightnessParams { factor: 2.0 }, Inputs::new().with("image", Value::Image(image)), &NodeContext::new("b", &device, &env))
//!     .unwrap();
//! let Value::Image(bright) = &out.values()[0] else { panic!("an image") };
//! assert_eq!(bright.to_data().to_vec::<f32>().unwrap()[0], 0.5);
//! ```
mod context;
mod error;
mod io;
mod param;
mod port;
mod schema;
mod value;

pub use context::{Fingerprint, NodeContext, RunEnv, RunMetadata, Services};
pub use error::NodeError;
pub use io::{Inputs, Outputs};
pub use param::{ParamKind, ParamMap, ParamProblem, ParamSpec, ParamValue};
pub use port::PortType;
pub use schema::{InputSpec, NodeSchema, OutputSpec};
pub use value::{Conditioning, ConditioningEntry, Latent, Object, Value};

use burn::tensor::backend::Backend;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A node type: a value of it is registered once and runs every node of that type in every workflow.
///
/// Generic over the burn backend so that one implementation serves CPU and GPU; implement it for
/// every backend (`impl<B: Backend> Node<B> for MyNode`). See the [module docs](self) for the life
/// of a node and a complete example.
pub trait Node<B: Backend>: Send + Sync + 'static {
    /// The node's parameters, deserialized from the workflow's literals, the schema's defaults and
    /// linked values. Field names must match the schema's parameter names; use [`NoParams`] for none.
    type Params: DeserializeOwned;

    /// The node type's description. Called once, at registration.
    fn schema(&self) -> NodeSchema;

    /// The outside state the node's result depends on (for a loader: its file's size and mtime).
    /// Part of the cache key; the default says "nothing".
    fn fingerprint(
        &self,
        _params: &Self::Params,
        _ctx: &NodeContext<'_, B>,
    ) -> Result<Fingerprint, NodeError> {
        Ok(Fingerprint::none())
    }

    /// Computes the outputs. Long loops should call [`NodeContext::check_cancelled`] and
    /// [`NodeContext::progress`] once per step.
    fn run(
        &self,
        params: Self::Params,
        inputs: Inputs<B>,
        ctx: &NodeContext<'_, B>,
    ) -> Result<Outputs<B>, NodeError>;
}

/// The `Params` of a node without parameters.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct NoParams {}
