"""Lucas-Kanade point tracking (OpenCV pyramidal LK), no weights.

Each query is tracked frame to frame from its own frame forward to the last frame and backward
to the first. At every step the point is tracked ``t -> t±1`` and back again; it is *lost* when
LK fails, when the forward-backward error exceeds ``fb_threshold`` pixels, or when it leaves the
frame. A lost point is not visible from that step on (LK cannot re-acquire it), and its position
keeps moving with the median motion of its nearest still-tracked neighbours, so that a point that
reappears after an occlusion is still near its true place.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import cKDTree

from stages.tracking import LKConfig, check_inputs, inside


def neighbour_motion(points: np.ndarray, ref_points: np.ndarray, ref_motion: np.ndarray, k: int) -> np.ndarray:
    """Median motion of the ``k`` nearest reference points, per point.

    ``points`` float [L, 2], ``ref_points`` float [G, 2], ``ref_motion`` float [G, 2] (pixels).
    Returns float32 [L, 2]; zeros when there is no reference point.
    """
    if len(points) == 0 or len(ref_points) == 0:
        return np.zeros((len(points), 2), np.float32)
    k = min(k, len(ref_points))
    _, nearest = cKDTree(ref_points).query(points, k=k)
    nearest = np.asarray(nearest).reshape(len(points), k)
    return np.median(ref_motion[nearest], axis=1).astype(np.float32)


class LKTracker:
    """``track(frames, queries) -> (tracks, visibility)`` with OpenCV's pyramidal LK."""

    def __init__(self, config: LKConfig = LKConfig()):
        self.config = config

    def load(self) -> None:
        """Nothing to load; here for the tracker interface."""

    def _lk_params(self) -> dict:
        c = self.config
        return {"winSize": (c.win_size, c.win_size), "maxLevel": c.max_level,
                "criteria": (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, c.max_iterations, c.epsilon),
                "minEigThreshold": c.min_eig_threshold}

    def track(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames uint8 [T, H, W, 3], queries float32 [N, 3] (t, x, y) px -> tracks float32 [T, N, 2]
        (x, y) px and visibility bool [T, N]."""
        frames, queries = check_inputs(frames, queries)
        t_len, n = frames.shape[0], len(queries)
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        qt = queries[:, 0].astype(np.int64)
        tracks = np.zeros((t_len, n, 2), np.float32)
        visibility = np.zeros((t_len, n), bool)
        tracks[qt, np.arange(n)] = queries[:, 1:]
        visibility[qt, np.arange(n)] = True
        if n:
            self._sweep(gray, tracks, visibility, qt, forward=True)
            if qt.max() > 0:
                self._sweep(gray, tracks, visibility, qt, forward=False)
        return tracks, visibility

    def _sweep(self, gray: list[np.ndarray], tracks: np.ndarray, visibility: np.ndarray, qt: np.ndarray,
               forward: bool) -> None:
        """Fill frames after (forward) or before (backward) each query's frame, in place."""
        t_len, n = tracks.shape[:2]
        h, w = gray[0].shape
        params = self._lk_params()
        thr = self.config.fb_threshold
        started = np.zeros(n, bool)
        alive = np.zeros(n, bool)
        for t in (range(0, t_len - 1) if forward else range(t_len - 1, 0, -1)):
            nt = t + 1 if forward else t - 1
            new = qt == t
            started |= new
            alive |= new
            idx = np.flatnonzero(started)
            if not len(idx):
                continue
            cur = tracks[t, idx]
            moved = cur.copy()
            ok = np.zeros(len(idx), bool)
            live = alive[idx]
            if live.any():
                p0 = np.ascontiguousarray(cur[live], np.float32)
                p1, status, _ = cv2.calcOpticalFlowPyrLK(gray[t], gray[nt], p0, None, **params)
                good = status.ravel() == 1
                if thr is not None:
                    back, status_b, _ = cv2.calcOpticalFlowPyrLK(gray[nt], gray[t], p1, None, **params)
                    good &= (status_b.ravel() == 1) & (np.linalg.norm(back - p0, axis=1) <= thr)
                good &= inside(p1, w, h)
                moved[live] = p1
                ok[live] = good
            lost = ~ok
            if lost.any():
                moved[lost] = cur[lost] + neighbour_motion(cur[lost], cur[ok], moved[ok] - cur[ok],
                                                           self.config.neighbours)
            tracks[nt, idx] = moved
            visibility[nt, idx] = ok & inside(moved, w, h)
            alive[idx] = ok
