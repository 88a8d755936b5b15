//! safetensors files (Flux's `ae.safetensors`, CLIP-L) read through the same mapping machinery.
//!
//! The `safetensors` crate validates the header; tensors become [`TensorInfo`] byte ranges into
//! the mapping, exactly like GGUF tensors.
use super::error::FormatError;
use super::gguf::GgmlType;
use super::tensor::{StorageType, TensorInfo};
use crate::mmap::MappedFile;
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A parsed safetensors file over its mapping.
#[derive(Debug, Clone)]
pub struct SafetensorsFile {
    map: MappedFile,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        Self::from_mapping(MappedFile::open(path)?)
    }

    pub fn from_mapping(map: MappedFile) -> Result<Self, FormatError> {
        let err = |message: String| FormatError::Safetensors {
            path: map.path().to_path_buf(),
            message,
        };
        let (header_len, meta) =
            safetensors::SafeTensors::read_metadata(map.bytes()).map_err(|e| err(e.to_string()))?;
        let data_start = 8 + header_len as u64;
        let mut tensors = Vec::new();
        for (name, info) in meta.tensors() {
            let dtype = storage_type(info.dtype).ok_or_else(|| {
                err(format!(
                    "tensor {name:?}: unsupported dtype {:?}",
                    info.dtype
                ))
            })?;
            let (start, end) = info.data_offsets;
            tensors.push(TensorInfo {
                name: name.clone(),
                dtype,
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                ggml_dims: Vec::new(),
                offset: data_start + start as u64,
                nbytes: (end - start) as u64,
            });
        }
        // File order, like GGUF (the header map is unordered).
        tensors.sort_by_key(|t| t.offset);
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let metadata = meta
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        Ok(SafetensorsFile {
            map,
            tensors,
            index,
            metadata,
        })
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The `__metadata__` string map.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn mapping(&self) -> &MappedFile {
        &self.map
    }

    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map.bytes()[info.range()]
    }
}

fn storage_type(dtype: Dtype) -> Option<StorageType> {
    Some(match dtype {
        Dtype::F32 => StorageType::Ggml(GgmlType::F32),
        Dtype::F16 => StorageType::Ggml(GgmlType::F16),
        Dtype::BF16 => StorageType::Ggml(GgmlType::BF16),
        Dtype::F64 => StorageType::Ggml(GgmlType::F64),
        Dtype::I8 => StorageType::Ggml(GgmlType::I8),
        Dtype::I16 => StorageType::Ggml(GgmlType::I16),
        Dtype::I32 => StorageType::Ggml(GgmlType::I32),
        Dtype::I64 => StorageType::Ggml(GgmlType::I64),
        Dtype::U8 => StorageType::U8,
        Dtype::U16 => StorageType::U16,
        Dtype::U32 => StorageType::U32,
        Dtype::U64 => StorageType::U64,
        Dtype::BOOL => StorageType::Bool,
        Dtype::F8_E4M3 => StorageType::F8E4M3,
        Dtype::F8_E5M2 => StorageType::F8E5M2,
        _ => return None,
    })
}
