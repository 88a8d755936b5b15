//! weft-nodes: the built-in plugin (models, sampling, node types).
//!
//! [`Builtin`] registers every built-in node type under its ComfyUI name: primitives, empty
//! latents, images and PNG load/save, and the Flux nodes (`UnetLoaderGGUF`, `DualCLIPLoaderGGUF`,
//! `CLIPTextEncode`, `KSampler`, `VAEDecode` …; see [`loaders`], [`text_nodes`], [`conditioning`],
//! [`sampler`], [`vae_nodes`]).
use burn::tensor::backend::Backend;
use weft_engine::registry::{NodeRegistry, Plugin};

pub mod conditioning;
pub mod image;
pub mod image_io;
pub mod latent;
pub mod loaders;
pub mod offload;
pub mod primitive;
pub mod sampler;
pub mod text_nodes;
pub mod vae_nodes;

/// The largest width or height a node accepts, as ComfyUI's `MAX_RESOLUTION`.
pub const MAX_RESOLUTION: i64 = 16384;

/// The built-in nodes.
pub struct Builtin;

impl Plugin for Builtin {
    fn name(&self) -> &str {
        "weft-nodes"
    }

    fn build<B: Backend>(&self, registry: &mut NodeRegistry<B>) {
        primitive::register(registry);
        latent::register(registry);
        image::register(registry);
        image_io::register(registry);
        offload::register(registry);
        loaders::register(registry);
        conditioning::register(registry);
        text_nodes::register(registry);
        sampler::register(registry);
        vae_nodes::register(registry);
    }
}
