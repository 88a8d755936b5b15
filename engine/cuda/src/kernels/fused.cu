//! Fused element-wise and row kernels for transformer blocks on burn-cuda (weft issue 6),
//! compiled at run time by NVRTC (engine/src/device/fused.rs). Each replaces a chain of burn
//! kernels that would each read and write the whole activation: values are read once, computed
//! in f32 and rounded once to the storage type.
//!
//! Storage types: bf16 (as u16 bits, rounded to nearest even like the `half` crate) and f32.
//! Kernel names end in _bf16 or _f32. Every tensor is contiguous; shapes come as arguments.
//!
//! - gelu_tanh: y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), n elements.
//! - ln_modulate: y = LayerNorm(x)·(1 + scale[b]) + shift[b] over rows of `cols` values (no
//!   affine; f32 mean, then variance of the deviations), `rows_per_batch` rows per batch item.
//! - gate_residual: y = x + gate[b]·h, one block per row of `cols`, `rows_per_batch` rows per
//!   batch item.
//! - gemv: y = x·Wᵀ + bias for a few rows of x (modulation layers: one row per batch item), W
//!   bf16 [N, K] row-major with K a multiple of 8, x/bias/y of the storage type; one warp per
//!   output column reads its W row once in 16-byte loads and accumulates every row of x in f32.
//! - qk_norm_rope: one fused QKV projection [B, L, 3, H, D] split into q, k, v [B, H, L_out, D]
//!   written at token offset `l_offset`; q and k RMS-normalized (f32 statistics, rounded, times
//!   their scale, rounded, as BFL's RMSNorm) and rotated by the RoPE tables cos/sin [L_out, D]
//!   (f32, each angle repeated for both members of a pair) in f32.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// 16 bytes loaded at once (no CUDA headers: NVRTC's implicit ones differ between versions).
struct alignas(16) U4 {
    u32 x, y, z, w;
};

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

// half's f32_to_bf16: NaN keeps its sign and gets the quiet bit; else round to nearest even.
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (u16)((x >> 16) | 0x0040u);
    }
    return (u16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

struct Bf16 {
    typedef u16 T;
    static __device__ __forceinline__ float load(const u16 *p, u64 i) { return bf16_to_f32(p[i]); }
    static __device__ __forceinline__ void store(u16 *p, u64 i, float v) { p[i] = f32_to_bf16(v); }
    static __device__ __forceinline__ float round(float v) { return bf16_to_f32(f32_to_bf16(v)); }
};

struct F32 {
    typedef float T;
    static __device__ __forceinline__ float load(const float *p, u64 i) { return p[i]; }
    static __device__ __forceinline__ void store(float *p, u64 i, float v) { p[i] = v; }
    static __device__ __forceinline__ float round(float v) { return v; }
};

__device__ __forceinline__ float gelu_tanh_f(float v) {
    float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    return 0.5f * v * (1.0f + tanhf(inner));
}

template <class E>
__device__ void gelu_tanh(const typename E::T *x, typename E::T *y, u64 n) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        E::store(y, i, gelu_tanh_f(E::load(x, i)));
    }
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();  // scratch may still be read from the previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int warps = blockDim.x >> 5;
    v = lane < warps ? scratch[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One block per row.
template <class E>
__device__ void ln_modulate(const typename E::T *x, const typename E::T *shift,
                            const typename E::T *scale, typename E::T *y, u32 cols,
                            u32 rows_per_batch, float eps) {
    __shared__ float scratch[32];
    u64 row = blockIdx.x;
    u64 base = row * cols;
    u64 mod = (u64)(row / rows_per_batch) * cols;
    float sum = 0.0f;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) sum += E::load(x, base + c);
    float mean = block_sum(sum, scratch) / (float)cols;
    float dev = 0.0f;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        float d = E::load(x, base + c) - mean;
        dev += d * d;
    }
    float rstd = rsqrtf(block_sum(dev, scratch) / (float)cols + eps);
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = (E::load(x, base + c) - mean) * rstd;
        E::store(y, base + c, v * (1.0f + E::load(scale, mod + c)) + E::load(shift, mod + c));
    }
}

// One block per row (no per-element division).
template <class E>
__device__ void gate_residual(const typename E::T *x, const typename E::T *gate,
                              const typename E::T *h, typename E::T *y, u32 cols,
                              u32 rows_per_batch) {
    u64 row = blockIdx.x;
    u64 base = row * cols;
    u64 g = (u64)(row / rows_per_batch) * cols;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        E::store(y, base + c, E::load(x, base + c) + E::load(gate, g + c) * E::load(h, base + c));
    }
}

// One warp per (batch, token, head); lanes take pairs (2p, 2p + 1), p = lane, lane + 32, ...
// q_scale / k_scale have D values of the storage type.
template <class E>
__device__ void qk_norm_rope(const typename E::T *qkv, const typename E::T *q_scale,
                             const typename E::T *k_scale, const float *cos_t, const float *sin_t,
                             typename E::T *q, typename E::T *k, typename E::T *v, u32 batch,
                             u32 l_in, u32 heads, u32 d, u32 l_out, u32 l_offset, float eps) {
    u64 warp = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    u32 lane = threadIdx.x & 31;
    u64 items = (u64)batch * l_in * heads;
    if (warp >= items) return;  // whole warps leave together
    u32 h = (u32)(warp % heads);
    u64 bl = warp / heads;
    u32 l = (u32)(bl % l_in);
    u32 b = (u32)(bl / l_in);
    u64 hd = (u64)heads * d;
    u64 in_q = bl * 3 * hd + (u64)h * d;  // [b, l, 0, h, 0]
    u64 in_k = in_q + hd;
    u64 in_v = in_k + hd;
    u32 pos = l_offset + l;
    u64 out = (((u64)b * heads + h) * l_out + pos) * d;  // [b, h, pos, 0]
    u64 table = (u64)pos * d;
    u32 pairs = d >> 1;

    float q_ss = 0.0f, k_ss = 0.0f;
    for (u32 p = lane; p < pairs; p += 32) {
        float q0 = E::load(qkv, in_q + 2 * p), q1 = E::load(qkv, in_q + 2 * p + 1);
        float k0 = E::load(qkv, in_k + 2 * p), k1 = E::load(qkv, in_k + 2 * p + 1);
        q_ss += q0 * q0 + q1 * q1;
        k_ss += k0 * k0 + k1 * k1;
    }
    for (int o = 16; o > 0; o >>= 1) {
        q_ss += __shfl_xor_sync(0xffffffffu, q_ss, o);
        k_ss += __shfl_xor_sync(0xffffffffu, k_ss, o);
    }
    float q_r = rsqrtf(q_ss / (float)d + eps), k_r = rsqrtf(k_ss / (float)d + eps);
    for (u32 p = lane; p < pairs; p += 32) {
        u32 i0 = 2 * p, i1 = 2 * p + 1;
        float c0 = cos_t[table + i0], s0 = sin_t[table + i0];
        float c1 = cos_t[table + i1], s1 = sin_t[table + i1];
        float q0 = E::round(E::round(E::load(qkv, in_q + i0) * q_r) * E::load(q_scale, i0));
        float q1 = E::round(E::round(E::load(qkv, in_q + i1) * q_r) * E::load(q_scale, i1));
        float k0 = E::round(E::round(E::load(qkv, in_k + i0) * k_r) * E::load(k_scale, i0));
        float k1 = E::round(E::round(E::load(qkv, in_k + i1) * k_r) * E::load(k_scale, i1));
        E::store(q, out + i0, q0 * c0 - q1 * s0);
        E::store(q, out + i1, q1 * c1 + q0 * s1);
        E::store(k, out + i0, k0 * c0 - k1 * s0);
        E::store(k, out + i1, k1 * c1 + k0 * s1);
        v[out + i0] = qkv[in_v + i0];
        v[out + i1] = qkv[in_v + i1];
    }
}

#define GEMV_MAX_ROWS 4

template <class E>
__device__ void gemv(const typename E::T *x, const u16 *w, const typename E::T *bias,
                     typename E::T *y, u32 rows, u32 k, u32 n) {
    u32 lane = threadIdx.x & 31;
    u32 col = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (col >= n) return;  // whole warps leave together
    const u16 *row = w + (u64)col * k;
    float acc[GEMV_MAX_ROWS] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (u32 j = lane * 8; j < k; j += 32 * 8) {
        U4 packed = *reinterpret_cast<const U4 *>(row + j);
        u32 words[4] = {packed.x, packed.y, packed.z, packed.w};
        for (u32 t = 0; t < 4; ++t) {
            float w0 = bf16_to_f32((u16)(words[t] & 0xffffu));
            float w1 = bf16_to_f32((u16)(words[t] >> 16));
            for (u32 r = 0; r < GEMV_MAX_ROWS; ++r) {
                if (r < rows) {
                    u64 base = (u64)r * k + j + 2 * t;
                    acc[r] += w0 * E::load(x, base) + w1 * E::load(x, base + 1);
                }
            }
        }
    }
    for (u32 r = 0; r < GEMV_MAX_ROWS; ++r) {
        float v = acc[r];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0 && r < rows) {
            E::store(y, (u64)r * n + col, v + (bias ? E::load(bias, col) : 0.0f));
        }
    }
}

#define FUSED_ENTRIES(SUFFIX, E)                                                                  \
    extern "C" __global__ void gelu_tanh_##SUFFIX(const E::T *x, E::T *y, u64 n) {                \
        gelu_tanh<E>(x, y, n);                                                                    \
    }                                                                                             \
    extern "C" __global__ void ln_modulate_##SUFFIX(const E::T *x, const E::T *shift,             \
                                                   const E::T *scale, E::T *y, u32 cols,          \
                                                   u32 rows_per_batch, float eps) {               \
        ln_modulate<E>(x, shift, scale, y, cols, rows_per_batch, eps);                            \
    }                                                                                             \
    extern "C" __global__ void gate_residual_##SUFFIX(const E::T *x, const E::T *gate,            \
                                                     const E::T *h, E::T *y, u32 cols,            \
                                                     u32 rows_per_batch) {                        \
        gate_residual<E>(x, gate, h, y, cols, rows_per_batch);                                    \
    }                                                                                             \
    extern "C" __global__ void gemv_##SUFFIX(const E::T *x, const u16 *w, const E::T *bias,         \
                                            E::T *y, u32 rows, u32 k, u32 n) {                    \
        gemv<E>(x, w, bias, y, rows, k, n);                                                       \
    }                                                                                             \
    extern "C" __global__ void qk_norm_rope_##SUFFIX(                                             \
        const E::T *qkv, const E::T *q_scale, const E::T *k_scale, const float *cos_t,            \
        const float *sin_t, E::T *q, E::T *k, E::T *v, u32 batch, u32 l_in, u32 heads, u32 d,     \
        u32 l_out, u32 l_offset, float eps) {                                                     \
        qk_norm_rope<E>(qkv, q_scale, k_scale, cos_t, sin_t, q, k, v, batch, l_in, heads, d,      \
                        l_out, l_offset, eps);                                                    \
    }

FUSED_ENTRIES(bf16, Bf16)
FUSED_ENTRIES(f32, F32)
