//! Values: what flows along links at run time, one variant per kind of port type.
use super::port::PortType;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A value on a port. Cloning is cheap: tensors and objects are reference-counted.
#[non_exhaustive]
pub enum Value<B: Backend> {
    /// `INT`.
    Int(i64),
    /// `FLOAT`.
    Float(f64),
    /// `STRING`.
    String(String),
    /// `BOOLEAN`.
    Boolean(bool),
    /// `LATENT`.
    Latent(Latent<B>),
    /// `IMAGE`: `[batch, height, width, channels]`, floats in 0..=1.
    Image(Tensor<B, 4>),
    /// `MASK`: `[batch, height, width]`, floats in 0..=1.
    Mask(Tensor<B, 3>),
    /// `CONDITIONING`.
    Conditioning(Conditioning<B>),
    /// `MODEL`, `CLIP`, `VAE` and every plugin-defined type: a shared handle tagged with its port type.
    Object(Object),
}

impl<B: Backend> Value<B> {
    /// The port type this value may travel on.
    pub fn port_type(&self) -> PortType {
        match self {
            Value::Int(_) => PortType::INT,
            Value::Float(_) => PortType::FLOAT,
            Value::String(_) => PortType::STRING,
            Value::Boolean(_) => PortType::BOOLEAN,
            Value::Latent(_) => PortType::LATENT,
            Value::Image(_) => PortType::IMAGE,
            Value::Mask(_) => PortType::MASK,
            Value::Conditioning(_) => PortType::CONDITIONING,
            Value::Object(o) => o.port_type().clone(),
        }
    }
}

impl<B: Backend> Clone for Value<B> {
    fn clone(&self) -> Self {
        match self {
            Value::Int(v) => Value::Int(*v),
            Value::Float(v) => Value::Float(*v),
            Value::String(v) => Value::String(v.clone()),
            Value::Boolean(v) => Value::Boolean(*v),
            Value::Latent(v) => Value::Latent(v.clone()),
            Value::Image(v) => Value::Image(v.clone()),
            Value::Mask(v) => Value::Mask(v.clone()),
            Value::Conditioning(v) => Value::Conditioning(v.clone()),
            Value::Object(v) => Value::Object(v.clone()),
        }
    }
}

impl<B: Backend> fmt::Debug for Value<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "Int({v})"),
            Value::Float(v) => write!(f, "Float({v})"),
            Value::String(v) => write!(f, "String({v:?})"),
            Value::Boolean(v) => write!(f, "Boolean({v})"),
            Value::Latent(v) => write!(f, "Latent({:?})", v.samples.dims()),
            Value::Image(v) => write!(f, "Image({:?})", v.dims()),
            Value::Mask(v) => write!(f, "Mask({:?})", v.dims()),
            Value::Conditioning(v) => write!(f, "Conditioning({} entries)", v.entries.len()),
            Value::Object(o) => write!(f, "Object({})", o.port_type()),
        }
    }
}

/// A batch of latent images, as ComfyUI's `LATENT` dict holds them.
pub struct Latent<B: Backend> {
    /// `[batch, channels, height, width]` (channels: 4 for SD1/SDXL, 16 for SD3/Flux).
    pub samples: Tensor<B, 4>,
}

impl<B: Backend> Latent<B> {
    /// Wraps latent samples.
    pub fn new(samples: Tensor<B, 4>) -> Self {
        Latent { samples }
    }
}

impl<B: Backend> Clone for Latent<B> {
    fn clone(&self) -> Self {
        Latent {
            samples: self.samples.clone(),
        }
    }
}

/// Encoded prompts: one entry per prompt (ComfyUI's list of `[tensor, dict]`).
pub struct Conditioning<B: Backend> {
    /// The entries, combined by the sampler.
    pub entries: Vec<ConditioningEntry<B>>,
}

impl<B: Backend> Clone for Conditioning<B> {
    fn clone(&self) -> Self {
        Conditioning {
            entries: self.entries.clone(),
        }
    }
}

/// One encoded prompt.
pub struct ConditioningEntry<B: Backend> {
    /// The cross-attention context, `[batch, tokens, width]`.
    pub context: Tensor<B, 3>,
    /// The pooled text embedding (CLIP's), `[batch, width]`, where the model takes one.
    pub pooled: Option<Tensor<B, 2>>,
    /// Scalar settings that travel with the prompt (e.g. `"guidance"` for Flux).
    pub options: BTreeMap<String, f64>,
}

impl<B: Backend> Clone for ConditioningEntry<B> {
    fn clone(&self) -> Self {
        ConditioningEntry {
            context: self.context.clone(),
            pooled: self.pooled.clone(),
            options: self.options.clone(),
        }
    }
}

/// A shared, immutable handle to any value, tagged with its port type: how models (`MODEL`, `CLIP`,
/// `VAE`) and plugin-defined types travel. The executor never looks inside; it only calls the
/// release hook a producer attached ([`Object::release_after_last_use`]).
#[derive(Clone)]
pub struct Object {
    port_type: PortType,
    inner: Arc<dyn Any + Send + Sync>,
    release: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Object {
    /// Wraps `value` as a value of `port_type`.
    pub fn new<T: Any + Send + Sync>(port_type: PortType, value: T) -> Self {
        Object {
            port_type,
            inner: Arc::new(value),
            release: None,
        }
    }

    /// Wraps an existing shared handle (keeps one allocation where the value is already shared).
    pub fn from_arc<T: Any + Send + Sync>(port_type: PortType, value: Arc<T>) -> Self {
        Object {
            port_type,
            inner: value,
            release: None,
        }
    }

    /// Attaches `release`, which gives back what the value holds on the device (a text encoder's
    /// weights) once a run no longer needs it: the executor calls it after the value's last consumer
    /// in a run has finished (ComfyUI frees text encoders this way before sampling). The value
    /// itself stays valid and cached; using it again loads it again.
    pub fn release_after_last_use(mut self, release: impl Fn() + Send + Sync + 'static) -> Self {
        self.release = Some(Arc::new(release));
        self
    }

    /// Runs the release hook, if the producer attached one; returns whether there was one.
    pub fn release_if_unused(&self) -> bool {
        self.release.as_ref().map(|release| release()).is_some()
    }

    /// The port type the object was created with.
    pub fn port_type(&self) -> &PortType {
        &self.port_type
    }

    /// The value, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.inner.downcast_ref()
    }

    /// A shared handle to the value, if it is a `T`.
    pub fn downcast_arc<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.inner.clone().downcast().ok()
    }
}
