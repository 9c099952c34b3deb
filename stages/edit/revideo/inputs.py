"""Read and validate a ReVideo row's inputs into clip coordinates, before any model work.

Row fields (see docs/revideo.md): ``edit_box`` (JSON box or list of boxes) or ``mask_uri`` (an
image whose nonzero pixels' bounding box is the region); ``trajectories`` (JSON, one list of
[x, y] per point: ``num_frames`` positions or start/end) or ``motion_source: "track"`` (the
trajectory stage's tracks that start inside the boxes); optional ``edited_first_frame_uri``.
Every problem is a :class:`~stages.edit.base.RowFieldError` that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline import storage
from pipeline.storage import StorageOptions
from stages.edit.base import RowFieldError
from stages.edit.diffusion.base import select_frames
from stages.edit.diffusion.config import DiffusionConfig
from stages.edit.revideo.conditions import (
    boxes_to_clip,
    check_boxes,
    check_starts,
    clip_transform,
    linear_tracks,
    mask_box,
    parse_boxes,
    parse_trajectories,
    to_clip,
    tracks_in_boxes,
)
from stages.edit.revideo.config import ReVideoConfig
from stages.motion_conditions import path_lengths, sample_tracks, video_seed

MOTION_SOURCES = ("trajectories", "track")


@dataclass
class RowInputs:
    """A row's inputs in clip pixels: boxes int64 [K, 4] (x0, y0, x1, y1), tracks float32 [F, N, 2]
    (x, y), visibility bool [F, N] or None, and the edited first frame uint8 [H, W, 3] or None."""

    boxes: np.ndarray
    tracks: np.ndarray
    visibility: np.ndarray | None
    first_frame: np.ndarray | None


def _given(row: dict, key: str) -> bool:
    value = row.get(key)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return not (isinstance(value, str) and not value.strip())


def motion_source(row: dict) -> str:
    """The row's motion source: "trajectories" (default) or "track"."""
    if not _given(row, "motion_source"):
        return "trajectories"
    source = str(row["motion_source"]).strip()
    if source not in MOTION_SOURCES:
        raise RowFieldError(f"motion_source must be one of {MOTION_SOURCES}, got {source!r}")
    return source


def check_motion_fields(row: dict) -> None:
    """RowFieldError when the row names no edit region or no motion."""
    if not (_given(row, "edit_box") or _given(row, "mask_uri")):
        raise RowFieldError("method 'revideo' needs row field 'edit_box' (JSON [x0, y0, x1, y1] or a list of "
                            "boxes, source pixels) or 'mask_uri' (an image of the edit region)")
    if motion_source(row) == "trajectories" and not _given(row, "trajectories"):
        raise RowFieldError("method 'revideo' needs row field 'trajectories' (JSON: per point, one [x, y] per "
                            "frame or [start, end]) or motion_source 'track' (the trajectory stage's tracks)")


def read_image(uri: str, field: str, options: StorageOptions | None, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """An image at any fsspec URL: uint8 RGB [H, W, 3] (or gray [H, W] with IMREAD_GRAYSCALE)."""
    try:
        data = storage.read_bytes(uri.strip(), options)
    except (FileNotFoundError, OSError) as exc:
        raise RowFieldError(f"{field} {uri!r} cannot be read: {exc}") from exc
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise RowFieldError(f"{field} {uri!r} is not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def source_boxes(row: dict, src_hw: tuple[int, int], options: StorageOptions | None) -> np.ndarray:
    """The edit boxes float64 [K, 4] in source pixels, checked against the frame."""
    height, width = src_hw
    if _given(row, "edit_box"):
        boxes = parse_boxes(row["edit_box"], "edit_box")
        check_boxes(boxes, height, width, "edit_box")
        return boxes
    mask = read_image(str(row["mask_uri"]), "mask_uri", options, cv2.IMREAD_GRAYSCALE)
    box = mask_box(mask, "mask_uri")
    if mask.shape != (height, width):  # a mask at another resolution covers the same picture
        box = box * np.array([width / mask.shape[1], height / mask.shape[0]] * 2)
    return box


def tracked_paths(row: dict, config: ReVideoConfig, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source-pixel tracks float64 [F, N, 2] and visibility [F, N] for ``motion_source: track``.

    The trajectory stage's tracks (every grid point's with ``store_grid_tracks``, else its sampled
    ones) over the clip's frames whose first point lies in a box; up to
    ``track_points`` of them sampled like the stage (longer than their mean, probability
    proportional to length, seeded by the video id; the longest ones when all are equal).
    """
    tracks, vis = row.get("tracks"), row.get("visibility")  # every grid track (store_grid_tracks: true)
    if not isinstance(tracks, np.ndarray):
        tracks, vis = row.get("sampled_tracks"), row.get("sampled_visibility")  # only the stage's sample
    if not isinstance(tracks, np.ndarray) or tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise RowFieldError("motion_source 'track' needs the trajectory stage's tracks: enable stages.trajectories "
                            "(with store_grid_tracks: true) in the job config")
    vis = np.ones(tracks.shape[:2], bool) if not isinstance(vis, np.ndarray) else vis.astype(bool)
    index = config.start_frame + np.arange(config.num_frames) * config.frame_stride
    if index[-1] >= len(tracks):
        raise RowFieldError(f"motion_source 'track': the trajectory stage tracked {len(tracks)} frames, the clip "
                            f"needs {index[-1] + 1} (set stages.trajectories.num_frames to null or larger)")
    tracks, vis = tracks[index].astype(np.float64), vis[index]
    candidates = tracks_in_boxes(tracks, boxes, vis)
    if not len(candidates):
        raise RowFieldError("motion_source 'track': no tracked point starts inside edit_box (use a denser "
                            "stages.trajectories.grid_size or a larger box)")
    lengths = path_lengths(tracks[:, candidates], vis[:, candidates])
    rng = np.random.default_rng(video_seed(str(row.get("video_id") or row.get("job_id") or ""), config.seed))
    pick = sample_tracks(lengths, rng, 1, config.track_points)
    if not len(pick):
        pick = np.argsort(-lengths, kind="stable")[:config.track_points]
    chosen = candidates[pick]
    return tracks[:, chosen], vis[:, chosen]


def first_frame(row: dict, config: ReVideoConfig, src_hw: tuple[int, int],
                options: StorageOptions | None) -> np.ndarray | None:
    """The edited first frame in the clip's geometry, uint8 [H, W, 3], or None when not given."""
    if not _given(row, "edited_first_frame_uri"):
        return None
    image = read_image(str(row["edited_first_frame_uri"]), "edited_first_frame_uri", options)
    if image.shape[:2] == tuple(src_hw):  # same picture as the video: the clip's own crop/resize
        one = DiffusionConfig(width=config.width, height=config.height, num_frames=1, resize=config.resize)
        return select_frames(image[None], one, "revideo")[0]
    interp = cv2.INTER_AREA if image.shape[0] * image.shape[1] > config.width * config.height else cv2.INTER_CUBIC
    return cv2.resize(image, (config.width, config.height), interpolation=interp)


def read_inputs(row: dict, config: ReVideoConfig, src_hw: tuple[int, int],
                options: StorageOptions | None = None) -> RowInputs:
    """All of a row's inputs in clip coordinates (``config.width`` x ``config.height``)."""
    check_motion_fields(row)
    height, width = int(src_hw[0]), int(src_hw[1])
    boxes = source_boxes(row, (height, width), options)
    transform = clip_transform((height, width), config.width, config.height, config.resize)
    clip_boxes = boxes_to_clip(boxes, transform, config.height, config.width, config.min_box_size,
                               "edit_box" if _given(row, "edit_box") else "mask_uri")
    visibility = None
    if motion_source(row) == "track":
        paths, visibility = tracked_paths(row, config, boxes)
        tracks = to_clip(paths, transform)
    else:
        paths, start_end = parse_trajectories(row["trajectories"], config.num_frames, "trajectories")
        check_starts(paths, height, width, "trajectories")
        clip_paths = to_clip(paths, transform)  # [N, P, 2]
        if start_end:
            tracks = linear_tracks(clip_paths[:, 0], clip_paths[:, 1], config.num_frames)
        else:
            tracks = clip_paths.transpose(1, 0, 2)
    return RowInputs(clip_boxes, np.asarray(tracks, np.float32), visibility,
                     first_frame(row, config, (height, width), options))
