"""StableVideo cost: wall time of one video's edit (the atlas fit excluded) and peak GPU memory.

    python -m bench.stablevideo               # GPU: SD 1.5 + 2 ControlNets + DPT-Hybrid, random weights, fp16
    python -m bench.stablevideo --smoke       # CPU: the tests' tiny models on a tiny clip

The models have their real shapes and random weights (no downloads); they are handed to the
stage's own ``setup()`` in place of ``from_pretrained`` (placement, dtype, memory options are the
stage's). The layered atlas is synthetic, at the release's size (70 frames of 768 x 432, atlas
1024 px): an ellipse moving over a panning background, with exact UVs and alpha, written in the
atlas stage's format. One run is ``StableVideoStage`` on one row: 3 keyframes (ControlNet-canny,
the later two SDEdited from the previous keyframe's atlas), the background atlas (DPT +
ControlNet-depth), the median, the render of all frames and the PNG outputs. Targets on one
H100: <= 12 GB peak (the release: 29.1 GB fp32, 14.2 GB with AMP, offload and xformers) and
<= 60 s per video.

For ``bench/gpu_check.py``: :func:`gpu_part` follows its part contract (``fn(smoke, options, report) -> dict``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from unittest import mock

import numpy as np
import torch

log = logging.getLogger("bench.stablevideo")

FULL = {"frames": 70, "width": 768, "height": 432, "atlas": 1024}
SMOKE = {"frames": 8, "width": 64, "height": 48, "atlas": 128}
TARGETS = {"peak_gib": 12.0, "seconds": 60.0}


def synthetic_fit(directory: str, frames: int, width: int, height: int, resolution: int) -> np.ndarray:
    """Write an atlas fit (the atlas stage's files) of an ellipse moving over a panning background;
    returns the frames it renders, uint8 [T, H, W, 3]."""
    import cv2

    from pipeline import previews, storage
    from stages.atlas.artifacts import META, encode_maps
    from stages.atlas.render import coverage, render_frames

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    cx, cy = width * (0.3 + 0.4 * t / max(frames - 1, 1)), height * 0.55 + 0 * t
    rx, ry = 0.16 * width, 0.3 * height
    d = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2
    alpha = np.clip((1.0 - d) * 8.0, 0.0, 1.0).astype(np.float32)  # soft edge, a wide core at 1
    span = 2.2 * max(rx, ry)
    uv_fg = np.stack([0.5 + (xs - cx) / span, 0.5 + (ys - cy) / span], -1).astype(np.float32)
    pan = 0.25 * width * t / max(frames - 1, 1)
    scale = 1.4 * width
    uv_bg = np.stack([(xs + pan + 0.1 * width) / scale, (ys + 0.2 * height + 0 * t) / scale], -1).astype(np.float32)

    def texture(seed_shift: int) -> np.ndarray:
        small = rng.integers(0, 256, (resolution // 16, resolution // 16, 3), dtype=np.uint8)
        return cv2.resize(np.roll(small, seed_shift, 0), (resolution, resolution), interpolation=cv2.INTER_CUBIC)

    fg, bg = texture(0), texture(3)
    video = render_frames(fg, bg, uv_fg, uv_bg, alpha)
    maps = encode_maps(uv_fg, uv_bg, alpha, coverage(uv_fg, alpha, resolution), coverage(uv_bg, 1 - alpha, resolution))
    storage.write_bytes(storage.join_url(directory, "maps.npz"), maps)
    previews.write_png(fg, storage.join_url(directory, "fg_atlas.png"))
    previews.write_png(bg, storage.join_url(directory, "bg_atlas.png"))
    meta = {"shape": [frames, height, width], "psnr_mean": 99.0, "mask_source": "synthetic",
            "atlas_resolution": resolution}
    storage.write_bytes(storage.join_url(directory, META), json.dumps(meta).encode())
    return video


def build_models(smoke: bool, device: torch.device, workdir: str) -> dict:
    """Random-weight components with the real shapes (or the tests' tiny ones), the DPT included."""
    from diffusers import ControlNetModel
    from transformers import CLIPTokenizer

    from bench.depth import dpt_config
    from bench.tune_a_video import build_unet, build_vae_and_text
    from tests.diffusion_fixtures import tiny_scheduler, write_tiny_tokenizer

    kind = "tiny" if smoke else "sd15"
    with torch.device("cpu" if smoke else device):  # build full-size weights where they will run
        unet = build_unet(kind)
        vae, text = build_vae_and_text(kind)
        if smoke:
            from tests.stablevideo_fixtures import tiny_controlnet

            canny, depth_net = tiny_controlnet(1), tiny_controlnet(2)
            text = build_text_for_tiny_tokenizer(workdir)
        else:
            canny, depth_net = ControlNetModel.from_unet(unet), ControlNetModel.from_unet(unet)
    # the CLIP BPE vocabulary is not available offline: a small tokenizer at the real sequence length
    tokenizer = CLIPTokenizer.from_pretrained(str(write_tiny_tokenizer(os.path.join(workdir, "tokenizer"))),
                                              model_max_length=16 if smoke else 77)
    from transformers import DPTForDepthEstimation

    with torch.device("cpu" if smoke else device):
        dpt = DPTForDepthEstimation(dpt_config("tiny" if smoke else "hybrid", 32 if smoke else 384))
    models = {"unet": unet, "vae": vae, "text_encoder": text, "tokenizer": tokenizer, "scheduler": tiny_scheduler(),
              "controlnet_canny": canny, "controlnet_depth": depth_net, "depth_model": dpt}
    for m in models.values():
        if isinstance(m, torch.nn.Module):
            m.eval().requires_grad_(False)
    return models


def build_text_for_tiny_tokenizer(workdir: str):
    from transformers import CLIPTokenizer

    from tests.diffusion_fixtures import tiny_text_encoder, write_tiny_tokenizer

    tok = CLIPTokenizer.from_pretrained(str(write_tiny_tokenizer(os.path.join(workdir, "tokenizer"))))
    return tiny_text_encoder(len(tok))


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS (Linux: KiB)


def measure(smoke: bool, budget_s: float = float("inf"), report: Callable[[dict], None] | None = None) -> dict:
    """Seconds and peak memory of the stage's edit of one synthetic video (see the module doc)."""
    from pipeline.config import Resources
    from pipeline.stage import RunContext, run_stage
    from stages.edit.stablevideo import StableVideoConfig, StableVideoStage
    from tests.stablevideo_fixtures import TINY_STABLEVIDEO

    start = time.perf_counter()
    if smoke:
        torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    shape = SMOKE if smoke else FULL
    work = tempfile.mkdtemp(prefix="bench-stablevideo-")
    fit_dir = os.path.join(work, "fit")
    frames = synthetic_fit(fit_dir, shape["frames"], shape["width"], shape["height"], shape["atlas"])
    models = build_models(smoke, device, work)
    settings = dict(TINY_STABLEVIDEO) if smoke else {"dtype": "float16"}
    config = StableVideoConfig(model="bench", controlnet_canny="bench", controlnet_depth="bench",
                               depth_model="bench", resources=Resources(num_gpus=0.0 if smoke else 1.0), **settings)
    stage = StableVideoStage(config, RunContext(output_url=os.path.join(work, "out"), cache_url=work))
    with mock.patch("stages.edit.diffusion.base.load_components", return_value=models), \
            mock.patch("stages.edit.stablevideo.stage.load_processor", return_value=None):
        stage.setup()
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "dtype": str(stage.dtype).replace("torch.", ""), "clip": f"{shape['frames']}x{shape['width']}x"
                 f"{shape['height']}", "atlas": shape["atlas"], "keyframes": 3, "steps": config.num_inference_steps,
                 "setup_s": round(time.perf_counter() - start, 1), "runs": []}
    row = {"frames": frames, "fps": 24.0, "atlas_dir": fit_dir, "prompt": "a red sports car",
           "bg_prompt": "a snowy mountain road", "video_id": "bench", "job_id": "bench", "method": "stablevideo",
           "status": "pending"}
    for name, fields in (("cold", {}), ("warm", {}), ("warm_fg_only", {"bg_prompt": ""})):
        spent = time.perf_counter() - start
        last = out["runs"][-1]["seconds"] if out["runs"] else 0.0
        if spent + 1.5 * last > budget_s:
            out.setdefault("skipped", []).append(name)
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        result = run_stage(stage, {**row, **fields})
        if device.type == "cuda":
            torch.cuda.synchronize()
        if result["status"] != "pending":
            raise RuntimeError(f"the edit failed: {result.get('error')}")
        edited = result["edited_frames"]
        if edited.shape != frames.shape:
            raise RuntimeError(f"edited {edited.shape}, expected {frames.shape}")
        out["runs"].append({"run": name, "seconds": round(time.perf_counter() - t0, 2),
                            "peak_gib": round(_peak_bytes(device) / 2**30, 2)})
        log.info("stablevideo %s", out["runs"][-1])
        if report is not None:
            report(dict(out))
    stage.close()
    runs = {r["run"]: r for r in out["runs"]}
    best = runs.get("warm") or runs.get("cold")
    if best:
        out["seconds_per_video"] = best["seconds"]
        out["peak_gib"] = max(r["peak_gib"] for r in out["runs"])
        if "warm_fg_only" in runs and "warm" in runs:
            out["background_s"] = round(runs["warm"]["seconds"] - runs["warm_fg_only"]["seconds"], 2)
        out["headline"] = (f"{out['clip']}, 3 keyframes + background: {best['seconds']:.1f} s/video "
                           f"({best['run']}), peak {out['peak_gib']:.2f} GiB")
        if device.type == "cuda":
            out["targets"] = {f"<= {TARGETS['peak_gib']:g} GB peak (H100)": out["peak_gib"] * 2**30 / 1e9
                              <= TARGETS["peak_gib"],
                              f"<= {TARGETS['seconds']:g} s per video (H100)": best["seconds"] <= TARGETS["seconds"]}
            out["headline"] += "; " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in out["targets"].items())
    return out


def gpu_part(smoke: bool, options: dict, report: Callable[[dict], None]) -> dict:
    """``bench/gpu_check.py``'s part contract."""
    return measure(smoke, float(options.get("budget_s", float("inf"))), report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stablevideo", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds; later runs are skipped past it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    json.dump(measure(args.smoke, args.budget), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
