//! CPU dequantization of ggml blocks to f32, bit-exact with gguf-py 0.19.0.
//!
//! Each block kernel performs the same f32 operations in the same order as gguf-py's numpy code
//! (ggml's reference C does too), so results match to the bit. Work is block-wise with no
//! per-element allocation, and large tensors are split across threads with rayon.
use super::types::{GgmlType, QK_K};
use crate::error::DequantError;
use half::f16;
use rayon::prelude::*;

/// The non-linear 4-bit codebook of IQ4_NL and IQ4_XS.
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];
/// e2m1 (fp4) values, doubled, indexed by the 4-bit code (MXFP4).
const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Tensors with more elements than this are dequantized on several threads.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 18;
/// Elements per parallel work item (a multiple of every block size).
const CHUNK_ELEMENTS: usize = 1 << 16;

type BlockFn = fn(&[u8], &mut [f32]);

/// The types this module can dequantize.
pub fn is_supported(ty: GgmlType) -> bool {
    ty.is_plain() || block_fn(ty).is_some()
}

/// Names of the supported types, for error messages.
pub fn supported_names() -> String {
    GgmlType::ALL
        .iter()
        .filter(|t| is_supported(**t))
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Dequantizes `bytes` (whole blocks of `ty`) into `out`, which must hold exactly the number of
/// elements the bytes encode. `tensor` names the tensor in errors.
pub fn dequantize(
    ty: GgmlType,
    bytes: &[u8],
    out: &mut [f32],
    tensor: &str,
) -> Result<(), DequantError> {
    if ty.bytes_for(out.len() as u64) != Some(bytes.len() as u64) {
        return Err(DequantError::SizeMismatch {
            tensor: tensor.to_string(),
            ty: ty.name().to_string(),
            bytes: bytes.len(),
            elements: out.len(),
        });
    }
    let kernel: BlockFn = match ty {
        GgmlType::F32 => plain_f32,
        GgmlType::F16 => plain_f16,
        GgmlType::BF16 => plain_bf16,
        GgmlType::F64 => plain_f64,
        GgmlType::I8 => |b, o| {
            o.iter_mut()
                .zip(b)
                .for_each(|(o, &x)| *o = f32::from(x as i8))
        },
        GgmlType::I16 => |b, o| {
            o.iter_mut()
                .zip(b.chunks_exact(2))
                .for_each(|(o, c)| *o = f32::from(i16::from_le_bytes([c[0], c[1]])))
        },
        GgmlType::I32 => |b, o| {
            o.iter_mut()
                .zip(b.chunks_exact(4))
                .for_each(|(o, c)| *o = i32::from_le_bytes(c.try_into().expect("4")) as f32)
        },
        GgmlType::I64 => |b, o| {
            o.iter_mut()
                .zip(b.chunks_exact(8))
                .for_each(|(o, c)| *o = i64::from_le_bytes(c.try_into().expect("8")) as f32)
        },
        _ => block_fn(ty).ok_or_else(|| DequantError::Unsupported {
            tensor: tensor.to_string(),
            ty: ty.name().to_string(),
            supported: supported_names(),
        })?,
    };
    let (block, size) = (ty.block_size(), ty.type_size());
    let run = |bytes: &[u8], out: &mut [f32]| {
        if block == 1 {
            kernel(bytes, out); // plain types convert a whole run at once
        } else {
            bytes
                .chunks_exact(size)
                .zip(out.chunks_exact_mut(block))
                .for_each(|(b, o)| kernel(b, o));
        }
    };
    if out.len() >= PARALLEL_MIN_ELEMENTS {
        let bytes_per_chunk = CHUNK_ELEMENTS / block * size;
        bytes
            .par_chunks(bytes_per_chunk)
            .zip(out.par_chunks_mut(CHUNK_ELEMENTS))
            .for_each(|(b, o)| run(b, o));
    } else {
        run(bytes, out);
    }
    Ok(())
}

fn block_fn(ty: GgmlType) -> Option<BlockFn> {
    Some(match ty {
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q8_1 => q8_1,
        GgmlType::Q2_K => q2_k,
        GgmlType::Q3_K => q3_k,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        GgmlType::Q8_K => q8_k,
        GgmlType::IQ4_NL => iq4_nl,
        GgmlType::IQ4_XS => iq4_xs,
        GgmlType::TQ1_0 => tq1_0,
        GgmlType::TQ2_0 => tq2_0,
        GgmlType::MXFP4 => mxfp4,
        // The IQ1/IQ2/IQ3 types index large lattice tables, NVFP4 and Q1_0 are new and rare:
        // they are rejected with an error until a model needs them.
        _ => return None,
    })
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

fn plain_f32(b: &[u8], o: &mut [f32]) {
    o.iter_mut()
        .zip(b.chunks_exact(4))
        .for_each(|(o, c)| *o = f32::from_le_bytes(c.try_into().expect("4")));
}

fn plain_f16(b: &[u8], o: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    match bytemuck::try_cast_slice::<u8, f16>(b) {
        Ok(halves) => halves.convert_to_f32_slice(o),
        Err(_) => o
            .iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = f16_at(b, 2 * i)),
    }
}

fn plain_bf16(b: &[u8], o: &mut [f32]) {
    o.iter_mut()
        .zip(b.chunks_exact(2))
        .for_each(|(o, c)| *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16));
}

fn plain_f64(b: &[u8], o: &mut [f32]) {
    o.iter_mut()
        .zip(b.chunks_exact(8))
        .for_each(|(o, c)| *o = f64::from_le_bytes(c.try_into().expect("8")) as f32);
}

// Layout: d (f16), 16 bytes of nibbles; element j in the low nibble of byte j, j+16 in the high.
fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = d * f32::from((q & 0x0F) as i8 - 8);
        o[j + 16] = d * f32::from((q >> 4) as i8 - 8);
    }
}

fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let q = b[4 + j];
        o[j] = d * f32::from(q & 0x0F) + m;
        o[j + 16] = d * f32::from(q >> 4) + m;
    }
}

// Layout: d, 32 high bits (u32 LE), 16 bytes of low nibbles.
fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let lo = (q & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        o[j] = d * f32::from(lo as i8 - 16);
        o[j + 16] = d * f32::from(hi as i8 - 16);
    }
}

fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let lo = (q & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        o[j] = d * f32::from(lo) + m;
        o[j + 16] = d * f32::from(hi) + m;
    }
}

fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in o.iter_mut().zip(&b[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

// Layout: d (f16), s (f16, the sum; unused here), 32 int8.
fn q8_1(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in o.iter_mut().zip(&b[4..36]) {
        *o = f32::from(q as i8) * d;
    }
}

// Layout: d (f32), 256 int8, 16 i16 block sums (unused here).
fn q8_k(b: &[u8], o: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (o, &q) in o.iter_mut().zip(&b[4..4 + QK_K]) {
        *o = d * f32::from(q as i8);
    }
}

// Layout: 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit quants, d, dmin.
// Quant element e = g*128 + s*32 + l sits in bits 2s of byte g*32 + l; sub-block e/16 owns a scale.
fn q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for g in 0..2 {
        let q = &qs[g * 32..g * 32 + 32];
        for s in 0..4 {
            for half in 0..2 {
                let e0 = g * 128 + s * 32 + half * 16;
                let sc = scales[e0 / 16];
                let dl = d * f32::from(sc & 0x0F);
                let ml = dmin * f32::from(sc >> 4);
                for l in 0..16 {
                    let v = f32::from((q[half * 16 + l] >> (2 * s)) & 3);
                    o[e0 + l] = dl * v - ml;
                }
            }
        }
    }
}

// Layout: 32 bytes high-bit mask, 64 bytes of 2-bit quants, 12 bytes of packed 6-bit scales, d.
fn q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let mut dl = [0f32; 16];
    for (i, dl) in dl.iter_mut().enumerate() {
        let low = (sc[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (sc[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        *dl = d * f32::from((low | (high << 4)) as i8 - 32);
    }
    for g in 0..2 {
        for s in 0..4 {
            let bit = g * 4 + s; // hmask bit of this 32-element run
            for half in 0..2 {
                let e0 = g * 128 + s * 32 + half * 16;
                let scale = dl[e0 / 16];
                for l in half * 16..half * 16 + 16 {
                    let ql = ((qs[g * 32 + l] >> (2 * s)) & 3) as i8;
                    let qh = ((hmask[l] >> bit) & 1) ^ 1; // the offset applies when the bit is clear
                    o[g * 128 + s * 32 + l] = scale * f32::from(ql - ((qh << 2) as i8));
                }
            }
        }
    }
}

/// The 8 (scale, min) pairs of Q4_K/Q5_K, packed at 6 bits in 12 bytes.
#[inline]
fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

// Layout: d, dmin, 12 bytes of scales/mins, 128 bytes of nibbles. Sub-block j = 2g + h holds the
// h-th nibble of bytes g*32..g*32+32.
fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scale_min(&b[4..16]);
    let qs = &b[16..144];
    for j in 0..8 {
        let dj = d * f32::from(sc[j]);
        let mj = dmin * f32::from(mn[j]);
        let (g, h) = (j / 2, j % 2);
        for l in 0..32 {
            let q = f32::from((qs[g * 32 + l] >> (4 * h)) & 0x0F);
            o[j * 32 + l] = dj * q - mj;
        }
    }
}

// As Q4_K plus 32 bytes of fifth bits: bit j of byte l is element l of sub-block j.
fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scale_min(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for j in 0..8 {
        let dj = d * f32::from(sc[j]);
        let mj = dmin * f32::from(mn[j]);
        let (g, h) = (j / 2, j % 2);
        for l in 0..32 {
            let q = ((qs[g * 32 + l] >> (4 * h)) & 0x0F) | (((qh[l] >> j) & 1) << 4);
            o[j * 32 + l] = dj * f32::from(q) - mj;
        }
    }
}

// Layout: 128 bytes low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, d.
fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for g in 0..2 {
        let (ql, qh) = (&ql[g * 64..g * 64 + 64], &qh[g * 32..g * 32 + 32]);
        for s in 0..4 {
            // Run s of 32 elements: low nibbles from ql[(s%2)*32..] (shift 4 for s >= 2), high bits 2s.
            let (lo_base, lo_shift) = ((s % 2) * 32, 4 * (s / 2));
            for half in 0..2 {
                let e0 = g * 128 + s * 32 + half * 16;
                let dl = d * f32::from(scales[e0 / 16] as i8);
                for l in half * 16..half * 16 + 16 {
                    let low = (ql[lo_base + l] >> lo_shift) & 0x0F;
                    let high = (qh[l] >> (2 * s)) & 0x03;
                    let q = (low | (high << 4)) as i8 - 32;
                    o[g * 128 + s * 32 + l] = dl * f32::from(q);
                }
            }
        }
    }
}

fn iq4_nl(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0x0F)]);
        o[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
    }
}

// Layout: d, scales_h (u16: 2 high bits per sub-block), 4 bytes of low scale nibbles, 128 bytes
// of codebook indices (sub-block i: 16 bytes, low nibbles first).
fn iq4_xs(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for i in 0..8 {
        let low = (scales_l[i / 2] >> (4 * (i % 2))) & 0x0F;
        let high = ((scales_h >> (2 * i)) & 0x03) as u8;
        let dl = d * f32::from((low | (high << 4)) as i8 - 32);
        for p in 0..32 {
            let q = (qs[i * 16 + p % 16] >> (4 * (p / 16))) & 0x0F;
            o[i * 32 + p] = dl * f32::from(KVALUES_IQ4NL[usize::from(q)]);
        }
    }
}

// Ternary, 5 trits per byte in base 3 scaled to 0..=255: 32 bytes x5, 16 bytes x5, 4 bytes x4.
fn tq1_0(b: &[u8], o: &mut [f32]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let (qs, qh) = (&b[0..48], &b[48..52]);
    let d = f16_at(b, 52);
    let trit = |byte: u8, n: usize| -> f32 {
        let v = byte.wrapping_mul(POW3[n]);
        f32::from(((u16::from(v) * 3) >> 8) as i8 - 1)
    };
    let mut e = 0;
    for n in 0..5 {
        for &byte in &qs[0..32] {
            o[e] = d * trit(byte, n);
            e += 1;
        }
    }
    for n in 0..5 {
        for &byte in &qs[32..48] {
            o[e] = d * trit(byte, n);
            e += 1;
        }
    }
    for n in 0..4 {
        for &byte in qh {
            o[e] = d * trit(byte, n);
            e += 1;
        }
    }
}

fn tq2_0(b: &[u8], o: &mut [f32]) {
    let qs = &b[0..64];
    let d = f16_at(b, 64);
    for (e, o) in o.iter_mut().enumerate() {
        let (g, s, l) = (e / 128, (e / 32) % 4, e % 32);
        let q = ((qs[g * 32 + l] >> (2 * s)) & 3) as i8 - 1;
        *o = d * f32::from(q);
    }
}

/// Half of an e8m0 scale, as ggml computes it (the fp4 values are stored doubled).
fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

fn mxfp4(b: &[u8], o: &mut [f32]) {
    let d = e8m0_to_f32_half(b[0]);
    for l in 0..16 {
        let q = b[1 + l];
        o[l] = d * f32::from(KVALUES_MXFP4[usize::from(q & 0x0F)]);
        o[l + 16] = d * f32::from(KVALUES_MXFP4[usize::from(q >> 4)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_block_by_hand() {
        let mut block = vec![0u8; 34];
        block[0..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        block[2] = 4;
        block[3] = (-6i8) as u8;
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q8_0, &block, &mut out, "t").unwrap();
        assert_eq!(&out[..3], &[2.0, -3.0, 0.0]);
    }

    #[test]
    fn unsupported_type_names_type_and_tensor() {
        let bytes = vec![0u8; GgmlType::IQ2_XXS.type_size()];
        let mut out = vec![0f32; 256];
        let err = dequantize(GgmlType::IQ2_XXS, &bytes, &mut out, "blk.0.w")
            .unwrap_err()
            .to_string();
        assert!(err.contains("IQ2_XXS") && err.contains("blk.0.w"), "{err}");
    }

    #[test]
    fn parallel_split_matches_serial() {
        // Enough Q4_K blocks to take the rayon path; compare with block-by-block.
        let n_blocks = PARALLEL_MIN_ELEMENTS / QK_K + 3;
        let mut bytes = vec![0u8; n_blocks * 144];
        let mut state = 0x9E37_79B9u32;
        for (i, b) in bytes.iter_mut().enumerate() {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *b = (state >> 24) as u8;
            if i % 144 == 1 || i % 144 == 3 {
                *b &= 0x3B; // keep d and dmin finite
            }
        }
        let mut par = vec![0f32; n_blocks * QK_K];
        dequantize(GgmlType::Q4_K, &bytes, &mut par, "t").unwrap();
        let mut serial = vec![0f32; n_blocks * QK_K];
        for (b, o) in bytes.chunks_exact(144).zip(serial.chunks_exact_mut(QK_K)) {
            q4_k(b, o);
        }
        assert!(
            par.iter()
                .zip(&serial)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }
}
