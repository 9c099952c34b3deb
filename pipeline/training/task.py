"""What a method hands the trainer: callbacks that build its models, feed batches and compute a loss."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.training.precision import Precision


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (the run seed, a rank, a step, ...): stable across processes
    and Python versions (no ``hash()``), distinct for distinct parts."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class WorkerContext:
    """Where a worker stands: its rank, device and precision, the run seed and the current step."""

    rank: int
    world_size: int
    device: torch.device
    precision: Precision
    seed: int
    step: int = 0
    options: dict = field(default_factory=dict)  # the method's own settings, as given to fit()

    def generator(self, micro: int = 0) -> torch.Generator:
        """A torch generator on the worker's device seeded by (seed, rank, step, micro-batch):
        the same draws for the same step after a resume or a restart."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derived_seed(self.seed, "torch", self.rank, self.step, micro))
        return gen

    def rng(self, micro: int = 0) -> np.random.Generator:
        """A numpy generator seeded like :meth:`generator`."""
        return np.random.default_rng(derived_seed(self.seed, "numpy", self.rank, self.step, micro))


@dataclass
class TrainSetup:
    """What ``build`` returns.

    ``params``: the trainable parameters by stable name (checkpointed, averaged across workers,
    float32); ``optimizer`` over exactly those; ``models``: anything the loss needs (frozen parts
    included); ``export`` (optional) writes the final artifact of the run into a local folder.
    """

    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    models: Any = None
    export: Callable[[Any, str], None] | None = None  # (models, local_dir) -> None, rank 0, at the end


def default_batch_size(batch: Any) -> int:
    """Samples in a batch: the leading size of a tensor/array, or of a dict's first value."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    return int(len(batch))


@dataclass
class TrainingTask:
    """A method's training, as three picklable callbacks (module-level functions or partials).

    ``build(ctx) -> TrainSetup``: build the models on ``ctx.device`` (the same seed on every
    worker, so initial weights agree; the trainer also broadcasts rank 0's).
    ``batches(ctx, start) -> iterable``: this worker's micro-batches, starting after the first
    ``start`` it already consumed (the data position of a checkpoint); endless or long enough
    for the run. :func:`shard_batches` does this for a Ray Data shard.
    ``loss(models, batch, ctx, micro) -> (loss, {name: float})``: the scalar loss of one
    micro-batch and any extra figures to log; randomness from ``ctx.generator(micro)``.
    """

    name: str
    build: Callable[[WorkerContext], TrainSetup]
    batches: Callable[[WorkerContext, int], Iterable[Any]]
    loss: Callable[[Any, Any, WorkerContext, int], tuple[torch.Tensor, dict[str, float]]]
    batch_size: Callable[[Any], int] = default_batch_size
    options: dict = field(default_factory=dict)


def shard_batches(shard: Any, batch_size: int, start: int = 0, **iter_kwargs: Any) -> Iterator[dict]:
    """Endless numpy micro-batches of a Ray Data shard (``ray.train.get_dataset_shard(...)``),
    epoch after epoch, skipping the first ``start`` (which are read and dropped: a resume
    re-reads the part of the epoch already trained on). Partial batches are dropped."""
    seen = 0
    while True:
        yielded = False
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True, **iter_kwargs):
            yielded = True
            seen += 1
            if seen > start:
                yield batch
        if not yielded:
            raise ValueError(f"the training data has fewer than {batch_size} rows per worker: no full batch")
