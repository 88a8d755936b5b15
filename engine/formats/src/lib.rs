//! weft-formats: model files. GGUF and safetensors read zero-copy from a file mapping, ggml types
//! and their CPU dequantization, and `.npy` for reference data.
//!
//! Architecture Invariant: this crate knows nothing of burn, devices, graphs or models; it turns
//! bytes on disk into typed, checked views. That keeps it small enough to fuzz.
pub mod error;
pub mod gguf;
pub mod mmap;
pub mod npy;
pub mod safetensors;
pub mod tensor;

pub use error::{DequantError, FormatError, GgufParseError};
pub use gguf::GgufFile;
pub use safetensors::SafetensorsFile;
pub use tensor::{StorageType, TensorInfo};

pub use mmap::{FileIdentity, MappedFile};
use std::path::Path;

/// A model file of either format.
#[derive(Debug, Clone)]
pub enum ModelFile {
    Gguf(GgufFile),
    Safetensors(SafetensorsFile),
}

impl ModelFile {
    /// Maps `path` and parses it as GGUF (by its magic) or safetensors (by its JSON header).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        Self::from_mapping(MappedFile::open(path)?)
    }

    pub fn from_mapping(map: MappedFile) -> Result<Self, FormatError> {
        let bytes = map.bytes();
        if bytes.starts_with(&gguf::reader::GGUF_MAGIC) {
            return GgufFile::from_mapping(map).map(ModelFile::Gguf);
        }
        // safetensors: an 8-byte header length, then a JSON object.
        if bytes.len() >= 9 && bytes[8] == b'{' {
            return SafetensorsFile::from_mapping(map).map(ModelFile::Safetensors);
        }
        let is_gguf_name = map
            .path()
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf_name || bytes.len() < 9 {
            // Let the GGUF parser say precisely what is wrong (bad magic, truncated).
            return GgufFile::from_mapping(map).map(ModelFile::Gguf);
        }
        Err(FormatError::UnknownFormat {
            path: map.path().to_path_buf(),
        })
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        match self {
            ModelFile::Gguf(f) => f.tensors(),
            ModelFile::Safetensors(f) => f.tensors(),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        match self {
            ModelFile::Gguf(f) => f.header().tensor(name),
            ModelFile::Safetensors(f) => f.tensor(name),
        }
    }

    pub fn mapping(&self) -> &MappedFile {
        match self {
            ModelFile::Gguf(f) => f.mapping(),
            ModelFile::Safetensors(f) => f.mapping(),
        }
    }

    pub fn path(&self) -> &Path {
        self.mapping().path()
    }

    /// A tensor's bytes: a slice of the mapping.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mapping().bytes()[info.range()]
    }

    /// Looks a tensor up by name; the error names the file and suggests a close name.
    pub fn require(&self, name: &str) -> Result<&TensorInfo, FormatError> {
        self.tensor(name).ok_or_else(|| {
            let hint = self
                .tensors()
                .iter()
                .map(|t| (strsim::levenshtein(&t.name, name), &t.name))
                .min()
                .filter(|(d, _)| *d <= name.len() / 3 + 2)
                .map(|(_, n)| format!(" (did you mean {n:?}?)"))
                .unwrap_or_default();
            FormatError::TensorNotFound {
                path: self.path().to_path_buf(),
                name: name.to_string(),
                hint,
            }
        })
    }

    /// Dequantizes a tensor to f32 (row-major, PyTorch-order shape).
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>, FormatError> {
        let mut out = vec![0f32; info.n_elements() as usize];
        tensor::to_f32(info.dtype, self.tensor_bytes(info), &mut out, &info.name).map_err(
            |error| FormatError::Dequant {
                path: self.path().to_path_buf(),
                error,
            },
        )?;
        Ok(out)
    }
}
