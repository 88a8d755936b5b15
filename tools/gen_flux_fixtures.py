#!/usr/bin/env python3
"""Generate the Flux DiT and AutoencoderKL test fixtures, with diffusers as the reference.

Run from anywhere (CPU is enough; takes a few seconds):

    python3 tools/gen_flux_fixtures.py                  # rewrite tests/fixtures/{flux,vae}
    python3 tools/gen_flux_fixtures.py --out /tmp/fx    # write elsewhere (then diff -r)
    python3 tools/gen_flux_fixtures.py --medium /tmp/m  # only the bench-size DiT (not committed)

Requirements (written against): torch 2.15 (CPU), diffusers 0.42.1, gguf 0.19.0, numpy, safetensors.
Every output is seeded; re-running rewrites the same values.

Independence: the weights are random tensors in the ORIGINAL checkpoint naming (BFL Flux:
`double_blocks.0.img_attn.qkv.weight`; ldm VAE: `decoder.up.0.block.0.norm1.weight`). They are
mapped into diffusers by diffusers' own single-file conversion helpers
(`convert_flux_transformer_checkpoint_to_diffusers`, `convert_ldm_vae_checkpoint`) and loaded with
`load_state_dict(strict=True)`, so the reference shares nothing with weft's name mapping. The one
change: diffusers' Flux converter hard-codes the full-size width (`inner_dim = 3072`) to split
`single_blocks.N.linear1`; we re-run its source with the tiny width substituted.
The quantized tensors are dequantized with gguf-py before they go into diffusers, so the reference
computes from exactly the values weft reads. Everything runs in float32 on the CPU.

What it writes (relative to tests/fixtures/):

flux/dev.gguf           general.architecture = "flux", guidance embedding, no name prefix.
                        city96 type mix: F32 for 1-D and <= 1024-element tensors, F16 for the
                        in/out projections, Q8_0 for double blocks, Q4_0 for single blocks,
                        Q5_1 and BF16 for one tensor each.
flux/schnell.gguf       no guidance embedding, every name prefixed `model.diffusion_model.`,
                        Q8_0 / F16 / F32.
flux/reference.safetensors
                        Inputs and diffusers outputs (f32): `x` [2,16,8,12] latent, `context`
                        [2,8,48], `y` [2,32] pooled, `timesteps` [2] (sigma in [0,1]), `guidance` [2],
                        `img_ids` [24,3], `txt_ids` [8,3] (as FluxPipeline makes them), and
                        `dev.out` / `schnell.out` [2,16,8,12]: the transformer's packed output
                        unpacked back to a latent (FluxPipeline._pack_latents / _unpack_latents).
vae/flux_vae.safetensors  ldm/BFL `ae.safetensors` naming, f32, 16 latent channels, no quant convs,
                        ch 32, ch_mult [1, 2], 1 res block per level, attention weights [C,C,1,1].
vae/sd_vae.gguf         SD-style: 4 latent channels, quant_conv / post_quant_conv, names prefixed
                        `first_stage_model.`, F16 4-D weights and F32 1-D ones.
vae/reference.safetensors
                        `image` [1,3,16,24] in [-1, 1] and `{flux,sd}.latent` [1,C,8,12] inputs;
                        `{flux,sd}.decoded` = vae.decode(latent) and `{flux,sd}.mean` =
                        vae.encode(image).latent_dist.mean (raw latents: no scale/shift applied).
"""
import argparse
import inspect
import os
import sys
import textwrap

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file

from diffusers import AutoencoderKL, FluxTransformer2DModel
from diffusers.loaders import single_file_utils as sfu
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

torch.set_grad_enabled(False)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------
# Flux DiT


def flux_shapes(hidden, mlp_hidden, in_ch, ctx_dim, vec_dim, depth, depth_single, head_dim, guidance):
    """Original BFL Flux tensor names and shapes (PyTorch order)."""
    h, m = hidden, mlp_hidden
    s = {}

    def lin(name, i, o, bias=True):
        s[f"{name}.weight"] = (o, i)
        if bias:
            s[f"{name}.bias"] = (o,)

    lin("img_in", in_ch, h)
    lin("txt_in", ctx_dim, h)
    for emb, i in [("time_in", 256), ("vector_in", vec_dim)] + ([("guidance_in", 256)] if guidance else []):
        lin(f"{emb}.in_layer", i, h)
        lin(f"{emb}.out_layer", h, h)
    for n in range(depth):
        for stream in ("img", "txt"):
            p = f"double_blocks.{n}.{stream}"
            lin(f"{p}_mod.lin", h, 6 * h)
            lin(f"{p}_attn.qkv", h, 3 * h)
            s[f"{p}_attn.norm.query_norm.scale"] = (head_dim,)
            s[f"{p}_attn.norm.key_norm.scale"] = (head_dim,)
            lin(f"{p}_attn.proj", h, h)
            lin(f"{p}_mlp.0", h, m)
            lin(f"{p}_mlp.2", m, h)
    for n in range(depth_single):
        p = f"single_blocks.{n}"
        lin(f"{p}.modulation.lin", h, 3 * h)
        lin(f"{p}.linear1", h, 3 * h + m)
        lin(f"{p}.linear2", h + m, h)
        s[f"{p}.norm.query_norm.scale"] = (head_dim,)
        s[f"{p}.norm.key_norm.scale"] = (head_dim,)
    lin("final_layer.adaLN_modulation.1", h, 2 * h)
    lin("final_layer.linear", h, in_ch)
    return s


def random_weights(shapes, rng):
    """Normal weights with std 1/sqrt(fan_in) (activations stay O(1)), norm scales near 1."""
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1 and (name.endswith(".scale") or ("norm" in name and name.endswith(".weight"))):
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            v = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            v = rng.standard_normal(shape) / np.sqrt(fan_in)
        out[name] = v.astype(np.float32)
    return out


def store(arr, qtype):
    """(bytes for GGUFWriter, the values weft will read) for `arr` stored as `qtype`."""
    if qtype == T.F32:
        return arr, arr
    if qtype == T.F16:
        h = arr.astype(np.float16)
        return h, h.astype(np.float32)
    q = quantize(arr, qtype)
    return q, dequantize(q, qtype).reshape(arr.shape).astype(np.float32)


def write_gguf(path, arch, weights, choose_type, prefix=""):
    """Writes `weights` with city96's layout; returns the dequantized values per (unprefixed) name."""
    w = GGUFWriter(path, arch)
    seen = {}
    for name, arr in weights.items():
        qtype = choose_type(name, arr)
        data, values = store(arr, qtype)
        raw = None if qtype in (T.F32, T.F16) else qtype
        w.add_tensor(prefix + name, data, raw_dtype=raw)
        seen[name] = values
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return seen


def dev_types(name, arr):
    if arr.ndim == 1 or arr.size <= 1024:
        return T.F32
    if name.startswith(("img_in", "txt_in", "final_layer")):
        return T.F16
    if name == "time_in.out_layer.weight":
        return T.BF16
    if name == "vector_in.out_layer.weight":
        return T.Q5_1
    if name.startswith("single_blocks"):
        return T.Q4_0
    return T.Q8_0


def schnell_types(name, arr):
    if arr.ndim == 1 or arr.size <= 1024:
        return T.F32
    if name.startswith(("img_in", "txt_in", "final_layer", "time_in", "vector_in")):
        return T.F16
    return T.Q8_0


def flux_converter(inner_dim):
    """diffusers' Flux single-file converter with its hard-coded inner_dim replaced."""
    src = textwrap.dedent(inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers))
    assert "inner_dim = 3072" in src, "diffusers changed its converter; revisit this patch"
    src = src.replace("inner_dim = 3072", f"inner_dim = {inner_dim}")
    scope = dict(vars(sfu))
    exec(compile(src, "convert_flux_transformer_checkpoint_to_diffusers", "exec"), scope)
    return scope["convert_flux_transformer_checkpoint_to_diffusers"]


def diffusers_flux(values, cfg, guidance):
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=cfg["in_ch"],
        num_layers=cfg["depth"],
        num_single_layers=cfg["depth_single"],
        attention_head_dim=cfg["head_dim"],
        num_attention_heads=cfg["hidden"] // cfg["head_dim"],
        joint_attention_dim=cfg["ctx_dim"],
        pooled_projection_dim=cfg["vec_dim"],
        guidance_embeds=guidance,
        axes_dims_rope=cfg["axes"],
    ).float().eval()
    ckpt = {k: torch.from_numpy(v.copy()) for k, v in values.items()}
    converted = flux_converter(cfg["hidden"])(ckpt)
    model.load_state_dict(converted, strict=True)
    return model


def run_flux(model, inputs, guidance):
    x = torch.from_numpy(inputs["x"])
    b, c, h, w = x.shape
    packed = FluxPipeline._pack_latents(x, b, c, h, w)
    out = model(
        hidden_states=packed,
        encoder_hidden_states=torch.from_numpy(inputs["context"]),
        pooled_projections=torch.from_numpy(inputs["y"]),
        timestep=torch.from_numpy(inputs["timesteps"]),
        img_ids=torch.from_numpy(inputs["img_ids"]),
        txt_ids=torch.from_numpy(inputs["txt_ids"]),
        guidance=torch.from_numpy(inputs["guidance"]) if guidance else None,
        return_dict=False,
    )[0]
    # _unpack_latents takes pixel sizes (it divides by vae_scale_factor * 2 = 16 with factor 8).
    return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8).numpy()


# Head dim 32 with Flux's axis split rule (head_dim/8, then two equal halves): (4, 14, 14).
TINY = dict(hidden=64, mlp_hidden=256, in_ch=64, ctx_dim=48, vec_dim=32, depth=2, depth_single=2,
            head_dim=32, axes=(4, 14, 14))
MEDIUM = dict(hidden=512, mlp_hidden=2048, in_ch=64, ctx_dim=256, vec_dim=64, depth=4, depth_single=8,
              head_dim=64, axes=(8, 28, 28))


def shapes_for(cfg, guidance):
    return flux_shapes(cfg["hidden"], cfg["mlp_hidden"], cfg["in_ch"], cfg["ctx_dim"], cfg["vec_dim"],
                       cfg["depth"], cfg["depth_single"], cfg["head_dim"], guidance)


def flux_inputs(rng, cfg, batch, n_txt, lat_h, lat_w):
    c = cfg["in_ch"] // 4
    ids = FluxPipeline._prepare_latent_image_ids(batch, lat_h // 2, lat_w // 2, "cpu", torch.float32)
    return {
        "x": rng.standard_normal((batch, c, lat_h, lat_w)).astype(np.float32),
        "context": rng.standard_normal((batch, n_txt, cfg["ctx_dim"])).astype(np.float32),
        "y": rng.standard_normal((batch, cfg["vec_dim"])).astype(np.float32),
        "timesteps": np.array([0.7, 0.25][:batch], dtype=np.float32),
        "guidance": np.array([3.5, 1.0][:batch], dtype=np.float32),
        "img_ids": ids.numpy().astype(np.float32),
        "txt_ids": np.zeros((n_txt, 3), dtype=np.float32),
    }


def gen_flux(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(20240805)
    inputs = flux_inputs(rng, TINY, batch=2, n_txt=8, lat_h=8, lat_w=12)
    ref = dict(inputs)
    for variant, guidance, types, prefix in [
        ("dev", True, dev_types, ""),
        ("schnell", False, schnell_types, "model.diffusion_model."),
    ]:
        weights = random_weights(shapes_for(TINY, guidance), rng)
        values = write_gguf(os.path.join(out_dir, f"{variant}.gguf"), "flux", weights, types, prefix)
        model = diffusers_flux(values, TINY, guidance)
        ref[f"{variant}.out"] = run_flux(model, inputs, guidance)
    save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, os.path.join(out_dir, "reference.safetensors"))


def gen_medium(out_dir):
    """A bench-size DiT (Q8_0 blocks, ~36 M parameters) and its inputs; no reference output."""
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(7)
    weights = random_weights(shapes_for(MEDIUM, True), rng)
    write_gguf(os.path.join(out_dir, "medium.gguf"), "flux", weights, dev_types)
    inputs = flux_inputs(rng, MEDIUM, batch=1, n_txt=64, lat_h=32, lat_w=32)
    save_file({k: np.ascontiguousarray(v) for k, v in inputs.items()}, os.path.join(out_dir, "inputs.safetensors"))


# ---------------------------------------------------------------------------------------------
# AutoencoderKL


def vae_shapes(ch, ch_mult, n_res, z, quant_convs, in_ch=3):
    """Original ldm / BFL AutoencoderKL tensor names and shapes."""
    s = {}

    def conv(name, i, o, k):
        s[f"{name}.weight"] = (o, i, k, k)
        s[f"{name}.bias"] = (o,)

    def norm(name, c):
        s[f"{name}.weight"] = (c,)
        s[f"{name}.bias"] = (c,)

    def resnet(name, i, o):
        norm(f"{name}.norm1", i)
        conv(f"{name}.conv1", i, o, 3)
        norm(f"{name}.norm2", o)
        conv(f"{name}.conv2", o, o, 3)
        if i != o:
            conv(f"{name}.nin_shortcut", i, o, 1)

    def mid(name, c):
        resnet(f"{name}.mid.block_1", c, c)
        norm(f"{name}.mid.attn_1.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.mid.attn_1.{p}", c, c, 1)
        resnet(f"{name}.mid.block_2", c, c)

    # Encoder
    conv("encoder.conv_in", in_ch, ch, 3)
    block_in = ch
    for lvl, mult in enumerate(ch_mult):
        for b in range(n_res):
            resnet(f"encoder.down.{lvl}.block.{b}", block_in, ch * mult)
            block_in = ch * mult
        if lvl != len(ch_mult) - 1:
            conv(f"encoder.down.{lvl}.downsample.conv", block_in, block_in, 3)
    mid("encoder", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", block_in, 2 * z, 3)
    # Decoder
    block_in = ch * ch_mult[-1]
    conv("decoder.conv_in", z, block_in, 3)
    mid("decoder", block_in)
    for lvl in reversed(range(len(ch_mult))):
        for b in range(n_res + 1):
            resnet(f"decoder.up.{lvl}.block.{b}", block_in, ch * ch_mult[lvl])
            block_in = ch * ch_mult[lvl]
        if lvl != 0:
            conv(f"decoder.up.{lvl}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", block_in, in_ch, 3)
    if quant_convs:
        conv("quant_conv", 2 * z, 2 * z, 1)
        conv("post_quant_conv", z, z, 1)
    return s


def diffusers_vae(values, ch, ch_mult, n_res, z, quant_convs, prefix):
    config = dict(
        in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(ch_mult),
        up_block_types=["UpDecoderBlock2D"] * len(ch_mult),
        block_out_channels=[ch * m for m in ch_mult], layers_per_block=n_res,
        latent_channels=z, norm_num_groups=32,
        use_quant_conv=quant_convs, use_post_quant_conv=quant_convs,
    )
    model = AutoencoderKL(**config).float().eval()
    ckpt = {prefix + k: torch.from_numpy(v.copy()) for k, v in values.items()}
    model.load_state_dict(sfu.convert_ldm_vae_checkpoint(ckpt, config), strict=True)
    return model


def gen_vae(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(19700101)
    ch, ch_mult, n_res = 32, (1, 2), 1
    image = np.tanh(rng.standard_normal((1, 3, 16, 24))).astype(np.float32)
    ref = {"image": image}
    for variant, z, quant_convs, prefix in [("flux", 16, False, ""), ("sd", 4, True, "first_stage_model.")]:
        weights = random_weights(vae_shapes(ch, ch_mult, n_res, z, quant_convs), rng)
        if variant == "flux":
            values = weights
            save_file(weights, os.path.join(out_dir, "flux_vae.safetensors"))
        else:
            types = lambda name, arr: T.F16 if arr.ndim == 4 else T.F32  # noqa: E731
            values = write_gguf(os.path.join(out_dir, "sd_vae.gguf"), "sd_vae", weights, types, prefix)
        model = diffusers_vae(values, ch, ch_mult, n_res, z, quant_convs, prefix)
        latent = rng.standard_normal((1, z, 8, 12)).astype(np.float32)
        ref[f"{variant}.latent"] = latent
        ref[f"{variant}.decoded"] = model.decode(torch.from_numpy(latent)).sample.numpy()
        ref[f"{variant}.mean"] = model.encode(torch.from_numpy(image)).latent_dist.mean.numpy()
    save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, os.path.join(out_dir, "reference.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures"), help="fixtures root")
    ap.add_argument("--medium", metavar="DIR", help="only write the bench-size DiT into DIR")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.medium:
        gen_medium(args.medium)
        return
    gen_flux(os.path.join(args.out, "flux"))
    gen_vae(os.path.join(args.out, "vae"))


if __name__ == "__main__":
    sys.exit(main())
