//! A GGUF v3 writer: metadata, alignment, and tensors (raw, or quantized from f32).
//!
//! Tests and tools use it to make small model files; the layout is the one gguf-py writes
//! (header, metadata, tensor infos, padding, then each tensor's data padded to the alignment).
use super::metadata::{ArrayValue, MetadataValue};
use super::quant;
use super::reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC, align_up};
use super::types::GgmlType;
use crate::error::{DequantError, FormatError};
use std::io::{self, Write};
use std::path::Path;

struct PendingTensor {
    name: String,
    ty: GgmlType,
    /// PyTorch order.
    shape: Vec<u64>,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory and writes it out.
pub struct GgufWriter {
    alignment: u64,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets the data alignment (a power of two); also recorded as `general.alignment`.
    pub fn with_alignment(mut self, alignment: u32) -> Self {
        assert!(
            alignment.is_power_of_two(),
            "alignment must be a power of two"
        );
        self.alignment = u64::from(alignment);
        self.metadata.retain(|(k, _)| k != "general.alignment");
        self.metadata
            .push(("general.alignment".into(), MetadataValue::U32(alignment)));
        self
    }

    /// Adds (or replaces) a metadata entry.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetadataValue) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor from its raw bytes in `ty`; `shape` is in PyTorch order.
    pub fn add_raw_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        shape: &[u64],
        data: Vec<u8>,
    ) -> Result<&mut Self, DequantError> {
        let name = name.into();
        let n: u64 = shape.iter().product();
        let row = shape.last().copied().unwrap_or(1);
        if row % ty.block_size() as u64 != 0 || ty.bytes_for(n) != Some(data.len() as u64) {
            return Err(DequantError::SizeMismatch {
                tensor: name,
                ty: ty.name().into(),
                bytes: data.len(),
                elements: n as usize,
            });
        }
        self.tensors.push(PendingTensor {
            name,
            ty,
            shape: shape.to_vec(),
            data,
        });
        Ok(self)
    }

    /// Adds a tensor quantized from f32 values (row-major, PyTorch-order `shape`).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        shape: &[u64],
        values: &[f32],
    ) -> Result<&mut Self, DequantError> {
        let row = shape.last().copied().unwrap_or(1) as usize;
        let data = quant::quantize(ty, values, row.max(1))?;
        self.add_raw_tensor(name, ty, shape, data)
    }

    /// Writes the file.
    pub fn write_to(&self, mut w: impl Write) -> io::Result<()> {
        let mut header = Vec::new();
        header.extend_from_slice(&GGUF_MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut header, key);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut header, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut header, &t.name);
            header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + t.data.len() as u64, self.alignment);
        }
        let padded = align_up(header.len() as u64, self.alignment) as usize;
        header.resize(padded, 0);
        w.write_all(&header)?;
        for t in &self.tensors {
            w.write_all(&t.data)?;
            let pad = align_up(t.data.len() as u64, self.alignment) as usize - t.data.len();
            w.write_all(&vec![0u8; pad])?;
        }
        w.flush()
    }

    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<(), FormatError> {
        let path = path.as_ref();
        let file = std::fs::File::create(path).map_err(|e| FormatError::io(path, e))?;
        self.write_to(io::BufWriter::new(file))
            .map_err(|e| FormatError::io(path, e))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::U8(v) => out.push(*v),
        MetadataValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(u8::from(*v)),
        MetadataValue::String(v) => put_str(out, v),
        MetadataValue::Array(a) => put_array(out, a),
        MetadataValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &ArrayValue) {
    out.extend_from_slice(&a.element_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            $v.iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match a {
        ArrayValue::U8(v) => out.extend_from_slice(v),
        ArrayValue::I8(v) => each!(v),
        ArrayValue::U16(v) => each!(v),
        ArrayValue::I16(v) => each!(v),
        ArrayValue::U32(v) => each!(v),
        ArrayValue::I32(v) => each!(v),
        ArrayValue::F32(v) => each!(v),
        ArrayValue::U64(v) => each!(v),
        ArrayValue::I64(v) => each!(v),
        ArrayValue::F64(v) => each!(v),
        ArrayValue::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        ArrayValue::String(v) => v.iter().for_each(|s| put_str(out, s)),
        ArrayValue::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
    }
}
