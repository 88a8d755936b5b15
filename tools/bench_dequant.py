"""Dequantization benchmark: the peer side (gguf-py 0.19.0's numpy) and the input file.

    python3 tools/bench_dequant.py make /tmp/bench.gguf     # ~70 MB: one 2048x4096 tensor per type
    python3 tools/bench_dequant.py run /tmp/bench.gguf      # gguf-py's dequantize, best of N
    weft bench dequant /tmp/bench.gguf                      # weft on the same file

Quantizable types are made with gguf-py's `quantize` from normal data; K and IQ types are random
blocks whose fp16 scales are finite (the recipe of tools/gen_gguf_fixtures.py). Throughput
does not depend on the values, only on the type.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT, GGML_QUANT_SIZES

sys.path.insert(0, str(Path(__file__).parent))
from gen_gguf_fixtures import F16_SCALE_FIELDS, random_f16  # noqa: E402

ROWS, COLS = 2048, 4096
QUANTIZED = [QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1]
RAW = [QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_XS]


def make(path: str) -> None:
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(path, arch="bench")
    src = rng.standard_normal((ROWS, COLS), dtype=np.float32)
    for t in QUANTIZED:
        data = gguf.quants.quantize(src, t)
        w.add_tensor(t.name.lower(), data, raw_dtype=t)
    for t in RAW:
        bs, ts = GGML_QUANT_SIZES[t]
        n_blocks = ROWS * COLS // bs
        blocks = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
        for off in F16_SCALE_FIELDS[t]:
            blocks[:, off:off + 2] = random_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        w.add_tensor(t.name.lower(), blocks.reshape(ROWS, COLS // bs * ts), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def run(path: str, repeat: int = 3) -> None:
    reader = gguf.GGUFReader(path)
    rows = {}
    for t in reader.tensors:
        raw = np.array(t.data)
        gguf.quants.dequantize(raw, t.tensor_type)  # warm up (IQ grids, page cache)
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            gguf.quants.dequantize(raw, t.tensor_type)
            best = min(best, time.perf_counter() - start)
        n = int(t.n_elements)
        rows[t.tensor_type.name] = {"elements": n, "bytes": int(t.n_bytes), "seconds": best,
                                    "in_gb_s": t.n_bytes / best / 1e9, "out_gelem_s": n / best / 1e9}
    print(json.dumps({"file": path, "peer": f"gguf-py {gguf.__version__ if hasattr(gguf, '__version__') else '0.19.0'} (numpy {np.__version__})", "types": rows}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "run"):
        sys.exit(__doc__)
    make(sys.argv[2]) if sys.argv[1] == "make" else run(sys.argv[2])
