"""Exports the quickstart's trained models (tools/quickstart/train.py's diffusers/transformers
checkpoints) in the file layouts users download, under models/quickstart/:

    flux-shapes-Q8_0.gguf        the DiT, original BFL names as city96's GGUFs: Q8_0 matrices,
                                 F32 biases and norms, general.architecture "flux"
    ae-shapes.safetensors        the VAE, ldm names (BFL's ae.safetensors layout), F32, with
                                 quant_conv / post_quant_conv holding the latent normalization
    clip_l-shapes.safetensors    CLIP-L text model, transformers names, F16
    t5-shapes-Q8_0.gguf          T5 encoder, llama.cpp names, tokenizer in tokenizer.ggml.*

    python3 tools/quickstart/export.py --vae .quickstart/vae --dit .quickstart/dit --out models/quickstart

Names are mapped by running diffusers' own converters (BFL -> diffusers for the DiT, ldm ->
diffusers for the VAE) on tensors whose values are their element indices, and inverting the
result: every trained value lands where the converter would read it from, and the check that
each index arrives exactly once makes the mapping a permutation. With `--check`, the exported
files are loaded back (gguf-py's dequantizer, diffusers' converters) and compared with the
checkpoints.

The latent normalization: the DiT was trained on per-channel standardized latents
(z - mean) / std; weft, like ComfyUI, feeds a Flux DiT (z - 0.1159) * 0.3611. The exported VAE's
latent is therefore z' = a z + b with a = 1 / (0.3611 std), b = 0.1159 - a mean: a diagonal 1x1
quant_conv after the encoder (mean' = a mean + b, logvar' = logvar + 2 ln a) and its inverse as
post_quant_conv before the decoder. Both are 1x1 convolutions, so the map is exact.
"""
import argparse
import hashlib
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import gen_flux_fixtures as gf  # noqa: E402
import gen_text_encoder_fixtures as gt  # noqa: E402
import train  # noqa: E402
import vocab  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import GGUFWriter  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
FLUX_SCALE, FLUX_SHIFT = 0.3611, 0.1159
FILES = {
    "dit": "flux-shapes-Q8_0.gguf",
    "vae": "ae-shapes.safetensors",
    "clip": "clip_l-shapes.safetensors",
    "t5": "t5-shapes-Q8_0.gguf",
}


def invert_converter(shapes, convert, trained):
    """{original name: tensor} such that `convert` of it gives `trained` (diffusers names)."""
    markers, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        markers[name] = torch.arange(offset, offset + n, dtype=torch.float64).reshape(shape)
        offset += n
    converted = convert(dict(markers))  # the converters pop what they read
    missing = set(converted) ^ set(trained)
    if missing:
        raise SystemExit(f"converter and checkpoint disagree on {sorted(missing)[:8]}")
    flat = torch.full((offset,), float("nan"), dtype=torch.float64)
    hits = torch.zeros(offset, dtype=torch.int64)
    for k, v in converted.items():
        idx = v.reshape(-1).long()
        flat[idx] = trained[k].reshape(-1).double()
        hits[idx] += 1
    if not bool((hits == 1).all()):
        raise SystemExit("the converter is not a permutation of the original tensors")
    return {name: flat[m.reshape(-1).long()].reshape(m.shape).float() for name, m in markers.items()}


def dit_original(state):
    c = train.CONFIG["dit"]
    shapes = gf.flux_shapes(c["hidden"], 4 * c["hidden"], 4 * train.CONFIG["vae"]["latent_channels"],
                            train.CONFIG["t5"]["d_model"], train.CONFIG["clip"]["hidden"], c["depth"],
                            c["depth_single"], c["head_dim"], guidance=False)
    return invert_converter(shapes, gf.flux_converter(c["hidden"]), state)


def vae_config():
    c = train.CONFIG["vae"]
    mult = [ch // c["block_out_channels"][0] for ch in c["block_out_channels"]]
    return c["block_out_channels"][0], tuple(mult), c["layers_per_block"], c["latent_channels"]


def vae_original(state):
    from diffusers.loaders import single_file_utils as sfu
    ch, mult, n_res, z = vae_config()
    shapes = gf.vae_shapes(ch, mult, n_res, z, quant_convs=False)
    config = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(mult),
                  up_block_types=["UpDecoderBlock2D"] * len(mult), block_out_channels=[ch * m for m in mult],
                  layers_per_block=n_res, latent_channels=z, norm_num_groups=32,
                  use_quant_conv=False, use_post_quant_conv=False)
    return invert_converter(shapes, lambda ckpt: sfu.convert_ldm_vae_checkpoint(ckpt, config), state)


def latent_normalization(mean, std):
    """quant_conv / post_quant_conv (1x1) so that (z' - shift) * scale = (z - mean) / std."""
    z = mean.numel()
    a = 1.0 / (FLUX_SCALE * std.double())
    b = FLUX_SHIFT - a * mean.double()
    q_w = torch.zeros(2 * z, 2 * z, 1, 1, dtype=torch.float64)
    q_w[:z, :z, 0, 0] = torch.diag(a)
    q_w[z:, z:, 0, 0] = torch.eye(z, dtype=torch.float64)
    q_b = torch.cat([b, 2 * torch.log(a)])
    p_w = torch.diag(1.0 / a).reshape(z, z, 1, 1)
    p_b = -b / a
    return {"quant_conv.weight": q_w.float(), "quant_conv.bias": q_b.float(),
            "post_quant_conv.weight": p_w.float(), "post_quant_conv.bias": p_b.float()}


def dit_type(name, arr):
    return T.F32 if arr.ndim == 1 else T.Q8_0


def write_t5(path, weights):
    w = GGUFWriter(path, "t5encoder")
    pieces = vocab.t5_pieces()
    w.add_tokenizer_model("t5")
    w.add_token_list([p for p, _, _ in pieces])
    w.add_token_scores([s for _, s, _ in pieces])
    w.add_token_types([t for _, _, t in pieces])
    w.add_add_space_prefix(True)
    w.add_remove_extra_whitespaces(True)
    w.add_pad_token_id(vocab.T5_PAD)
    w.add_eos_token_id(vocab.T5_EOS)
    w.add_unk_token_id(vocab.T5_UNK)
    w.add_add_bos_token(False)
    w.add_add_eos_token(True)
    for name, arr in weights.items():
        qtype = T.F32 if arr.ndim == 1 or "attn_rel_b" in name else (T.F16 if name == "token_embd.weight" else T.Q8_0)
        data, _ = gf.store(arr, qtype)
        w.add_tensor(name, data, raw_dtype=None if qtype in (T.F32, T.F16) else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def export(args):
    from safetensors.torch import save_file
    os.makedirs(args.out, exist_ok=True)
    vae_state = train.load_sharded(args.vae, "vae")
    mean, std = vae_state.pop("latent_mean"), vae_state.pop("latent_std")
    ckpt = train.load_sharded(args.dit, "dit")
    part = lambda prefix: {k[len(prefix):]: v for k, v in ckpt.items() if k.startswith(prefix)}  # noqa: E731

    dit = {k: v.numpy() for k, v in dit_original(part("dit.")).items()}
    gf.write_gguf(os.path.join(args.out, FILES["dit"]), "flux", dit, dit_type)

    vae = vae_original(vae_state)
    vae.update(latent_normalization(mean, std))
    save_file({k: v.contiguous() for k, v in vae.items()}, os.path.join(args.out, FILES["vae"]))

    clip = {k: v.half().contiguous() for k, v in part("clip.").items()}
    save_file(clip, os.path.join(args.out, FILES["clip"]))

    t5 = {gt.t5_gguf_name(k): v.numpy() for k, v in part("t5.").items()}
    write_t5(os.path.join(args.out, FILES["t5"]), t5)

    total = 0
    for f in FILES.values():
        p = os.path.join(args.out, f)
        size = os.path.getsize(p)
        total += size
        print(f"{p}: {size / 1e6:.2f} MB  sha256 {hashlib.sha256(open(p, 'rb').read()).hexdigest()[:16]}")
    print(f"total {total / 1e6:.2f} MB")


def check(args):
    """Loads the exported files back the independent way and compares with the checkpoints."""
    from diffusers.loaders import single_file_utils as sfu
    from safetensors.torch import load_file
    ckpt = train.load_sharded(args.dit, "dit")
    vae_state = train.load_sharded(args.vae, "vae")
    mean, std = vae_state.pop("latent_mean"), vae_state.pop("latent_std")
    c = train.CONFIG["dit"]
    values = {k: torch.from_numpy(v) for k, v in gf_read(os.path.join(args.out, FILES["dit"])).items()}
    conv = gf.flux_converter(c["hidden"])(values)
    worst = max(((conv[k] - ckpt["dit." + k]).abs().max() / ckpt["dit." + k].abs().max().clamp(min=1e-12)).item()
                for k in conv)
    print(f"DiT: {len(conv)} tensors, worst relative max error after Q8_0 {worst:.2e}")
    vae = load_file(os.path.join(args.out, FILES["vae"]))
    ch, mult, n_res, z = vae_config()
    config = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(mult),
                  up_block_types=["UpDecoderBlock2D"] * len(mult), block_out_channels=[ch * m for m in mult],
                  layers_per_block=n_res, latent_channels=z, norm_num_groups=32,
                  use_quant_conv=True, use_post_quant_conv=True)
    conv = sfu.convert_ldm_vae_checkpoint(vae, config)
    diffs = [(conv[k] - v).abs().max().item() for k, v in vae_state.items()]
    print(f"VAE: {len(diffs)} tensors, max abs difference {max(diffs):.1e}")
    z = torch.randn(1000, 16, dtype=torch.float64) * std.double() + mean.double()
    q = conv["quant_conv.weight"].double()[:16, :16, 0, 0]
    zq = z @ q.T + conv["quant_conv.bias"].double()[:16]
    standardized = (zq - FLUX_SHIFT) * FLUX_SCALE
    back = zq @ conv["post_quant_conv.weight"].double()[:, :, 0, 0].T + conv["post_quant_conv.bias"].double()
    err = (standardized - (z - mean.double()) / std.double()).abs().max().item()
    print(f"latent map: |(z'-shift)*scale - (z-mean)/std| {err:.1e}, |post(quant(z)) - z| {(back - z).abs().max().item():.1e}")


def gf_read(path):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    out = {}
    for t in GGUFReader(path).tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vae", default=os.path.join(ROOT, ".quickstart", "vae"))
    ap.add_argument("--dit", default=os.path.join(ROOT, ".quickstart", "dit"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "quickstart"))
    ap.add_argument("--check", action="store_true", help="also load the files back and compare")
    args = ap.parse_args()
    export(args)
    if args.check:
        check(args)


if __name__ == "__main__":
    main()
