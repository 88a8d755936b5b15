//! Flux-shaped GGUF files with random weights, for benchmarks (`weft bench synth-flux`) and tests:
//! BFL's tensor names and shapes, city96's type mix, written tensor by tensor so that a 12 GB
//! FLUX.1-dev-sized file needs memory for one tensor only.
//!
//! The type mix is city96's `tools/lcpp.patch` (ComfyUI-GGUF, llama.cpp b3600): 1-D tensors stay
//! F32; `img_in`, `time_in.in_layer`, `vector_in.in_layer`, `guidance_in.in_layer` and
//! `final_layer.linear` weights are F32; the rest of `txt_in`, `time_in`, `vector_in`,
//! `guidance_in` and `final_layer` are F16; every other matrix takes the file's type (Q8_0, or
//! Q4_K for Q4_K_S — the patch adds no Flux-specific bumps), and one whose rows are not whole
//! blocks of it falls back to F16 (the patch's "Force FP16 fallback").
//!
//! Values: matrices have std 1/sqrt(fan_in) (activations stay O(1) through the blocks), biases
//! std 0.1, norm scales 1 ± 0.1 — as tools/gen_flux_fixtures.py draws them. Draws are
//! approximately normal (the sum of four uniforms, bounded at ±2√3 σ), from SplitMix64 streams
//! seeded per tensor and chunk, so the file is the same whatever the thread count. F32/F16/Q8_0
//! tensors are those values stored or quantized with weft's (gguf-py-exact) quantizer. No Q4_K
//! quantizer exists, so Q4_K blocks are drawn directly; see [`random_q4_k_block`].
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use weft_engine::formats::DequantError;
use weft_engine::formats::gguf::{
    GgmlType, GgufStreamWriter, MetadataValue, StreamWriteError, TensorPlan, quant,
};
use weft_engine::weights::synthetic::SplitMix64;

/// Which widths and depths to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthShape {
    /// FLUX.1-dev: hidden 3072 (24 heads of 128), MLP 12288, 19 double + 38 single blocks,
    /// T5 context 4096, CLIP pooled 768, guidance embedding.
    Dev,
    /// The same structure, small: hidden 256 (8 heads of 32), MLP 512, 2 + 2 blocks, context 64,
    /// pooled 32. Rows of 256 and 512 keep Q4_K in the mix; `txt_in` (rows of 64) is F16 anyway.
    Tiny,
    /// Between the two, for memory tests on the CPU: hidden 1024 (8 heads of 128), MLP 4096,
    /// 2 double + 8 single blocks, context 256, pooled 64: 202 M parameters, 214 MB at Q8_0.
    Small,
}

/// The type of the block matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthQuant {
    Q8_0,
    Q4K,
}

impl std::str::FromStr for SynthShape {
    type Err = SynthError;
    fn from_str(s: &str) -> Result<Self, SynthError> {
        match s {
            "dev" => Ok(SynthShape::Dev),
            "tiny" => Ok(SynthShape::Tiny),
            "small" => Ok(SynthShape::Small),
            _ => Err(SynthError::Unknown {
                what: "shape",
                found: s.into(),
                expected: "dev, tiny, small",
            }),
        }
    }
}

impl std::str::FromStr for SynthQuant {
    type Err = SynthError;
    fn from_str(s: &str) -> Result<Self, SynthError> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(SynthQuant::Q8_0),
            "q4_k" | "q4_k_s" => Ok(SynthQuant::Q4K),
            _ => Err(SynthError::Unknown {
                what: "type",
                found: s.into(),
                expected: "q8_0, q4_k",
            }),
        }
    }
}

impl SynthQuant {
    fn ggml(self) -> GgmlType {
        match self {
            SynthQuant::Q8_0 => GgmlType::Q8_0,
            SynthQuant::Q4K => GgmlType::Q4_K,
        }
    }
}

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("unknown {what} {found:?} (expected one of: {expected})")]
    Unknown {
        what: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        error: StreamWriteError,
    },
    #[error("tensor {tensor:?}: {error}")]
    Quantize {
        tensor: String,
        #[source]
        error: DequantError,
    },
}

/// What [`write_synthetic_flux`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthFlux {
    pub file_bytes: u64,
    pub tensors: usize,
    pub parameters: u64,
    /// Tensors per ggml type name.
    pub tensors_by_type: BTreeMap<&'static str, usize>,
}

struct Dims {
    hidden: u64,
    mlp: u64,
    in_channels: u64,
    context: u64,
    vec: u64,
    depth: usize,
    depth_single: usize,
    head_dim: u64,
}

fn dims(shape: SynthShape) -> Dims {
    match shape {
        SynthShape::Dev => Dims {
            hidden: 3072,
            mlp: 12288,
            in_channels: 64,
            context: 4096,
            vec: 768,
            depth: 19,
            depth_single: 38,
            head_dim: 128,
        },
        SynthShape::Tiny => Dims {
            hidden: 256,
            mlp: 512,
            in_channels: 64,
            context: 64,
            vec: 32,
            depth: 2,
            depth_single: 2,
            head_dim: 32,
        },
        SynthShape::Small => Dims {
            hidden: 1024,
            mlp: 4096,
            in_channels: 64,
            context: 256,
            vec: 64,
            depth: 2,
            depth_single: 8,
            head_dim: 128,
        },
    }
}

/// BFL's Flux tensor names and PyTorch-order shapes (tools/gen_flux_fixtures.py `flux_shapes`,
/// with the guidance embedding), in that order.
pub fn flux_shapes(shape: SynthShape) -> Vec<(String, Vec<u64>)> {
    let d = dims(shape);
    let (h, m) = (d.hidden, d.mlp);
    let mut s = Vec::new();
    let lin = |s: &mut Vec<(String, Vec<u64>)>, name: &str, i: u64, o: u64| {
        s.push((format!("{name}.weight"), vec![o, i]));
        s.push((format!("{name}.bias"), vec![o]));
    };
    lin(&mut s, "img_in", d.in_channels, h);
    lin(&mut s, "txt_in", d.context, h);
    for (emb, i) in [("time_in", 256), ("vector_in", d.vec), ("guidance_in", 256)] {
        lin(&mut s, &format!("{emb}.in_layer"), i, h);
        lin(&mut s, &format!("{emb}.out_layer"), h, h);
    }
    for n in 0..d.depth {
        for stream in ["img", "txt"] {
            let p = format!("double_blocks.{n}.{stream}");
            lin(&mut s, &format!("{p}_mod.lin"), h, 6 * h);
            lin(&mut s, &format!("{p}_attn.qkv"), h, 3 * h);
            s.push((format!("{p}_attn.norm.query_norm.scale"), vec![d.head_dim]));
            s.push((format!("{p}_attn.norm.key_norm.scale"), vec![d.head_dim]));
            lin(&mut s, &format!("{p}_attn.proj"), h, h);
            lin(&mut s, &format!("{p}_mlp.0"), h, m);
            lin(&mut s, &format!("{p}_mlp.2"), m, h);
        }
    }
    for n in 0..d.depth_single {
        let p = format!("single_blocks.{n}");
        lin(&mut s, &format!("{p}.modulation.lin"), h, 3 * h);
        lin(&mut s, &format!("{p}.linear1"), h, 3 * h + m);
        lin(&mut s, &format!("{p}.linear2"), h + m, h);
        s.push((format!("{p}.norm.query_norm.scale"), vec![d.head_dim]));
        s.push((format!("{p}.norm.key_norm.scale"), vec![d.head_dim]));
    }
    lin(&mut s, "final_layer.adaLN_modulation.1", h, 2 * h);
    lin(&mut s, "final_layer.linear", h, d.in_channels);
    s
}

/// city96's type for tensor `name` of `shape` in a `quant` file (see the module docs).
pub fn city96_type(name: &str, shape: &[u64], quant: SynthQuant) -> GgmlType {
    const KEEP_F32: &[&str] = &[
        "img_in.",
        "time_in.in_layer.",
        "vector_in.in_layer.",
        "guidance_in.in_layer.",
        "final_layer.linear.",
    ];
    const KEEP_F16: &[&str] = &[
        "txt_in.",
        "time_in.",
        "vector_in.",
        "guidance_in.",
        "final_layer.",
    ];
    if shape.len() < 2 || KEEP_F32.iter().any(|k| name.contains(k)) {
        return GgmlType::F32;
    }
    if KEEP_F16.iter().any(|k| name.contains(k)) {
        return GgmlType::F16;
    }
    let ty = quant.ggml();
    match shape.last() {
        Some(row) if row % ty.block_size() as u64 == 0 => ty,
        _ => GgmlType::F16,
    }
}

/// The plans (names, types, shapes) of a synthetic Flux file.
pub fn flux_plans(shape: SynthShape, quant: SynthQuant) -> Vec<TensorPlan> {
    flux_shapes(shape)
        .into_iter()
        .map(|(name, shape)| TensorPlan {
            ty: city96_type(&name, &shape, quant),
            name,
            shape,
        })
        .collect()
}

/// Writes a synthetic Flux GGUF to `path` (through `path.partial`, renamed when complete).
/// `progress(done_bytes, total_bytes)` is called after the header and after every tensor.
pub fn write_synthetic_flux(
    path: &Path,
    shape: SynthShape,
    quant: SynthQuant,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SynthFlux, SynthError> {
    let plans = flux_plans(shape, quant);
    let shape_name = match shape {
        SynthShape::Dev => "dev",
        SynthShape::Tiny => "tiny",
        SynthShape::Small => "small",
    };
    let metadata = vec![
        (
            "general.architecture".to_string(),
            MetadataValue::String("flux".into()),
        ),
        (
            "general.name".to_string(),
            MetadataValue::String(format!(
                "synthetic Flux {shape_name}, {} blocks, random weights (seed {seed})",
                quant.ggml().name()
            )),
        ),
    ];
    let mut tensors_by_type = BTreeMap::new();
    let mut parameters = 0u64;
    for p in &plans {
        *tensors_by_type.entry(p.ty.name()).or_insert(0) += 1;
        parameters += p.shape.iter().product::<u64>();
    }
    let partial = path.with_extension("gguf.partial");
    let io_err = |error| SynthError::Io {
        path: partial.clone(),
        error,
    };
    let write_err = |error| SynthError::Write {
        path: partial.clone(),
        error,
    };
    let written = (|| {
        let file = std::fs::File::create(&partial).map_err(io_err)?;
        let out = std::io::BufWriter::with_capacity(8 << 20, file);
        let mut writer =
            GgufStreamWriter::begin(out, 32, &metadata, plans.clone()).map_err(write_err)?;
        let total = writer.total_bytes();
        progress(writer.bytes_written(), total);
        for (index, plan) in plans.iter().enumerate() {
            let data = random_tensor(plan, tensor_seed(seed, index))?;
            writer.write_tensor(&data).map_err(write_err)?;
            progress(writer.bytes_written(), total);
        }
        let out = writer.finish().map_err(write_err)?;
        let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.sync_all().map_err(io_err)?;
        Ok(total)
    })();
    // A failed write leaves no half-written file behind.
    let total = match written {
        Ok(total) => total,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, path).map_err(|error| SynthError::Io {
        path: path.to_owned(),
        error,
    })?;
    Ok(SynthFlux {
        file_bytes: total,
        tensors: plans.len(),
        parameters,
        tensors_by_type,
    })
}

fn tensor_seed(seed: u64, index: usize) -> u64 {
    SplitMix64(seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407)).next()
}

/// Rows drawn per parallel chunk (chunks are seeded by their index: same file on any core count).
const CHUNK_ELEMENTS: u64 = 1 << 20;

/// The std a tensor's values are drawn with, and their mean.
fn value_scale(plan: &TensorPlan) -> (f32, f32) {
    match plan.shape.as_slice() {
        [_] if plan.name.ends_with(".scale") => (0.1, 1.0),
        [_] => (0.1, 0.0),
        [_, fan_in, ..] => (1.0 / (*fan_in as f32).sqrt(), 0.0),
        _ => (0.1, 0.0),
    }
}

fn random_tensor(plan: &TensorPlan, seed: u64) -> Result<Vec<u8>, SynthError> {
    let row = plan.shape.last().copied().unwrap_or(1).max(1);
    let n: u64 = plan.shape.iter().product();
    let rows = n / row;
    let rows_per_chunk = (CHUNK_ELEMENTS / row).max(1);
    let (std, mean) = value_scale(plan);
    let chunks: Vec<Result<Vec<u8>, DequantError>> = (0..rows.div_ceil(rows_per_chunk))
        .into_par_iter()
        .map(|chunk| {
            let first = chunk * rows_per_chunk;
            let count = rows_per_chunk.min(rows - first);
            let mut rng = SplitMix64(tensor_seed(seed, chunk as usize));
            let elements = (count * row) as usize;
            if plan.ty == GgmlType::Q4_K {
                let blocks = elements / GgmlType::Q4_K.block_size();
                let mut out = Vec::with_capacity(blocks * GgmlType::Q4_K.type_size());
                for _ in 0..blocks {
                    out.extend_from_slice(&random_q4_k_block(std, &mut rng));
                }
                return Ok(out);
            }
            let values: Vec<f32> = (0..elements)
                .map(|_| mean + std * approx_normal(&mut rng))
                .collect();
            quant::quantize(plan.ty, &values, row as usize)
        })
        .collect();
    let mut data = Vec::with_capacity(plan.nbytes().unwrap_or(0) as usize);
    for chunk in chunks {
        data.extend_from_slice(&chunk.map_err(|error| SynthError::Quantize {
            tensor: plan.name.clone(),
            error,
        })?);
    }
    Ok(data)
}

/// Irwin–Hall with four uniforms (16 bits each, from one draw): mean 0, variance 1.
fn approx_normal(rng: &mut SplitMix64) -> f32 {
    let r = rng.next();
    let sum: u32 = (0..4).map(|i| ((r >> (16 * i)) & 0xFFFF) as u32).sum();
    // Each uniform u in [0, 1) has variance 1/12; four sum to variance 1/3.
    (sum as f32 / 65536.0 - 2.0) * 3f32.sqrt()
}

/// One random Q4_K block (ggml's `block_q4_K`: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit
/// scales and mins for 8 sub-blocks of 32, 128 bytes of 4-bit quants) whose dequantized values
/// `d·sc·q − dmin·m` have mean ≈ 0 and std ≈ `std`:
///
/// - quants `q` uniform in 0..=15 (mean 7.5, variance 255/12 = 21.25);
/// - each sub-block's scale `sc` uniform in 4..=8, its min `m = round(7.5·sc)` (≤ 60, fits 6
///   bits) with `dmin = d`, so a sub-block's mean is `d·(7.5·sc − m)`, at most `d/2`, against a
///   std of `d·sc·4.61 ≥ 18·d`;
/// - `d = std / sqrt(21.25·E[sc²])` with `E[sc²] = 38`, i.e. `std / 28.4`: a normal f16 for
///   every Flux dev fan-in (d ≥ 2.8e-4 for fan-in 15360).
pub fn random_q4_k_block(std: f32, rng: &mut SplitMix64) -> [u8; 144] {
    const MEAN_SC_SQUARED: f32 = 38.0; // (16 + 25 + 36 + 49 + 64) / 5
    let d = half::f16::from_f32(std / (21.25 * MEAN_SC_SQUARED).sqrt());
    let mut block = [0u8; 144];
    block[0..2].copy_from_slice(&d.to_le_bytes());
    block[2..4].copy_from_slice(&d.to_le_bytes());
    let r = rng.next();
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        sc[j] = 4 + ((r >> (8 * j)) & 0xFF) as u8 % 5;
        m[j] = (7.5 * f32::from(sc[j])).round() as u8;
    }
    // ggml's get_scale_min_k4, inverted.
    let scales = &mut block[4..16];
    for j in 0..4 {
        scales[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        scales[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        scales[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    rng.fill(&mut block[16..]);
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_engine::formats::StorageType;
    use weft_engine::formats::tensor::to_f32;

    #[test]
    fn q4_k_blocks_dequantize_to_the_asked_std() {
        let mut rng = SplitMix64(3);
        let std = 1.0 / (3072f32).sqrt();
        let bytes: Vec<u8> = (0..512)
            .flat_map(|_| random_q4_k_block(std, &mut rng))
            .collect();
        let mut values = vec![0f32; 512 * 256];
        to_f32(StorageType::Ggml(GgmlType::Q4_K), &bytes, &mut values, "q").unwrap();
        let n = values.len() as f32;
        let mean = values.iter().sum::<f32>() / n;
        let got = (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
        assert!(mean.abs() < 0.02 * std, "mean {mean}");
        assert!((got / std - 1.0).abs() < 0.05, "std {got}, asked {std}");
    }

    #[test]
    fn the_type_mix_is_city96s() {
        let q4 = SynthQuant::Q4K;
        assert_eq!(city96_type("img_in.weight", &[3072, 64], q4), GgmlType::F32);
        assert_eq!(
            city96_type("txt_in.weight", &[3072, 4096], q4),
            GgmlType::F16
        );
        assert_eq!(
            city96_type("time_in.out_layer.weight", &[3072, 3072], q4),
            GgmlType::F16
        );
        assert_eq!(
            city96_type("double_blocks.0.img_attn.qkv.weight", &[9216, 3072], q4),
            GgmlType::Q4_K
        );
        assert_eq!(
            city96_type("double_blocks.0.img_attn.qkv.bias", &[9216], q4),
            GgmlType::F32
        );
        // Rows that are not whole Q4_K blocks fall back to F16.
        assert_eq!(
            city96_type("double_blocks.0.img_attn.qkv.weight", &[192, 64], q4),
            GgmlType::F16
        );
        assert_eq!(
            city96_type(
                "single_blocks.3.linear2.weight",
                &[3072, 15360],
                SynthQuant::Q8_0
            ),
            GgmlType::Q8_0
        );
    }

    #[test]
    fn the_dev_layout_has_flux_dev_s_size() {
        let plans = flux_plans(SynthShape::Dev, SynthQuant::Q8_0);
        let params: u64 = plans.iter().map(|p| p.shape.iter().product::<u64>()).sum();
        // FLUX.1-dev: 11.9 B parameters.
        assert_eq!(params, 11_901_408_320);
        assert_eq!(plans.len(), 780);
    }

    #[test]
    fn the_small_layout_is_over_200_mb_at_q8_0() {
        let plans = flux_plans(SynthShape::Small, SynthQuant::Q8_0);
        let params: u64 = plans.iter().map(|p| p.shape.iter().product::<u64>()).sum();
        let bytes: u64 = plans.iter().map(|p| p.nbytes().unwrap()).sum();
        assert!((200_000_000..210_000_000).contains(&params), "{params}");
        assert!(bytes > 200_000_000, "{bytes}");
    }
}
