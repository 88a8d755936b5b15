//! Synthetic model files for tests and benchmarks: GGUF files of any size with city96's mix of
//! tensor types (Q8_0/Q4_0/Q4_K matrices, F16/BF16 excluded layers, F32 biases and norms) and
//! random finite values, written fast: blocks are generated as raw bytes, never quantized.
use weft_formats::FormatError;
use weft_formats::gguf::{GgmlType, GgufWriter, MetadataValue};

/// What [`write_mixed_gguf`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticModel {
    /// The file's size.
    pub file_bytes: u64,
    /// Tensors in it.
    pub tensors: usize,
    /// Transformer-like blocks in it (seven tensors each).
    pub blocks: usize,
}

/// The width of every block's matrices; a multiple of 256 so that K-quants fit.
const WIDTH: u64 = 1024;

/// One block's tensors: (name suffix, type, PyTorch-order shape).
fn block_layout() -> [(&'static str, GgmlType, Vec<u64>); 7] {
    let w = WIDTH;
    [
        ("attn.qkv.weight", GgmlType::Q8_0, vec![3 * w, w]),
        ("attn.qkv.bias", GgmlType::F32, vec![3 * w]),
        ("attn.proj.weight", GgmlType::F16, vec![w, w]),
        ("attn.out.weight", GgmlType::Q4_K, vec![w, w]),
        ("mlp.0.weight", GgmlType::Q4_0, vec![4 * w, w]),
        ("mlp.2.weight", GgmlType::Q8_0, vec![w, 4 * w]),
        ("modulation.weight", GgmlType::BF16, vec![w / 2, w]),
    ]
}

fn block_bytes() -> u64 {
    block_layout()
        .iter()
        .map(|(_, ty, shape)| ty.bytes_for(shape.iter().product()).unwrap_or(0))
        .sum()
}

/// Writes a GGUF of about `target_bytes` (at least one block, ~13 MiB) to `path`, with values
/// drawn from `seed`. The same arguments always give the same file.
pub fn write_mixed_gguf(
    path: impl AsRef<std::path::Path>,
    target_bytes: u64,
    seed: u64,
) -> Result<SyntheticModel, FormatError> {
    let blocks = (target_bytes.div_ceil(block_bytes())).max(1) as usize;
    let mut writer = GgufWriter::new();
    writer.add_metadata(
        "general.architecture",
        MetadataValue::String("weft-synthetic".into()),
    );
    writer.add_metadata(
        "general.name",
        MetadataValue::String(format!(
            "synthetic mixed-type model, {blocks} blocks, seed {seed}"
        )),
    );
    let mut rng = SplitMix64(seed);
    let mut tensors = 0;
    for block in 0..blocks {
        for (suffix, ty, shape) in block_layout() {
            let n: u64 = shape.iter().product();
            let data = random_tensor(ty, n, &mut rng);
            let name = format!("blocks.{block}.{suffix}");
            writer
                .add_raw_tensor(name, ty, &shape, data)
                .map_err(|error| FormatError::Dequant {
                    path: path.as_ref().to_owned(),
                    error,
                })?;
            tensors += 1;
        }
    }
    writer.write_file(&path)?;
    let file_bytes = std::fs::metadata(path.as_ref())
        .map(|m| m.len())
        .map_err(|error| FormatError::Io {
            path: path.as_ref().to_owned(),
            error,
        })?;
    Ok(SyntheticModel {
        file_bytes,
        tensors,
        blocks,
    })
}

/// Writes a kohya-style LoRA for a model [`write_mixed_gguf`] made with `blocks` blocks: rank
/// `rank` F16 factors (`lora_unet_blocks_N_…` names, `alpha = rank`) for every matrix. Returns the
/// number of modules.
pub fn write_lora(
    path: impl AsRef<std::path::Path>,
    blocks: usize,
    rank: usize,
    seed: u64,
) -> Result<usize, FormatError> {
    let path = path.as_ref();
    let mut rng = SplitMix64(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut half_values = |n: usize| -> Vec<u8> {
        let mut bytes = vec![0u8; 2 * n];
        rng.fill(&mut bytes);
        bytes.chunks_exact_mut(2).for_each(|c| {
            let r = u16::from_le_bytes([c[0], c[1]]);
            // Magnitudes in [2^-12, 2^-8): a LoRA update is small against the weight.
            let bits = (r & 0x83FF) | ((3 + (r >> 10) % 4) << 10);
            c.copy_from_slice(&bits.to_le_bytes());
        });
        bytes
    };
    for block in 0..blocks {
        for (suffix, _, shape) in block_layout() {
            let (&[out, cols], Some(base)) = (shape.as_slice(), suffix.strip_suffix(".weight"))
            else {
                continue;
            };
            let (out, cols) = (out as usize, cols as usize);
            let name = format!("lora_unet_blocks_{block}_{}", base.replace('.', "_"));
            tensors.push((
                format!("{name}.lora_up.weight"),
                vec![out, rank],
                half_values(out * rank),
            ));
            tensors.push((
                format!("{name}.lora_down.weight"),
                vec![rank, cols],
                half_values(rank * cols),
            ));
            tensors.push((
                format!("{name}.alpha"),
                vec![],
                half::f16::from_f32(rank as f32).to_le_bytes().to_vec(),
            ));
        }
    }
    let views = tensors.iter().map(|(name, shape, data)| {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape.clone(), data)
            .map(|view| (name.clone(), view))
    });
    let views: Vec<_> = views
        .collect::<Result<_, _>>()
        .map_err(|e| FormatError::Safetensors {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let modules = views.len() / 3;
    let bytes = safetensors::serialize(views, None).map_err(|e| FormatError::Safetensors {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    std::fs::write(path, bytes).map_err(|error| FormatError::Io {
        path: path.to_owned(),
        error,
    })?;
    Ok(modules)
}

/// Random bytes of `n` elements of `ty`, every value finite: exponents are kept small and every
/// block's scales are set to small finite f16 values.
fn random_tensor(ty: GgmlType, n: u64, rng: &mut SplitMix64) -> Vec<u8> {
    let len = ty.bytes_for(n).unwrap_or(0) as usize;
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    match ty {
        GgmlType::F32 => data.chunks_exact_mut(4).for_each(|c| {
            let r = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            // Exponent 117..=127: magnitudes in [2^-10, 2).
            let bits = (r & 0x807F_FFFF) | ((117 + (r >> 23) % 11) << 23);
            c.copy_from_slice(&bits.to_le_bytes());
        }),
        GgmlType::F16 => data.chunks_exact_mut(2).for_each(|c| {
            let r = u16::from_le_bytes([c[0], c[1]]);
            let bits = (r & 0x83FF) | ((5 + (r >> 10) % 11) << 10);
            c.copy_from_slice(&bits.to_le_bytes());
        }),
        GgmlType::BF16 => data.chunks_exact_mut(2).for_each(|c| {
            let r = u16::from_le_bytes([c[0], c[1]]);
            let bits = (r & 0x807F) | ((117 + (r >> 7) % 11) << 7);
            c.copy_from_slice(&bits.to_le_bytes());
        }),
        // Block layouts (ggml-common.h): Q8_0 and Q4_0 start with an f16 scale `d`; Q4_K with
        // `d` and `dmin`.
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_K => {
            let scales = if ty == GgmlType::Q4_K { 2 } else { 1 };
            data.chunks_exact_mut(ty.type_size()).for_each(|block| {
                for s in 0..scales {
                    let r = u16::from_le_bytes([block[2 * s], block[2 * s + 1]]);
                    // Exponent 5..=8: scales in [2^-10, 2^-6].
                    let bits = (r & 0x03FF) | ((5 + (r >> 10) % 4) << 10);
                    block[2 * s..2 * s + 2].copy_from_slice(&bits.to_le_bytes());
                }
            })
        }
        _ => {}
    }
    data
}

/// SplitMix64: fast, seedable, good enough for filler weights.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_formats::ModelFile;

    #[test]
    fn a_synthetic_file_parses_and_every_value_is_finite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.gguf");
        let made = write_mixed_gguf(&path, 1, 7).unwrap();
        assert_eq!((made.blocks, made.tensors), (1, 7));
        let file = ModelFile::open(&path).unwrap();
        assert_eq!(file.tensors().len(), 7);
        for t in file.tensors() {
            let values = file.dequantize(t).unwrap();
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{} has a non-finite value",
                t.name
            );
            assert!(values.iter().any(|&v| v != 0.0), "{} is all zeros", t.name);
        }
        // A LoRA for it patches every matrix.
        let lora = dir.path().join("s.safetensors");
        assert_eq!(write_lora(&lora, 1, 4, 3).unwrap(), 6);
        let lora = ModelFile::open(&lora).unwrap();
        assert!(
            lora.tensors().iter().all(|t| lora
                .dequantize(t)
                .unwrap()
                .iter()
                .all(|v| v.is_finite()))
        );
        // Same arguments, same bytes.
        let again = dir.path().join("t.gguf");
        write_mixed_gguf(&again, 1, 7).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&again).unwrap()
        );
    }
}
