"""Atlas quality on footage-like clips: layer separation, mask tracking, reconstruction, edit placement.

    python -m bench.atlas_quality --sample [--size 160] [--frames 24] [--strides 1 2] [--iterations 800]
                                  [--clips landscape]
    python -m bench.atlas_quality --video car-turn.mp4 [--mask first_frame_mask.png] [--size 384 | 768x432]
                                  [--frames 70] [--iterations 3000] [--segment-only] [--json OUT]
                                  [--device cuda] [--time-limit SECONDS] [--segmentation KEY=VALUE ...]

``--sample`` fits the project's three synthetic sample clips (square, landscape, portrait,
fitted inside ``--size``) at each stride, without masks (the default motion segmentation),
and reports per clip: alpha IoU against the true masks, the worst per-frame centroid error
of the first true mask propagated through the clip (the ``mask_uri`` path), the bootstrap
masks' IoU, and the mean reconstruction PSNR. ``--video`` fits a real clip and reports the
PSNR; with ``--mask`` (a first-frame mask) also the IoU of the segmentation (no mask) and
of the fitted alpha against it at frame 0. Every fit then gets an ``atlas_edit`` overlay at
the default placement and, per frame, the distance between the pasted overlay's centroid and
the foreground's (alpha > 0.5), in pixels and as a fraction of the foreground's equivalent
diameter, and the share of the overlay's pixels that lie on the foreground. ``--segment-only``
stops after the segmentation (no fit); ``--time-limit`` bounds the whole run in seconds: the
fit stops in time to be evaluated and reports how many iterations it reached (the GPU check's
``atlas_clips`` part gives each clip such a deadline). ``--preset demo`` (default) fits with
jobs/configs/atlas_edit.yaml's grid, its phases scaled to ``--iterations``;
``--preset production`` with the stage's defaults; ``--preset budget`` with the stage's default
networks and batch but the phases (global rigidity, alpha bootstrap) scaled to ``--iterations``
like the demo's, for a fixed short budget. The iteration count is always stated.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import cv2
import numpy as np
import torch
import yaml

from pipeline import media
from pipeline.config import from_dict
from stages.atlas.artifacts import AtlasFit
from stages.atlas.config import AtlasConfig, SegmentationConfig
from stages.atlas.fit import FitData, fit_atlas
from stages.atlas.flow import dense_flow
from stages.atlas.masks import decode_mask_image, fit_mask, layer_motions, motion_masks, propagate
from stages.atlas.render import atlas_image, evaluate, frame_psnr
from stages.edit.atlas_edit import AtlasEditConfig, composite, overlay_matrix, place_overlay

log = logging.getLogger("bench.atlas_quality")

DEMO = {"batch_pixels": 2048, "atlas_resolution": 512,
        "hash": {"levels": 12, "log2_table_size": 15, "hidden": 32, "layers": 1, "mapping_levels": 5},
        "schedule": {"global_rigidity_until": 150, "bootstrap_until": 400}}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else np.array([np.nan, np.nan])


def config_for(iterations: int, batch: int | None, preset: str = "demo") -> AtlasConfig:
    """The fit's config: the demo preset with its phases scaled to ``iterations``, or the production defaults."""
    if preset == "production":
        return from_dict(AtlasConfig, {"iterations": iterations, **({"batch_pixels": batch} if batch else {})})
    grid = {} if preset == "budget" else DEMO
    base = {**grid, "iterations": iterations, "schedule": {
        "global_rigidity_until": max(1, int(0.2 * iterations)), "bootstrap_until": max(1, int(0.5 * iterations))}}
    if batch:
        base["batch_pixels"] = batch
    return from_dict(AtlasConfig, base)


EVALUATION_RESERVE_S = 15.0  # after a deadline-stopped fit: render every frame, paste and measure the overlay


class _TimeUp(Exception):
    """Raised by the fit's callback when a wall-time limit is reached."""


def fit_clip(frames: np.ndarray, masks: np.ndarray, flow, config: AtlasConfig,
             device: torch.device | None = None, time_limit_s: float | None = None) -> dict:
    """Fit, evaluate every pixel and extract both atlases: dict of arrays, PSNR, seconds and iterations.

    ``time_limit_s`` (seconds of fitting) stops the fit early; the model as it stands then is evaluated
    and ``iterations`` says how far it got (``config.total_iterations`` when it finished).
    """
    device = device or torch.device("cpu")
    data = FitData.build(frames, masks, flow, device,
                         np.stack(layer_motions(flow, masks, config.motion_model, config.fg_motion_model)))
    state: dict = {"its": 0, "seconds": 0.0, "model": None}

    def callback(it: int, seconds: float, model) -> None:
        state.update(its=it, seconds=seconds, model=model)
        if time_limit_s is not None and seconds >= time_limit_s:
            raise _TimeUp

    try:
        result = fit_atlas(data, config, device, callback=callback, callback_every=5)
        model, its, seconds = result.model, config.total_iterations, result.seconds
    except _TimeUp:
        model, its, seconds = state["model"], state["its"], state["seconds"]
    model.eval()
    ev = evaluate(model, frames.shape[:3], device, config.eval_chunk)
    res = config.atlas_resolution
    return {"ev": ev, "psnr": frame_psnr(ev["rgb"], frames), "seconds": seconds, "iterations": its,
            "fg": atlas_image(model, "fg", res, device), "bg": atlas_image(model, "bg", res, device)}


def parse_size(text: str) -> tuple[int, int]:
    """``"384"`` (fit inside a square) or ``"768x432"`` (fit inside width x height) -> (width, height)."""
    parts = text.lower().split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: give N or WxH") from None
    if len(values) not in (1, 2) or min(values) < 16:
        raise argparse.ArgumentTypeError(f"size {text!r}: give N or WxH, each at least 16")
    return (values[0], values[-1])


def star(size: int = 64) -> np.ndarray:
    """An opaque magenta disc with a cyan ring, RGBA [size, size, 4]: unlike any pixel of the clips."""
    out = np.zeros((size, size, 4), np.uint8)
    cv2.circle(out, (size // 2, size // 2), size // 2 - 1, (255, 0, 255, 255), -1)
    cv2.circle(out, (size // 2, size // 2), size // 3, (0, 255, 255, 255), 3)
    return out


def overlay_follow(frames: np.ndarray, fit: dict) -> dict:
    """Paste an overlay at atlas_edit's default placement; per-frame overlay vs foreground centroids."""
    ev = fit["ev"]
    atlas = AtlasFit(fit["fg"], fit["bg"], ev["uv_fg"], ev["uv_bg"], ev["alpha"], {})
    overlay = star()
    res = fit["fg"].shape[0]
    layer = place_overlay(overlay, overlay_matrix(atlas, AtlasEditConfig(), overlay.shape[:2], res), res, 1.0)
    edited = composite(frames, layer, ev["uv_fg"], ev["alpha"])
    dist, rel, inside, pixels = [], [], [], []
    for t in range(len(frames)):
        changed = np.abs(edited[t].astype(int) - frames[t].astype(int)).sum(-1) > 60
        fg = ev["alpha"][t] > 0.5
        d = float(np.linalg.norm(centroid(changed) - centroid(fg))) if changed.any() and fg.any() else float("nan")
        dist.append(d)
        rel.append(d / max(1.0, 2.0 * np.sqrt(fg.sum() / np.pi)))
        inside.append(float((changed & fg).sum() / max(1, changed.sum())))
        pixels.append(int(changed.sum()))
    return {"overlay_to_fg_px": dist, "overlay_to_fg_rel": rel, "overlay_inside_fg": inside, "overlay_pixels": pixels}


def sample_runs(size: int, frames_n: int, strides: list[int], iterations: int, batch: int | None,
                preset: str = "demo", clips: list[str] | None = None) -> list[dict]:
    from jobs.sample_data import PRESETS, generate_sample
    from stages.atlas.tracks import DEFAULT_TRACKER

    out = []
    for seed, (name, clip_preset) in enumerate(PRESETS.items()):
        if clips and name not in clips:
            continue  # the seed stays the clip's index in PRESETS: the same clip as in a full run
        clip = generate_sample(clip_preset.width, clip_preset.height, clip_preset.num_frames, clip_preset.fps, seed)
        scale = size / max(clip_preset.width, clip_preset.height)
        w, h = int(round(clip_preset.width * scale)), int(round(clip_preset.height * scale))
        for stride in strides:
            frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)
                               for f in clip.frames[::stride][:frames_n]])
            truth = np.stack([cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
                              for m in clip.masks[::stride][:frames_n]])
            start = time.perf_counter()
            flow = dense_flow(frames)
            masks = motion_masks(flow, frames=frames)
            prop = propagate(truth[0], flow, frames, DEFAULT_TRACKER)
            prep = time.perf_counter() - start
            errors = [float(np.linalg.norm(centroid(p) - centroid(g))) for p, g in zip(prop, truth)]
            fit = fit_clip(frames, masks, flow, config_for(iterations, batch, preset))
            alpha = fit["ev"]["alpha"] > 0.5
            speed = float(np.linalg.norm(np.diff(np.stack([centroid(g) for g in truth]), axis=0), axis=1).max())
            row = {"clip": name, "stride": stride, "shape": list(frames.shape[:3]), "max_object_px_per_frame": speed,
                   "bootstrap_iou": iou(masks, truth), "alpha_iou": iou(alpha, truth),
                   "propagated_centroid_max_px": max(errors), "psnr_mean_db": float(np.mean(fit["psnr"])),
                   "prep_seconds": prep, "fit_seconds": fit["seconds"], "iterations": iterations,
                   **overlay_follow(frames, fit)}
            log.info("%s stride %d: alpha IoU %.3f, bootstrap %.3f, centroid <= %.2f px, %.2f dB, %.0f s", name,
                     stride, row["alpha_iou"], row["bootstrap_iou"], row["propagated_centroid_max_px"],
                     row["psnr_mean_db"], fit["seconds"])
            out.append(row)
    return out


def video_run(path: str, mask_path: str | None, size: int | tuple[int, int], frames_n: int, stride: int,
              iterations: int, batch: int | None, segment_only: bool, preset: str = "demo",
              device: torch.device | None = None, deadline: float | None = None,
              segmentation: SegmentationConfig | None = None) -> dict:
    """Segment (the default path: no mask) and fit one real clip; the row of figures.

    size: an int (fit inside a square) or (width, height); device: where the fit runs (CPU by default);
    deadline: a ``time.perf_counter()`` time by which the clip's run ends (decoding, flow and
    segmentation included): the fit stops ``EVALUATION_RESERVE_S`` before it (its ``iterations_done``
    say how far it got); segmentation: the motion segmentation's settings
    (None: the defaults).
    """
    width, height = (size, size) if isinstance(size, int) else size
    frames, _, _ = media.decode(path, media.DecodeOptions(max_frames=frames_n, stride=stride, width=width,
                                                          height=height, resize="fit"))
    t, h, w = frames.shape[:3]
    start = time.perf_counter()
    flow = dense_flow(frames)
    row: dict = {"clip": os.path.basename(path), "shape": [t, h, w], "iterations": iterations, "stride": stride}
    try:
        masks = motion_masks(flow, config=segmentation, frames=frames)
        row["segmentation"] = "motion"
    except ValueError as exc:  # NoObjectError: reported, then the fit uses no bootstrap mask
        row["segmentation"] = f"{type(exc).__name__}: {exc}"
        masks = None
    row["prep_seconds"] = time.perf_counter() - start
    row["mask_fraction"] = None if masks is None else float(masks.mean())
    truth = None
    if mask_path:
        with open(mask_path, "rb") as handle:
            first = decode_mask_image(handle.read(), mask_path)
        truth = fit_mask(first.astype(np.uint8), h, w, mask_path) > 0
        row["segmentation_iou_frame0"] = None if masks is None else iou(masks[0], truth)
    log.info("%s: %s", row["clip"], {k: v for k, v in row.items() if k != "clip"})
    if segment_only or masks is None:
        return row
    limit = None if deadline is None else max(1.0, deadline - time.perf_counter() - EVALUATION_RESERVE_S)
    fit = fit_clip(frames, masks, flow, config_for(iterations, batch, preset), device, limit)
    row.update(psnr_mean_db=float(np.mean(fit["psnr"])), psnr_min_db=float(np.min(fit["psnr"])),
               fit_seconds=fit["seconds"], iterations_done=fit["iterations"])
    try:
        row.update(overlay_follow(frames, fit))
    except ValueError as exc:  # RowFieldError: no foreground to place the overlay on, reported as such
        row["overlay"] = f"{type(exc).__name__}: {exc}"
    if truth is not None:
        row["alpha_iou_frame0"] = iou(fit["ev"]["alpha"][0] > 0.5, truth)
    return row


def summary(row: dict) -> dict:
    """A row's scalars (rounded) and the worst of its per-frame overlay figures: one line of JSON."""
    short = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
             if not isinstance(v, list) or k == "shape"}
    if "overlay_to_fg_px" in row:
        short["overlay_to_fg_px_max"] = round(float(np.nanmax(row["overlay_to_fg_px"])), 2)
        short["overlay_to_fg_rel_max"] = round(float(np.nanmax(row["overlay_to_fg_rel"])), 3)
        short["overlay_inside_fg_min"] = round(float(np.min(row["overlay_inside_fg"])), 3)
        short["overlay_inside_fg_mean"] = round(float(np.mean(row["overlay_inside_fg"])), 3)
        short["overlay_pixels_min"] = int(np.min(row["overlay_pixels"]))
    return short


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.atlas_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--sample", action="store_true")
    parser.add_argument("--video")
    parser.add_argument("--mask")
    parser.add_argument("--size", default="160",
                        help="N (fit inside N x N; with --sample only N) or WxH (--video: fit inside W x H)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clips", nargs="+", choices=["square", "landscape", "portrait"],
                        help="with --sample: only these sample clips (default: all three)")
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--segment-only", action="store_true")
    parser.add_argument("--preset", choices=["demo", "production", "budget"], default="demo",
                        help="demo: jobs/configs/atlas_edit.yaml's grid, phases scaled to --iterations; "
                             "production: the stage's defaults (paper phases) with --iterations/--batch; "
                             "budget: the stage's default networks and batch, phases scaled to --iterations")
    parser.add_argument("--device", default="cpu", help="where the fits run (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--time-limit", type=float,
                        help="--video: seconds for the whole run (decoding, flow, segmentation, fit); the fit stops "
                             "in time to be evaluated")
    parser.add_argument("--segmentation", nargs="+", metavar="KEY=VALUE", default=[],
                        help="--video: motion segmentation settings (SegmentationConfig fields), e.g. "
                             "object_layer=true track_min_area=0.5")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if not args.sample and not args.video:
        parser.error("give --sample or --video")
    try:
        segmentation = from_dict(SegmentationConfig, {k: yaml.safe_load(v) for k, v in
                                                      (item.split("=", 1) for item in args.segmentation)},
                                 "settings") if args.segmentation else None
    except ValueError as exc:
        parser.error(f"--segmentation: {exc}")
    deadline = None if args.time_limit is None else time.perf_counter() + args.time_limit
    if args.sample and size[0] != size[1]:
        parser.error("--sample takes --size N (each clip is fitted inside N x N)")
    result = {"sample": sample_runs(size[0], args.frames, args.strides, args.iterations, args.batch, args.preset,
                                     args.clips)} \
        if args.sample else {"video": video_run(args.video, args.mask, size, args.frames, args.stride,
                                                args.iterations, args.batch, args.segment_only, args.preset,
                                                torch.device(args.device), deadline, segmentation)}
    for row in result.get("sample", []) + ([result["video"]] if "video" in result else []):
        print(json.dumps(summary(row)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
