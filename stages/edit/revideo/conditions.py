"""ReVideo's row inputs as arrays: edit boxes, region map, content video, trajectories, c_mot.

Coordinates in a row (``edit_box``, ``trajectories``) are pixels (x right, y down) of the decoded
frames the edit stage receives (the source video's pixels unless ``decode`` resizes). They are
mapped into the clip the model edits (:func:`clip_transform`: the same crop/stretch as
``select_frames``) by multiplying with the scale, as the release does (``sample_single_region.py``
L117-127), box edges truncated to integers. Every malformed value raises
:class:`~stages.edit.base.RowFieldError` naming the field. The motion condition ``c_mot`` is the
trajectory stage's rasteriser (:func:`stages.motion_conditions.motion_conditions`) with
``channel_order="dy,dx"`` and the unnormalised Gaussian (51, sigma 10).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from stages.edit.base import RowFieldError


def parse_json_field(value: Any, field: str) -> Any:
    """A row field given as JSON text or already parsed; RowFieldError for malformed JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowFieldError(f"{field} is not valid JSON ({exc.msg} at char {exc.pos}): {value[:80]!r}") from exc
    return _plain(value)


def _plain(value: Any) -> Any:
    """Nested lists from numpy arrays (Parquet list columns arrive as object arrays of arrays)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def parse_boxes(value: Any, field: str = "edit_box") -> np.ndarray:
    """Boxes float64 [K, 4] (x0, y0, x1, y1) from ``[x0, y0, x1, y1]`` or ``[[x0, y0, x1, y1], ...]``."""
    data = parse_json_field(value, field)
    if isinstance(data, (list, tuple)) and len(data) == 4 and all(_is_number(v) for v in data):
        data = [data]
    if not isinstance(data, (list, tuple)) or not data:
        raise RowFieldError(f"{field} must be [x0, y0, x1, y1] or a list of such boxes, got {str(value)[:80]!r}")
    boxes = []
    for i, box in enumerate(data):
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise RowFieldError(f"{field}[{i}] must be 4 numbers [x0, y0, x1, y1], got {str(box)[:60]!r}")
        boxes.append([float(v) for v in box])
    return np.asarray(boxes, np.float64)


def check_boxes(boxes: np.ndarray, height: int, width: int, field: str = "edit_box") -> None:
    """RowFieldError unless every box has x0 < x1, y0 < y1 and lies inside the width x height frame."""
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        text = "[" + ", ".join(f"{float(v):g}" for v in (x0, y0, x1, y1)) + "]"
        if not (x1 > x0 and y1 > y0):
            raise RowFieldError(f"{field}[{i}] {text} is empty: need x0 < x1 and y0 < y1")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise RowFieldError(f"{field}[{i}] {text} is outside the {width}x{height} frame")


def mask_box(mask: np.ndarray, field: str = "mask_uri") -> np.ndarray:
    """The bounding box float64 [1, 4] (x0, y0, x1, y1; x1/y1 exclusive) of a mask's nonzero pixels."""
    ys, xs = np.nonzero(np.asarray(mask))
    if not len(xs):
        raise RowFieldError(f"{field} is an empty mask (no nonzero pixel)")
    return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64)


def clip_transform(src_hw: tuple[int, int], width: int, height: int, resize: str = "stretch") -> np.ndarray:
    """(scale_x, scale_y, offset_x, offset_y) float64 [4] with clip = (source - offset) * scale.

    Mirrors ``select_frames``: "stretch" scales the whole frame; "crop" first centre-crops to the
    clip's aspect ratio.
    """
    h, w = src_hw
    ox = oy = 0.0
    if resize == "crop":
        target = width / height
        if w / h > target:
            cw = max(1, round(h * target))
            ox, w = float((w - cw) // 2), cw
        else:
            ch = max(1, round(w / target))
            oy, h = float((h - ch) // 2), ch
    return np.array([width / w, height / h, ox, oy], np.float64)


def to_clip(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Points [..., 2] (x, y) in source pixels -> clip pixels, float64."""
    sx, sy, ox, oy = transform
    out = np.asarray(points, np.float64).copy()
    out[..., 0] = (out[..., 0] - ox) * sx
    out[..., 1] = (out[..., 1] - oy) * sy
    return out


def boxes_to_clip(boxes: np.ndarray, transform: np.ndarray, height: int, width: int, min_size: int,
                  field: str = "edit_box") -> np.ndarray:
    """Integer clip boxes int64 [K, 4] (edges truncated, as the release; clamped to the clip).

    RowFieldError when a box is smaller than ``min_size`` x ``min_size`` clip pixels.
    """
    corners = to_clip(boxes.reshape(-1, 2, 2), transform).reshape(-1, 4)
    out = np.trunc(corners).astype(np.int64)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    for i, (x0, y0, x1, y1) in enumerate(out):
        if x1 - x0 < min_size or y1 - y0 < min_size:
            raise RowFieldError(f"{field}[{i}] is {x1 - x0}x{y1 - y0} px in the {width}x{height} clip; the model "
                                f"needs at least {min_size}x{min_size} (min_box_size)")
    return out


def region_map(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Region map M, float32 [H, W]: 1 inside the union of the clip boxes [K, 4], else 0."""
    region = np.zeros((height, width), np.float32)
    for x0, y0, x1, y1 in boxes:
        region[y0:y1, x0:x1] = 1.0
    return region


def content_video(clip: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The content condition, float32 [F, 3, H, W] in [-1, 1]: the clip uint8 [F, H, W, 3] with the
    region (M > 0, [H, W]) set to -1 in every frame (``sample_single_region.py`` L186)."""
    video = clip.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    video[:, :, region > 0] = -1.0
    return video


def parse_trajectories(value: Any, num_frames: int, field: str = "trajectories") -> tuple[np.ndarray, bool]:
    """Point paths from JSON ``[[[x, y], ...], ...]`` (one list per point).

    Each point gives either ``num_frames`` positions (one per clip frame) or 2 (start, end).
    Returns (float64 [N, P, 2], is_start_end) with P = num_frames or 2.
    """
    data = parse_json_field(value, field)
    if not isinstance(data, (list, tuple)) or not data:
        raise RowFieldError(f"{field} must be a non-empty list of points, each a list of [x, y] positions")
    lengths = set()
    for i, path in enumerate(data):
        ok = isinstance(path, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(v) for v in p) for p in path)
        if not ok or len(path) not in (2, num_frames):
            got = len(path) if isinstance(path, (list, tuple)) else type(path).__name__
            raise RowFieldError(f"{field}[{i}] must be {num_frames} [x, y] positions (one per frame) or 2 "
                                f"(start, end), got {got}")
        lengths.add(len(path))
    if len(lengths) > 1:
        raise RowFieldError(f"{field}: every point needs the same number of positions, got {sorted(lengths)}")
    paths = np.asarray(data, np.float64)
    if not np.isfinite(paths).all():
        raise RowFieldError(f"{field} has a non-finite coordinate")
    return paths, paths.shape[1] == 2 and num_frames != 2


def check_starts(paths: np.ndarray, height: int, width: int, field: str = "trajectories") -> None:
    """RowFieldError when a point's first position is outside the width x height frame."""
    for i, (x, y) in enumerate(paths[:, 0]):
        if not (0 <= x <= width and 0 <= y <= height):
            raise RowFieldError(f"{field}[{i}] starts at ({x:g}, {y:g}), outside the {width}x{height} frame")


def linear_tracks(start: np.ndarray, end: np.ndarray, num_frames: int) -> np.ndarray:
    """Tracks float32 [F, N, 2] from start/end points [N, 2] (clip pixels) as the release builds them.

    Frame 0 is the start; frame j >= 1 sits at trunc(p0 + (j - 1) (p1 - p0) / (F - 2)), so frame 1
    repeats the start (truncated) and frame F-1 reaches the end (``sample_single_region.py``
    L128-173).
    """
    if num_frames < 3:
        raise ValueError(f"start/end trajectories need at least 3 frames, got {num_frames}")
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    j = np.maximum(np.arange(num_frames) - 1, 0)[:, None, None]
    tracks = np.trunc(start[None] + j * (end - start)[None] / (num_frames - 2))
    tracks[0] = start
    return tracks.astype(np.float32)


def tracks_in_boxes(tracks: np.ndarray, boxes: np.ndarray, visibility: np.ndarray | None = None) -> np.ndarray:
    """Indices int64 [K] of tracks [T, N, 2] whose frame-0 point (visible, if given) is inside a box [B, 4]."""
    x, y = tracks[0, :, 0], tracks[0, :, 1]
    inside = np.zeros(tracks.shape[1], bool)
    for x0, y0, x1, y1 in boxes:
        inside |= (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    if visibility is not None:
        inside &= np.asarray(visibility[0], bool)
    return np.flatnonzero(inside)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
