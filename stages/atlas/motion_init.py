"""Motion-compensated starting point of the layer mappings (``motion_init``; see docs/atlas.md).

Each layer's per-frame motion (float64 [T, 3, 3] homographies or affines taking frame-0 pixels
to frame-t pixels, from :func:`stages.atlas.masks.layer_motions`) becomes a frame-t -> atlas
projective map on network coordinates (pixels / half the larger side - 1), so that at
initialisation every frame maps its layer onto the same atlas place (``uv ~ (M p)[:2] / (M p)[2]``).
When the frames carried back this way cover more than the atlas domain ``[-1, 1] ** 2`` — a
camera pan, an object crossing the frame — the layer is shrunk (by ``scale`` <= 1) and
re-centred so all of it fits: otherwise later frames would be clamped onto the atlas border and
could never be reconstructed. The fit then measures that layer's rigidity and flow in its own
units (``scale`` x ``identity_scale`` uv per network unit).
Maps are normalised so ``M[2, 2] = 1``; an affine keeps ``M[2] = (0, 0, 1)``.
"""

from __future__ import annotations

import numpy as np
import torch

REFERENCE_GAIN = 1.02  # another frame becomes a layer's reference only when its atlas scale is this much larger


def to_network(half: float) -> np.ndarray:
    """[3, 3] homogeneous map from pixel (x, y) to network coordinates ``p / half - 1``."""
    return np.array([[1 / half, 0, -1], [0, 1 / half, -1], [0, 0, 1]])


def homogeneous(maps: np.ndarray) -> np.ndarray:
    """[..., 3, 3] maps from [..., 2, 3] affines (a last row (0, 0, 1) added) or [..., 3, 3] as they are."""
    maps = np.asarray(maps, np.float64)
    if maps.shape[-2:] == (3, 3):
        return maps
    last = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (*maps.shape[:-2], 1, 3))
    return np.concatenate([maps, last], -2)


def carry(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[K, 2] points carried by the 3x3 map ``m`` with the homogeneous divide."""
    p = points @ m[:, :2].T + m[:, 2]
    return p[:, :2] / p[:, 2:]


def frame_to_reference(motions: np.ndarray, half: float) -> np.ndarray:
    """float64 [T, 3, 3]: network xy of frame t -> network xy of frame 0 (inverse of each motion).

    motions: [T, 3, 3] (or [T, 2, 3] affines) frame-0 -> frame-t pixel maps.
    """
    net = to_network(half)
    out = np.empty((len(motions), 3, 3))
    for t, m in enumerate(homogeneous(motions)):
        out[t] = net @ np.linalg.inv(m) @ np.linalg.inv(net)
        out[t] /= out[t, 2, 2]
    return out


def layer_points(shape: tuple[int, int, int], half: float, masks: np.ndarray | None) -> list[np.ndarray]:
    """Per frame, float64 [K, 2] network points the layer must keep inside the atlas.

    The frame's corners, or with ``masks`` (bool [T, H, W]) the corners of the mask's bounding
    box (frames with an empty mask contribute nothing).
    """
    t_n, h, w = shape
    net = to_network(half)
    out = []
    for t in range(t_n):
        if masks is None:
            x0, y0, x1, y1 = 0, 0, w - 1, h - 1
        else:
            ys, xs = np.nonzero(masks[t])
            if len(xs) == 0:
                out.append(np.zeros((0, 2)))
                continue
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
        px = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64)
        out.append((px @ net.T)[:, :2])
    return out


def fit_to_atlas(maps: np.ndarray, points: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Shrink and re-centre per-frame maps [T, 3, 3] so the carried points fit in [-1, 1] ** 2.

    The points are carried projectively (:func:`carry`); the shrink is a similarity applied
    after the maps, so it keeps them projective maps. Returns the new maps and the scale (1.0,
    maps unchanged, when everything already fits).
    """
    carried = [carry(m, pts) for m, pts in zip(maps, points) if len(pts)]
    if not carried:
        return maps, 1.0
    allp = np.concatenate(carried)
    lo, hi = allp.min(0), allp.max(0)
    if lo.min() >= -1.0 and hi.max() <= 1.0:
        return maps, 1.0
    scale = min(1.0, 2.0 / float((hi - lo).max()))
    centre = (lo + hi) / 2.0
    fit = np.array([[scale, 0, -scale * centre[0]], [0, scale, -scale * centre[1]], [0, 0, 1]])
    return fit @ maps, scale


def reference_frame(motions: np.ndarray, half: float, points: list[np.ndarray]) -> int:
    """The frame whose view the layer's atlas is drawn in: the one giving the largest fitted scale.

    motions: [T, 3, 3] frame-0 -> frame-t pixel maps; points: :func:`layer_points`. Re-referencing
    the chain to frame r (``M_t M_r^-1``) does not change which pixels meet, only the plane the
    atlas is drawn in: a similarity chain gives about the same extent from every frame, but a
    homography chain of a turning camera stretches the frames far from the reference (car-turn,
    70 frames: atlas scale 0.275 from frame 0, 0.319 from frame 50). Frame 0 is kept unless another
    frame gives a scale ``REFERENCE_GAIN`` (2 %) larger.
    """
    motions = homogeneous(motions)
    scales = [fit_to_atlas(frame_to_reference(motions @ np.linalg.inv(motions[r]), half), points)[1]
              for r in range(len(motions))]
    best = int(np.argmax(scales))
    return best if scales[best] > REFERENCE_GAIN * scales[0] else 0


def compensation(motions: np.ndarray, shape: tuple[int, int, int], masks: np.ndarray | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame-t -> atlas maps float32 [2, T, 3, 3] and per-layer scales float32 [2] (fg, bg).

    motions: float64 [2, T, 3, 3] (or [2, T, 2, 3] affines) frame-0 -> frame-t pixel maps of the
    two layers; shape (T, H, W); masks: bool [T, H, W] of the foreground (bounds the fg layer; the bg layer is
    bounded by the whole frame). Each layer is drawn in the view of its :func:`reference_frame`.
    """
    t_n, h, w = shape
    half = (max(h, w) - 1) / 2.0
    out, scales = [], []
    for layer, layer_masks in ((0, masks), (1, None)):
        points = layer_points(shape, half, layer_masks)
        layer_motions = homogeneous(motions[layer])
        layer_motions = layer_motions @ np.linalg.inv(layer_motions[reference_frame(layer_motions, half, points)])
        maps, scale = fit_to_atlas(frame_to_reference(layer_motions, half), points)
        out.append(maps)
        scales.append(scale)
    return torch.from_numpy(np.stack(out)).float(), torch.tensor(scales, dtype=torch.float32)
