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
resolution, per frame. The pure math is in :mod:`stages.motion_conditions` (shapes and units in
its docstrings); :class:`TrajectoryStage` wires it to rows.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from pipeline import devices, storage
from pipeline.config import ConfigError, Resources
from pipeline.stage import Stage, add_output
from stages.motion_conditions import (
    gaussian_kernel,
    grid_points,
    length_threshold,
    motion_conditions,
    path_lengths,
    sample_tracks,
    selection_probabilities,
    video_seed,
)
from stages.tracking import TrackingConfig, make_tracker

log = logging.getLogger(__name__)

class ClipTooShortError(ValueError):
    """The decoded clip has fewer frames than the trajectory window."""


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
    # none (default): rows carry the sampled tracks and the rasterisation parameters, and the
    # consumer rebuilds c_mot (stages.motion_conditions.c_mot_from_record); array: dense inline;
    # uri: a .npy artifact per row
    c_mot: Literal["array", "uri", "none"] = "none"
    c_mot_dtype: Literal["float16", "float32"] = "float16"
    store_grid_tracks: bool = False  # also keep every grid point's track and visibility (tracks, visibility)
    keep_frames: bool = True  # False drops the decoded frames after this stage
    previews: bool = True  # for the rows the run picks (run.preview_first / preview_every)
    preview_format: Literal["webp", "gif"] = "webp"
    preview_width: int = 256
    preview_max_frames: int = 32
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # all: every row (the trajectory job; an edit job that enables the stage); needing: only rows whose
    # method asks for tracks (e.g. revideo rows with motion_source: track)
    apply_to: Literal["all", "needing"] = "all"
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
    writes = ("sampled_tracks", "sampled_visibility", "tracks", "visibility", "path_lengths", "sampled_index",
              "c_mot", "c_mot_uri", "c_mot_params", "n_init",
              "n_kept", "n_sampled", "length_threshold", "c_mot_channels", "num_frames")

    def __init__(self, config: TrajectoryConfig, context):
        super().__init__(config, context)
        self.tracker = None
        self.kernel = None

    def preflight(self) -> None:
        cfg = self.config.tracking
        if cfg.backend == "cotracker":
            from stages.tracking.cotracker import check_cached, check_config

            devices.check_device(cfg.cotracker.device, self.resources.num_gpus, self.name)
            check_config(cfg.cotracker)
            check_cached(cfg.cotracker)

    def setup(self) -> None:
        self.tracker = make_tracker(self.config.tracking, self.resources.num_gpus)
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
        row.update(sampled_tracks=tracks[:, index].astype(np.float32),
                   sampled_visibility=visibility[:, index].astype(bool), path_lengths=lengths,
                   sampled_index=index.astype(np.int32), n_init=int(len(points)), n_kept=int(len(kept)),
                   n_sampled=int(len(index)), length_threshold=length_threshold(lengths),
                   c_mot_channels=cfg.channel_order, c_mot_params=json.dumps(self.c_mot_params(), sort_keys=True),
                   num_frames=int(t_len), height=int(height), width=int(width))
        if cfg.store_grid_tracks:
            row.update(tracks=tracks.astype(np.float32), visibility=visibility.astype(bool))
        previews_wanted = cfg.previews and row.get("make_previews", True)
        c_mot = None
        if cfg.c_mot != "none" or previews_wanted:
            c_mot = motion_conditions(tracks[:, index], height, width,
                                      visibility[:, index] if cfg.mask_invisible else None, self.kernel,
                                      cfg.channel_order, np.dtype(cfg.c_mot_dtype))
        if cfg.c_mot == "array":
            row["c_mot"] = c_mot
        elif cfg.c_mot == "uri":
            row["c_mot_uri"] = self._write_npy(row, c_mot)
        if previews_wanted:
            self._previews(row, frames, tracks, visibility, index, c_mot, viz)
        if not cfg.keep_frames:
            row.pop("frames", None)
        return row

    def applies_to(self, row: dict) -> bool:
        if self.config.apply_to == "all":
            return True
        from stages.edit import row_needs

        return row_needs(row, "trajectories")

    def c_mot_params(self) -> dict:
        """What :func:`stages.motion_conditions.c_mot_from_record` needs to rebuild ``c_mot`` exactly."""
        cfg = self.config
        return {"kernel_size": cfg.kernel_size, "sigma": cfg.sigma, "normalise_kernel": cfg.normalise_kernel,
                "smooth": cfg.smooth, "channel_order": cfg.channel_order, "mask_invisible": cfg.mask_invisible,
                "dtype": cfg.c_mot_dtype}

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
        fmt = self.config.preview_format
        overlay = viz.draw_tracks(frames, tracks[:, index], visibility[:, index])
        url = previews.write_animation(overlay, storage.join_url(base, f"{job}-tracks.{fmt}"), fps,
                                       width=self.config.preview_width, max_frames=self.config.preview_max_frames,
                                       options=self.context.storage)
        add_output(row, "tracks_overlay", url)
        colour = viz.motion_colour(c_mot, self.config.channel_order)
        url = previews.write_animation(colour, storage.join_url(base, f"{job}-c_mot.{fmt}"), fps,
                                       width=self.config.preview_width, max_frames=self.config.preview_max_frames,
                                       options=self.context.storage)
        add_output(row, "c_mot_preview", url)
