"""GEMM peer for `weft bench gemm`: torch matmul on the same shapes, timed with CUDA events.

    python3 tools/bench_gemm_torch.py [--dtype bf16|f16] [--iters 20] [--m M --k K --n N] [--json]
    weft bench gemm --device cuda:0                     # burn-cuda vs weft's cuBLASLt, same shapes

Shapes are M x K x N (A [M, K] . B [K, N]); the defaults are 4608x3072x12288 (Flux's MLP
up-projection at 1024^2) and 8192^3. Besides A @ B it times F.linear(x, W, bias) with W stored
[N, K], the form models use (the peer of weft's x.W^T + bias row).
"""
import argparse
import json

import torch
import torch.nn.functional as F

DEFAULT_SHAPES = [(4608, 3072, 12288), (8192, 8192, 8192)]


def time_ms(fn, iters, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f16"])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--m", type=int)
    p.add_argument("--k", type=int)
    p.add_argument("--n", type=int)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    given = (args.m, args.k, args.n)
    if all(v is None for v in given):
        shapes = DEFAULT_SHAPES
    elif all(v is not None and v > 0 for v in given):
        shapes = [given]
    else:
        p.error("give all of --m, --k, --n (each > 0), or none")
    dev = torch.device("cuda:0")
    rows = []
    for m, k, n in shapes:
        a = torch.rand(m, k, device=dev, dtype=torch.float32).mul_(2).sub_(1).to(dt)
        b = torch.rand(k, n, device=dev, dtype=torch.float32).mul_(2).sub_(1).to(dt)
        w = torch.rand(n, k, device=dev, dtype=torch.float32).mul_(2).sub_(1).to(dt)
        bias = torch.rand(n, device=dev, dtype=torch.float32).mul_(2).sub_(1).to(dt)
        flops = 2.0 * m * k * n
        mm = time_ms(lambda: torch.matmul(a, b), args.iters)
        lin = time_ms(lambda: F.linear(a, w, bias), args.iters)
        rows.append({
            "m": m, "k": k, "n": n, "dtype": args.dtype, "iters": args.iters,
            "matmul_ms": mm, "matmul_tflops": flops / (mm * 1e-3) / 1e12,
            "linear_bias_ms": lin, "linear_bias_tflops": flops / (lin * 1e-3) / 1e12,
        })
        del a, b, w, bias
        torch.cuda.empty_cache()
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda, "rows": rows}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"torch {info['torch']} (CUDA {info['cuda']}) on {info['device']}, {args.dtype}, {args.iters} iterations")
    print(f"{'shape':>20} {'matmul ms (TFLOP/s)':>22} {'linear+bias ms (TFLOP/s)':>26}")
    for r in rows:
        shape = f"{r['m']}x{r['k']}x{r['n']}"
        print(f"{shape:>20} {r['matmul_ms']:>12.3f} ({r['matmul_tflops']:5.0f}) {r['linear_bias_ms']:>16.3f} ({r['linear_bias_tflops']:5.0f})")


if __name__ == "__main__":
    main()
