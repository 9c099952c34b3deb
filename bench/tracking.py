"""Tracking accuracy, per backend.

    python -m bench.tracking [--clips 4] [--size 256x256] [--frames 24] [--videos DIR]
                             [--cotracker-dir DIR --cotracker-model NAME --cotracker-checkpoint FILE]

Synthetic clips (jobs.sample_data: a background panning by sub-pixel translations, a textured
foreground that translates, rotates and scales, and occludes the background) give exact ground
truth: TAP-Vid-style delta_avg (fraction of visible points within 1, 2, 4, 8, 16 px, averaged),
occlusion accuracy and median endpoint error, query frames excluded, queries at frame 0 ("first").
On real clips (every ``*.mp4`` in ``--videos``; no ground truth) it reports forward-backward error:
track a 32x32 grid forward over the window, track the end points back to frame 0, and measure the
distance to where they started. Two figures, because the tracker's own checks select the easy
points: over the *survivors* (points the tracker kept visible both ways, e.g. that passed LK's own
forward-backward check at every step), with their count, and over *all* grid points (lost points
follow their neighbours' motion, so they still end somewhere).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from pipeline.config import from_dict
from stages.tracking import TrackingConfig, make_tracker

log = logging.getLogger("bench.tracking")
THRESHOLDS = (1, 2, 4, 8, 16)


@dataclass
class Clip:
    name: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    tracks: np.ndarray  # float32 [T, N, 2] ground truth (x, y) px
    visibility: np.ndarray  # bool [T, N]
    is_foreground: np.ndarray  # bool [N]


def synthetic_clips(count: int = 4, width: int = 256, height: int = 256, num_frames: int = 24,
                    seed: int = 0) -> list[Clip]:
    """Clips from the project's sample generator (translation, rotation, scaling, occlusion)."""
    from jobs.sample_data import generate_sample

    out = []
    for i in range(count):
        c = generate_sample(width, height, num_frames, seed=seed + i, n_fg=48, n_bg=48)
        out.append(Clip(f"synthetic-{seed + i}", c.frames, c.tracks, c.visibility, c.is_foreground))
    return out


def tap_metrics(pred: np.ndarray, pred_vis: np.ndarray, gt: np.ndarray, gt_vis: np.ndarray,
                query_frames: np.ndarray) -> dict:
    """TAP-Vid-style metrics over frames other than each point's query frame.

    ``pred``/``gt`` float [T, N, 2] px; ``pred_vis``/``gt_vis`` bool [T, N]; ``query_frames`` int [N].
    Returns delta_avg, delta_<th> per threshold, occlusion_accuracy and median_epe (px, visible points).
    """
    t_len = gt.shape[0]
    evaluated = np.arange(t_len)[:, None] != np.asarray(query_frames)[None, :]
    visible = gt_vis & evaluated
    err = np.linalg.norm(pred - gt, axis=-1)
    out = {f"delta_{th}": float((err[visible] < th).mean()) if visible.any() else float("nan")
           for th in THRESHOLDS}
    out["delta_avg"] = float(np.mean([out[f"delta_{th}"] for th in THRESHOLDS]))
    out["occlusion_accuracy"] = float((pred_vis == gt_vis)[evaluated].mean())
    out["median_epe"] = float(np.median(err[visible])) if visible.any() else float("nan")
    return out


def evaluate(tracker, clip: Clip) -> dict:
    """Track the ground-truth points from frame 0 and score them (plus seconds taken)."""
    queries = np.concatenate([np.zeros((clip.tracks.shape[1], 1)), clip.tracks[0]], 1).astype(np.float32)
    start = time.perf_counter()
    pred, vis = tracker.track(clip.frames, queries)
    seconds = time.perf_counter() - start
    metrics = tap_metrics(pred, vis, clip.tracks, clip.visibility, np.zeros(len(queries), int))
    metrics["seconds"] = seconds
    return metrics


def forward_backward_error(tracker, frames: np.ndarray, grid: int = 32) -> dict:
    """Forward-backward distances (px) of a ``grid`` x ``grid`` point grid tracked to the last frame and back.

    Returns ``n_points`` (N), ``n_survivors`` (M), ``all`` float [N] (every point; end points
    outside the frame are clamped onto it before tracking back) and ``survivors`` float [M]
    (points visible in every frame forward and still visible when tracked back to frame 0).
    """
    from stages.motion_conditions import grid_points

    t_len, h, w = frames.shape[:3]
    pts = grid_points(h, w, size=grid)
    fwd, vis = tracker.track(frames, np.concatenate([np.zeros((len(pts), 1)), pts], 1).astype(np.float32))
    end = np.clip(fwd[-1], 0, [w - 1, h - 1])
    back, bvis = tracker.track(frames, np.concatenate([np.full((len(end), 1), t_len - 1), end], 1)
                               .astype(np.float32))
    err = np.linalg.norm(back[0] - pts, axis=-1)
    survived = vis.all(0) & bvis[0]
    return {"n_points": int(len(pts)), "n_survivors": int(survived.sum()), "all": err, "survivors": err[survived]}


def fb_summary(results: list[dict]) -> str:
    """``survivors median / p90 px, <1px (n=M/N) | all points median / p90, <1px`` over clips' results."""
    if not results:
        return "n/a"
    surv = np.concatenate([r["survivors"] for r in results])
    every = np.concatenate([r["all"] for r in results])
    n, m = sum(r["n_points"] for r in results), sum(r["n_survivors"] for r in results)

    def stats(err: np.ndarray) -> str:
        if not len(err):
            return "none"
        return f"{np.median(err):.3f} / {np.percentile(err, 90):.3f}, {(err < 1).mean():.3f}"

    return f"{stats(surv)} (n={m}/{n}) | {stats(every)}"


def backends(args) -> dict[str, TrackingConfig]:
    out = {"lk": TrackingConfig(),
           "lk-w21": from_dict(TrackingConfig, {"lk": {"win_size": 21}})}
    if args.cotracker_dir:
        out["cotracker"] = from_dict(TrackingConfig, {"backend": "cotracker", "cotracker": {
            "repo_or_dir": args.cotracker_dir, "source": "local", "model": args.cotracker_model,
            "checkpoint": args.cotracker_checkpoint}})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracking", description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--videos", help="a folder of real clips (*.mp4) for the forward-backward error")
    parser.add_argument("--real-frames", type=int, default=24)
    parser.add_argument("--cotracker-dir")
    parser.add_argument("--cotracker-model", default="cotracker3_offline")
    parser.add_argument("--cotracker-checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    w, h = (int(v) for v in args.size.lower().split("x"))
    clips = synthetic_clips(args.clips, w, h, args.frames)
    videos = sorted(glob.glob(os.path.join(args.videos, "*.mp4"))) if args.videos else []
    real = []
    if videos:
        from pipeline.media import DecodeOptions, decode

        for path in videos:
            frames, _, _ = decode(path, DecodeOptions(max_frames=args.real_frames, width=512, height=320,
                                                      resize="crop"))
            real.append((os.path.basename(path), frames))
    print(f"synthetic: {len(clips)} clips {w}x{h}x{args.frames} (translation, rotation, scaling, occlusion); "
          f"real: {len(real)} clips at 512x320x{args.real_frames}")
    print(f"{'backend':<10} {'delta_avg':>9} {'d<1':>6} {'d<2':>6} {'d<4':>6} {'OA':>6} {'MEE px':>7} {'s/clip':>7}"
          f" | real FB err: survivors median / p90 px, <1px (n) | all points median / p90, <1px")
    for name, cfg in backends(args).items():
        tracker = make_tracker(cfg)
        ms = [evaluate(tracker, c) for c in clips]
        mean = {k: float(np.mean([m[k] for m in ms])) for k in ms[0]}
        fb_text = fb_summary([forward_backward_error(tracker, f) for _, f in real])
        print(f"{name:<10} {mean['delta_avg']:>9.3f} {mean['delta_1']:>6.3f} {mean['delta_2']:>6.3f} "
              f"{mean['delta_4']:>6.3f} {mean['occlusion_accuracy']:>6.3f} {mean['median_epe']:>7.3f} "
              f"{mean['seconds']:>7.3f} | {fb_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
