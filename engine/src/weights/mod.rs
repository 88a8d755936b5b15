//! Model weights in host memory: the file mappings every model reads from (one per file per
//! process, kept by [`MmapCache`]) and [`WeightSource`], a model's named tensors as views into one.
//!
//! Architecture Invariant: nothing in this module copies tensor data or writes to a mapping; it
//! hands out `&[u8]` views. Device copies are made by the patcher, from those views, into fresh
//! buffers.
#![forbid(unsafe_code)]

pub(crate) mod cache;
mod source;
pub mod synthetic;

pub use cache::{CachePolicy, CacheStats, MmapCache};
pub use source::WeightSource;
pub use weft_formats::mmap::{FileIdentity, MappedFile};

use std::path::PathBuf;

/// Why a model file could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be stat'ed, mapped or parsed (the format error names the file).
    #[error(transparent)]
    Format(#[from] weft_formats::FormatError),
    /// The file's metadata could not be read.
    // The OS error is part of the message (not a `#[source]`), so a report that walks the chain
    // prints it once.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A tensor the caller asked for is not in the file.
    #[error("{}: no tensor named {name:?}", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
    },
}
