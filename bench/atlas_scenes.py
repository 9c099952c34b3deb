"""Synthetic scenes with exact ground truth for the atlas segmentation and motion checks.

* :func:`parallax_scene` — a camera moving past two textured planes at different depths (a
  near band across the middle of the frame, moving ``parallax`` times faster than the far
  plane seen above and below it: the motion is not monotonic in y, so no single similarity or
  homography carries both), plus an independently moving textured ellipse.
* :func:`fast_object_scene` — a slowly panning background and an ellipse circling the frame
  at ``speed_px`` pixels per frame.

Both return a :class:`Scene`: uint8 RGB frames [T, H, W, 3], bool object masks [T, H, W], the
object's centre [T, 2] (x, y pixels) and the per-pixel label of the background planes
(int8 [T, H, W]: 0 far, 1 near, -1 object). Colours follow the project's sample: object warm
(red > blue), background cool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.sample_data import _BG_RANGE, _FG_RANGE, bilinear_sample, make_texture


@dataclass(frozen=True)
class Scene:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    masks: np.ndarray  # bool [T, H, W], True = the moving object
    centres: np.ndarray  # float64 [T, 2] object centre (x, y), pixels
    planes: np.ndarray  # int8 [T, H, W]: 0 far plane, 1 near plane, -1 object


def _ellipse(xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, axes: tuple[float, float]) -> np.ndarray:
    return ((xs - centre[0]) / axes[0]) ** 2 + ((ys - centre[1]) / axes[1]) ** 2 <= 1.0


def _render(width: int, height: int, offsets: list[np.ndarray], plane_of_row: np.ndarray,  # int8 [H]: plane of each row
            centres: np.ndarray, axes: tuple[float, float], seed: int) -> Scene:
    """Frames from per-plane translations ``offsets[k]`` [T, 2] and object centres [T, 2]."""
    rng = np.random.default_rng(seed)
    t_n = len(centres)
    reach = int(np.ceil(max(np.abs(o).max() for o in offsets))) + 4
    textures = [make_texture(height + 2 * reach, width + 2 * reach, rng, _BG_RANGE) for _ in offsets]
    size = 2 * int(np.ceil(max(axes))) + 8
    obj = make_texture(size, size, rng, _FG_RANGE, stripe_period=11.0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = np.empty((t_n, height, width, 3), np.uint8)
    masks = np.empty((t_n, height, width), bool)
    planes = np.empty((t_n, height, width), np.int8)
    for t in range(t_n):
        layer = np.empty((height, width, 3), np.float32)
        for k, (tex, off) in enumerate(zip(textures, offsets)):
            rows = plane_of_row == k
            layer[rows] = bilinear_sample(tex, xs[rows] + reach - off[t, 0], ys[rows] + reach - off[t, 1])
        inside = _ellipse(xs, ys, centres[t], axes)
        c = (size - 1) / 2.0
        layer[inside] = bilinear_sample(obj, xs[inside] - centres[t, 0] + c, ys[inside] - centres[t, 1] + c)
        frames[t] = np.clip(np.rint(layer), 0, 255).astype(np.uint8)
        masks[t] = inside
        planes[t] = np.where(inside, -1, plane_of_row[:, None])
    return Scene(frames, masks, centres, planes)


def parallax_scene(width: int = 128, height: int = 96, num_frames: int = 12, camera_px: float = 1.0,
                   parallax: float = 3.0, seed: int = 0) -> Scene:
    """Two planes under a panning camera (far: ``camera_px``/frame, near: ``parallax`` x that) and an object.

    The near plane is the band from 30 % to 70 % of the height (a wall, a fence), the far plane
    shows above and below it; the object, an ellipse a fifth of the height tall, moves
    diagonally against both planes.
    """
    t = np.arange(num_frames, dtype=np.float64)[:, None]
    far = np.concatenate([-camera_px * t, 0.15 * camera_px * t], 1)
    near = np.concatenate([-parallax * camera_px * t, 0.15 * parallax * camera_px * t], 1)
    y = np.arange(height)
    rows = ((y >= int(0.3 * height)) & (y < int(0.7 * height))).astype(np.int8)
    axes = (0.14 * width, 0.1 * height + 2)
    start = np.array([0.3 * width, 0.5 * height])
    centres = start + t * np.array([1.6, -0.8]) * camera_px * 1.5
    return _render(width, height, [far, near], rows, centres, axes, seed)


def fast_object_scene(width: int = 160, height: int = 160, num_frames: int = 12, speed_px: float = 15.0,
                      seed: int = 1) -> Scene:
    """An ellipse circling the frame centre at ``speed_px`` pixels per frame over a slow pan."""
    t = np.arange(num_frames, dtype=np.float64)
    radius = 0.28 * min(width, height)
    step = speed_px / radius  # radians per frame: chord length ~ speed_px
    angle = step * t
    centres = np.stack([(width - 1) / 2 + radius * np.cos(angle), (height - 1) / 2 + radius * np.sin(angle)], -1)
    pan = np.stack([-0.5 * t, 0.3 * t], -1)
    rows = np.zeros(height, np.int8)
    axes = (0.13 * min(width, height), 0.1 * min(width, height))
    return _render(width, height, [pan], rows, centres, axes, seed)
