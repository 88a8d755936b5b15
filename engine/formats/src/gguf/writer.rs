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

    /// The tensors' names, types and shapes, as a [`GgufStreamWriter`] is told them up front.
    fn plans(&self) -> Vec<TensorPlan> {
        self.tensors
            .iter()
            .map(|t| TensorPlan {
                name: t.name.clone(),
                ty: t.ty,
                shape: t.shape.clone(),
            })
            .collect()
    }

    /// Writes the file.
    pub fn write_to(&self, w: impl Write) -> io::Result<()> {
        let mut stream = GgufStreamWriter::begin(w, self.alignment, &self.metadata, self.plans())
            .map_err(StreamWriteError::into_io)?;
        for t in &self.tensors {
            stream
                .write_tensor(&t.data)
                .map_err(StreamWriteError::into_io)?;
        }
        stream.finish().map(drop).map_err(StreamWriteError::into_io)
    }

    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<(), FormatError> {
        let path = path.as_ref();
        let file = std::fs::File::create(path).map_err(|e| FormatError::io(path, e))?;
        self.write_to(io::BufWriter::new(file))
            .map_err(|e| FormatError::io(path, e))
    }
}

/// A tensor a [`GgufStreamWriter`] will write: its name, type and PyTorch-order shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    pub ty: GgmlType,
    /// PyTorch order.
    pub shape: Vec<u64>,
}

impl TensorPlan {
    /// The tensor's data size in bytes, or `None` when its row is not whole blocks of `ty`.
    pub fn nbytes(&self) -> Option<u64> {
        let row = self.shape.last().copied().unwrap_or(1);
        if row % self.ty.block_size() as u64 != 0 {
            return None;
        }
        self.shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .and_then(|n| self.ty.bytes_for(n))
    }
}

/// What can go wrong while streaming a GGUF out.
#[derive(Debug, thiserror::Error)]
pub enum StreamWriteError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("tensor {tensor:?}: shape {shape:?} is not whole blocks of {ty}")]
    BadShape {
        tensor: String,
        ty: GgmlType,
        shape: Vec<u64>,
    },
    #[error("tensor {tensor:?}: {got} bytes given, its plan needs {expected}")]
    WrongSize {
        tensor: String,
        expected: u64,
        got: u64,
    },
    #[error("{extra} tensor(s) written past the {planned} planned")]
    TooMany { planned: usize, extra: usize },
    #[error("finished after {written} of {planned} planned tensors")]
    Unfinished { written: usize, planned: usize },
}

impl StreamWriteError {
    fn into_io(self) -> io::Error {
        match self {
            StreamWriteError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidInput, other),
        }
    }
}

const ZEROS: [u8; 64] = [0; 64];

/// Writes a GGUF v3 file tensor by tensor, so that memory stays bounded by one tensor whatever
/// the file's size: the header and every tensor's info (sizes and offsets are known from the
/// plans) go out first, then [`write_tensor`](Self::write_tensor) takes each tensor's bytes in
/// plan order. The bytes are those [`GgufWriter::write_to`] writes for the same tensors.
pub struct GgufStreamWriter<W: Write> {
    out: W,
    alignment: u64,
    plans: Vec<(TensorPlan, u64)>,
    next: usize,
    header_bytes: u64,
    /// Header plus data written so far.
    written: u64,
}

impl<W: Write> GgufStreamWriter<W> {
    /// Writes the header (magic, metadata, tensor infos, padding) for `tensors`, in this order.
    /// `alignment` must be a power of two; pass it in `metadata` too (`general.alignment`) when
    /// it is not the default 32.
    pub fn begin(
        mut out: W,
        alignment: u64,
        metadata: &[(String, MetadataValue)],
        tensors: Vec<TensorPlan>,
    ) -> Result<Self, StreamWriteError> {
        let alignment = if alignment.is_power_of_two() {
            alignment
        } else {
            DEFAULT_ALIGNMENT
        };
        let mut plans = Vec::with_capacity(tensors.len());
        for plan in tensors {
            let nbytes = plan.nbytes().ok_or_else(|| StreamWriteError::BadShape {
                tensor: plan.name.clone(),
                ty: plan.ty,
                shape: plan.shape.clone(),
            })?;
            plans.push((plan, nbytes));
        }
        let mut header = Vec::new();
        header.extend_from_slice(&GGUF_MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(plans.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_str(&mut header, key);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut header, value);
        }
        let mut offset = 0u64;
        for (t, nbytes) in &plans {
            put_str(&mut header, &t.name);
            header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + nbytes, alignment);
        }
        let padded = align_up(header.len() as u64, alignment) as usize;
        header.resize(padded, 0);
        out.write_all(&header)?;
        Ok(GgufStreamWriter {
            out,
            alignment,
            plans,
            next: 0,
            header_bytes: padded as u64,
            written: padded as u64,
        })
    }

    /// The plan of the tensor [`write_tensor`](Self::write_tensor) expects next, if any is left.
    pub fn next_tensor(&self) -> Option<&TensorPlan> {
        self.plans.get(self.next).map(|(plan, _)| plan)
    }

    /// The file's size once every tensor is written.
    pub fn total_bytes(&self) -> u64 {
        let data: u64 = self
            .plans
            .iter()
            .map(|(_, n)| align_up(*n, self.alignment))
            .sum();
        self.header_bytes + data
    }

    /// Bytes written so far (header included).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Writes the next tensor's bytes (exactly its planned size) and its padding.
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<(), StreamWriteError> {
        let Some((plan, nbytes)) = self.plans.get(self.next) else {
            return Err(StreamWriteError::TooMany {
                planned: self.plans.len(),
                extra: 1,
            });
        };
        if data.len() as u64 != *nbytes {
            return Err(StreamWriteError::WrongSize {
                tensor: plan.name.clone(),
                expected: *nbytes,
                got: data.len() as u64,
            });
        }
        self.out.write_all(data)?;
        let padded = align_up(*nbytes, self.alignment);
        let mut pad = (padded - nbytes) as usize;
        while pad > 0 {
            let n = pad.min(ZEROS.len());
            self.out.write_all(&ZEROS[..n])?;
            pad -= n;
        }
        self.written += padded;
        self.next += 1;
        Ok(())
    }

    /// Checks that every planned tensor was written, flushes and returns the writer.
    pub fn finish(mut self) -> Result<W, StreamWriteError> {
        if self.next != self.plans.len() {
            return Err(StreamWriteError::Unfinished {
                written: self.next,
                planned: self.plans.len(),
            });
        }
        self.out.flush()?;
        Ok(self.out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;

    fn sample() -> GgufWriter {
        let mut w = GgufWriter::new().with_alignment(64);
        w.add_metadata("general.architecture", MetadataValue::String("t".into()));
        let values: Vec<f32> = (0..96).map(|i| (i as f32 * 0.37).sin()).collect();
        w.add_tensor("a.weight", GgmlType::Q8_0, &[3, 32], &values)
            .unwrap();
        w.add_tensor("a.bias", GgmlType::F32, &[3], &values[..3])
            .unwrap();
        w.add_tensor("b.weight", GgmlType::F16, &[2, 5], &values[..10])
            .unwrap();
        w
    }

    #[test]
    fn streaming_writes_the_bytes_the_in_memory_writer_writes() {
        let whole = sample();
        let mut expected = Vec::new();
        whole.write_to(&mut expected).unwrap();

        let mut stream =
            GgufStreamWriter::begin(Vec::new(), 64, &whole.metadata, whole.plans()).unwrap();
        let total = stream.total_bytes();
        for t in &whole.tensors {
            assert_eq!(
                stream.next_tensor().map(|p| p.name.as_str()),
                Some(t.name.as_str())
            );
            stream.write_tensor(&t.data).unwrap();
        }
        assert_eq!(stream.bytes_written(), total);
        let streamed = stream.finish().unwrap();
        assert_eq!(streamed, expected);
        assert_eq!(streamed.len() as u64, total);

        // The reader finds every tensor at its offset.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.gguf");
        std::fs::write(&path, &streamed).unwrap();
        let file = GgufFile::open(&path).unwrap();
        for (info, t) in file.tensors().iter().zip(&whole.tensors) {
            assert_eq!(info.name, t.name);
            assert_eq!(file.tensor_bytes(info), t.data.as_slice());
        }
    }

    #[test]
    fn streaming_refuses_what_does_not_match_the_plan() {
        let plan = |name: &str, shape: Vec<u64>| TensorPlan {
            name: name.into(),
            ty: GgmlType::Q8_0,
            shape,
        };
        assert!(matches!(
            GgufStreamWriter::begin(Vec::new(), 32, &[], vec![plan("x", vec![2, 30])]),
            Err(StreamWriteError::BadShape { .. })
        ));
        let mut w =
            GgufStreamWriter::begin(Vec::new(), 32, &[], vec![plan("x", vec![1, 32])]).unwrap();
        assert!(matches!(
            w.write_tensor(&[0; 33]),
            Err(StreamWriteError::WrongSize {
                expected: 34,
                got: 33,
                ..
            })
        ));
        let unfinished =
            GgufStreamWriter::begin(Vec::new(), 32, &[], vec![plan("x", vec![1, 32])]).unwrap();
        assert!(matches!(
            unfinished.finish(),
            Err(StreamWriteError::Unfinished {
                written: 0,
                planned: 1
            })
        ));
        w.write_tensor(&[0; 34]).unwrap();
        assert!(matches!(
            w.write_tensor(&[0; 34]),
            Err(StreamWriteError::TooMany { .. })
        ));
    }
}
