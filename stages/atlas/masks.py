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

import logging
import os

import cv2
import numpy as np

from pipeline import media, storage
from pipeline.storage import StorageOptions
from stages.atlas.config import SegmentationConfig, TrackerSettings
from stages.atlas.flow import FlowField, warp
from stages.atlas.segmentation import carry, segment
from stages.atlas.tracks import object_motion

log = logging.getLogger(__name__)

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
            moved = carry(current, model)
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



MOTION_MODELS = ("homography", "affine")
MIN_CORRESPONDENCES = 12  # fewer valid flow samples in a region: that pair's step is the identity
MAX_CORRESPONDENCES = 4000  # flow samples per RANSAC fit
MIN_HOMOGRAPHY_INLIERS = 40  # and at least a third of the samples; fewer: the pair falls back to the affine
MAX_STEP_PERSPECTIVE = 1.25  # max / min homogeneous w over a frame's corners for one frame pair
MAX_CHAIN_PERSPECTIVE = 4.0  # same for the chained map: beyond it frame t's far corners near the horizon
MAX_AFFINE_DISAGREEMENT = 0.1  # a step's corners may leave the affine's by at most this share of the frame side
HOMOGRAPHY_GAIN = 0.85  # a pair uses its homography only when it leaves at most this share of the affine's residual
RESIDUAL_CAP_PX = 2.0  # per-sample residuals are capped here (outliers count the same for both models)


def _correspondences(flow: np.ndarray, valid: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """float32 [K, 2] source pixels (x, y) of ``region & valid`` and where ``flow`` [H, W, 2] sends them.

    At most ``MAX_CORRESPONDENCES``, spread evenly over the region (row-major); None when fewer
    than ``MIN_CORRESPONDENCES`` pixels qualify. ``valid`` is the flow's forward-backward check,
    which already drops the untextured and occluded pixels whose flow is a guess.
    """
    ys, xs = np.nonzero(region & valid)
    if len(xs) < MIN_CORRESPONDENCES:
        return None
    if len(xs) > MAX_CORRESPONDENCES:
        keep = np.linspace(0, len(xs) - 1, MAX_CORRESPONDENCES).astype(int)
        ys, xs = ys[keep], xs[keep]
    src = np.stack([xs, ys], -1).astype(np.float32)
    return src, src + flow[ys, xs]


def _fit_affine(pairs: tuple[np.ndarray, np.ndarray] | None, similarity: bool) -> np.ndarray:
    """3x3 RANSAC affine (or similarity) of correspondences; identity when there are none or it fails."""
    step = np.eye(3)
    if pairs is None:
        return step
    fit = cv2.estimateAffinePartial2D if similarity else cv2.estimateAffine2D
    model, _ = fit(*pairs, method=cv2.RANSAC, ransacReprojThreshold=1.0)
    if model is not None:
        step[:2] = model
    return step


def _ransac_affine(flow: np.ndarray, valid: np.ndarray, region: np.ndarray, similarity: bool) -> np.ndarray:
    """3x3 affine (or similarity) fitted to ``flow`` [H, W, 2] over ``region & valid``; identity if too few."""
    return _fit_affine(_correspondences(flow, valid, region), similarity)


def _fit_homography(pairs: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray | None:
    """3x3 RANSAC homography (``[2, 2] = 1``) of correspondences, or None.

    None when there are too few samples or inliers (fewer than ``MIN_HOMOGRAPHY_INLIERS`` or a
    third of the samples): a homography from a handful of points extrapolates wildly.
    """
    if pairs is None:
        return None
    model, inliers = cv2.findHomography(*pairs, cv2.RANSAC, 1.0, maxIters=2000, confidence=0.995)
    if model is None or abs(model[2, 2]) < 1e-12:
        return None
    if int(inliers.sum()) < max(MIN_HOMOGRAPHY_INLIERS, len(pairs[0]) / 3):
        return None
    return model / model[2, 2]


def _ransac_homography(flow: np.ndarray, valid: np.ndarray, region: np.ndarray) -> np.ndarray | None:
    """:func:`_fit_homography` of ``flow`` [H, W, 2] over ``region & valid``."""
    return _fit_homography(_correspondences(flow, valid, region))


def residual(m: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean px distance between ``m`` applied to the sources and the targets, each capped at ``RESIDUAL_CAP_PX``."""
    src, dst = pairs
    return float(np.minimum(np.linalg.norm(apply(m, src.astype(np.float64)) - dst, axis=1), RESIDUAL_CAP_PX).mean())


def corners(shape: tuple[int, int]) -> np.ndarray:
    """float64 [4, 2] pixel corners (x, y) of an (H, W) frame."""
    h, w = shape
    return np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)


def perspective_ratio(m: np.ndarray, points: np.ndarray) -> float:
    """max / min homogeneous w of 3x3 ``m`` over ``points`` [K, 2]; inf when a point reaches the horizon.

    1 for an affine; the foreshortening the map applies across the points otherwise.
    """
    w = points @ m[2, :2] + m[2, 2]
    return float(w.max() / w.min()) if w.min() > 1e-9 * max(1.0, abs(w.max())) else float("inf")


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[K, 2] points carried by 3x3 ``m`` with the homogeneous divide (float64)."""
    p = points @ m[:, :2].T + m[:, 2]
    return p[:, :2] / p[:, 2:]


def homography_ok(step: np.ndarray, affine: np.ndarray, chained: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether a frame pair's homography ``step`` (frame t -> t + 1 px) may be used.

    It must keep orientation (the 2x2 part's determinant and the corners' w positive), change
    perspective little across the frame's corners (``MAX_STEP_PERSPECTIVE``), stay near the
    pair's affine ``affine`` at the corners (within ``MAX_AFFINE_DISAGREEMENT`` x the larger
    side: no wild extrapolation from points in one part of the frame), and the chain it makes,
    ``chained`` (frame 0 -> t + 1), must not send frame t + 1's corners back near the horizon
    (``MAX_CHAIN_PERSPECTIVE`` over frame t + 1's corners of the inverse chain).
    """
    c = corners(shape)
    if not np.all(np.isfinite(step)) or np.linalg.det(step[:2, :2]) <= 0 or np.linalg.det(step) <= 0:
        return False
    if perspective_ratio(step, c) > MAX_STEP_PERSPECTIVE:
        return False
    if np.abs(apply(step, c) - apply(affine, c)).max() > MAX_AFFINE_DISAGREEMENT * max(shape):
        return False
    if not np.all(np.isfinite(chained)) or np.linalg.det(chained) <= 0:
        return False
    back = np.linalg.inv(chained)
    return perspective_ratio(back / back[2, 2], c) <= MAX_CHAIN_PERSPECTIVE


def _chain(flow: FlowField, regions: np.ndarray, model: str, similarity: bool) -> tuple[np.ndarray, dict]:
    """Chained frame-0 -> frame-t motions float64 [T, 3, 3] of one layer, and how many pairs used what.

    regions: bool [T - 1, H, W], the pixels whose forward flow the layer's step is fitted to.
    ``model`` "affine": each step is the RANSAC affine (similarity with ``similarity``);
    "homography": the RANSAC homography where it explains the pair's flow clearly better than
    that affine (capped mean residual at most ``HOMOGRAPHY_GAIN`` of the affine's: a
    translating or zooming view keeps its exact affine instead of a noise-fitted perspective)
    and :func:`homography_ok` accepts it; else the affine.
    """
    shape = regions.shape[1:]
    out, counts = [np.eye(3)], {"homography": 0, "affine": 0, "fallback": 0}
    for t in range(len(regions)):
        pairs = _correspondences(flow.forward[t], flow.forward_valid[t], regions[t])
        affine = _fit_affine(pairs, similarity)
        step, used = affine, "affine"
        if model == "homography":
            homography = _fit_homography(pairs)
            if homography is None:
                used = "fallback"
            elif residual(homography, pairs) <= HOMOGRAPHY_GAIN * residual(affine, pairs):
                chained = homography @ out[-1]
                if homography_ok(homography, affine, chained / chained[2, 2], shape):
                    step, used = homography, "homography"
                else:
                    used = "fallback"
        counts[used] += 1
        nxt = step @ out[-1]
        out.append(nxt / nxt[2, 2])
    return np.stack(out), counts


def layer_motions(flow: FlowField, masks: np.ndarray, bg_model: str = "homography", fg_model: str = "affine"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame motions of the two layers, fitted to the flow inside and outside the masks.

    Returns (fg, bg) float64 [T, 3, 3] maps (``[2, 2] = 1``) taking frame-0 pixel coordinates
    to frame t, chained from one RANSAC fit per frame pair. ``bg_model`` / ``fg_model``
    (``AtlasConfig.motion_model`` / ``fg_motion_model``): "homography" (a camera rotating or
    moving over a far or planar scene; a pair keeps the affine where the homography explains
    its flow no better, or is degenerate, see :func:`_chain`) or "affine" (the background's is a similarity, the
    object's a full affine). They give the mappings a motion-compensated starting point.
    """
    for model in (bg_model, fg_model):
        if model not in MOTION_MODELS:
            raise ValueError(f"motion model must be one of {MOTION_MODELS}, got {model!r}")
    kernel = np.ones((5, 5), np.uint8)
    m = masks[:-1].astype(np.uint8)
    inside = np.stack([cv2.erode(k, kernel) > 0 for k in m]) if len(m) else np.zeros((0, *masks.shape[1:]), bool)
    outside = np.stack([cv2.dilate(k, kernel) == 0 for k in m]) if len(m) else inside
    fg, fg_counts = _chain(flow, inside, fg_model, similarity=False)
    bg, bg_counts = _chain(flow, outside, bg_model, similarity=True)
    log.info("layer motions over %d frame pairs: fg %s, bg %s (fallback: a degenerate homography)", len(m),
             fg_counts, bg_counts)
    return fg, bg
