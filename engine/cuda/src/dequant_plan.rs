//! The host side of the GPU dequantization kernels (`kernels/dequant.cu`, launched by
//! `super::dequant`): which ggml types have a kernel, each kernel's name, the launch geometry and
//! the checks made before a launch (byte length, element count, alignment). No GPU needed: this is
//! what the CPU tests cover.
//!
//! Geometry: one thread writes 8 consecutive outputs (8 divides every block size, so a thread
//! reads one block), 256 threads per CUDA block, and a grid-stride loop past [`MAX_GRID`] blocks.
use thiserror::Error;
use weft_formats::gguf::GgmlType;

/// Outputs written by one thread (one 16-byte store in f16/bf16).
pub const ELEMENTS_PER_THREAD: u64 = 8;
/// Threads per CUDA block (the kernels' `__launch_bounds__`).
pub const THREADS_PER_BLOCK: u32 = 256;
/// Largest grid launched; bigger tensors are covered by the kernels' grid-stride loop.
pub const MAX_GRID: u32 = 1 << 20;

/// The ggml types with a GPU kernel, in the order `weft bench dequant-gpu` reports them.
pub const SUPPORTED: &[GgmlType] = &[
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
];

/// Errors of the GPU dequantization path. A caller that gets [`GpuDequantError::Unsupported`]
/// dequantizes on the CPU instead.
#[derive(Debug, Error)]
pub enum GpuDequantError {
    #[error("{ty}: no GPU dequantization kernel (GPU kernels: {supported})")]
    Unsupported { ty: &'static str, supported: String },
    #[error("{ty}: {bytes} bytes do not hold {elements} elements (whole blocks of this type)")]
    SizeMismatch {
        ty: &'static str,
        bytes: u64,
        elements: u64,
    },
    #[error("{ty}: {elements} elements do not fit a {out} buffer on this platform")]
    TooLarge {
        ty: &'static str,
        elements: u64,
        out: &'static str,
    },
    #[error("{ty}: input at device address {ptr:#x} is not {align}-byte aligned")]
    Misaligned {
        ty: &'static str,
        ptr: u64,
        align: u64,
    },
    #[error("{ty}: output dtype {dtype} is not F32, F16 or BF16")]
    OutputDType { ty: &'static str, dtype: String },
    #[error("{ty}: the blocks must be a contiguous U8 tensor, got {what}")]
    Input { ty: &'static str, what: String },
    #[error("compiling the dequantization kernels for {arch} with NVRTC: {message}")]
    Compile { arch: String, message: String },
    /// `what` names the ggml type where there is one (`Q4_K: launch`).
    #[error("CUDA driver ({what}): {message}")]
    Driver { what: String, message: String },
    #[error("burn-cuda ({what}): {message}")]
    Burn { what: String, message: String },
}

/// The element type a kernel writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutDType {
    F32,
    F16,
    BF16,
}

impl OutDType {
    pub const ALL: [OutDType; 3] = [OutDType::F32, OutDType::F16, OutDType::BF16];

    /// The suffix of the kernel names (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            OutDType::F32 => "f32",
            OutDType::F16 => "f16",
            OutDType::BF16 => "bf16",
        }
    }

    pub fn bytes(self) -> u64 {
        match self {
            OutDType::F32 => 4,
            OutDType::F16 | OutDType::BF16 => 2,
        }
    }
}

/// True when `ty` has a GPU kernel.
pub fn is_supported(ty: GgmlType) -> bool {
    SUPPORTED.contains(&ty)
}

/// Names of the supported types, for error messages.
pub fn supported_names() -> String {
    SUPPORTED
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kernel that dequantizes `ty` to `out` (`dequant_q4_k_bf16`), if there is one.
pub fn kernel_name(ty: GgmlType, out: OutDType) -> Option<String> {
    is_supported(ty).then(|| format!("dequant_{}_{}", ty.name().to_ascii_lowercase(), out.name()))
}

/// Every kernel the module defines, as `(type, output, name)`.
pub fn all_kernels() -> impl Iterator<Item = (GgmlType, OutDType, String)> {
    SUPPORTED.iter().flat_map(|&ty| {
        OutDType::ALL
            .into_iter()
            .filter_map(move |out| kernel_name(ty, out).map(|name| (ty, out, name)))
    })
}

/// Byte offsets of the f16 fields (scales `d`, `dmin`, `m`) within one block of `ty`; empty for
/// types without them. The benchmark writes finite values there so that random blocks decode to
/// finite numbers.
pub fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL => &[0],
        GgmlType::IQ4_XS => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// Alignment the kernels need of the input's device address: the element size for the plain
/// types (read as f32/u16), none for block types (read byte by byte).
pub fn input_alignment(ty: GgmlType) -> u64 {
    if ty.is_plain() {
        ty.type_size() as u64
    } else {
        1
    }
}

/// One checked launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchPlan {
    pub ty: GgmlType,
    pub out: OutDType,
    pub n_elements: u64,
    /// Bytes read (the blocks) and written (the output).
    pub in_bytes: u64,
    pub out_bytes: u64,
    /// CUDA blocks of [`THREADS_PER_BLOCK`] threads; 0 for an empty tensor (nothing to launch).
    pub grid: u32,
    pub block: u32,
}

/// Checks that `in_bytes` are exactly the blocks of `n_elements` elements of `ty`, and plans the
/// launch.
pub fn plan(
    ty: GgmlType,
    out: OutDType,
    n_elements: u64,
    in_bytes: u64,
) -> Result<LaunchPlan, GpuDequantError> {
    if !is_supported(ty) {
        return Err(GpuDequantError::Unsupported {
            ty: ty.name(),
            supported: supported_names(),
        });
    }
    if ty.bytes_for(n_elements) != Some(in_bytes) {
        return Err(GpuDequantError::SizeMismatch {
            ty: ty.name(),
            bytes: in_bytes,
            elements: n_elements,
        });
    }
    let too_large = || GpuDequantError::TooLarge {
        ty: ty.name(),
        elements: n_elements,
        out: out.name(),
    };
    let out_bytes = n_elements.checked_mul(out.bytes()).ok_or_else(too_large)?;
    if usize::try_from(out_bytes).is_err() || usize::try_from(in_bytes).is_err() {
        return Err(too_large());
    }
    let groups = n_elements.div_ceil(ELEMENTS_PER_THREAD);
    let blocks = groups.div_ceil(u64::from(THREADS_PER_BLOCK));
    let grid = u32::try_from(blocks.min(u64::from(MAX_GRID))).map_err(|_| too_large())?;
    Ok(LaunchPlan {
        ty,
        out,
        n_elements,
        in_bytes,
        out_bytes,
        grid,
        block: THREADS_PER_BLOCK,
    })
}

/// Checks the input's device address against [`input_alignment`].
pub fn check_alignment(ty: GgmlType, ptr: u64) -> Result<(), GpuDequantError> {
    let align = input_alignment(ty);
    if !ptr.is_multiple_of(align) {
        return Err(GpuDequantError::Misaligned {
            ty: ty.name(),
            ptr,
            align,
        });
    }
    Ok(())
}

/// The NVRTC `--gpu-architecture` for a compute capability (`(9, 0)` → `sm_90`).
pub fn gpu_arch(major: i32, minor: i32) -> String {
    format!("sm_{major}{minor}")
}

/// The kernels' CUDA C source, compiled at run time by NVRTC.
pub const KERNEL_SOURCE: &str = include_str!("kernels/dequant.cu");

/// NVRTC options: no FMA contraction and no flush-to-zero, so every product and sum is rounded
/// as the CPU's f32 code rounds it.
pub fn nvrtc_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--fmad=false".into(),
        "--ftz=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--std=c++14".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_type_has_three_kernels_in_the_source() {
        let names: Vec<_> = all_kernels().map(|(_, _, n)| n).collect();
        assert_eq!(names.len(), SUPPORTED.len() * 3);
        for name in &names {
            // `ENTRIES(q4_k, …)` in the source expands to dequant_q4_k_{f32,f16,bf16}.
            let stem = name
                .strip_prefix("dequant_")
                .and_then(|s| s.rsplit_once('_'))
                .map(|(ty, _)| ty)
                .unwrap();
            assert!(
                KERNEL_SOURCE.contains(&format!("ENTRIES({stem}, ")),
                "{name} is not defined in kernels/dequant.cu"
            );
        }
        assert_eq!(
            kernel_name(GgmlType::Q4_K, OutDType::BF16).as_deref(),
            Some("dequant_q4_k_bf16")
        );
        assert_eq!(
            kernel_name(GgmlType::IQ4_NL, OutDType::F32).as_deref(),
            Some("dequant_iq4_nl_f32")
        );
        assert_eq!(kernel_name(GgmlType::IQ2_XXS, OutDType::F16), None);
        // The launch geometry is the one the kernels are built for.
        assert!(KERNEL_SOURCE.contains(&format!("__launch_bounds__({THREADS_PER_BLOCK})")));
        assert!(KERNEL_SOURCE.contains("float v[8];"));
    }

    #[test]
    fn block_layouts_in_the_source_match_ggml() {
        // Each block struct in the source declares `QK = …, SIZE = …`; they must be ggml's.
        for &ty in SUPPORTED.iter().filter(|t| t.is_quantized()) {
            let decl = format!(
                "struct {} {{\n    static const int QK = {}, SIZE = {};",
                ty.name(),
                ty.block_size(),
                ty.type_size()
            );
            assert!(KERNEL_SOURCE.contains(&decl), "{ty}: expected `{decl}`");
            // 8 outputs per thread must stay within one block.
            assert_eq!(ty.block_size() as u64 % ELEMENTS_PER_THREAD, 0, "{ty}");
        }
    }

    #[test]
    fn iq4_codebook_in_the_source_is_ggmls() {
        // kvalue_iq4nl packs the codebook into two little-endian words.
        const KVALUES: [i8; 16] = [
            -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
        ];
        let word = |name: &str| {
            let pattern = format!("const u64 {name} = 0x");
            let start = KERNEL_SOURCE.find(&pattern).unwrap() + pattern.len();
            let hex = &KERNEL_SOURCE[start..][..16];
            u64::from_str_radix(hex, 16).unwrap()
        };
        let (lo, hi) = (word("lo"), word("hi"));
        let unpacked: Vec<i8> = (0..16)
            .map(|n| {
                let w = if n < 8 { lo } else { hi };
                (w >> (8 * (n % 8))) as u8 as i8
            })
            .collect();
        assert_eq!(unpacked, KVALUES);
    }

    #[test]
    fn f16_fields_lie_inside_the_block() {
        for &ty in SUPPORTED {
            for &off in f16_fields(ty) {
                assert!(off + 2 <= ty.type_size(), "{ty} field at {off}");
            }
            assert_eq!(f16_fields(ty).is_empty(), ty.is_plain(), "{ty}");
        }
    }

    #[test]
    fn plan_checks_length_and_type() {
        let p = plan(GgmlType::Q4_K, OutDType::BF16, 4096 * 256, 4096 * 144).unwrap();
        assert_eq!(p.out_bytes, 4096 * 256 * 2);
        assert_eq!(p.grid, 512); // 131072 threads of 8 outputs
        assert_eq!(p.block, THREADS_PER_BLOCK);

        let err = plan(GgmlType::Q4_K, OutDType::BF16, 256, 143).unwrap_err();
        assert!(matches!(err, GpuDequantError::SizeMismatch { .. }), "{err}");
        assert!(err.to_string().contains("Q4_K"), "{err}");
        // Not a whole number of blocks.
        assert!(plan(GgmlType::Q8_0, OutDType::F16, 33, 36).is_err());

        let err = plan(GgmlType::IQ2_XXS, OutDType::F32, 256, 66).unwrap_err();
        assert!(matches!(err, GpuDequantError::Unsupported { .. }));
        let msg = err.to_string();
        assert!(msg.contains("IQ2_XXS") && msg.contains("Q6_K"), "{msg}");
    }

    #[test]
    fn plan_geometry() {
        // Plain types: any count, a partial last group.
        let p = plan(GgmlType::F16, OutDType::F32, 9, 18).unwrap();
        assert_eq!((p.grid, p.out_bytes), (1, 36));
        // Empty: nothing to launch.
        let p = plan(GgmlType::Q8_0, OutDType::BF16, 0, 0).unwrap();
        assert_eq!((p.grid, p.in_bytes, p.out_bytes), (0, 0, 0));
        // Huge tensors are capped and covered by the grid-stride loop.
        let n = 1u64 << 40;
        let p = plan(GgmlType::Q8_0, OutDType::BF16, n, n / 32 * 34);
        if usize::BITS == 64 {
            assert_eq!(p.unwrap().grid, MAX_GRID);
        }
        // Overflowing sizes are errors, not panics.
        let n = u64::MAX / 32 * 32;
        assert!(plan(GgmlType::F32, OutDType::F32, n, 0).is_err());
    }

    #[test]
    fn alignment_of_plain_inputs() {
        assert!(check_alignment(GgmlType::F32, 0x1000).is_ok());
        assert!(check_alignment(GgmlType::F32, 0x1002).is_err());
        assert!(check_alignment(GgmlType::F16, 0x1002).is_ok());
        assert!(check_alignment(GgmlType::Q6_K, 0x1001).is_ok());
        let err = check_alignment(GgmlType::BF16, 0x1001).unwrap_err();
        assert!(err.to_string().contains("BF16"), "{err}");
    }

    #[test]
    fn nvrtc_arch_and_options() {
        assert_eq!(gpu_arch(9, 0), "sm_90");
        assert_eq!(gpu_arch(8, 6), "sm_86");
        let opts = nvrtc_options("sm_90");
        assert!(opts.contains(&"--fmad=false".to_string()));
        assert!(opts.contains(&"--gpu-architecture=sm_90".to_string()));
    }
}
