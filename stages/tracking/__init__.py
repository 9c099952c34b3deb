"""Point tracking: one interface, backends chosen by config.

    tracker = make_tracker(TrackingConfig(backend="lk"))
    tracks, visibility = tracker.track(frames, queries)

``frames`` uint8 [T, H, W, 3] RGB; ``queries`` float32 [N, 3] as ``(t, x, y)``: frame index and
pixel position (pixel centres at integers, the top-left pixel is ``(0, 0)``). Returns ``tracks``
float32 [T, N, 2] as ``(x, y)`` pixels in every frame (before and after the query frame) and
``visibility`` bool [T, N] (False where the point is occluded, lost, or outside the frame).

Backends:

- ``lk`` (default, no weights): OpenCV pyramidal Lucas-Kanade with a forward-backward check
  (:mod:`stages.tracking.lk`).
- ``cotracker``: CoTracker 2 / 3, offline or online, through ``torch.hub.load``
  (:mod:`stages.tracking.cotracker`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from pipeline.config import ConfigError


@dataclass(frozen=True)
class LKConfig:
    """Pyramidal Lucas-Kanade, frame to frame, with a forward-backward consistency check."""

    win_size: int = 9  # search window side, pixels (odd); 9..21 are sensible (cost grows ~ with area)
    max_level: int = 3  # pyramid levels above the base (3: motions up to ~ win_size * 8 px per frame)
    fb_threshold: float | None = 1.0  # px; a step whose forward-backward error exceeds it loses the point
    max_iterations: int = 10
    epsilon: float = 0.03  # px; iteration stops when the update is smaller
    min_eig_threshold: float = 1e-4  # OpenCV's minEigThreshold: untextured windows fail
    neighbours: int = 8  # a lost point moves with the median motion of this many nearest tracked points

    def __post_init__(self) -> None:
        if self.win_size < 3 or self.win_size % 2 == 0:
            raise ConfigError(f"tracking.lk.win_size must be odd and >= 3, got {self.win_size}")
        if not 0 <= self.max_level <= 8:
            raise ConfigError(f"tracking.lk.max_level must be in 0..8, got {self.max_level}")
        if self.fb_threshold is not None and self.fb_threshold <= 0:
            raise ConfigError(f"tracking.lk.fb_threshold must be > 0 or null, got {self.fb_threshold}")
        if self.max_iterations < 1 or self.epsilon <= 0 or self.neighbours < 1:
            raise ConfigError("tracking.lk: max_iterations, epsilon and neighbours must be positive")


@dataclass(frozen=True)
class CoTrackerConfig:
    """CoTracker through ``torch.hub.load(repo_or_dir, model, source=source)``.

    ``model`` is a hub entry point: ``cotracker2``, ``cotracker2_online``, ``cotracker2v1``,
    ``cotracker2v1_online``, ``cotracker3_offline``, ``cotracker3_online``. ``repo_or_dir`` may be a
    local clone (``source: local``). With ``checkpoint`` (a local path or fsspec URL of a state
    dict) the hub model is built with ``pretrained=False`` and the weights are loaded with
    ``torch.load(weights_only=True)``; otherwise the hub entry downloads its own weights.
    """

    repo_or_dir: str = "facebookresearch/co-tracker"
    model: str = "cotracker3_offline"
    source: Literal["github", "local"] = "github"
    checkpoint: str | None = None
    online: bool | None = None  # None: from the model name ("_online")
    device: str = "auto"  # auto: cuda when the stage has num_gpus > 0 and CUDA is visible, else cpu
    window_frames: int | None = None  # frames per offline call; None: as many as memory_budget_mb allows
    memory_budget_mb: float = 8192.0
    min_window_frames: int = 8
    visibility_threshold: float = 0.5  # for models that return float visibility
    trust_repo: bool = True  # passed to torch.hub for github sources

    def __post_init__(self) -> None:
        if self.window_frames is not None and self.window_frames < 2:
            raise ConfigError(f"tracking.cotracker.window_frames must be >= 2, got {self.window_frames}")
        if self.memory_budget_mb <= 0 or self.min_window_frames < 2:
            raise ConfigError("tracking.cotracker: memory_budget_mb must be > 0 and min_window_frames >= 2")

    @property
    def is_online(self) -> bool:
        return self.online if self.online is not None else self.model.endswith("_online")


@dataclass(frozen=True)
class TrackingConfig:
    backend: Literal["lk", "cotracker"] = "lk"
    lk: LKConfig = field(default_factory=LKConfig)
    cotracker: CoTrackerConfig = field(default_factory=CoTrackerConfig)


class Tracker(Protocol):
    def track(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames uint8 [T, H, W, 3], queries float32 [N, 3] (t, x, y) -> tracks [T, N, 2], visibility [T, N]."""


def check_inputs(frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise tracker inputs; raises ValueError quoting the bad value.

    Returns ``frames`` (uint8 [T, H, W, 3]) and ``queries`` (float32 [N, 3]). A query's frame must
    be an integer in ``[0, T)`` and its position inside ``[0, W-1] x [0, H-1]``.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[0] < 2:
        raise ValueError(f"need at least 2 frames to track, got {frames.shape[0]}")
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != 3:
        raise ValueError(f"queries must be float [N, 3] as (t, x, y), got shape {queries.shape}")
    t, h, w = frames.shape[:3]
    if len(queries):
        qt = queries[:, 0]
        if np.any(qt != np.round(qt)) or qt.min() < 0 or qt.max() > t - 1:
            raise ValueError(f"query frames must be integers in [0, {t - 1}], got {qt.min()}..{qt.max()}")
        x, y = queries[:, 1], queries[:, 2]
        if x.min() < 0 or x.max() > w - 1 or y.min() < 0 or y.max() > h - 1:
            raise ValueError(f"query positions must lie in [0, {w - 1}] x [0, {h - 1}], got "
                             f"x {x.min():.1f}..{x.max():.1f}, y {y.min():.1f}..{y.max():.1f}")
    return frames, queries


def inside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """bool [...]: whether (x, y) points [..., 2] lie inside the frame ``[0, W-1] x [0, H-1]``."""
    x, y = points[..., 0], points[..., 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1) & np.isfinite(x) & np.isfinite(y)


def make_tracker(config: TrackingConfig, num_gpus: float = 1.0) -> Tracker:
    """The tracker named by ``config.backend`` (CoTracker loads its model on first use or ``load()``).

    ``num_gpus``: the GPUs granted to the caller; CoTracker's ``device: auto`` uses CUDA only then.
    """
    if config.backend == "lk":
        from stages.tracking.lk import LKTracker

        return LKTracker(config.lk)
    if config.backend == "cotracker":
        from stages.tracking.cotracker import CoTracker

        return CoTracker(config.cotracker, num_gpus)
    raise ConfigError(f"unknown tracking backend {config.backend!r} (known: lk, cotracker)")
