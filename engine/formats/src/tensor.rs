//! A tensor in a model file: its storage type, PyTorch-order shape, and byte range in the file.
use super::error::DequantError;
use crate::gguf::dequant;
use crate::gguf::types::GgmlType;
use std::fmt;

/// How a tensor's elements are stored: a ggml type (GGUF; safetensors' plain types map onto the
/// ggml ones) or one of the safetensors types ggml lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageType {
    Ggml(GgmlType),
    /// float8 e4m3fn (no infinities), as in "fp8" Flux checkpoints.
    F8E4M3,
    /// float8 e5m2.
    F8E5M2,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl StorageType {
    pub fn name(self) -> &'static str {
        match self {
            StorageType::Ggml(t) => t.name(),
            StorageType::F8E4M3 => "F8_E4M3",
            StorageType::F8E5M2 => "F8_E5M2",
            StorageType::U8 => "U8",
            StorageType::U16 => "U16",
            StorageType::U32 => "U32",
            StorageType::U64 => "U64",
            StorageType::Bool => "BOOL",
        }
    }

    /// The ggml type, for tensors stored in one.
    pub fn ggml(self) -> Option<GgmlType> {
        match self {
            StorageType::Ggml(t) => Some(t),
            _ => None,
        }
    }

    /// Bytes per element of the non-ggml types.
    fn element_size(self) -> Option<usize> {
        Some(match self {
            StorageType::Ggml(_) => return None,
            StorageType::F8E4M3 | StorageType::F8E5M2 | StorageType::U8 | StorageType::Bool => 1,
            StorageType::U16 => 2,
            StorageType::U32 => 4,
            StorageType::U64 => 8,
        })
    }

    /// Bytes taken by `n_elements` of this type (`None`: not whole blocks, or overflow).
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        match self {
            StorageType::Ggml(t) => t.bytes_for(n_elements),
            other => n_elements.checked_mul(other.element_size()? as u64),
        }
    }
}

impl fmt::Display for StorageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor's description: a typed view of `nbytes` bytes at `offset` in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: StorageType,
    /// PyTorch order (outermost first), with `comfy.gguf.orig_shape` applied.
    pub shape: Vec<u64>,
    /// GGUF dims as stored (innermost first); empty for safetensors.
    pub ggml_dims: Vec<u64>,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub nbytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Readers check that the product fits; a zero dimension anywhere makes it 0 even when
        // the other dimensions alone would overflow (found by fuzzing).
        if self.shape.contains(&0) {
            return 0;
        }
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// The byte range in the file.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset as usize..(self.offset + self.nbytes) as usize
    }
}

/// Dequantizes (or converts) `bytes` holding `n` elements of `dtype` into `out` (f32).
/// `tensor` names the tensor in errors.
pub fn to_f32(
    dtype: StorageType,
    bytes: &[u8],
    out: &mut [f32],
    tensor: &str,
) -> Result<(), DequantError> {
    let mismatch = || DequantError::SizeMismatch {
        tensor: tensor.to_string(),
        ty: dtype.name().to_string(),
        bytes: bytes.len(),
        elements: out.len(),
    };
    if dtype.bytes_for(out.len() as u64) != Some(bytes.len() as u64) {
        return Err(mismatch());
    }
    match dtype {
        StorageType::Ggml(t) => dequant::dequantize(t, bytes, out, tensor),
        StorageType::F8E4M3 => {
            out.iter_mut()
                .zip(bytes)
                .for_each(|(o, &b)| *o = f8_e4m3fn_to_f32(b));
            Ok(())
        }
        StorageType::F8E5M2 => {
            // e5m2 is the top byte of an f16.
            out.iter_mut()
                .zip(bytes)
                .for_each(|(o, &b)| *o = half::f16::from_bits(u16::from(b) << 8).to_f32());
            Ok(())
        }
        StorageType::U8 => {
            out.iter_mut()
                .zip(bytes)
                .for_each(|(o, &b)| *o = f32::from(b));
            Ok(())
        }
        StorageType::Bool => {
            out.iter_mut()
                .zip(bytes)
                .for_each(|(o, &b)| *o = if b != 0 { 1.0 } else { 0.0 });
            Ok(())
        }
        StorageType::U16 => {
            out.iter_mut()
                .zip(bytes.chunks_exact(2))
                .for_each(|(o, c)| *o = f32::from(u16::from_le_bytes([c[0], c[1]])));
            Ok(())
        }
        StorageType::U32 => {
            out.iter_mut()
                .zip(bytes.chunks_exact(4))
                .for_each(|(o, c)| *o = u32::from_le_bytes(c.try_into().expect("4 bytes")) as f32);
            Ok(())
        }
        StorageType::U64 => {
            out.iter_mut()
                .zip(bytes.chunks_exact(8))
                .for_each(|(o, c)| *o = u64::from_le_bytes(c.try_into().expect("8 bytes")) as f32);
            Ok(())
        }
    }
}

/// float8 e4m3fn: 4 exponent bits (bias 7), 3 mantissa bits, no infinities, NaN at S.1111.111.
pub fn f8_e4m3fn_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = (b >> 3) & 0x0F;
    let man = f32::from(b & 0x07);
    if exp == 0x0F && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man * (1.0 / 512.0) // 2^-6 * man/8
    } else {
        sign * (1.0 + man / 8.0) * f32::powi(2.0, i32::from(exp) - 7)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f8_e4m3fn_known_values() {
        assert_eq!(f8_e4m3fn_to_f32(0x00), 0.0);
        assert_eq!(f8_e4m3fn_to_f32(0x38), 1.0); // exp 7, man 0
        assert_eq!(f8_e4m3fn_to_f32(0x7E), 448.0); // the largest finite value
        assert_eq!(f8_e4m3fn_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(f8_e4m3fn_to_f32(0xB8), -1.0);
        assert!(f8_e4m3fn_to_f32(0x7F).is_nan());
    }

    #[test]
    fn size_mismatch_is_an_error_naming_the_tensor() {
        let mut out = [0f32; 3];
        let err = to_f32(StorageType::Ggml(GgmlType::F32), &[0u8; 8], &mut out, "w").unwrap_err();
        assert!(err.to_string().contains("\"w\""), "{err}");
    }
}
