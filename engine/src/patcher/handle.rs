//! [`ModelHandle`]: what travels on `MODEL` (and `VAE`, `CLIP`) ports: a shared patcher, plus
//! the architecture a node crate built on top of it.
#![forbid(unsafe_code)]

use super::ModelPatcher;
use crate::node::{Inputs, NodeError, Object, PortType, Value};
use burn::tensor::backend::Backend;
use std::any::Any;
use std::sync::Arc;

/// A loaded model as a node value. Cheap to clone (shared). A loader makes one from a
/// [`ModelPatcher`] and its architecture (the engine knows none: the node crate's `Flux` or
/// `AutoencoderKL` goes in [`with_architecture`](Self::with_architecture)); a LoRA node clones the
/// patcher, adds patches, and makes a new handle around the clone.
pub struct ModelHandle<B: Backend> {
    patcher: Arc<ModelPatcher<B>>,
    architecture: Option<Arc<dyn Any + Send + Sync>>,
}

impl<B: Backend> Clone for ModelHandle<B> {
    fn clone(&self) -> Self {
        ModelHandle {
            patcher: self.patcher.clone(),
            architecture: self.architecture.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for ModelHandle<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHandle")
            .field("patcher", &self.patcher)
            .finish()
    }
}

impl<B: Backend> ModelHandle<B> {
    /// A handle around `patcher`, without an architecture.
    pub fn new(patcher: ModelPatcher<B>) -> Self {
        ModelHandle {
            patcher: Arc::new(patcher),
            architecture: None,
        }
    }

    /// Attaches the architecture (config, module tree) that runs on these weights.
    pub fn with_architecture<T: Any + Send + Sync>(mut self, architecture: T) -> Self {
        self.architecture = Some(Arc::new(architecture));
        self
    }

    /// The architecture, if it is a `T`.
    pub fn architecture<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.architecture.as_deref()?.downcast_ref()
    }

    /// The weights.
    pub fn patcher(&self) -> &ModelPatcher<B> {
        &self.patcher
    }

    /// A handle on a clone of the patcher (same base and device copy, own patch list), keeping
    /// the architecture: what a LoRA node patches.
    pub fn clone_patcher(&self) -> ModelPatcher<B> {
        (*self.patcher).clone()
    }

    /// The same architecture around another patcher (a patched clone).
    pub fn with_patcher(&self, patcher: ModelPatcher<B>) -> Self {
        ModelHandle {
            patcher: Arc::new(patcher),
            architecture: self.architecture.clone(),
        }
    }

    /// The handle as a value of `port_type` (`MODEL`, `VAE`, `CLIP`).
    pub fn into_value(self, port_type: PortType) -> Value<B> {
        Value::Object(Object::new(port_type, self))
    }

    /// The handle on input `port`, or an error naming the port.
    pub fn from_inputs(inputs: &Inputs<B>, port: &str) -> Result<Arc<Self>, NodeError> {
        inputs.object::<ModelHandle<B>>(port)
    }
}
