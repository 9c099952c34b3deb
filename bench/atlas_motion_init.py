"""The atlas fit's motion initialisation on a real clip, per motion model, before any iteration.

    python -m bench.atlas_motion_init --video car-turn.mp4 [--size 256] [--frames 70] [--json OUT]

Decodes the clip as ``bench.atlas_quality`` does (same flow, same motion-segmentation masks),
fits the layers' chained per-pair motions (``stages.atlas.masks.layer_motions``) with each
combination of background / foreground model, and reports without fitting any network:

* ``*_photo_k{1,5,20}``: mean absolute colour error (0-255) between frame t and frame t - k
  carried onto it by the chained motion, over the layer's pixels (outside / inside the masks in
  both frames): how well the init aligns a layer across 1, 5 and 20 frames;
* ``scales``: the per-layer atlas shrink of :func:`stages.atlas.motion_init.compensation`
  (fg, bg; smaller: fewer atlas texels per frame pixel);
* ``*_rigidity_mean_max``: the symmetric Dirichlet energy of the init's frame -> layer map
  (1 px Jacobian in layer units, as the rigidity loss measures the whole mapping), mean over a
  4 px grid, then the mean and the worst frame; a rotation scores 2.83.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import cv2
import numpy as np

from pipeline import media
from stages.atlas.flow import dense_flow
from stages.atlas.masks import layer_motions, motion_masks
from stages.atlas.motion_init import carry, compensation

log = logging.getLogger("bench.atlas_motion_init")

MODELS = (("affine", "affine"), ("homography", "affine"), ("homography", "homography"))


def photometric(frames: np.ndarray, masks: np.ndarray, motions: np.ndarray, k: int, foreground: bool) -> float:
    """Mean |frame t - frame t-k carried by motions| (0-255) over the layer's pixels in both frames."""
    t_n, h, w = masks.shape
    errors = []
    for t in range(k, t_n):
        rel = motions[t - k] @ np.linalg.inv(motions[t])  # frame t px -> frame t - k px
        rel /= rel[2, 2]
        flags = cv2.WARP_INVERSE_MAP
        warped = cv2.warpPerspective(frames[t - k].astype(np.float32), rel, (w, h), flags=cv2.INTER_LINEAR | flags,
                                     borderValue=(-1, -1, -1))
        carried = cv2.warpPerspective(masks[t - k].astype(np.uint8), rel, (w, h), flags=cv2.INTER_NEAREST | flags,
                                      borderValue=2)
        ok = (carried == int(foreground)) & (masks[t] == foreground) & (warped[..., 0] >= 0)
        if ok.sum() > 50:
            errors.append(float(np.abs(warped - frames[t])[ok].mean()))
    return float(np.mean(errors)) if errors else float("nan")


def symmetric_dirichlet(jac: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """stages.atlas.losses.symmetric_dirichlet per Jacobian [N, 2, 2] -> [N] (numpy)."""
    jtj = np.swapaxes(jac, -1, -2) @ jac
    a, b, c, d = jtj[:, 0, 0] + eps, jtj[:, 0, 1], jtj[:, 1, 0], jtj[:, 1, 1] + eps
    fro = np.sqrt(a * a + b * b + c * c + d * d)
    return fro + fro / (a * d - b * c)


def init_rigidity(maps: np.ndarray, scale: float, shape: tuple[int, int, int]) -> tuple[float, float]:
    """Mean and worst-frame mean symmetric Dirichlet energy of frame-t -> atlas maps [T, 3, 3] in layer units."""
    t_n, h, w = shape
    half = (max(h, w) - 1) / 2.0
    ys, xs = np.mgrid[0:h:4, 0:w:4]
    grid = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
    per_frame = []
    for m in maps.astype(np.float64):
        c0, cx, cy = (carry(m, (grid + d) / half - 1.0) for d in ((0, 0), (1, 0), (0, 1)))
        per_frame.append(float(symmetric_dirichlet(np.stack([cx - c0, cy - c0], -1) * half / scale).mean()))
    return float(np.mean(per_frame)), float(np.max(per_frame))


def measure(frames: np.ndarray, masks: np.ndarray, flow) -> list[dict]:
    rows = []
    for bg_model, fg_model in MODELS:
        fg, bg = layer_motions(flow, masks, bg_model=bg_model, fg_model=fg_model)
        comp, scales = compensation(np.stack([fg, bg]), masks.shape, masks)
        row: dict = {"bg_model": bg_model, "fg_model": fg_model, "scales": [round(float(s), 3) for s in scales]}
        for k in (1, 5, 20):
            row[f"bg_photo_k{k}"] = round(photometric(frames, masks, bg, k, False), 2)
            row[f"fg_photo_k{k}"] = round(photometric(frames, masks, fg, k, True), 2)
        for layer, name in ((0, "fg"), (1, "bg")):
            mean, worst = init_rigidity(comp[layer].numpy(), float(scales[layer]), masks.shape)
            row[f"{name}_rigidity_mean_max"] = [round(mean, 3), round(worst, 3)]
        log.info("%s", row)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.atlas_motion_init", description=__doc__.splitlines()[0])
    parser.add_argument("--video", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=70)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    frames, _, _ = media.decode(args.video, media.DecodeOptions(max_frames=args.frames, width=args.size,
                                                                height=args.size, resize="fit"))
    flow = dense_flow(frames)
    rows = measure(frames, motion_masks(flow, frames=frames), flow)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
