"""Compares the PNGs of two output folders picture by picture (same file names): the largest
difference of any channel in /255, and how many of the values differ. Used to check a CUDA run of a
workflow against the CPU run of the same binary (docs/BENCHMARKS.md).

Usage: python3 tools/compare_pngs.py CPU_DIR CUDA_DIR"""
import os
import sys

import numpy as np
from PIL import Image

a_dir, b_dir = sys.argv[1], sys.argv[2]
names = sorted(n for n in os.listdir(a_dir) if n.endswith(".png"))
if not names:
    sys.exit(f"no PNGs in {a_dir}")
worst = 0
for name in names:
    path_b = os.path.join(b_dir, name)
    if not os.path.exists(path_b):
        sys.exit(f"{name}: missing from {b_dir}")
    a = np.asarray(Image.open(os.path.join(a_dir, name)).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(path_b).convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        sys.exit(f"{name}: {a.shape} vs {b.shape}")
    d = np.abs(a - b)
    worst = max(worst, int(d.max()))
    print(f"{name}: max {d.max()}/255, mean {d.mean():.3f}/255, {int((d > 0).sum())} of {d.size} values differ")
print(f"worst: {worst}/255 over {len(names)} pictures")
