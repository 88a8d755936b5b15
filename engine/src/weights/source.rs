//! [`WeightSource`]: a model's named tensors as typed views into one file mapping, GGUF and
//! safetensors alike.
use super::{MappedFile, MmapCache, WeightsError};
use std::path::Path;
use weft_formats::{ModelFile, TensorInfo};

/// A model file's tensors: name → (storage type, PyTorch-order shape, byte range in the mapping).
///
/// It holds a handle to the mapping and nothing else of the file: the bytes it hands out are
/// `&[u8]` slices of the read-only mapping, so no caller can write to them.
#[derive(Debug, Clone)]
pub struct WeightSource {
    file: ModelFile,
}

impl WeightSource {
    /// Opens `path` through the process's [`MmapCache`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WeightsError> {
        Self::open_in(MmapCache::global(), path)
    }

    /// Opens `path` through `cache`.
    pub fn open_in(cache: &MmapCache, path: impl AsRef<Path>) -> Result<Self, WeightsError> {
        let map = cache.open(path)?;
        Self::from_mapping(map)
    }

    /// Parses a mapping (GGUF by its magic, else safetensors).
    pub fn from_mapping(map: MappedFile) -> Result<Self, WeightsError> {
        Ok(WeightSource {
            file: ModelFile::from_mapping(map)?,
        })
    }

    /// Wraps a parsed file.
    pub fn from_model_file(file: ModelFile) -> Self {
        WeightSource { file }
    }

    /// The parsed file (GGUF metadata, safetensors header).
    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    /// The mapping the tensors are views into. It, too, hands out only `&[u8]`:
    ///
    /// ```compile_fail,E0308
    /// fn scribble(source: &weft_engine::weights::WeightSource) {
    ///     let bytes: &mut [u8] = source.mapping().bytes();
    ///     bytes[0] = 0;
    /// }
    /// ```
    pub fn mapping(&self) -> &MappedFile {
        self.file.mapping()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        self.file.tensors()
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.file.tensor(name)
    }

    /// The tensor called `name`, or an error naming the file and the tensor.
    pub fn require(&self, name: &str) -> Result<&TensorInfo, WeightsError> {
        self.get(name).ok_or_else(|| WeightsError::MissingTensor {
            path: self.path().to_owned(),
            name: name.to_owned(),
        })
    }

    /// The tensor's stored bytes: a read-only slice of the mapping, never a copy.
    ///
    /// There is no mutable access to a mapping anywhere in weft; this does not compile:
    ///
    /// ```compile_fail,E0308
    /// fn scribble(source: &weft_engine::weights::WeightSource, info: &weft_engine::formats::TensorInfo) {
    ///     let bytes: &mut [u8] = source.bytes(info);
    ///     bytes[0] = 0;
    /// }
    /// ```
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        self.file.tensor_bytes(info)
    }

    /// The tensor's values as f32 (dequantized or converted), in a fresh buffer.
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>, WeightsError> {
        Ok(self.file.dequantize(info)?)
    }

    /// The sum of every tensor's stored bytes.
    pub fn tensor_bytes_total(&self) -> u64 {
        self.tensors().iter().map(|t| t.nbytes).sum()
    }

    /// Whether both sources read the same mapping.
    pub fn same_mapping(&self, other: &WeightSource) -> bool {
        self.mapping().same_mapping(other.mapping())
    }
}
