// flash_attn_sm90.cu: weft's Hopper flash-attention forward kernel (issue 6), compiled at run time
// by NVRTC for sm_90a (engine/src/device/attention.rs) with flash_common.cuh prepended. Same
// contract as flash_attn.cu: O = softmax(Q·Kᵀ·scale)·V for Q [B, H, Sq, D], K and V [B, H, Skv, D],
// bf16 or f16, no mask, f32 accumulation and online softmax; unit-stride rows, free batch /
// head / sequence strides (multiples of 8 elements), 16-byte aligned bases.
//
// Why a second kernel: mma.sync feeds Hopper's tensor cores from registers that ldmatrix fills,
// one 16-row warp tile at a time; flash_attn.cu so reaches about a third of the H100's bf16 rate.
// wgmma lets a warpgroup (4 warps, 64 query rows) multiply straight out of shared memory with
// N up to 256, so one instruction does 64 × 128 × 16 and the operand traffic through registers
// disappears.
//
// Work split. One CTA = 2 warpgroups = BR = 128 query rows of one (batch, head); warpgroup w owns
// rows 64w..64w+63, warp i of it rows 16i..16i+15 of those. Keys and values stream through
// shared memory in tiles of BC = 96 rows, double-buffered with cp.async (all 256 threads load).
// The products:
//   S = Q·Kᵀ    wgmma m64nBCk16, A = Q and B = K from shared memory (both K-major), D/16 steps;
//   O += P·V    wgmma m64nDk16, A = P from registers, B = V from shared memory (MN-major:
//               V rows are keys, the head dim is contiguous, hence the transpose flag), BC/16 steps.
// and per tile j, in this order: S[j+1] and P[j]·V[j] are queued; once S[j+1] is in, its online
// softmax (flash_common.cuh) runs on the ALUs while P[j]·V[j] still runs on the tensor cores;
// then the output is rescaled for tile j+1. BC = 96 keeps the S accumulators, two sets of P
// fragments and the output accumulators within 255 registers (BC = 128 spills for D = 128).
//
// Shared-memory layout: wgmma's 128-byte swizzle. A tile of R rows × D is stored as D/64 column
// blocks ("atoms") of R rows × 128 bytes (64 elements); the 16-byte chunk c of row r sits at
// chunk position c ^ (r % 8) within its row. The hardware applies the same XOR on the address
// bits (bits 4-6 ^= bits 7-9), so tiles start on 1024-byte boundaries. Descriptors (PTX ISA,
// "Matrix Descriptor Format"; CUTLASS's canonical GMMA layouts):
//   K-major (Q, K): ((8 rows, m), (8 elements, 2k)) : ((128 B, SBO), (1, 16 B)); SBO = 1024 B
//     (8 rows of 128 B); a k-step of 16 elements inside an atom adds 32 B to the start address,
//     the next atom starts R·128 bytes further.
//   MN-major (V as B of P·V): ((64 elements, m), (8 rows, k)) : ((1, LBO), (128 B, SBO)); LBO =
//     the distance between the two 64-column atoms (BC·128 B), SBO = 1024 B; a k-step of 16 keys
//     adds 16·128 B.
// Accumulators of m64nNk16 (f32): warp i of the warpgroup holds rows 16i + g and 16i + g + 8 as
// the m16n8k16 C layout repeated over N/8 tiles; A fragments from registers use the m16n8k16 A
// layout per warp. So the softmax and the P fragments are flash_attn.cu's.
//
// Ordering: cp.async writes are made visible to the tensor cores' (async) proxy with
// fence.proxy.async before the barrier; every wgmma batch is fenced (wgmma.fence), committed and
// waited for before its accumulators or its register operands are touched again.

#define BR 128
#ifndef BC
#define BC 96
#endif
#define THREADS 256

// 128-byte-swizzled byte offset of 16-byte chunk `chunk` (0..D/8) of row `row` in an R-row tile.
template <int R>
static __device__ __forceinline__ u32 swizzled(int row, int chunk) {
    return (u32)((chunk >> 3) * R * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

// A K/V (or Q) tile in the swizzled layout.
template <int ROWS, int D>
static __device__ __forceinline__ void load_tile_sw(u32 dst, const u16* src, i64 stride, int row0,
                                                    int seq, int tid) {
    load_rows<ROWS, D, THREADS>(dst, src, stride, row0, seq, tid,
                                [](int r, int c) { return swizzled<ROWS>(r, c); });
}

// A shared-memory matrix descriptor with 128-byte swizzle (layout type 1 in bits 62-63).
static __device__ __forceinline__ unsigned long long smem_desc(u32 addr, u32 lbo, u32 sbo) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) |
           ((unsigned long long)((lbo & 0x3FFFF) >> 4) << 16) |
           ((unsigned long long)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

static __device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
static __device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
static __device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
// Waits until at most N of this warpgroup's committed wgmma groups are still in flight.
template <int N> static __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// Pins accumulators and register operands after a wait: later reads and writes depend on this
// (volatile, ordered after the wait), so the compiler cannot move them into the wgmma's flight.
template <int N>
static __device__ __forceinline__ void pin(float (&a)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
        asm volatile("" : "+f"(a[i][0]), "+f"(a[i][1]), "+f"(a[i][2]), "+f"(a[i][3])::"memory");
}
template <int N>
static __device__ __forceinline__ void pin(u32 (&a)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
        asm volatile("" : "+r"(a[i][0]), "+r"(a[i][1]), "+r"(a[i][2]), "+r"(a[i][3])::"memory");
}

#define ACC4(a, j) "+f"(a[j][0]), "+f"(a[j][1]), "+f"(a[j][2]), "+f"(a[j][3])
#define ACC32(a, o)                                                                               \
    ACC4(a, o + 0), ACC4(a, o + 1), ACC4(a, o + 2), ACC4(a, o + 3), ACC4(a, o + 4),              \
        ACC4(a, o + 5), ACC4(a, o + 6), ACC4(a, o + 7)
#define REGS32                                                                                    \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                     \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define REGS64                                                                                    \
    REGS32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "  \
           "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

#define REGS48                                                                                    \
    REGS32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"

// d (+)= A·B for m64nNk16 (N = 8·tiles: 96 or 128), A and B from shared memory (both K-major);
// `accumulate` = 0 ignores d.
#define WGMMA_SS_N128(TYPE)                                                                       \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                    \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {" REGS64 "}, "   \
                 "%64, %65, p, 1, 1, 0, 0;\n}\n"                                                  \
                 : ACC32(d, 0), ACC32(d, 8)                                                       \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate))
#define WGMMA_SS_N96(TYPE)                                                                        \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"                                    \
                 "wgmma.mma_async.sync.aligned.m64n96k16.f32." TYPE "." TYPE " {" REGS48 "}, "    \
                 "%48, %49, p, 1, 1, 0, 0;\n}\n"                                                  \
                 : ACC32(d, 0), ACC4(d, 8), ACC4(d, 9), ACC4(d, 10), ACC4(d, 11)                  \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate))
template <bool BF16, int N>
static __device__ __forceinline__ void wgmma_ss(float (&d)[N][4], unsigned long long desc_a,
                                                unsigned long long desc_b, int accumulate) {
    static_assert(N == 12 || N == 16, "n96 and n128 are instantiated");
    if constexpr (N == 16) {
        if constexpr (BF16) {
            WGMMA_SS_N128("bf16");
        } else {
            WGMMA_SS_N128("f16");
        }
    } else {
        if constexpr (BF16) {
            WGMMA_SS_N96("bf16");
        } else {
            WGMMA_SS_N96("f16");
        }
    }
}

// d += A·B for m64nNk16, A from registers, B from shared memory MN-major (transposed).
#define WGMMA_RS_N128(TYPE)                                                                       \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                    \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {" REGS64 "}, "   \
                 "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                    \
                 : ACC32(d, 0), ACC32(d, 8)                                                       \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1))
#define WGMMA_RS_N64(TYPE)                                                                        \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                    \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " {" REGS32 "}, "    \
                 "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                    \
                 : ACC32(d, 0)                                                                    \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1))
template <bool BF16, int N>
static __device__ __forceinline__ void wgmma_rs(float (&d)[N][4], const u32 (&a)[4],
                                                unsigned long long desc_b) {
    static_assert(N == 8 || N == 16, "n64 and n128 are instantiated");
    if constexpr (N == 16) {
        if constexpr (BF16) {
            WGMMA_RS_N128("bf16");
        } else {
            WGMMA_RS_N128("f16");
        }
    } else {
        if constexpr (BF16) {
            WGMMA_RS_N64("bf16");
        } else {
            WGMMA_RS_N64("f16");
        }
    }
}

template <int D, bool BF16>
static __device__ __forceinline__ void flash_attn_sm90(
    const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
    u16* __restrict__ o, i64 q_sb, i64 q_sh, i64 q_ss, i64 k_sb, i64 k_sh, i64 k_ss, i64 v_sb,
    i64 v_sh, i64 v_ss, i64 o_sb, i64 o_sh, i64 o_ss, int heads, int seq_q, int seq_kv,
    float scale_log2) {
    static_assert(D == 64 || D == 128, "head dims 64 and 128 are instantiated");
    constexpr int Q_TILE = BR * D * 2;   // bytes
    constexpr int KV_TILE = BC * D * 2;  // bytes of one K or V buffer
    constexpr int KT = D / 16;           // k-steps of Q·Kᵀ
    constexpr int NS = BC / 8;           // n-tiles of S (8 keys each)
    constexpr int NO = D / 8;            // n-tiles of O (8 dims each)

    // Layout from a 1024-aligned base: [Q][K0][V0][K1][V1]; the output is staged in Q's place.
    extern __shared__ __align__(1024) unsigned char smem[];
    const u32 s_raw = smem_u32(smem);
    const u32 s_q = (s_raw + 1023u) & ~1023u;
    auto s_k = [=](int i) { return s_q + (u32)(Q_TILE + i * 2 * KV_TILE); };
    auto s_v = [=](int i) { return s_q + (u32)(Q_TILE + KV_TILE + i * 2 * KV_TILE); };

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wg = warp >> 2, wrow = (warp & 3) * 16;  // warpgroup; warp's first row in it
    const int g = lane >> 2, t = lane & 3;
    const int q0 = blockIdx.x * BR;
    const int b = blockIdx.y / heads, h = blockIdx.y % heads;
    const u16* qg = q + b * q_sb + h * q_sh;
    const u16* kg = k + b * k_sb + h * k_sh;
    const u16* vg = v + b * v_sb + h * v_sh;
    u16* og = o + b * o_sb + h * o_sh;
    const int n_tiles = (seq_kv + BC - 1) / BC;

    // This warpgroup's 64 Q rows start 64·128 bytes into each atom.
    const u32 q_rows = s_q + (u32)(wg * 64 * 128);
    // S = Q·K[tile]ᵀ for this warpgroup's 64 rows × BC keys, queued (not waited for).
    auto issue_scores = [&](float (&s)[NS][4], u32 k_tile) {
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
            // Atom kk / 4, then 32 bytes per 16-element step inside it.
            const u32 step = (u32)((kk & 3) * 32);
            const unsigned long long da =
                smem_desc(q_rows + (u32)((kk >> 2) * BR * 128) + step, 16, 1024);
            const unsigned long long db =
                smem_desc(k_tile + (u32)((kk >> 2) * BC * 128) + step, 16, 1024);
            wgmma_ss<BF16, NS>(s, da, db, kk > 0);
        }
        wgmma_commit();
    };

    // Prologue: group {Q, K0}, then group {V0, K1}; S[0] computed and its softmax taken.
    load_tile_sw<BR, D>(s_q, qg, q_ss, q0, seq_q, tid);
    load_tile_sw<BC, D>(s_k(0), kg, k_ss, 0, seq_kv, tid);
    cp_async_commit();
    load_tile_sw<BC, D>(s_v(0), vg, v_ss, 0, seq_kv, tid);
    if (n_tiles > 1) load_tile_sw<BC, D>(s_k(1), kg, k_ss, BC, seq_kv, tid);
    cp_async_commit();

    float acc[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    float s[NS][4];
#pragma unroll
    for (int n = 0; n < NS; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
    float row_max[2] = {neg_inf(), neg_inf()};
    float row_sum[2] = {0.f, 0.f};
    float rescale[2];
    u32 pf[NS / 2][4];

    cp_async_wait<1>();
    fence_proxy_async();
    barrier();
    wgmma_fence();
    issue_scores(s, s_k(0));
    wgmma_wait<0>();
    pin(s);
    softmax_scores<NS, BF16>(s, row_max, row_sum, pf, rescale, 0, seq_kv, t, scale_log2);

    // O += P[j]·V[j], queued: B = V [keys][D] MN-major; atoms BC·128 bytes apart, 16 keys per
    // k-step.
    auto issue_values = [&](int j, const u32 (&pf)[NS / 2][4]) {
        const u32 v_tile = s_v(j & 1);
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            const unsigned long long db =
                smem_desc(v_tile + (u32)(kk * 16 * 128), (u32)(BC * 128), 1024);
            wgmma_rs<BF16, NO>(acc, pf[kk], db);
        }
        wgmma_commit();
    };
    // V[j] and K[j+1] have landed and are visible to the tensor cores; every warpgroup is done
    // with K[j] (S[j] was waited for) and with V[j-1] (its P·V too): K buffer j & 1 and V buffer
    // (j+1) & 1 are free for K[j+2] and V[j+1].
    auto tile_start = [&](int j) {
        cp_async_wait<0>();
        fence_proxy_async();
        barrier();
        if (j + 2 < n_tiles)
            load_tile_sw<BC, D>(s_k(j & 1), kg, k_ss, (j + 2) * BC, seq_kv, tid);
        if (j + 1 < n_tiles)
            load_tile_sw<BC, D>(s_v((j + 1) & 1), vg, v_ss, (j + 1) * BC, seq_kv, tid);
        cp_async_commit();
    };

    // Tile j < last: S[j+1] is queued, then P[j]·V[j]; the softmax of S[j+1] runs on the ALUs
    // while P[j]·V[j] runs on the tensor cores, and the output is rescaled for tile j+1 once
    // P[j]·V[j] is in. P[j] and P[j+1] live in two register sets that swap roles from tile to
    // tile: a copy between them, or a branch between the fence and the products, would make
    // the compiler serialize the products, hence the unrolled pairs and the peeled last tile.
    auto step = [&](int j, u32 (&pf_cur)[NS / 2][4], u32 (&pf_next)[NS / 2][4]) {
        tile_start(j);
        wgmma_fence();
        issue_scores(s, s_k((j + 1) & 1));
        issue_values(j, pf_cur);
        wgmma_wait<1>();  // S[j+1] is in; P[j]·V[j] may still run
        pin(s);
        softmax_scores<NS, BF16>(s, row_max, row_sum, pf_next, rescale, (j + 1) * BC, seq_kv, t,
                                 scale_log2);
        wgmma_wait<0>();
        pin(acc);
        pin(pf_cur);
        rescale_rows<NO>(acc, rescale);
    };
    auto last = [&](int j, u32 (&pf_cur)[NS / 2][4]) {
        tile_start(j);
        wgmma_fence();
        issue_values(j, pf_cur);
        wgmma_wait<0>();
        pin(acc);
        pin(pf_cur);
    };
    u32 pf_odd[NS / 2][4];
    int j = 0;
    for (; j + 2 < n_tiles; j += 2) {
        step(j, pf, pf_odd);
        step(j + 1, pf_odd, pf);
    }
    if (j + 1 < n_tiles) {
        step(j, pf, pf_odd);
        last(j + 1, pf_odd);
    } else {
        last(j, pf);
    }

    // Normalize, stage the rows in the Q tile's place (swizzled like it: conflict-free 4-byte
    // stores), then 16-byte row stores. Every warpgroup must be past its last Q·Kᵀ first.
    cp_async_wait<0>();
    barrier();
    float inv[2];
    row_inverse(row_sum, inv);
    const int r0 = wg * 64 + wrow + g;
#pragma unroll
    for (int n = 0; n < NO; ++n) {
        const int chunk = n, within = 4 * t;  // dims 8n + 2t, 8n + 2t + 1: bytes 4t of chunk n
        const u32 top = pack<BF16>(acc[n][0] * inv[0], acc[n][1] * inv[0]);
        const u32 bottom = pack<BF16>(acc[n][2] * inv[1], acc[n][3] * inv[1]);
        st_shared_b32(s_q + swizzled<BR>(r0, chunk) + within, top);
        st_shared_b32(s_q + swizzled<BR>(r0 + 8, chunk) + within, bottom);
    }
    barrier();
    constexpr int CHUNKS = D / 8;
#pragma unroll
    for (int i = 0; i < BR * CHUNKS / THREADS; ++i) {
        const int chunk = tid + i * THREADS;
        const int r = chunk / CHUNKS, c = chunk % CHUNKS;
        const int row = q0 + r;
        if (row < seq_q) copy_out_16(s_q + swizzled<BR>(r, c), og + (i64)row * o_ss + c * 8);
    }
}

#define FLASH_ATTN_SM90_ENTRY(NAME, D, BF16)                                                      \
    extern "C" __global__ void __launch_bounds__(THREADS, 1)                                      \
        NAME(const u16* q, const u16* k, const u16* v, u16* o, i64 q_sb, i64 q_sh, i64 q_ss,    \
             i64 k_sb, i64 k_sh, i64 k_ss, i64 v_sb, i64 v_sh, i64 v_ss, i64 o_sb, i64 o_sh,     \
             i64 o_ss, int heads, int seq_q, int seq_kv, float scale_log2) {                     \
        flash_attn_sm90<D, BF16>(q, k, v, o, q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh,     \
                                 v_ss, o_sb, o_sh, o_ss, heads, seq_q, seq_kv, scale_log2);      \
    }

FLASH_ATTN_SM90_ENTRY(flash_attn_sm90_bf16_d64, 64, true)
FLASH_ATTN_SM90_ENTRY(flash_attn_sm90_bf16_d128, 128, true)
FLASH_ATTN_SM90_ENTRY(flash_attn_sm90_f16_d64, 64, false)
FLASH_ATTN_SM90_ENTRY(flash_attn_sm90_f16_d128, 128, false)
