"""ReVideo training samples from decoded windows and the trajectory shards' sparse tracks.

The paper (its training code is unreleased) trains on WebVid clips at 512x320 with a random edit
region of at least 64x64 and 1-10 trajectories inside it, picked with probability proportional
to path length; the motion map is rasterised from those tracks. Per stage:

- stage 1 (motion-only control): the region's trajectories drive the clip; the content
  condition is empty (-1 everywhere), so the module learns motion from the tracks alone;
- stage 2 (decoupled): the region and its trajectories come from video V1 and the rest of the
  frame from video V2; the target is that composite and the content condition is it with the
  region at -1 (so content outside and motion inside come from different videos);
- stage 3 (deblocking): ordinary videos, region + trajectories as stage 1, the content
  condition as at inference (the clip with the region at -1).

A sample is ``video`` uint8 [F, H, W, 3] (the target clip; its frame 0 is the reference frame),
``box`` int32 [4] (x0, y0, x1, y1; x1/y1 exclusive) and ``c_mot`` float16 [F, 2, H, W] (dy, dx,
px per frame, Gaussian-smoothed). The content condition and the region map are rebuilt from
``video`` and ``box`` on the trainer (:func:`content_condition`, :func:`region_maps`).
All randomness comes from the ``rng`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.edit.revideo.conditions import region_map, tracks_in_boxes
from stages.motion_conditions import gaussian_kernel, motion_conditions, path_lengths, sample_tracks

STAGES = (1, 2, 3)


@dataclass(frozen=True)
class SampleConfig:
    """How samples are drawn (defaults: the paper's training setup, ReVideo's inference kernel)."""

    min_region: int = 64  # region sides >= this many px (paper: 64 at 512x320)
    max_region_fraction: float = 1.0  # region sides <= this fraction of the frame's
    min_trajectories: int = 1
    max_trajectories: int = 10
    kernel_size: int = 51  # Gaussian of the motion map (the release's inference values)
    kernel_sigma: float = 10.0


@dataclass
class ClipTracks:
    """One decoded window and its tracks: frames uint8 [F, H, W, 3]; tracks float32 [F, N, 2]
    (x, y) px; visibility bool [F, N] (all True when the shard has none)."""

    frames: np.ndarray
    tracks: np.ndarray
    visibility: np.ndarray


def random_box(rng: np.random.Generator, height: int, width: int, min_size: int, max_fraction: float = 1.0,
               anchor: tuple[float, float] | None = None) -> np.ndarray:
    """A random box int32 [4] (x0, y0, x1, y1) with sides uniform in [min_size, max_fraction * side],
    placed uniformly, or (with ``anchor`` (x, y) px) uniformly among placements that contain it."""
    if min_size > min(height, width):
        raise ValueError(f"min_region {min_size} exceeds the {width}x{height} frame")
    out = []
    for side, pos in ((width, None if anchor is None else anchor[0]), (height, None if anchor is None else anchor[1])):
        hi = max(min_size, int(side * max_fraction))
        size = int(rng.integers(min_size, hi + 1))
        lo_start, hi_start = 0, side - size
        if pos is not None:  # keep floor(pos) inside [start, start + size)
            p = int(np.clip(np.floor(pos), 0, side - 1))
            lo_start, hi_start = max(lo_start, p - size + 1), min(hi_start, p)
        start = int(rng.integers(lo_start, hi_start + 1))
        out.append((start, start + size))
    (x0, x1), (y0, y1) = out
    return np.array([x0, y0, x1, y1], np.int32)


def choose_tracks(tracks: np.ndarray, visibility: np.ndarray, box: np.ndarray, rng: np.random.Generator,
                  min_n: int = 1, max_n: int = 10) -> np.ndarray:
    """Indices int64 [k] of tracks starting (visible) inside ``box``, k uniform in [min_n, max_n]
    capped by the candidates longer than their mean length, drawn with probability proportional
    to path length (:func:`stages.motion_conditions.sample_tracks`, the trajectory stage's rule)."""
    inside = tracks_in_boxes(tracks, box[None], visibility)
    if not len(inside):
        return inside
    picked = sample_tracks(path_lengths(tracks[:, inside], visibility[:, inside]), rng, min_n, max_n)
    return inside[picked]


def pick_region(clip: ClipTracks, rng: np.random.Generator, cfg: SampleConfig) -> tuple[np.ndarray, np.ndarray]:
    """(box int32 [4], track indices int64 [k]) for one clip: the box is anchored on a track drawn
    with probability proportional to its length (so a moving clip always yields >= 1 trajectory);
    a clip with no moving track gets a uniform box and no trajectory (an all-zero motion map)."""
    f, h, w = clip.frames.shape[:3]
    lengths = path_lengths(clip.tracks, clip.visibility) * np.asarray(clip.visibility[0], np.float32)
    anchor = None
    if lengths.sum() > 0:
        i = int(rng.choice(len(lengths), p=lengths / lengths.sum()))
        anchor = (float(clip.tracks[0, i, 0]), float(clip.tracks[0, i, 1]))
    box = random_box(rng, h, w, cfg.min_region, cfg.max_region_fraction, anchor)
    return box, choose_tracks(clip.tracks, clip.visibility, box, rng, cfg.min_trajectories, cfg.max_trajectories)


def composite(inside: np.ndarray, outside: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Stage 2's decoupled clip uint8 [F, H, W, 3]: ``outside`` with ``box`` taken from ``inside``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    out = outside.copy()
    out[:, y0:y1, x0:x1] = inside[:, y0:y1, x0:x1]
    return out


def build_sample(stage: int, clip: ClipTracks, rng: np.random.Generator, cfg: SampleConfig,
                 other: ClipTracks | None = None) -> dict[str, np.ndarray]:
    """One training sample (see the module docstring) of ``stage``; stage 2 needs ``other`` (V2)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage}")
    f, h, w = clip.frames.shape[:3]
    box, index = pick_region(clip, rng, cfg)
    video = clip.frames
    if stage == 2:
        if other is None or other.frames.shape != clip.frames.shape:
            raise ValueError("stage 2 needs a second clip of the same shape (V2)")
        video = composite(clip.frames, other.frames, box)
    kernel = gaussian_kernel(cfg.kernel_size, cfg.kernel_sigma)
    c_mot = motion_conditions(clip.tracks[:, index], h, w, clip.visibility[:, index], kernel, "dy,dx", np.float16)
    return {"video": np.ascontiguousarray(video), "box": box, "c_mot": c_mot}


def region_maps(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Region maps float32 [B, H, W] of boxes int [B, 4]."""
    return np.stack([region_map(b[None].astype(np.int64), height, width) for b in np.asarray(boxes)])


def content_condition(video: np.ndarray, region: np.ndarray, stage: int) -> np.ndarray:
    """The content condition float32 [B, F, 3, H, W] in [-1, 1] of ``video`` uint8 [B, F, H, W, 3]
    and region maps [B, H, W]: -1 inside the region (everywhere in stage 1: no content)."""
    out = video.astype(np.float32).transpose(0, 1, 4, 2, 3) / 127.5 - 1.0
    if stage == 1:
        out[:] = -1.0
    else:
        out[np.broadcast_to((region > 0)[:, None, None], out.shape)] = -1.0
    return out
