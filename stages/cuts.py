"""Cut checks: find shot cuts in the decoded window before the expensive stages see it.

A cut inside a window spoils tracks, atlases and edits without any error. This stage scores
each pair of consecutive frames with a content detector of the kind PySceneDetect's
``ContentDetector`` uses — the mean absolute change of hue, saturation and value between the
frames, on a copy at most ``analysis_width`` px wide — and calls a cut, as PySceneDetect's
``AdaptiveDetector`` does, where the score is at least ``min_score`` (its ``min_content_val``,
15 on the same 0-255 scale) and at least ``adaptive_ratio`` (3) times the mean score of the
``window`` frame pairs on either side (so a fast pan, whose neighbours change as much, is not a
cut), and at least ``min_scene_frames`` after the previous cut. ``detector: content`` uses a
fixed ``threshold`` instead (``ContentDetector``, default 27). Then, per ``policy``:

- ``skip``: the row becomes ``skipped`` with the cut's frame in ``error`` (it stays in the
  manifest; the same row with other ``params``, e.g. ``{"decode.start_seconds": 4}``, is a new
  job);
- ``longest``: the window becomes its longest cut-free span (``cut_window`` = [start, end) in
  the decoded frames); a span shorter than ``min_frames`` skips the row.

Writes ``cuts`` (frame indices where a new shot starts) on every row it checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from pipeline.config import ConfigError, Resources
from pipeline.stage import STATUS_SKIPPED, Stage


@dataclass(frozen=True)
class CutsConfig:
    detector: Literal["adaptive", "content"] = "adaptive"
    min_score: float = 15.0  # adaptive: the least mean |dH|,|dS|,|dV| (0-255) of a cut ...
    adaptive_ratio: float = 3.0  # ... and at least this many times its neighbours' mean score
    window: int = 2  # adaptive: neighbouring frame pairs on each side
    threshold: float = 27.0  # content: the score that marks a cut
    min_scene_frames: int = 3  # a cut closer than this to the previous one is ignored
    policy: Literal["skip", "longest"] = "skip"
    min_frames: int = 8  # "longest": skip the row when the longest cut-free span is shorter
    analysis_width: int = 256  # frames are scored on a copy at most this wide
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=0.5, min_actors=1, max_actors=2,
                                                                   compute="tasks", row_timeout_s=600.0))

    def __post_init__(self) -> None:
        if min(self.threshold, self.min_score, self.adaptive_ratio) <= 0 or self.window < 1 \
                or self.min_scene_frames < 1 or self.min_frames < 1 or self.analysis_width < 16:
            raise ConfigError("cuts: need threshold, min_score, adaptive_ratio > 0, window >= 1, "
                              "min_scene_frames >= 1, min_frames >= 1, analysis_width >= 16")


def content_scores(frames: np.ndarray, analysis_width: int = 256) -> np.ndarray:
    """Change between consecutive frames: float32 [T-1], the mean absolute difference of the HSV
    channels (each 0-255, OpenCV's 0-179 hue rescaled), averaged over H, S and V.

    ``frames``: uint8 [T, H, W, 3] RGB.
    """
    t, h, w = frames.shape[:3]
    if t < 2:
        return np.zeros(0, np.float32)
    scale = min(1.0, analysis_width / w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    hsv = []
    for frame in frames:
        small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if scale < 1 else frame
        out = cv2.cvtColor(small, cv2.COLOR_RGB2HSV).astype(np.float32)
        out[..., 0] *= 255.0 / 179.0
        hsv.append(out)
    hsv = np.stack(hsv)
    return np.abs(np.diff(hsv, axis=0)).mean(axis=(1, 2, 3)).astype(np.float32)


def find_cuts(scores: np.ndarray, threshold: float, min_scene_frames: int = 3) -> list[int]:
    """Frame indices where a new shot starts: ``i + 1`` for each score ``i`` above ``threshold``,
    at least ``min_scene_frames`` after the previous cut (or the clip's start)."""
    return _spaced(np.nonzero(np.asarray(scores, np.float32) >= threshold)[0] + 1, min_scene_frames)


def adaptive_ratios(scores: np.ndarray, window: int = 2) -> np.ndarray:
    """Each score over the mean of up to ``window`` scores on either side (itself excluded): float32 [N].

    A lone spike (a cut) stands far above its neighbours; a fast pan does not. A zero
    neighbourhood gives ``inf`` for a positive score.
    """
    scores = np.asarray(scores, np.float32)
    out = np.zeros(scores.size, np.float32)
    for i, score in enumerate(scores):
        around = np.r_[scores[max(0, i - window):i], scores[i + 1:i + 1 + window]]
        mean = float(around.mean()) if around.size else 0.0
        out[i] = score / mean if mean > 0 else (np.inf if score > 0 else 0.0)
    return out


def find_cuts_adaptive(scores: np.ndarray, min_score: float = 15.0, ratio: float = 3.0, window: int = 2,
                       min_scene_frames: int = 3) -> list[int]:
    """Frame indices where a new shot starts: scores at least ``min_score`` and ``ratio`` times their
    neighbourhood's mean (:func:`adaptive_ratios`), at least ``min_scene_frames`` apart."""
    scores = np.asarray(scores, np.float32)
    hits = np.nonzero((scores >= min_score) & (adaptive_ratios(scores, window) >= ratio))[0] + 1
    return _spaced(hits, min_scene_frames)


def _spaced(frames: np.ndarray, min_scene_frames: int) -> list[int]:
    cuts: list[int] = []
    last = 0
    for frame in frames.tolist():
        if frame - last >= min_scene_frames:
            cuts.append(int(frame))
            last = frame
    return cuts


def longest_span(num_frames: int, cuts: list[int]) -> tuple[int, int]:
    """The longest cut-free ``[start, end)`` of a clip of ``num_frames`` frames (the earliest on a tie)."""
    bounds = [0, *cuts, num_frames]
    spans = [(bounds[i + 1] - bounds[i], -bounds[i]) for i in range(len(bounds) - 1)]
    length, neg_start = max(spans)
    return -neg_start, -neg_start + length


class CutsStage(Stage):
    """Reads ``frames``; writes ``cuts`` (and ``cut_window``); skips or trims rows with a cut."""

    name = "cuts"
    config_class = CutsConfig
    reads = ("frames",)
    writes = ("cuts", "cut_window", "num_frames")

    def process(self, row: dict) -> dict:
        cfg = self.config
        frames = np.asarray(row["frames"])
        scores = content_scores(frames, cfg.analysis_width)
        if cfg.detector == "adaptive":
            cuts = find_cuts_adaptive(scores, cfg.min_score, cfg.adaptive_ratio, cfg.window, cfg.min_scene_frames)
        else:
            cuts = find_cuts(scores, cfg.threshold, cfg.min_scene_frames)
        row["cuts"] = cuts
        if not cuts:
            return row
        if cfg.policy == "longest":
            start, end = longest_span(len(frames), cuts)
            if end - start >= cfg.min_frames:
                row["frames"] = frames[start:end]
                row["cut_window"] = [start, end]
                row["num_frames"] = end - start
                return row
            reason = (f"shot cut(s) at frame(s) {cuts}: the longest cut-free span has {end - start} frames, "
                      f"fewer than cuts.min_frames={cfg.min_frames}")
        else:
            reason = f"shot cut at frame {cuts[0]} of the decoded window (all cuts: {cuts}; cuts.policy=skip)"
        row.pop("frames", None)
        row["status"] = STATUS_SKIPPED
        row["error"] = f"ShotCut: {reason}"
        return row
