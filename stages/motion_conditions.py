"""ReVideo motion conditions from tracks: the pure math of the trajectory stage.

Grid queries over the first frame, path lengths and the length threshold, length-weighted
sampling seeded by the video id, per-frame displacement rasterisation and Gaussian smoothing
(see :mod:`stages.trajectories` for the procedure and docs/trajectories.md for the choices).
Shapes and units are in each function's docstring; nothing here touches rows or storage.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

CHANNEL_ORDERS = ("dx,dy", "dy,dx")


def grid_points(height: int, width: int, stride: int | None = None, size: int | None = None,
                mask: np.ndarray | None = None) -> np.ndarray:
    """Query positions on a regular grid over a frame, float32 [N, 2] as (x, y) pixels.

    With ``stride`` (px) the points sit at ``stride // 2 + k * stride`` on both axes; with ``size``
    there are ``size`` x ``size`` points at the centres of equal cells (``(i + 0.5) * W / size - 0.5``).
    ``stride`` wins when both are given. ``mask`` (bool [H, W]) keeps only the points whose
    nearest pixel is True. Row-major order: x varies fastest.
    """
    if stride is not None:
        if stride < 1:
            raise ValueError(f"grid stride must be >= 1, got {stride}")
        xs = np.arange(stride // 2, width, stride, dtype=np.float32)
        ys = np.arange(stride // 2, height, stride, dtype=np.float32)
    elif size is not None:
        if size < 1:
            raise ValueError(f"grid size must be >= 1, got {size}")
        xs = ((np.arange(size) + 0.5) * width / size - 0.5).astype(np.float32)
        ys = ((np.arange(size) + 0.5) * height / size - 0.5).astype(np.float32)
    else:
        raise ValueError("give a grid stride or a grid size")
    gx, gy = np.meshgrid(xs, ys)
    points = np.stack([gx.ravel(), gy.ravel()], -1).astype(np.float32)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != (height, width):
            raise ValueError(f"mask shape {mask.shape} does not match the frame {(height, width)}")
        px = np.clip(np.rint(points[:, 0]).astype(int), 0, width - 1)
        py = np.clip(np.rint(points[:, 1]).astype(int), 0, height - 1)
        points = points[mask[py, px]]
    return points


def path_lengths(tracks: np.ndarray, visibility: np.ndarray | None = None) -> np.ndarray:
    """Length of each track over its visible steps, float32 [N] pixels.

    ``tracks`` float [T, N, 2] (x, y) px; ``visibility`` bool [T, N] or None (all visible). A step
    t-1 -> t counts only when the point is visible in both frames.
    """
    tracks = np.asarray(tracks, np.float64)
    steps = np.linalg.norm(np.diff(tracks, axis=0), axis=-1)  # [T-1, N]
    if visibility is not None:
        vis = np.asarray(visibility, bool)
        steps = np.where(vis[1:] & vis[:-1], steps, 0.0)
    return steps.sum(0).astype(np.float32)


def length_threshold(lengths: np.ndarray) -> float:
    """ReVideo's threshold: the mean path length (0.0 for no tracks)."""
    return float(np.mean(lengths)) if len(lengths) else 0.0


def selection_probabilities(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tracks longer than the mean and their normalised lengths.

    Returns ``(kept_index int64 [K], p float64 [K])`` with ``p = L / sum(L)`` over the kept tracks.
    """
    lengths = np.asarray(lengths, np.float64)
    kept = np.flatnonzero(lengths > length_threshold(lengths))
    if not len(kept):
        return kept, np.zeros(0)
    p = lengths[kept] / lengths[kept].sum()
    return kept, p


def video_seed(video_id: str, seed: int = 0) -> int:
    """A 63-bit RNG seed from a video id and a config seed: reruns of one video agree."""
    digest = hashlib.sha256(f"{seed}:{video_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_tracks(lengths: np.ndarray, rng: np.random.Generator, min_samples: int = 1,
                  max_samples: int = 10) -> np.ndarray:
    """Sample indices of tracks longer than the mean, int64 [k].

    k is drawn uniformly from ``[min_samples, max_samples]`` and capped at the number of kept
    tracks. Draws are without replacement, each draw picking among the remaining kept tracks with
    probability proportional to normalised length (successive sampling, as numpy's
    ``Generator.choice(replace=False, p=...)``); with k = 1 the selection probability of a kept
    track is exactly its normalised length. Indices are in draw order.
    """
    if min_samples < 0 or max_samples < min_samples:
        raise ValueError(f"need 0 <= min_samples <= max_samples, got {min_samples}..{max_samples}")
    kept, p = selection_probabilities(lengths)
    k = int(rng.integers(min_samples, max_samples + 1))
    k = min(k, len(kept))
    if k == 0:
        return np.zeros(0, np.int64)
    return kept[rng.choice(len(kept), size=k, replace=False, p=p)]


def displacement_impulses(tracks: np.ndarray, height: int, width: int,
                          visibility: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame t >= 1: the pixels and displacements that ReVideo writes into frame t's map.

    ``tracks`` float [T, N, 2] (x, y) px of the sampled points. For each point, its position in
    frame t is rounded to the nearest pixel and clipped into the frame; the value is
    ``p_t - p_{t-1}`` as (dx, dy) px. With ``visibility`` (bool [T, N]) a step is drawn only when
    the point is visible in frames t-1 and t. When two points land on one pixel the later one
    wins (like ReVideo's indexed assignment). Returns ``T`` entries ``(ys int [M], xs int [M],
    d float32 [M, 2])``; entry 0 is empty.
    """
    tracks = np.asarray(tracks, np.float32)
    t_len = tracks.shape[0]
    out = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.float32))]
    for t in range(1, t_len):
        d = tracks[t] - tracks[t - 1]
        xs = np.clip(np.rint(tracks[t, :, 0]), 0, width - 1).astype(np.int64)
        ys = np.clip(np.rint(tracks[t, :, 1]), 0, height - 1).astype(np.int64)
        ok = np.all(np.isfinite(tracks[t]), -1) & np.all(np.isfinite(tracks[t - 1]), -1)
        if visibility is not None:
            ok &= np.asarray(visibility[t], bool) & np.asarray(visibility[t - 1], bool)
        xs, ys, d = xs[ok], ys[ok], d[ok]
        flat = ys * width + xs
        _, last = np.unique(flat[::-1], return_index=True)  # the last writer of each pixel
        keep = np.sort(len(flat) - 1 - last)
        out.append((ys[keep], xs[keep], d[keep]))
    return out


def rasterise_motion(tracks: np.ndarray, height: int, width: int, visibility: np.ndarray | None = None,
                     channel_order: str = "dx,dy") -> np.ndarray:
    """Unsmoothed displacement maps, float32 [T, 2, H, W] (see :func:`displacement_impulses`)."""
    swap = _swap(channel_order)
    maps = np.zeros((len(tracks), 2, height, width), np.float32)
    for t, (ys, xs, d) in enumerate(displacement_impulses(tracks, height, width, visibility)):
        if len(ys):
            maps[t, 0, ys, xs] = d[:, 1] if swap else d[:, 0]
            maps[t, 1, ys, xs] = d[:, 0] if swap else d[:, 1]
    return maps


def gaussian_kernel(size: int = 51, sigma: float = 10.0, normalise: bool = False) -> np.ndarray:
    """2-D Gaussian, float32 [size, size]: peak 1 at the centre, or summing to 1 with ``normalise``."""
    if size < 1 or size % 2 == 0 or sigma <= 0:
        raise ValueError(f"kernel size must be odd and positive and sigma > 0, got {size}, {sigma}")
    r = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(r ** 2) / (2.0 * sigma ** 2))
    k = np.outer(g, g)
    if normalise:
        k /= k.sum()
    return k.astype(np.float32)


def gaussian_smooth(maps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Filter each [H, W] map of ``maps`` [..., H, W] with ``kernel`` (zero padding, 'same' size),
    as a depthwise Conv2d with padding = size // 2 does. Returns float32."""
    maps = np.asarray(maps, np.float32)
    out = np.empty_like(maps)
    flat_in, flat_out = maps.reshape(-1, *maps.shape[-2:]), out.reshape(-1, *maps.shape[-2:])
    for i in range(len(flat_in)):
        flat_out[i] = cv2.filter2D(flat_in[i], -1, kernel, borderType=cv2.BORDER_CONSTANT)
    return out


def motion_conditions(tracks: np.ndarray, height: int, width: int, visibility: np.ndarray | None = None,
                      kernel: np.ndarray | None = None, channel_order: str = "dx,dy",
                      dtype: np.dtype = np.float32) -> np.ndarray:
    """Smoothed ``c_mot`` [T, 2, H, W] of ``dtype``: :func:`rasterise_motion` then
    :func:`gaussian_smooth`, computed by adding one scaled kernel per impulse (the same result,
    since the maps are sparse and filtering is linear). ``kernel=None`` leaves the maps unsmoothed."""
    if kernel is None:
        return rasterise_motion(tracks, height, width, visibility, channel_order).astype(dtype)
    swap = _swap(channel_order)
    out = np.zeros((len(tracks), 2, height, width), dtype)
    r = kernel.shape[0] // 2
    for t, (ys, xs, d) in enumerate(displacement_impulses(tracks, height, width, visibility)):
        if not len(ys):
            continue
        y0, y1 = max(0, int(ys.min()) - r), min(height, int(ys.max()) + r + 1)
        x0, x1 = max(0, int(xs.min()) - r), min(width, int(xs.max()) + r + 1)
        acc = np.zeros((2, y1 - y0, x1 - x0), np.float32)
        for y, x, (dx, dy) in zip(ys, xs, d):
            ky0, kx0 = y - r - y0, x - r - x0  # kernel's top-left in acc coordinates
            sy0, sx0 = max(0, -ky0), max(0, -kx0)
            sy1, sx1 = min(kernel.shape[0], acc.shape[1] - ky0), min(kernel.shape[1], acc.shape[2] - kx0)
            patch = kernel[sy0:sy1, sx0:sx1]
            first, second = (dy, dx) if swap else (dx, dy)
            acc[0, ky0 + sy0:ky0 + sy1, kx0 + sx0:kx0 + sx1] += first * patch
            acc[1, ky0 + sy0:ky0 + sy1, kx0 + sx0:kx0 + sx1] += second * patch
        out[t, :, y0:y1, x0:x1] = acc
    return out


def c_mot_from_record(sampled_tracks: np.ndarray, sampled_visibility: np.ndarray | None, height: int, width: int,
                      params: dict) -> np.ndarray:
    """Rebuild a row's ``c_mot`` [T, 2, H, W] from what a trajectory shard stores by default.

    ``sampled_tracks`` float32 [T, k, 2] (x, y) px and ``sampled_visibility`` bool [T, k] are the
    shard's sampled tracks; ``params`` is its ``c_mot_params`` JSON (kernel_size, sigma,
    normalise_kernel, smooth, channel_order, mask_invisible, dtype). The result equals the dense
    ``c_mot`` the stage writes with ``c_mot: array`` bit for bit; a training loader calls this.
    """
    kernel = (gaussian_kernel(int(params["kernel_size"]), float(params["sigma"]), bool(params["normalise_kernel"]))
              if params.get("smooth", True) else None)
    visibility = sampled_visibility if params.get("mask_invisible", True) else None
    return motion_conditions(np.asarray(sampled_tracks, np.float32), int(height), int(width), visibility, kernel,
                             str(params.get("channel_order", "dx,dy")), np.dtype(params.get("dtype", "float16")))


def _swap(channel_order: str) -> bool:
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order {channel_order!r} is not one of {CHANNEL_ORDERS}")
    return channel_order == "dy,dx"
