//! weft-engine: model files, weights, and the CLI machinery every node crate builds on.
pub mod cli;
/// The model-file layer (the `weft-formats` crate), re-exported.
pub use weft_formats as formats;
pub mod device;
pub mod exec;
pub mod graph;
pub mod memory;
pub mod node;
pub mod patcher;
pub mod profile;
pub mod registry;
pub mod weights;
