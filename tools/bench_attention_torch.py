"""Attention peer for `weft bench attention`: torch SDPA on the same shapes, timed with CUDA events.

    python3 tools/bench_attention_torch.py [--dtype bf16|f16] [--iters 20] [--b B --h H --s S --d D] [--json]
    weft bench attention --device cuda:0                  # weft's flash kernel vs burn-cuda, same shapes

Shapes are B x H x S x D ([batch, heads, seq, head_dim], queries and keys of length S, no mask,
scale 1/sqrt(D)); the defaults are Flux at 1024^2 (1x24x4608x128), the same with D = 64, and two
sequences of 1000 (not a multiple of the kernels' tiles). FLOPs are 4*B*H*S^2*D. Besides the time
it reports max |sdpa - ref| / max |ref| against an f32 reference from the same rounded inputs, the
number weft's bench checks against 2e-2.
"""
import argparse
import json

import torch
import torch.nn.functional as F

DEFAULT_SHAPES = [(1, 24, 4608, 128), (1, 24, 4608, 64), (1, 24, 1000, 128), (2, 8, 1000, 64)]


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
    p.add_argument("--b", type=int)
    p.add_argument("--h", type=int)
    p.add_argument("--s", type=int)
    p.add_argument("--d", type=int)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    given = (args.b, args.h, args.s, args.d)
    if all(v is None for v in given):
        shapes = DEFAULT_SHAPES
    else:
        shape = tuple(v if v is not None else dflt for v, dflt in zip(given, (1, 24, 4608, 128)))
        if min(shape) <= 0:
            p.error("--b, --h, --s and --d must be > 0")
        shapes = [shape]
    dev = torch.device("cuda:0")
    rows = []
    for b, h, s, d in shapes:
        q, k, v = (torch.randn(b, h, s, d, device=dev, dtype=torch.float32).to(dt) for _ in range(3))
        scale = d ** -0.5
        ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), args.iters)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale).float()
        ref = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * scale, dim=-1) @ v.float()
        rel = ((out - ref).abs().max() / ref.abs().max()).item()
        flops = 4.0 * b * h * s * s * d
        rows.append({
            "b": b, "h": h, "s": s, "d": d, "dtype": args.dtype, "iters": args.iters,
            "sdpa_ms": ms, "sdpa_tflops": flops / (ms * 1e-3) / 1e12, "sdpa_rel_err": rel,
        })
        del q, k, v, out, ref
        torch.cuda.empty_cache()
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda, "rows": rows}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"torch {info['torch']} (CUDA {info['cuda']}) on {info['device']}, {args.dtype}, {args.iters} iterations")
    print(f"{'shape':>18} {'sdpa ms (TFLOP/s)':>20} {'max|err|/max|ref|':>18}")
    for r in rows:
        shape = f"{r['b']}x{r['h']}x{r['s']}x{r['d']}"
        print(f"{shape:>18} {r['sdpa_ms']:>11.3f} ({r['sdpa_tflops']:5.0f}) {r['sdpa_rel_err']:>18.2e}")


if __name__ == "__main__":
    main()
