"""Trajectory stage: ReVideo-style motion conditions from tracked points.

Following ReVideo (NeurIPS 2024), whose training preprocessing was never released:

1. a grid over the first frame (``grid_stride`` px, or ``grid_size`` x ``grid_size`` points),
   optionally restricted to a mask, gives N_init queries;
2. track them (:mod:`stages.tracking`, LK by default, CoTracker in production);
3. each track's path length over its visible steps; threshold = the mean length; keep the tracks
   longer than it;
4. sample N of them (N uniform in ``[min_samples, max_samples]``, ReVideo: 1..10) without
   replacement with probability proportional to normalised length, seeded from the video id;
5. rasterise per-frame displacement maps ``c_mot`` [T, 2, H, W]: frame 0 all zero; for t >= 1, at
   each sampled point's rounded, clipped position in frame t, its displacement from frame t-1;
6. smooth each map with a Gaussian (kernel 51, sigma 10, unnormalised: a lone point's blob peaks
   at its displacement, as ReVideo's released inference code does; ``normalise_kernel`` to sum 1).

Channel order of ``c_mot`` is ``(dx, dy)`` by default (``channel_order: "dx,dy"``); ReVideo's
released code uses ``(dy, dx)`` (``channel_order: "dy,dx"``). Units are pixels at the working
resolution, per frame. The pure math is in the module-level functions below (shapes and units in
their docstrings); :class:`TrajectoryStage` wires them to rows.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from pipeline import storage
from pipeline.config import ConfigError, Resources
from pipeline.stage import Stage, add_output
from stages.tracking import TrackingConfig, make_tracker

log = logging.getLogger(__name__)

CHANNEL_ORDERS = ("dx,dy", "dy,dx")


class ClipTooShortError(ValueError):
    """The decoded clip has fewer frames than the trajectory window."""


# ----------------------------------------------------------------------------- pure math


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


def _swap(channel_order: str) -> bool:
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order {channel_order!r} is not one of {CHANNEL_ORDERS}")
    return channel_order == "dy,dx"


# ----------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class TrajectoryConfig:
    """ReVideo trajectory sampling. See the module docstring and docs/trajectories.md."""

    num_frames: int | None = None  # window length; a shorter clip is a row error; None: every decoded frame
    grid_size: int | None = 32  # size x size points over the first frame ...
    grid_stride: int | None = None  # ... or one point every grid_stride px (wins when set)
    use_mask: bool = True  # restrict the grid to row["mask"] (bool [H, W]) or row["mask_uri"] when present
    min_samples: int = 1
    max_samples: int = 10
    seed: int = 0  # mixed with the video id
    kernel_size: int = 51
    sigma: float = 10.0
    normalise_kernel: bool = False
    smooth: bool = True
    channel_order: Literal["dx,dy", "dy,dx"] = "dx,dy"
    mask_invisible: bool = True  # draw a step only when the point is visible at t-1 and t
    c_mot: Literal["array", "uri", "none"] = "array"  # row array, a .npy artifact, or not at all
    c_mot_dtype: Literal["float16", "float32"] = "float16"
    keep_frames: bool = True  # False drops the decoded frames after this stage
    previews: bool = True
    preview_width: int = 256
    preview_max_frames: int = 32
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, min_actors=1, max_actors=2))

    def __post_init__(self) -> None:
        if self.num_frames is not None and self.num_frames < 2:
            raise ConfigError(f"trajectories.num_frames must be >= 2, got {self.num_frames}")
        if self.grid_stride is None and self.grid_size is None:
            raise ConfigError("trajectories: set grid_size or grid_stride")
        if (self.grid_stride is not None and self.grid_stride < 1) or (self.grid_size is not None
                                                                       and self.grid_size < 1):
            raise ConfigError("trajectories.grid_size / grid_stride must be >= 1")
        if self.min_samples < 0 or self.max_samples < max(1, self.min_samples):
            raise ConfigError(f"trajectories: need 0 <= min_samples <= max_samples >= 1, got "
                              f"{self.min_samples}..{self.max_samples}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0 or self.sigma <= 0:
            raise ConfigError(f"trajectories.kernel_size must be odd and sigma > 0, got "
                              f"{self.kernel_size}, {self.sigma}")


class TrajectoryStage(Stage):
    """Reads ``frames`` (+ optional ``mask`` / ``mask_uri``); writes tracks, visibility,
    path_lengths, sampled_index, c_mot (or c_mot_uri) and scalars; previews in ``outputs``."""

    name = "trajectories"
    config_class = TrajectoryConfig
    reads = ("frames",)
    writes = ("tracks", "visibility", "path_lengths", "sampled_index", "c_mot", "c_mot_uri", "n_init",
              "n_kept", "n_sampled", "length_threshold", "c_mot_channels", "num_frames")

    def __init__(self, config: TrajectoryConfig, context):
        super().__init__(config, context)
        self.tracker = None
        self.kernel = None

    def preflight(self) -> None:
        cfg = self.config.tracking
        if cfg.backend == "cotracker":
            from stages.tracking.cotracker import check_config

            check_config(cfg.cotracker)

    def setup(self) -> None:
        self.tracker = make_tracker(self.config.tracking)
        self.tracker.load()
        if self.config.smooth:
            self.kernel = gaussian_kernel(self.config.kernel_size, self.config.sigma, self.config.normalise_kernel)

    def process(self, row: dict) -> dict:
        from stages.tracking import viz

        cfg = self.config
        if self.tracker is None:
            self.setup()
        frames = np.asarray(row["frames"])
        if cfg.num_frames is not None:
            if frames.shape[0] < cfg.num_frames:
                raise ClipTooShortError(f"clip has {frames.shape[0]} frames after decoding, the trajectory "
                                        f"window needs {cfg.num_frames}")
            frames = frames[:cfg.num_frames]
        t_len, height, width = frames.shape[:3]
        mask = self._mask(row, height, width) if cfg.use_mask else None
        points = grid_points(height, width, stride=cfg.grid_stride, size=cfg.grid_size, mask=mask)
        if not len(points):
            raise ValueError("the grid has no point inside the mask")
        queries = np.concatenate([np.zeros((len(points), 1), np.float32), points], 1)
        tracks, visibility = self.tracker.track(frames, queries)
        lengths = path_lengths(tracks, visibility)
        video_id = str(row.get("video_id") or row.get("job_id") or "")
        rng = np.random.default_rng(video_seed(video_id, cfg.seed))
        index = sample_tracks(lengths, rng, cfg.min_samples, cfg.max_samples)
        kept, _ = selection_probabilities(lengths)
        row.update(tracks=tracks.astype(np.float32), visibility=visibility.astype(bool),
                   path_lengths=lengths, sampled_index=index.astype(np.int32), n_init=int(len(points)),
                   n_kept=int(len(kept)), n_sampled=int(len(index)), length_threshold=length_threshold(lengths),
                   c_mot_channels=cfg.channel_order, num_frames=int(t_len), height=int(height), width=int(width))
        c_mot = None
        if cfg.c_mot != "none" or cfg.previews:
            c_mot = motion_conditions(tracks[:, index], height, width,
                                      visibility[:, index] if cfg.mask_invisible else None, self.kernel,
                                      cfg.channel_order, np.dtype(cfg.c_mot_dtype))
        if cfg.c_mot == "array":
            row["c_mot"] = c_mot
        elif cfg.c_mot == "uri":
            row["c_mot_uri"] = self._write_npy(row, c_mot)
        if cfg.previews:
            self._previews(row, frames, tracks, visibility, index, c_mot, viz)
        if not cfg.keep_frames:
            row.pop("frames", None)
        return row

    def _mask(self, row: dict, height: int, width: int) -> np.ndarray | None:
        mask = row.get("mask")
        if mask is None and row.get("mask_uri"):
            data = np.frombuffer(storage.read_bytes(row["mask_uri"], self.context.storage), np.uint8)
            mask = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise ValueError(f"mask_uri {row['mask_uri']!r} is not a readable image")
        if mask is None:
            return None
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != (height, width):
            mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        return mask > 0

    def _key(self, row: dict) -> tuple[str, str]:
        return storage.safe_id(str(row.get("video_id") or "video")), storage.safe_id(str(row.get("job_id") or "job"))

    def _write_npy(self, row: dict, c_mot: np.ndarray) -> str:
        vid, job = self._key(row)
        url = storage.join_url(self.context.output_url, "c_mot", vid, f"{job}.npy")
        buffer = io.BytesIO()
        np.save(buffer, c_mot, allow_pickle=False)
        return storage.write_bytes(url, buffer.getvalue(), self.context.storage)

    def _previews(self, row, frames, tracks, visibility, index, c_mot, viz) -> None:
        from pipeline import previews

        vid, job = self._key(row)
        fps = float(row.get("fps") or 8.0)
        base = storage.join_url(self.context.output_url, "previews", vid)
        overlay = viz.draw_tracks(frames, tracks[:, index], visibility[:, index])
        url = previews.write_animation(overlay, storage.join_url(base, f"{job}-tracks.gif"), fps,
                                       width=self.config.preview_width, max_frames=self.config.preview_max_frames,
                                       options=self.context.storage)
        add_output(row, "tracks_overlay", url)
        colour = viz.motion_colour(c_mot, self.config.channel_order)
        url = previews.write_animation(colour, storage.join_url(base, f"{job}-c_mot.gif"), fps,
                                       width=self.config.preview_width, max_frames=self.config.preview_max_frames,
                                       options=self.context.storage)
        add_output(row, "c_mot_preview", url)
