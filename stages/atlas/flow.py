"""Dense optical flow (OpenCV DIS or Farneback), forward and backward, with a consistency check.

Coarse-to-fine for fast motion (``guide=True``, the default): before the dense flow, corners
are tracked by pyramidal Lucas-Kanade (:mod:`stages.atlas.tracks`, ``levels`` pyramid levels,
so motions of tens of pixels are found) and summarised as one RANSAC homography for the
background plus an affine per independently moving cluster; that piecewise motion is the
dense flow's initial estimate, which DIS (or Farneback) then refines. Without it the dense
flow's own pyramid, capped by the frame size, loses small objects moving over ~10 px a frame.

Flow arrays are float32 [T - 1, H, W, 2] of (dx, dy) pixels: ``forward[t]`` moves a pixel of
frame t to frame t + 1, ``backward[t]`` a pixel of frame t + 1 to frame t. A pixel's flow is
valid when it lands inside the frame and the other direction brings it back within
``threshold_px`` (the standard forward-backward check, which removes occlusions).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stages.atlas.tracks import DEFAULT_TRACKER, TrackerSettings, tracked_motion_field


@dataclass
class FlowField:
    forward: np.ndarray  # float32 [T-1, H, W, 2]
    backward: np.ndarray  # float32 [T-1, H, W, 2]
    forward_valid: np.ndarray  # bool [T-1, H, W]
    backward_valid: np.ndarray  # bool [T-1, H, W]


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def pair_flow(a: np.ndarray, b: np.ndarray, method: str = "dis", guide: TrackerSettings | None = None
              ) -> np.ndarray:
    """Flow from uint8 RGB frame ``a`` to ``b``: float32 [H, W, 2] (dx, dy) pixels.

    ``guide``: tracker settings for the coarse initial estimate (None: the flow's own pyramid only).
    """
    if method not in ("dis", "farneback"):
        raise ValueError(f"unknown flow method {method!r} (dis, farneback)")
    ga, gb = _gray(a), _gray(b)
    init = tracked_motion_field(ga, gb, guide) if guide is not None else None
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(ga, gb, None if init is None else init.copy())
    else:
        flags = 0 if init is None else cv2.OPTFLOW_USE_INITIAL_FLOW
        flow = cv2.calcOpticalFlowFarneback(ga, gb, None if init is None else init.copy(), 0.5, 4, 15, 5, 5, 1.2,
                                            flags)
    return flow.astype(np.float32)


def warp(image: np.ndarray, flow: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Sample ``image`` [H, W, ...] at ``(x, y) + flow`` (bilinear): the image pulled back along flow."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=border)


def consistency(flow_ab: np.ndarray, flow_ba: np.ndarray, threshold_px: float) -> np.ndarray:
    """bool [H, W]: the a->b flow lands in frame and b->a brings it back within ``threshold_px``."""
    h, w = flow_ab.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    tx, ty = xs + flow_ab[..., 0], ys + flow_ab[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    back = warp(flow_ba, flow_ab)
    err = np.linalg.norm(flow_ab + back, axis=-1)
    return inside & (err <= threshold_px)


def dense_flow(frames: np.ndarray, method: str = "dis", threshold_px: float = 1.0,
               guide: TrackerSettings | None = DEFAULT_TRACKER) -> FlowField:
    """Forward and backward flow of uint8 [T, H, W, 3] frames with validity masks (guided by tracks)."""
    t, h, w = frames.shape[:3]
    fwd = np.zeros((max(t - 1, 0), h, w, 2), np.float32)
    bwd = np.zeros_like(fwd)
    for i in range(t - 1):
        fwd[i] = pair_flow(frames[i], frames[i + 1], method, guide)
        bwd[i] = pair_flow(frames[i + 1], frames[i], method, guide)
    fv = np.stack([consistency(fwd[i], bwd[i], threshold_px) for i in range(t - 1)]) if t > 1 else \
        np.zeros((0, h, w), bool)
    bv = np.stack([consistency(bwd[i], fwd[i], threshold_px) for i in range(t - 1)]) if t > 1 else \
        np.zeros((0, h, w), bool)
    return FlowField(fwd, bwd, fv, bv)
