"""Trajectory-shard rows -> ReVideo training samples (the CPU work of the training data pipeline).

:func:`samples_from_rows` runs inside a Ray Data ``map_batches`` (``jobs.train_revideo``), with
no Ray of its own: for each shard row it decodes the same window the trajectory job decoded (the
job's ``window`` + ``decode`` settings, checked against the row's stored frame count and size),
takes the row's tracks (every grid track when the shards kept them, ``store_grid_tracks: true``;
else the sampled ones) and builds a sample of the stage (:mod:`.train_samples`) with a generator
seeded by (seed, stage, job_id). A row whose video cannot be decoded, or decodes to another
window, is skipped: it leaves a small JSON record under ``skipped_url`` (one per job_id, so
retries do not double-count) and no sample. Stage 2 pairs consecutive decodable clips of the
batch, giving (V1, V2) and (V2, V1); an unpaired clip is left out.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np

from jobs.trajectory_shards import shard_arrays
from pipeline import storage
from pipeline.stage import RunContext
from pipeline.training import derived_seed
from stages.decode import DecodeConfig, DecodeStage
from stages.edit.revideo.train_samples import ClipTracks, SampleConfig, build_sample

log = logging.getLogger(__name__)

SHARD_COLUMNS = ("job_id", "video_id", "video_uri", "status", "num_frames", "width", "height", "n_init", "n_sampled",
                 "tracks", "visibility", "sampled_tracks", "sampled_visibility")


class WindowMismatchError(ValueError):
    """The decoded window differs from the one the shard row was made from."""


@dataclass(frozen=True)
class SampleJob:
    """Everything a sample task needs (pickled into each Ray Data task)."""

    stage: int
    seed: int
    decode: DecodeConfig
    samples: SampleConfig
    context: RunContext
    skipped_url: str


def row_tracks(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """(tracks float32 [T, N, 2], visibility bool [T, N]) of a shard row: the grid tracks when
    stored, else the sampled tracks (visibility all True when absent)."""
    arrays = shard_arrays(row)
    for tracks_key, vis_key in (("tracks", "visibility"), ("sampled_tracks", "sampled_visibility")):
        tracks = arrays.get(tracks_key)
        if tracks is not None and tracks.size:
            vis = arrays.get(vis_key)
            return tracks.astype(np.float32), (vis.astype(bool) if vis is not None else np.ones(tracks.shape[:2], bool))
    t = int(row.get("num_frames") or 0)
    return np.zeros((t, 0, 2), np.float32), np.zeros((t, 0), bool)


def decode_clip(row: dict, job: SampleJob) -> ClipTracks:
    """The row's window and tracks; WindowMismatchError when the window is not the shard's."""
    decoded = DecodeStage(job.decode, job.context).process({"video_uri": row["video_uri"]})
    frames = decoded["frames"]
    want = (int(row["num_frames"]), int(row["height"]), int(row["width"]))
    if frames.shape[:3] != want:
        raise WindowMismatchError(f"decoded {frames.shape[:3]} (frames, height, width) but the shard row was made "
                                  f"from {want}: the training job's window/decode settings must be the trajectory "
                                  f"job's")
    tracks, vis = row_tracks(row)
    return ClipTracks(frames=frames, tracks=tracks, visibility=vis)


def record_skip(row: dict, exc: Exception, job: SampleJob) -> None:
    key = storage.safe_id(str(row.get("job_id") or row.get("video_id") or "row"))
    reason = {"job_id": row.get("job_id"), "video_uri": row.get("video_uri"), "error": f"{type(exc).__name__}: {exc}"}
    log.warning("skipping %s: %s", row.get("video_uri"), reason["error"])
    storage.write_bytes(storage.join_url(job.skipped_url, key + ".json"), json.dumps(reason).encode(),
                        job.context.storage)


def empty_samples(frames: int, height: int, width: int) -> dict[str, np.ndarray]:
    return {"video": np.zeros((0, frames, height, width, 3), np.uint8), "box": np.zeros((0, 4), np.int32),
            "c_mot": np.zeros((0, frames, 2, height, width), np.float16), "job_id": np.zeros(0, object)}


def samples_from_rows(rows: list[dict], job: SampleJob) -> dict[str, np.ndarray]:
    """Samples (``video``, ``box``, ``c_mot``, ``job_id`` stacked over the batch) of shard rows."""
    clips: list[tuple[dict, ClipTracks]] = []
    for row in rows:
        if row.get("status") != "ok":
            continue
        try:
            clips.append((row, decode_clip(row, job)))
        except Exception as exc:  # noqa: BLE001 - any undecodable video is skipped and counted, never fatal
            record_skip(row, exc, job)
    pairs: list[tuple[dict, ClipTracks, ClipTracks | None]] = []
    if job.stage == 2:
        for i in range(0, len(clips) - 1, 2):
            (ra, a), (rb, b) = clips[i], clips[i + 1]
            if a.frames.shape == b.frames.shape:
                pairs += [(ra, a, b), (rb, b, a)]
    else:
        pairs = [(r, c, None) for r, c in clips]
    out = []
    for row, clip, other in pairs:
        rng = np.random.default_rng(derived_seed(job.seed, "sample", job.stage, row["job_id"]))
        out.append({**build_sample(job.stage, clip, rng, job.samples, other), "job_id": str(row["job_id"])})
    if not out:
        ref = rows[0] if rows else {}
        return empty_samples(int(ref.get("num_frames") or 1), int(ref.get("height") or 1), int(ref.get("width") or 1))
    return {k: np.stack([s[k] for s in out]) if k != "job_id" else np.array([s[k] for s in out], object)
            for k in out[0]}
