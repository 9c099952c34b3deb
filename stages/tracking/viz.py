"""Pictures of tracks and motion maps for previews (uint8 RGB frames out)."""

from __future__ import annotations

import cv2
import numpy as np


def track_colours(n: int) -> np.ndarray:
    """``n`` distinct saturated RGB colours, uint8 [n, 3] (hues evenly spaced)."""
    if n == 0:
        return np.zeros((0, 3), np.uint8)
    hsv = np.stack([np.linspace(0, 179, n, endpoint=False), np.full(n, 230), np.full(n, 255)], -1)
    return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]


def draw_tracks(frames: np.ndarray, tracks: np.ndarray, visibility: np.ndarray | None = None,
                tail: int | None = None, radius: int = 3) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] with each track's path up to frame t drawn over frame t.

    ``tracks`` float [T, N, 2] (x, y) px; ``visibility`` bool [T, N] (hidden steps are not drawn,
    a hidden point is a hollow circle). ``tail`` limits the drawn history to that many steps.
    """
    out = np.ascontiguousarray(frames.copy())
    t_len, n = tracks.shape[:2]
    vis = np.ones((t_len, n), bool) if visibility is None else np.asarray(visibility, bool)
    colours = [tuple(int(c) for c in rgb) for rgb in track_colours(n)]
    for t in range(t_len):
        img = out[t]
        start = 0 if tail is None else max(0, t - tail)
        for i in range(n):
            for s in range(start + 1, t + 1):
                if vis[s, i] and vis[s - 1, i]:
                    p0 = tuple(int(round(v)) for v in tracks[s - 1, i])
                    p1 = tuple(int(round(v)) for v in tracks[s, i])
                    cv2.line(img, p0, p1, colours[i], 2, cv2.LINE_AA)
            if np.all(np.isfinite(tracks[t, i])):
                centre = tuple(int(round(v)) for v in tracks[t, i])
                cv2.circle(img, centre, radius, colours[i], -1 if vis[t, i] else 1, cv2.LINE_AA)
    return out


def motion_colour(c_mot: np.ndarray, channel_order: str = "dx,dy", max_magnitude: float | None = None) -> np.ndarray:
    """Flow-style colour picture of motion maps [T, 2, H, W]: hue = direction, brightness = magnitude.

    Returns uint8 [T, H, W, 3] RGB. Magnitudes are scaled by ``max_magnitude`` (default: the clip's
    largest), so zero motion is black.
    """
    maps = np.asarray(c_mot, np.float32)
    dx, dy = (maps[:, 1], maps[:, 0]) if channel_order == "dy,dx" else (maps[:, 0], maps[:, 1])
    mag = np.hypot(dx, dy)
    scale = max_magnitude or float(mag.max()) or 1.0
    angle = (np.degrees(np.arctan2(dy, dx)) % 360.0) / 2.0
    hsv = np.stack([angle, np.full_like(angle, 255.0), np.clip(mag / scale, 0, 1) * 255.0], -1).astype(np.uint8)
    return np.stack([cv2.cvtColor(f, cv2.COLOR_HSV2RGB) for f in hsv])
