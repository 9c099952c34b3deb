"""ReVideo training cost: the data pipeline against the trainer step, and each stage's step on the GPU.

    python -m bench.train_revideo --data     # CPU: samples/s of sample building vs the tiny trainer step
    python -m bench.train_revideo            # GPU: full-size random-weight SVD UNet + control, 14x512x320
    python -m bench.train_revideo --smoke    # both at tiny sizes on the CPU (the tests run this)

**Data vs trainer** (:func:`data_vs_trainer`, one process, one thread each): the data side is what a
Ray Data sample task does per row (:func:`stages.edit.revideo.train_data.samples_from_rows`:
decode the window of a real video file, pick region and trajectories among a 32 x 32 grid of
tracks, rasterise the motion map with the 51 px Gaussian); the trainer side is one optimizer step
of stage 1 on the tests' tiny models (VAE/CLIP encode, control + UNet forward and backward,
Adam). The ratio is samples/s of the first over the second on one core each; the loader keeps
up when it is >= 2 (a Ray Data task per CPU then feeds a trainer with half the CPUs idle).

**GPU part** (:func:`gpu_part`, ``bench/gpu_check.py``'s contract): for each stage, the full-size
SVD UNet (diffusers' defaults = SVD's config) and the control module built from it, random
weights, batch 1 at 14 x 512 x 320, bfloat16 autocast with float32 trainable weights, gradient
checkpointing on (the training defaults): seconds per optimizer step (median of the timed
steps) and peak GPU memory. VAE and CLIP encoding are not included (frozen, one pass per sample).
Targets on one H100: <= 40 GB, <= 1.5 s per stage-1 step.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

log = logging.getLogger("bench.train_revideo")

GPU_TARGETS = {"peak_gib": 40.0, "stage1_seconds_per_step": 1.5}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- data pipeline vs trainer step ------------------------------------------------------------------

def _shard_rows(folder: str, frames: int, width: int, height: int, count: int) -> list[dict]:
    """Shard-like rows: the synthetic sample's videos with a 32 x 32 grid of random-walk tracks."""
    import csv

    from jobs.make_sample import make_sample

    make_sample(folder, count=min(count, 3), seed=0)
    videos = [r["video_uri"] for r in csv.DictReader(open(f"{folder}/manifest.csv"))]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        gx, gy = np.meshgrid(np.linspace(0, width - 1, 32), np.linspace(0, height - 1, 32))
        start = np.stack([gx.ravel(), gy.ravel()], -1)[None]
        walk = np.cumsum(rng.normal(0, 2, (frames - 1, start.shape[1], 2)), 0)
        tracks = np.concatenate([start, start + walk]).astype(np.float32)
        rows.append({"job_id": f"row-{i}", "video_uri": videos[i % len(videos)], "status": "ok", "num_frames": frames,
                     "width": width, "height": height, "n_init": tracks.shape[1], "n_sampled": 0,
                     "tracks": tracks.ravel(), "visibility": np.ones(tracks.shape[:2], bool).ravel()})
    return rows


def data_samples_per_s(smoke: bool, folder: str) -> dict:
    """Samples/s of stage-1 sample building (decode + region + motion map) on one core."""
    from pipeline.stage import RunContext
    from stages.decode import DecodeConfig
    from stages.edit.revideo.train_data import SampleJob, samples_from_rows
    from stages.edit.revideo.train_samples import SampleConfig

    frames, width, height = (4, 32, 32) if smoke else (14, 512, 320)
    samples = SampleConfig(min_region=8, kernel_size=7, kernel_sigma=2.0) if smoke else SampleConfig()
    rows = _shard_rows(folder, frames, width, height, 4 if smoke else 12)
    job = SampleJob(stage=1, seed=0, decode=DecodeConfig(max_frames=frames, width=width, height=height,
                                                         resize="crop", threads=1),
                    samples=samples, context=RunContext(output_url=folder, cache_url=folder),
                    skipped_url=f"{folder}/skipped")
    samples_from_rows(rows[:1], job)  # warm-up (codec, imports)
    start = time.perf_counter()
    made = sum(len(samples_from_rows([row], job)["job_id"]) for row in rows)
    seconds = time.perf_counter() - start
    return {"window": f"{frames}x{width}x{height}", "samples": made, "samples_per_s": made / seconds}


def trainer_samples_per_s(folder: str, steps: int = 4) -> dict:
    """Samples/s of stage-1 optimizer steps (batch 1) on the tests' tiny models, one core."""
    from pipeline.training import WorkerContext, resolve_precision
    from stages.edit.revideo.train_samples import ClipTracks, SampleConfig, build_sample
    from stages.edit.revideo.train_task import ReVideoTrainConfig, build_revideo, revideo_loss
    from tests.revideo_fixtures import save_tiny_revideo, save_tiny_svd

    svd, ckpt = save_tiny_svd(f"{folder}/svd"), save_tiny_revideo(f"{folder}/rv", randomise=False)
    samples = SampleConfig(min_region=8, kernel_size=7, kernel_sigma=2.0)
    config = ReVideoTrainConfig(model=svd, checkpoint=ckpt, stem_channels=(8, 8, 16), samples=samples)
    cpu = torch.device("cpu")
    ctx = WorkerContext(0, 1, cpu, resolve_precision("auto", cpu), 0, options={"config": config, "stage": 1})
    setup = build_revideo(ctx)
    rng = np.random.default_rng(0)
    tracks = np.cumsum(rng.normal(0, 1.5, (4, 64, 2)), 0).astype(np.float32) + 16
    clip = ClipTracks(rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), tracks, np.ones((4, 64), bool))
    batch = {k: v[None] for k, v in build_sample(1, clip, rng, samples).items()}

    def step(i: int) -> None:
        ctx.step = i
        setup.optimizer.zero_grad(set_to_none=True)
        loss, _ = revideo_loss(setup.models, batch, ctx, 0)
        loss.backward()
        setup.optimizer.step()

    step(0)  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    seconds = time.perf_counter() - start
    return {"window": "4x32x32", "steps": steps, "samples_per_s": steps / seconds}


def data_vs_trainer(smoke: bool) -> dict:
    """Both rates on one core each (tiny models for the trainer; the data side at the production
    window unless ``smoke``), and their ratio."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as folder:
            data = data_samples_per_s(smoke, folder)
            trainer = trainer_samples_per_s(folder, 2 if smoke else 6)
    finally:
        torch.set_num_threads(before)
    ratio = data["samples_per_s"] / trainer["samples_per_s"]
    return {"data": data, "trainer": trainer, "ratio": ratio, "loader_keeps_up": ratio >= 2.0}


# --- GPU part: one optimizer step per stage at full size ---------------------------------------------

def _models(stage: int, smoke: bool, device: torch.device, frozen: torch.dtype):
    """(UNet, control, trainable params) of ``stage`` with random weights, as the trainer sets them up."""
    from stages.edit.revideo.control import ReVideoControlModel
    from stages.edit.revideo.train_task import trainable_parameters

    torch.manual_seed(0)
    if smoke:
        from tests.revideo_fixtures import STEMS, tiny_svd_unet

        unet = tiny_svd_unet()
        control = ReVideoControlModel.from_unet(unet, STEMS)
    else:
        from diffusers import UNetSpatioTemporalConditionModel

        with torch.device(device):
            unet = UNetSpatioTemporalConditionModel(num_frames=14)
            control = ReVideoControlModel.from_unet(unet)
    unet.to(device, torch.float32 if stage == 3 else frozen).requires_grad_(False)
    control.to(device, torch.float32).requires_grad_(False)
    params = trainable_parameters(stage, unet, control)
    for p in params.values():
        p.requires_grad_(True)
    unet.enable_gradient_checkpointing()
    control.enable_gradient_checkpointing()
    unet.train(stage == 3)
    control.train()
    return unet, control, params


def measure_stage(stage: int, smoke: bool, device: torch.device, steps: int) -> dict:
    """Seconds per optimizer step (median) and peak memory of ``stage``, batch 1, random inputs."""
    from pipeline.training import resolve_precision
    from stages.edit.revideo.train_loss import denoising_loss, sample_sigmas

    wall = time.perf_counter()
    precision = resolve_precision("auto", device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    unet, control, params = _models(stage, smoke, device, precision.frozen_dtype)
    optimizer = torch.optim.Adam(params.values(), lr=3e-5)
    frames, width, height = (4, 32, 32) if smoke else (14, 512, 320)
    h, w = height // control.downscale, width // control.downscale
    g = torch.Generator(device=device).manual_seed(0)
    latent = unet.config.out_channels

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device)

    inputs = dict(latents=randn(1, frames, latent, h, w), cond_latents=randn(1, frames, latent, h, w),
                  image_embeds=randn(1, 1, unet.config.cross_attention_dim),
                  added_time_ids=torch.tensor([[10.0, 127.0, 0.02]], device=device),
                  c_mot=randn(1, frames, 2, height, width) * 3, content=randn(1, frames, 3, height, width).clamp(-1, 1),
                  region=torch.ones(1, frames, 1, height, width, device=device))
    times = []
    for i in range(steps + 1):  # the first step warms up (kernels, allocator, Adam state)
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = denoising_loss(unet, control, **inputs, sigma=sample_sigmas(1, 0.7, 1.6, g, device),
                                  noise=randn(1, frames, latent, h, w))
        loss.backward()
        optimizer.step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage {stage}: non-finite loss")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    out = {"trainable_mparams": round(sum(p.numel() for p in params.values()) / 1e6, 2),
           "compute_dtype": str(precision.compute_dtype).replace("torch.", ""), "steps": steps,
           "seconds_per_step": round(statistics.median(times), 4), "peak_gib": round(peak, 3),
           "wall_s": round(time.perf_counter() - wall, 1)}
    del unet, control, optimizer, params
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def run_gpu(smoke: bool, budget_s: float = float("inf"), report: Callable[[dict], None] | None = None) -> dict:
    """Each stage's step time and peak memory (stages skipped once the budget would be overrun)."""
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "shape": "4x32x32" if smoke else "14x512x320", "batch": 1, "stages": {}, "skipped": []}
    if smoke:
        torch.set_num_threads(1)
    for stage in (1, 3, 2):  # stage 2 repeats stage 1's computation (only its data differ): measured last
        spent = time.perf_counter() - start
        last = max((s.get("wall_s", 0.0) for s in out["stages"].values()), default=0.0)
        if spent + 1.2 * last > budget_s:
            out["skipped"].append(f"stage {stage}")
            continue
        try:
            out["stages"][f"stage{stage}"] = measure_stage(stage, smoke, device, 2 if smoke else 4)
        except torch.cuda.OutOfMemoryError as exc:
            out["stages"][f"stage{stage}"] = {"error": f"OOM: {exc}"[:200]}
            torch.cuda.empty_cache()
        log.info("stage %d: %s", stage, out["stages"][f"stage{stage}"])
        if report is not None:
            report(dict(out))
    done = {k: v for k, v in out["stages"].items() if "seconds_per_step" in v}
    out["headline"] = "; ".join(f"{k}: {v['seconds_per_step']:.2f} s/step, {v['peak_gib']:.1f} GiB"
                                for k, v in done.items())
    if not smoke:
        out["targets"] = {"<= 40 GB peak": all(v["peak_gib"] <= GPU_TARGETS["peak_gib"] for v in done.values()),
                          "<= 1.5 s per stage-1 step": done.get("stage1", {}).get("seconds_per_step", 1e9)
                          <= GPU_TARGETS["stage1_seconds_per_step"]}
    return out


def gpu_part(smoke: bool, options: dict, report: Callable[[dict], None]) -> dict:
    """``bench/gpu_check.py``'s part contract (``Part("train_revideo", "bench.train_revideo:gpu_part", ...)``)."""
    return run_gpu(smoke, float(options.get("budget_s", float("inf"))), report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_revideo", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (both parts)")
    parser.add_argument("--data", action="store_true", help="only the data-vs-trainer ratio")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the GPU part")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = {"data_vs_trainer": data_vs_trainer(args.smoke)}
    if not args.data:
        out["gpu"] = run_gpu(args.smoke, args.budget)
    json.dump(out, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
