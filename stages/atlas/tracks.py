"""Sparse pyramidal Lucas-Kanade grid tracks summarised as a piecewise motion field.

The coarse step of the atlas stage's coarse-to-fine flow (see :mod:`stages.atlas.flow`): corners
of frame ``a`` are tracked into frame ``b`` by pyramidal LK with ``levels`` pyramid levels (a
21 px window at level 4 follows motions of ~100 px), kept when the backward track returns
within ``fb_px``; the tracks are explained by a RANSAC homography (the background, the largest
motion) and then, among the rest, by up to ``max_clusters`` RANSAC affines (objects, or other
background planes). The motion field is the homography's flow everywhere, overwritten inside
each cluster's convex hull (grown by ``margin`` of the frame's larger side) by that cluster's
affine flow, larger clusters first. Pure functions of numpy arrays; pixels (x, y).
"""

from __future__ import annotations

import cv2
import numpy as np

from stages.atlas.config import TrackerSettings

DEFAULT_TRACKER = TrackerSettings()


def track_corners(ga: np.ndarray, gb: np.ndarray, settings: TrackerSettings) -> tuple[np.ndarray, np.ndarray]:
    """Tracks of grid points from grey uint8 frame ``ga`` [H, W] to ``gb``: (src, dst) float32 [N, 2] pixels.

    About ``max_points`` points on a regular grid (corners alone miss weakly textured objects
    next to a strongly textured background); LK drops the flat ones (its eigenvalue test), and
    only tracks passing the forward-backward check (``fb_px``) are returned.
    """
    h, w = ga.shape
    spacing = max(2.0, float(np.sqrt(h * w / settings.max_points)))
    ys, xs = np.mgrid[spacing / 2:h:spacing, spacing / 2:w:spacing]
    pts = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)[:, None]
    params = dict(winSize=(settings.window, settings.window), maxLevel=settings.levels,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    fwd, ok_f, _ = cv2.calcOpticalFlowPyrLK(ga, gb, pts, None, **params)
    back, ok_b, _ = cv2.calcOpticalFlowPyrLK(gb, ga, fwd, None, **params)
    if fwd is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    good = (ok_f[:, 0] == 1) & (ok_b[:, 0] == 1) & (np.linalg.norm(back - pts, axis=-1)[:, 0] <= settings.fb_px)
    inside = (fwd[:, 0, 0] >= 0) & (fwd[:, 0, 0] <= w - 1) & (fwd[:, 0, 1] >= 0) & (fwd[:, 0, 1] <= h - 1)
    keep = good & inside
    return pts[keep, 0].astype(np.float32), fwd[keep, 0].astype(np.float32)


def motion_clusters(src: np.ndarray, dst: np.ndarray, settings: TrackerSettings
                    ) -> tuple[np.ndarray | None, list[tuple[np.ndarray, np.ndarray]]]:
    """The background homography [3, 3] (None when too few tracks) and the other motions.

    Returns (homography, [(affine [2, 3], member src points [K, 2]), ...]) with clusters in
    order of size, largest first, each with at least ``min_cluster`` tracks.
    """
    if len(src) < max(8, settings.min_cluster):
        return None, []
    hom, inl = cv2.findHomography(src, dst, cv2.RANSAC, settings.ransac_px, maxIters=2000, confidence=0.995)
    if hom is None:
        return None, []
    rest = inl[:, 0] == 0
    clusters = []
    for _ in range(settings.max_clusters):
        s, d = src[rest], dst[rest]
        if len(s) < settings.min_cluster:
            break
        aff, inl2 = cv2.estimateAffine2D(s, d, method=cv2.RANSAC, ransacReprojThreshold=settings.ransac_px)
        if aff is None or int(inl2.sum()) < settings.min_cluster:
            break
        members = inl2[:, 0] == 1
        clusters.append((aff, s[members]))
        idx = np.flatnonzero(rest)
        rest[idx[members]] = False
    return hom, clusters


def homography_flow(hom: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [H, W, 2]: where a homography [3, 3] takes every pixel, minus the pixel."""
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    den = hom[2, 0] * xs + hom[2, 1] * ys + hom[2, 2]
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    u = (hom[0, 0] * xs + hom[0, 1] * ys + hom[0, 2]) / den - xs
    v = (hom[1, 0] * xs + hom[1, 1] * ys + hom[1, 2]) / den - ys
    return np.stack([u, v], -1).astype(np.float32)


def tracked_motion_field(ga: np.ndarray, gb: np.ndarray, settings: TrackerSettings) -> np.ndarray | None:
    """Piecewise motion field float32 [H, W, 2] from ``ga`` to ``gb`` (grey uint8), or None without tracks."""
    h, w = ga.shape
    src, dst = track_corners(ga, gb, settings)
    hom, clusters = motion_clusters(src, dst, settings)
    if hom is None:
        return None
    field = homography_flow(hom, h, w)
    grow = max(1, int(round(settings.region_margin * max(h, w))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    for aff, members in clusters:
        region = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(region, cv2.convexHull(np.round(members).astype(np.int32)), 1)
        region = cv2.dilate(region, kernel) > 0
        field[region, 0] = (aff[0, 0] * xs + aff[0, 1] * ys + aff[0, 2] - xs)[region]
        field[region, 1] = (aff[1, 0] * xs + aff[1, 1] * ys + aff[1, 2] - ys)[region]
    return field


def object_motion(ga: np.ndarray, gb: np.ndarray, mask: np.ndarray, settings: TrackerSettings
                  ) -> np.ndarray | None:
    """Similarity [2, 3] taking the masked object of grey frame ``ga`` to its place in ``gb``, or None.

    Coarse: the object's pixels (bool ``mask`` [H, W]) are matched as a masked template over a
    window ``search`` x the larger side around their box (sum of squared differences, every
    shift: fast motion cannot lose it). Fine: grid points inside the eroded mask are tracked by
    LK started at that shift, checked forward-backward, and a RANSAC similarity (rotation, scale,
    shift: better conditioned than a full affine on a small, striped object) is fitted to them
    (the shift alone when fewer than ``min_cluster`` survive).
    """
    h, w = ga.shape
    ys, xs = np.nonzero(mask)
    if len(xs) < 4:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    reach = max(4, int(round(settings.search * max(h, w))))
    sx0, sy0 = max(0, x0 - reach), max(0, y0 - reach)
    sx1, sy1 = min(w, x1 + reach), min(h, y1 + reach)
    template = ga[y0:y1, x0:x1]
    weight = mask[y0:y1, x0:x1].astype(np.uint8)
    window = gb[sy0:sy1, sx0:sx1]
    if window.shape[0] < template.shape[0] or window.shape[1] < template.shape[1]:
        return None
    score = cv2.matchTemplate(window, template, cv2.TM_SQDIFF, mask=weight)
    score = np.where(np.isfinite(score), score, np.inf)
    my, mx = np.unravel_index(int(np.argmin(score)), score.shape)
    shift = np.array([sx0 + mx - x0, sy0 + my - y0], np.float32)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    spacing = max(1.0, float(np.sqrt(max(int(inner.sum()), 1) / 400)))
    gy, gx = np.mgrid[y0:y1:spacing, x0:x1:spacing]
    gy, gx = np.round(gy).astype(int).ravel(), np.round(gx).astype(int).ravel()
    keep = inner[np.clip(gy, 0, h - 1), np.clip(gx, 0, w - 1)]
    pts = np.stack([gx[keep], gy[keep]], -1).astype(np.float32)
    translation = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float64)
    if len(pts) < settings.min_cluster:
        return translation
    side = int(min(settings.window, max(7, min(x1 - x0, y1 - y0) // 4))) | 1  # windows mostly on the object
    params = dict(winSize=(side, side), maxLevel=1,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    guess = (pts + shift)[:, None].copy()
    fwd, ok_f, _ = cv2.calcOpticalFlowPyrLK(ga, gb, pts[:, None], guess, flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                                            **params)
    back, ok_b, _ = cv2.calcOpticalFlowPyrLK(gb, ga, fwd, pts[:, None].copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                                             **params)
    good = (ok_f[:, 0] == 1) & (ok_b[:, 0] == 1) & (np.linalg.norm(back[:, 0] - pts, axis=-1) <= settings.fb_px)
    if good.sum() < settings.min_cluster:
        return translation
    model, inl = cv2.estimateAffinePartial2D(pts[good], fwd[good, 0], method=cv2.RANSAC,
                                             ransacReprojThreshold=settings.ransac_px)
    if model is None or int(inl.sum()) < settings.min_cluster:
        return translation
    return model
