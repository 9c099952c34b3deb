"""Long clips as overlapping windows: the plan and the cross-fade weights (pure functions).

A clip longer than one fit may hold (``atlas.max_frames``, or the ``max_pixels`` budget) is
fitted as several overlapping windows, each an ordinary atlas fit; their renders are blended
with linear ramps over each overlap. Frame indices are 0-based, windows half-open
``[start, stop)``.
"""

from __future__ import annotations

import math

import numpy as np


def plan_windows(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Overlapping windows ``[(start, stop), ...]`` covering frames ``0 .. num_frames - 1``.

    ``window``: most frames in a window; ``overlap``: frames two neighbours share. Uses the
    fewest windows of at most ``window`` frames that cover the clip with neighbours sharing
    exactly ``overlap`` frames, their lengths differing by at most one frame. One window
    ``[(0, num_frames)]`` when the clip fits. ValueError unless ``num_frames >= 1``,
    ``window >= 2`` and ``0 <= overlap < window``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if window < 2 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 2 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    if num_frames <= window:
        return [(0, num_frames)]
    count = 1 + math.ceil((num_frames - window) / (window - overlap))
    base, extra = divmod(num_frames + (count - 1) * overlap, count)  # count * window >= this total
    plan, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        plan.append((start, stop))
        start = stop - overlap
    return plan


def default_overlap(window: int) -> int:
    """Frames two neighbouring windows of at most ``window`` frames share when none is set: 8, at most a third."""
    return max(1, min(8, window // 3))


def crossfade_weights(plan: list[tuple[int, int]], num_frames: int) -> np.ndarray:
    """float32 [W, T] blending weights of the windows of ``plan`` per frame; each column sums to 1.

    A window's raw weight rises linearly from its first frame and falls to its last, ``k / (n + 1)``
    at the ``k``-th frame from the edge (``k = 1 ..``), where ``n`` is the largest overlap it
    has with a neighbour, and is 1 in between; its edges at the clip's first and last frame do
    not ramp. Columns are then normalised. Over an overlap of ``n`` frames shared by two windows
    this is the linear cross-fade ``1/(n+1), ..., n/(n+1)`` for the later window and the rest for
    the earlier, so neither switches on or off abruptly. ValueError when a window lies outside
    the clip or a frame is in no window.
    """
    weights = np.zeros((len(plan), num_frames), np.float32)
    for i, (start, stop) in enumerate(plan):
        if not 0 <= start < stop <= num_frames:
            raise ValueError(f"window {i} [{start}, {stop}) is not inside the clip's {num_frames} frames")
    for i, (start, stop) in enumerate(plan):
        shared = [max(0, min(stop, b) - max(start, a)) for j, (a, b) in enumerate(plan) if j != i]
        n = max(shared, default=0)
        t = np.arange(start, stop)
        rise = (t - start + 1) / (n + 1) if start > 0 else np.ones(len(t))
        fall = (stop - t) / (n + 1) if stop < num_frames else np.ones(len(t))
        weights[i, start:stop] = np.minimum(1.0, np.minimum(rise, fall))
    total = weights.sum(0)
    if (total == 0).any():
        raise ValueError(f"the windows leave frame {int(np.argmax(total == 0))} uncovered")
    return weights / total


def blend(parts: list[np.ndarray], plan: list[tuple[int, int]], num_frames: int) -> np.ndarray:
    """float32 [T, ...]: per-window arrays ``parts[i]`` [stop_i - start_i, ...] cross-faded over the clip."""
    weights = crossfade_weights(plan, num_frames)
    out = np.zeros((num_frames,) + parts[0].shape[1:], np.float32)
    for i, ((start, stop), part) in enumerate(zip(plan, parts, strict=True)):
        w = weights[i, start:stop].reshape((-1,) + (1,) * (part.ndim - 1))
        out[start:stop] += w * part.astype(np.float32)
    return out
