"""Motion segmentation of a clip without a mask: the object is what the background model cannot explain.

Per frame pair, the background is a small set of planes: RANSAC homographies fitted to the
dense flow (sampled on a grid, valid pixels only), the first to all samples, each further one
to the samples no accepted plane explains. A further plane is accepted only when it explains
``plane_min_fraction`` of the samples *and* touches at least two frame borders — background
planes (a road, distant mountains, a wall) run out of the frame, an object in the shot does
not — so camera parallax between a near and a far plane is background, not foreground. A
pixel's residual is its distance in pixels from the best plane's prediction; it is evidence of
foreground above ``max(threshold_px, noise_factor x median residual)`` (the flow's own noise).
Each frame is judged against both neighbours and a pixel is evidence only when both agree: the
strip an object is about to cover is occluded in the next frame only, the strip it has just
uncovered in the previous one only. Dense flow also bleeds an object's motion a few pixels into
the background around it, so with the
frames given a pixel is also checked photometrically: it stays foreground evidence only when
the background planes do not predict its colour in the next frame better than its own flow
does (local mean absolute grey difference, ``photometric_margin`` grey levels of slack).

The evidence is made consistent over time: each frame's foreground is the vote of the frames
within ``vote_radius``, carried to it along the chained flow (a flicker of noise on a wall does
not survive the vote; an object moving through the frames does), then regions smaller than
``min_component`` of the frame are dropped. When the result holds no object — less than
``min_object_fraction`` of the frame in more than ``1 - min_presence`` of the frames, or more
than ``max_object_fraction`` of it on average — :class:`NoObjectError` (a row error) says so and
asks for the row's ``mask_uri``, instead of bootstrapping a confident alpha on the background.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stages.atlas.config import SegmentationConfig

BORDER_BAND = 0.08  # a border band is this fraction of the frame's side
BORDER_COVER = 0.25  # a plane touches a border when it explains this fraction of the band's samples
NO_OBJECT_HINT = ("give the row a mask_uri (a first-frame mask image, 255 = object, or a mask video) "
                  "to choose the object")


class NoObjectError(ValueError):
    """The motion segmentation found no object that moves against the background."""


@dataclass
class PairModel:
    """The background planes of one frame pair and the residual they leave."""

    planes: list[np.ndarray]  # [3, 3] homographies, frame t -> frame t + 1 pixels
    residual: np.ndarray  # float32 [H, W] pixels
    threshold: float  # residual above which a pixel is foreground evidence


def plane_residual(hom: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """|p + flow(p) - H p| in pixels, float32 [H, W], for a homography [3, 3] and flow [H, W, 2]."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    den = hom[2, 0] * xs + hom[2, 1] * ys + hom[2, 2]
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    px = (hom[0, 0] * xs + hom[0, 1] * ys + hom[0, 2]) / den
    py = (hom[1, 0] * xs + hom[1, 1] * ys + hom[1, 2]) / den
    return np.hypot(xs + flow[..., 0] - px, ys + flow[..., 1] - py).astype(np.float32)


def touched_borders(xs: np.ndarray, ys: np.ndarray, members: np.ndarray, width: int, height: int) -> int:
    """How many frame borders a set of samples (bool ``members`` of sample positions) reaches."""
    count = 0
    bx, by = BORDER_BAND * width, BORDER_BAND * height
    for band in (xs < bx, xs > width - 1 - bx, ys < by, ys > height - 1 - by):
        if band.sum() and members[band].mean() >= BORDER_COVER:
            count += 1
    return count


def photometric_errors(grey_a: np.ndarray, grey_b: np.ndarray, flow: np.ndarray, planes: list[np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Local mean |a(p) - b(q)| (grey levels, float32 [H, W]) with q from the planes (best) and from the flow."""
    h, w = grey_a.shape
    a = grey_a.astype(np.float32)
    b = grey_b.astype(np.float32)
    size = (3, 3)
    by_planes = np.full((h, w), np.inf, np.float32)
    for hom in planes:
        pulled = cv2.warpPerspective(b, hom, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REPLICATE)
        by_planes = np.minimum(by_planes, cv2.blur(np.abs(a - pulled), size))
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    along = cv2.remap(b, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return by_planes, cv2.blur(np.abs(a - along), size)


def background_planes(flow: np.ndarray, valid: np.ndarray, config: SegmentationConfig, threshold_px: float,
                      step: int | None = None) -> PairModel:
    """Fit the background planes of one flow field [H, W, 2] (valid: bool [H, W]) and its residual."""
    h, w = flow.shape[:2]
    step = step or max(2, min(h, w) // 64)
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    ys, xs = ys.ravel(), xs.ravel()
    ok = valid[ys, xs]
    if ok.sum() < 16:  # flow invalid nearly everywhere: trust it anyway rather than fit nothing
        ok = np.ones_like(ok)
    xs, ys = xs[ok], ys[ok]
    src = np.stack([xs, ys], -1).astype(np.float32)
    dst = src + flow[ys, xs]
    planes: list[np.ndarray] = []
    best = np.full((h, w), np.inf, np.float32)
    explained = np.zeros(len(src), bool)
    ransac = max(0.5, threshold_px)
    for k in range(config.background_planes):
        rest = ~explained
        if rest.sum() < 16:
            break
        hom, inl = cv2.findHomography(src[rest], dst[rest], cv2.RANSAC, ransac, maxIters=2000, confidence=0.995)
        if hom is None:
            break
        members = np.zeros(len(src), bool)
        members[np.flatnonzero(rest)[inl[:, 0] == 1]] = True
        if k > 0 and (members.mean() < config.plane_min_fraction
                      or touched_borders(xs, ys, members, w, h) < 2):
            break
        planes.append(hom)
        best = np.minimum(best, plane_residual(hom, flow))
        explained |= best[ys, xs] <= ransac
    if not planes:
        planes = [np.eye(3)]
        best = plane_residual(planes[0], flow)
    noise = float(np.median(best[ys, xs]))
    return PairModel(planes, best, max(threshold_px, config.noise_factor * noise))


def _sample(image: np.ndarray, pos_x: np.ndarray, pos_y: np.ndarray, outside: float | None = None) -> np.ndarray:
    """Bilinear samples of image [H, W] at float32 positions; ``outside`` beyond the frame (None: edge value)."""
    border = cv2.BORDER_REPLICATE if outside is None else cv2.BORDER_CONSTANT
    return cv2.remap(image.astype(np.float32), pos_x, pos_y, cv2.INTER_LINEAR, borderMode=border,
                     borderValue=0.0 if outside is None else outside)


def temporal_vote(evidence: np.ndarray, forward: np.ndarray, backward: np.ndarray, radius: int) -> np.ndarray:
    """float32 [T, H, W]: the mean evidence of frames within ``radius``, carried along the chained flow.

    evidence: bool [T, H, W]; forward/backward: float32 [T-1, H, W, 2] (``backward[t]`` takes
    frame t + 1 to frame t). Frames the chain leaves the picture for do not vote.
    """
    t_n, h, w = evidence.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    ev = evidence.astype(np.float32)
    out = np.empty_like(ev)
    for t in range(t_n):
        total, count = ev[t].copy(), np.ones((h, w), np.float32)
        for direction, fields in ((1, forward), (-1, backward)):
            px, py = gx.copy(), gy.copy()
            alive = np.ones((h, w), bool)
            for k in range(1, radius + 1):
                s = t + direction * k
                if not 0 <= s < t_n:
                    break
                f = fields[s - 1] if direction == 1 else fields[s]  # flow from frame s -/+ 1 to s
                dx, dy = _sample(f[..., 0], px, py), _sample(f[..., 1], px, py)
                px, py = px + dx, py + dy
                vote = _sample(ev[s], px, py, outside=-1.0)
                alive &= vote >= 0
                total += np.where(alive, vote, 0.0)
                count += alive
        out[t] = total / count
    return out


def drop_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """bool [H, W] without the connected regions smaller than ``min_pixels``."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_pixels
    return keep[labels]


def frame_evidence(flow: np.ndarray, valid: np.ndarray, config: SegmentationConfig, threshold_px: float,
                   grey_a: np.ndarray | None = None, grey_b: np.ndarray | None = None) -> np.ndarray:
    """bool [H, W]: pixels of frame a whose flow to frame b [H, W, 2] the background planes do not explain."""
    model = background_planes(flow, valid, config, threshold_px)
    evidence = model.residual > model.threshold
    if grey_a is not None and grey_b is not None:
        by_planes, by_flow = photometric_errors(grey_a, grey_b, flow, model.planes)
        evidence &= by_planes + config.photometric_margin >= by_flow
    return evidence


def segment(forward: np.ndarray, backward: np.ndarray, forward_valid: np.ndarray, backward_valid: np.ndarray,
            config: SegmentationConfig, threshold_px: float = 1.0, frames: np.ndarray | None = None) -> np.ndarray:
    """bool [T, H, W] foreground of a clip from its flow ([T-1, H, W, 2] each way, validity [T-1, H, W]).

    frames: uint8 [T, H, W, 3] for the photometric check (None: flow residual only).
    Raises NoObjectError when no consistent moving object is found (see the module docstring).
    """
    n, h, w = forward.shape[:3]
    if n == 0:
        raise NoObjectError(f"motion segmentation needs at least 2 frames; {NO_OBJECT_HINT}")
    grey = [None] * (n + 1) if frames is None else [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    evidence = []
    for t in range(n + 1):
        # both directions: the strip an object is about to cover (or has just uncovered) is occluded in
        # one neighbour only, so only the object itself is evidence both ways (end frames: one way)
        ways = []
        if t < n:
            ways.append(frame_evidence(forward[t], forward_valid[t], config, threshold_px, grey[t], grey[t + 1]))
        if t > 0:
            ways.append(frame_evidence(backward[t - 1], backward_valid[t - 1], config, threshold_px,
                                       grey[t], grey[t - 1]))
        evidence.append(np.logical_and.reduce(ways))
    size = max(3, int(round(min(h, w) / 40)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    cleaned = np.stack([cv2.morphologyEx(cv2.morphologyEx(e.astype(np.uint8), cv2.MORPH_OPEN, kernel),
                                         cv2.MORPH_CLOSE, kernel) > 0 for e in evidence])
    votes = temporal_vote(cleaned, forward, backward, config.vote_radius)
    min_pixels = max(1, int(config.min_component * h * w))
    masks = np.stack([drop_small(v >= config.vote_fraction, min_pixels) for v in votes])
    check_object(masks, config)
    return masks


def check_object(masks: np.ndarray, config: SegmentationConfig) -> None:
    """NoObjectError unless bool masks [T, H, W] hold an object of plausible size in enough frames."""
    fractions = masks.reshape(len(masks), -1).mean(1)
    present = fractions >= config.min_object_fraction
    if present.mean() < config.min_presence:
        raise NoObjectError(
            f"motion segmentation found no object moving against the background (in {int(present.sum())} of "
            f"{len(masks)} frames); {NO_OBJECT_HINT}")
    if fractions.mean() > config.max_object_fraction:
        raise NoObjectError(
            f"motion segmentation could not separate an object from the background ({fractions.mean():.0%} "
            f"of the frame moves against it); {NO_OBJECT_HINT}")
