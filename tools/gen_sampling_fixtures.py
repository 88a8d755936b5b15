#!/usr/bin/env python3
"""Fixtures for weft's sampling tests (tests/sampling/), computed by torch and by ComfyUI's own code.

    git clone https://github.com/comfyanonymous/ComfyUI /tmp/ComfyUI
    git -C /tmp/ComfyUI checkout 3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce   # master, 2026-01-07 (v0.8.0+)
    pip install torch numpy scipy torchsde tqdm pillow                      # torch 2.15.0 (CPU) was used
    python3 tools/gen_sampling_fixtures.py --comfyui /tmp/ComfyUI

It runs on the CPU in a few seconds and writes tests/fixtures/sampling/:
- noise.json: `torch.manual_seed(seed); torch.randn(shape)` for several seeds and shapes, the values
  as float32 bit patterns (large tensors as an FNV-1a digest of the bits plus their first and last
  values), generator sequences (several `randn` calls on one generator, as ancestral samplers do),
  and `comfy.sample.prepare_noise` with a latent `batch_index`.
- schedules.json: the sigma tables of ComfyUI's model samplings (SD1 discrete, Flux at several shifts,
  SD3 and AuraFlow discrete flow) and `KSampler` sigmas for every scheduler, several step counts,
  `denoise < 1`, and a sampler that discards the penultimate sigma.
- samplers.json: whole `KSAMPLER.sample` runs (noise scaling, the k-diffusion loop, inverse noise
  scaling) of each sampler on an analytic model, for an EPS and two flow model samplings, with every
  step's `x` and `denoised` from ComfyUI's callback.

ComfyUI is imported from the checkout, with the modules it pulls in for model loading and UI
stubbed out; its `model_sampling`, `samplers` (schedulers, KSampler, KSAMPLER) and
`k_diffusion.sampling` run unchanged. Nothing of ComfyUI is copied into weft.
"""
import argparse
import json
import warnings
import sys
import types
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sampling"


def bits_hex(t):
    """A float32 tensor as its u32 bit patterns, 8 hex digits each, concatenated."""
    words = t.detach().to(torch.float32).contiguous().flatten().numpy().view(np.uint32)
    return "".join(f"{int(w):08x}" for w in words)


def fnv1a64(t):
    """FNV-1a 64 over the u32 bit patterns of a float32 tensor (4 bytes each, little-endian)."""
    h = 0xCBF29CE484222325
    data = t.detach().to(torch.float32).contiguous().numpy().tobytes()
    for byte in data:
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def load_comfy(root):
    """Imports ComfyUI's sampling modules from a checkout, stubbing what they import for other jobs."""
    sys.path.insert(0, str(root))

    def stub(name, **attrs):
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
        return module

    for name in ["comfy.model_management", "comfy.sampler_helpers", "comfy.model_patcher", "comfy.patcher_extension",
                 "comfy.hooks", "comfy.context_windows", "comfy.utils", "comfy.sd", "comfy.ldm.util",
                 "node_helpers"]:
        stub(name)
    sys.modules["comfy.ldm.util"].instantiate_from_config = None
    stub("nodes", MAX_RESOLUTION=16384)
    stub("comfy.extra_samplers")
    stub("comfy.extra_samplers.uni_pc")
    try:
        import einops  # noqa: F401
    except ImportError:
        stub("einops", repeat=None, rearrange=None)
    import comfy.model_sampling as model_sampling
    import comfy.samplers as samplers
    sys.path.insert(0, str(root / "comfy_extras"))
    import nodes_model_advanced
    import comfy.sample as sample
    return model_sampling, samplers, sample, nodes_model_advanced


class FakeModel:
    """What ComfyUI's model-sampling nodes and KSampler touch of a ModelPatcher."""

    def __init__(self, ms):
        self.model = types.SimpleNamespace(model_config=None)
        self.model_sampling = ms

    def clone(self):
        return FakeModel(self.model_sampling)

    def add_object_patch(self, name, obj):
        assert name == "model_sampling"
        self.model_sampling = obj

    def get_model_object(self, name):
        assert name == "model_sampling"
        return self.model_sampling


def model_samplings(ms_mod, nodes_adv):
    """The model samplings under test, built as ComfyUI builds them."""
    def discrete(kind, settings=None):
        class ModelSampling(ms_mod.ModelSamplingDiscrete, kind):
            pass
        config = None if settings is None else types.SimpleNamespace(sampling_settings=settings)
        return ModelSampling(config)

    base = FakeModel(None)
    flux_default = nodes_adv.ModelSamplingFlux().patch(base, 1.15, 0.5, 1024, 1024)[0].model_sampling
    out = {
        "sd1": discrete(ms_mod.EPS),
        "sd1_sqrt_linear": discrete(ms_mod.EPS, {"beta_schedule": "sqrt_linear", "linear_start": 0.00085, "linear_end": 0.012}),
        "flux_1024": flux_default,
        "flux_512x768": nodes_adv.ModelSamplingFlux().patch(base, 1.15, 0.5, 512, 768)[0].model_sampling,
        "flux_schnell": nodes_adv.ModelSamplingFlux().patch(base, 0.5, 0.5, 1024, 1024)[0].model_sampling,
        "sd3": nodes_adv.ModelSamplingSD3().patch(base, 3.0)[0].model_sampling,
        "auraflow": nodes_adv.ModelSamplingAuraFlow().patch_aura(base, 1.73)[0].model_sampling,
    }
    return out


def describe(name, ms):
    """How the Rust side builds the same model sampling."""
    if name.startswith("sd1"):
        return {"kind": "discrete", "beta_schedule": "sqrt_linear" if "sqrt" in name else "linear"}
    if name.startswith("flux"):
        return {"kind": "flux", "shift": ms.shift}
    return {"kind": "discrete_flow", "shift": ms.shift, "multiplier": ms.multiplier}


def gen_noise(sample_mod):
    cases = []
    seeds = [0, 1, 42, 2**32 + 42, 2**64 - 1, 0xDEADBEEF, 1234567890123]
    shapes = [[1, 1, 1, 1], [1, 1, 1, 5], [1, 1, 3, 5], [1, 1, 1, 16], [1, 1, 3, 7], [1, 16, 8, 8], [2, 4, 8, 8],
              [1, 4, 64, 64], [1, 16, 128, 128], [1, 4, 5, 5]]
    for seed in seeds:
        for shape in shapes:
            torch.manual_seed(seed)
            t = torch.randn(shape)
            case = {"seed": str(seed), "shape": shape}
            if t.numel() <= 1024:
                case["bits"] = bits_hex(t)
            else:
                flat = t.flatten()
                case["fnv1a64"] = fnv1a64(t)
                case["head"] = bits_hex(flat[:32])
                case["tail"] = bits_hex(flat[-32:])
            cases.append(case)
    # One generator, several draws: the scalar path's cached normal and the tail redraw carry over.
    sequences = []
    for seed in [7, 2**40 + 3]:
        g = torch.Generator().manual_seed(seed)
        draws = []
        for n in [5, 3, 40, 1, 17, 64]:
            draws.append({"numel": n, "bits": bits_hex(torch.randn(n, generator=g))})
        sequences.append({"seed": str(seed), "draws": draws})
    # comfy.sample.prepare_noise with a latent batch_index: per-latent draws from one generator.
    batch_indexed = []
    for seed, shape, inds in [(5, [3, 4, 5, 5], [2, 0, 2]), (11, [1, 16, 8, 8], [4]), (2**33 + 1, [2, 1, 3, 3], [1, 0])]:
        noise = sample_mod.prepare_noise(torch.zeros(shape), seed, inds)
        batch_indexed.append({"seed": str(seed), "shape": shape, "batch_index": inds, "bits": bits_hex(noise)})
    return {"cases": cases, "sequences": sequences, "batch_indexed": batch_indexed}


def gen_schedules(samplers_mod, mss):
    tables = {}
    for name, ms in mss.items():
        entry = describe(name, ms)
        sigmas = ms.sigmas.float()
        entry["table_len"] = len(sigmas)
        if len(sigmas) <= 1000:
            entry["sigmas"] = bits_hex(sigmas)
        else:
            entry["sigmas_fnv1a64"] = fnv1a64(sigmas)
            entry["sigmas_head"] = bits_hex(sigmas[:16])
            entry["sigmas_tail"] = bits_hex(sigmas[-16:])
        if hasattr(ms, "log_sigmas"):
            entry["log_sigmas"] = bits_hex(ms.log_sigmas)
        # sigma(timestep) and timestep(sigma) at a few points.
        probes = [0.0, 0.5, 1.0, 3.25, 17.9, 500.5, 998.9, 999.0] if entry["kind"] == "discrete" else [0.001, 0.25, 0.5, 0.9999, 1.0]
        if entry["kind"] == "discrete_flow" and ms.multiplier != 1.0:
            probes = [p * ms.multiplier for p in probes]
        entry["sigma_of"] = [[p, float(ms.sigma(torch.tensor(p, dtype=torch.float32)))] for p in probes]
        entry["timestep_of"] = [[float(s), float(ms.timestep(s))] for s in sigmas[[0, 7, len(sigmas) // 3, -1]]]
        entry["percent_to_sigma"] = [[p, float(ms.percent_to_sigma(p))] for p in [0.0, 1e-4, 0.3, 0.999, 1.0]]
        tables[name] = entry

    runs = []
    for name, ms in mss.items():
        model = FakeModel(ms)
        for scheduler in samplers_mod.SCHEDULER_NAMES:
            for steps in [1, 2, 4, 20, 33]:
                if scheduler == "kl_optimal" and steps == 1:
                    continue  # ComfyUI divides by steps - 1
                for denoise in [1.0, 0.6]:
                    for sampler in ["euler", "dpm_2"] if steps == 4 else ["euler"]:
                        k = samplers_mod.KSampler(model, steps=steps, device="cpu", sampler=sampler, scheduler=scheduler, denoise=denoise)
                        runs.append({"model": name, "scheduler": scheduler, "steps": steps, "denoise": denoise,
                                     "sampler": sampler, "sigmas": bits_hex(k.sigmas)})
    return {"tables": tables, "runs": runs}


class AnalyticModel:
    """A deterministic stand-in for model + CFG: denoised = x·a + target·(1 - a), a = 1 / (1 + sigma²)."""

    def __init__(self, ms, target):
        self.inner_model = types.SimpleNamespace(model_sampling=ms)
        self.model_patcher = FakeModel(ms)
        self.target = target
        self.calls = []

    def __call__(self, x, sigma, model_options={}, seed=None):
        s = sigma.reshape(-1, 1, 1, 1)
        a = 1.0 / (1.0 + s * s)
        self.calls.append(float(sigma[0]))
        return x * a + self.target * (1 - a)


def gen_samplers(ms_mod, samplers_mod, mss):
    shape = [1, 4, 3, 5]  # 60 values: randn's tail path (not a multiple of 16)
    seed = 1234
    torch.manual_seed(99)
    target = torch.randn(shape)
    latent_img2img = torch.randn(shape) * 0.5
    torch.manual_seed(seed)
    noise = torch.randn(shape)
    names = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m",
             "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "ddpm", "lcm"]
    runs = []
    for ms_name in ["sd1", "flux_1024", "sd3"]:
        ms = mss[ms_name]
        model = FakeModel(ms)
        for sampler_name in names:
            for scheduler, steps, denoise, latent in [("normal", 5, 1.0, "zeros"), ("karras", 4, 0.6, "img2img")]:
                if ms_name != "sd1" and scheduler == "karras":
                    scheduler = "simple"
                k = samplers_mod.KSampler(model, steps=steps, device="cpu", sampler=sampler_name, scheduler=scheduler, denoise=denoise)
                sigmas = k.sigmas
                latent_image = torch.zeros(shape) if latent == "zeros" else latent_img2img
                wrap = AnalyticModel(ms, target)
                steps_seen = []
                callback = lambda i, denoised, x, total: steps_seen.append({"x": bits_hex(x), "denoised": bits_hex(denoised)})
                sampler = samplers_mod.sampler_object(sampler_name)
                extra_args = {"model_options": {}, "seed": seed}
                out = sampler.sample(wrap, sigmas, extra_args, callback, noise.clone(), latent_image.clone(), disable_pbar=True)
                runs.append({"model": ms_name, "sampler": sampler_name, "scheduler": scheduler, "steps": steps,
                             "denoise": denoise, "latent": latent, "sigmas": bits_hex(sigmas),
                             "model_sigmas": bits_hex(torch.tensor(wrap.calls)), "steps_seen": steps_seen,
                             "out": bits_hex(out)})
    # The parameterizations' tensor maps, on the same tensors.
    class VModel(ms_mod.ModelSamplingDiscrete, ms_mod.V_PREDICTION):
        pass
    parameterizations = []
    for name, ms, sigmas in [("eps", mss["sd1"], [14.614642, 1.0, 0.0291675]), ("v", VModel(None), [14.614642, 0.5]),
                             ("const", mss["flux_1024"], [1.0, 0.5, 0.001])]:
        for sigma in sigmas:
            s = torch.tensor(sigma, dtype=torch.float32)
            parameterizations.append({
                "parameterization": name, "sigma": sigma,
                "calculate_input": bits_hex(ms.calculate_input(s, noise)),
                "calculate_denoised": bits_hex(ms.calculate_denoised(s, target, noise)),
                "noise_scaling": bits_hex(ms.noise_scaling(s, noise, latent_img2img, max_denoise=False)),
                "noise_scaling_max": bits_hex(ms.noise_scaling(s, noise, latent_img2img, max_denoise=True)),
                "inverse_noise_scaling": bits_hex(ms.inverse_noise_scaling(s, target)),
            })
    return {"shape": shape, "seed": seed, "noise": bits_hex(noise), "target": bits_hex(target),
            "img2img_latent": bits_hex(latent_img2img), "runs": runs, "parameterizations": parameterizations}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfyui", required=True, type=Path, help="a ComfyUI checkout")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # torchsde warns when a query is clamped to the tree's rounded ends; that is part of the reference.
    warnings.filterwarnings("ignore", message="Should have")
    ms_mod, samplers_mod, sample_mod, nodes_adv = load_comfy(args.comfyui.resolve())
    mss = model_samplings(ms_mod, nodes_adv)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "numpy": np.__version__, "comfyui": "3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce"}
    for name, data in [("noise", gen_noise(sample_mod)), ("schedules", gen_schedules(samplers_mod, mss)),
                       ("samplers", gen_samplers(ms_mod, samplers_mod, mss))]:
        data["meta"] = meta
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
