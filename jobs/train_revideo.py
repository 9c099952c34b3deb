"""Train ReVideo's control module on trajectory shards, one stage per run, with Ray Train.

    python -m jobs.train_revideo --shards URL --output URL [--config FILE] [--stage 1|2|3] [--resume]
                                 [--set key=value ...] [--verbose]

``--shards``: the output URL of ``jobs.preprocess_trajectories`` (its ``shards/`` folder, or that
folder itself, or one shard file). Ray Data reads the shard rows that are ``ok``, decodes each
source video to the same window (this job's ``window`` and ``decode`` must be the trajectory
job's) and builds samples of the stage on CPU tasks (:mod:`stages.edit.revideo.train_data`); a
``ray.train.torch.TorchTrainer`` (:mod:`pipeline.training`, ``train:`` section: workers, GPUs,
failures, checkpoints, precision) trains on them (:mod:`stages.edit.revideo.train_task`).

Output, per stage ``n``: ``{output}/ray_train/stage{n}/`` (Ray Train checkpoints: the trainable
parameters, optimizer, step, data position), ``{output}/metrics/stage{n}.csv|.jsonl``,
``{output}/stage{n}/controlnet/`` (+ ``unet/`` after stage 3; the ``revideo`` method loads it),
``{output}/stage{n}/summary.json``, ``{output}/skipped/stage{n}/*.json`` (undecodable rows).
``--resume`` continues the stage from its newest checkpoint. Works alone (starts a local Ray) and
under ``ray job submit --working-dir . -- python -m jobs.train_revideo ...``.
Exit code: 0 trained; 2 config/preflight; 4 training failed (after ``train.max_failures`` restarts).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field, replace

from jobs.common import EXIT_OK, EXIT_PREFLIGHT, absolute_url, check_output, setup_logging
from jobs.preprocess_trajectories import TrajectoryJobConfig, WindowConfig, stage_configs
from pipeline import storage
from pipeline.config import ConfigError, load_config, read_yaml
from pipeline.stage import RunContext
from pipeline.storage import StorageOptions
from pipeline.training import TrainConfig, TrainingRunExistsError, TrainingTask, fit, shard_batches
from stages.decode import DecodeConfig
from stages.edit.revideo.train_data import SHARD_COLUMNS, SampleJob, samples_from_rows
from stages.edit.revideo.train_task import ReVideoTrainConfig, build_revideo, check_stage, revideo_loss

log = logging.getLogger("jobs.train_revideo")

EXIT_TRAINING_FAILED = 4


@dataclass(frozen=True)
class DataConfig:
    """The Ray Data side: CPU per sample task and how many tasks run at once."""

    num_cpus: float = 1.0  # per sample-building task (decode + rasterise one or two rows)
    concurrency: int | None = None  # sample tasks at once (None: as many as the CPUs allow)
    shuffle: bool = True  # shuffle the shard rows once (seeded by train.seed) before decoding
    pair_rows: int = 8  # stage 2: shard rows per task; its decodable clips pair up in order (V1, V2)

    def __post_init__(self) -> None:
        if self.num_cpus <= 0 or self.pair_rows < 2 or (self.concurrency is not None and self.concurrency < 1):
            raise ConfigError("data: need num_cpus > 0, pair_rows >= 2, concurrency >= 1 (or null)")


@dataclass(frozen=True)
class TrainJobConfig:
    storage: StorageOptions = field(default_factory=StorageOptions)
    window: WindowConfig = field(default_factory=WindowConfig)  # as the trajectory job's
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(threads=1))  # limits and threads only
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(grad_accumulation=4, checkpoint_every=1000,
                                                                   log_every=50))
    revideo: ReVideoTrainConfig = field(default_factory=ReVideoTrainConfig)


def shard_files(shards_url: str, options: StorageOptions | None = None) -> list[str]:
    """Parquet shard URLs under ``shards_url`` (a trajectory job output, its shards/ folder or a file)."""
    if shards_url.endswith(".parquet"):
        return [shards_url]
    for base in (storage.join_url(shards_url, "shards"), shards_url):
        files = sorted(u for u in storage.list_files(base, options) if u.endswith(".parquet"))
        if files:
            return files
    raise ConfigError(f"no trajectory shards (*.parquet) under {shards_url}")


def _sample_batch(table, job: SampleJob) -> dict:
    return samples_from_rows(table.to_pylist(), job)


def training_dataset(files: list[str], job: SampleJob, data: DataConfig, seed: int, options: StorageOptions):
    """Ray Data: ok shard rows -> decoded windows -> samples (numpy columns video, box, c_mot, job_id)."""
    import pyarrow.fs
    import ray

    fs, _ = storage.get_fs(files[0], options)
    filesystem = None if storage.protocol_of(files[0]) == "file" else pyarrow.fs.PyFileSystem(
        pyarrow.fs.FSSpecHandler(fs))
    paths = [storage.get_fs(u, options)[1] for u in files]
    ds = ray.data.read_parquet(paths, columns=list(SHARD_COLUMNS), filesystem=filesystem)
    ds = ds.filter(expr="status == 'ok'")
    if data.shuffle:
        ds = ds.random_shuffle(seed=seed)
    return ds.map_batches(_sample_batch, fn_kwargs={"job": job}, batch_size=data.pair_rows if job.stage == 2 else 1,
                          batch_format="pyarrow", num_cpus=data.num_cpus, concurrency=data.concurrency)


def revideo_batches(ctx, start: int):
    """``TrainingTask.batches``: this worker's sample batches of the ``train`` dataset."""
    import ray.train

    return shard_batches(ray.train.get_dataset_shard("train"), ctx.options["config"].batch_size, start)


def start_controlnet(config: ReVideoTrainConfig, stage: int, output: str, options: StorageOptions) -> str | None:
    """The control module a stage starts from: the configured one, stage 1's new one (None), or
    the previous stage's export; ConfigError when that is missing."""
    if config.controlnet or stage == 1:
        return config.controlnet
    previous = storage.join_url(output, f"stage{stage - 1}", "controlnet")
    if not storage.exists(storage.join_url(previous, "config.json"), options):
        raise ConfigError(f"stage {stage} starts from stage {stage - 1}'s control module, but {previous} has none: "
                          f"train stage {stage - 1} into this output first or set revideo.controlnet")
    return previous


def load_job_config(path: str | None, overrides: list[str]) -> TrainJobConfig:
    raw = read_yaml(path) if path else {}
    if "steps" in (raw.get("train") or {}) or any(o.startswith("train.steps=") for o in overrides):
        raise ConfigError("train.steps is set per stage: use revideo.stage_steps")
    return load_config(TrainJobConfig, path, overrides)


def run(shards: str, output: str, config: TrainJobConfig, stage: int, resume: bool = False) -> dict:
    """Train one stage; returns its summary (also written to ``{output}/stage{n}/summary.json``)."""
    import ray

    from pipeline.runner import init_ray

    options = config.storage
    output = absolute_url(output)
    shards = absolute_url(shards)
    files = shard_files(shards, options)
    controlnet = start_controlnet(config.revideo, stage, output, options)
    decode, _ = stage_configs(TrajectoryJobConfig(window=config.window, decode=config.decode))
    skipped_url = storage.join_url(output, "skipped", f"stage{stage}")
    job = SampleJob(stage=stage, seed=config.train.seed, decode=decode, samples=config.revideo.samples,
                    context=RunContext(output_url=output, cache_url=storage.join_url(output, "cache"), storage=options),
                    skipped_url=skipped_url)
    train = replace(config.train, steps=config.revideo.stage_steps[stage - 1])
    init_ray()
    dataset = training_dataset(files, job, config.data, config.train.seed, options)
    task = TrainingTask(f"stage{stage}", build_revideo, revideo_batches, revideo_loss,
                        options={"config": config.revideo, "stage": stage, "controlnet": controlnet})
    log.info("stage %d: %d shard file(s), %d steps, control module from %s", stage, len(files), train.steps,
             controlnet or "the UNet's encoder")
    result = fit(task, train, output, resume=resume, datasets={"train": dataset}, export_dir=f"stage{stage}",
                 options=options)
    skipped = len(storage.list_files(skipped_url, options))
    summary = {"stage": stage, "steps": train.steps, "metrics": result.metrics, "checkpoint": result.checkpoint_path,
               "export": result.export_url, "metrics_csv": result.metrics_url, "skipped_rows": skipped,
               "shards": files, "ray_version": ray.__version__}
    storage.write_bytes(storage.join_url(output, f"stage{stage}", "summary.json"),
                        json.dumps(summary, indent=2, default=str).encode(), options)
    log.info("stage %d done: loss %.4g, %d row(s) skipped, control module at %s", stage,
             float(result.metrics.get("loss", float("nan"))), skipped, result.export_url)
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_revideo", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="trajectory job output URL (or its shards/ folder)")
    parser.add_argument("--output", required=True, help="training output URL (local path, s3://, gs://, ...)")
    parser.add_argument("--config", help="YAML config file (jobs/configs/train_revideo.yaml)")
    parser.add_argument("--stage", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--resume", action="store_true", help="continue the stage from its newest checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = load_job_config(args.config, args.overrides)
        check_stage(args.stage)
        check_output(args.output, config.storage)
        shard_files(absolute_url(args.shards), config.storage)
    except (ConfigError, OSError) as exc:
        log.error("%s", exc)
        return EXIT_PREFLIGHT
    except Exception as exc:  # noqa: BLE001 - PreflightError and friends
        log.error("%s: %s", type(exc).__name__, exc)
        return EXIT_PREFLIGHT
    try:
        run(args.shards, args.output, config, args.stage, args.resume)
    except (ConfigError, TrainingRunExistsError) as exc:
        log.error("%s", exc)
        return EXIT_PREFLIGHT
    except Exception as exc:  # noqa: BLE001 - ray.train's TrainingFailedError and the like
        log.error("training failed: %s: %s", type(exc).__name__, exc)
        return EXIT_TRAINING_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
