//! torch's CPU generator: `torch.manual_seed(seed); torch.randn(shape)` for f32, bit for bit.
//!
//! ComfyUI draws its initial noise this way (`comfy.sample.prepare_noise`), and, on the CPU, the
//! noise of ancestral samplers too. The pieces, as in ATen (`CPUGeneratorImpl`, `MT19937RNGEngine.h`,
//! `DistributionTemplates.h`):
//! - the engine is the standard MT19937, seeded with the low 32 bits of the seed;
//! - a float uniform is `(random() & 0xFFFFFF) * 2^-24`, a double uniform
//!   `(random64() & (2^53 - 1)) * 2^-53` with `random64 = hi << 32 | lo` from two draws;
//! - `randn` on a contiguous f32 tensor of at least 16 elements fills the buffer with uniforms, then
//!   converts it 16 at a time by Box-Muller ([`normal_fill`]); when the length is not a multiple
//!   of 16 the last 16 values are drawn again and converted again;
//! - below 16 elements it takes the scalar path: one double Box-Muller per two values
//!   (`at::normal_distribution<double>`, with libm's `log1p`, `sin`, `cos`), the second value
//!   cached in the generator, each result rounded to f32.
//!
//! The large-tensor path reproduces x86-64 torch (AVX2 kernels, which AVX-512 machines use too).
//! torch on other CPUs (aarch64, e.g. Apple silicon) uses libm `logf`/`sinf`/`cosf` there and
//! differs in the last bits; that is torch's own platform difference.
use super::SamplingError;
use super::avx_mathfun::normal_fill;

const MT_N: usize = 624;
const MT_M: usize = 397;

/// The 32-bit Mersenne Twister, as `at::mt19937` (the standard MT19937).
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; MT_N],
    index: usize,
}

impl Mt19937 {
    /// Seeds like `at::mt19937(seed)`: only the low 32 bits count.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed as u32;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self { state, index: MT_N }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        let state = &mut self.state;
        let mix = |upper: u32, lower: u32, far: u32| {
            let y = (upper & UPPER) | (lower & LOWER);
            far ^ (y >> 1) ^ if y & 1 == 1 { MATRIX_A } else { 0 }
        };
        for i in 0..MT_N - MT_M {
            state[i] = mix(state[i], state[i + 1], state[i + MT_M]);
        }
        for i in MT_N - MT_M..MT_N - 1 {
            state[i] = mix(state[i], state[i + 1], state[i + MT_M - MT_N]);
        }
        state[MT_N - 1] = mix(state[MT_N - 1], state[0], state[MT_M - 1]);
        self.index = 0;
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// A torch CPU generator (`torch.Generator()` / the default generator after `torch.manual_seed`).
#[derive(Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    /// `next_double_normal_sample`: the second value of the scalar path's last Box-Muller pair.
    next_double_normal: Option<f64>,
}

impl TorchGenerator {
    /// `torch.manual_seed(seed)`: a fresh engine and no cached normal.
    pub fn manual_seed(seed: u64) -> Self {
        Self {
            engine: Mt19937::new(seed),
            next_double_normal: None,
        }
    }

    /// `CPUGeneratorImpl::random`: 32 bits.
    pub fn random(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// `CPUGeneratorImpl::random64`: the first draw is the high half.
    pub fn random64(&mut self) -> u64 {
        let hi = u64::from(self.random());
        let lo = u64::from(self.random());
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.random() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `at::normal_distribution<double>(0, 1)`: the scalar path, with its cache.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(radius * theta.sin());
        radius * theta.cos()
    }

    /// `torch.randn` into a contiguous f32 buffer (mean 0, std 1).
    pub fn randn_into(&mut self, out: &mut [f32]) {
        let size = out.len();
        if size < 16 {
            for value in out.iter_mut() {
                *value = self.normal_f64() as f32;
            }
            return;
        }
        for value in out.iter_mut() {
            *value = self.uniform_f32();
        }
        normal_fill(out, 0.0, 1.0);
        if !size.is_multiple_of(16) {
            let tail = &mut out[size - 16..];
            for value in tail.iter_mut() {
                *value = self.uniform_f32();
            }
            normal_fill(tail, 0.0, 1.0);
        }
    }

    /// `torch.randn(shape)`: a new buffer of `shape.iter().product()` values, row-major.
    pub fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        let mut out = vec![0.0; shape.iter().product()];
        self.randn_into(&mut out);
        out
    }
}

/// `torch.manual_seed(seed); torch.randn(shape)` — the noise ComfyUI's KSampler starts from.
pub fn torch_randn(seed: u64, shape: &[usize]) -> Vec<f32> {
    TorchGenerator::manual_seed(seed).randn(shape)
}

/// The most single-latent draws [`prepare_noise`] makes for a `batch_index`.
pub const MAX_BATCH_INDEX: usize = 65_536;

/// ComfyUI's `prepare_noise(latent, seed, noise_inds)`: without a batch index, [`torch_randn`] of
/// the whole `[batch, ...]` shape; with one (a latent's `batch_index`), one generator draws a
/// single latent's noise `max(index) + 1` times and latent `k` gets draw `batch_index[k]`, so a
/// latent keeps its noise when the batch around it changes.
pub fn prepare_noise(
    seed: u64,
    shape: &[usize],
    batch_index: Option<&[usize]>,
) -> Result<Vec<f32>, SamplingError> {
    let Some(indices) = batch_index else {
        return Ok(torch_randn(seed, shape));
    };
    let (Some(&batch), Some(sample_shape)) = (shape.first(), shape.get(1..)) else {
        return Err(SamplingError::invalid("shape", "has no batch dimension"));
    };
    if indices.len() != batch {
        return Err(SamplingError::invalid(
            "batch_index",
            format!("has {} entries for a batch of {batch}", indices.len()),
        ));
    }
    let max = indices.iter().copied().max().unwrap_or(0);
    if max >= MAX_BATCH_INDEX {
        return Err(SamplingError::invalid(
            "batch_index",
            format!("{max} is above {}", MAX_BATCH_INDEX - 1),
        ));
    }
    let draws = if indices.is_empty() { 0 } else { max + 1 };
    let mut generator = TorchGenerator::manual_seed(seed);
    let per_sample: usize = sample_shape.iter().product();
    let mut drawn = vec![Vec::new(); draws];
    for (i, slot) in drawn.iter_mut().enumerate() {
        let noise = generator.randn(sample_shape);
        if indices.contains(&i) {
            *slot = noise;
        }
    }
    let mut out = Vec::with_capacity(per_sample * batch);
    for &index in indices {
        out.extend_from_slice(&drawn[index]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_is_the_standard_engine() {
        // C++ [rand.predef]: the 10000th output of a default-constructed mt19937 is 4123659995.
        let mut engine = Mt19937::new(5489);
        let last = (0..10_000).map(|_| engine.next_u32()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    #[test]
    fn randn_starts_like_torch_seed_0() {
        // torch.manual_seed(0); torch.randn(16)[:4]
        let got: Vec<u32> = torch_randn(0, &[16])[..4]
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(got, [0xbf90_1b85, 0xbf93_808a, 0xbe80_4bd6, 0xbede_255d]);
    }
}
