//! The host-side logic of the flash-attention fast path (no GPU needed, unit-tested on the CPU):
//! which views weft's kernels (`kernels/flash_attn.cu`, mma.sync for sm_80+, and
//! `kernels/flash_attn_sm90.cu`, wgmma for sm_90a) accept, which kernel and instantiation runs
//! them, their launch grid and shared memory, and an f32 reference attention for checks.
//!
//! The kernels read `[B, H, S, D]` views whose rows (the head dim) are unit-stride and whose
//! batch, head and sequence strides are multiples of 8 elements (16 bytes, for `cp.async` and
//! vector stores); any such strides are fine, so burn's permuted views (`[B, S, H, D]` seen as
//! `[B, H, S, D]`) need no copy. Anything else is refused with an error and the caller falls back
//! to burn (or makes the view contiguous).
use burn::tensor::DType;
use thiserror::Error;

/// The mma.sync kernel's source, compiled at run time (`attention.rs`).
pub const FLASH_ATTN_CU: &str = concat!(
    include_str!("kernels/flash_common.cuh"),
    include_str!("kernels/flash_attn.cu")
);
/// The wgmma kernel's source (sm_90a), compiled at run time.
pub const FLASH_ATTN_SM90_CU: &str = concat!(
    include_str!("kernels/flash_common.cuh"),
    include_str!("kernels/flash_attn_sm90.cu")
);
/// NVRTC options of both kernels besides the architecture.
pub const NVRTC_OPTIONS: &[&str] = &["--std=c++17"];

/// Query rows per CTA (both kernels: 8 warps × 16 rows, or 2 warpgroups × 64 rows).
pub const BLOCK_Q: usize = 128;
/// Threads per CTA.
pub const THREADS: u32 = 256;
/// The head dims the kernels are instantiated for.
pub const HEAD_DIMS: [usize; 2] = [64, 128];
/// CUDA's limit on `gridDim.y` (one CTA row per batch × head).
const MAX_GRID_Y: usize = 65535;
/// Elements per 16 bytes of bf16/f16.
const ALIGN_ELEMS: usize = 8;
/// Oldest compute capability with bf16 `mma.sync` and `cp.async`.
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

/// Which of weft's flash kernels runs an attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashKernel {
    /// `flash_attn.cu`: mma.sync + ldmatrix, 64-key tiles; any sm_80 or newer GPU.
    Mma,
    /// `flash_attn_sm90.cu`: Hopper's wgmma from swizzled shared memory, 96-key tiles; sm_90
    /// only (wgmma is an sm_90a instruction, absent from later architectures).
    Wgmma,
}

impl FlashKernel {
    /// The kernel for a device of compute capability `major.minor`; `requested` is the
    /// `WEFT_FLASH_KERNEL` setting (`mma` keeps the portable kernel on a Hopper GPU).
    pub fn for_device(major: i32, minor: i32, requested: Option<&str>) -> FlashKernel {
        match ((major, minor), requested) {
            (_, Some("mma")) => FlashKernel::Mma,
            ((9, 0), _) => FlashKernel::Wgmma,
            _ => FlashKernel::Mma,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FlashKernel::Mma => "mma",
            FlashKernel::Wgmma => "wgmma",
        }
    }

    /// Keys per shared-memory tile.
    pub fn block_kv(self) -> usize {
        match self {
            FlashKernel::Mma => 64,
            FlashKernel::Wgmma => 96,
        }
    }

    /// Dynamic shared memory per CTA. mma: two K and two V buffers of 64 rows padded to `D + 8`
    /// elements (the Q tile, then the output, reuse the second pair). wgmma: the Q tile and two
    /// K and two V buffers of 96 rows, unpadded (swizzled), plus 1024 bytes to align the base.
    pub fn shared_bytes(self, head_dim: usize) -> usize {
        match self {
            FlashKernel::Mma => 4 * self.block_kv() * (head_dim + 8) * 2,
            FlashKernel::Wgmma => (BLOCK_Q + 4 * self.block_kv()) * head_dim * 2 + 1024,
        }
    }

    /// NVRTC's `--gpu-architecture` for this kernel on a device of compute capability
    /// `major.minor`.
    pub fn nvrtc_arch(self, major: i32, minor: i32) -> Result<String, AttentionPlanError> {
        if (major, minor) < MIN_COMPUTE_CAPABILITY || minor < 0 {
            return Err(AttentionPlanError::ComputeCapability { major, minor });
        }
        match self {
            FlashKernel::Mma => Ok(format!("sm_{major}{minor}")),
            FlashKernel::Wgmma if (major, minor) == (9, 0) => Ok("sm_90a".to_string()),
            FlashKernel::Wgmma => Err(AttentionPlanError::NotHopper { major, minor }),
        }
    }

    /// The entry point of one instantiation (names as in the kernel sources).
    pub fn kernel_name(self, dtype: AttnDType, head_dim: usize) -> &'static str {
        let index = match (dtype, head_dim) {
            (AttnDType::Bf16, 64) => 0,
            (AttnDType::Bf16, _) => 1,
            (AttnDType::F16, 64) => 2,
            (AttnDType::F16, _) => 3,
        };
        self.kernels()[index].0
    }

    /// Every instantiation with its head dim.
    pub fn kernels(self) -> [(&'static str, usize); 4] {
        match self {
            FlashKernel::Mma => [
                ("flash_attn_fwd_bf16_d64", 64),
                ("flash_attn_fwd_bf16_d128", 128),
                ("flash_attn_fwd_f16_d64", 64),
                ("flash_attn_fwd_f16_d128", 128),
            ],
            FlashKernel::Wgmma => [
                ("flash_attn_sm90_bf16_d64", 64),
                ("flash_attn_sm90_bf16_d128", 128),
                ("flash_attn_sm90_f16_d64", 64),
                ("flash_attn_sm90_f16_d128", 128),
            ],
        }
    }
}

/// Why the kernel cannot run an attention (the caller falls back to burn).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum AttentionPlanError {
    #[error("{what} has rank {rank}: expected [batch, heads, seq, head_dim]")]
    Rank { what: &'static str, rank: usize },
    #[error("attention shapes do not agree: q {q:?}, k {k:?}, v {v:?}")]
    ShapeMismatch {
        q: [usize; 4],
        k: [usize; 4],
        v: [usize; 4],
    },
    #[error("head dim {0}: the flash kernel is built for 64 and 128")]
    HeadDim(usize),
    #[error("dtype {0:?}: the flash kernel takes bf16 and f16")]
    DType(DType),
    #[error("mixed dtypes: q {q:?}, k {k:?}, v {v:?}")]
    DTypeMismatch { q: DType, k: DType, v: DType },
    #[error(
        "{what} (shape {shape:?}, strides {strides:?}): the head dim must be unit-stride and the \
         other strides multiples of 8 elements"
    )]
    Layout {
        what: &'static str,
        shape: [usize; 4],
        strides: [usize; 4],
    },
    #[error("{what} is not 16-byte aligned (address {ptr:#x})")]
    Misaligned { what: &'static str, ptr: u64 },
    #[error("empty attention: q {q:?}, k {k:?}")]
    Empty { q: [usize; 4], k: [usize; 4] },
    #[error("too large for the kernel: {0}")]
    TooLarge(String),
    #[error("scale {0} is not finite")]
    Scale(f32),
    #[error("compute capability {major}.{minor}: the flash kernel needs 8.0 or newer")]
    ComputeCapability { major: i32, minor: i32 },
    #[error("compute capability {major}.{minor}: the wgmma flash kernel runs on 9.0 only")]
    NotHopper { major: i32, minor: i32 },
}

/// The element types the kernel is instantiated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttnDType {
    Bf16,
    F16,
}

impl AttnDType {
    pub fn from_burn(dtype: DType) -> Result<Self, AttentionPlanError> {
        match dtype {
            DType::BF16 => Ok(AttnDType::Bf16),
            DType::F16 => Ok(AttnDType::F16),
            other => Err(AttentionPlanError::DType(other)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AttnDType::Bf16 => "bf16",
            AttnDType::F16 => "f16",
        }
    }
}

/// A 4-D view: `element(b, h, s, d) = base + b·strides[0] + h·strides[1] + s·strides[2] +
/// d·strides[3]`, strides in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View4 {
    pub shape: [usize; 4],
    pub strides: [usize; 4],
}

impl View4 {
    /// A dense row-major view.
    pub fn contiguous(shape: [usize; 4]) -> Self {
        let [_, h, s, d] = shape;
        View4 {
            shape,
            strides: [h * s * d, s * d, d, 1],
        }
    }

    /// From burn/cubecl shape and strides; an error unless both have exactly four entries.
    pub fn from_slices(
        what: &'static str,
        shape: &[usize],
        strides: &[usize],
    ) -> Result<Self, AttentionPlanError> {
        match (shape, strides) {
            (&[b, h, s, d], &[sb, sh, ss, sd]) => Ok(View4 {
                shape: [b, h, s, d],
                strides: [sb, sh, ss, sd],
            }),
            _ => Err(AttentionPlanError::Rank {
                what,
                rank: shape.len(),
            }),
        }
    }

    /// The batch, head and sequence strides as the kernel takes them (a dim of size 1 is never
    /// stepped over, so its stride is irrelevant and reported as 0).
    fn kernel_strides(&self, what: &'static str) -> Result<[i64; 3], AttentionPlanError> {
        let layout = || AttentionPlanError::Layout {
            what,
            shape: self.shape,
            strides: self.strides,
        };
        if self.shape[3] > 1 && self.strides[3] != 1 {
            return Err(layout());
        }
        let mut out = [0i64; 3];
        for (i, slot) in out.iter_mut().enumerate() {
            if self.shape[i] <= 1 {
                continue;
            }
            let stride = self.strides[i];
            if !stride.is_multiple_of(ALIGN_ELEMS) {
                return Err(layout());
            }
            // The furthest element the kernel addresses must fit its 64-bit offsets.
            let reach = stride.checked_mul(self.shape[i] - 1);
            if reach.is_none_or(|r| i64::try_from(r).is_err()) {
                return Err(AttentionPlanError::TooLarge(format!(
                    "{what} stride {stride}"
                )));
            }
            *slot = stride as i64;
        }
        Ok(out)
    }
}

/// One attention the kernel can run: sizes, strides (batch, head, sequence; elements) and the
/// instantiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionProblem {
    pub batch: usize,
    pub heads: usize,
    pub seq_q: usize,
    pub seq_kv: usize,
    pub head_dim: usize,
    pub dtype: AttnDType,
    pub q: [i64; 3],
    pub k: [i64; 3],
    pub v: [i64; 3],
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchShape {
    pub kernel: &'static str,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

/// Checks `q [B, H, Sq, D]`, `k, v [B, H, Skv, D]` of one dtype against what the kernel runs.
pub fn plan(
    q: View4,
    k: View4,
    v: View4,
    dtype: AttnDType,
) -> Result<AttentionProblem, AttentionPlanError> {
    let [b, h, seq_q, d] = q.shape;
    let [kb, kh, seq_kv, kd] = k.shape;
    if [kb, kh, kd] != [b, h, d] || v.shape != k.shape {
        return Err(AttentionPlanError::ShapeMismatch {
            q: q.shape,
            k: k.shape,
            v: v.shape,
        });
    }
    if q.shape.contains(&0) || k.shape.contains(&0) {
        return Err(AttentionPlanError::Empty {
            q: q.shape,
            k: k.shape,
        });
    }
    if !HEAD_DIMS.contains(&d) {
        return Err(AttentionPlanError::HeadDim(d));
    }
    let too_large = |what: String| AttentionPlanError::TooLarge(what);
    if b.checked_mul(h).is_none_or(|n| n > MAX_GRID_Y) {
        return Err(too_large(format!(
            "{b} × {h} batch × heads (at most {MAX_GRID_Y})"
        )));
    }
    // The kernel indexes rows with 32-bit ints (plus a tile of slack).
    let max_seq = i32::MAX as usize - BLOCK_Q;
    if seq_q > max_seq || seq_kv > max_seq || h > i32::MAX as usize {
        return Err(too_large(format!("sequence {seq_q}/{seq_kv}, heads {h}")));
    }
    Ok(AttentionProblem {
        batch: b,
        heads: h,
        seq_q,
        seq_kv,
        head_dim: d,
        dtype,
        q: q.kernel_strides("q")?,
        k: k.kernel_strides("k")?,
        v: v.kernel_strides("v")?,
    })
}

impl AttentionProblem {
    /// The output's shape, `[B, H, Sq, D]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.seq_q, self.head_dim]
    }

    pub fn launch(&self, kernel: FlashKernel) -> LaunchShape {
        LaunchShape {
            kernel: kernel.kernel_name(self.dtype, self.head_dim),
            grid: (
                self.seq_q.div_ceil(BLOCK_Q) as u32,
                (self.batch * self.heads) as u32,
                1,
            ),
            block: (THREADS, 1, 1),
            shared_bytes: kernel.shared_bytes(self.head_dim) as u32,
        }
    }

    /// Floating-point operations (two products of `2·Sq·Skv·D` per batch × head).
    pub fn flops(&self) -> f64 {
        attention_flops(
            self.batch,
            self.heads,
            self.seq_q,
            self.seq_kv,
            self.head_dim,
        )
    }
}

/// `scale · log2(e)`: the kernel's softmax runs in base 2.
pub fn scale_log2(scale: f32) -> Result<f32, AttentionPlanError> {
    let s = scale * std::f32::consts::LOG2_E;
    if scale.is_finite() && s.is_finite() {
        Ok(s)
    } else {
        Err(AttentionPlanError::Scale(scale))
    }
}

/// The base pointers must be 16-byte aligned.
pub fn check_alignment(what: &'static str, ptr: u64) -> Result<(), AttentionPlanError> {
    if ptr.is_multiple_of(16) {
        Ok(())
    } else {
        Err(AttentionPlanError::Misaligned { what, ptr })
    }
}

/// `4·B·H·Sq·Skv·D`: the two matrix products of attention.
pub fn attention_flops(b: usize, h: usize, seq_q: usize, seq_kv: usize, d: usize) -> f64 {
    4.0 * b as f64 * h as f64 * seq_q as f64 * seq_kv as f64 * d as f64
}

/// The problems a new kernel must get right before it is used (`CudaAttention::new`), as
/// (dtype, head dim, query length, key length), two heads each: one, two and several key tiles of
/// either kernel, partial tiles, and query and key lengths that differ.
pub fn self_test_problems() -> Vec<(AttnDType, usize, usize, usize)> {
    let mut problems = Vec::new();
    for dtype in [AttnDType::Bf16, AttnDType::F16] {
        for d in HEAD_DIMS {
            for (seq_q, seq_kv) in [(300, 300), (200, 50), (130, 100), (70, 150)] {
                problems.push((dtype, d, seq_q, seq_kv));
            }
        }
    }
    problems
}

/// `count` deterministic values in [-2, 2) (a xorshift sequence from `seed`), rounded to
/// `dtype`, as 16-bit patterns.
pub fn test_values(dtype: AttnDType, count: usize, seed: u64) -> Vec<u16> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = 4.0 * ((state >> 40) as f32 / (1u64 << 24) as f32) - 2.0;
            match dtype {
                AttnDType::Bf16 => half::bf16::from_f32(x).to_bits(),
                AttnDType::F16 => half::f16::from_f32(x).to_bits(),
            }
        })
        .collect()
}

/// A 16-bit pattern of `dtype` as f32.
pub fn bits_to_f32(dtype: AttnDType, bits: u16) -> f32 {
    match dtype {
        AttnDType::Bf16 => half::bf16::from_bits(bits).to_f32(),
        AttnDType::F16 => half::f16::from_bits(bits).to_f32(),
    }
}

/// The largest |out − reference| over a kernel's output (16-bit patterns of `dtype`); infinite
/// when any output is NaN or the lengths differ.
pub fn max_difference(dtype: AttnDType, out: &[u16], reference: &[f32]) -> f32 {
    if out.len() != reference.len() {
        return f32::INFINITY;
    }
    out.iter()
        .zip(reference)
        .map(|(&o, &r)| (bits_to_f32(dtype, o) - r).abs())
        .fold(0.0, |worst, d| {
            if d.is_nan() {
                f32::INFINITY
            } else {
                worst.max(d)
            }
        })
}

/// `softmax(q·kᵀ·scale)·v` in f32 (f64 accumulation) on dense `[B, H, S, D]` buffers: the
/// reference for checks. `None` when the buffer lengths do not match the sizes.
pub fn reference_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    [b, h, seq_q, seq_kv, d]: [usize; 5],
    scale: f32,
) -> Option<Vec<f32>> {
    let n_q = b * h * seq_q * d;
    let n_kv = b * h * seq_kv * d;
    if q.len() != n_q || k.len() != n_kv || v.len() != n_kv {
        return None;
    }
    let mut out = vec![0f32; n_q];
    let mut scores = vec![0f64; seq_kv];
    for bh in 0..b * h {
        let (qh, kh, vh) = (
            &q[bh * seq_q * d..][..seq_q * d],
            &k[bh * seq_kv * d..][..seq_kv * d],
            &v[bh * seq_kv * d..][..seq_kv * d],
        );
        for i in 0..seq_q {
            let qi = &qh[i * d..][..d];
            let mut max = f64::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                let kj = &kh[j * d..][..d];
                let dot: f64 = qi.iter().zip(kj).map(|(&x, &y)| x as f64 * y as f64).sum();
                *s = dot * scale as f64;
                max = max.max(*s);
            }
            let mut sum = 0f64;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let oi = &mut out[(bh * seq_q + i) * d..][..d];
            for (c, o) in oi.iter_mut().enumerate() {
                let acc: f64 = scores
                    .iter()
                    .enumerate()
                    .map(|(j, p)| p * vh[j * d + c] as f64)
                    .sum();
                *o = (acc / sum) as f32;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(shape: [usize; 4]) -> View4 {
        View4::contiguous(shape)
    }

    /// `[B, S, H, D]` memory seen as `[B, H, S, D]` (what `reshape` + `swap_dims(1, 2)` gives).
    fn heads_interleaved([b, h, s, d]: [usize; 4]) -> View4 {
        View4 {
            shape: [b, h, s, d],
            strides: [s * h * d, d, h * d, 1],
        }
    }

    #[test]
    fn flux_shape_plans_to_the_d128_kernel() {
        let shape = [1, 24, 4608, 128];
        let p = plan(dense(shape), dense(shape), dense(shape), AttnDType::Bf16).unwrap();
        // Batch 1: its stride is never stepped over.
        assert_eq!(p.q, [0, 4608 * 128, 128]);
        assert_eq!(p.out_shape(), shape);
        let l = p.launch(FlashKernel::Mma);
        assert_eq!(l.kernel, "flash_attn_fwd_bf16_d128");
        assert_eq!(l.grid, (36, 24, 1));
        assert_eq!(l.block, (256, 1, 1));
        // Four 64-row buffers of 136 bf16: fits the H100's 227 KiB opt-in, and an RTX 30x0's 99.
        assert_eq!(l.shared_bytes, 4 * 64 * 136 * 2);
        assert!(l.shared_bytes as usize <= 99 * 1024);
        let w = p.launch(FlashKernel::Wgmma);
        assert_eq!(w.kernel, "flash_attn_sm90_bf16_d128");
        assert_eq!((w.grid, w.block), (l.grid, l.block));
        // Q (128 rows) and four 96-row K/V buffers of 128 bf16, plus the alignment slack: within
        // Hopper's 227 KiB opt-in.
        assert_eq!(w.shared_bytes, (128 + 4 * 96) * 128 * 2 + 1024);
        assert!(w.shared_bytes as usize <= 227 * 1024);
        assert!((p.flops() - 4.0 * 24.0 * 4608.0 * 4608.0 * 128.0).abs() < 1.0);
    }

    #[test]
    fn instantiation_follows_dtype_and_head_dim() {
        for (dtype, d, name) in [
            (AttnDType::Bf16, 64, "flash_attn_fwd_bf16_d64"),
            (AttnDType::F16, 64, "flash_attn_fwd_f16_d64"),
            (AttnDType::F16, 128, "flash_attn_fwd_f16_d128"),
        ] {
            let shape = [2, 3, 100, d];
            let p = plan(dense(shape), dense(shape), dense(shape), dtype).unwrap();
            assert_eq!(p.launch(FlashKernel::Mma).kernel, name);
            assert!(FlashKernel::Mma.kernels().contains(&(name, d)));
            let hopper = name.replace("fwd", "sm90");
            assert_eq!(p.launch(FlashKernel::Wgmma).kernel, hopper);
            assert!(FlashKernel::Wgmma.kernels().contains(&(hopper.as_str(), d)));
        }
    }

    #[test]
    fn tails_round_the_grid_up() {
        let q = [1, 2, 1000, 64];
        let kv = [1, 2, 77, 64];
        let p = plan(dense(q), dense(kv), dense(kv), AttnDType::Bf16).unwrap();
        assert_eq!(p.launch(FlashKernel::Mma).grid, (8, 2, 1));
        assert_eq!(p.launch(FlashKernel::Wgmma).grid, (8, 2, 1));
        assert_eq!((p.seq_q, p.seq_kv), (1000, 77));
    }

    #[test]
    fn permuted_views_need_no_copy() {
        let shape = [2, 24, 4608, 128];
        let view = heads_interleaved(shape);
        let p = plan(view, view, view, AttnDType::Bf16).unwrap();
        assert_eq!(p.k, [4608 * 24 * 128, 128, 24 * 128]);
    }

    #[test]
    fn size_one_dims_ignore_their_strides() {
        let mut view = dense([1, 1, 10, 64]);
        view.strides = [3, 5, 64, 1];
        let p = plan(view, view, view, AttnDType::F16).unwrap();
        assert_eq!(p.q, [0, 0, 64]);
    }

    #[test]
    fn refuses_what_the_kernel_cannot_read() {
        let shape = [1, 2, 16, 64];
        let ok = dense(shape);
        // Head dim not unit-stride (a transposed view).
        let mut t = ok;
        t.strides = [2 * 16 * 64, 16 * 64, 1, 16];
        assert!(matches!(
            plan(t, ok, ok, AttnDType::Bf16),
            Err(AttentionPlanError::Layout { what: "q", .. })
        ));
        // A sequence stride that breaks 16-byte alignment.
        let mut m = ok;
        m.strides = [2 * 16 * 68, 16 * 68, 68, 1];
        assert!(matches!(
            plan(ok, ok, m, AttnDType::Bf16),
            Err(AttentionPlanError::Layout { what: "v", .. })
        ));
        assert_eq!(
            plan(
                dense([1, 2, 16, 80]),
                dense([1, 2, 16, 80]),
                dense([1, 2, 16, 80]),
                AttnDType::Bf16
            ),
            Err(AttentionPlanError::HeadDim(80))
        );
        assert!(matches!(
            plan(
                ok,
                dense([1, 3, 16, 64]),
                dense([1, 3, 16, 64]),
                AttnDType::Bf16
            ),
            Err(AttentionPlanError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            plan(ok, ok, dense([1, 2, 17, 64]), AttnDType::Bf16),
            Err(AttentionPlanError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            plan(dense([1, 2, 0, 64]), ok, ok, AttnDType::Bf16),
            Err(AttentionPlanError::Empty { .. })
        ));
        let many = dense([300, 300, 16, 64]);
        assert!(matches!(
            plan(many, many, many, AttnDType::Bf16),
            Err(AttentionPlanError::TooLarge(_))
        ));
        assert!(matches!(
            View4::from_slices("q", &[2, 16, 64], &[1024, 64, 1]),
            Err(AttentionPlanError::Rank { what: "q", rank: 3 })
        ));
        assert!(AttnDType::from_burn(DType::F32).is_err());
        assert_eq!(AttnDType::from_burn(DType::BF16), Ok(AttnDType::Bf16));
    }

    #[test]
    fn scale_alignment_and_arch() {
        assert!((scale_log2(0.125).unwrap() - 0.125 * std::f32::consts::LOG2_E).abs() < 1e-7);
        assert!(scale_log2(f32::NAN).is_err());
        assert!(scale_log2(f32::INFINITY).is_err());
        assert!(check_alignment("q", 0x7f00_0000_0100).is_ok());
        assert!(check_alignment("q", 0x7f00_0000_0108).is_err());
        assert_eq!(FlashKernel::Mma.nvrtc_arch(9, 0).unwrap(), "sm_90");
        assert_eq!(FlashKernel::Mma.nvrtc_arch(8, 6).unwrap(), "sm_86");
        assert!(FlashKernel::Mma.nvrtc_arch(7, 5).is_err());
        // wgmma needs the architecture-specific sm_90a target and exists on sm_90 alone.
        assert_eq!(FlashKernel::Wgmma.nvrtc_arch(9, 0).unwrap(), "sm_90a");
        assert_eq!(
            FlashKernel::Wgmma.nvrtc_arch(8, 9),
            Err(AttentionPlanError::NotHopper { major: 8, minor: 9 })
        );
        assert!(FlashKernel::Wgmma.nvrtc_arch(10, 0).is_err());
    }

    #[test]
    fn hopper_takes_wgmma_unless_told_otherwise() {
        assert_eq!(FlashKernel::for_device(9, 0, None), FlashKernel::Wgmma);
        assert_eq!(FlashKernel::for_device(9, 0, Some("mma")), FlashKernel::Mma);
        assert_eq!(
            FlashKernel::for_device(9, 0, Some("wgmma")),
            FlashKernel::Wgmma
        );
        assert_eq!(FlashKernel::for_device(8, 0, None), FlashKernel::Mma);
        assert_eq!(
            FlashKernel::for_device(8, 9, Some("wgmma")),
            FlashKernel::Mma
        );
        assert_eq!(FlashKernel::for_device(12, 0, None), FlashKernel::Mma);
    }

    #[test]
    fn self_test_covers_both_dtypes_and_tile_counts() {
        let problems = self_test_problems();
        for dtype in [AttnDType::Bf16, AttnDType::F16] {
            for d in HEAD_DIMS {
                assert!(problems.contains(&(dtype, d, 200, 50)));
            }
        }
        // One, two and more key tiles of each kernel; partial query and key tiles.
        for kernel in [FlashKernel::Mma, FlashKernel::Wgmma] {
            let tiles: Vec<_> = problems
                .iter()
                .map(|p| p.3.div_ceil(kernel.block_kv()))
                .collect();
            assert!(tiles.contains(&1) && tiles.contains(&2) && tiles.iter().any(|&t| t > 2));
            assert!(problems.iter().all(|p| p.3 % kernel.block_kv() != 0));
        }
        assert!(problems.iter().any(|p| p.2 < p.3) && problems.iter().any(|p| p.2 > p.3));
    }

    #[test]
    fn self_test_values_and_difference() {
        let bf = test_values(AttnDType::Bf16, 1000, 1);
        assert_eq!(bf, test_values(AttnDType::Bf16, 1000, 1));
        assert_ne!(bf, test_values(AttnDType::Bf16, 1000, 2));
        let as_f32: Vec<f32> = bf
            .iter()
            .map(|&b| bits_to_f32(AttnDType::Bf16, b))
            .collect();
        assert!(as_f32.iter().all(|x| (-2.0..=2.0).contains(x)));
        assert!(as_f32.iter().any(|&x| x < -1.0) && as_f32.iter().any(|&x| x > 1.0));
        let h = test_values(AttnDType::F16, 4, 1);
        assert_eq!(h.len(), 4);
        assert!((bits_to_f32(AttnDType::F16, h[0]) - as_f32[0]).abs() < 1e-2);
        // Exact output: no difference; one value off by 0.5; a NaN; a length mismatch.
        assert_eq!(max_difference(AttnDType::Bf16, &bf, &as_f32), 0.0);
        let mut shifted = as_f32.clone();
        shifted[7] += 0.5;
        assert!((max_difference(AttnDType::Bf16, &bf, &shifted) - 0.5).abs() < 1e-6);
        let mut broken = bf.clone();
        broken[3] = half::bf16::NAN.to_bits();
        assert_eq!(
            max_difference(AttnDType::Bf16, &broken, &as_f32),
            f32::INFINITY
        );
        assert_eq!(
            max_difference(AttnDType::Bf16, &bf[1..], &as_f32),
            f32::INFINITY
        );
    }

    /// The tile sizes the host plans with are the ones the kernel sources are compiled with.
    #[test]
    fn plan_tiles_match_the_kernel_sources() {
        for (kernel, source) in [
            (FlashKernel::Mma, FLASH_ATTN_CU),
            (FlashKernel::Wgmma, FLASH_ATTN_SM90_CU),
        ] {
            let defined = |name: &str| {
                source
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
                    .and_then(|v| v.trim().parse::<usize>().ok())
            };
            assert_eq!(defined("BR"), Some(BLOCK_Q), "{kernel:?}");
            assert_eq!(defined("BC"), Some(kernel.block_kv()), "{kernel:?}");
            let threads = defined("THREADS").or_else(|| defined("WARPS").map(|w| w * 32));
            assert_eq!(threads, Some(THREADS as usize), "{kernel:?}");
            // Every entry point the host loads is instantiated with its head dim and dtype.
            for (name, d) in kernel.kernels() {
                let bf16 = name.contains("bf16");
                let entry = format!("_ENTRY({name}, {d}, {bf16})");
                assert!(source.contains(&entry), "{kernel:?}: {entry} missing");
            }
        }
    }

    #[test]
    fn reference_is_a_weighted_mean_of_values() {
        // One query, two keys: equal scores average the values; a dominant score picks one.
        let v = [1.0, 2.0, 3.0, 4.0];
        let even =
            reference_attention(&[0.0, 0.0], &[1.0, 0.0, 0.0, 1.0], &v, [1, 1, 1, 2, 2], 1.0)
                .unwrap();
        assert_eq!(even, vec![2.0, 3.0]);
        let sharp = reference_attention(
            &[100.0, 0.0],
            &[1.0, 0.0, 0.0, 1.0],
            &v,
            [1, 1, 1, 2, 2],
            1.0,
        )
        .unwrap();
        assert!((sharp[0] - 1.0).abs() < 1e-6 && (sharp[1] - 2.0).abs() < 1e-6);
        assert!(reference_attention(&[0.0], &[], &[], [1, 1, 1, 1, 2], 1.0).is_none());
    }
}
