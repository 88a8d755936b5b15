//! The host side of the fused block kernels (`kernels/fused.cu`, launched by `super::fused`):
//! kernel names, shape checks and launch geometry. No GPU needed: this is what the CPU tests
//! cover.
//!
//! Geometry: element-wise kernels run 256 threads per CUDA block over a grid-stride loop of at
//! most [`MAX_GRID`] blocks; `ln_modulate` and `gate_residual` run one block per row with a
//! multiple of 32 threads (at most 256, fewer for short rows); `qk_norm_rope` runs one warp per (batch, token, head), 8
//! warps per block.
use thiserror::Error;

/// Threads per CUDA block of the element-wise kernels and `qk_norm_rope`.
pub const THREADS: u32 = 256;
/// Largest grid of the element-wise kernels (their loops stride over the rest).
pub const MAX_GRID: u32 = 1 << 16;
/// Largest grid dimension x CUDA allows.
const CUDA_MAX_GRID_X: u64 = (1 << 31) - 1;

/// The kernels' CUDA C source, compiled at run time by NVRTC.
pub const KERNEL_SOURCE: &str = include_str!("kernels/fused.cu");
/// NVRTC options besides the architecture.
pub const NVRTC_OPTIONS: &[&str] = &["--std=c++14"];

/// The kernel families of `fused.cu`.
pub const KERNELS: [&str; 5] = [
    "gelu_tanh",
    "ln_modulate",
    "gate_residual",
    "gemv",
    "qk_norm_rope",
];

/// Most rows of x one `gemv` call takes (the kernel's accumulators).
pub const GEMV_MAX_ROWS: usize = 4;

/// Whether `gemv` takes x [rows, k] against a dense bf16 W [n, k] at address `w_ptr`: few rows,
/// k a multiple of 8 and 16-byte aligned W rows (its 16-byte loads).
pub fn gemv_fits(rows: usize, k: usize, w_ptr: u64) -> bool {
    (1..=GEMV_MAX_ROWS).contains(&rows) && k > 0 && k.is_multiple_of(8) && w_ptr.is_multiple_of(16)
}

/// Errors of the fused path; the caller falls back to burn's kernels on any of them.
#[derive(Debug, Error)]
pub enum FusedError {
    #[error("{what}: dtype {dtype} (the fused kernels take F32 and BF16, all operands alike)")]
    DType { what: &'static str, dtype: String },
    #[error("{what}: shape {shape:?} {why}")]
    Shape {
        what: &'static str,
        shape: Vec<usize>,
        why: String,
    },
    #[error("{what}: {count} exceeds what one launch covers")]
    TooLarge { what: &'static str, count: u64 },
    #[error("compiling the fused kernels for {arch} with NVRTC: {message}")]
    Compile { arch: String, message: String },
    #[error("CUDA driver ({what}): {message}")]
    Driver { what: String, message: String },
    #[error("burn-cuda ({what}): {message}")]
    Burn { what: String, message: String },
}

/// The storage type of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FusedDType {
    F32,
    BF16,
}

impl FusedDType {
    /// The kernel-name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            FusedDType::F32 => "f32",
            FusedDType::BF16 => "bf16",
        }
    }
}

/// `family_suffix`, e.g. `gelu_tanh_bf16`.
pub fn kernel_name(family: &str, dtype: FusedDType) -> String {
    format!("{family}_{}", dtype.suffix())
}

/// Every kernel name the module defines.
pub fn all_kernels() -> impl Iterator<Item = String> {
    KERNELS.into_iter().flat_map(|family| {
        [FusedDType::F32, FusedDType::BF16]
            .into_iter()
            .map(move |d| kernel_name(family, d))
    })
}

/// Grid and block of an element-wise launch over `n` elements (grid 0: nothing to do).
pub fn elementwise(n: u64) -> (u32, u32) {
    let blocks = n.div_ceil(u64::from(THREADS)).min(u64::from(MAX_GRID));
    (blocks as u32, THREADS)
}

/// Grid (one block per row) and block size of `ln_modulate` and `gate_residual` over `rows`
/// rows of `cols`.
pub fn rows(rows: u64, cols: u64, what: &'static str) -> Result<(u32, u32), FusedError> {
    if rows > CUDA_MAX_GRID_X {
        return Err(FusedError::TooLarge { what, count: rows });
    }
    let threads = cols.div_ceil(32).clamp(1, u64::from(THREADS) / 32) * 32;
    Ok((rows as u32, threads as u32))
}

/// Grid and block of `qk_norm_rope` for `items` (batch × tokens × heads) warps.
pub fn warps(items: u64, what: &'static str) -> Result<(u32, u32), FusedError> {
    let per_block = u64::from(THREADS / 32);
    let blocks = items.div_ceil(per_block);
    if blocks > CUDA_MAX_GRID_X {
        return Err(FusedError::TooLarge { what, count: items });
    }
    Ok((blocks as u32, THREADS))
}

/// A modulation tensor [B, 1, C] (or [B, C]) for activations [B, L, C]: its batch and width must
/// match.
pub fn check_modulation(x: &[usize], m: &[usize], what: &'static str) -> Result<(), FusedError> {
    let ok = x.len() == 3
        && match m {
            [b, 1, c] | [b, c] => *b == x[0] && *c == x[2],
            _ => false,
        };
    if ok {
        Ok(())
    } else {
        Err(FusedError::Shape {
            what,
            shape: m.to_vec(),
            why: format!("does not modulate activations {x:?} (expected [B, 1, C])"),
        })
    }
}

/// The shapes of one `qk_norm_rope` call: segments [B, L_i, 3·H·D] in token order, scales [D],
/// tables [ΣL_i, D]. Returns (batch, total tokens, head dim).
pub fn check_qkv(
    segments: &[[usize; 3]],
    scales: &[usize],
    table: [usize; 2],
    heads: usize,
) -> Result<(usize, usize, usize), FusedError> {
    let bad = |shape: &[usize], why: String| FusedError::Shape {
        what: "qk_norm_rope",
        shape: shape.to_vec(),
        why,
    };
    let first = segments
        .first()
        .ok_or_else(|| bad(&[], "no segments".into()))?;
    if heads == 0 || first[2] % (3 * heads) != 0 {
        return Err(bad(first, format!("is not [B, L, 3·{heads}·D]")));
    }
    let d = first[2] / (3 * heads);
    if d == 0 || d % 2 != 0 {
        return Err(bad(first, format!("head dim {d} is not even")));
    }
    let mut tokens = 0;
    for s in segments {
        if s[0] != first[0] || s[2] != first[2] {
            return Err(bad(
                s,
                format!("does not match the first segment {first:?}"),
            ));
        }
        tokens += s[1];
    }
    if let Some(&s) = scales.iter().find(|&&s| s != d) {
        return Err(bad(&[s], format!("scale of {s} values for head dim {d}")));
    }
    if table != [tokens, d] {
        return Err(bad(
            &table,
            format!("RoPE table for {tokens} tokens of {d}"),
        ));
    }
    Ok((first[0], tokens, d))
}

/// Whether a view is dense row-major once its size-1 dimensions are ignored (their strides do
/// not matter): what the kernels index. `[1, 1, C]` cut from `[1, 1, 6C]` is; a transpose is not.
pub fn dense(shape: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1;
    for (&size, &stride) in shape.iter().zip(strides).rev() {
        if size != 1 && stride != expected {
            return false;
        }
        expected *= size;
    }
    shape.len() == strides.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_name_is_defined_in_the_source() {
        let names: Vec<String> = all_kernels().collect();
        assert_eq!(names.len(), 10);
        for name in names {
            let (family, suffix) = name.rsplit_once('_').unwrap();
            // `FUSED_ENTRIES(bf16, Bf16)` pastes `family_##SUFFIX`.
            assert!(
                KERNEL_SOURCE.contains(&format!("void {family}_##SUFFIX(")),
                "{family}"
            );
            assert!(KERNEL_SOURCE.contains(&format!("FUSED_ENTRIES({suffix}, ")));
        }
    }

    #[test]
    fn gemv_takes_few_rows_of_aligned_weights() {
        assert!(KERNEL_SOURCE.contains(&format!("#define GEMV_MAX_ROWS {GEMV_MAX_ROWS}")));
        assert!(gemv_fits(1, 3072, 0x7f00_0000_0000));
        assert!(gemv_fits(4, 256, 16));
        assert!(!gemv_fits(5, 3072, 16));
        assert!(!gemv_fits(0, 3072, 16));
        assert!(!gemv_fits(1, 3076, 16));
        assert!(!gemv_fits(1, 3072, 8));
    }

    #[test]
    fn elementwise_grid_covers_small_and_caps_large() {
        assert_eq!(elementwise(0), (0, 256));
        assert_eq!(elementwise(1), (1, 256));
        assert_eq!(elementwise(257), (2, 256));
        assert_eq!(elementwise(4608 * 12288), (MAX_GRID, 256));
    }

    #[test]
    fn row_blocks_fit_the_row() {
        assert_eq!(rows(4608, 3072, "ln").unwrap(), (4608, 256));
        assert_eq!(rows(10, 40, "ln").unwrap(), (10, 64));
        assert_eq!(rows(10, 1, "ln").unwrap(), (10, 32));
        assert!(rows(1 << 32, 8, "ln").is_err());
    }

    #[test]
    fn one_warp_per_head() {
        // Flux at 1024²: 4608 tokens × 24 heads = 110592 warps, 8 per block.
        assert_eq!(warps(4608 * 24, "qk").unwrap(), (13824, 256));
        assert_eq!(warps(9, "qk").unwrap(), (2, 256));
    }

    #[test]
    fn dense_ignores_unit_dims_only() {
        assert!(dense(&[1, 1, 3072], &[18432, 18432, 1]));
        assert!(dense(&[2, 3, 4], &[12, 4, 1]));
        assert!(!dense(&[2, 1, 4], &[24, 24, 1]));
        assert!(!dense(&[4, 4], &[1, 4]));
        assert!(!dense(&[4, 2], &[3, 1]));
        assert!(dense(&[], &[]));
    }

    #[test]
    fn modulation_shapes() {
        assert!(check_modulation(&[1, 4096, 3072], &[1, 1, 3072], "m").is_ok());
        assert!(check_modulation(&[2, 10, 8], &[2, 8], "m").is_ok());
        assert!(check_modulation(&[2, 10, 8], &[1, 1, 8], "m").is_err());
        assert!(check_modulation(&[2, 10, 8], &[2, 1, 9], "m").is_err());
    }

    #[test]
    fn qkv_segments_concatenate() {
        let (b, l, d) = check_qkv(
            &[[1, 512, 9216], [1, 4096, 9216]],
            &[128; 4],
            [4608, 128],
            24,
        )
        .unwrap();
        assert_eq!((b, l, d), (1, 4608, 128));
        // Wrong table length, odd head dim, mismatched segments, scale width.
        assert!(check_qkv(&[[1, 512, 9216]], &[128; 2], [4608, 128], 24).is_err());
        assert!(check_qkv(&[[1, 5, 9]], &[1; 2], [5, 1], 3).is_err());
        assert!(check_qkv(&[[1, 5, 24], [2, 5, 24]], &[4; 2], [10, 4], 2).is_err());
        assert!(check_qkv(&[[1, 5, 24]], &[3, 4], [5, 4], 2).is_err());
        assert!(check_qkv(&[], &[], [0, 0], 2).is_err());
    }
}
