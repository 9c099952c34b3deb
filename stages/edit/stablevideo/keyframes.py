"""Keyframes of the foreground edit: which frames, the crop around the object, the diffusion canvas.

Pure functions on numpy arrays. Boxes are ``(y0, x0, y1, x1)`` in frame pixels, end exclusive.
"""

from __future__ import annotations

import json

import cv2
import numpy as np

from stages.edit.base import RowFieldError


class NoForegroundError(ValueError):
    """The fitted atlas has no foreground (alpha never reaches the threshold) where the edit needs it."""


def parse_keyframes(value: object, num_frames: int) -> list[int] | None:
    """The row's ``keyframes`` (a JSON list of frame indices, or a comma-separated string) or None.

    Raises RowFieldError naming the field for malformed JSON, non-integers, repeats, or
    indices outside ``[0, num_frames)``. Order is kept: the first keyframe is edited from noise.
    """
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = json.loads(text if text.startswith("[") else f"[{text}]")
        except json.JSONDecodeError as exc:
            raise RowFieldError(f"keyframes {text[:80]!r} is not a JSON list of frame indices: {exc.msg}") from exc
    if not isinstance(value, (list, tuple)) or not value:
        raise RowFieldError(f"keyframes must be a non-empty list of frame indices, got {value!r}")
    out = []
    for k in value:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or float(k) != int(k):
            raise RowFieldError(f"keyframes must be integer frame indices, got {k!r}")
        k = int(k)
        if not 0 <= k < num_frames:
            raise RowFieldError(f"keyframes: frame {k} is outside the clip's {num_frames} frames (0..{num_frames - 1})")
        out.append(k)
    if len(set(out)) != len(out):
        raise RowFieldError(f"keyframes repeat a frame: {out}")
    return out


def foreground_area(alpha: np.ndarray, threshold: float) -> np.ndarray:
    """int64 [T]: pixels with ``alpha >= threshold`` in each frame of alpha [T, H, W]."""
    return (alpha >= threshold).reshape(len(alpha), -1).sum(1)


def default_keyframes(alpha: np.ndarray, count: int, threshold: float) -> list[int]:
    """``count`` keyframes spread over the clip: the frame of largest foreground area in each of
    ``count`` equal spans of [0, T) (frames without foreground are never picked).

    Raises NoForegroundError when no frame has foreground.
    """
    area = foreground_area(alpha, threshold)
    if not area.any():
        raise NoForegroundError(f"the atlas alpha has no foreground pixel (alpha >= {threshold}) in any of "
                                f"{len(alpha)} frames: nothing to edit")
    t = len(alpha)
    bounds = np.linspace(0, t, min(count, t) + 1).round().astype(int)
    picks = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a and area[a:b].max() > 0:
            picks.append(int(a + np.argmax(area[a:b])))
    return picks


def crop_box(alpha: np.ndarray, threshold: float, border: int, min_size: int) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) around ``alpha >= threshold`` of one frame [H, W]: the bounding box grown by
    ``border`` pixels, each side then widened to ``min_size`` (towards the far side at the frame's
    edge, as the release), all clipped to the frame. Raises NoForegroundError when empty."""
    h, w = alpha.shape
    ys, xs = np.nonzero(alpha >= threshold)
    if len(ys) == 0:
        raise NoForegroundError(f"no foreground pixel (alpha >= {threshold})")

    def span(lo: int, hi: int, size: int) -> tuple[int, int]:
        lo, hi = max(lo - border, 0), min(hi + 1 + border, size)
        if hi - lo < min_size:
            pad = min_size - (hi - lo)
            if hi + pad > size:
                lo -= pad
            else:
                hi += pad
        return max(lo, 0), min(hi, size)

    y0, y1 = span(int(ys.min()), int(ys.max()), h)
    x0, x1 = span(int(xs.min()), int(xs.max()), w)
    return y0, x0, y1, x1


def canvas_size(height: int, width: int, resolution: int, multiple: int) -> tuple[int, int]:
    """(H, W) of the diffusion canvas for an image of height x width: short side scaled to
    ``resolution``, both sides rounded to a multiple of ``multiple`` (at least one)."""
    k = float(resolution) / min(height, width)
    return (max(multiple, int(np.round(height * k / multiple)) * multiple),
            max(multiple, int(np.round(width * k / multiple)) * multiple))


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` [h, w(, C)] resized to height x width (Lanczos up, area down, as the release)."""
    if image.shape[:2] == (height, width):
        return image
    up = height * width > image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LANCZOS4 if up else cv2.INTER_AREA)


def canny_hint(image: np.ndarray, low: int, high: int) -> np.ndarray:
    """float32 [H, W, 3] in {0, 1}: Canny(low, high) edges of a uint8 RGB image, three channels."""
    edges = cv2.Canny(np.ascontiguousarray(image), low, high)
    return np.repeat((edges.astype(np.float32) / 255.0)[..., None], 3, -1)
