"""Rough foreground masks for alpha bootstrapping.

Sources, in the order ``mask_source="auto"`` tries them:

* the row's ``mask_uri``: an image (PNG, 255 = foreground; an RGBA image uses its alpha) of
  the first frame, propagated to later frames along the backward optical flow, or a mask
  video (one mask frame per video frame);
* otherwise a motion segmentation (:mod:`stages.atlas.segmentation`): what a small set of
  RANSAC homographies of the background (a near and a far plane under parallax) cannot
  explain, made consistent over time; a clip with no such object is a row error asking for
  ``mask_uri``.

A mask must have the frames' size, or the same aspect ratio (it is then resized); a mask of
another aspect ratio, or one with no foreground (or nothing but foreground), is a
:class:`MaskError` for that row.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from pipeline import media, storage
from pipeline.storage import StorageOptions
from stages.atlas.config import SegmentationConfig, TrackerSettings
from stages.atlas.flow import FlowField, warp
from stages.atlas.segmentation import segment
from stages.atlas.tracks import object_motion

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")
MIN_FRACTION = 1e-4  # a mask with fewer foreground pixels than this fraction is "empty"


class MaskError(ValueError):
    """A mask is unreadable, of the wrong size, or empty."""


def fit_mask(mask: np.ndarray, height: int, width: int, where: str) -> np.ndarray:
    """A [h, w] mask resized to [height, width] (nearest), or MaskError when the aspect differs."""
    h, w = mask.shape[:2]
    if (h, w) == (height, width):
        return mask
    if abs(w / h - width / height) > 0.01 * (width / height):
        raise MaskError(f"{where} is {w}x{h} but the frames are {width}x{height} (aspect ratios differ)")
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def check_not_empty(masks: np.ndarray, where: str) -> None:
    """MaskError when bool masks [T, H, W] hold (almost) no foreground, or nothing else."""
    frac = float(masks.mean())
    if frac < MIN_FRACTION:
        raise MaskError(f"{where} has no foreground pixels (255 = foreground)")
    if frac > 1.0 - MIN_FRACTION:
        raise MaskError(f"{where} is foreground everywhere; a mask marks the object only")


def decode_mask_image(data: bytes, where: str) -> np.ndarray:
    """bool [H, W] from PNG/JPEG bytes: the alpha channel of RGBA, else the grey level > 127."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise MaskError(f"{where} is not a readable image")
    if image.ndim == 3:
        image = image[..., 3] if image.shape[2] == 4 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.dtype != np.uint8:
        image = (image.astype(np.float32) / max(1.0, float(image.max())) * 255).astype(np.uint8)
    return image > 127


def propagate(first: np.ndarray, flow: FlowField, frames: np.ndarray | None = None,
              tracker: TrackerSettings | None = None) -> np.ndarray:
    """Carry a first-frame bool mask [H, W] through the clip: bool [T, H, W].

    With ``frames`` (uint8 [T, H, W, 3]) and ``tracker``, the object is tracked directly per
    frame pair (:func:`stages.atlas.tracks.object_motion`: masked template search, then LK and
    a RANSAC affine), which follows objects moving tens of pixels a frame. Otherwise (or when
    that finds nothing) an affine is fitted (RANSAC) to the forward flow of the mask's pixels
    whose flow passes the consistency check. Either way the mask moves by one affine per frame,
    which does not drift the way chaining dense flow pixel by pixel does; with neither, the
    mask is pulled along the backward flow.
    """
    masks = [first.astype(bool)]
    kernel = np.ones((3, 3), np.uint8)
    h, w = first.shape
    grey = None if frames is None or tracker is None else [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    for t in range(flow.backward.shape[0]):
        current = masks[-1]
        model = object_motion(grey[t], grey[t + 1], current, tracker) if grey is not None else None
        if model is None:
            inner = cv2.erode(current.astype(np.uint8), kernel) > 0
            ys, xs = np.nonzero(inner & flow.forward_valid[t])
            if len(xs) >= 12:
                if len(xs) > 4000:
                    keep = np.linspace(0, len(xs) - 1, 4000).astype(int)
                    ys, xs = ys[keep], xs[keep]
                src = np.stack([xs, ys], -1).astype(np.float32)
                dst = src + flow.forward[t][ys, xs]
                model, _ = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.0)
        if model is not None:
            moved = cv2.warpAffine(current.astype(np.float32), model, (w, h), flags=cv2.INTER_LINEAR) > 0.5
        else:
            pulled = warp(current.astype(np.float32), flow.backward[t], cv2.BORDER_CONSTANT) > 0.5
            moved = cv2.morphologyEx(pulled.astype(np.uint8), cv2.MORPH_CLOSE, kernel) > 0
        masks.append(moved)
    return np.stack(masks)


def load_mask_video(url: str, num_frames: int, height: int, width: int,
                    options: StorageOptions | None) -> np.ndarray:
    """bool [T, H, W] from a mask video (grey > 127 = foreground); MaskError when too short."""
    with storage.local_copy(url, options) as (local, _):
        frames, _, _ = media.decode(local, media.DecodeOptions(max_frames=num_frames))
    if len(frames) < num_frames:
        raise MaskError(f"mask video {url} has {len(frames)} frames, the video {num_frames}")
    grey = frames[:num_frames].mean(-1) > 127
    return np.stack([fit_mask(m.astype(np.uint8), height, width, f"mask video {url}") > 0 for m in grey])


def manifest_masks(url: str, flow: FlowField, shape: tuple[int, int, int], options: StorageOptions | None = None,
                   frames: np.ndarray | None = None, tracker: TrackerSettings | None = None) -> np.ndarray:
    """bool [T, H, W] from a row's ``mask_uri`` (first-frame image or mask video; see :func:`propagate`)."""
    t, h, w = shape
    try:
        if os.path.splitext(url.lower())[1] in VIDEO_EXTENSIONS:
            masks = load_mask_video(url, t, h, w, options)
        else:
            first = decode_mask_image(storage.read_bytes(url, options), f"mask {url}")
            first = fit_mask(first.astype(np.uint8), h, w, f"mask {url}") > 0
            check_not_empty(first[None], f"mask {url}")
            masks = propagate(first, flow, frames, tracker)
    except FileNotFoundError as exc:
        raise MaskError(f"mask {url} not found") from exc
    except media.VideoDecodeError as exc:
        raise MaskError(f"mask video {url} is not decodable: {exc}") from exc
    check_not_empty(masks, f"mask {url}")
    return masks


def motion_masks(flow: FlowField, threshold_px: float = 1.0, config: SegmentationConfig | None = None,
                 frames: np.ndarray | None = None, tracker: TrackerSettings | None = None) -> np.ndarray:
    """bool [T, H, W]: the object moving against the background planes (:mod:`stages.atlas.segmentation`).

    NoObjectError (a row error asking for ``mask_uri``) when no consistent moving object is found.
    """
    return segment(flow.forward, flow.backward, flow.forward_valid, flow.backward_valid,
                   config or SegmentationConfig(), threshold_px, frames, tracker)


def row_masks(row: dict, flow: FlowField, shape: tuple[int, int, int], source: str, threshold_px: float,
              options: StorageOptions | None = None, segmentation: SegmentationConfig | None = None,
              frames: np.ndarray | None = None, tracker: TrackerSettings | None = None
              ) -> tuple[np.ndarray, str]:
    """The bootstrap masks of a row and where they came from ("manifest" or "motion"); the row's mask wins."""
    uri = row.get("mask_uri")
    uri = uri.strip() if isinstance(uri, str) else None
    if source == "manifest" and not uri:
        raise MaskError("atlas.mask_source is 'manifest' but the row has no mask_uri")
    if uri and source in ("auto", "manifest"):
        return manifest_masks(uri, flow, shape, options, frames, tracker), "manifest"
    return motion_masks(flow, threshold_px, segmentation, frames, tracker), "motion"



def _ransac_affine(flow: np.ndarray, valid: np.ndarray, region: np.ndarray, similarity: bool) -> np.ndarray:
    """3x3 affine (or similarity) fitted to ``flow`` [H, W, 2] over ``region & valid``; identity if too few."""
    ys, xs = np.nonzero(region & valid)
    step = np.eye(3)
    if len(xs) < 12:
        return step
    if len(xs) > 4000:
        keep = np.linspace(0, len(xs) - 1, 4000).astype(int)
        ys, xs = ys[keep], xs[keep]
    src = np.stack([xs, ys], -1).astype(np.float32)
    dst = src + flow[ys, xs]
    fit = cv2.estimateAffinePartial2D if similarity else cv2.estimateAffine2D
    model, _ = fit(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.0)
    if model is not None:
        step[:2] = model
    return step


def layer_motions(flow: FlowField, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame motions of the two layers, fitted to the flow inside and outside the masks.

    Returns (fg, bg) float64 [T, 2, 3] affines mapping frame-0 pixel coordinates to frame t
    (fg: affine of the masked object; bg: similarity of the rest). They give the mappings a
    motion-compensated starting point: the object's tracks summarised per frame.
    """
    t_n = masks.shape[0]
    kernel = np.ones((5, 5), np.uint8)
    fg, bg = [np.eye(3)], [np.eye(3)]
    for t in range(t_n - 1):
        m = masks[t].astype(np.uint8)
        inside, outside = cv2.erode(m, kernel) > 0, cv2.dilate(m, kernel) == 0
        fg.append(_ransac_affine(flow.forward[t], flow.forward_valid[t], inside, False) @ fg[-1])
        bg.append(_ransac_affine(flow.forward[t], flow.forward_valid[t], outside, True) @ bg[-1])
    return np.stack(fg)[:, :2], np.stack(bg)[:, :2]
