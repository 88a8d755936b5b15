//! Quantization of f32 rows to ggml blocks, bit-exact with gguf-py 0.19.0's `quantize`.
//!
//! Used by the writer to make small model files for tests and tools; the reference
//! quantizers of ggml (and gguf-py's numpy ports) define the bytes.
use super::types::GgmlType;
use crate::error::DequantError;
use half::f16;

/// Types [`quantize`] can produce.
pub const QUANTIZABLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// Quantizes `data` (rows of `row_len` elements) to `ty`.
pub fn quantize(ty: GgmlType, data: &[f32], row_len: usize) -> Result<Vec<u8>, DequantError> {
    let err = |why: String| DequantError::Quantize { ty, why };
    if row_len == 0 || data.len() % row_len != 0 {
        return Err(err(format!(
            "{} elements are not whole rows of {row_len}",
            data.len()
        )));
    }
    if row_len % ty.block_size() != 0 {
        return Err(err(format!(
            "row length {row_len} is not a multiple of the block size {}",
            ty.block_size()
        )));
    }
    let mut out = Vec::with_capacity(data.len() / ty.block_size() * ty.type_size());
    match ty {
        GgmlType::F32 => data
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgmlType::F16 => data
            .iter()
            .for_each(|x| out.extend_from_slice(&f16::from_f32(*x).to_le_bytes())),
        GgmlType::BF16 => data
            .iter()
            .for_each(|x| out.extend_from_slice(&f32_to_bf16_bits(*x).to_le_bytes())),
        GgmlType::Q4_0 => data.chunks_exact(32).for_each(|b| q4_0(b, &mut out)),
        GgmlType::Q4_1 => data.chunks_exact(32).for_each(|b| q4_1(b, &mut out)),
        GgmlType::Q5_0 => data.chunks_exact(32).for_each(|b| q5_0(b, &mut out)),
        GgmlType::Q5_1 => data.chunks_exact(32).for_each(|b| q5_1(b, &mut out)),
        GgmlType::Q8_0 => data.chunks_exact(32).for_each(|b| q8_0(b, &mut out)),
        _ => {
            return Err(err(format!(
                "not implemented (quantizable: {})",
                names(QUANTIZABLE)
            )));
        }
    }
    Ok(out)
}

fn names(types: &[GgmlType]) -> String {
    types
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// ggml's fp32→bf16: NaN made quiet, otherwise round to nearest even.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7FFF_FFFF > 0x7F80_0000 {
        return (n >> 16) as u16 | 0x40;
    }
    ((u64::from(n) + 0x7FFF + u64::from((n >> 16) & 1)) >> 16) as u16
}

/// `1/d`, or 0 where `d` is 0 (numpy's `np.where(d == 0, 0, 1 / d)`).
fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// Round half away from zero, as gguf-py's `np_roundf`.
fn roundf(n: f32) -> f32 {
    let a = n.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    if n > 0.0 {
        b
    } else if n < 0.0 {
        -b
    } else {
        0.0 * b
    }
}

/// The element of largest magnitude, keeping its sign (first one on ties, like argmax).
fn signed_absmax(block: &[f32]) -> f32 {
    let mut best = block[0];
    for &x in &block[1..] {
        if x.abs() > best.abs() {
            best = x;
        }
    }
    best
}

/// numpy's float→uint8 cast followed by `clip(0, hi)`; `trunc` already applied by the caller.
fn to_u8_clipped(x: f32, hi: u8) -> u8 {
    (x as i32 as u8).min(hi)
}

fn q8_0(block: &[f32], out: &mut Vec<u8>) {
    let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend(block.iter().map(|&x| roundf(x * id) as i8 as u8));
}

fn q4_0(block: &[f32], out: &mut Vec<u8>) {
    let d = signed_absmax(block) / -8.0;
    let id = inverse(d);
    let q: Vec<u8> = block
        .iter()
        .map(|&x| to_u8_clipped((x * id + 8.5).trunc(), 15))
        .collect();
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
}

fn q4_1(block: &[f32], out: &mut Vec<u8>) {
    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    let q: Vec<u8> = block
        .iter()
        .map(|&x| to_u8_clipped(((x - min) * id + 0.5).trunc(), 15))
        .collect();
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
}

fn push_q5(q: &[u8], out: &mut Vec<u8>) {
    let qh = (0..32).fold(0u32, |acc, j| acc | (u32::from(q[j] >> 4) << j));
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend((0..16).map(|j| (q[j] & 0x0F) | (q[j + 16] << 4)));
}

fn q5_0(block: &[f32], out: &mut Vec<u8>) {
    let d = signed_absmax(block) / -16.0;
    let id = inverse(d);
    let q: Vec<u8> = block
        .iter()
        .map(|&x| to_u8_clipped((x * id + 16.5).trunc(), 31))
        .collect();
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    push_q5(&q, out);
}

fn q5_1(block: &[f32], out: &mut Vec<u8>) {
    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    let q: Vec<u8> = block
        .iter()
        .map(|&x| to_u8_clipped(((x - min) * id + 0.5).trunc(), 31))
        .collect();
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    push_q5(&q, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundf_rounds_half_away_from_zero() {
        assert_eq!(roundf(2.5), 3.0);
        assert_eq!(roundf(-2.5), -3.0);
        assert_eq!(roundf(2.4999), 2.0);
        assert_eq!(roundf(-0.5), -1.0);
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3F80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80); // tie, even stays
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82); // tie, odd rounds up
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7F80_0001)), 0x7FC0);
    }

    #[test]
    fn rejects_partial_blocks() {
        assert!(quantize(GgmlType::Q8_0, &[0.0; 48], 48).is_err());
        assert!(quantize(GgmlType::Q4_K, &[0.0; 256], 256).is_err());
    }
}
