"""Checks engine/cuda/src/kernels/flash_attn_sm90.cu against torch on a Hopper GPU, outside weft.

    python3 tools/check_flash_sm90.py [--source FILE] [--block-kv 96] [--iters 20]

Compiles flash_common.cuh + the kernel source with CuPy's NVRTC for sm_90a, runs it on random
bf16 inputs of several shapes (sequences on and off the 128-row tiles, both head dims) and
compares with an f32 reference computed by torch from the same rounded inputs; then times it
and torch's SDPA with CUDA events. Exits non-zero when any shape is off by more than 2e-2 of
the largest reference value. `--source` runs another copy of the kernel (for trying a change
without rebuilding weft); `--block-kv` compiles it for another key-tile size (its BC macro; weft
builds the default, FlashKernel::block_kv in engine/cuda/src/attention_plan.rs).
"""
import argparse
import pathlib
import sys

import cupy
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNELS = ROOT / "engine/cuda/src/kernels"
SHAPES = [(1, 2, 300, 128), (1, 2, 300, 64), (2, 3, 1000, 128), (1, 24, 4608, 128), (1, 24, 4608, 64)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--source", default=str(KERNELS / "flash_attn_sm90.cu"))
    p.add_argument("--block-kv", type=int)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    code = (KERNELS / "flash_common.cuh").read_text() + pathlib.Path(args.source).read_text()
    options = ["--std=c++17", "-arch=sm_90a"]
    if args.block_kv:
        options.append(f"-DBC={args.block_kv}")
    block_kv = args.block_kv or 96
    module = cupy.RawModule(code=code, options=tuple(options), backend="nvrtc")
    failed = False
    for b, h, s, d in SHAPES:
        fn = module.get_function(f"flash_attn_sm90_bf16_d{d}")
        shared = (128 + 4 * block_kv) * d * 2 + 1024
        fn.max_dynamic_shared_size_bytes = shared
        q, k, v = (torch.randn(b, h, s, d, device="cuda").bfloat16() for _ in range(3))
        o = torch.zeros_like(q)
        scale = d ** -0.5
        scale_log2 = scale * 1.4426950408889634

        def launch():
            ptrs = [cupy.uint64(t.data_ptr()) for t in (q, k, v, o)]
            strides = [cupy.int64(x) for t in (q, k, v, o) for x in (t.stride(0), t.stride(1), t.stride(2))]
            fn(((s + 127) // 128, b * h, 1), (256, 1, 1),
               (*ptrs, *strides, cupy.int32(h), cupy.int32(s), cupy.int32(s), cupy.float32(scale_log2)),
               shared_mem=shared)

        launch()
        torch.cuda.synchronize()
        ref = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * scale, dim=-1) @ v.float()
        err = (o.float() - ref).abs().max().item()
        top = ref.abs().max().item()
        ok = err <= 2e-2 * top and not torch.isnan(o).any().item()
        failed |= not ok

        def timed(f):
            for _ in range(3):
                f()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.iters):
                f()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / args.iters

        ms = timed(launch)
        sdpa = timed(lambda: F.scaled_dot_product_attention(q, k, v))
        flops = 4 * b * h * s * s * d
        print(f"BC={block_kv} {b}x{h}x{s}x{d}: max|err| {err:.2e} (max|ref| {top:.3f}) {'ok' if ok else 'WRONG'}; "
              f"wgmma {ms:.3f} ms ({flops / ms / 1e9:.0f} TFLOP/s), torch SDPA {sdpa:.3f} ms "
              f"({flops / sdpa / 1e9:.0f}), ratio {ms / sdpa:.2f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
