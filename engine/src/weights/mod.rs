//! Model weights in host memory: the file mappings every model reads from.
pub use weft_formats::mmap::{FileIdentity, MappedFile};
