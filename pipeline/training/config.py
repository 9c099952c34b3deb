"""The trainer's configuration: workers, failures, steps, checkpoints, precision, seed."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ConfigError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TrainConfig:
    """How a Ray Train run is launched and stepped (a ``train:`` section of a job's YAML).

    One *step* is one optimizer update; each worker feeds ``grad_accumulation`` micro-batches
    into it, so a step sees ``num_workers * grad_accumulation`` micro-batches in all.
    """

    num_workers: int = 1  # Ray Train workers (one process each; one GPU each on a cluster)
    use_gpu: bool = False  # workers reserve GPUs and train on CUDA (NCCL); False: CPU and gloo
    gpus_per_worker: float = 1.0  # with use_gpu
    cpus_per_worker: float = 1.0
    max_failures: int = 3  # worker-group restarts from the latest checkpoint before the run fails (-1: no limit)
    steps: int = 1000  # optimizer steps of the run (a resumed run stops at the same total)
    grad_accumulation: int = 1  # micro-batches per worker per step
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept in storage
    log_every: int = 10  # steps between metric rows (CSV/JSONL and ray.train.report)
    seed: int = 0  # model init (the same on every worker) and per-worker, per-step randomness
    precision: str = "auto"  # autocast dtype: auto = bfloat16 on CUDA where supported, else float16 with a
    # GradScaler; float32 on CPU. Trainable weights stay float32 in every mode.
    max_grad_norm: float = 0.0  # clip the global gradient norm to this (0: no clipping)

    def __post_init__(self) -> None:
        for name in ("num_workers", "steps", "grad_accumulation", "checkpoint_every", "keep_checkpoints",
                     "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_failures < -1:
            raise ConfigError(f"train.max_failures must be >= -1, got {self.max_failures}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.use_gpu and self.gpus_per_worker <= 0:
            raise ConfigError("train.gpus_per_worker must be > 0 when train.use_gpu is true")
        if self.cpus_per_worker <= 0 or self.max_grad_norm < 0:
            raise ConfigError("train.cpus_per_worker must be > 0 and train.max_grad_norm >= 0")
