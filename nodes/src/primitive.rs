//! Primitive nodes (ComfyUI's `PrimitiveInt` …): one literal, one output, so that a value can be
//! shared by several nodes or swept from one place.
use burn::tensor::backend::Backend;
use serde::Deserialize;
use weft_engine::node::{
    Inputs, Node, NodeContext, NodeError, NodeSchema, Outputs, ParamSpec, PortType, Value,
};
use weft_engine::registry::NodeRegistry;

/// `PrimitiveInt`: outputs its `value`.
pub struct PrimitiveInt;
/// `PrimitiveFloat`: outputs its `value`.
pub struct PrimitiveFloat;
/// `PrimitiveString`: outputs its `value`.
pub struct PrimitiveString;
/// `PrimitiveBoolean`: outputs its `value`.
pub struct PrimitiveBoolean;

/// The one parameter of a primitive node.
#[derive(Deserialize)]
pub struct PrimitiveParams<T> {
    /// The value to output.
    pub value: T,
}

macro_rules! primitive {
    ($node:ident, $name:literal, $ty:ty, $spec:expr, $port:expr, $variant:ident) => {
        impl<B: Backend> Node<B> for $node {
            type Params = PrimitiveParams<$ty>;

            fn schema(&self) -> NodeSchema {
                NodeSchema::new($name)
                    .category("utils/primitive")
                    .describe(concat!(
                        "Outputs its `value` parameter as ",
                        stringify!($variant),
                        "."
                    ))
                    .param($spec)
                    .output($port.name(), $port)
            }

            fn run(
                &self,
                params: Self::Params,
                _: Inputs<B>,
                _: &NodeContext<'_, B>,
            ) -> Result<Outputs<B>, NodeError> {
                Ok(Outputs::one(Value::$variant(params.value)))
            }
        }
    };
}

primitive!(
    PrimitiveInt,
    "PrimitiveInt",
    i64,
    ParamSpec::int("value").default(0),
    PortType::INT,
    Int
);
primitive!(
    PrimitiveFloat,
    "PrimitiveFloat",
    f64,
    ParamSpec::float("value").default(0.0),
    PortType::FLOAT,
    Float
);
primitive!(
    PrimitiveString,
    "PrimitiveString",
    String,
    ParamSpec::text("value").default(""),
    PortType::STRING,
    String
);
primitive!(
    PrimitiveBoolean,
    "PrimitiveBoolean",
    bool,
    ParamSpec::boolean("value").default(false),
    PortType::BOOLEAN,
    Boolean
);

pub(crate) fn register<B: Backend>(registry: &mut NodeRegistry<B>) {
    registry
        .register(PrimitiveInt)
        .register(PrimitiveFloat)
        .register(PrimitiveString)
        .register(PrimitiveBoolean);
}
