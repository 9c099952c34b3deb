"""Encode stage: write the edited frames as H.264 MP4 and a before|after preview.

Reads ``edited_frames`` and ``fps`` (and ``frames`` for the preview, when still present);
writes ``output_uri`` = ``{output}/videos/{video_id}/{job_id}.mp4`` and ``preview_uri`` =
``{output}/previews/{video_id}/{job_id}-before-after.webp``; drops the frame arrays. The video is written
before the manifest row that points at it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Literal

from pipeline import media, previews, storage
from pipeline.config import ConfigError, Resources
from pipeline.stage import Stage


@dataclass(frozen=True)
class EncodeConfig:
    codec: str = "libx264"
    crf: int = 18
    preset: str = "medium"
    fps: float | None = None  # None keeps the decoded rate
    threads: int = 0
    preview: bool = True
    preview_format: Literal["gif", "webp"] = "webp"  # WebP: ~10x cheaper to write than a quantised GIF
    preview_width: int = 256
    preview_max_frames: int = 32
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, min_actors=1, max_actors=2,
                                                                   compute="tasks", row_timeout_s=600.0))

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"encode.crf must be in 0..51, got {self.crf}")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"encode.fps must be positive, got {self.fps}")


def video_url(output_url: str, video_id: str, job_id: str) -> str:
    return storage.join_url(output_url, "videos", storage.safe_id(video_id), f"{storage.safe_id(job_id)}.mp4")


def preview_url(output_url: str, video_id: str, job_id: str, name: str, ext: str) -> str:
    return storage.join_url(output_url, "previews", storage.safe_id(video_id),
                            f"{storage.safe_id(job_id)}-{name}.{ext}")


class EncodeStage(Stage):
    name = "encode"
    reads = ("edited_frames", "fps", "video_id", "job_id")
    writes = ("output_uri", "preview_uri")
    drops = ("frames", "edited_frames")

    def preflight(self) -> None:
        if not media.encoder_available(self.config.codec):
            raise ConfigError(f"encoder {self.config.codec!r} is not available in this PyAV/FFmpeg build")

    def process(self, row: dict) -> dict:
        cfg = self.config
        edited = row["edited_frames"]
        fps = cfg.fps or float(row["fps"])
        url = video_url(self.context.output_url, row["video_id"], row["job_id"])
        fd, tmp = tempfile.mkstemp(suffix=".mp4", prefix="vidflow-enc-")
        os.close(fd)
        try:
            media.encode(edited, tmp, fps, codec=cfg.codec, crf=cfg.crf, preset=cfg.preset, threads=cfg.threads)
            storage.upload_file(tmp, url, self.context.storage)
        finally:
            os.unlink(tmp)
        row["output_uri"] = url
        if cfg.preview and row.get("make_previews", True):  # the run picks which rows get previews
            before = row.get("frames")
            clip = previews.side_by_side(before, edited) if before is not None else edited
            purl = preview_url(self.context.output_url, row["video_id"], row["job_id"], "before-after",
                               cfg.preview_format)
            previews.write_animation(clip, purl, fps, width=cfg.preview_width * (2 if before is not None else 1),
                                     max_frames=cfg.preview_max_frames, options=self.context.storage)
            row["preview_uri"] = purl
        return row
