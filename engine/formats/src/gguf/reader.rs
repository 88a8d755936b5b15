//! The GGUF header parser: metadata and tensor infos read from the mapped bytes, every count,
//! length and offset checked against the file size before anything is allocated or read.
use super::metadata::{ArrayValue, MetadataValue, ValueType};
use super::types::{GgmlType, removed_type_name};
use crate::error::GgufParseError;
use crate::tensor::{StorageType, TensorInfo};
use std::collections::HashMap;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays inside arrays we accept (real files use at most 2).
pub const MAX_ARRAY_NESTING: usize = 8;
/// Most dimensions a tensor may have (ggml uses 4; city96 Wan/Hunyuan files carry 5).
pub const MAX_DIMS: usize = 8;
/// Prefix of the keys in which ComfyUI-GGUF records a tensor's PyTorch shape.
pub const ORIG_SHAPE_PREFIX: &str = "comfy.gguf.orig_shape.";

/// Everything in a GGUF file except the tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetadataValue)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture")
            .and_then(MetadataValue::as_str)
    }
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

type Result<T> = std::result::Result<T, GgufParseError>;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufParseError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.data.len() as u64,
            });
        }
        let n = n as usize; // fits: n <= remaining
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items that each take at least `min_size` bytes: rejected before any
    /// allocation if the rest of the file cannot hold them.
    fn count(&mut self, min_size: u64, what: &dyn Fn() -> String) -> Result<u64> {
        let count = self.u64(what)?;
        let remaining = self.remaining();
        if count
            .checked_mul(min_size)
            .is_none_or(|need| need > remaining)
        {
            return Err(GgufParseError::AbsurdCount {
                what: what(),
                count,
                remaining,
            });
        }
        Ok(count)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        // Tokenizer pieces are not always valid UTF-8; keep them readable rather than fail.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

fn check_version(magic: [u8; 4], raw_version: [u8; 4]) -> Result<u32> {
    if magic != GGUF_MAGIC {
        return Err(GgufParseError::BadMagic(magic));
    }
    let version = u32::from_le_bytes(raw_version);
    match version {
        2 | 3 => Ok(version),
        // A big-endian writer stores the version byte-swapped: 3 reads as 0x03000000.
        _ if version & 0xFFFF == 0 && (1..=3).contains(&u32::from_be_bytes(raw_version)) => {
            Err(GgufParseError::BigEndian(u32::from_be_bytes(raw_version)))
        }
        _ => Err(GgufParseError::UnsupportedVersion(version)),
    }
}

/// Parses the header of a GGUF file held in `data` (the whole file, usually its mapping).
pub fn parse_header(data: &[u8]) -> Result<GgufHeader> {
    let mut cur = Cursor { data, pos: 0 };
    let magic = cur.array::<4>(&|| "the GGUF magic".into())?;
    let raw_version = cur.array::<4>(&|| "the version".into())?;
    let version = check_version(magic, raw_version)?;

    let n_tensors = cur.u64(&|| "the tensor count".into())?;
    let n_kv = cur.count(8 + 4 + 1, &|| "the metadata count".into())?;

    let mut metadata = Vec::new();
    let mut key_index = HashMap::new();
    for kv_idx in 0..n_kv {
        let key = cur.string(&|| format!("metadata key #{kv_idx}"))?;
        let type_id = cur.u32(&|| format!("the type of metadata key {key:?}"))?;
        let value = read_value(&mut cur, &key, type_id, 0)?;
        if key_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(GgufParseError::DuplicateKey { key });
        }
        metadata.push((key, value));
    }

    let alignment = match key_index.get("general.alignment").map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(
            v @ (MetadataValue::U8(_)
            | MetadataValue::U16(_)
            | MetadataValue::U32(_)
            | MetadataValue::U64(_)),
        ) => {
            let a = v.as_u64().unwrap_or(0);
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufParseError::BadAlignment(a));
            }
            a
        }
        Some(other) => return Err(GgufParseError::BadAlignmentType(other.value_type().name())),
    };

    // Checked only now that the metadata is read: each info takes at least 24 bytes.
    let remaining = cur.remaining();
    if n_tensors
        .checked_mul(24)
        .is_none_or(|need| need > remaining)
    {
        return Err(GgufParseError::AbsurdCount {
            what: "the tensor count".into(),
            count: n_tensors,
            remaining,
        });
    }
    let mut raw_infos = Vec::with_capacity(n_tensors as usize);
    for tensor_idx in 0..n_tensors {
        let name = cur.string(&|| format!("the name of tensor #{tensor_idx}"))?;
        let n_dims = cur.u32(&|| format!("the dimension count of tensor {name:?}"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufParseError::TooManyDims {
                tensor: name,
                n_dims,
                max: MAX_DIMS,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(cur.u64(&|| format!("the dimensions of tensor {name:?}"))?);
        }
        let type_id = cur.u32(&|| format!("the type of tensor {name:?}"))?;
        let offset = cur.u64(&|| format!("the data offset of tensor {name:?}"))?;
        raw_infos.push((name, dims, type_id, offset));
    }

    let file_len = data.len() as u64;
    let data_offset = align_up(cur.pos as u64, alignment);
    let mut tensors = Vec::with_capacity(raw_infos.len());
    let mut tensor_index = HashMap::new();
    for (name, dims, type_id, offset) in raw_infos {
        let ty = match GgmlType::from_id(type_id) {
            Some(t) => t,
            None => {
                return Err(match removed_type_name(type_id) {
                    Some(old) => GgufParseError::RemovedType {
                        tensor: name,
                        name: old,
                        type_id,
                    },
                    None => GgufParseError::UnknownType {
                        tensor: name,
                        type_id,
                    },
                });
            }
        };
        let bad_shape = |why| GgufParseError::BadShape {
            tensor: name.clone(),
            shape: dims.iter().rev().copied().collect(),
            ty,
            why,
        };
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad_shape("element count overflows"))?;
        if dims
            .first()
            .is_some_and(|&ne0| ne0 % ty.block_size() as u64 != 0)
        {
            return Err(bad_shape("row length is not a multiple of the block size"));
        }
        let nbytes = ty
            .bytes_for(n_elements)
            .ok_or_else(|| bad_shape("element count overflows"))?;
        if offset % alignment != 0 {
            return Err(GgufParseError::MisalignedOffset {
                tensor: name,
                offset,
                alignment,
            });
        }
        let start = data_offset.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(nbytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => {
                let shape = dims.iter().rev().copied().collect();
                if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                    return Err(GgufParseError::DuplicateTensor(name));
                }
                tensors.push(TensorInfo {
                    name,
                    dtype: StorageType::Ggml(ty),
                    shape,
                    ggml_dims: dims,
                    offset: start,
                    nbytes,
                });
            }
            _ => {
                return Err(GgufParseError::OutOfBounds {
                    tensor: name,
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                });
            }
        }
    }

    let mut header = GgufHeader {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
        key_index,
        tensor_index,
    };
    apply_orig_shapes(&mut header)?;
    Ok(header)
}

/// ComfyUI-GGUF stores some tensors reshaped (e.g. 5-D conv weights as 2-D) and records the
/// PyTorch shape in `comfy.gguf.orig_shape.<name>`; the recorded shape is the real one.
fn apply_orig_shapes(header: &mut GgufHeader) -> Result<()> {
    for (key, value) in &header.metadata {
        let Some(name) = key.strip_prefix(ORIG_SHAPE_PREFIX) else {
            continue;
        };
        let bad = |why: String| GgufParseError::BadOrigShape {
            key: key.clone(),
            why,
        };
        let Some(&idx) = header.tensor_index.get(name) else {
            return Err(bad("names a tensor the file does not contain".into()));
        };
        let dims = value
            .as_array()
            .and_then(ArrayValue::as_i64_vec)
            .ok_or_else(|| {
                bad(format!(
                    "expected an array of integers, found {}",
                    value.type_name()
                ))
            })?;
        if dims.len() > MAX_DIMS || dims.iter().any(|&d| d < 0) {
            return Err(bad(format!("invalid shape {dims:?}")));
        }
        let shape: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        let tensor = &mut header.tensors[idx];
        let n: Option<u64> = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        if n != Some(tensor.n_elements()) {
            return Err(bad(format!(
                "shape {shape:?} does not hold the {} elements of the stored shape {:?}",
                tensor.n_elements(),
                tensor.shape
            )));
        }
        tensor.shape = shape;
    }
    Ok(())
}

pub(crate) fn align_up(offset: u64, alignment: u64) -> u64 {
    offset.div_ceil(alignment).saturating_mul(alignment)
}

fn read_value(
    cur: &mut Cursor<'_>,
    key: &str,
    type_id: u32,
    depth: usize,
) -> Result<MetadataValue> {
    let ty = ValueType::from_id(type_id).ok_or_else(|| GgufParseError::BadValueType {
        key: key.to_string(),
        type_id,
    })?;
    let what = || format!("the value of metadata key {key:?}");
    Ok(match ty {
        ValueType::U8 => MetadataValue::U8(cur.array::<1>(&what)?[0]),
        ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(cur.array(&what)?)),
        ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(cur.array(&what)?)),
        ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(cur.array(&what)?)),
        ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(cur.array(&what)?)),
        ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(cur.array(&what)?)),
        ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(cur.array(&what)?)),
        ValueType::Bool => MetadataValue::Bool(cur.array::<1>(&what)?[0] != 0),
        ValueType::String => MetadataValue::String(cur.string(&what)?),
        ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(cur.array(&what)?)),
        ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(cur.array(&what)?)),
        ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(cur.array(&what)?)),
        ValueType::Array => MetadataValue::Array(read_array(cur, key, depth)?),
    })
}

fn read_array(cur: &mut Cursor<'_>, key: &str, depth: usize) -> Result<ArrayValue> {
    if depth >= MAX_ARRAY_NESTING {
        return Err(GgufParseError::NestingTooDeep {
            key: key.to_string(),
            max: MAX_ARRAY_NESTING,
        });
    }
    let what = || format!("the array of metadata key {key:?}");
    let type_id = cur.u32(&what)?;
    let elem = ValueType::from_id(type_id).ok_or_else(|| GgufParseError::BadValueType {
        key: key.to_string(),
        type_id,
    })?;
    let n = cur.count(elem.min_encoded_size(), &what)? as usize;

    macro_rules! fixed {
        ($variant:ident, $t:ty) => {{
            const SIZE: usize = std::mem::size_of::<$t>();
            let bytes = cur.take((n * SIZE) as u64, &what)?;
            ArrayValue::$variant(
                bytes
                    .chunks_exact(SIZE)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                    .collect(),
            )
        }};
    }
    Ok(match elem {
        ValueType::U8 => ArrayValue::U8(cur.take(n as u64, &what)?.to_vec()),
        ValueType::I8 => fixed!(I8, i8),
        ValueType::U16 => fixed!(U16, u16),
        ValueType::I16 => fixed!(I16, i16),
        ValueType::U32 => fixed!(U32, u32),
        ValueType::I32 => fixed!(I32, i32),
        ValueType::F32 => fixed!(F32, f32),
        ValueType::U64 => fixed!(U64, u64),
        ValueType::I64 => fixed!(I64, i64),
        ValueType::F64 => fixed!(F64, f64),
        ValueType::Bool => {
            ArrayValue::Bool(cur.take(n as u64, &what)?.iter().map(|&b| b != 0).collect())
        }
        ValueType::String => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(cur.string(&what)?);
            }
            ArrayValue::String(v)
        }
        ValueType::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(cur, key, depth + 1)?);
            }
            ArrayValue::Array(v)
        }
    })
}
