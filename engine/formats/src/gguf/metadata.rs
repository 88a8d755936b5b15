//! GGUF metadata values: the 13 value types, typed arrays, and their JSON form.
use serde_json::Value as Json;

/// A GGUF metadata value type id (the `gguf_type` enum of the format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// gguf-py's name for the type (`UINT32`, `STRING`, …).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }

    /// The smallest number of bytes one value of this type takes in a file; bounds counts
    /// before anything is allocated.
    pub fn min_encoded_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value. Arrays are typed vectors, so a large vocabulary costs what the file does.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ArrayValue),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A homogeneous GGUF array; nested arrays keep their element type per inner array.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayValue {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<ArrayValue>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetadataValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetadataValue::U8(_) => ValueType::U8,
            MetadataValue::I8(_) => ValueType::I8,
            MetadataValue::U16(_) => ValueType::U16,
            MetadataValue::I16(_) => ValueType::I16,
            MetadataValue::U32(_) => ValueType::U32,
            MetadataValue::I32(_) => ValueType::I32,
            MetadataValue::F32(_) => ValueType::F32,
            MetadataValue::Bool(_) => ValueType::Bool,
            MetadataValue::String(_) => ValueType::String,
            MetadataValue::Array(_) => ValueType::Array,
            MetadataValue::U64(_) => ValueType::U64,
            MetadataValue::I64(_) => ValueType::I64,
            MetadataValue::F64(_) => ValueType::F64,
        }
    }

    /// The type as gguf-py describes it: `UINT32`, `ARRAY[STRING]`, `ARRAY[ARRAY[INT32]]`.
    pub fn type_name(&self) -> String {
        match self {
            MetadataValue::Array(a) => a.type_name(),
            v => v.value_type().name().to_string(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, for any numeric type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            MetadataValue::I8(v) => Some(v.into()),
            MetadataValue::I16(v) => Some(v.into()),
            MetadataValue::I32(v) => Some(v.into()),
            MetadataValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_array(&self) -> Option<&ArrayValue> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Natural JSON: numbers, strings, booleans, arrays. Non-finite floats become strings
    /// ("NaN", "inf", "-inf"), since JSON has no literal for them.
    pub fn to_json(&self) -> Json {
        match self {
            MetadataValue::U8(v) => (*v).into(),
            MetadataValue::I8(v) => (*v).into(),
            MetadataValue::U16(v) => (*v).into(),
            MetadataValue::I16(v) => (*v).into(),
            MetadataValue::U32(v) => (*v).into(),
            MetadataValue::I32(v) => (*v).into(),
            MetadataValue::F32(v) => float_json(f64::from(*v)),
            MetadataValue::Bool(v) => (*v).into(),
            MetadataValue::String(v) => v.clone().into(),
            MetadataValue::Array(a) => a.to_json(None),
            MetadataValue::U64(v) => (*v).into(),
            MetadataValue::I64(v) => (*v).into(),
            MetadataValue::F64(v) => float_json(*v),
        }
    }
}

fn float_json(v: f64) -> Json {
    serde_json::Number::from_f64(v)
        .map(Json::Number)
        .unwrap_or_else(|| Json::String(v.to_string()))
}

impl ArrayValue {
    pub fn len(&self) -> usize {
        match self {
            ArrayValue::U8(v) => v.len(),
            ArrayValue::I8(v) => v.len(),
            ArrayValue::U16(v) => v.len(),
            ArrayValue::I16(v) => v.len(),
            ArrayValue::U32(v) => v.len(),
            ArrayValue::I32(v) => v.len(),
            ArrayValue::F32(v) => v.len(),
            ArrayValue::Bool(v) => v.len(),
            ArrayValue::String(v) => v.len(),
            ArrayValue::Array(v) => v.len(),
            ArrayValue::U64(v) => v.len(),
            ArrayValue::I64(v) => v.len(),
            ArrayValue::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn element_type(&self) -> ValueType {
        match self {
            ArrayValue::U8(_) => ValueType::U8,
            ArrayValue::I8(_) => ValueType::I8,
            ArrayValue::U16(_) => ValueType::U16,
            ArrayValue::I16(_) => ValueType::I16,
            ArrayValue::U32(_) => ValueType::U32,
            ArrayValue::I32(_) => ValueType::I32,
            ArrayValue::F32(_) => ValueType::F32,
            ArrayValue::Bool(_) => ValueType::Bool,
            ArrayValue::String(_) => ValueType::String,
            ArrayValue::Array(_) => ValueType::Array,
            ArrayValue::U64(_) => ValueType::U64,
            ArrayValue::I64(_) => ValueType::I64,
            ArrayValue::F64(_) => ValueType::F64,
        }
    }

    /// `ARRAY[INT32]`, `ARRAY[ARRAY[STRING]]` (an empty nested array shows `ARRAY[ARRAY]`).
    pub fn type_name(&self) -> String {
        match self {
            ArrayValue::Array(inner) => match inner.first() {
                Some(first) => format!("ARRAY[{}]", first.type_name()),
                None => "ARRAY[ARRAY]".to_string(),
            },
            a => format!("ARRAY[{}]", a.element_type().name()),
        }
    }

    /// The elements as integers, if this is an integer array whose values all fit in i64.
    pub fn as_i64_vec(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            ArrayValue::U8(v) => conv(v, |x| Some(x.into())),
            ArrayValue::I8(v) => conv(v, |x| Some(x.into())),
            ArrayValue::U16(v) => conv(v, |x| Some(x.into())),
            ArrayValue::I16(v) => conv(v, |x| Some(x.into())),
            ArrayValue::U32(v) => conv(v, |x| Some(x.into())),
            ArrayValue::I32(v) => conv(v, |x| Some(x.into())),
            ArrayValue::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            ArrayValue::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            ArrayValue::String(v) => Some(v),
            _ => None,
        }
    }

    /// JSON array; with `abbreviate = Some(n)`, arrays longer than `2n` keep their first and
    /// last `n` elements around a `"… (k more)"` marker (for human-readable summaries).
    pub fn to_json(&self, abbreviate: Option<usize>) -> Json {
        fn list<T>(v: &[T], keep: Option<usize>, f: impl Fn(&T) -> Json) -> Json {
            match keep {
                Some(n) if v.len() > 2 * n => {
                    let mut out: Vec<Json> = v[..n].iter().map(&f).collect();
                    out.push(Json::String(format!("… ({} more)", v.len() - 2 * n)));
                    out.extend(v[v.len() - n..].iter().map(&f));
                    Json::Array(out)
                }
                _ => Json::Array(v.iter().map(f).collect()),
            }
        }
        match self {
            ArrayValue::U8(v) => list(v, abbreviate, |x| (*x).into()),
            ArrayValue::I8(v) => list(v, abbreviate, |x| (*x).into()),
            ArrayValue::U16(v) => list(v, abbreviate, |x| (*x).into()),
            ArrayValue::I16(v) => list(v, abbreviate, |x| (*x).into()),
            ArrayValue::U32(v) => list(v, abbreviate, |x| (*x).into()),
            ArrayValue::I32(v) => list(v, abbreviate, |x| (*x).into()),
            ArrayValue::F32(v) => list(v, abbreviate, |x| float_json(f64::from(*x))),
            ArrayValue::Bool(v) => list(v, abbreviate, |x| (*x).into()),
            ArrayValue::String(v) => list(v, abbreviate, |x| x.clone().into()),
            ArrayValue::Array(v) => list(v, abbreviate, |x| x.to_json(abbreviate)),
            ArrayValue::U64(v) => list(v, abbreviate, |x| (*x).into()),
            ArrayValue::I64(v) => list(v, abbreviate, |x| (*x).into()),
            ArrayValue::F64(v) => list(v, abbreviate, |x| float_json(*x)),
        }
    }
}
