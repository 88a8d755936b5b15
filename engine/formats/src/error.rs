//! Errors of the model-file layer: every variant names the file, and where it can, the tensor or key.
use crate::gguf::types::GgmlType;
use std::path::PathBuf;

/// What is wrong inside a GGUF byte stream, without the file name (see [`FormatError::Gguf`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GgufParseError {
    #[error("not a GGUF file (magic {0:?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("big-endian GGUF (version {0}) is not supported; convert it to little-endian")]
    BigEndian(u32),
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    #[error(
        "truncated: {what} needs {needed} bytes at offset {offset}, but the file ends at {file_len}"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("{what}: count {count} cannot fit in the {remaining} bytes left in the file")]
    AbsurdCount {
        what: String,
        count: u64,
        remaining: u64,
    },
    #[error("metadata key {key:?}: unknown value type {type_id}")]
    BadValueType { key: String, type_id: u32 },
    #[error("metadata key {key:?}: arrays nested deeper than {max}")]
    NestingTooDeep { key: String, max: usize },
    #[error("metadata key {key:?} appears twice")]
    DuplicateKey { key: String },
    #[error("general.alignment = {0} is not a power of two")]
    BadAlignment(u64),
    #[error("general.alignment must be an unsigned integer, found {0}")]
    BadAlignmentType(&'static str),
    #[error("tensor {tensor:?}: unknown ggml type id {type_id}")]
    UnknownType { tensor: String, type_id: u32 },
    #[error(
        "tensor {tensor:?}: ggml type {name} (id {type_id}) was removed from ggml; re-convert the file"
    )]
    RemovedType {
        tensor: String,
        name: &'static str,
        type_id: u32,
    },
    #[error("tensor {tensor:?}: {n_dims} dimensions (at most {max} supported)")]
    TooManyDims {
        tensor: String,
        n_dims: u32,
        max: usize,
    },
    #[error("tensor {tensor:?}: shape {shape:?} is invalid for {ty}: {why}")]
    BadShape {
        tensor: String,
        shape: Vec<u64>,
        ty: GgmlType,
        why: &'static str,
    },
    #[error(
        "tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedOffset {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error("tensor {tensor:?}: data bytes {start}..{end} lie outside the file ({file_len} bytes)")]
    OutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("tensor {0:?} appears twice")]
    DuplicateTensor(String),
    #[error("{key}: {why}")]
    BadOrigShape { key: String, why: String },
}

/// Errors of dequantization and conversion, naming the tensor.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DequantError {
    #[error("tensor {tensor:?}: no dequantizer for ggml type {ty} (supported: {supported})")]
    Unsupported {
        tensor: String,
        ty: String,
        supported: String,
    },
    #[error("tensor {tensor:?}: {ty} data of {bytes} bytes does not hold {elements} elements")]
    SizeMismatch {
        tensor: String,
        ty: String,
        bytes: usize,
        elements: usize,
    },
    #[error("cannot quantize to {ty}: {why}")]
    Quantize { ty: GgmlType, why: String },
}

/// The model-file layer's error: a file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    // The inner errors are part of the message (not `#[source]`), so a report that walks the
    // error chain prints them once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    Gguf {
        path: PathBuf,
        error: GgufParseError,
    },
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Npy { path: PathBuf, message: String },
    #[error("{path}: {error}")]
    Dequant { path: PathBuf, error: DequantError },
    #[error("{path}: no tensor named {name:?}{hint}")]
    TensorNotFound {
        path: PathBuf,
        name: String,
        hint: String,
    },
    #[error("{path}: unrecognised model file (neither GGUF nor safetensors)")]
    UnknownFormat { path: PathBuf },
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            error,
        }
    }
}
