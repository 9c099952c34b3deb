"""Motion segmentation of a clip without a mask: the object is what the background model cannot explain.

Background model, per frame pair: a small set of planes, RANSAC homographies fitted to the
dense flow of textured pixels (sampled on a grid, valid flow only). The first is fitted to the
samples near the frame's border, which show the background even when the camera follows a
large object; each further one to the samples no plane explains yet, and it is accepted only
when it explains ``plane_min_fraction`` of the samples *and* spans the frame (reaches two
opposite borders): background planes (a road, distant mountains, a wall) run across the frame,
an object in the shot does not, even one the frame's corner cuts. So camera parallax between a
near and a far plane is background, not foreground.

Object layer (``object_layer``; off by default, see docs/atlas.md): the samples the planes
leave by more than ``object_ransac_px`` get one RANSAC affine; when it explains ``object_min_fraction`` of the
samples and its inliers do not span the frame, it is the object's own motion, and the pixels
it explains while the planes miss them by twice that are evidence (its textured ones, closed
over flat gaps of ``object_close`` of the frame, within the layer). This finds an object the
camera carries (a selfie-stick shot: the rider stays put while snow and sky sweep past): it
fills much of the textured samples, so the noise threshold below, a multiple of their median
residual, is inflated by the object itself and its residual evidence comes in fragments that
the cleaning removes; one coherent motion finds it whole. It is one motion, not an occlusion
strip, so one direction of the frame's two is enough for it.

Evidence: a pixel's residual is its distance in pixels from the best plane's prediction; on a
textured pixel (``texture_min`` grey levels per pixel of gradient: flow in flat areas is only
interpolated) it is evidence above ``max(threshold_px, noise_factor x median residual)``. A
pixel whose colour the planes mispredict by more than ``max(photometric_min, noise_factor x
median)`` grey levels and more than a ``misregistration_px`` shift of its gradient explains is
evidence too, so an object the dense flow lost (fast motion) is still found. Either way a pixel
stays evidence only when the planes do not predict its colour better than its own flow does
(``photometric_margin`` grey levels of slack): dense flow bleeds an object's motion a few
pixels into the background around it. Each frame is judged against both neighbours and a
pixel must be evidence both ways: the strip an object is about to cover is occluded in the
next frame only, the strip it has just uncovered in the previous one only.

Consistency over time: holes are filled (a flat object's interior gives no evidence, its
outline does), regions smaller than ``min_component`` of the frame dropped, and a region is
kept only when it recurs near its place in ``vote_fraction`` of the frames within
``vote_radius`` (:func:`persistent`; a flicker of noise on a wall does not, an object moving
through the frames does, however fast). An object that moves with the background for a moment
leaves no evidence then: frames whose mask is under ``fill_ratio`` of the usual area get the
neighbour's mask carried by the object tracker (:func:`fill_gaps`). Before that, the evidence must be
one object (:func:`check_tracked`): carried by the tracker, a frame's mask must overlap the
next frame's in ``min_tracked`` of the pairs whose masks both hold ``track_min_area`` of the
clip's median mask area (default 0: every pair), which flicker such as snow spray does not
(the smaller masks, of frames where the object moved with the background and left only spray, are the gap filling's
to replace). After
it, each frame's mask is re-voted by its neighbours' masks carried to it (:func:`tracked_vote`:
what one frame's evidence missed or added), and its outline is decided by colour within a band
of its size (:func:`refine_outline`, GrabCut). When the result holds no object (less than
``min_object_fraction`` of the frame in more than ``1 - min_presence`` of the frames, or more
than ``max_object_fraction`` of it on average) :class:`NoObjectError`, a row error, says so
and asks for the row's ``mask_uri``, instead of bootstrapping a confident alpha on the
background.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stages.atlas.config import SegmentationConfig, TrackerSettings
from stages.atlas.tracks import DEFAULT_TRACKER, object_motion

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
    layer: np.ndarray | None = None  # bool [H, W]: pixels the object layer explains and the planes do not


def plane_residual(hom: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """|p + flow(p) - H p| in pixels, float32 [H, W], for a homography [3, 3] and flow [H, W, 2]."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    den = hom[2, 0] * xs + hom[2, 1] * ys + hom[2, 2]
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    px = (hom[0, 0] * xs + hom[0, 1] * ys + hom[0, 2]) / den
    py = (hom[1, 0] * xs + hom[1, 1] * ys + hom[1, 2]) / den
    return np.hypot(xs + flow[..., 0] - px, ys + flow[..., 1] - py).astype(np.float32)


def spans_frame(xs: np.ndarray, ys: np.ndarray, members: np.ndarray, width: int, height: int,
                band: float = 0.08, cover: float = 0.25) -> bool:
    """Whether a set of samples (bool ``members`` of sample positions) reaches two opposite frame borders.

    It reaches a border when it holds ``cover`` of the samples in that border's band (``band`` of
    the frame's side). A
    background plane runs across the frame (left to right, or top to bottom); an object in the
    shot, even a large one cut by the frame's corner, does not.
    """
    bx, by = band * width, band * height

    def reaches(strip: np.ndarray) -> bool:
        return bool(strip.sum()) and float(members[strip].mean()) >= cover

    return (reaches(xs < bx) and reaches(xs > width - 1 - bx)) or (reaches(ys < by) and reaches(ys > height - 1 - by))


def gradient_magnitude(grey: np.ndarray) -> np.ndarray:
    """Local mean |grad| of a grey uint8 image [H, W], grey levels per pixel, float32 [H, W]."""
    g = grey.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return cv2.blur(np.hypot(gx, gy), (5, 5))


def photometric_errors(grey_a: np.ndarray, grey_b: np.ndarray, flow: np.ndarray, planes: list[np.ndarray],
                       size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """|a(p) - b(q)| in grey levels, float32 [H, W] (mean over a ``size`` box), q from the planes (best), the flow."""
    h, w = grey_a.shape
    a = grey_a.astype(np.float32)
    b = grey_b.astype(np.float32)
    box = (size, size)
    by_planes = np.full((h, w), np.inf, np.float32)
    for hom in planes:
        pulled = cv2.warpPerspective(b, hom, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REPLICATE)
        by_planes = np.minimum(by_planes, cv2.blur(np.abs(a - pulled), box))
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    along = cv2.remap(b, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return by_planes, cv2.blur(np.abs(a - along), box)


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
    ransac = config.plane_ransac_px
    bx, by = config.border_band * w, config.border_band * h
    border = (xs < bx) | (xs > w - 1 - bx) | (ys < by) | (ys > h - 1 - by)
    for k in range(config.background_planes):
        rest = ~explained
        # the first plane is the one the frame's border shows (an object the camera follows fills the
        # middle, however large); later ones are fitted to all samples no plane explains yet
        pool = rest & border if k == 0 and (rest & border).sum() >= 16 else rest
        if rest.sum() < 16:
            break
        hom, _ = cv2.findHomography(src[pool], dst[pool], cv2.RANSAC, ransac, maxIters=2000, confidence=0.995)
        if hom is None:
            break
        residual = plane_residual(hom, flow)
        members = rest & (residual[ys, xs] <= ransac)
        if k > 0 and (members.mean() < config.plane_min_fraction
                      or not spans_frame(xs, ys, members, w, h, config.border_band, config.border_cover)):
            break
        planes.append(hom)
        best = np.minimum(best, residual)
        explained |= best[ys, xs] <= ransac
    if not planes:
        planes = [np.eye(3)]
        best = plane_residual(planes[0], flow)
    noise = float(np.median(best[ys, xs]))
    layer = object_layer(flow, src, dst, xs, ys, best, config) if config.object_layer else None
    return PairModel(planes, best, max(threshold_px, config.noise_factor * noise), layer)


def object_layer(flow: np.ndarray, src: np.ndarray, dst: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                 best: np.ndarray, config: SegmentationConfig) -> np.ndarray | None:
    """bool [H, W]: the pixels of a second, compact motion layer (the object), or None when there is none.

    The samples (src, dst: float32 [N, 2] pixels at grid positions xs, ys) the background planes
    (``best``: their residual [H, W]) leave by more than ``object_ransac_px`` get one RANSAC
    affine; it is the object's motion when it explains ``object_min_fraction`` of all samples and
    its inliers do not span the frame (:func:`spans_frame`). Its pixels are those of the flow
    [H, W, 2] it explains within ``object_ransac_px`` while the planes miss them by twice that.
    An object the camera carries (a selfie-stick shot) moves little in the image while the
    background sweeps; its own residual to the planes is then large but not above a threshold
    inflated by the object itself, and one coherent motion finds it whole.
    """
    h, w = flow.shape[:2]
    tol = config.object_ransac_px
    rest = best[ys, xs] > tol
    if rest.sum() < max(16, config.object_min_fraction * len(src)):
        return None
    affine, _ = cv2.estimateAffine2D(src[rest], dst[rest], method=cv2.RANSAC, ransacReprojThreshold=tol,
                                     maxIters=2000, confidence=0.995)
    if affine is None:
        return None
    hom = np.vstack([affine, [0.0, 0.0, 1.0]])
    residual = plane_residual(hom, flow)
    members = rest & (residual[ys, xs] <= tol)
    if members.mean() < config.object_min_fraction or spans_frame(xs, ys, members, w, h, config.border_band,
                                                                   config.border_cover):
        return None
    return (residual <= tol) & (best > 2.0 * tol)


def persistent(masks: np.ndarray, radius: int, reach_px: float, fraction: float, overlap: float = 0.3
               ) -> np.ndarray:
    """bool [T, H, W]: the connected regions of masks [T, H, W] that recur in the frames around them.

    A region of frame t recurs in frame s (``|s - t| <= radius``) when ``overlap`` of its area
    is covered by frame s's mask within ``reach_px x |s - t|`` pixels of it (a box grown that
    far: no flow is trusted, so an object moving fast still counts); it is kept when it recurs
    in ``fraction`` of those frames. Flicker — noise on a textured wall — does not recur.
    """
    t_n = len(masks)
    out = np.zeros_like(masks)
    for t in range(t_n):
        n, labels = cv2.connectedComponents(masks[t].astype(np.uint8), connectivity=8)
        others = [s for s in range(max(0, t - radius), min(t_n, t + radius + 1)) if s != t]
        if not others:
            out[t] = masks[t]
            continue
        for k in range(1, n):
            region = labels == k
            area = int(region.sum())
            hits = 0
            for s in others:
                grow = max(1, int(round(reach_px * abs(s - t))))
                near = cv2.dilate(region.astype(np.uint8), cv2.getStructuringElement(
                    cv2.MORPH_RECT, (2 * grow + 1, 2 * grow + 1))) > 0
                hits += int((masks[s] & near).sum() >= overlap * area)
            if hits >= fraction * len(others):
                out[t] |= region
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """bool [H, W] with every background region that does not reach the frame's border filled.

    A flat object's interior gives no motion evidence (no texture); its outline does.
    """
    h, w = mask.shape
    outside = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    flood = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(outside, flood, (0, 0), 2)
    return mask | (outside[1:-1, 1:-1] == 1)


def drop_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """bool [H, W] without the connected regions smaller than ``min_pixels``."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_pixels
    return keep[labels]


def frame_evidence(flow: np.ndarray, valid: np.ndarray, config: SegmentationConfig, threshold_px: float,
                   grey_a: np.ndarray | None = None, grey_b: np.ndarray | None = None) -> np.ndarray:
    """bool [H, W]: pixels of frame a whose flow to frame b [H, W, 2] the background planes do not explain."""
    evidence, layer = pair_evidence(flow, valid, config, threshold_px, grey_a, grey_b)
    return evidence | layer


def pair_evidence(flow: np.ndarray, valid: np.ndarray, config: SegmentationConfig, threshold_px: float,
                  grey_a: np.ndarray | None = None, grey_b: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(residual evidence, object-layer evidence), bool [H, W] each, of frame a (see :func:`frame_evidence`)."""
    if grey_a is None or grey_b is None:
        model = background_planes(flow, valid, config, threshold_px)
        return model.residual > model.threshold, np.zeros(flow.shape[:2], bool)
    grad = gradient_magnitude(grey_a)
    textured = grad >= config.texture_min
    model = background_planes(flow, valid & textured, config, threshold_px)
    # flow in flat areas (sky, snow, a plain wall) is interpolated from their edges: no evidence there
    evidence = (model.residual > model.threshold) & textured
    layer = np.zeros(grey_a.shape, bool)
    if model.layer is not None:
        # its textured pixels, closed over the flat parts between them (a jacket's plain cloth), but not beyond
        # the layer itself (the flow of flat background next to it is interpolated from it)
        size = max(3, int(round(min(grey_a.shape) * config.object_close)) | 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        layer = (cv2.morphologyEx((model.layer & textured).astype(np.uint8), cv2.MORPH_CLOSE, kernel) > 0) \
            & model.layer
    # per pixel (a box mean would grow the object by its radius)
    by_planes, by_flow = photometric_errors(grey_a, grey_b, flow, model.planes)
    # colour the planes mispredict by more than a misregistration explains (error ~ gradient x shift) is
    # evidence even where the flow lost a fast object ...
    floor = max(config.photometric_min, config.noise_factor * float(np.median(by_planes)))
    unexplained = by_planes > np.maximum(floor, config.misregistration_px * grad)
    # ... and only pixels the planes do not predict better than their own flow stay
    keep = by_planes + config.photometric_margin >= by_flow
    return (evidence | unexplained) & keep, layer & keep


def segment(forward: np.ndarray, backward: np.ndarray, forward_valid: np.ndarray, backward_valid: np.ndarray,
            config: SegmentationConfig, threshold_px: float = 1.0, frames: np.ndarray | None = None,
            tracker: TrackerSettings | None = None) -> np.ndarray:
    """bool [T, H, W] foreground of a clip from its flow ([T-1, H, W, 2] each way, validity [T-1, H, W]).

    frames: uint8 [T, H, W, 3] for the photometric check and the gap filling (None: flow residual only);
    tracker: the object tracker's settings for the gap filling (None: the defaults).
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
            ways.append(pair_evidence(forward[t], forward_valid[t], config, threshold_px, grey[t], grey[t + 1]))
        if t > 0:
            ways.append(pair_evidence(backward[t - 1], backward_valid[t - 1], config, threshold_px,
                                      grey[t], grey[t - 1]))
        # the object layer is one coherent motion, not an occlusion strip: either way is enough
        evidence.append(np.logical_and.reduce([e | layer for e, layer in ways])
                        | np.logical_or.reduce([layer for _, layer in ways]))
    size = max(3, int(round(min(h, w) / 40)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    cleaned = np.stack([cv2.morphologyEx(cv2.morphologyEx(e.astype(np.uint8), cv2.MORPH_OPEN, kernel),
                                         cv2.MORPH_CLOSE, kernel) > 0 for e in evidence])
    min_pixels = max(1, int(config.min_component * h * w))
    cleaned = np.stack([fill_holes(drop_small(c, min_pixels)) for c in cleaned])
    masks = persistent(cleaned, config.vote_radius, config.reach * max(h, w), config.vote_fraction)
    tracker = tracker or DEFAULT_TRACKER
    if frames is not None and config.min_tracked > 0:
        # judged on the evidence itself: the gap filling below carries masks by the tracker, which agrees
        check_tracked(masks, object_steps(masks, grey, tracker, backward=False)[0], config)
    if frames is not None and config.fill_ratio > 0:
        masks = fill_gaps(masks, grey, tracker, config.fill_ratio)
    check_object(masks, config)
    if frames is not None and config.consensus_fraction > 0 and config.consensus_radius > 0:
        masks = tracked_vote(masks, object_steps(masks, grey, tracker), config.consensus_radius,
                             config.consensus_fraction)
    if frames is not None and config.edge_band > 0:
        masks = np.stack([refine_outline(frame, mask, config.edge_band, config.edge_iterations)
                          for frame, mask in zip(frames, masks)])
    check_object(masks, config)
    return masks


def refine_outline(frame: np.ndarray, mask: np.ndarray, band: float, iterations: int) -> np.ndarray:
    """bool [H, W]: a motion mask [H, W] whose outline follows the object's colours (GrabCut).

    Motion evidence is weakest where the object's own texture is weak or where it moves like
    the background: its parts there are missing, or a flow-bled fringe is added. A colour model
    of the object (the mask) and of the background (the rest of the frame) then decides the
    pixels within ``band`` x the mask's equivalent diameter of its outline: the mask's core
    (eroded by a third of that) stays object and everything beyond the band stays background,
    so the mask can move by at most the band. frame: uint8 RGB [H, W, 3]; deterministic (the
    colour models' k-means is seeded).
    """
    area = int(mask.sum())
    if area < 16 or area == mask.size:
        return mask
    reach = max(2, int(round(band * 2.0 * np.sqrt(area / np.pi))))
    grown = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))) > 0
    inner = max(1, reach // 3)
    core = cv2.erode(mask.astype(np.uint8), cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (2 * inner + 1, 2 * inner + 1))) > 0
    labels = np.full(mask.shape, cv2.GC_BGD, np.uint8)
    labels[grown] = cv2.GC_PR_BGD
    labels[mask] = cv2.GC_PR_FGD
    labels[core] = cv2.GC_FGD
    if not (labels == cv2.GC_BGD).any() or not core.any():
        return mask
    cv2.setRNGSeed(0)
    models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(np.ascontiguousarray(frame[..., ::-1]), labels, None, models[0], models[1], iterations,
                cv2.GC_INIT_WITH_MASK)
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def object_steps(masks: np.ndarray, grey: list[np.ndarray], tracker: TrackerSettings, backward: bool = True
                 ) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Per frame pair, the object tracker's motion of the mask: (forward t -> t+1, backward t+1 -> t).

    Each a list of T - 1 affines [3, 3] in pixels (None where the mask is empty or the tracker
    finds nothing), from :func:`stages.atlas.tracks.object_motion` on bool masks [T, H, W];
    ``backward=False`` leaves the backward list empty.
    """
    def step(a: int, b: int) -> np.ndarray | None:
        if masks[a].sum() < 4:
            return None
        model = object_motion(grey[a], grey[b], masks[a], tracker)
        return None if model is None else np.vstack([model, [0.0, 0.0, 1.0]])

    n = len(masks) - 1
    return [step(t, t + 1) for t in range(n)], [step(t + 1, t) for t in range(n)] if backward else []


def carry(mask: np.ndarray, model: np.ndarray) -> np.ndarray:
    """bool [H, W]: a bool mask [H, W] moved by an affine [2, 3] or [3, 3] (pixels)."""
    h, w = mask.shape
    return cv2.warpAffine(mask.astype(np.float32), model[:2], (w, h), flags=cv2.INTER_LINEAR) > 0.5


def track_agreement(masks: np.ndarray, forward: list[np.ndarray | None]) -> np.ndarray:
    """float [T-1]: how much each frame's mask, carried by the tracker, and the next frame's mask overlap.

    The overlap is the intersection over the smaller of the two (0 where the tracker lost it):
    one frame's evidence may hold only part of the object (a flat side gives none), and a part
    still lies inside the whole.
    """
    out = np.zeros(len(forward))
    for t, model in enumerate(forward):
        if model is not None:
            moved = carry(masks[t], model)
            out[t] = (moved & masks[t + 1]).sum() / max(1, min(int(moved.sum()), int(masks[t + 1].sum())))
    return out


def check_tracked(masks: np.ndarray, forward: list[np.ndarray | None], config: SegmentationConfig) -> None:
    """NoObjectError unless the masks [T, H, W] follow one trackable object from frame to frame.

    An object moves as a whole: its mask, carried to the next frame by the object tracker
    (``forward``: per pair, an affine [3, 3] or None, see :func:`object_steps`), overlaps that
    frame's mask (``track_overlap`` of the smaller of the two, :func:`track_agreement`).
    Flicker the background planes leave — snow spray, glints, noise on a flat surface — comes
    and goes in scattered places and does not: when
    fewer than ``min_tracked`` of the pairs (among those where both frames hold a mask of at
    least ``min_object_fraction`` of the frame and ``track_min_area`` x the median area of the
    non-empty masks) agree, the masks are not an object. A frame whose object moved with the
    background leaves only scraps (spray) there; the gap filling replaces those. Judged on the motion evidence before
    the gap filling (which carries masks by this tracker and so agrees with it by design).
    """
    fractions = masks.reshape(len(masks), -1).mean(1)
    usual = float(np.median(fractions[fractions > 0])) if (fractions > 0).any() else 0.0
    sized = fractions >= max(config.min_object_fraction, config.track_min_area * usual)
    both = sized[:-1] & sized[1:]
    if not both.any():
        return
    agree = track_agreement(masks, forward)[both] >= config.track_overlap
    if agree.mean() < config.min_tracked:
        raise NoObjectError(
            f"motion segmentation found no single object: what moves against the background does not hold "
            f"together from frame to frame (the tracked mask overlaps the next in {int(agree.sum())} of "
            f"{len(agree)} frame pairs; flicker such as spray or glints); {NO_OBJECT_HINT}")


def tracked_vote(masks: np.ndarray, steps: tuple[list, list], radius: int, fraction: float) -> np.ndarray:
    """bool [T, H, W]: each frame's mask re-voted by the masks of its neighbours carried to it by the tracker.

    Frame s's mask is carried to frame t (``|s - t| <= radius``) by chaining the tracker's
    per-pair motions (``steps``: forward and backward lists of affines [3, 3], see
    :func:`object_steps`); a pixel is foreground when at least ``fraction`` of the masks that
    reach it (its own included) say so. The motion evidence of one frame misses the parts of
    the object that move like the background at that moment, or adds the strip it is about to
    cover (the clip's end frames are judged one way only); the neighbours, where the object
    moved differently, supply and outvote those.
    """
    forward, backward = steps
    t_n = len(masks)
    out = np.zeros_like(masks)
    for t in range(t_n):
        votes = masks[t].astype(np.int32)
        count = 1
        for s in range(max(0, t - radius), min(t_n, t + radius + 1)):
            chain = range(s, t) if s < t else range(s - 1, t - 1, -1)
            models = [forward[u] if s < t else backward[u] for u in chain]
            if s == t or any(m is None for m in models):
                continue
            total = np.eye(3)
            for model in models:
                total = model @ total
            votes += carry(masks[s], total)
            count += 1
        out[t] = votes >= fraction * count
    return out


def fill_gaps(masks: np.ndarray, grey: list[np.ndarray], tracker: TrackerSettings, ratio: float) -> np.ndarray:
    """bool [T, H, W]: frames where the object is (partly) missing get it carried from a neighbour.

    An object that moves with the background for a moment (it stops, or the camera follows
    it) leaves no motion evidence then. A frame whose mask is under ``ratio`` x the median area
    of the frames that have one receives a larger neighbour's mask moved by the object tracker
    (:func:`stages.atlas.tracks.object_motion`), united with its own; a forward then a backward
    pass, so gaps at either end are filled from the frames that saw the object.
    """
    out = masks.copy()
    areas = out.reshape(len(out), -1).sum(1)
    if not (areas > 0).any():
        return out
    need = ratio * float(np.median(areas[areas > 0]))
    for order, step in ((range(1, len(out)), -1), (range(len(out) - 2, -1, -1), 1)):
        for t in order:
            prev = t + step
            if out[t].sum() >= need or out[prev].sum() <= out[t].sum():
                continue
            model = object_motion(grey[prev], grey[t], out[prev], tracker)
            if model is not None:
                out[t] |= carry(out[prev], model)
    return out


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
