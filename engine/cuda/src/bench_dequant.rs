//! `weft bench dequant-gpu`: checks the GPU dequantization kernels ([`super::dequant`]) bit for
//! bit against the CPU dequantizer and times them. For every supported type and output dtype:
//! random blocks (with finite f16 scales), the CPU's f32 values rounded with the `half` crate,
//! the GPU's output read back, mismatching bit patterns counted (the command fails unless there
//! are none), and the kernel timed with CUDA events (GB/s written and read).
use super::dequant_plan::{self, OutDType};
use crate::bench_support::cuda_index;
use anyhow::bail;
use clap::Args;
use serde::Serialize;
use weft_formats::gguf::GgmlType;

/// Elements per type when `--elements` is not given (64 Mi: 128 MiB of bf16 output).
pub const DEFAULT_ELEMENTS: usize = 1 << 26;

#[derive(Args, Debug)]
pub struct DequantGpuArgs {
    /// `cuda:N` (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Elements per tensor (rounded up to a whole number of 256-element blocks).
    #[arg(long, default_value_t = DEFAULT_ELEMENTS)]
    pub elements: usize,
    /// Only these ggml types (comma-separated, e.g. `q4_k,q8_0`); default: every supported one.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// Timed launches per measurement (after one warm-up launch).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Seed of the random blocks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

/// One (type, output dtype) measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DequantGpuRow {
    #[serde(rename = "type")]
    pub ty: String,
    pub out: String,
    pub elements: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    /// Outputs whose bit pattern differs from the CPU's value rounded by `half` (must be 0).
    pub mismatches: u64,
    /// The first mismatch: index, GPU bits, CPU bits.
    pub first_mismatch: Option<(u64, u32, u32)>,
    /// Kernel time per launch (CUDA events), milliseconds.
    pub ms: f64,
}

impl DequantGpuRow {
    pub fn out_gb_s(&self) -> f64 {
        self.out_bytes as f64 / (self.ms * 1e-3) / 1e9
    }
    pub fn in_gb_s(&self) -> f64 {
        self.in_bytes as f64 / (self.ms * 1e-3) / 1e9
    }
}

/// The types to run: those named (each must have a GPU kernel), or every supported type.
pub fn selected_types(names: &[String]) -> anyhow::Result<Vec<GgmlType>> {
    if names.is_empty() {
        return Ok(dequant_plan::SUPPORTED.to_vec());
    }
    names
        .iter()
        .map(|name| match GgmlType::from_name(name.trim()) {
            Some(ty) if dequant_plan::is_supported(ty) => Ok(ty),
            Some(ty) => bail!(
                "--types {name}: {ty} has no GPU kernel (supported: {})",
                dequant_plan::supported_names()
            ),
            None => bail!("--types {name}: not a ggml type name"),
        })
        .collect()
}

/// splitmix64: a small, fast, seedable generator (the blocks need not be cryptic, only varied).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A random finite f16 bit pattern (all exponents, subnormals included).
fn finite_f16_bits(rng: &mut SplitMix) -> u16 {
    let bits = rng.next() as u16;
    if bits & 0x7C00 == 0x7C00 {
        bits & !0x4000
    } else {
        bits
    }
}

/// Random data for `n_elements` elements of `ty` (a whole number of blocks): random bytes, with
/// finite f16 scales in block types and finite values in F32/F16/BF16, so that every value the
/// CPU decodes is a number and the comparison means something.
pub fn random_blocks(ty: GgmlType, n_elements: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix(seed ^ u64::from(ty.id()).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let n_bytes = n_elements / ty.block_size() * ty.type_size();
    let mut bytes = Vec::with_capacity(n_bytes + 8);
    while bytes.len() < n_bytes {
        bytes.extend_from_slice(&rng.next().to_le_bytes());
    }
    bytes.truncate(n_bytes);
    match ty {
        GgmlType::F32 => bytes.chunks_exact_mut(4).for_each(|c| {
            if c[3] & 0x7F == 0x7F && c[2] & 0x80 != 0 {
                c[3] &= !0x40; // exponent all ones: make it finite
            }
        }),
        GgmlType::F16 => bytes
            .chunks_exact_mut(2)
            .for_each(|c| c.copy_from_slice(&finite_f16_bits(&mut rng).to_le_bytes())),
        GgmlType::BF16 => bytes.chunks_exact_mut(2).for_each(|c| {
            if c[1] & 0x7F == 0x7F && c[0] & 0x80 != 0 {
                c[1] &= !0x40;
            }
        }),
        _ => {
            let fields = dequant_plan::f16_fields(ty);
            for block in bytes.chunks_exact_mut(ty.type_size()) {
                for &off in fields {
                    block[off..off + 2].copy_from_slice(&finite_f16_bits(&mut rng).to_le_bytes());
                }
            }
        }
    }
    bytes
}

/// The CPU's values as the bit patterns the GPU must write for `out`.
pub fn expected_bits(values: &[f32], out: OutDType) -> Vec<u32> {
    use rayon::prelude::*;
    values
        .par_iter()
        .map(|&v| match out {
            OutDType::F32 => v.to_bits(),
            OutDType::F16 => u32::from(half::f16::from_f32(v).to_bits()),
            OutDType::BF16 => u32::from(half::bf16::from_f32(v).to_bits()),
        })
        .collect()
}

/// Little-endian output bytes as bit patterns.
pub fn output_bits(bytes: &[u8], out: OutDType) -> Vec<u32> {
    match out {
        OutDType::F32 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        OutDType::F16 | OutDType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
    }
}

/// Mismatching positions (a length difference counts every missing value) and the first one.
pub fn mismatches(got: &[u32], want: &[u32]) -> (u64, Option<(u64, u32, u32)>) {
    let mut count = got.len().abs_diff(want.len()) as u64;
    let mut first = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g != w {
            count += 1;
            first.get_or_insert((i as u64, g, w));
        }
    }
    (count, first)
}

pub fn run_dequant_gpu(args: DequantGpuArgs) -> anyhow::Result<()> {
    let Some(index) = cuda_index(&args.device) else {
        bail!("--device {}: expected cuda:N", args.device)
    };
    let types = selected_types(&args.types)?;
    let elements = args.elements.max(1).div_ceil(256) * 256;
    let (arch, rows) = cuda::measure(index, &types, elements, args.iters.max(1), args.seed)?;
    let bad: Vec<_> = rows.iter().filter(|r| r.mismatches > 0).collect();
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("out_gb_s".into(), r.out_gb_s().into());
                    o.insert("in_gb_s".into(), r.in_gb_s().into());
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "device": args.device, "arch": arch, "elements": elements,
                "iters": args.iters, "rows": rows
            }))?
        );
    } else {
        println!(
            "GPU dequantization on {} ({arch}), {elements} elements per type, {} launches; \
             mismatches against the CPU dequantizer rounded by `half`",
            args.device, args.iters
        );
        println!(
            "{:<8} {:<5} {:>10} {:>10} {:>12} {:>11} {:>12}",
            "type", "out", "mismatch", "ms", "out GB/s", "in GB/s", "Gelem/s"
        );
        for r in &rows {
            println!(
                "{:<8} {:<5} {:>10} {:>10.4} {:>12.1} {:>11.1} {:>12.1}",
                r.ty,
                r.out,
                r.mismatches,
                r.ms,
                r.out_gb_s(),
                r.in_gb_s(),
                r.elements as f64 / (r.ms * 1e-3) / 1e9
            );
        }
    }
    if !bad.is_empty() {
        for r in &bad {
            if let Some((i, got, want)) = r.first_mismatch {
                eprintln!(
                    "{} → {}: {} mismatches; first at element {i}: GPU {got:#x}, CPU {want:#x}",
                    r.ty, r.out, r.mismatches
                );
            }
        }
        bail!(
            "{} (type, output) pairs differ from the CPU dequantizer",
            bad.len()
        );
    }
    Ok(())
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{DequantGpuRow, expected_bits, mismatches, output_bits, random_blocks};
    use crate::backend::CudaBackend;
    use crate::dequant::CudaDequant;
    use crate::dequant_plan::OutDType;
    use anyhow::Context;
    use burn::tensor::{DType, Int, Tensor, TensorData};
    use weft_formats::gguf::{GgmlType, dequant};

    pub fn measure(
        index: usize,
        types: &[GgmlType],
        elements: usize,
        iters: usize,
        seed: u64,
    ) -> anyhow::Result<(String, Vec<DequantGpuRow>)> {
        let dq = CudaDequant::new(index).with_context(|| format!("cuda:{index}"))?;
        let device = dq.device().clone();
        let mut rows = Vec::new();
        for &ty in types {
            let bytes = random_blocks(ty, elements, seed);
            let mut reference = vec![0f32; elements];
            dequant::dequantize(ty, &bytes, &mut reference, "random blocks")?;
            let in_bytes = bytes.len() as u64;
            let blocks = Tensor::<CudaBackend, 1, Int>::from_data(
                TensorData::from_bytes_vec(bytes, [in_bytes as usize], DType::U8),
                (&device, DType::U8),
            );
            for out in OutDType::ALL {
                let dtype = match out {
                    OutDType::F32 => DType::F32,
                    OutDType::F16 => DType::F16,
                    OutDType::BF16 => DType::BF16,
                };
                // The checked result comes from the plain path; the timed launches rewrite it.
                let checked = dq.dequantize(ty, &blocks, elements, dtype)?;
                let data = checked
                    .try_into_data()
                    .map_err(|e| anyhow::anyhow!("{ty} → {}: reading back: {e:?}", out.name()))?;
                let got = output_bits(data.as_bytes(), out);
                let (count, first) = mismatches(&got, &expected_bits(&reference, out));
                let (_, ms) = dq.time_launches(ty, &blocks, elements, dtype, iters)?;
                rows.push(DequantGpuRow {
                    ty: ty.name().to_string(),
                    out: out.name().to_string(),
                    elements: elements as u64,
                    in_bytes,
                    out_bytes: elements as u64 * out.bytes(),
                    mismatches: count,
                    first_mismatch: first,
                    ms,
                });
            }
            eprintln!("{ty}: done");
        }
        Ok((dq.arch().to_string(), rows))
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::DequantGpuRow;
    use weft_formats::gguf::GgmlType;
    pub fn measure(
        index: usize,
        _types: &[GgmlType],
        _elements: usize,
        _iters: usize,
        _seed: u64,
    ) -> anyhow::Result<(String, Vec<DequantGpuRow>)> {
        anyhow::bail!(
            "--device cuda:{index}: this weft was built without CUDA; build it with `cargo build --release -p weft --features cuda`"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_formats::gguf::dequant;

    #[test]
    fn random_blocks_decode_to_finite_values() {
        for &ty in dequant_plan::SUPPORTED {
            let n = 4096;
            let bytes = random_blocks(ty, n, 7);
            assert_eq!(Some(bytes.len() as u64), ty.bytes_for(n as u64), "{ty}");
            let mut values = vec![0f32; n];
            dequant::dequantize(ty, &bytes, &mut values, "t").unwrap();
            assert!(values.iter().all(|v| v.is_finite()), "{ty}");
            // Random, not constant.
            assert!(values.iter().any(|&v| v != values[0]), "{ty}");
        }
        assert_eq!(
            random_blocks(GgmlType::Q4_K, 512, 1),
            random_blocks(GgmlType::Q4_K, 512, 1)
        );
        assert_ne!(
            random_blocks(GgmlType::Q4_K, 512, 1),
            random_blocks(GgmlType::Q4_K, 512, 2)
        );
    }

    #[test]
    fn expected_bits_round_like_half() {
        let values = [1.0f32, 1.0 + f32::EPSILON, -0.0, 65520.0, 1e-8];
        assert_eq!(
            expected_bits(&values, OutDType::BF16),
            vec![0x3F80, 0x3F80, 0x8000, 0x477F + 1, 0x322C]
        );
        // 65520 is halfway between f16's largest finite and infinity: ties to even, infinity;
        // 1e-8 underflows to zero.
        assert_eq!(
            expected_bits(&values, OutDType::F16),
            vec![0x3C00, 0x3C00, 0x8000, 0x7C00, 0x0000]
        );
        assert_eq!(expected_bits(&values, OutDType::F32)[1], 0x3F80_0001);
    }

    #[test]
    fn output_bytes_and_mismatch_count() {
        let bytes = [0x80, 0x3F, 0x00, 0x80];
        assert_eq!(output_bits(&bytes, OutDType::BF16), vec![0x3F80, 0x8000]);
        assert_eq!(output_bits(&bytes, OutDType::F32), vec![0x8000_3F80]);
        assert_eq!(mismatches(&[1, 2, 3], &[1, 2, 3]), (0, None));
        assert_eq!(mismatches(&[1, 5, 6], &[1, 2, 3]), (2, Some((1, 5, 2))));
        assert_eq!(mismatches(&[1], &[1, 2]), (1, None));
    }

    #[test]
    fn type_selection() {
        assert_eq!(
            selected_types(&[]).unwrap().len(),
            dequant_plan::SUPPORTED.len()
        );
        assert_eq!(
            selected_types(&["q4_k".into(), "Q8_0".into()]).unwrap(),
            vec![GgmlType::Q4_K, GgmlType::Q8_0]
        );
        let err = selected_types(&["iq2_xxs".into()]).unwrap_err().to_string();
        assert!(err.contains("IQ2_XXS"), "{err}");
        assert!(selected_types(&["q9_9".into()]).is_err());
        assert_eq!(cuda_index("cuda:3"), Some(3));
        assert_eq!(cuda_index("cpu"), None);
    }

    #[test]
    fn gb_per_second() {
        let row = DequantGpuRow {
            ty: "Q4_K".into(),
            out: "bf16".into(),
            elements: 1 << 20,
            in_bytes: 1_000_000,
            out_bytes: 2_000_000,
            mismatches: 0,
            first_mismatch: None,
            ms: 1.0,
        };
        assert!((row.out_gb_s() - 2.0).abs() < 1e-9);
        assert!((row.in_gb_s() - 1.0).abs() < 1e-9);
    }
}
