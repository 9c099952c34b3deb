"""Decode stage: fetch a video from any fsspec URL, hash it, decode it to working-resolution frames.

Reads ``video_uri``; writes ``frames`` (uint8 [T, H, W, 3]), ``fps`` (of the returned frames),
``content_hash`` (SHA-256 of the file, the key of every cached artifact), ``num_frames``,
``width``, ``height`` and ``source_fps``. Per-row ``params`` may override decode settings with
``decode.<field>`` keys (for example ``{"decode.stride": 2}``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from pipeline import media, storage, webdataset_input
from pipeline.config import ConfigError, Resources, from_dict, to_dict
from pipeline.stage import Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeConfig:
    """Decode settings. Limits refuse a video (a row error) before it is decoded."""

    stride: int = 1
    max_frames: int | None = 48
    start_seconds: float = 0.0
    end_seconds: float | None = None
    width: int | None = None
    height: int | None = None
    resize: Literal["fit", "crop", "pad", "stretch"] = "fit"
    multiple_of: int = 2
    threads: int = 0
    max_pixels: int | None = 3840 * 2160
    max_source_frames: int | None = 20_000
    max_bytes: int | None = 4 * 1024**3
    codec: str = "h264"  # a decoder that preflight requires
    # a short Ray task per row (holds a CPU only while decoding); a stalled read ends as TimeoutError
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, min_actors=1, max_actors=2,
                                                                   compute="tasks", row_timeout_s=600.0))

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ConfigError(f"decode.stride must be >= 1, got {self.stride}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"decode.max_frames must be >= 1, got {self.max_frames}")
        if self.end_seconds is not None and self.end_seconds <= self.start_seconds:
            raise ConfigError(f"decode.end_seconds ({self.end_seconds}) must exceed start_seconds")

    def options(self) -> media.DecodeOptions:
        return media.DecodeOptions(
            stride=self.stride, max_frames=self.max_frames, start_seconds=self.start_seconds,
            end_seconds=self.end_seconds, width=self.width, height=self.height, resize=self.resize,
            multiple_of=self.multiple_of, threads=self.threads, max_pixels=self.max_pixels,
            max_source_frames=self.max_source_frames)


def overridden(config: DecodeConfig, params: dict | None, prefix: str = "decode.") -> DecodeConfig:
    """``config`` with the row's ``decode.*`` params applied (validated like the YAML)."""
    changes = {k[len(prefix):]: v for k, v in (params or {}).items() if k.startswith(prefix)}
    if not changes:
        return config
    return from_dict(DecodeConfig, {**to_dict(config), **changes}, "params")


class DecodeStage(Stage):
    name = "decode"
    reads = ("video_uri",)
    writes = ("frames", "fps", "content_hash", "num_frames", "width", "height", "source_fps")

    def preflight(self) -> None:
        if not media.decoder_available(self.config.codec):
            raise ConfigError(f"decoder {self.config.codec!r} is not available in this PyAV/FFmpeg build")

    def process(self, row: dict) -> dict:
        config = overridden(self.config, row.get("params"))
        uri = row["video_uri"]
        if webdataset_input.is_member_url(uri):
            return self._decode(row, config, uri, storage.local_copy(uri, self.context.storage),
                                webdataset_input.parse_member_url(uri)[3])
        try:
            fs, path = storage.get_fs(uri, self.context.storage)
        except (ValueError, ImportError) as exc:
            raise ValueError(f"cannot open video_uri {uri!r}: {exc}") from exc
        if not fs.exists(path):
            raise FileNotFoundError(f"video not found: {uri}")
        return self._decode(row, config, uri, storage.local_copy(uri, self.context.storage), fs.size(path))

    def _decode(self, row: dict, config: DecodeConfig, uri: str, copy, size: int | None) -> dict:
        if config.max_bytes and size and size > config.max_bytes:
            raise media.VideoTooLargeError(f"{size} bytes exceeds max_bytes={config.max_bytes}")
        with copy as (local, digest):
            frames, fps, info = media.decode(local, config.options())
        log.debug("decoded %s: %s frames at %.2f fps", uri, frames.shape, fps)
        row.update(frames=frames, fps=fps or 24.0, content_hash=digest, num_frames=int(frames.shape[0]),
                   height=int(frames.shape[1]), width=int(frames.shape[2]), source_fps=info.fps)
        return row
