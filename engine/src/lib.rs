//! weft-engine: model files, weights, and the CLI machinery every node crate builds on.
pub mod cli;
/// The model-file layer (the `weft-formats` crate), re-exported.
pub use weft_formats as formats;
pub mod weights;
pub mod exec;
pub mod graph;
pub mod node;
pub mod registry;
pub mod memory;
pub mod patcher;
pub mod device;
