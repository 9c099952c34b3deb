"""Pure functions of the depth stage: geometry in and out of the model, normalisation, colour maps.

Frames are uint8 RGB ``[T, H, W, 3]``. The model sees a square ``[S, S]`` canvas (DPT-Hybrid
accepts only its configured ``image_size``; DPT-Large's neck reshapes tokens into a square
grid), so :func:`prepare_inputs` letterboxes (``pad``) or squashes (``stretch``) each frame
onto that canvas and :func:`map_back` undoes it on the prediction, bicubically as MiDaS does.
Depth here is MiDaS's *relative inverse depth* (disparity up to an unknown scale and shift;
larger = nearer), stored per video as float16 in ``[0, 1]`` with the statistics to undo it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np

ResizeMode = Literal["pad", "stretch"]

_COLORMAPS = {
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
}


@dataclass(frozen=True)
class CanvasMeta:
    """Where a frame of ``height x width`` pixels lies on the ``size x size`` model canvas.

    The frame's content occupies rows ``top .. top + inner_h`` and columns
    ``left .. left + inner_w`` of the canvas (all in canvas pixels).
    """

    height: int
    width: int
    size: int
    top: int
    left: int
    inner_h: int
    inner_w: int

    def to_dict(self) -> dict:
        return asdict(self)


def canvas_meta(height: int, width: int, size: int, mode: ResizeMode = "pad") -> CanvasMeta:
    """The placement of an ``height x width`` frame on a square canvas of ``size`` pixels.

    ``pad`` scales the longer side to ``size`` (aspect ratio kept) and centres the result;
    ``stretch`` fills the canvas (aspect ratio lost, as MiDaS's ``keep_aspect_ratio=False``).
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if size < 1:
        raise ValueError(f"input size must be positive, got {size}")
    if mode == "stretch":
        return CanvasMeta(height, width, size, 0, 0, size, size)
    if mode != "pad":
        raise ValueError(f"resize mode must be 'pad' or 'stretch', got {mode!r}")
    scale = size / max(height, width)
    inner_h = min(size, max(1, int(round(height * scale))))
    inner_w = min(size, max(1, int(round(width * scale))))
    return CanvasMeta(height, width, size, (size - inner_h) // 2, (size - inner_w) // 2, inner_h, inner_w)


def prepare_inputs(frames: np.ndarray, size: int, mode: ResizeMode = "pad") -> tuple[np.ndarray, CanvasMeta]:
    """Place uint8 frames ``[T, H, W, 3]`` on the model's square canvas.

    Returns ``(canvas uint8 [T, size, size, 3], meta)``. Resizing is area-averaged when
    shrinking and bicubic when enlarging; the letterbox border replicates the edge pixels, so
    the model sees no artificial black edge (the border is cropped away by :func:`map_back`).
    """
    frames = check_frames(frames)
    t, h, w, _ = frames.shape
    meta = canvas_meta(h, w, size, mode)
    shrink = meta.inner_h * meta.inner_w < h * w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    bottom = size - meta.top - meta.inner_h
    right = size - meta.left - meta.inner_w
    out = np.empty((t, size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        inner = frame if (meta.inner_h, meta.inner_w) == (h, w) else cv2.resize(
            frame, (meta.inner_w, meta.inner_h), interpolation=interp)
        if bottom or right or meta.top or meta.left:
            inner = cv2.copyMakeBorder(inner, meta.top, bottom, meta.left, right, cv2.BORDER_REPLICATE)
        out[i] = inner
    return out, meta


def map_back(pred, meta: CanvasMeta):
    """Prediction on the canvas -> prediction on the frame.

    ``pred`` is float ``[B, h, w]`` (a torch tensor or a numpy array) covering the whole canvas;
    ``h, w`` need not equal the canvas size (small test models predict at other strides).
    Returns float32 ``[B, meta.height, meta.width]`` of the same kind, on the same device.
    Bicubic throughout, as MiDaS's ``interpolate(..., mode="bicubic")``; the result is clamped to
    each frame's predicted range, so bicubic overshoot at depth edges cannot stretch the per-video
    min-max normalisation.
    """
    import torch
    import torch.nn.functional as F

    as_numpy = isinstance(pred, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(pred)) if as_numpy else pred
    if x.ndim != 3:
        raise ValueError(f"prediction must be [B, h, w], got shape {tuple(x.shape)}")
    x = x.float().unsqueeze(1)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    if tuple(x.shape[-2:]) != (meta.size, meta.size):
        x = F.interpolate(x, size=(meta.size, meta.size), mode="bicubic", align_corners=False)
    x = x[..., meta.top:meta.top + meta.inner_h, meta.left:meta.left + meta.inner_w]
    if tuple(x.shape[-2:]) != (meta.height, meta.width):
        x = F.interpolate(x, size=(meta.height, meta.width), mode="bicubic", align_corners=False)
    x = torch.maximum(torch.minimum(x, hi), lo).squeeze(1)
    return x.cpu().numpy() if as_numpy else x


def normalise(depth: np.ndarray) -> tuple[np.ndarray, dict]:
    """Per-video normalisation of relative inverse depth.

    ``depth`` is float ``[T, H, W]`` (or ``[H, W]``) in the model's arbitrary units. Returns
    ``(float16 in [0, 1], stats)`` with ``norm = (depth - min) / (max - min)`` over the whole
    video (so frames stay comparable), and ``stats`` = ``min``, ``max``, ``mean``, ``std``,
    ``p02``, ``p98`` of the raw values plus ``scale = max - min`` and ``shift = min``
    (``raw = norm * scale + shift``, see :func:`denormalise`). A constant map gives zeros and
    ``scale = 0``. Raises ValueError on NaN or infinite values.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth.size == 0:
        raise ValueError("depth is empty")
    if not np.all(np.isfinite(depth)):
        raise ValueError(f"depth has {int(np.size(depth) - np.isfinite(depth).sum())} non-finite values")
    lo, hi = float(depth.min()), float(depth.max())
    scale = hi - lo
    norm = (depth - lo) / scale if scale > 0 else np.zeros_like(depth)
    p02, p98 = np.percentile(depth, [2.0, 98.0])
    stats = {
        "kind": "relative_inverse_depth",
        "shape": list(depth.shape),
        "min": lo, "max": hi, "mean": float(depth.mean()), "std": float(depth.std()),
        "p02": float(p02), "p98": float(p98),
        "scale": scale, "shift": lo,
    }
    return np.clip(norm, 0.0, 1.0).astype(np.float16), stats


def denormalise(norm: np.ndarray, stats: dict) -> np.ndarray:
    """Inverse of :func:`normalise`: float32 raw relative inverse depth of the same shape."""
    return np.asarray(norm, np.float32) * float(stats["scale"]) + float(stats["shift"])


def colorize(norm: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """uint8 RGB ``[..., H, W, 3]`` of normalised inverse depth ``[..., H, W]`` in ``[0, 1]``.

    Near (large inverse depth) is bright. ``colormap`` is one of inferno, magma, turbo,
    viridis or gray.
    """
    norm = np.asarray(norm, np.float32)
    grey = np.clip(np.nan_to_num(norm) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if colormap == "gray":
        return np.repeat(grey[..., None], 3, axis=-1)
    if colormap not in _COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r} (known: gray, {', '.join(_COLORMAPS)})")
    flat = grey.reshape(-1, grey.shape[-1])
    bgr = cv2.applyColorMap(flat, _COLORMAPS[colormap])
    return bgr[..., ::-1].reshape(*grey.shape, 3).copy()


def check_frames(frames: np.ndarray) -> np.ndarray:
    """``frames`` as a contiguous uint8 ``[T, H, W, 3]`` array; raises ValueError otherwise."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must be non-empty, got shape {frames.shape}")
    return np.ascontiguousarray(frames)


def as_rgb_image(image: np.ndarray) -> np.ndarray:
    """A single image ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` (alpha dropped) as uint8 ``[H, W, 3]``."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image must be [H, W], [H, W, 3] or [H, W, 4], got {image.shape}")
    return np.ascontiguousarray(image[..., :3])


def frames_digest(frames: np.ndarray) -> str:
    """SHA-1 hex of a frame array's shape, dtype and bytes: the identity of what was decoded."""
    frames = np.ascontiguousarray(frames)
    digest = hashlib.sha1(f"{frames.shape}|{frames.dtype}".encode())
    digest.update(memoryview(frames).cast("B"))
    return digest.hexdigest()
