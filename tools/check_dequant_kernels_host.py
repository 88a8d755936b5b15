#!/usr/bin/env python3
"""Check the GPU dequantization kernels' arithmetic on the CPU, against gguf-py 0.19.0.

    python3 tools/check_dequant_kernels_host.py [--seed N]

Compiles engine/cuda/src/kernels/dequant.cu with g++ as plain C++ (the CUDA built-ins it uses
are defined below; its two hardware f16 conversions fall back to _Float16, the __f*_rn
intrinsics to plain f32 operations with -ffp-contract=off), runs every kernel in one emulated
thread on random blocks (finite f16 scales), and compares every output bit pattern with gguf-py's
dequantized values rounded to f32 / f16 (numpy) / bf16 (the `half` crate's rounding), with the
output 16-byte aligned and misaligned. What it cannot see: the NVRTC build and the hardware
conversions (`cvt.f32.f16`, `cvt.rn.f16.f32`); `weft bench dequant-gpu` checks those on a GPU.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "engine", "src", "device", "kernels", "dequant.cu")

HARNESS = r"""
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(x)
struct dim3h { unsigned x; };
static dim3h blockIdx{0}, threadIdx{0}, gridDim{1}, blockDim{1};
struct float4 { float x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float host_f16_to_f32(unsigned short h) { _Float16 x; memcpy(&x, &h, 2); return (float)x; }
static inline unsigned short host_f32_to_f16_rn(float f) { _Float16 x = (_Float16)f; unsigned short h; memcpy(&h, &x, 2); return h; }
#include KERNELS
typedef void (*K)(const u8 *, void *, u64);
#define E(t) {#t "_f32", dequant_##t##_f32}, {#t "_f16", dequant_##t##_f16}, {#t "_bf16", dequant_##t##_bf16},
struct { const char *n; K k; } table[] = {E(q4_0) E(q4_1) E(q5_0) E(q5_1) E(q8_0) E(q2_k) E(q3_k) E(q4_k) E(q5_k) E(q6_k) E(iq4_nl) E(iq4_xs) E(f32) E(f16) E(bf16)};
int main(int argc, char **argv) {
  // harness NAME IN OUT N OUT_BYTES_PER_ELEM MISALIGN
  std::string name = argv[1];
  FILE *f = fopen(argv[2], "rb"); std::vector<u8> in; { fseek(f, 0, SEEK_END); long s = ftell(f); fseek(f, 0, SEEK_SET); in.resize(s); fread(in.data(), 1, s, f); fclose(f); }
  u64 n = strtoull(argv[4], 0, 10); int ob = atoi(argv[5]); int mis = atoi(argv[6]);
  std::vector<u8> buf(n * ob + 64);
  u8 *out = buf.data(); while (((uintptr_t)out & 15) != 0) out++; out += mis;
  std::vector<u8> inbuf(in.size() + 64); u8 *ip = inbuf.data(); while (((uintptr_t)ip & 15) != 0) ip++;
  memcpy(ip, in.data(), in.size());
  for (auto &e : table) if (name == e.n) { e.k(ip, out, n); FILE *o = fopen(argv[3], "wb"); fwrite(out, 1, n * ob, o); fclose(o); return 0; }
  fprintf(stderr, "no kernel %s\n", name.c_str()); return 2;
}
"""

# name: (gguf type, block elements, block bytes, f16 field offsets)
TYPES = {
    "q4_0": (Q.Q4_0, 32, 18, [0]), "q4_1": (Q.Q4_1, 32, 20, [0, 2]), "q5_0": (Q.Q5_0, 32, 22, [0]),
    "q5_1": (Q.Q5_1, 32, 24, [0, 2]), "q8_0": (Q.Q8_0, 32, 34, [0]),
    "q2_k": (Q.Q2_K, 256, 84, [80, 82]), "q3_k": (Q.Q3_K, 256, 110, [108]),
    "q4_k": (Q.Q4_K, 256, 144, [0, 2]), "q5_k": (Q.Q5_K, 256, 176, [0, 2]),
    "q6_k": (Q.Q6_K, 256, 210, [208]), "iq4_nl": (Q.IQ4_NL, 32, 18, [0]),
    "iq4_xs": (Q.IQ4_XS, 256, 136, [0]),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=97)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    work = tempfile.mkdtemp(prefix="weft-dequant-host-")
    src, exe = os.path.join(work, "harness.cpp"), os.path.join(work, "harness")
    open(src, "w").write(HARNESS)
    subprocess.run(["g++", "-O2", "-std=c++17", "-ffp-contract=off", "-Wno-unknown-pragmas",
                    f'-DKERNELS="{KERNELS}"', "-o", exe, src], check=True)

    def finite_f16(k):
        b = rng.integers(0, 1 << 16, k, dtype=np.uint32)
        b[(b & 0x7C00) == 0x7C00] &= 0xBFFF
        return b.astype(np.uint16)

    def bf16_bits(f):  # half::bf16::from_f32
        x = f.view(np.uint32).astype(np.uint64)
        nan = (x & 0x7FFFFFFF) > 0x7F800000
        up = ((x & 0x8000) != 0) & ((x & 0x17FFF) != 0)
        return np.where(nan, (x >> 16) | 0x40, (x >> 16) + up).astype(np.uint16)

    def run(name, data, n, ob, misalign):
        inp, out = os.path.join(work, "in.bin"), os.path.join(work, "out.bin")
        open(inp, "wb").write(data.tobytes())
        subprocess.run([exe, name, inp, out, str(n), str(ob), str(misalign)], check=True)
        return np.fromfile(out, dtype=np.uint8)

    total = 0

    def compare(name, data, ref):
        nonlocal total
        with np.errstate(over="ignore"):
            wants = (("f32", 4, ref.view(np.uint32)),
                     ("f16", 2, ref.astype(np.float16).view(np.uint16)),
                     ("bf16", 2, bf16_bits(ref)))
        for out, ob, want in wants:
            for misalign in (0, ob):
                got = run(f"{name}_{out}", data, ref.size, ob, misalign).view(want.dtype)
                bad = int(np.count_nonzero(got != want))
                total += bad
                where = f" (first at {int(np.argmax(got != want))})" if bad else ""
                print(f"{name:7} -> {out:5} misaligned={bool(misalign)!s:5}: {bad} of {ref.size} differ{where}")

    nb = args.blocks
    for name, (qt, be, bb, offs) in TYPES.items():
        blocks = rng.integers(0, 256, (nb, bb), dtype=np.uint8)
        for o in offs:
            blocks[:, o:o + 2] = finite_f16(nb).view(np.uint8).reshape(nb, 2)
        data = blocks.reshape(-1)
        compare(name, data, quants.dequantize(data, qt).astype(np.float32).reshape(-1))
    # Plain types, with an element count that is not a multiple of 8 (the partial last group).
    n = 8 * 123 + 5
    b = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    b[(b & 0x7F800000) == 0x7F800000] &= 0xBFFFFFFF
    compare("f32", b.view(np.uint8), b.view(np.float32))
    h = finite_f16(n)
    compare("f16", h.view(np.uint8), h.view(np.float16).astype(np.float32))
    bb = rng.integers(0, 1 << 16, n, dtype=np.uint32)
    bb[(bb & 0x7F80) == 0x7F80] &= 0xBFFF
    bb = bb.astype(np.uint16)
    compare("bf16", bb.view(np.uint8), (bb.astype(np.uint32) << 16).view(np.float32))
    print(f"total differing outputs: {total}")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
