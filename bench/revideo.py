"""ReVideo cost: seconds for the denoising steps and peak memory of the SVD UNet + control module.

    python -m bench.revideo                       # GPU: full-size models, fp16, 25 steps at both sizes
    python -m bench.revideo --smoke               # CPU/tiny: the tests' models, 2 steps at 4 x 32 x 32

The SVD UNet (diffusers' defaults are SVD's config, 14 frames) and the control module built from it
(:meth:`ReVideoControlModel.from_unet`) have random weights: the real models' cost without any
download. One run is the stage's own loop (:func:`stages.edit.revideo.denoise.sample_revideo`):
per step the control module and the UNet on the unconditional + conditional batch
(``cfg_batch``), or the two passes one after the other. VAE and CLIP are left out (one pass each
per clip). Shapes are frames x width x height in pixels; latents are 1/8 of that (1/4 for the tiny models).

For ``bench/gpu_check.py``: :func:`gpu_part` follows its part contract (``fn(smoke, options,
report) -> dict``); :func:`run_part` is the same with a time budget and no reporting.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from collections.abc import Callable

import torch

log = logging.getLogger("bench.revideo")

FULL_SHAPES = ((14, 512, 320, True), (14, 1344, 768, True), (14, 1344, 768, False))  # frames, w, h, cfg_batch
SMOKE_SHAPES = ((4, 32, 32, True), (4, 32, 32, False))


def build_models(smoke: bool, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(UNet, control module), random weights, in ``dtype`` on ``device``, eval mode."""
    from stages.edit.revideo.control import ReVideoControlModel

    torch.manual_seed(0)
    if smoke:
        from tests.revideo_fixtures import tiny_control, tiny_svd_unet

        unet = tiny_svd_unet()
        control = tiny_control(unet)
    else:
        from diffusers import UNetSpatioTemporalConditionModel

        with torch.device(device):
            unet = UNetSpatioTemporalConditionModel(num_frames=14)
            control = ReVideoControlModel.from_unet(unet)
    if dtype != torch.float32:
        unet, control = unet.to(dtype=dtype), control.to(dtype=dtype)
    return unet.to(device).eval(), control.to(device).eval()


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS (Linux: KiB)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_sampling(unet: torch.nn.Module, control: torch.nn.Module, frames: int, width: int, height: int,
                  steps: int, cfg_batch: bool) -> dict:
    """Seconds for ``steps`` denoising steps at frames x width x height and the peak memory."""
    from stages.edit.revideo import sampling
    from stages.edit.revideo.denoise import sample_revideo

    p = next(unet.parameters())
    device, dtype = p.device, p.dtype
    g = torch.Generator().manual_seed(0)
    latent = unet.config.out_channels
    h, w = height // control.downscale, width // control.downscale  # the VAE's factor (8 for SVD)
    cond = dict(
        noise=torch.randn(1, frames, latent, h, w, generator=g).to(device),
        cond_latents=torch.randn(1, frames, latent, h, w, generator=g).to(device, dtype),
        image_embeds=torch.randn(1, 1, unet.config.cross_attention_dim, generator=g).to(device, dtype),
        added_ids=torch.tensor([[10.0, 127.0, 0.02]], device=device, dtype=dtype),
        motion=torch.randn(1, frames, 2, height, width, generator=g).to(device, dtype),
        content=torch.rand(1, frames, 3, height, width, generator=g).to(device, dtype) * 2 - 1,
        region=torch.ones(1, frames, 1, height, width, device=device, dtype=dtype))
    sigmas, scales = sampling.karras_sigmas(steps), sampling.frame_guidance(frames)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # one warm-up step (kernel selection, allocator), then the timed run
    sample_revideo(unet, control, sigmas=sampling.karras_sigmas(1), scales=scales, cfg_batch=cfg_batch, **cond)
    _sync(device)
    start = time.perf_counter()
    out = sample_revideo(unet, control, sigmas=sigmas, scales=scales, cfg_batch=cfg_batch, **cond)
    _sync(device)
    seconds = time.perf_counter() - start
    if not torch.isfinite(out).all():
        raise FloatingPointError(f"non-finite latents at {frames}x{width}x{height}")
    return {"shape": f"{frames}x{width}x{height}", "cfg_batch": cfg_batch, "steps": steps,
            "seconds": round(seconds, 3), "seconds_per_step": round(seconds / steps, 4),
            "peak_gib": round(_peak_bytes(device) / 2**30, 3)}


def measure(smoke: bool, budget_s: float = float("inf"), report: Callable[[dict], None] | None = None) -> dict:
    """Figures for every shape that fits in ``budget_s`` (the rest are listed as skipped)."""
    start = time.perf_counter()
    if smoke:  # tiny ops: more threads only add synchronisation (and stall on a shared CPU)
        torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet, control = build_models(smoke, device, dtype)
    params = {name: round(sum(p.numel() for p in m.parameters()) / 1e6, 2) for name, m in
              (("unet_mparams", unet), ("control_mparams", control))}
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "dtype": str(dtype).replace("torch.", ""), **params, "runs": [], "skipped": []}
    steps = 2 if smoke else 25
    for frames, width, height, cfg_batch in (SMOKE_SHAPES if smoke else FULL_SHAPES):
        spent = time.perf_counter() - start
        last = out["runs"][-1]["seconds"] if out["runs"] else 0.0
        if spent + 2 * last > budget_s:  # the next run would likely overrun
            out["skipped"].append(f"{frames}x{width}x{height} cfg_batch={cfg_batch}")
            continue
        try:
            run = time_sampling(unet, control, frames, width, height, steps, cfg_batch)
        except torch.cuda.OutOfMemoryError as exc:
            run = {"shape": f"{frames}x{width}x{height}", "cfg_batch": cfg_batch, "error": f"OOM: {exc}"[:200]}
            torch.cuda.empty_cache()
        out["runs"].append(run)
        log.info("revideo %s", run)
        if report is not None:
            report(dict(out))
    done = [r for r in out["runs"] if "seconds" in r]
    out["headline"] = "; ".join(f"{r['shape']}{'' if r['cfg_batch'] else ' seq'}: {r['seconds']:.1f} s/"
                                f"{r['steps']} steps, {r['peak_gib']:.1f} GiB" for r in done)
    return out


def run_part(smoke: bool, budget_s: float) -> dict:
    """The GPU check's ``revideo`` part: :func:`measure` within ``budget_s`` seconds."""
    return measure(smoke, budget_s)


def gpu_part(smoke: bool, options: dict, report: Callable[[dict], None]) -> dict:
    """``bench/gpu_check.py``'s part contract (``Part("revideo", "bench.revideo:gpu_part", 150.0)``)."""
    return measure(smoke, float(options.get("budget_s", float("inf"))), report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.revideo", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, 2 steps")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds; later shapes are skipped past it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    json.dump(run_part(args.smoke, args.budget), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
