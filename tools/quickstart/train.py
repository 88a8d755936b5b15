"""Trains the quickstart's models from scratch on the procedural shapes dataset (tools/quickstart/
shapes.py), with the architectures weft runs, as diffusers and transformers implement them:
a tiny AutoencoderKL (Flux layout: 16 latent channels, 8x down-scaling, no quant convs), a tiny
FluxTransformer2DModel (schnell-style: no guidance embedding), and tiny CLIPTextModel and
T5EncoderModel text encoders, the last three trained jointly with flow matching.

Two stages, each inside one device call (run on the lent H100; see docs/quickstart.md):

    python3 tools/quickstart/train.py vae --tokens .quickstart/tokens.json --out $OUT
    python3 tools/quickstart/train.py dit --tokens .quickstart/tokens.json --vae .quickstart/vae --out $OUT

`vae` writes `vae-*.safetensors` (diffusers names, f32) with the per-channel latent mean and
standard deviation; `dit` standardizes latents with them (so the DiT sees unit-variance latents;
tools/quickstart/export.py folds the same affine map into the exported VAE, where ComfyUI's Flux
latent format expects it) and writes `dit-*.safetensors` with the EMA weights of the DiT and the
two text encoders. Both write `log-<stage>.json` (config, seed, loss curve, timings) and a sample
sheet. Seeded: the data stream, the initialisation and the noise are reproducible; cuDNN/cuBLAS
kernels may still differ in the last bits between runs.

The frame the text encoders see is ComfyUI's for Flux (tools/quickstart/vocab.py): CLIP-L 77
tokens padded with <|endoftext|>, its pooled output (at the first <|endoftext|>) to the DiT's
`vector_in`; T5 ids + </s> padded with <pad> to 256, all attended (no mask), its last hidden
state to `txt_in`. One caption in ten is dropped to the empty prompt, so the model also learns
the unconditional prediction that classifier-free guidance needs.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import shapes  # noqa: E402

CONFIG = {
    "vae": dict(block_out_channels=[32, 64, 64, 64], layers_per_block=1, latent_channels=16, norm_num_groups=32),
    "dit": dict(hidden=192, head_dim=64, depth=2, depth_single=4, axes=(8, 28, 28)),
    "clip": dict(hidden=32, intermediate=64, layers=2, heads=2),
    "t5": dict(d_model=64, d_kv=16, d_ff=128, layers=2, heads=4),
}
CLIP_LENGTH, CLIP_EOS = 77, 49407
T5_LENGTH, T5_PAD = 256, 0
LATENT = 8  # 64 px / 8


def build_vae():
    from diffusers import AutoencoderKL
    c = CONFIG["vae"]
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(c["block_out_channels"]),
        up_block_types=["UpDecoderBlock2D"] * len(c["block_out_channels"]),
        block_out_channels=c["block_out_channels"], layers_per_block=c["layers_per_block"],
        latent_channels=c["latent_channels"], norm_num_groups=c["norm_num_groups"],
        use_quant_conv=False, use_post_quant_conv=False,
    )


def build_dit(ctx_dim, vec_dim):
    from diffusers import FluxTransformer2DModel
    c = CONFIG["dit"]
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4 * CONFIG["vae"]["latent_channels"], num_layers=c["depth"],
        num_single_layers=c["depth_single"], attention_head_dim=c["head_dim"],
        num_attention_heads=c["hidden"] // c["head_dim"], joint_attention_dim=ctx_dim,
        pooled_projection_dim=vec_dim, guidance_embeds=False, axes_dims_rope=c["axes"],
    )


def build_clip():
    from transformers import CLIPTextConfig, CLIPTextModel
    c = CONFIG["clip"]
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=c["hidden"], intermediate_size=c["intermediate"],
                         num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
                         max_position_embeddings=CLIP_LENGTH, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                         bos_token_id=49406, eos_token_id=CLIP_EOS, pad_token_id=CLIP_EOS)
    return CLIPTextModel(cfg)


def build_t5(vocab):
    from transformers import T5Config, T5EncoderModel
    c = CONFIG["t5"]
    cfg = T5Config(vocab_size=vocab, d_model=c["d_model"], d_kv=c["d_kv"], d_ff=c["d_ff"], num_layers=c["layers"],
                   num_heads=c["heads"], relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                   dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)
    return T5EncoderModel(cfg)


def autocast(dev):
    return torch.autocast(torch.device(dev).type, dtype=torch.bfloat16)


def save_sharded(state, out, stem, max_bytes=15 << 20):
    """safetensors shards of at most `max_bytes` (the device call returns files of up to 16 MiB)."""
    from safetensors.torch import save_file
    shard, size, n = {}, 0, 0
    names = []
    for k, v in state.items():
        v = v.detach().float().cpu().contiguous().clone()
        if shard and size + v.numel() * 4 > max_bytes:
            names.append(f"{stem}-{n}.safetensors")
            save_file(shard, os.path.join(out, names[-1]))
            shard, size, n = {}, 0, n + 1
        shard[k] = v
        size += v.numel() * 4
    names.append(f"{stem}-{n}.safetensors")
    save_file(shard, os.path.join(out, names[-1]))
    return names


def load_sharded(folder, stem):
    from safetensors.torch import load_file
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.startswith(stem + "-") and f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out


def lr_at(step, steps, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def sheet(images, cols):
    """[N, 3, 64, 64] in [0, 1] -> an [rows*64, cols*64, 3] uint8 contact sheet."""
    n = images.shape[0]
    rows = (n + cols - 1) // cols
    pad = torch.zeros(rows * cols - n, *images.shape[1:], device=images.device)
    grid = shapes.to_uint8(torch.cat([images, pad]))
    return grid.reshape(rows, cols, 64, 64, 3).permute(0, 2, 1, 3, 4).reshape(rows * 64, cols * 64, 3).cpu().numpy()


def save_png(array, path):
    from PIL import Image
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------------------------------------
# Stage 1: the VAE


def train_vae(args, dev):
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    vae = build_vae().to(dev).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    scenes = shapes.training_scenes()
    log = {"stage": "vae", "config": CONFIG["vae"], "seed": args.seed, "steps": args.steps, "batch": args.batch,
           "lr": args.lr, "kl_weight": args.kl, "loss": []}
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, 200)
        picked, _ = shapes.sample_batch(gen, scenes, args.batch)
        x = shapes.render(picked, gen, device=dev) * 2 - 1
        with autocast(dev):
            post = vae.encode(x).latent_dist
            z = post.sample(generator=None)
            rec = vae.decode(z).sample
        rec = rec.float()
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / (CONFIG["vae"]["latent_channels"] * LATENT * LATENT)
        loss = mse + 0.5 * F.l1_loss(rec, x) + args.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            psnr = -10 * math.log10(max(mse.item() / 4, 1e-12))  # [-1, 1] range -> [0, 1]
            log["loss"].append([step, round(loss.item(), 6), round(psnr, 3), round(kl.item(), 5)])
            print(f"vae step {step} loss {loss.item():.5f} psnr {psnr:.2f} kl {kl.item():.4f} {time.time() - t0:.0f}s",
                  flush=True)
        if time.time() - t0 > args.max_seconds or step + 1 == args.stop_after:
            log["stopped_at"] = step + 1
            print(f"stopped at step {step + 1}", flush=True)
            break
    log["train_seconds"] = time.time() - t0
    vae.eval()
    # Latent statistics over fresh pictures: the per-channel affine map the DiT trains behind.
    with torch.no_grad(), autocast(dev):
        zs, errs = [], []
        for _ in range(16):
            picked, _ = shapes.sample_batch(gen, scenes, 256)
            x = shapes.render(picked, gen, device=dev) * 2 - 1
            m = vae.encode(x).latent_dist.mean.float()
            zs.append(m)
            errs.append(F.mse_loss(vae.decode(m).sample.float(), x).item())
        z = torch.cat(zs)
        mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
        log["latent_mean"], log["latent_std"] = mean.tolist(), std.tolist()
        log["eval_psnr"] = -10 * math.log10(sum(errs) / len(errs) / 4)
        picked, _ = shapes.sample_batch(gen, scenes, 32)
        x = shapes.render(picked, gen, device=dev)
        rec = vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample.float()
        save_png(sheet(torch.cat([x, (rec + 1) / 2]), 8), os.path.join(args.out, "vae-samples.png"))
    state = {k: v for k, v in vae.state_dict().items()}
    state["latent_mean"], state["latent_std"] = mean, std
    log["files"] = save_sharded(state, args.out, "vae")
    print(f"vae: eval psnr {log['eval_psnr']:.2f} dB; latent std {std.min().item():.3f}..{std.max().item():.3f}")
    return log


# ---------------------------------------------------------------------------------------------
# Stage 2: DiT + text encoders


class Captions:
    """Padded id tensors for captions, from tools/quickstart/vocab.py's file."""

    def __init__(self, path, dev):
        with open(path) as f:
            data = json.load(f)
        self.tokens = data["captions"]
        self.t5_vocab = data["t5_vocab"]
        self.dev = dev

    def ids(self, captions):
        clip = torch.full((len(captions), CLIP_LENGTH), CLIP_EOS, dtype=torch.long)
        t5 = torch.full((len(captions), T5_LENGTH), T5_PAD, dtype=torch.long)
        for i, c in enumerate(captions):
            tc, tt = self.tokens[c]["clip"], self.tokens[c]["t5"]
            clip[i, :len(tc)] = torch.tensor(tc)
            t5[i, :len(tt)] = torch.tensor(tt)
        return clip.to(self.dev), t5.to(self.dev)


class Models(torch.nn.Module):
    def __init__(self, t5_vocab):
        super().__init__()
        self.clip = build_clip()
        self.t5 = build_t5(t5_vocab)
        self.dit = build_dit(CONFIG["t5"]["d_model"], CONFIG["clip"]["hidden"])

    def encode(self, clip_ids, t5_ids):
        pooled = self.clip(input_ids=clip_ids).pooler_output
        context = self.t5(input_ids=t5_ids).last_hidden_state
        return context, pooled

    def forward(self, x, sigma, context, pooled, img_ids, txt_ids):
        return self.dit(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                        timestep=sigma, img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]


def pack(z):
    """[B, C, H, W] -> [B, H/2*W/2, 4C], Flux's 2x2 patches (diffusers' FluxPipeline._pack_latents)."""
    b, c, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x, h, w):
    b, _, d = x.shape
    c = d // 4
    x = x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def position_ids(dev):
    half = LATENT // 2
    img = torch.zeros(half, half, 3)
    img[..., 1] = torch.arange(half)[:, None]
    img[..., 2] = torch.arange(half)[None, :]
    return img.reshape(-1, 3).to(dev), torch.zeros(T5_LENGTH, 3, device=dev)


def flux_sigmas(steps, tokens):
    """ComfyUI's ModelSamplingFlux shift (base 0.5, max 1.15, linear in the token count between 256
    and 4096) on evenly spaced times: what the quickstart workflow samples with."""
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    t = torch.linspace(1, 0, steps + 1)
    s = math.exp(mu) / (math.exp(mu) + (1 / t.clamp(min=1e-9) - 1))
    s[-1] = 0.0
    return s


@torch.no_grad()
def sample(models, captions_obj, caps, vae, stats, dev, steps=20, cfg=4.0, seed=0):
    """Euler flow-matching sampling with classifier-free guidance; pictures in [0, 1]."""
    gen = torch.Generator(device=dev).manual_seed(seed)
    n = len(caps)
    clip_ids, t5_ids = captions_obj.ids(caps)
    clip_u, t5_u = captions_obj.ids([""] * n)
    with autocast(dev):
        ctx, pooled = models.encode(torch.cat([clip_ids, clip_u]), torch.cat([t5_ids, t5_u]))
    ctx, pooled = ctx.float(), pooled.float()
    img_ids, txt_ids = position_ids(dev)
    x = torch.randn(n, CONFIG["vae"]["latent_channels"], LATENT, LATENT, generator=gen, device=dev)
    sig = flux_sigmas(steps, (LATENT // 2) ** 2)
    for i in range(steps):
        s, s_next = sig[i].item(), sig[i + 1].item()
        xp = pack(torch.cat([x, x]))
        with autocast(dev):
            v = models(xp, torch.full((2 * n,), s, device=dev), ctx, pooled, img_ids, txt_ids).float()
        v_c, v_u = v[:n], v[n:]
        v = unpack(v_u + cfg * (v_c - v_u), LATENT, LATENT)
        x = x + (s_next - s) * v
    z = x * stats[1][None, :, None, None] + stats[0][None, :, None, None]
    with autocast(dev):
        img = vae.decode(z).sample.float()
    return ((img + 1) / 2).clamp(0, 1)


def adherence(images, scenes):
    """Fraction of pictures whose classified color and shape match their scene."""
    hits = 0
    for img, s in zip(shapes.to_uint8(images).cpu().numpy(), scenes):
        _, color, shape = shapes.classify(img)
        hits += (color, shape) == (s[1], s[2])
    return hits / len(scenes)


def train_dit(args, dev):
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    noise_gen = torch.Generator(device=dev).manual_seed(args.seed + 1)
    captions = Captions(args.tokens, dev)
    vae_state = load_sharded(args.vae, "vae")
    stats = (vae_state.pop("latent_mean").to(dev), vae_state.pop("latent_std").to(dev))
    vae = build_vae().to(dev).eval()
    vae.load_state_dict(vae_state)
    vae.requires_grad_(False)
    models = Models(captions.t5_vocab).to(dev).train()
    ema = Models(captions.t5_vocab).to(dev).eval()
    ema.load_state_dict(models.state_dict())
    ema.requires_grad_(False)
    params = [p for p in models.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    scenes = shapes.training_scenes()
    img_ids, txt_ids = position_ids(dev)
    counts = {k: sum(p.numel() for p in getattr(models, k).parameters()) for k in ("dit", "clip", "t5")}
    log = {"stage": "dit", "config": CONFIG, "seed": args.seed, "steps": args.steps, "batch": args.batch,
           "lr": args.lr, "ema": args.ema, "caption_dropout": args.dropout, "parameters": counts, "loss": []}
    print("parameters", counts, flush=True)
    t0 = time.time()
    running = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, 300)
        picked, caps = shapes.sample_batch(gen, scenes, args.batch)
        drop = (torch.rand(args.batch, generator=gen) < args.dropout).tolist()
        caps = ["" if d else c for c, d in zip(caps, drop)]
        with torch.no_grad(), autocast(dev):
            x = shapes.render(picked, gen, device=dev) * 2 - 1
            z = vae.encode(x).latent_dist.mean.float()
        x0 = (z - stats[0][None, :, None, None]) / stats[1][None, :, None, None]
        sigma = torch.sigmoid(torch.randn(args.batch, generator=noise_gen, device=dev))
        noise = torch.randn(x0.shape, generator=noise_gen, device=dev)
        xt = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
        clip_ids, t5_ids = captions.ids(caps)
        with autocast(dev):
            ctx, pooled = models.encode(clip_ids, t5_ids)
            v = models(pack(xt), sigma, ctx, pooled, img_ids, txt_ids)
        loss = F.mse_loss(v.float(), pack(noise - x0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), models.parameters()):
                pe.lerp_(pm, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps - 1:
            log["loss"].append([step, round(loss.item(), 5), round(running, 5)])
            print(f"dit step {step} loss {loss.item():.4f} avg {running:.4f} {time.time() - t0:.0f}s", flush=True)
        if time.time() - t0 > args.max_seconds or step + 1 == args.stop_after:
            log["stopped_at"] = step + 1
            print(f"stopped at step {step + 1}", flush=True)
            break
    log["train_seconds"] = time.time() - t0
    # Held-out prompts (scenes never drawn in training), sampled as the quickstart workflow does.
    held = shapes.held_out_scenes()
    pick = torch.randperm(len(held), generator=torch.Generator().manual_seed(7))[:args.eval].tolist()
    held = [held[i] for i in pick]
    caps = [shapes.caption(*s) for s in held]
    for name, m in (("ema", ema), ("raw", models.eval())):
        for cfg in (3.0, 5.0):
            images = sample(m, captions, caps, vae, stats, dev, steps=20, cfg=cfg, seed=0)
            acc = adherence(images, held)
            log[f"held_out_adherence_{name}_cfg{cfg:g}"] = acc
            print(f"held-out adherence ({name}, cfg {cfg:g}, 20 euler steps): {acc:.3f}", flush=True)
    images = sample(ema, captions, caps[:min(48, args.eval)], vae, stats, dev, steps=20, cfg=4.0, seed=0)
    save_png(sheet(images, 8), os.path.join(args.out, "dit-samples.png"))
    with open(os.path.join(args.out, "dit-samples.txt"), "w") as f:
        f.write("\n".join(caps[:48]) + "\n")
    state = {f"{k}.{n}": v for k in ("dit", "clip", "t5") for n, v in getattr(ema, k).state_dict().items()}
    state.pop("t5.encoder.embed_tokens.weight")  # tied to t5.shared.weight
    log["files"] = save_sharded(state, args.out, "dit")
    return log


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["vae", "dit"])
    ap.add_argument("--tokens", required=True, help="tools/quickstart/vocab.py's output")
    ap.add_argument("--vae", help="folder with stage vae's vae-*.safetensors (stage dit)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--kl", type=float, default=1e-4, help="KL weight per latent element (stage vae)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--dropout", type=float, default=0.1, help="caption dropout (stage dit)")
    ap.add_argument("--stop-after", type=int, help="stop after this many steps (the schedule still spans --steps)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--eval", type=int, default=96, help="held-out prompts sampled at the end (stage dit)")
    ap.add_argument("--max-seconds", type=float, default=480, help="stop early past this training time")
    args = ap.parse_args()
    defaults = {"vae": (3000, 64, 1e-3), "dit": (8000, 256, 6e-4)}[args.stage]
    args.steps = args.steps or defaults[0]
    args.batch = args.batch or defaults[1]
    args.lr = args.lr or defaults[2]
    os.makedirs(args.out, exist_ok=True)
    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    # torch 2.11's cuDNN attention backward hit an illegal address on these shapes (H100, first
    # run); flash / memory-efficient SDPA are used instead.
    torch.backends.cuda.enable_cudnn_sdp(False)
    log = train_vae(args, dev) if args.stage == "vae" else train_dit(args, dev)
    log["device"] = torch.cuda.get_device_name() if dev.startswith("cuda") else dev
    log["torch"] = torch.__version__
    with open(os.path.join(args.out, f"log-{args.stage}.json"), "w") as f:
        json.dump(log, f, indent=1)


if __name__ == "__main__":
    main()
