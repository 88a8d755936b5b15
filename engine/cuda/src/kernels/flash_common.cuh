// flash_common.cuh: what weft's two flash-attention kernels share (issue 6): the 16-bit value
// bits, inline-PTX helpers (shared addresses, cp.async, conversion, exp2, shuffles) and the
// online-softmax step on m16n8k16-layout accumulators. Prepended to `flash_attn.cu` (sm_80+,
// mma.sync) and `flash_attn_sm90.cu` (sm_90a, wgmma) by engine/src/device/attention.rs.
//
// No headers: NVRTC's implicit declarations differ between CUDA versions, so every device
// intrinsic used here is inline PTX, and the 16-bit values are plain `unsigned short` bits.

typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

// NVRTC predefines these (as nvcc's host_defines.h does); the fallbacks only guard against a
// toolkit that does not.
#ifndef __forceinline__
#define __forceinline__ __inline__ __attribute__((always_inline))
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
#endif

static __device__ __forceinline__ float neg_inf() {
    float x;
    asm("mov.f32 %0, 0fFF800000;" : "=f"(x));
    return x;
}

static __device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

static __device__ __forceinline__ void barrier() { asm volatile("bar.sync 0;" ::: "memory"); }

// 16 bytes global -> shared, asynchronously; `src_bytes` = 0 zero-fills (rows past the end).
static __device__ __forceinline__ void cp_async_16(u32 dst, const void* src, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                 "r"(src_bytes)
                 : "memory");
}

static __device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N> static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Copies rows [row0, row0 + ROWS) of a [seq, D] matrix (row stride `stride` elements, unit
// column stride) into shared memory at `dst`, 16-byte chunk c of tile row r at byte offset
// place(r, c); NTHREADS threads share the chunks. Rows at or past `seq` are zero-filled without
// reading global memory (the address is clamped to row 0 anyway).
template <int ROWS, int D, int NTHREADS, class Place>
static __device__ __forceinline__ void load_rows(u32 dst, const u16* src, i64 stride, int row0,
                                                 int seq, int tid, Place place) {
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    static_assert((ROWS * CHUNKS) % NTHREADS == 0, "tile chunks must divide among the threads");
#pragma unroll
    for (int i = 0; i < ROWS * CHUNKS / NTHREADS; ++i) {
        const int chunk = tid + i * NTHREADS;
        const int r = chunk / CHUNKS, c = chunk % CHUNKS;
        const int row = row0 + r;
        const bool valid = row < seq;
        const u16* p = src + (valid ? (i64)row * stride : (i64)0) + c * 8;
        cp_async_16(dst + place(r, c), p, valid ? 16u : 0u);
    }
}

// 4 bytes into shared memory.
static __device__ __forceinline__ void st_shared_b32(u32 addr, u32 value) {
    asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(value) : "memory");
}

// 16 bytes from shared memory at `src` to global memory at `dst` (an output row's chunk).
static __device__ __forceinline__ void copy_out_16(u32 src, u16* dst) {
    u32 x0, x1, x2, x3;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(x0), "=r"(x1), "=r"(x2), "=r"(x3)
                 : "r"(src));
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(x0), "r"(x1), "r"(x2),
                 "r"(x3)
                 : "memory");
}

// Two f32 -> one register of two 16-bit values, `lo` in the low half. cvt's first source goes to
// the high half.
template <bool BF16> static __device__ __forceinline__ u32 pack(float lo, float hi) {
    u32 r;
    if constexpr (BF16) {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
}

// 2^x; ex2(-inf) = +0.
static __device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

static __device__ __forceinline__ float shfl_xor(float x, int mask) {
    float y;
    asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=f"(y) : "f"(x), "r"(mask));
    return y;
}

static __device__ __forceinline__ float fmax2(float a, float b) { return a > b ? a : b; }

// One key tile's online-softmax step on a warp's S accumulators (the m16n8k16 C layout, which
// the wgmma m64nNk16 accumulators repeat per warp): the scores `s` [NS n-tiles of 8 keys][4],
// taken in log2 units (times `scale_log2`) and masked past `seq_kv` (the tile starts at key
// `kv0`), update the running row maxima and sums (rows g and g + 8), and P = 2^(s - max) is
// packed into `pf`, the A fragments of P·V (keys 16j..16j+15 are S tiles 2j and 2j + 1:
// a[0] = S[2j].c[0,1], a[1] = S[2j].c[2,3], a[2] = S[2j+1].c[0,1], a[3] = S[2j+1].c[2,3]).
// `rescale` receives the factor the output accumulators must be multiplied by (rescale_rows)
// before this tile's P·V. `s` is only read: the wgmma kernel overlaps this with a product, and
// writing a product's accumulator registers meanwhile would make the compiler serialize it.
template <int NS, bool BF16>
static __device__ __forceinline__ void softmax_scores(const float (&s)[NS][4], float (&row_max)[2],
                                                      float (&row_sum)[2], u32 (&pf)[NS / 2][4],
                                                      float (&rescale)[2], int kv0, int seq_kv,
                                                      int t, float scale_log2) {
    const bool tail = kv0 + NS * 8 > seq_kv;
    auto valid = [&](int n, int e) { return !tail || kv0 + n * 8 + 2 * t + (e & 1) < seq_kv; };
    float tile_max[2] = {row_max[0], row_max[1]};
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            if (valid(n, e)) tile_max[e >> 1] = fmax2(tile_max[e >> 1], s[n][e] * scale_log2);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmax2(tile_max[r], shfl_xor(tile_max[r], 1));
        tile_max[r] = fmax2(tile_max[r], shfl_xor(tile_max[r], 2));
    }
    // Every tile holds at least one real key, so tile_max is finite here and
    // ex2(-inf - finite) = 0 on the first tile.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        rescale[r] = ex2(row_max[r] - tile_max[r]);
        row_max[r] = tile_max[r];
        row_sum[r] *= rescale[r];
    }
#pragma unroll
    for (int n = 0; n < NS; ++n) {
        float p[4];
#pragma unroll
        for (int e = 0; e < 4; ++e)
            p[e] = valid(n, e) ? ex2(s[n][e] * scale_log2 - row_max[e >> 1]) : 0.f;
        row_sum[0] += p[0] + p[1];
        row_sum[1] += p[2] + p[3];
        pf[n / 2][(n & 1) * 2 + 0] = pack<BF16>(p[0], p[1]);
        pf[n / 2][(n & 1) * 2 + 1] = pack<BF16>(p[2], p[3]);
    }
}

// Output accumulators (rows g and g + 8) times the rows' rescale factors.
template <int NO>
static __device__ __forceinline__ void rescale_rows(float (&acc)[NO][4], const float (&rescale)[2]) {
#pragma unroll
    for (int n = 0; n < NO; ++n) {
        acc[n][0] *= rescale[0];
        acc[n][1] *= rescale[0];
        acc[n][2] *= rescale[1];
        acc[n][3] *= rescale[1];
    }
}

// softmax_scores, then the output rescaled at once (the kernels that wait for P·V first).
template <int NS, int NO, bool BF16>
static __device__ __forceinline__ void softmax_tile(float (&s)[NS][4], float (&acc)[NO][4],
                                                    float (&row_max)[2], float (&row_sum)[2],
                                                    u32 (&pf)[NS / 2][4], int kv0, int seq_kv,
                                                    int t, float scale_log2) {
    float rescale[2];
    softmax_scores<NS, BF16>(s, row_max, row_sum, pf, rescale, kv0, seq_kv, t, scale_log2);
    rescale_rows<NO>(acc, rescale);
}

// 1 / (full row sum) for rows g and g + 8: the lane's partial sums reduced over its quad.
static __device__ __forceinline__ void row_inverse(const float (&row_sum)[2], float (&inv)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = row_sum[r];
        l += shfl_xor(l, 1);
        l += shfl_xor(l, 2);
        inv[r] = 1.f / l;
    }
}
