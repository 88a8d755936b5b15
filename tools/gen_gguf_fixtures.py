#!/usr/bin/env python3
"""Generate the GGUF / safetensors test fixtures for weft's loaders.

The independent reference is the `gguf` Python package (gguf-py, written
against 0.19.0) plus numpy, and the `safetensors` PyPI package.  Every output
is seeded and deterministic; re-running the script rewrites the same bytes
(the sha256 of every file is recorded in tests/fixtures/gguf/manifest.json,
so drift caused by a different gguf/numpy version shows up as a diff).

Run from the repository root (or anywhere):

    python3 tools/gen_gguf_fixtures.py                 # regenerate everything
    python3 tools/gen_gguf_fixtures.py --refresh-real  # also re-download the
                                                        # llama.cpp vocab files
    python3 tools/gen_gguf_fixtures.py --out /tmp/fx   # write elsewhere (reuses
                                                        # the committed real/ files);
                                                        # diff -r against tests/fixtures
                                                        # to check reproducibility

Requirements: python3 with `gguf` (0.19.0), `numpy`, `safetensors`.  Network is
only needed for --refresh-real (or when tests/fixtures/gguf/real/ is missing);
without it the real files are skipped with a warning and the committed copies
(and their .json) are left alone.

What it writes (paths relative to tests/fixtures/):

gguf/types.gguf
    GGUF v3, no general.alignment key (default alignment 32).  One tensor per
    ggml type that gguf-py can decode, named after the lower-case type name
    ("q4_k", "iq2_xxs", ...), PyTorch shape [3, 512] (ggml ne = [512, 3]).
    * F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0: gguf.quants.quantize() of one
      seeded normal float32 array (row 1 starts with a 32-wide all-zero block
      and has a few more exact zeros, row 2 is scaled by 100).
    * every other block type (K, IQ, TQ, MXFP4, NVFP4): random block bytes whose
      scale fields are patched to finite values (fp16 |d| in [1e-3, 1] with a
      random sign; block 1 of each tensor gets an fp16 subnormal d; MXFP4 E8M0
      exponents in [118, 130] plus 0/1/2 in the first blocks; NVFP4 UE4M3
      scales mostly in [0x30, 0x48] plus 0x00, 0x03, 0x7F, 0xFF in block 0).
    * F64 I8 I16 I32 I64: written from native numpy arrays; gguf.quants cannot
      dequantize them, so their reference is GGUFReader's typed view.
gguf/expected/<name>.npy
    float32, shape [3, 512]: gguf.quants.dequantize(raw_bytes, type) (for
    F64/I* the typed data cast with numpy .astype(float32)).  Compare bitwise.
gguf/expected/<name>.native.npy
    F64/I8/I16/I32/I64 only: the data in its natural dtype (<f8, |i1, <i2, ...).
gguf/metadata.gguf
    GGUF v3, general.alignment = 64 (UINT32), general.architecture = "flux".
    One key per scalar value type, strings with unicode/emoji/NUL/empty, arrays
    of every scalar type, arrays of strings, two empty arrays, a nested array
    (ARRAY of ARRAY of INT32 with an empty inner array), and tensors: a name
    longer than 64 bytes, a 5-D F32 tensor, a 1-D tensor, and `w` stored 2-D
    [9, 256] F16 with comfy.gguf.orig_shape.w = INT32 [32, 8, 3, 3].
gguf/expected/metadata/<tensor name>.npy
    float32 values of the metadata.gguf tensors in their PyTorch shape (the
    orig_shape for `w`).
gguf/v2.gguf
    Hand-written GGUF version 2 file (same u64 counts/string lengths as v3):
    4 KVs, tensors x.weight F32 [2, 3] and y.weight Q8_0 [32].  The file ends
    right after the last tensor's bytes (no trailing padding).
gguf/expected/v2/<name>.npy   float32 values of the v2.gguf tensors.
gguf/empty.gguf
    GGUF v3, a few KVs, zero tensors, nothing after the KV section (the file
    size is not a multiple of the alignment).
gguf/real/ggml-vocab-bert-bge.gguf, gguf/real/ggml-vocab-llama-spm.gguf
    Unmodified vocab-only GGUFs from llama.cpp (models/ in the
    llama-cpp-python 0.3.36 sdist); both v3, zero tensors, no trailing padding.
gguf/<file>.json  (one next to every .gguf above, including real/)
    What GGUFReader reports -- schema below.
gguf/ggml_types.json
    A list with one object per GGMLQuantizationType: {"name", "id",
    "block_size", "type_size" (GGML_QUANT_SIZES), "quantize", "dequantize"
    (does gguf.quants support it), "in_types_gguf", "reference"
    ("gguf.quants.dequantize", "GGUFReader typed view" or null)}.
gguf/quantize/input.npy
    float32 [4, 256]: row 0 normal, row 1 all zeros, row 2 normal except its
    first 32-block holds exact .5 ties (amax 127), row 3 normal with one
    huge value (12345.678).
gguf/quantize/{q8_0,q4_0,q4_1,q5_0,q5_1}.bin
    raw bytes of gguf.quants.quantize(input, type) (row-major blocks).
gguf/manifest.json
    generator versions, seed, and size + sha256 of every file written.
safetensors/small.safetensors, safetensors/small.json,
safetensors/expected/<name>.npy
    F32/F16/BF16 tensors (1-D, 2-D, 4-D, decoder.* names) plus __metadata__,
    written with safetensors.serialize (the function behind
    safetensors.numpy.save; numpy has no bfloat16 so the TensorSpecs are built
    by hand).  safetensors writes __metadata__ in random (Rust HashMap) order,
    so the script re-serializes until the keys come out sorted; the header is
    space-padded to a multiple of 8 and tensors are laid out by dtype size
    (descending) then name.  Expected values are float32 in the tensor's shape.

GGUF .json schema (all integers are exact JSON integers, floats are written
with Python's repr so parsing to f64 and casting to f32 round-trips FLOAT32):
{
  "file": "types.gguf",            base name
  "file_size": int,
  "version": int,                  GGUF version from the header
  "tensor_count": int, "kv_count": int,   header counts
  "alignment": int,                general.alignment or 32
  "header_end": int,               offset just past the last tensor-info
                                   record (past the last KV if no tensors),
                                   before any alignment padding
  "data_offset": int,              GGUFReader.data_offset = header_end rounded
                                   up to alignment (can exceed file_size when
                                   there are no tensors)
  "metadata_order": [key, ...],    keys in file order (GGUF.* pseudo-keys the
                                   reader adds are skipped everywhere)
  "metadata": {key: value},        STRING -> string, integers -> int,
                                   FLOAT32/FLOAT64 -> float, BOOL -> bool,
                                   ARRAY -> list (nested arrays stay nested)
  "metadata_types": {key: type},   "UINT8" ... "FLOAT64", "STRING", and
                                   "ARRAY[<elem>]" e.g. "ARRAY[STRING]",
                                   "ARRAY[ARRAY[INT32]]" (the element type of
                                   a nested array is taken from its first
                                   inner array; empty arrays keep their
                                   declared element type)
  "metadata_truncated": {key: {"len": N, "head": [first 50 elements],
                               "tail": [last 5 elements],
                               "string_bytes_total": int (STRING arrays only:
                               sum of UTF-8 byte lengths of all N elements)}},
                                   Truncation convention: a top-level ARRAY
                                   value with more than 100 elements is NOT in
                                   "metadata"; it is here instead (its type is
                                   still in "metadata_types").  Only the real
                                   vocab files hit this.
  "tensors": [                     in file (tensor-info) order
    {"name": str,
     "type": "Q4_K", "type_id": 12,
     "shape": [..],                PyTorch order: reversed ne, replaced by
                                   comfy.gguf.orig_shape.<name> when present
     "stored_shape": [..],         reversed ne (no orig_shape applied)
     "ne": [..],                   ggml order, as in the file
     "n_elements": int,
     "offset": int,                absolute byte offset of the data in the file
     "rel_offset": int,            offset relative to data_offset (the value
                                   stored in the tensor-info record)
     "nbytes": int}]
}

safetensors/small.json schema:
{"file", "file_size", "header_len" (the u64 at byte 0), "data_start"
 (8 + header_len), "metadata": {...} (__metadata__), "tensors": [{"name",
 "dtype" ("F32"/"F16"/"BF16"), "shape", "data_offsets": [begin, end] (relative
 to data_start, as in the header), "offset" (absolute), "nbytes",
 "expected": "expected/<name>.npy"}] in data order}
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures"
SEED = 0x5EED_3EF7

# Real-world files: llama.cpp vocab GGUFs shipped in the llama-cpp-python sdist.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
REAL_VOCABS = {
    "ggml-vocab-bert-bge.gguf": "fbcbe22278fb302694d5f4a41bfe48c5f90e8e3554eab1c0435387dff654a854",
    "ggml-vocab-llama-spm.gguf": "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69",
}

TRUNCATE_OVER = 100
TRUNC_HEAD = 50
TRUNC_TAIL = 5

ROWS, COLS = 3, 512

# Types whose data is produced with gguf.quants.quantize from float32 input.
QUANTIZE_SOURCED = [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0]
# Types gguf.quants cannot dequantize but GGUFReader exposes as typed arrays.
NATIVE_TYPES = {
    QT.F64: np.float64,
    QT.I8: np.int8,
    QT.I16: np.int16,
    QT.I32: np.int32,
    QT.I64: np.int64,
}
# Byte offsets, inside one block, of the fp16 scale fields (d, dmin) of the
# block types filled with random bytes.  From the np.hsplit layouts in
# gguf/quants.py and the sizes in GGML_QUANT_SIZES.
F16_SCALE_FIELDS = {
    QT.Q2_K: [80, 82],      # scales[16] qs[64] d dmin
    QT.Q3_K: [108],         # hmask[32] qs[64] scales[12] d
    QT.Q4_K: [0, 2],        # d dmin scales[12] qs[128]
    QT.Q5_K: [0, 2],        # d dmin scales[12] qh[32] qs[128]
    QT.Q6_K: [208],         # ql[128] qh[64] scales[16] d
    QT.IQ2_XXS: [0],        # d qs[64]
    QT.IQ2_XS: [0],         # d qs[64] scales[8]
    QT.IQ2_S: [0],          # d qs[32] signs[32] qh[8] scales[8]
    QT.IQ3_XXS: [0],        # d qs[64] scales[32]
    QT.IQ3_S: [0],          # d qs[64] qh[8] signs[32] scales[4]
    QT.IQ1_S: [0],          # d qs[32] qh[8 x u16]
    QT.IQ4_NL: [0],         # d qs[16]
    QT.IQ4_XS: [0],         # d scales_h(u16) scales_l[4] qs[128]
    QT.TQ1_0: [52],         # qs[48] qh[4] d
    QT.TQ2_0: [64],         # qs[64] d
}
# Handled specially: IQ1_M (fp16 d spread over the top nibbles of its four
# u16 scales), MXFP4 (E8M0 byte), NVFP4 (four UE4M3 bytes).
SPECIAL_RAW = {QT.IQ1_M, QT.MXFP4, QT.NVFP4}


# --------------------------------------------------------------------------
# helpers

def rng_for(tag: str) -> np.random.Generator:
    """Independent deterministic stream per fixture (tag hashed with crc32)."""
    return np.random.default_rng([SEED, zlib.crc32(tag.encode())])


def save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    np.save(path, arr, allow_pickle=False)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def can_dequantize(t: QT) -> bool:
    bs, ts = GGML_QUANT_SIZES[t]
    n_blocks = 256 // bs if bs <= 256 else 1
    try:
        out = dequantize(np.zeros((1, n_blocks * ts), dtype=np.uint8), t)
    except NotImplementedError:
        return False
    return out.dtype == np.float32


def can_quantize(t: QT) -> bool:
    try:
        quantize(np.zeros((1, 256), dtype=np.float32), t)
    except NotImplementedError:
        return False
    return True


def random_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite fp16 values with |x| in [1e-3, 1] (log-uniform), random sign."""
    mag = 10.0 ** rng.uniform(-3.0, 0.0, size=n)
    sign = np.where(rng.integers(0, 2, size=n) == 1, -1.0, 1.0)
    out = (mag * sign).astype(np.float16)
    assert np.all(np.isfinite(out)) and np.all(out != 0)
    return out


def f32_round_int(n: int) -> float:
    """Correctly rounded (nearest, ties to even) int -> f32, exactly."""
    if n == 0:
        return 0.0
    sign = -1 if n < 0 else 1
    a = abs(n)
    shift = a.bit_length() - 24
    if shift > 0:
        q, r = divmod(a, 1 << shift)
        half = 1 << (shift - 1)
        if r > half or (r == half and (q & 1)):
            q += 1
        a = q << shift
    return float(np.float32(sign * a))  # a now fits 24 significant bits


# --------------------------------------------------------------------------
# types.gguf

def float_source(rng: np.random.Generator) -> np.ndarray:
    data = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    data[1, :32] = 0.0                      # a whole all-zero block
    zeros = rng.choice(COLS, size=6, replace=False)
    data[0, zeros] = 0.0                    # a few exact zeros
    data[1, 100] = 0.0
    data[2] *= np.float32(100.0)            # a row of large values
    return data


def random_blocks(t: QT, rng: np.random.Generator) -> np.ndarray:
    bs, ts = GGML_QUANT_SIZES[t]
    assert COLS % bs == 0
    n_blocks = ROWS * COLS // bs
    blocks = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    if t in F16_SCALE_FIELDS:
        for off in F16_SCALE_FIELDS[t]:
            vals = random_f16(rng, n_blocks)
            blocks[:, off:off + 2] = vals.view(np.uint8).reshape(n_blocks, 2)
        # an fp16 subnormal d in block 1
        off = F16_SCALE_FIELDS[t][0]
        sub = np.array([rng.integers(1, 0x400)], dtype=np.uint16)
        blocks[1, off:off + 2] = sub.view(np.uint8)
    elif t == QT.IQ1_M:
        # 32 qs, 16 qh, then 4 little-endian u16 scales; the fp16 d is the
        # concatenation of their top nibbles: bits 0-3 from scale 0, ...
        d = random_f16(rng, n_blocks).view(np.uint16).copy()
        d[1] = rng.integers(1, 0x400)  # subnormal
        sc = blocks[:, 48:56].copy().view(np.uint16)  # (n_blocks, 4)
        for i in range(4):
            nib = (d >> np.uint16(4 * i)) & np.uint16(0xF)
            sc[:, i] = (sc[:, i] & np.uint16(0x0FFF)) | (nib << np.uint16(12))
        blocks[:, 48:56] = sc.view(np.uint8)
    elif t == QT.MXFP4:
        e = rng.integers(118, 131, size=n_blocks).astype(np.uint8)
        e[:3] = [0, 1, 2]  # the subnormal / smallest-normal E8M0 paths
        blocks[:, 0] = e
    elif t == QT.NVFP4:
        s = rng.integers(0x30, 0x49, size=(n_blocks, 4)).astype(np.uint8)
        s[0] = [0x00, 0x03, 0x7F, 0xFF]  # zero, subnormal, "NaN" (-> 0), max
        blocks[:, 0:4] = s
    else:
        raise RuntimeError(f"no raw-block recipe for {t.name}; update F16_SCALE_FIELDS")
    return blocks.reshape(ROWS, COLS // bs * ts)


def build_types(out: Path, dequant_ok: list[QT]) -> list[QT]:
    gdir = out / "gguf"
    src = float_source(rng_for("types/float"))
    writer = gguf.GGUFWriter(gdir / "types.gguf", arch="flux")
    writer.add_name("weft ggml type fixture")
    writer.add_uint32("weft.fixture.rows", ROWS)
    writer.add_uint32("weft.fixture.cols", COLS)

    types = sorted(set(dequant_ok) | set(NATIVE_TYPES), key=int)
    written = []
    for t in types:
        name = t.name.lower()
        if t in NATIVE_TYPES:
            arr = native_data(t, rng_for(f"types/{name}"))
            writer.add_tensor(name, arr)
            save_npy(gdir / "expected" / f"{name}.native.npy", arr)
            exp = arr.astype(np.float32)
            if np.issubdtype(arr.dtype, np.integer):
                check = np.array([f32_round_int(int(v)) for v in arr.ravel()], dtype=np.float32)
                if not np.array_equal(check.view(np.uint32), exp.ravel().view(np.uint32)):
                    raise RuntimeError(f"numpy int->f32 cast is not correctly rounded for {name}")
        else:
            if t in QUANTIZE_SOURCED:
                q = quantize(src, t)
                raw = np.ascontiguousarray(q).view(np.uint8).reshape(ROWS, -1)
            else:
                raw = random_blocks(t, rng_for(f"types/{name}"))
            exp = dequantize(raw, t)
            writer.add_tensor(name, raw, raw_dtype=t)
        exp = np.ascontiguousarray(exp, dtype=np.float32).reshape(ROWS, COLS)
        assert np.all(np.isfinite(exp)), name
        save_npy(gdir / "expected" / f"{name}.npy", exp)
        written.append(t)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def native_data(t: QT, rng: np.random.Generator) -> np.ndarray:
    n = ROWS * COLS
    if t == QT.F64:
        a = rng.standard_normal(n) * 10.0 ** rng.uniform(-5, 5, size=n)
        a[:6] = [0.0, -0.0, 1.0 / 3.0, 1e-40, 3.0e38, 2.0 ** -149 * 1.5]
        return a.reshape(ROWS, COLS).astype(np.float64)
    info = np.iinfo(NATIVE_TYPES[t])
    a = rng.integers(info.min, info.max, size=n, dtype=NATIVE_TYPES[t], endpoint=True)
    a[:4] = [info.min, info.max, 0, -1]
    if info.bits >= 32:
        a[4:6] = [(1 << 24) + 1, -((1 << 24) + 3)]  # ties when cast to f32
        a[6:64] = rng.integers(-1000, 1000, size=58)  # some small values too
    return a.reshape(ROWS, COLS)


# --------------------------------------------------------------------------
# metadata.gguf

class TypedArray:
    """An ARRAY value with an explicit element type (allows empty / nested)."""

    def __init__(self, itype: VT, items: list):
        self.itype = itype
        self.items = items


class FixtureWriter(gguf.GGUFWriter):
    """GGUFWriter that can also pack empty and nested arrays.

    gguf-py 0.19.0's writer refuses empty arrays (add_array silently drops
    them, _pack_val raises) and infers nested element types from the first
    item, so an empty inner array cannot be written.  TypedArray values carry
    their element type explicitly; everything else goes through gguf-py.
    """

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if isinstance(val, TypedArray):
            assert vtype == VT.ARRAY
            out = bytearray()
            if add_vtype:
                out += self._pack("I", VT.ARRAY)
            out += self._pack("I", val.itype)
            out += self._pack("Q", len(val.items))
            for item in val.items:
                out += self._pack_val(item, val.itype, add_vtype=False)
            return bytes(out)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


LONG_NAME = "model.diffusion_model.double_blocks.0.img_attn.qkv.weight.very_long_suffix_to_exceed_sixty_four_bytes"


def build_metadata(out: Path) -> None:
    gdir = out / "gguf"
    rng = rng_for("metadata")
    w = FixtureWriter(gdir / "metadata.gguf", arch="flux")  # general.architecture first
    w.add_custom_alignment(64)                                # general.alignment UINT32
    w.add_name("weft metadata fixture")
    kv = w.add_key_value
    # one key per scalar type
    kv("test.uint8", 200, VT.UINT8)
    kv("test.uint8.max", 255, VT.UINT8)
    kv("test.int8", -100, VT.INT8)
    kv("test.uint16", 65535, VT.UINT16)
    kv("test.int16", -32768, VT.INT16)
    kv("test.uint32", 4294967295, VT.UINT32)
    kv("test.int32", -2147483648, VT.INT32)
    kv("test.float32", 3.14159, VT.FLOAT32)
    kv("test.float32.neg_zero", -0.0, VT.FLOAT32)
    kv("test.float32.subnormal", 1e-45, VT.FLOAT32)
    kv("test.float32.max", 3.4028234663852886e38, VT.FLOAT32)
    kv("test.bool.true", True, VT.BOOL)
    kv("test.bool.false", False, VT.BOOL)
    kv("test.string", "héllo wörld ✓ 🦀 日本語 Ωμέγα", VT.STRING)
    kv("test.string.empty", "", VT.STRING)       # add_string() would drop it
    kv("test.string.nul", "a\x00b", VT.STRING)
    kv("test.string.escapes", "line1\nline2\t\"quoted\" \\ end", VT.STRING)
    kv("test.uint64", 18446744073709551615, VT.UINT64)
    kv("test.int64", -9223372036854775808, VT.INT64)
    kv("test.float64", 2.718281828459045, VT.FLOAT64)
    kv("test.float64.tiny", 5e-324, VT.FLOAT64)
    # arrays of every scalar type
    kv("test.array.uint8", [0, 1, 127, 128, 255], VT.ARRAY, sub_type=VT.UINT8)
    kv("test.array.int8", [-128, -1, 0, 1, 127], VT.ARRAY, sub_type=VT.INT8)
    kv("test.array.uint16", [0, 1, 65535], VT.ARRAY, sub_type=VT.UINT16)
    kv("test.array.int16", [-32768, 0, 32767], VT.ARRAY, sub_type=VT.INT16)
    kv("test.array.uint32", [0, 7, 4294967295], VT.ARRAY, sub_type=VT.UINT32)
    kv("test.array.int32", [1, -2, 3, -2147483648, 2147483647], VT.ARRAY)  # inferred INT32
    kv("test.array.float32", [0.5, -1.25, 1e-3, 3.4e38, 0.1], VT.ARRAY)   # inferred FLOAT32
    kv("test.array.bool", [True, False, True, True], VT.ARRAY)           # inferred BOOL
    kv("test.array.string", ["a", "ß", "🦀 crab", "", "tab\there"], VT.ARRAY)
    kv("test.array.uint64", [0, 1, 18446744073709551615], VT.ARRAY, sub_type=VT.UINT64)
    kv("test.array.int64", [-9223372036854775808, 0, 9223372036854775807], VT.ARRAY, sub_type=VT.INT64)
    kv("test.array.float64", [0.1, -2.5, 1e300, 5e-324], VT.ARRAY, sub_type=VT.FLOAT64)
    kv("test.array.empty", TypedArray(VT.INT32, []), VT.ARRAY)
    kv("test.array.empty_strings", TypedArray(VT.STRING, []), VT.ARRAY)
    kv("test.array.nested", TypedArray(VT.ARRAY, [
        TypedArray(VT.INT32, [1, 2, 3]),
        TypedArray(VT.INT32, []),
        TypedArray(VT.INT32, [-4, 5]),
    ]), VT.ARRAY)
    orig_w = [32, 8, 3, 3]  # PyTorch conv weight; 2304 = 9 * 256 elements
    kv("comfy.gguf.orig_shape.w", orig_w, VT.ARRAY, sub_type=VT.INT32)

    expected = {}
    t_long = rng.standard_normal((2, 8)).astype(np.float32)
    t_5d = rng.standard_normal((2, 3, 1, 2, 4)).astype(np.float32)
    t_1d = rng.standard_normal(7).astype(np.float32)
    t_w = rng.standard_normal(orig_w).astype(np.float32)
    w_f16 = t_w.astype(np.float16).reshape(9, 256)  # how ComfyUI-GGUF stores it
    w.add_tensor(LONG_NAME, t_long)
    w.add_tensor("model.five_d", t_5d)
    w.add_tensor("model.bias_1d", t_1d)
    w.add_tensor("w", w_f16)
    expected[LONG_NAME] = t_long
    expected["model.five_d"] = t_5d
    expected["model.bias_1d"] = t_1d
    expected["w"] = w_f16.astype(np.float32).reshape(orig_w)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for name, arr in expected.items():
        save_npy(gdir / "expected" / "metadata" / f"{name}.npy", arr)


# --------------------------------------------------------------------------
# v2.gguf (hand-written) and empty.gguf

def _gstr(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def build_v2(out: Path) -> None:
    gdir = out / "gguf"
    rng = rng_for("v2")
    x = rng.standard_normal((2, 3)).astype(np.float32)
    y_src = rng.standard_normal((1, 32)).astype(np.float32)
    y_raw = quantize(y_src, QT.Q8_0).reshape(-1)  # 34 bytes
    y = dequantize(y_raw.reshape(1, -1), QT.Q8_0).reshape(32)

    kvs = bytearray()
    kvs += _gstr("general.architecture") + struct.pack("<I", VT.STRING) + _gstr("flux")
    kvs += _gstr("general.name") + struct.pack("<I", VT.STRING) + _gstr("weft v2 fixture")
    kvs += _gstr("test.uint32") + struct.pack("<I", VT.UINT32) + struct.pack("<I", 42)
    kvs += (_gstr("test.array.float32") + struct.pack("<IIQ", VT.ARRAY, VT.FLOAT32, 2)
            + struct.pack("<2f", 1.5, -2.0))
    n_kv = 4

    align = 32
    tensors = [("x.weight", QT.F32, list(x.shape), x.tobytes()),
               ("y.weight", QT.Q8_0, [32], y_raw.tobytes())]
    infos = bytearray()
    rel = 0
    offsets = []
    for name, t, shape, data in tensors:
        ne = list(reversed(shape))
        infos += _gstr(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
        infos += struct.pack("<IQ", t, rel)
        offsets.append(rel)
        rel += -(-len(data) // align) * align
    head = struct.pack("<4sIQQ", b"GGUF", 2, len(tensors), n_kv) + kvs + infos
    head += b"\0" * (-len(head) % align)
    body = bytearray()
    for (name, t, shape, data), off in zip(tensors, offsets):
        body += b"\0" * (off - len(body))
        body += data           # no padding after the last tensor
    (gdir / "v2.gguf").write_bytes(bytes(head + body))
    save_npy(gdir / "expected" / "v2" / "x.weight.npy", x)
    save_npy(gdir / "expected" / "v2" / "y.weight.npy", y.astype(np.float32))


def build_empty(out: Path) -> None:
    gdir = out / "gguf"
    w = gguf.GGUFWriter(gdir / "empty.gguf", arch="flux")
    w.add_name("weft empty fixture")
    w.add_uint32("test.uint32", 7)
    w.add_array("test.array.string", ["x", "yz"])
    w.write_header_to_file()
    w.write_kv_data_to_file()   # no write_tensors_to_file(): it would pad
    w.close()
    size = (gdir / "empty.gguf").stat().st_size
    assert size % 32 != 0, "empty.gguf should end unaligned"


# --------------------------------------------------------------------------
# GGUFReader -> JSON

def _walk(parts, i: int, vtype: VT):
    """Decode a value from ReaderField.parts starting at parts[i].

    Returns (python value, type string, next index).  Unlike
    ReaderField.contents(), nested arrays keep their structure.
    """
    if vtype == VT.STRING:
        return bytes(parts[i + 1]).decode("utf-8"), "STRING", i + 2
    if vtype == VT.ARRAY:
        itype = VT(int(parts[i][0]))
        n = int(parts[i + 1][0])
        i += 2
        items = []
        elem = itype.name
        for k in range(n):
            v, ts, i = _walk(parts, i, itype)
            if k == 0:
                elem = ts
            items.append(v)
        if itype == VT.ARRAY and n == 0:
            elem = "ARRAY"
        return items, f"ARRAY[{elem}]", i
    return parts[i].tolist()[0], vtype.name, i + 1


def _flatten(v):
    if isinstance(v, list):
        return [y for x in v for y in _flatten(x)]
    return [v]


def describe_gguf(path: Path) -> dict:
    r = gguf.GGUFReader(path)
    version = int(r.fields["GGUF.version"].parts[0][0])
    tcount = int(r.fields["GGUF.tensor_count"].parts[0][0])
    kcount = int(r.fields["GGUF.kv_count"].parts[0][0])
    order, md, types, trunc = [], {}, {}, {}
    header_end = 0
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        vtype = VT(int(f.parts[2][0]))
        val, tstr, end = _walk(f.parts, 3, vtype)
        assert end == len(f.parts), key
        # cross-check against gguf-py's own (flattening) interpretation
        assert _flatten(val) == (_flatten(f.contents()) if vtype == VT.ARRAY else [f.contents()]), key
        header_end = max(header_end, f.offset + sum(int(p.nbytes) for p in f.parts))
        order.append(key)
        types[key] = tstr
        if vtype == VT.ARRAY and len(val) > TRUNCATE_OVER:
            t = {"len": len(val), "head": val[:TRUNC_HEAD], "tail": val[-TRUNC_TAIL:]}
            if tstr == "ARRAY[STRING]":
                t["string_bytes_total"] = sum(len(s.encode("utf-8")) for s in val)
            trunc[key] = t
        else:
            md[key] = val
    tensors = []
    for t in r.tensors:
        fld = t.field
        header_end = max(header_end, fld.offset + sum(int(p.nbytes) for p in fld.parts))
        ne = [int(x) for x in t.shape]
        stored = list(reversed(ne))
        shape = stored
        orig_key = f"comfy.gguf.orig_shape.{t.name}"
        if orig_key in md:
            shape = [int(x) for x in md[orig_key]]
            assert int(np.prod(shape)) == t.n_elements
        tensors.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "type_id": int(t.tensor_type),
            "shape": shape,
            "stored_shape": stored,
            "ne": ne,
            "n_elements": int(t.n_elements),
            "offset": int(t.data_offset),
            "rel_offset": int(t.data_offset) - int(r.data_offset),
            "nbytes": int(t.n_bytes),
        })
    return {
        "file": path.name,
        "file_size": path.stat().st_size,
        "version": version,
        "tensor_count": tcount,
        "kv_count": kcount,
        "alignment": int(r.alignment),
        "header_end": int(header_end),
        "data_offset": int(r.data_offset),
        "metadata_order": order,
        "metadata": md,
        "metadata_types": types,
        "metadata_truncated": trunc,
        "tensors": tensors,
    }


def json_for(path: Path) -> dict:
    d = describe_gguf(path)
    write_json(path.with_name(path.name + ".json"), d)
    return d


# --------------------------------------------------------------------------
# quantizer reference

def build_quantize(out: Path) -> list[str]:
    qdir = out / "gguf" / "quantize"
    rng = rng_for("quantize")
    x = rng.standard_normal((4, 256)).astype(np.float32)
    x[1] = 0.0
    ties = np.array([127.0, -127.0, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5, -126.5,
                     3.5, -3.5, 63.5, -63.5, 0.0, -0.0], dtype=np.float32)
    x[2, :16] = ties
    x[2, 16:32] = ties[::-1]
    x[3, 77] = 12345.678
    save_npy(qdir / "input.npy", x)
    names = []
    for t in [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1]:
        q = np.ascontiguousarray(quantize(x, t), dtype=np.uint8)
        assert q.shape == (4, 256 // GGML_QUANT_SIZES[t][0] * GGML_QUANT_SIZES[t][1])
        back = dequantize(q, t)
        assert np.all(np.isfinite(back)), t.name
        (qdir / f"{t.name.lower()}.bin").write_bytes(q.tobytes())
        names.append(t.name)
    return names


# --------------------------------------------------------------------------
# real-world vocab files

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def survey_vocab(files: list[Path]) -> None:
    print("  llama.cpp vocab GGUFs in the sdist:")
    for p in sorted(files):
        with open(p, "rb") as f:
            magic, ver, nt, nkv = struct.unpack("<4sIQQ", f.read(24))
        r = gguf.GGUFReader(p)
        end = max(fl.offset + sum(int(x.nbytes) for x in fl.parts)
                  for k, fl in r.fields.items() if not k.startswith("GGUF."))
        size = p.stat().st_size
        print(f"    {p.name:34s} {size:>9d} B  v{ver}  tensors={nt} kv={nkv} "
              f"ends_at_header_end={end == size} size%32={size % 32}")


def fetch_real(real_dir: Path, refresh: bool) -> None:
    missing = [n for n, sha in REAL_VOCABS.items()
               if not (real_dir / n).exists() or _sha256(real_dir / n) != sha]
    if not missing and not refresh:
        return
    real_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="weft-sdist-") as tmp:
        # --no-binary only for this package: `--no-binary :all:` would also
        # build the sdist's build dependencies (cmake, ninja) from source.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--no-binary", "llama-cpp-python",
               f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", tmp]
        print("  fetching:", " ".join(cmd))
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"  WARNING: sdist download failed ({e}); keeping committed real/ files")
            return
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if res.returncode != 0 or not sdists:
            print("  WARNING: sdist download failed; keeping committed real/ files")
            print("  " + res.stderr.strip().replace("\n", "\n  ")[-2000:])
            return
        extract = Path(tmp) / "x"
        found = []
        with tarfile.open(sdists[0], "r:gz") as tf:
            for m in tf:
                base = os.path.basename(m.name)
                if (m.isfile() and "/vendor/llama.cpp/models/" in m.name
                        and base.startswith("ggml-vocab-") and base.endswith(".gguf")):
                    dst = extract / base
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with tf.extractfile(m) as src, open(dst, "wb") as o:
                        shutil.copyfileobj(src, o)
                    found.append(dst)
        survey_vocab(found)
        for name, sha in REAL_VOCABS.items():
            src = extract / name
            if not src.exists():
                print(f"  WARNING: {name} not in the sdist")
                continue
            got = _sha256(src)
            if got != sha:
                print(f"  WARNING: {name} sha256 {got} differs from the pinned {sha}")
            shutil.copyfile(src, real_dir / name)


# --------------------------------------------------------------------------
# safetensors

def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (finite input)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def build_safetensors(out: Path) -> None:
    from safetensors import TensorSpec, serialize, safe_open
    import safetensors

    sdir = out / "safetensors"
    rng = rng_for("safetensors")
    f32_4d = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    f32_1d = rng.standard_normal(8).astype(np.float32)
    f32_2d = rng.standard_normal((4, 6)).astype(np.float32)
    f16_2d = rng.standard_normal((16, 16)).astype(np.float16)
    f16_2d.ravel()[:6] = np.array([0.0, -0.0, 65504.0, -65504.0, 6e-8, 2.0 ** -14], dtype=np.float16)
    f16_4d = rng.standard_normal((4, 4, 3, 3)).astype(np.float16)
    bf_2d = _bf16_bits(rng.standard_normal((16, 8)).astype(np.float32))
    bf_2d.ravel()[:5] = [0x0000, 0x8000, 0x7F7F, 0x0001, 0x3F80]  # 0 -0 max subnormal 1
    bf_4d = _bf16_bits(rng.standard_normal((3, 4, 3, 3)).astype(np.float32))

    tensors = {
        "decoder.conv_in.weight": ("float32", f32_4d),
        "decoder.conv_in.bias": ("float32", f32_1d),
        "decoder.mid.norm.weight": ("float32", f32_2d),
        "decoder.mid.attn.q.weight": ("float16", f16_2d),
        "decoder.up.0.conv.weight": ("float16", f16_4d),
        "decoder.mid.attn.proj.weight": ("bfloat16", bf_2d),
        "decoder.conv_out.weight": ("bfloat16", bf_4d),
    }
    expected = {
        "decoder.conv_in.weight": f32_4d,
        "decoder.conv_in.bias": f32_1d,
        "decoder.mid.norm.weight": f32_2d,
        "decoder.mid.attn.q.weight": f16_2d.astype(np.float32),
        "decoder.up.0.conv.weight": f16_4d.astype(np.float32),
        "decoder.mid.attn.proj.weight": (bf_2d.astype(np.uint32) << 16).view(np.float32),
        "decoder.conv_out.weight": (bf_4d.astype(np.uint32) << 16).view(np.float32),
    }
    metadata = {"format": "pt", "weft.fixture": "small", "note": "ünïcödé 🦀"}
    specs = {}
    keep = []
    for name, (dt, arr) in tensors.items():
        arr = np.ascontiguousarray(arr)
        keep.append(arr)
        specs[name] = TensorSpec(dtype=dt, shape=arr.shape, data_ptr=arr.ctypes.data,
                                 data_len=arr.nbytes)
    sdir.mkdir(parents=True, exist_ok=True)
    path = sdir / "small.safetensors"
    # safetensors emits __metadata__ in Rust HashMap order, which is random per
    # map.  Serialize until it comes out sorted so the bytes are reproducible.
    for _ in range(100000):
        raw = bytes(serialize(specs, metadata=metadata))
        (hlen,) = struct.unpack("<Q", raw[:8])
        if list(json.loads(raw[8:8 + hlen])["__metadata__"]) == sorted(metadata):
            break
    else:
        raise RuntimeError("safetensors never produced sorted __metadata__")
    path.write_bytes(raw)

    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    data_start = 8 + hlen
    got_meta = header.pop("__metadata__")
    assert got_meta == metadata
    entries = []
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, e = info["data_offsets"]
        arr = tensors[name][1]
        assert raw[data_start + b:data_start + e] == arr.tobytes(), name
        assert info["shape"] == list(arr.shape)
        entries.append({"name": name, "dtype": info["dtype"], "shape": info["shape"],
                        "data_offsets": [b, e], "offset": data_start + b, "nbytes": e - b,
                        "expected": f"expected/{name}.npy"})
        save_npy(sdir / "expected" / f"{name}.npy", expected[name].reshape(arr.shape))
    # cross-check F32/F16 through safetensors' own numpy loader
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == metadata
        for name, (dt, arr) in tensors.items():
            if dt != "bfloat16":
                assert np.array_equal(f.get_tensor(name), arr, equal_nan=True), name
    write_json(sdir / "small.json", {
        "file": path.name, "file_size": len(raw), "header_len": hlen,
        "data_start": data_start, "safetensors_version": safetensors.__version__,
        "metadata": metadata, "tensors": entries,
    })


# --------------------------------------------------------------------------
# verification

def verify_types(gdir: Path, written: list[QT], desc: dict) -> None:
    r = gguf.GGUFReader(gdir / "types.gguf")
    assert [t.name for t in r.tensors] == [t.name.lower() for t in written]
    for t in r.tensors:
        exp = np.load(gdir / "expected" / f"{t.name}.npy")
        if t.tensor_type in NATIVE_TYPES:
            native = np.load(gdir / "expected" / f"{t.name}.native.npy")
            assert np.array_equal(np.asarray(t.data).view(native.dtype), native), t.name
            got = np.asarray(t.data).astype(np.float32)
        else:
            got = dequantize(np.asarray(t.data), t.tensor_type)
        assert got.shape == (ROWS, COLS) and np.array_equal(got.view(np.uint32), exp.view(np.uint32)), t.name
    for e in desc["tensors"]:
        assert e["offset"] % desc["alignment"] == 0


def verify_metadata(gdir: Path, desc: dict) -> None:
    md = desc["metadata"]
    assert md["general.architecture"] == "flux"
    assert desc["alignment"] == 64 and desc["metadata_types"]["general.alignment"] == "UINT32"
    assert md["test.array.nested"] == [[1, 2, 3], [], [-4, 5]]
    assert desc["metadata_types"]["test.array.nested"] == "ARRAY[ARRAY[INT32]]"
    assert md["test.array.empty"] == [] and desc["metadata_types"]["test.array.empty"] == "ARRAY[INT32]"
    r = gguf.GGUFReader(gdir / "metadata.gguf")
    for t, e in zip(r.tensors, desc["tensors"]):
        exp = np.load(gdir / "expected" / "metadata" / f"{t.name}.npy")
        assert list(exp.shape) == e["shape"], t.name
        got = np.asarray(t.data).astype(np.float32).reshape(e["shape"])
        assert np.array_equal(got.view(np.uint32), exp.view(np.uint32)), t.name
        assert e["offset"] % 64 == 0
    assert any(len(t["name"].encode()) > 64 for t in desc["tensors"])
    assert any(len(t["ne"]) == 5 for t in desc["tensors"])


def verify_v2(gdir: Path, desc: dict) -> None:
    assert desc["version"] == 2
    last = desc["tensors"][-1]
    assert desc["file_size"] == last["offset"] + last["nbytes"]  # no trailing padding
    r = gguf.GGUFReader(gdir / "v2.gguf")
    for t in r.tensors:
        exp = np.load(gdir / "expected" / "v2" / f"{t.name}.npy")
        if t.tensor_type == QT.F32:
            got = np.asarray(t.data).reshape(exp.shape)
        else:
            got = dequantize(np.asarray(t.data), t.tensor_type).reshape(exp.shape)
        assert np.array_equal(got.view(np.uint32), exp.view(np.uint32)), t.name


# --------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="fixtures root (default: tests/fixtures of this repo)")
    ap.add_argument("--refresh-real", action="store_true",
                    help="re-download the llama-cpp-python sdist for the real vocab files")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    gdir = out / "gguf"
    gdir.mkdir(parents=True, exist_ok=True)

    print(f"gguf-py {_dist_version('gguf')} ({Path(gguf.__file__).parent}), numpy {np.__version__}")
    all_types = list(QT)
    deq_ok = [t for t in all_types if can_dequantize(t)]
    q_ok = [t for t in all_types if can_quantize(t)]

    written = build_types(out, deq_ok)
    build_metadata(out)
    build_v2(out)
    build_empty(out)
    quant_names = build_quantize(out)

    real_dir = gdir / "real"
    if out != DEFAULT_OUT.resolve():
        # writing elsewhere: reuse the committed copies
        src_real = DEFAULT_OUT / "gguf" / "real"
        real_dir.mkdir(parents=True, exist_ok=True)
        for n in REAL_VOCABS:
            if (src_real / n).exists():
                shutil.copyfile(src_real / n, real_dir / n)
    fetch_real(real_dir, args.refresh_real)

    descs = {}
    for p in [gdir / "types.gguf", gdir / "metadata.gguf", gdir / "v2.gguf", gdir / "empty.gguf"]:
        descs[p.name] = json_for(p)
    for n in REAL_VOCABS:
        p = real_dir / n
        if p.exists():
            descs[n] = json_for(p)
        else:
            print(f"  WARNING: {p} missing, its .json not regenerated")

    verify_types(gdir, written, descs["types.gguf"])
    verify_metadata(gdir, descs["metadata.gguf"])
    verify_v2(gdir, descs["v2.gguf"])
    e = descs["empty.gguf"]
    assert e["tensor_count"] == 0 and e["file_size"] == e["header_end"]

    build_safetensors(out)

    write_json(gdir / "ggml_types.json", [{
        "name": t.name, "id": int(t),
        "block_size": GGML_QUANT_SIZES[t][0], "type_size": GGML_QUANT_SIZES[t][1],
        "quantize": t in q_ok, "dequantize": t in deq_ok,
        "in_types_gguf": t in written,
        "reference": ("gguf.quants.dequantize" if t in deq_ok else
                      "GGUFReader typed view" if t in NATIVE_TYPES else None),
    } for t in all_types])

    files = sorted(p for p in out.rglob("*")
                   if p.is_file() and p.name != "manifest.json"
                   and (p.is_relative_to(gdir) or p.is_relative_to(out / "safetensors")))
    manifest = {
        "generator": "tools/gen_gguf_fixtures.py",
        "seed": SEED,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gguf": _dist_version("gguf"),
        "safetensors": _dist_version("safetensors"),
        "llama_cpp_python_sdist": LLAMA_CPP_PYTHON_VERSION,
        "files": {str(p.relative_to(out)): {"size": p.stat().st_size, "sha256": _sha256(p)}
                  for p in files},
    }
    write_json(gdir / "manifest.json", manifest)

    # ---- report
    total = 0
    print("\nfiles:")
    for p in files + [gdir / "manifest.json"]:
        s = p.stat().st_size
        total += s
        print(f"  {s:>9d}  {p.relative_to(out)}")
    print(f"  {total:>9d}  total")
    print("\ngguf.quants.dequantize supports:", " ".join(t.name for t in deq_ok))
    print("gguf.quants.quantize supports:  ", " ".join(t.name for t in q_ok))
    print("no dequantizer:", " ".join(f"{t.name}({int(t)})" for t in all_types if t not in deq_ok))
    print("in types.gguf:", " ".join(t.name for t in written))
    print("quantize references:", " ".join(quant_names))
    print("\nGGML_QUANT_SIZES (id name block_size type_size):")
    for t in all_types:
        bs, ts = GGML_QUANT_SIZES[t]
        print(f"  {int(t):>3d} {t.name:8s} {bs:>4d} {ts:>4d}")
    return 0


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
