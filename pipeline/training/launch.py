"""Launching a :class:`TrainingTask` on Ray Train: storage, scaling, failures, resume."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline import storage
from pipeline.training.config import TrainConfig
from pipeline.training.loop import worker_main
from pipeline.training.task import TrainingTask

log = logging.getLogger(__name__)

TRAIN_DIR = "ray_train"  # {output}/ray_train/{run name}/checkpoint_... (Ray Train's own layout)


class TrainingRunExistsError(RuntimeError):
    """The output already holds a run of that name and ``resume`` was not asked for."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run left: its last metrics, the newest checkpoint's URL and the export URL."""

    metrics: dict
    checkpoint_path: str | None
    export_url: str
    metrics_url: str


def ray_storage(output_url: str, options: storage.StorageOptions | None = None) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig``.

    A local path is made absolute (Ray Train needs one); any other URL goes through vidflow's
    fsspec filesystem (with its :class:`~pipeline.storage.StorageOptions`), wrapped for pyarrow.
    """
    base = storage.join_url(output_url, TRAIN_DIR)
    if storage.protocol_of(base) == "file":
        return os.path.abspath(base.removeprefix("file://")), None
    import pyarrow.fs

    fs, path = storage.get_fs(base, options)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def run_exists(output_url: str, name: str, options: storage.StorageOptions | None = None) -> bool:
    """Whether ``{output}/ray_train/{name}`` holds any checkpoint of an earlier run."""
    return bool([u for u in storage.list_files(storage.join_url(output_url, TRAIN_DIR, name), options)
                 if "/checkpoint" in u or "/step_" in u])


def fit(task: TrainingTask, cfg: TrainConfig, output_url: str, *, name: str | None = None, resume: bool = False,
        datasets: Mapping[str, Any] | None = None, export_dir: str = "model",
        options: storage.StorageOptions | None = None) -> TrainResult:
    """Train ``task`` with a ``ray.train.torch.TorchTrainer`` and return its :class:`TrainResult`.

    Checkpoints go to ``{output}/ray_train/{name}``; metric rows to ``{output}/metrics/{name}.csv``
    and ``.jsonl``; the task's export (``TrainSetup.export``) to ``{output}/{export_dir}``.
    ``resume``: continue from the newest checkpoint of the run ``name`` (Ray Train restores it
    from storage); without it an existing run is an error. ``datasets``: Ray Data datasets,
    split across workers (``ray.train.get_dataset_shard(key)`` in ``task.batches``), with
    ``preserve_order`` so a resumed run sees the batches an uninterrupted one would.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    name = name or task.name
    if run_exists(output_url, name, options) and not resume:
        raise TrainingRunExistsError(f"{storage.join_url(output_url, TRAIN_DIR, name)} already holds a training run: "
                                     "pass resume (--resume) to continue it, or another output")
    storage_path, filesystem = ray_storage(output_url, options)
    metrics_prefix = storage.join_url(output_url, "metrics", name)
    export_url = storage.join_url(output_url, export_dir)
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})
    data_config = None
    if datasets:
        from ray.data import ExecutionOptions

        data_config = ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True),
                                           enable_shard_locality=False)
    trainer = TorchTrainer(
        worker_main,
        train_loop_config={"task": task, "train": cfg, "metrics_prefix": metrics_prefix, "export_url": export_url,
                           "storage_options": options},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
        datasets=dict(datasets or {}), dataset_config=data_config)
    log.info("training %s: %d worker(s), %d steps, checkpoints under %s", name, cfg.num_workers, cfg.steps,
             storage_path)
    result = trainer.fit()
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    return TrainResult(metrics=dict(result.metrics or {}), checkpoint_path=checkpoint, export_url=export_url,
                       metrics_url=metrics_prefix + ".csv")
