"""The parts of ``bench/gpu_check.py``: each measures one GPU path at full size, or at tiny sizes with ``smoke``.

A part is ``fn(smoke: bool, options: dict, report: Callable[[dict], None]) -> dict``: it returns
its figures (JSON-able; ``headline`` is the short text the table prints) and calls ``report``
with the figures so far after each measurement, so a part stopped at its time limit still leaves
what it measured. Models are built from config with random weights: nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

log = logging.getLogger("bench.gpu_parts")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def targets_text(targets: dict[str, bool | None]) -> str:
    """``targets: 1/2 met (name: no)`` for the table; None is a target the run could not decide."""
    decided = {k: v for k, v in targets.items() if v is not None}
    missed = [k for k, v in decided.items() if not v] + [f"{k}: undecided" for k, v in targets.items() if v is None]
    return f"targets {sum(decided.values())}/{len(targets)} met" + (f" ({'; '.join(missed)})" if missed else "")


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


# --- Tune-A-Video ----------------------------------------------------------------------------------

def tune_a_video(smoke: bool, options: dict, report) -> dict:
    """SD 1.5 UNet/VAE/text encoder, 24 x 512 x 512, the stage's precision and memory options."""
    from bench.tune_a_video import measure

    # smoke: float16 on the CPU, so the GradScaler path runs too; on the GPU the stage's own choice
    shape = dict(unet_kind="tiny", frames=3, size=32, repeats=1, dtype_name="float16") if smoke else dict(
        unet_kind="sd15", frames=24, size=512, repeats=2, dtype_name="auto")
    out = measure(**shape, attention="sdpa", checkpointing=True, vae=True, vae_batch=8, report=report)
    out["headline"] = (f"{out['precision']}: tune {out['seconds_per_tuning_step']:.3f} s/step "
                       f"({out['peak_gib_tuning']:.1f} GiB), sample {out['seconds_per_sampling_step']:.3f} s/step "
                       f"({out['peak_gib_sampling']:.1f} GiB); 500+50+50 steps "
                       f"~{out['projected_seconds_per_video']:.0f} s")
    peak = max(v for k, v in out.items() if k.startswith("peak_gib_"))
    out["targets"] = {"<= 4 min per video (H100)": out["projected_seconds_per_video"] <= 240,
                      "<= 24 GB": peak * 2**30 <= 24e9}
    out["headline"] += "; " + targets_text(out["targets"])
    return out


# --- depth -----------------------------------------------------------------------------------------

def depth(smoke: bool, options: dict, report) -> dict:
    """DPT-Hybrid and DPT-Large at 384 px in fp16: model frames/s at batch 1/8/16, predict() frames/s at 768x432."""
    import torch

    from bench.depth import build_estimator, time_model, time_predict

    kinds, size, batches = (["tiny"], 32, [1, 2]) if smoke else (["hybrid", "large"], 384, [1, 8, 16])
    w, h = (64, 36) if smoke else (768, 432)
    dtype = "auto" if smoke else "float16"
    frames = np.random.default_rng(1).integers(0, 256, (max(batches) * 2, h, w, 3), np.uint8)
    out: dict = {"size": size, "frame": f"{w}x{h}", "models": {}}
    for kind in kinds:
        est, params = build_estimator(kind, size, "auto", dtype)
        row = {"params_m": round(params / 1e6, 1), "dtype": str(est.dtype).replace("torch.", "")}
        out["models"][kind] = row
        for batch in batches:
            row[f"model_fps_b{batch}"] = round(time_model(est, batch, 1 if smoke else 3), 2)
            report(out)
        row["predict_fps_b8"] = round(time_predict(est, frames, min(8, max(batches)), 1 if smoke else 2), 2)
        if est.device.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
        report(out)
        del est
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out["headline"] = "; ".join(
        f"{k}: model {v.get(f'model_fps_b{batches[-1]}', '?')} fr/s at b{batches[-1]} "
        f"(b1 {v.get('model_fps_b1', '?')}), predict {v.get('predict_fps_b8', '?')} fr/s"
        for k, v in out["models"].items())
    hybrid = out["models"].get("hybrid")
    if hybrid:
        best = max(v for k, v in hybrid.items() if k.startswith("model_fps_b"))
        out["targets"] = {"DPT-Hybrid >= 100 frames/s (H100)": best >= 100}
        out["headline"] += "; " + targets_text(out["targets"])
    return out


# --- atlas -----------------------------------------------------------------------------------------

class _Stop(Exception):
    """Raised from the fit callback when the part's wall-time budget for a fit is spent."""


def _atlas_clip(smoke: bool, video: str | None) -> tuple[np.ndarray, str]:
    from jobs.sample_data import generate_sample

    if smoke:
        return generate_sample(96, 96, 6, 12.0, 0).frames, "synthetic 96x96x6"
    if video:
        from pipeline import media

        frames, _, _ = media.decode(video, media.DecodeOptions(max_frames=70, width=768, height=432, resize="fit"))
        return frames, os.path.basename(video)
    return generate_sample(768, 432, 70, 12.0, 0).frames, "synthetic sample 768x432x70"


def _fit_curve(config, data, frames, device, budget_s: float, checkpoints: list[float], pixels) -> dict:
    """Fit until ``budget_s`` seconds of fitting; (seconds, sampled PSNR) at each checkpoint time."""
    from bench.atlas import sampled_psnr
    from stages.atlas.fit import fit_atlas

    curve: list[tuple[float, float]] = []
    state = {"its": 0, "seconds": 0.0}
    marks = sorted(checkpoints)

    def callback(it: int, seconds: float, model) -> None:
        state.update(its=it, seconds=seconds)
        if marks and seconds >= marks[0]:
            while marks and seconds >= marks[0]:
                marks.pop(0)
            curve.append((round(seconds, 2), round(sampled_psnr(model, frames, pixels, device, config.amp,
                                                                config.eval_chunk), 2)))
        if seconds >= budget_s:
            raise _Stop

    try:
        fit_atlas(data, config, device, callback=callback, callback_every=5)
    except _Stop:
        pass
    its_per_s = state["its"] / max(state["seconds"], 1e-9)
    return {"iterations": state["its"], "fit_seconds": round(state["seconds"], 1),
            "iterations_per_s": round(its_per_s, 2), "curve": curve,
            "production_iterations": config.total_iterations,
            "projected_production_minutes": round(config.total_iterations / max(its_per_s, 1e-9) / 60, 1)}


def atlas(smoke: bool, options: dict, report) -> dict:
    """Hash-grid and PE fits on a 70 x 768 x 432 clip for fixed wall times: its/s, PSNR curve, projection, speed-up."""
    from bench.atlas import compare, time_to_reach
    from pipeline.config import from_dict
    from pipeline.devices import cuda_available, resolve_device
    from stages.atlas.config import AtlasConfig
    from stages.atlas.fit import FitData
    from stages.atlas.flow import dense_flow
    from stages.atlas.masks import layer_motions, row_masks

    frames, name = _atlas_clip(smoke, options.get("video"))
    t, h, w = frames.shape[:3]
    device = resolve_device("auto", float(cuda_available()), "gpu_check.atlas")
    flow = dense_flow(frames)
    masks, source = row_masks({}, flow, (t, h, w), "auto", 1.0, frames=frames)  # the stage's default path
    data = FitData.build(frames, masks, flow, device, np.stack(layer_motions(flow, masks)))
    pixels = np.sort(np.random.default_rng(0).choice(h * w, min(h * w, 23040), replace=False))
    small = {"batch_pixels": 256, "atlas_resolution": 32,
             "hash": {"levels": 4, "log2_table_size": 10, "hidden": 16, "layers": 1, "mapping_levels": 2},
             "pe": {"width": 16, "fg_mapping_layers": 1, "bg_mapping_layers": 1, "alpha_layers": 1,
                    "atlas_layers": 1, "atlas_frequencies": 2}} if smoke else {}
    # fit times within the part's budget: 55 % hash grid, 20 % PE networks (85 s / 30 s at most)
    plan = float(options.get("budget_s", float("inf")))
    budgets = {"hash": 1.0, "pe": 0.6} if smoke else {"hash": min(85.0, 0.55 * plan), "pe": min(30.0, 0.2 * plan)}
    marks = {k: [b * f for f in (0.1, 0.25, 0.5, 0.75, 1.0)] for k, b in budgets.items()}
    out: dict = {"clip": name, "shape": [t, h, w], "mask_source": source, "device": _device_name(), "fits": {}}
    for encoding in ("hash", "pe"):
        config = from_dict(AtlasConfig, {**small, "encoding": encoding}, "gpu_check.atlas")
        out["fits"][encoding] = _fit_curve(config, data, frames, device, budgets[encoding], marks[encoding], pixels)
        report(out)
    curves = {k: v["curve"] for k, v in out["fits"].items() if v["curve"]}
    if len(curves) == 2:
        out["comparison"] = compare(curves)
    hash_fit = out["fits"]["hash"]
    out["hash_seconds_to_30db"] = time_to_reach(hash_fit["curve"], 30.0)
    last = hash_fit["curve"][-1] if hash_fit["curve"] else (0, float("nan"))
    speed = out.get("comparison", {}).get("speedup")
    out["headline"] = (f"hash {hash_fit['iterations_per_s']} it/s, {last[1]} dB at {last[0]} s, 20k its "
                       f"~{hash_fit['projected_production_minutes']} min; PE {out['fits']['pe']['iterations_per_s']} "
                       f"it/s; speed-up estimate {f'{speed:.1f}x' if speed else 'n/a'}")
    reached = out["hash_seconds_to_30db"]
    # undecided when the fit budget ended before 30 dB and before 3 minutes
    out["targets"] = {">= 30 dB in <= 3 min (H100)": (reached <= 180) if reached is not None else (
        False if hash_fit["fit_seconds"] >= 180 else None)}
    out["headline"] += f"; 30 dB {f'at {reached:.0f} s' if reached else 'not reached'}; " + \
        targets_text(out["targets"])
    return out


CLIP_ITERATIONS = 3000  # the real-clip budget of bench/atlas_quality.py's CPU runs (--preset budget)


def atlas_clips(smoke: bool, options: dict, report) -> dict:
    """The real clips of ``--clips`` at 768 x 432, 70 frames, as bench/atlas_quality.py fits them on the CPU.

    Per clip: the default segmentation (no mask; a refusal is reported as such), the ``budget``
    preset at 3,000 iterations, stopped at the clip's share of the part's budget; mean and worst
    frame PSNR over every pixel of every frame, iterations reached, iterations/s and the projected
    seconds to 3,000, and how the default atlas_edit overlay follows the object (share of its
    pixels on the alpha, per frame: worst and mean). Smoke mode fits a tiny synthetic clip.
    """
    from pipeline.devices import cuda_available, resolve_device

    device = resolve_device("auto", float(cuda_available()), "gpu_check.atlas_clips")
    clips = list(options.get("clips") or [])
    if smoke:
        from jobs.sample_data import generate_sample
        from pipeline import media

        with tempfile.TemporaryDirectory(prefix="vidflow-gpu-check-") as tmp:
            path = os.path.join(tmp, "sample.mp4")
            media.encode(generate_sample(96, 96, 6, 12.0, 0).frames, path, 12.0)
            return _fit_clips([path], True, device, options, report)
    return _fit_clips(clips, False, device, options, report)


def _fit_clips(clips: list[str], smoke: bool, device, options: dict, report) -> dict:
    """:func:`atlas_clips` for the clip paths given (smoke: tiny sizes and the demo grid)."""
    from bench.atlas_quality import summary, video_run

    size, frames_n, iterations = ((96, 96), 6, 40) if smoke else ((768, 432), 70, CLIP_ITERATIONS)
    # smoke: the demo's small hash grid (the default grid's Adam step alone takes ~1 s on the CPU)
    batch, preset = (512, "demo") if smoke else (None, "budget")
    start = time.perf_counter()
    plan = float(options.get("budget_s", float("inf")))
    out: dict = {"device": _device_name(), "size": list(size), "frames": frames_n, "iterations": iterations,
                 "clips": {}}
    if not clips:
        out["headline"] = "no clips given (--clips A.mp4 B.mp4 ...)"
        return out
    for i, path in enumerate(clips):
        # each clip gets an equal share of what is left, less its decoding, flow and segmentation
        share = (plan - (time.perf_counter() - start)) / (len(clips) - i)
        clip_start = time.perf_counter()
        name = os.path.basename(path)
        try:
            row = video_run(path, None, size, frames_n, 1, iterations, batch, False, preset, device,
                            None if smoke else clip_start + share)
        except Exception as exc:  # noqa: BLE001 - a clip that cannot be read is that clip's row
            out["clips"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            report(out)
            continue
        figures = summary(row)
        if "fit_seconds" in row:
            rate = row["iterations_done"] / max(row["fit_seconds"], 1e-9)
            figures.update(iterations_per_s=round(rate, 2),
                           projected_seconds_to_budget=round(iterations / max(rate, 1e-9), 1))
        if "overlay_inside_fg" in row:
            figures["frames_overlay_on_fg_90"] = int(np.sum(np.asarray(row["overlay_inside_fg"]) >= 0.9))
        figures["clip_seconds"] = round(time.perf_counter() - clip_start, 1)
        out["clips"][name] = figures
        report(out)
    parts = []
    for name, f in out["clips"].items():
        if "psnr_mean_db" in f:
            parts.append(f"{name} {f['psnr_mean_db']:.1f} dB at {f['iterations_done']} its "
                         f"({f['iterations_per_s']} it/s)")
        else:
            parts.append(f"{name} {str(f.get('segmentation') or f.get('error'))[:40]}")
    out["headline"] = "; ".join(parts)
    return out


# --- the edit job on GPU actors --------------------------------------------------------------------

def _gpu_utilisation(stop: threading.Event, samples: list[float], interval_s: float = 0.5) -> None:
    """Append the GPU's utilisation (%) every ``interval_s`` until ``stop`` (nvidia-smi; nothing without it)."""
    smi = shutil.which("nvidia-smi")
    while smi and not stop.is_set():
        try:
            text = subprocess.run([smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=5).stdout
            samples.extend(float(v) for v in text.split() if v.strip().replace(".", "").isdigit())
        except (OSError, subprocess.SubprocessError):
            return
        stop.wait(interval_s)


def edit_job(smoke: bool, options: dict, report) -> dict:
    """``jobs.edit_videos --demo`` (atlas_edit over the sample) with the atlas and edit actors on the GPU.

    Each of the two stages gets ``num_gpus: 0.5`` so both are live on one GPU at once (two 1-GPU
    stages cannot share one). Smoke mode plans the same command with ``--dry-run`` and no GPUs.
    """
    import json

    gpus = "0" if smoke else "0.5"
    out_dir = tempfile.mkdtemp(prefix="vidflow-gpu-check-")
    cmd = [sys.executable, "-m", "jobs.edit_videos", "--demo", "--output", out_dir,
           "--config", os.path.join(ROOT, "jobs", "configs", "atlas_edit.yaml"),
           "--set", f"stages.atlas.resources.num_gpus={gpus}",
           "--set", f"methods.atlas_edit.resources.num_gpus={gpus}"] + (["--dry-run"] if smoke else [])
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_gpu_utilisation, args=(stop, samples), daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    finally:
        stop.set()
        sampler.join()
    wall = time.perf_counter() - start
    out: dict = {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "wall_seconds": round(wall, 1),
                 "gpu_util_mean": round(float(np.mean(samples)), 1) if samples else None,
                 "gpu_util_max": max(samples) if samples else None, "gpu_util_samples": len(samples)}
    summary_path = os.path.join(out_dir, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as handle:
            summary = json.load(handle)
        out["counts"] = summary.get("counts")
        out["rows"] = summary.get("rows")
    if proc.returncode != 0:
        out["stderr_tail"] = proc.stderr.strip().splitlines()[-5:]
    shutil.rmtree(out_dir, ignore_errors=True)
    counts = out.get("counts") or {}
    out["headline"] = (f"exit {proc.returncode}, {counts.get('ok', '?')}/{out.get('rows', '?')} ok in {wall:.0f} s, "
                       f"GPU util mean {out['gpu_util_mean']}% max {out['gpu_util_max']}%"
                       if not smoke else f"dry run exit {proc.returncode} in {wall:.0f} s")
    if proc.returncode != 0:
        report(out)
        raise RuntimeError(f"edit job exited {proc.returncode}: {' '.join(out.get('stderr_tail', [])[-1:])}")
    return out
