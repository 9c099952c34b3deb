"""Preprocess a WebVid-style collection into ReVideo motion conditions (trajectory shards).

    python -m jobs.preprocess_trajectories --manifest URL --output URL [--config FILE] [--limit N]
                                           [--dry-run] [--set key=value ...]

The manifest is CSV or Parquet with WebVid's columns ``videoid``, ``contentUrl`` (any fsspec URL,
http(s) included), ``name`` (the caption), ``duration``, ``page_dir`` (a vidflow manifest with
``video_uri`` / ``video_id`` / ``caption`` works too). Each video is decoded to a window of
``window.num_frames`` frames at ``window.width`` x ``window.height`` (default 14 at 512x320),
tracked, sampled and rasterised (:mod:`stages.trajectories`); results go to Parquet shards under
``{output}/shards/`` (one row per input row, bounded by ``shards.max_rows`` / ``shards.max_bytes``),
with ``summary.json`` and ``report.html`` beside them. Reruns skip rows already ok.
Works alone (starts a local Ray) and under ``ray job submit --working-dir . -- python -m
jobs.preprocess_trajectories ...``. Exit code: 0 done; 1 too many row failures; 2 config/preflight.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from typing import Literal

from jobs.common import (
    EXIT_PREFLIGHT,
    Job,
    PreflightError,
    RunConfig,
    absolute_url,
    add_common_args,
    check_output,
    execute,
    new_run_id,
    run_overrides,
    setup_logging,
)
from jobs.trajectory_shards import ARRAY_COLUMNS, ShardConfig, ShardStore, shard_schema
from pipeline import storage
from pipeline.config import ConfigError, config_hash, load_config
from pipeline.input_source import describe_input
from pipeline.manifest import ManifestError
from pipeline.runner import StageSpec
from pipeline.stage import RunContext, Stage
from pipeline.storage import StorageOptions
from stages.cuts import CutsConfig, CutsStage
from stages.decode import DecodeConfig, DecodeStage
from stages.trajectories import TrajectoryConfig, TrajectoryStage

log = logging.getLogger("jobs.preprocess_trajectories")

WEBVID_COLUMNS = {"contentUrl": "video_uri", "videoid": "video_id", "name": "caption"}


@dataclass(frozen=True)
class WindowConfig:
    """The clip window every video is decoded to (ReVideo / SVD: 14 frames)."""

    num_frames: int = 14
    width: int = 512
    height: int = 320
    stride: int = 1  # keep every stride-th source frame
    start_seconds: float = 0.0
    resize: Literal["fit", "crop", "pad", "stretch"] = "crop"  # crop: exactly width x height

    def __post_init__(self) -> None:
        if self.num_frames < 2 or self.width < 16 or self.height < 16 or self.stride < 1:
            raise ConfigError(f"window: need num_frames >= 2, width/height >= 16, stride >= 1; got {self}")


@dataclass(frozen=True)
class TrajectoryJobConfig:
    # rows take milliseconds: 32 rows per block amortise Ray's per-call cost (bench/scale.py)
    run: RunConfig = field(default_factory=lambda: RunConfig(method="trajectories", flush_rows=256,
                                                             rows_per_block=32))
    storage: StorageOptions = field(default_factory=StorageOptions)
    window: WindowConfig = field(default_factory=WindowConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # limits, threads, resources
    cuts: CutsConfig | None = None  # set (e.g. `cuts: {policy: skip}`) to check windows for shot cuts
    trajectories: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)


def stage_configs(config: TrajectoryJobConfig) -> tuple[DecodeConfig, TrajectoryConfig]:
    """Decode and trajectory configs with the window applied (the window wins over both)."""
    w = config.window
    decode = dataclasses.replace(config.decode, max_frames=w.num_frames, width=w.width, height=w.height,
                                 stride=w.stride, start_seconds=w.start_seconds, resize=w.resize)
    traj = dataclasses.replace(config.trajectories, num_frames=w.num_frames, keep_frames=False)
    return decode, traj


def webvid_row(row: dict) -> dict:
    """Map WebVid columns to vidflow's (``contentUrl`` -> ``video_uri``, ``videoid`` -> ``video_id``,
    ``name`` -> ``caption``), keeping ``videoid`` for the shards."""
    out = dict(row)
    for src, dst in WEBVID_COLUMNS.items():
        if src in out and not out.get(dst):
            out[dst] = out[src] if src == "videoid" else out.pop(src)
    if not out.get("videoid") and out.get("video_id"):
        out["videoid"] = out["video_id"]
    return out


class CheckRowStage(Stage):
    """Driver-side checks: a row needs a URL; its id becomes a safe ``video_id``."""

    name = "validate"
    reads = ()
    writes = ("video_id",)

    def process(self, row: dict) -> dict:
        uri = row.get("video_uri")
        if not isinstance(uri, str) or not uri.strip():
            raise ValueError("contentUrl / video_uri is empty")
        raw = row.get("videoid") or row.get("video_id") or uri.rstrip("/").rsplit("/", 1)[-1]
        row["video_id"] = storage.safe_id(str(raw))
        return row


def build_specs(config: TrajectoryJobConfig) -> list[StageSpec]:
    decode, traj = stage_configs(config)
    cuts = [StageSpec(CutsStage, config.cuts)] if config.cuts is not None else []
    return [StageSpec(DecodeStage, decode), *cuts, StageSpec(TrajectoryStage, traj)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.preprocess_trajectories",
                                     description=__doc__.splitlines()[0])
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = load_config(TrajectoryJobConfig, args.config, run_overrides(args))
        options = config.storage
        if not args.manifest:
            raise ConfigError("--manifest is required")
        check_output(args.output, options)
        info = describe_input(args.manifest, options, required=())
        if not ({"contentUrl", "video_uri"} & set(info.columns)):
            raise ManifestError(f"input manifest {args.manifest} has neither a 'contentUrl' nor a 'video_uri' column")
    except (ConfigError, ManifestError, PreflightError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_PREFLIGHT
    mapped = webvid_row(dict.fromkeys(info.columns, "x"))  # the columns after WebVid mapping
    passthrough = sorted(set(mapped) - {"job_id", "status", "error"})
    output = absolute_url(args.output)
    context = RunContext(output_url=output, cache_url=absolute_url(config.run.cache_url or
                                                                   storage.join_url(output, "cache")),
                         run_id=new_run_id(), config_hash=config_hash(config), storage=options)
    schema = shard_schema(passthrough, config.trajectories.c_mot_dtype)
    store = ShardStore(output, context.run_id, schema, None, subdir="shards", options=options,
                       shard=config.shards, passthrough=tuple(passthrough))
    job = Job(info=info, checks=[CheckRowStage(None, context)], specs=build_specs(config), context=context,
              store=store, run=config.run, title="vidflow trajectory preprocessing", row_mapper=webvid_row,
              keep_arrays=ARRAY_COLUMNS, merge_parts=False, limit=args.limit)
    try:
        return execute(job, dry_run=args.dry_run)
    except PreflightError as exc:
        log.error("%s", exc)
        return EXIT_PREFLIGHT


if __name__ == "__main__":
    sys.exit(main())
