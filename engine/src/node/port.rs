//! Port types: the names that say which values may flow along a link.
//!
//! A port type is a name, as in ComfyUI (`"MODEL"`, `"LATENT"`): the built-in ones are constants here,
//! and a plugin defines its own with [`PortType::custom`] and registers it with
//! [`NodeRegistry::register_type`](crate::registry::NodeRegistry::register_type).
use serde::Serialize;
use std::borrow::Cow;
use std::fmt;

/// The type of an input or output port. Two ports may be linked only when their types are equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PortType(Cow<'static, str>);

impl PortType {
    /// A diffusion model (UNet / DiT) behind a shared handle.
    pub const MODEL: PortType = PortType(Cow::Borrowed("MODEL"));
    /// A text encoder (CLIP, T5 …) behind a shared handle.
    pub const CLIP: PortType = PortType(Cow::Borrowed("CLIP"));
    /// A VAE behind a shared handle.
    pub const VAE: PortType = PortType(Cow::Borrowed("VAE"));
    /// Encoded prompts: [`Conditioning`](crate::node::Conditioning).
    pub const CONDITIONING: PortType = PortType(Cow::Borrowed("CONDITIONING"));
    /// Latent images: [`Latent`](crate::node::Latent), `[batch, channels, height, width]`.
    pub const LATENT: PortType = PortType(Cow::Borrowed("LATENT"));
    /// Images as `[batch, height, width, channels]` floats in 0..=1 (ComfyUI's layout).
    pub const IMAGE: PortType = PortType(Cow::Borrowed("IMAGE"));
    /// Masks as `[batch, height, width]` floats in 0..=1.
    pub const MASK: PortType = PortType(Cow::Borrowed("MASK"));
    /// A 64-bit signed integer.
    pub const INT: PortType = PortType(Cow::Borrowed("INT"));
    /// A 64-bit float.
    pub const FLOAT: PortType = PortType(Cow::Borrowed("FLOAT"));
    /// A string.
    pub const STRING: PortType = PortType(Cow::Borrowed("STRING"));
    /// A boolean.
    pub const BOOLEAN: PortType = PortType(Cow::Borrowed("BOOLEAN"));

    /// Every type the engine itself defines, in the order `weft nodes` lists them.
    pub const BUILTIN: [PortType; 11] = [
        Self::MODEL,
        Self::CLIP,
        Self::VAE,
        Self::CONDITIONING,
        Self::LATENT,
        Self::IMAGE,
        Self::MASK,
        Self::INT,
        Self::FLOAT,
        Self::STRING,
        Self::BOOLEAN,
    ];

    /// A type defined by a plugin. By convention an UPPER_SNAKE name, e.g. `"COLOR_GRADE"`; values of
    /// it travel as [`Value::Object`](crate::node::Value::Object).
    pub const fn custom(name: &'static str) -> PortType {
        PortType(Cow::Borrowed(name))
    }

    /// The type's name as written in `weft nodes` and error messages.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Whether the engine defines this type (as opposed to a plugin).
    pub fn is_builtin(&self) -> bool {
        Self::BUILTIN.contains(self)
    }
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
