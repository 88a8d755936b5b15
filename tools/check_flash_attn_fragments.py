"""Lane-level CPU simulation of engine/cuda/src/kernels/flash_attn.cu (no GPU needed).

    python3 tools/check_flash_attn_fragments.py          # numpy; exits non-zero on a mismatch

The kernel's address and packing formulas (ldmatrix row addresses for Q, K and V, the S -> P
register reuse, the output staging) are transcribed line by line; ldmatrix (plain and .trans) and
mma.m16n8k16 are modelled from the PTX ISA fragment tables, independently of the kernel. Shared
memory starts as NaN, so a read of anything never written shows up in the output. It runs the
online softmax, tail masking and double-buffer schedule on small shapes (sequences off the tile
sizes, both head dims) and compares with an f64 reference. It checks the layout algebra, not the
hardware: keep it in step with the .cu when either changes.
"""
import numpy as np, sys
BR, BC, WARPS = 128, 64, 8
rng = np.random.default_rng(0)

def bf16(x):
    x = np.ascontiguousarray(x, np.float32); u = x.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)

lanes = np.arange(32); G = lanes >> 2; T = lanes & 3
# spec-side fragment maps
def A_from(a):
    A = np.zeros((16, 16))
    for L in range(32):
        g, t = L >> 2, L & 3
        A[g, 2*t:2*t+2] = a[0][L]; A[g+8, 2*t:2*t+2] = a[1][L]
        A[g, 2*t+8:2*t+10] = a[2][L]; A[g+8, 2*t+8:2*t+10] = a[3][L]
    return A
def mma(c, a, b0, b1):
    A = A_from(a); B = np.zeros((16, 8))
    for L in range(32):
        g, t = L >> 2, L & 3
        B[2*t:2*t+2, g] = b0[L]; B[2*t+8:2*t+10, g] = b1[L]
    C = A @ B
    for L in range(32):
        g, t = L >> 2, L & 3
        c[L, 0:2] += C[g, 2*t:2*t+2]; c[L, 2:4] += C[g+8, 2*t:2*t+2]

def run(Qh, Kh, Vh, scale, D):
    seq_q, seq_kv = Qh.shape[0], Kh.shape[0]
    LD = D + 8; TILE = BC * LD * 2
    out = np.full((seq_q, D), np.nan)
    n_tiles = (seq_kv + BC - 1) // BC
    scale_log2 = np.float32(scale * np.log2(np.e))
    for qt in range((seq_q + BR - 1) // BR):
        smem = np.full(4 * BC * LD, np.nan)   # NaN: reading anything never written shows up
        def load_tile(dst, src, row0, seq, ROWS):
            CH = D // 8
            for chunk in range(ROWS * CH):
                r, c = divmod(chunk, CH); row = row0 + r
                base = dst // 2 + r * LD + c * 8
                smem[base:base+8] = src[row, c*8:c*8+8] if row < seq else 0
        def ldm(addr, trans=False):
            regs = []
            for i in range(4):
                if not trans:
                    ra = addr[8*i + G] // 2
                    regs.append(np.stack([smem[ra + 2*T], smem[ra + 2*T + 1]], -1))
                else:
                    a0 = addr[8*i + 2*T] // 2; a1 = addr[8*i + 2*T + 1] // 2
                    regs.append(np.stack([smem[a0 + G], smem[a1 + G]], -1))
            return regs
        s_k = lambda i: i * 2 * TILE; s_v = lambda i: TILE + i * 2 * TILE; s_q = 2 * TILE
        q0 = qt * BR
        load_tile(s_q, Qh, q0, seq_q, BR); load_tile(s_k(0), Kh, 0, seq_kv, BC)
        load_tile(s_v(0), Vh, 0, seq_kv, BC)
        W = []
        for warp in range(WARPS):
            qf = []
            for kk in range(D // 16):
                row = warp * 16 + (lanes & 15); col = kk * 16 + (lanes >> 4) * 8
                qf.append(ldm(s_q + (row * LD + col) * 2))
            W.append(dict(qf=qf, acc=np.zeros((D // 8, 32, 4)), row_max=np.full((2, 32), -np.inf),
                          row_sum=np.zeros((2, 32))))
        for j in range(n_tiles):
            cur = j & 1; nxt = cur ^ 1
            if j + 1 < n_tiles: load_tile(s_k(nxt), Kh, (j + 1) * BC, seq_kv, BC)
            for w, st in enumerate(W):
                s = np.zeros((BC // 8, 32, 4))
                for kk in range(D // 16):
                    for nn in range(BC // 16):
                        key = nn * 16 + (lanes >> 4) * 8 + (lanes & 7)
                        dim = kk * 16 + ((lanes >> 3) & 1) * 8
                        kf = ldm(s_k(cur) + (key * LD + dim) * 2)
                        mma(s[2*nn], st['qf'][kk], kf[0], kf[1])
                        mma(s[2*nn+1], st['qf'][kk], kf[2], kf[3])
                kv0 = j * BC
                s = (s.astype(np.float32) * scale_log2).astype(np.float64)
                if kv0 + BC > seq_kv:
                    for n in range(BC // 8):
                        for e in range(4):
                            m = kv0 + n * 8 + 2 * T + (e & 1) >= seq_kv
                            s[n][m, e] = -np.inf
                tm = st['row_max'].copy()
                for n in range(BC // 8):
                    tm[0] = np.maximum(tm[0], np.maximum(s[n][:, 0], s[n][:, 1]))
                    tm[1] = np.maximum(tm[1], np.maximum(s[n][:, 2], s[n][:, 3]))
                for r in range(2):
                    tm[r] = np.maximum(tm[r], tm[r][lanes ^ 1]); tm[r] = np.maximum(tm[r], tm[r][lanes ^ 2])
                rescale = np.exp2(st['row_max'] - tm)
                st['row_max'] = tm; st['row_sum'] *= rescale
                st['acc'][:, :, 0:2] *= rescale[0][None, :, None]; st['acc'][:, :, 2:4] *= rescale[1][None, :, None]
                pf = [[None] * 4 for _ in range(BC // 16)]
                for n in range(BC // 8):
                    p01 = np.exp2(s[n][:, 0:2] - tm[0][:, None]); p23 = np.exp2(s[n][:, 2:4] - tm[1][:, None])
                    st['row_sum'][0] += p01.sum(1); st['row_sum'][1] += p23.sum(1)
                    pf[n // 2][(n & 1) * 2 + 0] = bf16(p01); pf[n // 2][(n & 1) * 2 + 1] = bf16(p23)
                st['pf'] = pf
            if j + 1 < n_tiles: load_tile(s_v(nxt), Vh, (j + 1) * BC, seq_kv, BC)
            for w, st in enumerate(W):
                for kk in range(BC // 16):
                    for dd in range(D // 16):
                        key = kk * 16 + ((lanes >> 3) & 1) * 8 + (lanes & 7)
                        dim = dd * 16 + (lanes >> 4) * 8
                        vf = ldm(s_v(cur) + (key * LD + dim) * 2, trans=True)
                        mma(st['acc'][2*dd], st['pf'][kk], vf[0], vf[1])
                        mma(st['acc'][2*dd+1], st['pf'][kk], vf[2], vf[3])
        s_out = 2 * TILE // 2
        for w, st in enumerate(W):
            l = st['row_sum'].copy()
            l = l + l[:, lanes ^ 1]; l = l + l[:, lanes ^ 2]
            inv = 1.0 / l
            r0 = w * 16 + G
            for n in range(D // 8):
                col = n * 8 + 2 * T
                top = bf16(st['acc'][n][:, 0:2] * inv[0][:, None]); bot = bf16(st['acc'][n][:, 2:4] * inv[1][:, None])
                for L in range(32):
                    smem[s_out + r0[L] * LD + col[L]: s_out + r0[L] * LD + col[L] + 2] = top[L]
                    smem[s_out + (r0[L] + 8) * LD + col[L]: s_out + (r0[L] + 8) * LD + col[L] + 2] = bot[L]
            CH = D // 8
            for i in range(16 * CH // 32):
                for L in range(32):
                    chunk = L + i * 32; r, c = divmod(chunk, CH); row = q0 + w * 16 + r
                    x = smem[s_out + (w * 16 + r) * LD + c * 8: s_out + (w * 16 + r) * LD + c * 8 + 8]
                    if row < seq_q: out[row, c*8:c*8+8] = x
    return out

def ref(Q, K, V, scale):
    S = Q.astype(np.float64) @ K.astype(np.float64).T * scale
    P = np.exp(S - S.max(1, keepdims=True)); P /= P.sum(1, keepdims=True)
    return P @ V

ok = True
for (sq, skv, D) in [(130, 100, 64), (100, 200, 128), (64, 64, 64), (129, 257, 128), (5, 3, 64)]:
    Q, K, V = (bf16(rng.standard_normal((n, D)).astype(np.float32)) for n in (sq, skv, skv))
    scale = 1 / np.sqrt(D)
    o = run(Q, K, V, scale, D); r = ref(Q, K, V, scale)
    err = np.abs(o - r).max() / np.abs(r).max()
    print(sq, skv, D, "rel err", err, "nan", np.isnan(o).sum())
    ok &= bool(err < 2e-2) and not np.isnan(o).any()
print("OK" if ok else "FAIL"); sys.exit(0 if ok else 1)
