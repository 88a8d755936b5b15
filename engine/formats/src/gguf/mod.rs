//! GGUF: the reader over a file mapping, metadata, ggml types, CPU dequantization, and a writer.
pub mod dequant;
pub mod metadata;
pub mod quant;
pub mod reader;
pub mod types;
pub mod writer;

pub use metadata::{ArrayValue, MetadataValue, ValueType};
pub use reader::{GgufHeader, parse_header};
pub use types::GgmlType;
pub use writer::{GgufStreamWriter, GgufWriter, StreamWriteError, TensorPlan};

use super::error::FormatError;
use super::tensor::TensorInfo;
use crate::mmap::MappedFile;
use std::path::Path;

/// A GGUF file: its parsed header and the mapping its tensors are views into.
#[derive(Debug, Clone)]
pub struct GgufFile {
    map: MappedFile,
    header: GgufHeader,
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        Self::from_mapping(MappedFile::open(path)?)
    }

    /// Parses a file that is already mapped (for example, a handle from the mmap cache).
    pub fn from_mapping(map: MappedFile) -> Result<Self, FormatError> {
        let header = parse_header(map.bytes()).map_err(|error| FormatError::Gguf {
            path: map.path().to_path_buf(),
            error,
        })?;
        Ok(GgufFile { map, header })
    }

    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    pub fn mapping(&self) -> &MappedFile {
        &self.map
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The raw bytes of a tensor: a slice of the mapping, never a copy.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map.bytes()[info.range()]
    }
}
