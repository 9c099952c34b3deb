"""Moving images between frames and atlases: sample an atlas through UVs, scatter a crop into an atlas,
and merge keyframe atlases by a per-texel median over the keyframes that covered each texel.

Texture coordinates follow :mod:`stages.atlas.render`: ``tex`` in [0, 1]^2, (0, 0) the top-left
corner of the atlas image, texel (i, j) centred at ((j + 0.5) / R, (i + 0.5) / R).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from scipy.interpolate import griddata

from stages.atlas.render import sample_texture

log = logging.getLogger(__name__)


def sample_atlas(atlas: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """Bilinear lookup of atlas [R, R, C] at tex [h, w, 2]: float32 [h, w, C], zero outside the atlas
    (the release's ``grid_sample`` with zero padding, ``align_corners=False``)."""
    return sample_texture(atlas, tex, cv2.BORDER_CONSTANT)


def texel_spacing(tex: np.ndarray, keep: np.ndarray, resolution: int) -> float:
    """Median distance in texels between adjacent kept pixels (horizontal and vertical neighbours)
    of tex [h, w, 2], keep bool [h, w]; 1.0 when no two kept pixels touch."""
    steps = []
    for axis in (0, 1):
        if tex.shape[axis] < 2:
            continue
        both = (keep[1:] & keep[:-1]) if axis == 0 else (keep[:, 1:] & keep[:, :-1])
        steps.append(np.linalg.norm(np.diff(tex, axis=axis), axis=-1)[both])
    steps = np.concatenate(steps) if steps else np.zeros(0)
    return float(np.median(steps)) * resolution if len(steps) else 1.0


def scatter(values: np.ndarray, tex: np.ndarray, keep: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Scatter a crop into an empty atlas by linear interpolation over its pixels' texture positions.

    values float [h, w, C]; tex [h, w, 2] their texture coordinates; keep bool [h, w] the pixels
    that take part. Returns (atlas float32 [R, R, C], zero where not covered; covered bool [R, R]):
    a texel is covered when it lies inside the triangulation of the kept pixels (scipy
    ``griddata(..., "linear")``, as the release) and within one pixel spacing of a texel a kept
    pixel falls in (so concave gaps of the object's outline stay uncovered).
    """
    r = int(resolution)
    channels = values.shape[-1]
    atlas = np.zeros((r, r, channels), np.float32)
    covered = np.zeros((r, r), bool)
    pts = tex[keep].reshape(-1, 2).astype(np.float64) * r - 0.5  # texel index coordinates (x, y)
    if len(pts) < 3:
        return atlas, covered
    vals = values[keep].reshape(-1, channels).astype(np.float64)
    x0, y0 = np.clip(np.floor(pts.min(0)).astype(int), 0, r - 1)
    x1, y1 = np.clip(np.ceil(pts.max(0)).astype(int), 0, r - 1)
    gy, gx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    try:
        interp = griddata(pts, vals, (gx, gy), method="linear")  # [gh, gw, C], NaN outside the hull
    except Exception as exc:  # noqa: BLE001 - qhull fails on degenerate (collinear) point sets
        log.warning("scatter: triangulation failed (%s); nothing scattered", exc)
        return atlas, covered
    inside = np.isfinite(interp).all(-1)
    hits = np.zeros((r, r), np.uint8)
    ij = np.clip(np.rint(pts).astype(np.int64), 0, r - 1)
    hits[ij[:, 1], ij[:, 0]] = 1
    radius = max(1, int(np.ceil(texel_spacing(tex, keep, r))))
    near = cv2.dilate(hits, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)) > 0
    box = (slice(y0, y1 + 1), slice(x0, x1 + 1))
    cover_box = inside & near[box]
    atlas[box][cover_box] = interp[cover_box].astype(np.float32)
    covered[box] = cover_box
    return atlas, covered


def covered_median(atlases: np.ndarray, covered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-texel, per-channel median over the keyframes that covered each texel.

    atlases float [K, R, R, C]; covered bool [K, R, R]. Returns (median float32 [R, R, C], zero
    where no keyframe covered; any bool [R, R]). An even number of votes gives the mean of the
    two middle values. The release takes ``torch.median`` over all K, so a texel one keyframe
    did not cover gets that keyframe's zero as a vote.
    """
    k, r = atlases.shape[:2]
    out = np.zeros(atlases.shape[1:], np.float32)
    any_cover = covered.any(0)
    if not any_cover.any():
        return out, any_cover
    ys, xs = np.nonzero(any_cover)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    part = atlases[:, box[0], box[1]].astype(np.float32)
    votes = np.where(covered[:, box[0], box[1], None], part, np.nan)
    inside = any_cover[box]
    med = np.zeros(part.shape[1:], np.float32)
    med[inside] = np.nanmedian(votes[:, inside], axis=0)
    out[box] = med
    return out, any_cover


def paste_box(target: np.ndarray, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of target [H, W, C] with ``image`` resized into box (y0, x0, y1, x1)."""
    y0, x0, y1, x1 = box
    out = target.copy()
    out[y0:y1, x0:x1] = cv2.resize(image, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA
                                   if image.shape[0] > y1 - y0 else cv2.INTER_LANCZOS4)
    return out


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1), end exclusive, of the True pixels of mask [H, W]; None when empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1
