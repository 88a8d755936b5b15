//! weft-engine: the library every node crate builds on — workflows and their validation, the
//! graph executor and its cache, the node API and plugin registry, the weight cache (one mapping
//! per file), the model patcher and the memory manager.
//!
//! Architecture Invariant: backend-generic. No CUDA code (weft-cuda implements the engine's
//! [`patcher::WeightDevice`] for CUDA), no command line (the `weft` crate), no model
//! architecture (weft-models). `tests/layout.rs` fails when this crate gains such a dependency.
/// The model-file layer (the `weft-formats` crate), re-exported.
pub use weft_formats as formats;
pub mod exec;
pub mod graph;
pub mod memory;
pub mod node;
pub mod patcher;
pub mod registry;
pub mod weights;
