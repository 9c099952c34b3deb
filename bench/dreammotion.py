"""DreamMotion cost: seconds per optimisation iteration and peak memory of a full-size ZeroScope UNet3D.

    python -m bench.dreammotion                   # GPU: random-weight ZeroScope UNet3D, 16 x 576 x 320
    python -m bench.dreammotion --smoke           # CPU: the tests' tiny UNet3D at 3 x 32 x 32
    python -m bench.dreammotion --calibrate       # also log each term's gradient norm at iteration 0

The UNet is ``UNet3DConditionModel()`` (diffusers' defaults are ZeroScope's config) with random
weights, frozen in float16 (bfloat16 with ``--dtype bfloat16``) under autocast; the latents are
float32, as in the stage. One iteration is the stage's own (:func:`stages.edit.dreammotion.optimise.
optimise_latents`): four UNet passes of one 16-frame video each, back-propagation through one to
the spatial keys of ``up_blocks.2.attentions``, an SGD step (with a GradScaler in float16). The
run is timed with and without the block checkpointing of :mod:`stages.edit.dreammotion.memory`.
VAE and text encoder are left out (one pass each per clip). Target (issue 15): 200 iterations in
<= 5 min and <= 24 GB on one H100.

``--calibrate`` logs the gradient norm in the latents of each weighted term (``loss_scale *
weight * term``) at the first iteration. With random weights the figures only show that the
measurement runs; to set ``lambda_s``/``lambda_t`` from evidence, run the stage itself with the
real model on real clips (docs/dreammotion.md, "Calibration").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import resource
import sys
import time
from collections.abc import Callable

import torch

log = logging.getLogger("bench.dreammotion")
TARGET_SECONDS, TARGET_BYTES, PRODUCTION_ITERATIONS = 300.0, 24e9, 200


def build_unet(smoke: bool, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random-weight UNet3D (ZeroScope's config, or the tests' tiny one), frozen, in ``dtype`` on ``device``."""
    torch.manual_seed(0)
    if smoke:
        from tests.dreammotion_fixtures import tiny_unet3d

        unet = tiny_unet3d()
    else:
        from diffusers import UNet3DConditionModel

        with torch.device(device):
            unet = UNet3DConditionModel()
    return unet.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(unet: torch.nn.Module, config, iterations: int, calibrate: bool, dtype: torch.dtype,
                    factor: int = 8) -> dict:
    """Seconds per iteration and peak memory of the stage's loop on random inputs (after one warm-up
    iteration, which also measures the gradient norms when ``calibrate``). ``factor``: the VAE's
    downsampling (8 for ZeroScope, 4 for the tiny stack)."""
    from diffusers import DDIMScheduler

    from stages.edit.diffusion.precision import precision_for
    from stages.edit.dreammotion.key_hooks import KeyRecorder, spatial_key_layers
    from stages.edit.dreammotion.optimise import PromptEmbeddings, optimise_latents

    device = next(unet.parameters()).device
    g = torch.Generator().manual_seed(0)
    shape = (1, unet.config.in_channels, config.num_frames, config.height // factor, config.width // factor)
    source = torch.randn(shape, generator=g).to(device)
    dim = unet.config.cross_attention_dim
    texts = [torch.randn(1, 77 if dim > 32 else 16, dim, generator=g).to(device, dtype) for _ in range(3)]
    prompts = PromptEmbeddings(*texts)
    mask = torch.zeros(shape[2:], device=device)
    mask[:, shape[3] // 4:3 * shape[3] // 4, shape[4] // 4:3 * shape[4] // 4] = 1
    alphas = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    recorder = KeyRecorder(unet, spatial_key_layers(unet, config.key_layers))
    precision = precision_for(device, dtype)
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        warm = optimise_latents(unet, recorder, source, prompts, alphas, mask, dataclasses.replace(
            config, iterations=1), torch.Generator().manual_seed(1), precision, calibrate=calibrate)
        _sync(device)
        if device.type == "cuda":  # the timed loop's own peak, not the calibration's
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = optimise_latents(unet, recorder, source, prompts, alphas, mask, dataclasses.replace(
            config, iterations=iterations), torch.Generator().manual_seed(2), precision)
        _sync(device)
        seconds = time.perf_counter() - start
    finally:
        recorder.remove()
    if not torch.isfinite(result.latents).all():
        raise FloatingPointError("non-finite latents")
    out = {"shape": f"{config.num_frames}x{config.width}x{config.height}", "iterations": iterations,
           "seconds_per_iteration": round(seconds / iterations, 4), "peak_gib": round(_peak_bytes(device) / 2**30, 3),
           "keys_hooked": len(recorder.layers), "precision": precision.describe()}
    if calibrate:
        out["gradient_norms_iteration0"] = {k: float(f"{v:.4g}") for k, v in (warm.gradient_norms or {}).items()}
    return out


def measure(smoke: bool, budget_s: float = float("inf"), report: Callable[[dict], None] | None = None,
            calibrate: bool = True, dtype_name: str = "float16") -> dict:
    """Per-iteration time and peak memory without, then with, block checkpointing (within ``budget_s``)."""
    from stages.edit.dreammotion.config import DreamMotionConfig
    from stages.edit.dreammotion.memory import checkpoint_blocks

    start = time.perf_counter()
    if smoke:
        torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    dtype = getattr(torch, dtype_name)
    if smoke:
        config = DreamMotionConfig(width=32, height=32, num_frames=3, key_layers=("up_blocks.1.attentions",))
    else:
        config = DreamMotionConfig()  # 16 x 576 x 320, keys of up_blocks.2.attentions
    unet = build_unet(smoke, device, dtype)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "dtype": dtype_name, "unet_mparams": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
                 "runs": [], "skipped": []}
    iterations = 1 if smoke else 5
    for checkpointing in (False, True):
        spent = time.perf_counter() - start
        last = out["runs"][-1].get("seconds_per_iteration", 0.0) * (iterations + 1) if out["runs"] else 0.0
        if spent + 2 * last > budget_s:
            out["skipped"].append(f"checkpointing={checkpointing}")
            continue
        if checkpointing:
            checkpoint_blocks(unet)
        try:
            run = time_iterations(unet, config, iterations, calibrate and checkpointing, dtype, 4 if smoke else 8)
        except torch.cuda.OutOfMemoryError as exc:
            run = {"error": f"OOM: {exc}"[:200]}
            torch.cuda.empty_cache()
        run["checkpointing"] = checkpointing
        if "seconds_per_iteration" in run:
            run["projected_seconds_200_iterations"] = round(run["seconds_per_iteration"] * PRODUCTION_ITERATIONS, 1)
        out["runs"].append(run)
        log.info("dreammotion %s", run)
        if report is not None:
            report(dict(out))
    done = [r for r in out["runs"] if "seconds_per_iteration" in r]
    out["headline"] = "; ".join(
        f"{'ckpt' if r['checkpointing'] else 'no ckpt'}: {r['seconds_per_iteration']:.3f} s/it "
        f"(200 it ~{r['projected_seconds_200_iterations']:.0f} s), {r['peak_gib']:.1f} GiB" for r in done)
    if not smoke:
        from bench.gpu_parts import targets_text

        best = min(done, key=lambda r: r["peak_gib"], default=None)
        out["targets"] = {
            "200 iterations <= 5 min (H100)": None if best is None else
            best["projected_seconds_200_iterations"] <= TARGET_SECONDS,
            "<= 24 GB": None if best is None else best["peak_gib"] * 2**30 <= TARGET_BYTES}
        out["headline"] += "; " + targets_text(out["targets"])
    calibration = next((r["gradient_norms_iteration0"] for r in done if "gradient_norms_iteration0" in r), None)
    if calibration:
        out["gradient_norms_iteration0"] = calibration
    return out


def gpu_part(smoke: bool, options: dict, report: Callable[[dict], None]) -> dict:
    """``bench/gpu_check.py``'s part contract (``Part("dreammotion", "bench.dreammotion:gpu_part", ...)``)."""
    return measure(smoke, float(options.get("budget_s", float("inf"))), report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dreammotion", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny UNet3D on the CPU, one iteration")
    parser.add_argument("--calibrate", action="store_true", help="log each term's gradient norm at iteration 0")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds; later runs are skipped past it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = measure(args.smoke, args.budget, calibrate=args.calibrate,
                  dtype_name="float32" if args.smoke and args.dtype == "float16" else args.dtype)
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
