// flash_attn.cu: weft's FlashAttention-2 style forward kernel (issue 6), compiled at run time by
// NVRTC (engine/src/device/attention.rs) for the device's compute capability (sm_80 or newer).
//
// O = softmax(Q·Kᵀ·scale)·V for Q [B, H, Sq, D], K and V [B, H, Skv, D], bf16 or f16, no mask,
// f32 accumulation and f32 online softmax. Rows must be unit-stride (head dim contiguous); the
// batch, head and sequence strides are free (multiples of 8 elements, checked on the host in
// attention_plan.rs, as are the 16-byte aligned base pointers).
//
// The shared helpers and the online-softmax step are in flash_common.cuh, prepended to this
// source at compile time.
//
// Work split. One CTA = 8 warps = one tile of BR = 128 query rows of one (batch, head); warp w
// owns rows 16w..16w+15 and keeps their Q fragments, its running max/sum and its 16 × D output
// accumulator in registers for the whole key loop. Keys and values stream through shared memory
// in tiles of BC = 64 rows, double-buffered with cp.async (the next K tile loads during this
// tile's softmax and P·V, the next V tile during this P·V and the next Q·Kᵀ). The Q tile is
// staged in the space of the second K/V buffers (free until the first iteration issues them),
// and the output is staged there again at the end for 16-byte stores.
//
// Shared-memory rows are padded to D + 8 elements (D·2 + 16 bytes): the 8 row addresses of one
// ldmatrix 8×8 matrix then start 4 banks apart and cover all 32 banks once (conflict-free), and
// every row stays 16-byte aligned for cp.async.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" and
// "ldmatrix"). In a warp, lane = 4·g + t with g = lane >> 2 ("groupID"), t = lane & 3
// ("threadID_in_group"). A 32-bit register holds two 16-bit values, the lower column index in the
// low half.
//   A (16×16, row-major), 4 regs: a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1],
//                                  a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9].
//   B (16×8, "col"),       2 regs: b[0] = B[2t, 2t+1][g],  b[1] = B[2t+8, 2t+9][g]
//                                  (two consecutive k of one column n = g).
//   C/D (16×8, f32),       4 regs: c[0], c[1] = C[g][2t, 2t+1], c[2], c[3] = C[g+8][2t, 2t+1].
//   ldmatrix.x4: lanes 8i..8i+7 give the addresses of rows 0..7 of matrix i (16 bytes each);
//     result register i holds, in every lane, M_i[g][2t, 2t+1]. With .trans it holds
//     M_i[2t][g], M_i[2t+1][g] (the transposed matrix's fragment).
// Hence, per warp:
//   Q (A of S = Q·Kᵀ): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
//     (rows 8-15, k 8-15) -> lane reads row (lane & 15), column 8·(lane >> 4).
//   K (B of S, B[k][n] = K[n][k]: a K row is a B column, so no transpose): for keys n0..n0+15 and
//     dims k0..k0+15, matrices (keys n0+0-7, dims k0+0-7) -> b[0] of key tile n0, (n0+0-7,
//     k0+8-15) -> b[1] of n0, (n0+8-15, k0+0-7) -> b[0] of n0+8, (n0+8-15, k0+8-15) -> b[1] of
//     n0+8; lane reads key n0 + 8·(lane >> 4) + (lane & 7), dim k0 + 8·((lane >> 3) & 1).
//   P (A of O = P·V) comes straight from S's accumulators: keys 16j..16j+15 are S tiles 2j and
//     2j+1, and a[0] = S[2j].c[0,1], a[1] = S[2j].c[2,3], a[2] = S[2j+1].c[0,1],
//     a[3] = S[2j+1].c[2,3] match the A layout above (row g / g+8, key 2t(+8)).
//   V (B of O, B[k][n] = V[key k][dim n], rows of V are B rows, so ldmatrix.trans): for keys
//     k0..k0+15 and dims n0..n0+15, matrices (keys k0+0-7, dims n0+0-7) -> b[0] of dim tile n0,
//     (k0+8-15, n0+0-7) -> b[1] of n0, (k0+0-7, n0+8-15) -> b[0] of n0+8, (k0+8-15, n0+8-15) ->
//     b[1] of n0+8; lane reads key k0 + 8·((lane >> 3) & 1) + (lane & 7), dim n0 + 8·(lane >> 4).
//   Each lane so holds 2 query rows (g and g+8) of its warp's 16; row statistics are reduced over
//   the 4 lanes of a quad (xor 1, xor 2).

#define BR 128
#define BC 64
#define WARPS 8
#define THREADS (WARPS * 32)

static __device__ __forceinline__ void warp_sync() {
    asm volatile("bar.warp.sync 0xffffffff;" ::: "memory");
}

static __device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

static __device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c += a·b for one m16n8k16 tile, f32 accumulators.
template <bool BF16>
static __device__ __forceinline__ void mma(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    if constexpr (BF16) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// A K/V (or Q) tile: rows padded to LD = D + 8 elements (see the header).
template <int ROWS, int D>
static __device__ __forceinline__ void load_tile(u32 dst, const u16* src, i64 stride, int row0,
                                                 int seq, int tid) {
    load_rows<ROWS, D, THREADS>(dst, src, stride, row0, seq, tid,
                                [](int r, int c) { return (u32)((r * (D + 8) + c * 8) * 2); });
}

template <int D, bool BF16>
static __device__ __forceinline__ void flash_attn_fwd(
    const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
    u16* __restrict__ o, i64 q_sb, i64 q_sh, i64 q_ss, i64 k_sb, i64 k_sh, i64 k_ss, i64 v_sb,
    i64 v_sh, i64 v_ss, i64 o_sb, i64 o_sh, i64 o_ss, int heads, int seq_q, int seq_kv,
    float scale_log2) {
    static_assert(D == 64 || D == 128, "head dims 64 and 128 are instantiated");
    static_assert(BR == 2 * BC, "the Q tile is staged in the second K and V buffers");
    constexpr int LD = D + 8;              // shared row stride, elements
    constexpr int TILE = BC * LD * 2;      // bytes of one K or V buffer
    constexpr int KT = D / 16;             // k-steps of Q·Kᵀ
    constexpr int NS = BC / 8;             // n-tiles of S (8 keys each)
    constexpr int NO = D / 8;              // n-tiles of O (8 dims each)

    // Layout: [K0][V0][K1][V1]; the Q tile (and at the end the output) spans [K1][V1].
    extern __shared__ __align__(16) unsigned char smem[];
    const u32 s_base = smem_u32(smem);
    // Buffer `i` of K and of V (arithmetic, not an array: a runtime-indexed local array would
    // live in local memory).
    auto s_k = [=](int i) { return s_base + (u32)(i * 2 * TILE); };
    auto s_v = [=](int i) { return s_base + (u32)(TILE + i * 2 * TILE); };
    const u32 s_q = s_base + 2 * TILE;
    u16* const s_out = (u16*)(smem + 2 * TILE);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int q0 = blockIdx.x * BR;
    const int b = blockIdx.y / heads, h = blockIdx.y % heads;
    const u16* qg = q + b * q_sb + h * q_sh;
    const u16* kg = k + b * k_sb + h * k_sh;
    const u16* vg = v + b * v_sb + h * v_sh;
    u16* og = o + b * o_sb + h * o_sh;
    const int n_tiles = (seq_kv + BC - 1) / BC;

    // Prologue: group {Q, K0}, then group {V0}.
    load_tile<BR, D>(s_q, qg, q_ss, q0, seq_q, tid);
    load_tile<BC, D>(s_k(0), kg, k_ss, 0, seq_kv, tid);
    cp_async_commit();
    load_tile<BC, D>(s_v(0), vg, v_ss, 0, seq_kv, tid);
    cp_async_commit();
    cp_async_wait<1>();
    barrier();

    // This warp's Q rows as A fragments, one per 16 dims (lane: row lane & 15, col 8·(lane>>4)).
    u32 qf[KT][4];
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        const int row = warp * 16 + (lane & 15), col = kk * 16 + (lane >> 4) * 8;
        ldmatrix_x4(qf[kk], s_q + (u32)((row * LD + col) * 2));
    }

    float acc[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    // Running max (in log2 units, scale applied) and this lane's partial row sums, rows g, g+8.
    float row_max[2] = {neg_inf(), neg_inf()};
    float row_sum[2] = {0.f, 0.f};

    for (int j = 0; j < n_tiles; ++j) {
        const int cur = j & 1, nxt = cur ^ 1;
        // K[j] has landed (only V[j] may be in flight), and every warp is done with K[j-1]
        // (the previous iteration's Q·Kᵀ) and, at j = 0, with the Q tile: buffer nxt is free.
        cp_async_wait<1>();
        barrier();
        if (j + 1 < n_tiles) load_tile<BC, D>(s_k(nxt), kg, k_ss, (j + 1) * BC, seq_kv, tid);
        cp_async_commit();  // possibly empty: keeps the group count uniform

        // S = Q·Kᵀ for this warp's 16 rows × BC keys.
        float s[NS][4];
#pragma unroll
        for (int n = 0; n < NS; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
            for (int nn = 0; nn < NS / 2; ++nn) {
                u32 kf[4];
                const int key = nn * 16 + (lane >> 4) * 8 + (lane & 7);
                const int dim = kk * 16 + ((lane >> 3) & 1) * 8;
                ldmatrix_x4(kf, s_k(cur) + (u32)((key * LD + dim) * 2));
                mma<BF16>(s[2 * nn], qf[kk], kf[0], kf[1]);
                mma<BF16>(s[2 * nn + 1], qf[kk], kf[2], kf[3]);
            }
        }

        // Scale, mask, online softmax; P as A fragments of P·V (flash_common.cuh).
        u32 pf[BC / 16][4];
        softmax_tile<NS, NO, BF16>(s, acc, row_max, row_sum, pf, j * BC, seq_kv, t, scale_log2);

        // V[j] has landed (only K[j+1] may be in flight); every warp is done with V[j-1].
        cp_async_wait<1>();
        barrier();
        if (j + 1 < n_tiles) load_tile<BC, D>(s_v(nxt), vg, v_ss, (j + 1) * BC, seq_kv, tid);
        cp_async_commit();

        // O += P·V.
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
#pragma unroll
            for (int dd = 0; dd < NO / 2; ++dd) {
                u32 vf[4];
                const int key = kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
                const int dim = dd * 16 + (lane >> 4) * 8;
                ldmatrix_x4_trans(vf, s_v(cur) + (u32)((key * LD + dim) * 2));
                mma<BF16>(acc[2 * dd], pf[kk], vf[0], vf[1]);
                mma<BF16>(acc[2 * dd + 1], pf[kk], vf[2], vf[3]);
            }
        }
    }

    // Full row sums (over the quad), normalize, stage this warp's 16 rows in shared memory (the
    // second buffers, free once every warp is past its last P·V), then 16-byte row stores.
    cp_async_wait<0>();
    barrier();
    float inv[2];
    row_inverse(row_sum, inv);
    const int r0 = warp * 16 + g;
#pragma unroll
    for (int n = 0; n < NO; ++n) {
        const int col = n * 8 + 2 * t;
        const u32 top = pack<BF16>(acc[n][0] * inv[0], acc[n][1] * inv[0]);
        const u32 bottom = pack<BF16>(acc[n][2] * inv[1], acc[n][3] * inv[1]);
        st_shared_b32(smem_u32(s_out + r0 * LD + col), top);
        st_shared_b32(smem_u32(s_out + (r0 + 8) * LD + col), bottom);
    }
    warp_sync();
    constexpr int CHUNKS = D / 8;
#pragma unroll
    for (int i = 0; i < 16 * CHUNKS / 32; ++i) {
        const int chunk = lane + i * 32;
        const int r = chunk / CHUNKS, c = chunk % CHUNKS;
        const int row = q0 + warp * 16 + r;
        if (row < seq_q)
            copy_out_16(smem_u32(s_out + (warp * 16 + r) * LD + c * 8), og + (i64)row * o_ss + c * 8);
    }
}

#define FLASH_ATTN_ENTRY(NAME, D, BF16)                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS, 1)                                      \
        NAME(const u16* q, const u16* k, const u16* v, u16* o, i64 q_sb, i64 q_sh, i64 q_ss,    \
             i64 k_sb, i64 k_sh, i64 k_ss, i64 v_sb, i64 v_sh, i64 v_ss, i64 o_sb, i64 o_sh,     \
             i64 o_ss, int heads, int seq_q, int seq_kv, float scale_log2) {                     \
        flash_attn_fwd<D, BF16>(q, k, v, o, q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, \
                                o_sb, o_sh, o_ss, heads, seq_q, seq_kv, scale_log2);             \
    }

FLASH_ATTN_ENTRY(flash_attn_fwd_bf16_d64, 64, true)
FLASH_ATTN_ENTRY(flash_attn_fwd_bf16_d128, 128, true)
FLASH_ATTN_ENTRY(flash_attn_fwd_f16_d64, 64, false)
FLASH_ATTN_ENTRY(flash_attn_fwd_f16_d128, 128, false)
