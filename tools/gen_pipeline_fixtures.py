#!/usr/bin/env python3
"""Reference images for weft's end-to-end pipeline tests (tests/pipeline/): Flux txt2img from
precomputed embeddings, from a prompt through CLIP-L + T5, and img2img, computed without weft.

    python3 tools/gen_pipeline_fixtures.py --comfyui /tmp/ComfyUI    # the checkout of tools/gen_sampling_fixtures.py
    python3 tools/gen_pipeline_fixtures.py --comfyui /tmp/ComfyUI --out /tmp/fx   # write elsewhere (then diff -r)

Requirements (written against): torch 2.15 (CPU), diffusers 0.42.1, transformers 5.24, gguf 0.19.0,
numpy, safetensors, pillow, scipy, torchsde; ComfyUI at 3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce.
CPU only, about ten seconds. Every output is seeded; re-running rewrites the same values.

Who computes what (nothing of weft is used):
- Flux DiT: diffusers' FluxTransformer2DModel, loaded through diffusers' single-file converter
  (tools/gen_flux_fixtures.py) from the GGUF's tensors dequantized by gguf-py.
- AutoencoderKL: diffusers' AutoencoderKL through `convert_ldm_vae_checkpoint`, from the fixture
  VAE (tests/fixtures/vae/flux_vae.safetensors, 16 latent channels, 2 levels: 2x up/down scale).
- Text: transformers' CLIPTextModel and T5EncoderModel on ids from transformers' CLIPTokenizer and
  T5TokenizerFast (vocabularies as in tools/gen_text_encoder_fixtures.py), framed as ComfyUI frames
  Flux prompts (that script's ComfyLayout: CLIP 77 tokens, T5 padded to 256) and weighted as
  ComfyUI's `ClipTokenWeightEncoder.encode_token_weights` (restated in `encode_weighted`).
- Sampling: ComfyUI's own code, imported from the checkout as tools/gen_sampling_fixtures.py does:
  the `ModelSamplingFlux` node, `KSampler` sigmas, `comfy.sample.prepare_noise`, the samplers
  (`sampler_object(name).sample`, which does noise scaling and the k-diffusion loop), and
  `latent_formats.Flux` (process_latent_in/out). The model call inside is ComfyUI's
  `BaseModel.apply_model` (calculate_input, timestep, calculate_denoised) and `cfg_function`
  (cfg 1 skips the negative), restated in `FluxDenoiser`, around diffusers' transformer; the
  guidance a conditioning carries defaults to 3.5 (`model_base.Flux.extra_conds`).
- Pixels: ComfyUI's VAE `process_output` (clamp((x + 1) / 2, 0, 1)), `process_input` (2x - 1),
  `vae_encode_crop_pixels`, LoadImage (RGB / 255) and SaveImage (`np.clip(255 * i, 0, 255).astype(uint8)`).

What it writes (relative to tests/fixtures/pipeline/):

cases.json              the cases: workflow parameters (seed, steps, cfg, sampler, scheduler,
                        denoise, size, guidance, prompts) the Rust tests set, and what they compare.
embeddings.safetensors  `context` [1,256,48] and `pooled` [1,32]: the precomputed conditioning of
                        case `embeddings` (seeded normal values; f32).
flux_prompt.gguf        a tiny Flux dev for the prompt cases (context width 32 = the tiny T5's,
                        pooled width 32 = the tiny CLIP's), city96 type mix as flux/dev.gguf.
clip_l.gguf             tiny CLIP-L text model with the real 49408-token vocabulary (hidden 32,
                        one 32-wide head, 2 layers); transformers names; Q4_0 token embedding.
t5xxl.gguf              tiny T5 v1.1 encoder with the real 32128-token vocabulary (d_model 32, 4 heads,
                        2 layers) in llama.cpp names, no tokenizer metadata (weft uses its built-in
                        google/t5-v1_1-xxl vocabulary); Q4_0 token embedding.
input.png               the img2img input, 24x16 RGB.
reference.safetensors   per case: `<case>.sigmas`, `<case>.latent` (the KSampler's LATENT, VAE
                        space), `<case>.image` [1,H,W,3] floats in 0..1 (VAEDecode's IMAGE) and
                        `<case>.png` (the 8-bit values SaveImage writes, as f32); for the prompt
                        cases `<case>.positive.{context,pooled}` and `<case>.negative.{context,pooled}`.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize
from PIL import Image
from safetensors.numpy import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_flux_fixtures as gf  # noqa: E402
import gen_sampling_fixtures as gs  # noqa: E402
import gen_text_encoder_fixtures as gt  # noqa: E402
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline  # noqa: E402

torch.set_grad_enabled(False)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

# The cases. Sizes are in pixels as the workflow gives them to EmptySD3LatentImage (latent = /8);
# the tiny VAE scales by 2, so a 96x64 workflow decodes to a 24x16 image.
CASES = {
    "embeddings": dict(model="flux/dev.gguf", width=96, height=64, seed=42, steps=4, cfg=1.0, sampler="euler",
                       scheduler="simple", denoise=1.0, guidance=4.0, max_shift=1.15, base_shift=0.5),
    "prompt": dict(model="pipeline/flux_prompt.gguf", width=96, height=64, seed=7, steps=4, cfg=2.0, sampler="dpmpp_2m",
                   scheduler="beta", denoise=1.0, guidance=3.5, max_shift=1.15, base_shift=0.5,
                   positive="a photo of a (red:1.3) fox in the snow, highly detailed",
                   negative="blurry, low quality"),
    "img2img": dict(model="pipeline/flux_prompt.gguf", width=96, height=64, seed=1234, steps=4, cfg=1.0,
                    sampler="euler_ancestral", scheduler="normal", denoise=0.6, guidance=3.5, max_shift=1.15,
                    base_shift=0.5, positive="a watercolor painting of a castle", negative=""),
}


def read_gguf(path):
    """Every tensor of a GGUF file dequantized by gguf-py, PyTorch-order shapes."""
    out = {}
    for t in GGUFReader(path).tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    return out


def flux_config(ctx_dim):
    return dict(gf.TINY, ctx_dim=ctx_dim)


# ---------------------------------------------------------------------------------------------
# Text encoders


def clip_model():
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    model = CLIPTextModel(cfg).eval().float()
    gt.randomize(model, 101)
    return model


def clip_types(name, arr):
    if arr.ndim == 1 or arr.size <= 1024:
        return T.F32
    if "token_embedding" in name:
        return T.Q4_0
    if "position_embedding" in name:
        return T.F16
    return T.Q8_0


def t5_model():
    cfg = T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                   dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)
    model = T5EncoderModel(cfg).eval().float()
    gt.randomize(model, 103)
    return model


def t5_types(name, arr):
    if arr.ndim == 1 or arr.size <= 1024 or "attn_rel_b" in name:
        return T.F32
    if name == "token_embd.weight":
        return T.Q4_0
    if "ffn_down" in name:
        return T.F16
    return T.Q8_0


def write_text_encoders(out_dir):
    """Writes clip_l.gguf and t5xxl.gguf; returns transformers models holding the dequantized values."""
    clip = clip_model()
    clip_sd = {"text_model." + k: v.numpy().astype(np.float32) for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    values = gt.write_gguf(os.path.join(out_dir, "clip_l.gguf"), "clip", clip_sd, clip_types)
    gt.load_into(clip, {k.removeprefix("text_model."): v for k, v in values.items()})

    t5 = t5_model()
    t5_sd = gt.t5_state(t5)
    values = gt.write_gguf(os.path.join(out_dir, "t5xxl.gguf"), "t5encoder", {gt.t5_gguf_name(k): v for k, v in t5_sd.items()}, t5_types)
    gt.load_into(t5, {k: values[gt.t5_gguf_name(k)] for k in t5_sd})
    return clip, t5


def encode_weighted(chunks, empty_ids, encode):
    """ComfyUI's `ClipTokenWeightEncoder.encode_token_weights` (comfy/sd1_clip.py): encode every
    chunk in one batch, plus the empty prompt when a weight is not 1; weighted tokens become
    (z - z_empty) * w + z_empty; chunks are joined along the sequence. Returns (context, first pooled)."""
    ids = [[t for t, _ in c] for c in chunks]
    weighted = any(w != 1.0 for c in chunks for _, w in c)
    if weighted:
        ids.append(empty_ids(len(ids[0])))
    out, pooled = encode(torch.tensor(ids))
    parts = []
    for k, chunk in enumerate(chunks):
        z = out[k:k + 1].clone()
        if weighted:
            z_empty = out[-1:]
            for j, (_, w) in enumerate(chunk):
                if w != 1.0:
                    z[0, j] = (z[0, j] - z_empty[0, j]) * w + z_empty[0, j]
        parts.append(z)
    return torch.cat(parts, dim=1), (pooled[0:1] if pooled is not None else None)


def encode_prompt(text, clip, t5, clip_layout, t5_layout):
    """ComfyUI's `FluxClipModel.encode_token_weights`: (T5 context, CLIP-L pooled)."""
    def clip_empty(n):  # gen_empty_tokens: start, end, then padding (CLIP pads with end)
        return ([clip_layout.start, clip_layout.end] + [clip_layout.pad] * n)[:n]

    def t5_empty(n):
        return ([t5_layout.end] + [t5_layout.pad] * n)[:n]

    def run_clip(ids):
        o = clip(input_ids=ids)
        return o.last_hidden_state, o.pooler_output

    def run_t5(ids):  # ComfyUI runs Flux's T5 without an attention mask
        return t5(input_ids=ids).last_hidden_state, None

    _, pooled = encode_weighted(clip_layout.tokenize_with_weights(text), clip_empty, run_clip)
    context, _ = encode_weighted(t5_layout.tokenize_with_weights(text), t5_empty, run_t5)
    return context, pooled


# ---------------------------------------------------------------------------------------------
# Sampling


class FluxDenoiser:
    """What KSAMPLER calls: ComfyUI's CFGGuider for one positive and one negative conditioning."""

    def __init__(self, ms, transformer, positive, negative, cfg):
        self.inner_model = types.SimpleNamespace(model_sampling=ms)
        self.ms, self.transformer, self.cfg = ms, transformer, cfg
        self.positive, self.negative = positive, negative
        self.calls = 0

    def apply_model(self, x, sigma, cond):
        """comfy.model_base.BaseModel.apply_model with comfy.ldm.flux.model.Flux (txt_ids zeros,
        img_ids (0, row, col)), here through diffusers' packed-token transformer."""
        ms = self.ms
        xc = ms.calculate_input(sigma, x)
        t = ms.timestep(sigma).float()
        b, c, h, w = xc.shape
        context, pooled, guidance = cond
        packed = FluxPipeline._pack_latents(xc, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)
        txt_ids = torch.zeros(context.shape[1], 3)
        out = self.transformer(hidden_states=packed, encoder_hidden_states=context.expand(b, -1, -1),
                               pooled_projections=pooled.expand(b, -1), timestep=t.expand(b),
                               img_ids=img_ids, txt_ids=txt_ids, guidance=torch.full((b,), guidance),
                               return_dict=False)[0]
        out = FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)
        self.calls += 1
        return ms.calculate_denoised(sigma, out, x)

    def __call__(self, x, sigma, model_options={}, seed=None):
        cond = self.apply_model(x, sigma, self.positive)
        if math.isclose(self.cfg, 1.0):  # comfy.samplers.sampling_function: uncond is None
            return cond
        uncond = self.apply_model(x, sigma, self.negative)
        return uncond + (cond - uncond) * self.cfg  # comfy.samplers.cfg_function


def sample(comfy, case, transformer, positive, negative, latent_image):
    ms_mod, samplers_mod, sample_mod, nodes_adv, latent_formats = comfy
    base = gs.FakeModel(None)
    ms = nodes_adv.ModelSamplingFlux().patch(base, case["max_shift"], case["base_shift"], case["width"], case["height"])[0].model_sampling
    k = samplers_mod.KSampler(gs.FakeModel(ms), steps=case["steps"], device="cpu", sampler=case["sampler"],
                              scheduler=case["scheduler"], denoise=case["denoise"])
    sigmas = k.sigmas
    noise = sample_mod.prepare_noise(latent_image, case["seed"])
    fmt = latent_formats.Flux()
    # comfy.samplers.CFGGuider.inner_sample: an empty latent is not shifted.
    latent_in = fmt.process_in(latent_image) if torch.count_nonzero(latent_image) > 0 else latent_image
    wrap = FluxDenoiser(ms, transformer, positive, negative, case["cfg"])
    extra_args = {"model_options": {}, "seed": case["seed"]}
    out = samplers_mod.sampler_object(case["sampler"]).sample(wrap, sigmas, extra_args, None, noise, latent_in, disable_pbar=True)
    print(f"  {case['sampler']}/{case['scheduler']}: {len(sigmas) - 1} steps, {wrap.calls} model calls")
    return sigmas, fmt.process_out(out.float())


def load_comfy(root):
    ms_mod, samplers_mod, sample_mod, nodes_adv = gs.load_comfy(root)
    import comfy.latent_formats as latent_formats
    return ms_mod, samplers_mod, sample_mod, nodes_adv, latent_formats


# ---------------------------------------------------------------------------------------------


def vae_model():
    values = load_file(os.path.join(FIXTURES, "vae", "flux_vae.safetensors"))
    return gf.diffusers_vae(values, 32, (1, 2), 1, 16, False, "")


def decode(vae, latent):
    """VAEDecode: ComfyUI's VAE.decode with process_output, channels last."""
    image = torch.clamp((vae.decode(latent).sample + 1.0) / 2.0, min=0.0, max=1.0)
    return image.movedim(1, -1)


def to_png_values(image):
    """SaveImage's 8-bit conversion."""
    return np.clip(255.0 * image[0].numpy(), 0, 255).astype(np.uint8)


def input_image(out_dir, rng, width, height):
    """A smooth seeded 8-bit RGB image (a gradient with low-frequency noise), saved as input.png;
    returned as LoadImage returns it: [1, H, W, 3] floats / 255."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 3.0 + y / 5.0)], axis=-1)
    pixels = np.clip(255.0 * (0.8 * base + 0.1 * rng.random((height, width, 3))), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(os.path.join(out_dir, "input.png"))
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)[None]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", required=True, help="a ComfyUI checkout (see tools/gen_sampling_fixtures.py)")
    ap.add_argument("--out", default=FIXTURES, help="fixtures root (flux/ and vae/ are read from the repository)")
    args = ap.parse_args()
    torch.manual_seed(0)
    out_dir = os.path.join(args.out, "pipeline")
    os.makedirs(out_dir, exist_ok=True)
    comfy = load_comfy(Path(args.comfyui).resolve())
    rng = np.random.default_rng(20250101)
    ref = {}

    # Models ----------------------------------------------------------------------------------
    dev = gf.diffusers_flux(read_gguf(os.path.join(FIXTURES, "flux", "dev.gguf")), flux_config(48), True)
    prompt_weights = gf.random_weights(gf.shapes_for(flux_config(32), True), rng)
    prompt_values = gf.write_gguf(os.path.join(out_dir, "flux_prompt.gguf"), "flux", prompt_weights, gf.dev_types)
    prompt_flux = gf.diffusers_flux(prompt_values, flux_config(32), True)
    transformers_by_file = {"flux/dev.gguf": dev, "pipeline/flux_prompt.gguf": prompt_flux}
    vae = vae_model()
    clip, t5 = write_text_encoders(out_dir)
    tmp = tempfile.mkdtemp()
    clip_layout = gt.ComfyLayout(gt.clip_tokenizer(tmp), has_start=True, pad_with_end=True, max_length=77, pad_to_max=True, min_length=None)
    t5_layout = gt.ComfyLayout(gt.t5_tokenizer(tmp, gt.t5_tokenizer_json()), has_start=False, pad_with_end=False,
                               max_length=99999999, pad_to_max=False, min_length=256)

    # Case: precomputed embeddings --------------------------------------------------------------
    embeddings = {"context": rng.standard_normal((1, 256, 48)).astype(np.float32),
                  "pooled": rng.standard_normal((1, 32)).astype(np.float32)}
    save_file(embeddings, os.path.join(out_dir, "embeddings.safetensors"))
    png = input_image(out_dir, rng, 24, 16)

    for name, case in CASES.items():
        print(name)
        lat_shape = (1, 16, case["height"] // 8, case["width"] // 8)
        if name == "embeddings":
            context, pooled = torch.from_numpy(embeddings["context"]), torch.from_numpy(embeddings["pooled"])
            positive = (context, pooled, case["guidance"])
            negative = (torch.zeros_like(context), torch.zeros_like(pooled), 3.5)  # ConditioningZeroOut
        else:
            pc, pp = encode_prompt(case["positive"], clip, t5, clip_layout, t5_layout)
            nc, np_ = encode_prompt(case["negative"], clip, t5, clip_layout, t5_layout)
            positive, negative = (pc, pp, case["guidance"]), (nc, np_, 3.5)
            for side, (c, p) in [("positive", (pc, pp)), ("negative", (nc, np_))]:
                ref[f"{name}.{side}.context"], ref[f"{name}.{side}.pooled"] = c.numpy(), p.numpy()
        if name == "img2img":
            # VAEEncode: crop to whole latent pixels (24x16 is already whole), 2x - 1, the posterior's mean.
            latent_image = vae.encode((png * 2.0 - 1.0).movedim(-1, 1)).latent_dist.mean
            assert latent_image.shape == (1, 16, 8, 12), latent_image.shape
            case["lat_shape"] = list(latent_image.shape)
        else:
            latent_image = torch.zeros(lat_shape)
        sigmas, latent = sample(comfy, case, transformers_by_file[case["model"]], positive, negative, latent_image)
        image = decode(vae, latent)
        ref[f"{name}.sigmas"] = sigmas.float().numpy()
        ref[f"{name}.latent"] = latent.numpy()
        ref[f"{name}.image"] = image.numpy()
        ref[f"{name}.png"] = to_png_values(image).astype(np.float32)
        print(f"  image {tuple(image.shape)}, range {float(image.min()):.3f}..{float(image.max()):.3f}, "
              f"mean {float(image.mean()):.3f}")

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in ref.items()}, os.path.join(out_dir, "reference.safetensors"))
    meta = {"torch": torch.__version__, "comfyui": "3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce"}
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump({"cases": CASES, "meta": meta}, f, indent=1)
    for name in sorted(os.listdir(out_dir)):
        print("%-24s %9d bytes" % (name, os.path.getsize(os.path.join(out_dir, name))))


if __name__ == "__main__":
    sys.exit(main())
