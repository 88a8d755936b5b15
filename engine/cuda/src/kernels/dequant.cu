//! GPU dequantization of ggml blocks (weft issue 6), compiled at run time by NVRTC
//! (engine/src/device/dequant.rs) with --fmad=false --ftz=false.
//!
//! Every value is computed in f32 with the same operations, in the same order, as the CPU
//! dequantizer (engine/formats/src/gguf/dequant.rs), then rounded to nearest-even to the output
//! type exactly as the `half` crate does (NaN included), so the device copy is bit for bit the
//! host's `half::{bf16,f16}::from_f32(cpu_value)`. Products and sums use the __f*_rn intrinsics,
//! which are never contracted into FMAs, whatever the compiler flags.
//!
//! Geometry: thread t writes outputs [8t, 8t + 8) (one 16-byte store for f16/bf16, two for f32),
//! in a grid-stride loop; 8 divides every block size, so a group never straddles two blocks.
//! Kernel names: dequant_<type>_<out>, e.g. dequant_q4_k_bf16; signature
//! (const unsigned char *in, void *out, unsigned long long n_elements).

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// ---- conversions, bit-exact with the `half` crate -------------------------------------------
// (Outside NVRTC, __CUDA_ARCH__ is undefined and the two hardware conversions come from the
// includer: tools/check_dequant_kernels_host.py compiles this file on the CPU against gguf-py.)

// f16 bits -> f32: the hardware conversion is exact for every finite value and infinity; NaN
// keeps its payload with the quiet bit set, as half's f16::to_f32 does.
__device__ __forceinline__ float f16_to_f32(u16 h) {
    if ((h & 0x7fffu) > 0x7c00u) {
        return __uint_as_float(((u32)(h & 0x8000u) << 16) | 0x7fc00000u | ((u32)(h & 0x03ffu) << 13));
    }
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    return host_f16_to_f32(h);
#endif
}

// f32 -> f16 bits, round to nearest even (cvt.rn is IEEE's; subnormals kept); NaN as half's
// f32_to_f16: sign | 0x7C00 | 0x0200 | mantissa >> 13.
__device__ __forceinline__ u16 f32_to_f16_bits(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (u16)(((x >> 16) & 0x8000u) | 0x7e00u | ((x & 0x007fffffu) >> 13));
    }
#ifdef __CUDA_ARCH__
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    return host_f32_to_f16_rn(f);
#endif
}

// f32 -> bf16 bits, half's f32_to_bf16 verbatim.
__device__ __forceinline__ u16 f32_to_bf16_bits(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (u16)((x >> 16) | 0x0040u);
    }
    if ((x & 0x8000u) != 0 && (x & 0x17fffu) != 0) {
        return (u16)((x >> 16) + 1);
    }
    return (u16)(x >> 16);
}

__device__ __forceinline__ float ld_f16(const u8 *p) {
    return f16_to_f32((u16)(p[0] | (p[1] << 8)));
}

// ---- output: 8 consecutive values ------------------------------------------------------------

#define OUT_F32 0
#define OUT_F16 1
#define OUT_BF16 2

template <int OUT> struct Store;

template <> struct Store<OUT_F32> {
    static __device__ __forceinline__ void group(void *out, u64 e, const float *v, bool aligned) {
        float *o = (float *)out + e;
        if (aligned) {
            float4 a, b;
            a.x = v[0]; a.y = v[1]; a.z = v[2]; a.w = v[3];
            b.x = v[4]; b.y = v[5]; b.z = v[6]; b.w = v[7];
            ((float4 *)o)[0] = a;
            ((float4 *)o)[1] = b;
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) o[i] = v[i];
        }
    }
    static __device__ __forceinline__ void one(void *out, u64 e, float v) { ((float *)out)[e] = v; }
};

template <int OUT> __device__ __forceinline__ u16 to_bits(float f) {
    return OUT == OUT_F16 ? f32_to_f16_bits(f) : f32_to_bf16_bits(f);
}

template <int OUT> struct Store16 {
    static __device__ __forceinline__ void group(void *out, u64 e, const float *v, bool aligned) {
        u16 *o = (u16 *)out + e;
        u16 h[8];
#pragma unroll
        for (int i = 0; i < 8; i++) h[i] = to_bits<OUT>(v[i]);
        if (aligned) {
            uint4 w;
            w.x = (u32)h[0] | ((u32)h[1] << 16);
            w.y = (u32)h[2] | ((u32)h[3] << 16);
            w.z = (u32)h[4] | ((u32)h[5] << 16);
            w.w = (u32)h[6] | ((u32)h[7] << 16);
            *(uint4 *)o = w;
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) o[i] = h[i];
        }
    }
    static __device__ __forceinline__ void one(void *out, u64 e, float v) {
        ((u16 *)out)[e] = to_bits<OUT>(v);
    }
};
template <> struct Store<OUT_F16> : Store16<OUT_F16> {};
template <> struct Store<OUT_BF16> : Store16<OUT_BF16> {};

// ---- the block types: dq(block, o, v) writes elements o..o+8 of the block (o % 8 == 0) -------

// The IQ4_NL / IQ4_XS codebook, packed into two words (register lookups, no divergent loads).
// Bytes, little-endian: -127 -104 -83 -65 -49 -35 -22 -10 | 1 13 25 38 53 69 89 113.
__device__ __forceinline__ int kvalue_iq4nl(u32 n) {
    const u64 lo = 0xF6EADDCFBFAD9881ull;
    const u64 hi = 0x7159453526190D01ull;
    u64 w = n < 8 ? lo : hi;
    return (int)(signed char)(u8)(w >> (8 * (n & 7)));
}

struct Q4_0 {
    static const int QK = 32, SIZE = 18;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        float d = ld_f16(b);
        const u8 *q = b + 2 + (o & 15);
        int sh = (o >> 4) * 4;
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fmul_rn(d, (float)((int)((q[i] >> sh) & 15) - 8));
    }
};

struct Q4_1 {
    static const int QK = 32, SIZE = 20;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        float d = ld_f16(b), m = ld_f16(b + 2);
        const u8 *q = b + 4 + (o & 15);
        int sh = (o >> 4) * 4;
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fadd_rn(__fmul_rn(d, (float)((q[i] >> sh) & 15)), m);
    }
};

struct Q5_0 {
    static const int QK = 32, SIZE = 22;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        float d = ld_f16(b);
        u32 qh = (u32)b[2] | ((u32)b[3] << 8) | ((u32)b[4] << 16) | ((u32)b[5] << 24);
        const u8 *q = b + 6 + (o & 15);
        int sh = (o >> 4) * 4;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int x = ((q[i] >> sh) & 15) | (((qh >> (o + i)) & 1) << 4);
            v[i] = __fmul_rn(d, (float)(x - 16));
        }
    }
};

struct Q5_1 {
    static const int QK = 32, SIZE = 24;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        float d = ld_f16(b), m = ld_f16(b + 2);
        u32 qh = (u32)b[4] | ((u32)b[5] << 8) | ((u32)b[6] << 16) | ((u32)b[7] << 24);
        const u8 *q = b + 8 + (o & 15);
        int sh = (o >> 4) * 4;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int x = ((q[i] >> sh) & 15) | (((qh >> (o + i)) & 1) << 4);
            v[i] = __fadd_rn(__fmul_rn(d, (float)x), m);
        }
    }
};

struct Q8_0 {
    static const int QK = 32, SIZE = 34;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        float d = ld_f16(b);
        const u8 *q = b + 2 + o;
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fmul_rn((float)(signed char)q[i], d);
    }
};

// 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit quants, d, dmin.
struct Q2_K {
    static const int QK = 256, SIZE = 84;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        float d = ld_f16(b + 80), dmin = ld_f16(b + 82);
        u32 sc = b[o >> 4];
        float dl = __fmul_rn(d, (float)(sc & 15));
        float ml = __fmul_rn(dmin, (float)(sc >> 4));
        int g = o >> 7, s = (o >> 5) & 3, l = o & 31;
        const u8 *q = b + 16 + g * 32 + l;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            v[i] = __fsub_rn(__fmul_rn(dl, (float)((q[i] >> (2 * s)) & 3)), ml);
        }
    }
};

// 32 bytes of high-bit mask, 64 bytes of 2-bit quants, 12 bytes of 6-bit scales, d.
struct Q3_K {
    static const int QK = 256, SIZE = 110;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        const u8 *sc = b + 96;
        float d = ld_f16(b + 108);
        int j = o >> 4;
        int low = (sc[j % 8] >> (4 * (j / 8))) & 15;
        int high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        float dl = __fmul_rn(d, (float)((low | (high << 4)) - 32));
        int g = o >> 7, s = (o >> 5) & 3, l = o & 31;
        const u8 *qs = b + 32 + g * 32 + l;
        const u8 *hm = b + l;
        int bit = g * 4 + s;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int ql = (qs[i] >> (2 * s)) & 3;
            int qh = ((hm[i] >> bit) & 1) ^ 1;
            v[i] = __fmul_rn(dl, (float)(ql - (qh << 2)));
        }
    }
};

// The (scale, min) pair of sub-block j of Q4_K/Q5_K, 6 bits each, packed in 12 bytes.
__device__ __forceinline__ void k_scale_min(const u8 *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 2) & 0x30);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
    }
}

// d, dmin, 12 bytes of scales/mins, 128 bytes of nibbles (sub-block j = 2g + h: nibble h of
// bytes g*32 .. g*32+32).
struct Q4_K {
    static const int QK = 256, SIZE = 144;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        float d = ld_f16(b), dmin = ld_f16(b + 2);
        int j = o >> 5, sc, mn;
        k_scale_min(b + 4, j, &sc, &mn);
        float dj = __fmul_rn(d, (float)sc);
        float mj = __fmul_rn(dmin, (float)mn);
        const u8 *q = b + 16 + (j >> 1) * 32 + (o & 31);
        int sh = 4 * (j & 1);
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fsub_rn(__fmul_rn(dj, (float)((q[i] >> sh) & 15)), mj);
    }
};

// As Q4_K plus 32 bytes of fifth bits (bit j of byte l: element l of sub-block j).
struct Q5_K {
    static const int QK = 256, SIZE = 176;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        float d = ld_f16(b), dmin = ld_f16(b + 2);
        int j = o >> 5, sc, mn;
        k_scale_min(b + 4, j, &sc, &mn);
        float dj = __fmul_rn(d, (float)sc);
        float mj = __fmul_rn(dmin, (float)mn);
        int l = o & 31;
        const u8 *qh = b + 16 + l;
        const u8 *q = b + 48 + (j >> 1) * 32 + l;
        int sh = 4 * (j & 1);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int x = ((q[i] >> sh) & 15) | (((qh[i] >> j) & 1) << 4);
            v[i] = __fsub_rn(__fmul_rn(dj, (float)x), mj);
        }
    }
};

// 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, d.
struct Q6_K {
    static const int QK = 256, SIZE = 210;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        float d = ld_f16(b + 208);
        float dl = __fmul_rn(d, (float)(signed char)b[192 + (o >> 4)]);
        int g = o >> 7, s = (o >> 5) & 3, l = o & 31;
        const u8 *ql = b + g * 64 + (s & 1) * 32 + l;
        const u8 *qh = b + 128 + g * 32 + l;
        int lo_shift = 4 * (s >> 1);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int low = (ql[i] >> lo_shift) & 15;
            int high = (qh[i] >> (2 * s)) & 3;
            v[i] = __fmul_rn(dl, (float)((low | (high << 4)) - 32));
        }
    }
};

struct IQ4_NL {
    static const int QK = 32, SIZE = 18;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        float d = ld_f16(b);
        const u8 *q = b + 2 + (o & 15);
        int sh = (o >> 4) * 4;
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fmul_rn(d, (float)kvalue_iq4nl((q[i] >> sh) & 15));
    }
};

// d, scales_h (2 high bits per sub-block), 4 bytes of low scale nibbles, 128 bytes of codebook
// indices (sub-block i: 16 bytes, low nibbles first).
struct IQ4_XS {
    static const int QK = 256, SIZE = 136;
    static __device__ __forceinline__ void dq(const u8 *b, int o, float *v) {
        float d = ld_f16(b);
        u32 scales_h = (u32)b[2] | ((u32)b[3] << 8);
        int i = o >> 5, p = o & 31;
        int low = (b[4 + i / 2] >> (4 * (i % 2))) & 15;
        int high = (scales_h >> (2 * i)) & 3;
        float dl = __fmul_rn(d, (float)((low | (high << 4)) - 32));
        const u8 *q = b + 8 + i * 16 + (p & 15);
        int sh = 4 * (p >> 4);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = __fmul_rn(dl, (float)kvalue_iq4nl((q[k] >> sh) & 15));
    }
};

template <typename T, int OUT>
__device__ __forceinline__ void quant_kernel(const u8 *__restrict__ in, void *__restrict__ out, u64 n) {
    const bool aligned = (((u64)out) & 15) == 0;
    const u64 groups = n / 8;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 g = (u64)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        u64 e = g * 8;
        u64 blk = e / T::QK;
        int o = (int)(e - blk * T::QK);
        float v[8];
        T::dq(in + blk * T::SIZE, o, v);
        Store<OUT>::group(out, e, v, aligned);
    }
}

// ---- plain types: F32, F16, BF16 (any element count; a partial last group) ------------------

struct PlainF32 {
    static const int ALIGN = 4;
    static __device__ __forceinline__ void load8(const u8 *p, float *v, bool vec) {
        const float *f = (const float *)p;
        if (vec) {
            float4 a = ((const float4 *)f)[0], b = ((const float4 *)f)[1];
            v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
            v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = f[i];
        }
    }
    static __device__ __forceinline__ float load1(const u8 *p, u64 i) { return ((const float *)p)[i]; }
    static const int BYTES = 4;
};

template <bool BF> struct Plain16 {
    static __device__ __forceinline__ float cvt(u32 h) {
        return BF ? __uint_as_float(h << 16) : f16_to_f32((u16)h);
    }
    static __device__ __forceinline__ void load8(const u8 *p, float *v, bool vec) {
        const u16 *h = (const u16 *)p;
        if (vec) {
            uint4 w = *(const uint4 *)h;
            u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                v[2 * i] = cvt(words[i] & 0xffffu);
                v[2 * i + 1] = cvt(words[i] >> 16);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = cvt(h[i]);
        }
    }
    static __device__ __forceinline__ float load1(const u8 *p, u64 i) { return cvt(((const u16 *)p)[i]); }
    static const int BYTES = 2;
};
typedef Plain16<false> PlainF16;
typedef Plain16<true> PlainBF16;

template <typename T, int OUT>
__device__ __forceinline__ void plain_kernel(const u8 *__restrict__ in, void *__restrict__ out, u64 n) {
    const bool out_aligned = (((u64)out) & 15) == 0;
    const bool in_aligned = (((u64)in) & 15) == 0;
    const u64 groups = (n + 7) / 8;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 g = (u64)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += stride) {
        u64 e = g * 8;
        if (e + 8 <= n) {
            float v[8];
            T::load8(in + e * T::BYTES, v, in_aligned);
            Store<OUT>::group(out, e, v, out_aligned);
        } else {
            for (u64 i = e; i < n; i++) Store<OUT>::one(out, i, T::load1(in, i));
        }
    }
}

// ---- entry points ----------------------------------------------------------------------------

#define ENTRY(name, body, T, OUT)                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        name(const u8 *__restrict__ in, void *__restrict__ out, u64 n) {                          \
        body<T, OUT>(in, out, n);                                                                  \
    }
#define ENTRIES(lower, body, T)                                                                    \
    ENTRY(dequant_##lower##_f32, body, T, OUT_F32)                                                 \
    ENTRY(dequant_##lower##_f16, body, T, OUT_F16)                                                 \
    ENTRY(dequant_##lower##_bf16, body, T, OUT_BF16)

ENTRIES(q4_0, quant_kernel, Q4_0)
ENTRIES(q4_1, quant_kernel, Q4_1)
ENTRIES(q5_0, quant_kernel, Q5_0)
ENTRIES(q5_1, quant_kernel, Q5_1)
ENTRIES(q8_0, quant_kernel, Q8_0)
ENTRIES(q2_k, quant_kernel, Q2_K)
ENTRIES(q3_k, quant_kernel, Q3_K)
ENTRIES(q4_k, quant_kernel, Q4_K)
ENTRIES(q5_k, quant_kernel, Q5_K)
ENTRIES(q6_k, quant_kernel, Q6_K)
ENTRIES(iq4_nl, quant_kernel, IQ4_NL)
ENTRIES(iq4_xs, quant_kernel, IQ4_XS)
ENTRIES(f32, plain_kernel, PlainF32)
ENTRIES(f16, plain_kernel, PlainF16)
ENTRIES(bf16, plain_kernel, PlainBF16)
