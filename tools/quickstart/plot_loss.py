"""Draws the quickstart's training loss curves (tools/quickstart/runs/log-{vae,dit}.json) as one SVG,
with no plotting library:

    python3 tools/quickstart/plot_loss.py --out docs/images/quickstart-loss.svg
"""
import argparse
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def panel(points, x0, title, ylabel, log_y):
    """One 420x260 panel at horizontal offset x0: a polyline of (step, value)."""
    w, h, left, top = 420, 260, 60, 30
    pw, ph = w - left - 20, h - top - 40
    xs = [p[0] for p in points]
    ys = [math.log10(p[1]) if log_y else p[1] for p in points]
    xmax = max(xs) or 1
    ylo, yhi = min(ys), max(ys)
    if yhi == ylo:
        yhi = ylo + 1
    sx = lambda x: x0 + left + pw * x / xmax  # noqa: E731
    sy = lambda y: top + ph * (1 - (y - ylo) / (yhi - ylo))  # noqa: E731
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
    out = [f'<text x="{x0 + w / 2}" y="18" text-anchor="middle" font-size="13">{title}</text>',
           f'<rect x="{x0 + left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>',
           f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>']
    for frac in (0, 0.5, 1):
        y = ylo + frac * (yhi - ylo)
        label = f"{10 ** y:.3g}" if log_y else f"{y:.3g}"
        out.append(f'<text x="{x0 + left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end" font-size="10">{label}</text>')
    for frac in (0, 0.5, 1):
        out.append(f'<text x="{sx(frac * xmax):.1f}" y="{top + ph + 14}" text-anchor="middle" font-size="10">'
                   f'{int(frac * xmax)}</text>')
    out.append(f'<text x="{x0 + left + pw / 2}" y="{top + ph + 30}" text-anchor="middle" font-size="11">step</text>')
    out.append(f'<text x="{x0 + 14}" y="{top + ph / 2}" font-size="11" transform="rotate(-90 {x0 + 14} {top + ph / 2})"'
               f' text-anchor="middle">{ylabel}</text>')
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=os.path.join(HERE, "runs"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    vae = json.load(open(os.path.join(args.runs, "log-vae.json")))
    dit = json.load(open(os.path.join(args.runs, "log-dit.json")))
    parts = panel([(s, p) for s, _, p, _ in vae["loss"]], 0, "VAE: reconstruction PSNR (dB)", "PSNR", False)
    parts += panel([(s, avg) for s, _, avg in dit["loss"]], 420,
                   "DiT + CLIP + T5: flow-matching loss (running mean)", "loss (log)", True)
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="840" height="260" font-family="sans-serif">',
           '<rect width="840" height="260" fill="white"/>'] + parts + ["</svg>"]
    with open(args.out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
