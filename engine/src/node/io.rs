//! What a node receives and returns: [`Inputs`] (linked values by port name, with typed accessors
//! that fail with a [`NodeError`] naming the port) and [`Outputs`] (values in declared order).
use super::error::NodeError;
use super::value::{Conditioning, Latent, Value};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use std::any::Any;
use std::sync::Arc;

/// The values linked to a node's input ports, by port name. Optional ports left unlinked are absent.
pub struct Inputs<B: Backend> {
    values: Vec<(String, Value<B>)>,
}

impl<B: Backend> Default for Inputs<B> {
    fn default() -> Self {
        Inputs { values: Vec::new() }
    }
}

macro_rules! typed_accessor {
    ($(#[$doc:meta])* $name:ident, $variant:ident, $ty:ty, $type_name:literal) => {
        $(#[$doc])*
        pub fn $name(&self, port: &str) -> Result<$ty, NodeError> {
            match self.value(port)? {
                Value::$variant(v) => Ok(v.clone()),
                other => Err(NodeError::wrong_input(port, $type_name, other)),
            }
        }
    };
}

impl<B: Backend> Inputs<B> {
    /// No inputs; add them with [`Inputs::with`] (how node crates unit-test their nodes).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the value of port `name`.
    pub fn with(mut self, name: &str, value: Value<B>) -> Self {
        self.insert(name, value);
        self
    }

    /// Sets the value of port `name`.
    pub fn insert(&mut self, name: &str, value: Value<B>) {
        match self.values.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.values.push((name.to_owned(), value)),
        }
    }

    /// The value of port `name`, if linked.
    pub fn get(&self, name: &str) -> Option<&Value<B>> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The value of port `name`, or an error naming the port.
    pub fn value(&self, name: &str) -> Result<&Value<B>, NodeError> {
        self.get(name).ok_or_else(|| NodeError::Input {
            port: name.to_owned(),
            reason: "not linked".to_owned(),
        })
    }

    typed_accessor!(
        /// An `IMAGE` input.
        image, Image, Tensor<B, 4>, "IMAGE");
    typed_accessor!(
        /// A `MASK` input.
        mask, Mask, Tensor<B, 3>, "MASK");
    typed_accessor!(
        /// A `LATENT` input.
        latent, Latent, Latent<B>, "LATENT");
    typed_accessor!(
        /// A `CONDITIONING` input.
        conditioning, Conditioning, Conditioning<B>, "CONDITIONING");
    typed_accessor!(
        /// An `INT` input.
        int, Int, i64, "INT");
    typed_accessor!(
        /// A `FLOAT` input.
        float, Float, f64, "FLOAT");
    typed_accessor!(
        /// A `STRING` input.
        string, String, String, "STRING");
    typed_accessor!(
        /// A `BOOLEAN` input.
        boolean, Boolean, bool, "BOOLEAN");

    /// An object input (`MODEL`, `CLIP`, `VAE` or a plugin type) holding a `T`.
    pub fn object<T: Any + Send + Sync>(&self, port: &str) -> Result<Arc<T>, NodeError> {
        match self.value(port)? {
            Value::Object(o) => o.downcast_arc::<T>().ok_or_else(|| NodeError::Input {
                port: port.to_owned(),
                reason: format!(
                    "the {} value does not hold a {}",
                    o.port_type(),
                    std::any::type_name::<T>()
                ),
            }),
            other => Err(NodeError::wrong_input(
                port,
                std::any::type_name::<T>(),
                other,
            )),
        }
    }
}

/// A node's results, in the order its schema declares its outputs.
pub struct Outputs<B: Backend> {
    values: Vec<Value<B>>,
}

impl<B: Backend> Default for Outputs<B> {
    fn default() -> Self {
        Outputs { values: Vec::new() }
    }
}

impl<B: Backend> Outputs<B> {
    /// No outputs (what a sink returns).
    pub fn none() -> Self {
        Self::default()
    }

    /// A single output.
    pub fn one(value: Value<B>) -> Self {
        Outputs {
            values: vec![value],
        }
    }

    /// Appends the next output.
    pub fn with(mut self, value: Value<B>) -> Self {
        self.values.push(value);
        self
    }

    /// The outputs in order.
    pub fn values(&self) -> &[Value<B>] {
        &self.values
    }

    /// The outputs in order, owned.
    pub fn into_values(self) -> Vec<Value<B>> {
        self.values
    }
}
