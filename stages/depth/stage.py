"""The ``depth`` pipeline stage: MiDaS relative inverse depth of every decoded frame, cached.

Reads ``frames`` (uint8 [T, H, W, 3]) and ``content_hash``. Writes, under
``storage.artifact_dir(cache, "depth", content_hash, key)`` with ``key`` a hash of the model's
fingerprint, the canvas size, the resize mode and the decoded frames' digest:
``depth.npz`` (key ``depth``: float16 [T, H, W] in [0, 1], per-video min-max normalised) and
``stats.json`` (the raw statistics; ``raw = depth * scale + shift``). A later run (or another
job sharing the cache) with the same key loads them instead of running the model.
Row outputs: ``outputs.depth``, ``outputs.depth_stats``, ``outputs.depth_preview`` (a
colour-mapped GIF shown in report.html) and optionally ``outputs.depth_video`` (MP4); scalars
``depth_min``, ``depth_max``, ``depth_cached``; and ``depth`` (the float16 array) when
``keep_array`` is set, for later stages (StableVideo's depth control).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pipeline import devices, media, previews, storage
from pipeline.config import ConfigError, Resources
from pipeline.stage import Stage, add_output
from stages.depth.model import DTYPES, DepthEstimator, ModelInfo, check_input_size, resolve_model
from stages.depth.ops import colorize, frames_digest, normalise
from stages.encode import preview_url

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DEPTH_FILE = "depth.npz"
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class DepthConfig:
    """Settings of the depth stage (``stages.depth`` in a job's YAML).

    ``batch_size`` is frames per forward pass; ``resources.batch_size`` is rows (videos) per
    Ray batch. Production runs a GPU pool (``resources.num_gpus: 1``); the default is a CPU
    actor so CI and laptops work.
    """

    model: str = "Intel/dpt-hybrid-midas"  # hub id or local directory
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (float16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16
    batch_size: int = 8
    input_size: int | None = None  # canvas side; None = the model's image_size (384 for MiDaS v3)
    resize_mode: Literal["pad", "stretch"] = "pad"
    cache: bool = True  # False: recompute and overwrite a cached artifact
    preview: bool = True
    preview_mp4: bool = False
    preview_width: int = 256
    preview_max_frames: int = 32
    colormap: Literal["inferno", "magma", "turbo", "viridis", "gray"] = "inferno"
    keep_array: bool = False  # keep row["depth"] (float16 [T, H, W]) for later stages
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=1, num_gpus=0, min_actors=1,
                                                                    max_actors=1))

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"depth.batch_size must be >= 1, got {self.batch_size}")
        if self.input_size is not None and self.input_size < 16:
            raise ConfigError(f"depth.input_size must be >= 16, got {self.input_size}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"depth.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"depth.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.preview_width < 16 or self.preview_max_frames < 1:
            raise ConfigError("depth.preview_width must be >= 16 and preview_max_frames >= 1")


def cache_key(model_fingerprint: str, input_size: int, resize_mode: str, digest: str) -> str:
    """16 hex digits naming one depth artifact of one decoded video."""
    text = json.dumps({"v": CACHE_VERSION, "model": model_fingerprint, "size": input_size,
                       "mode": resize_mode, "frames": digest}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def depth_npz_bytes(depth: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, depth=depth)
    return buffer.getvalue()


def load_depth(url: str, options: storage.StorageOptions | None = None) -> np.ndarray:
    """The float16 [T, H, W] normalised depth of a ``depth.npz`` artifact (never unpickles)."""
    with np.load(io.BytesIO(storage.read_bytes(url, options)), allow_pickle=False) as npz:
        return npz["depth"]


class DepthStage(Stage):
    name = "depth"
    config_class = DepthConfig
    reads = ("frames", "content_hash")
    writes = ("depth_min", "depth_max", "depth_cached")

    def __init__(self, config: DepthConfig, context):
        super().__init__(config, context)
        self.estimator: DepthEstimator | None = None
        self.info: ModelInfo | None = None
        self.input_size: int | None = None

    def preflight(self) -> None:
        cfg = self.config
        devices.check_device(cfg.device, self.resources.num_gpus, self.name)
        info = resolve_model(cfg.model)
        check_input_size(info, cfg.input_size)

    def setup(self) -> None:
        cfg = self.config
        devices.resolve_device(cfg.device, self.resources.num_gpus, self.name)  # before any loading
        self.info = resolve_model(cfg.model)
        self.input_size = check_input_size(self.info, cfg.input_size)
        self.estimator = DepthEstimator.load(cfg.model, device=cfg.device, dtype=cfg.dtype,
                                             input_size=cfg.input_size, resize_mode=cfg.resize_mode,
                                             info=self.info, num_gpus=self.resources.num_gpus)

    def close(self) -> None:
        self.estimator = None

    def artifact_urls(self, row: dict) -> tuple[str, str]:
        """URLs of the depth and stats artifacts of ``row`` (needs ``setup()``)."""
        key = cache_key(self.info.fingerprint, self.input_size, self.config.resize_mode,
                        frames_digest(row["frames"]))
        base = storage.artifact_dir(self.context.cache_url, self.name, str(row["content_hash"]), key)
        return storage.join_url(base, DEPTH_FILE), storage.join_url(base, STATS_FILE)

    def process(self, row: dict) -> dict:
        if self.estimator is None:
            raise RuntimeError("depth stage used before setup()")
        cfg, opts = self.config, self.context.storage
        frames = row["frames"]
        depth_url, stats_url = self.artifact_urls(row)
        norm = stats = None
        if cfg.cache and storage.exists(stats_url, opts) and storage.exists(depth_url, opts):
            try:
                norm = load_depth(depth_url, opts)
                stats = json.loads(storage.read_bytes(stats_url, opts))
                if norm.shape != frames.shape[:3]:
                    raise ValueError(f"cached shape {norm.shape} != frames {frames.shape[:3]}")
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring unusable cached depth %s: %s", depth_url, exc)
                norm = stats = None
        cached = norm is not None
        if not cached:
            raw = self.estimator.predict(frames, batch_size=cfg.batch_size)
            norm, stats = normalise(raw)
            stats.update(model=cfg.model, model_fingerprint=self.info.fingerprint, input_size=self.input_size,
                         resize_mode=cfg.resize_mode, dtype=str(self.estimator.dtype).replace("torch.", ""))
            storage.write_bytes(depth_url, depth_npz_bytes(norm), opts)  # the depth first: stats mark it done
            storage.write_bytes(stats_url, json.dumps(stats, indent=1).encode(), opts)
        add_output(row, "depth", depth_url)
        add_output(row, "depth_stats", stats_url)
        row.update(depth_min=float(stats["min"]), depth_max=float(stats["max"]), depth_cached=cached)
        if (cfg.preview or cfg.preview_mp4) and row.get("make_previews", True):
            self._previews(row, norm)
        if cfg.keep_array:
            row["depth"] = norm
        return row

    def _previews(self, row: dict, norm: np.ndarray) -> None:
        cfg, opts = self.config, self.context.storage
        video_id = str(row.get("video_id") or "video")
        job_id = str(row.get("job_id") or str(row["content_hash"])[:12])
        fps = float(row.get("fps") or 24.0)
        colour = colorize(norm, cfg.colormap)
        if cfg.preview:
            url = preview_url(self.context.output_url, video_id, job_id, "depth", "gif")
            previews.write_animation(colour, url, fps, width=cfg.preview_width, max_frames=cfg.preview_max_frames,
                                     options=opts)
            add_output(row, "depth_preview", url)
        if cfg.preview_mp4:
            url = preview_url(self.context.output_url, video_id, job_id, "depth", "mp4")
            h, w = colour.shape[1:3]
            colour = colour[:, : h - h % 2, : w - w % 2]  # H.264 needs even sizes
            fd, tmp = tempfile.mkstemp(suffix=".mp4", prefix="vidflow-depth-")
            os.close(fd)
            try:
                media.encode(colour, tmp, fps)
                storage.upload_file(tmp, url, opts)
            finally:
                os.unlink(tmp)
            add_output(row, "depth_video", url)
