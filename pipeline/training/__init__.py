"""Method-independent training on Ray Train (``ray.train.torch.TorchTrainer``).

A method describes its training as a :class:`TrainingTask` of three picklable callbacks and
calls :func:`fit`; this package does the rest the same way for every method::

    from pipeline.training import TrainConfig, TrainingTask, TrainSetup, fit, shard_batches

    def build(ctx):                       # ctx: WorkerContext (rank, world_size, device, precision, seed, options)
        model = MyModel().to(ctx.device)  # same torch seed on every rank; rank 0's weights are broadcast
        params = dict(model.named_parameters())            # trainable, float32, by stable name
        return TrainSetup(params=params, optimizer=torch.optim.Adam(params.values(), lr=1e-4),
                          models=model, export=lambda m, folder: m.save_pretrained(folder))

    def batches(ctx, start):              # this worker's micro-batches after the first `start`
        return shard_batches(ray.train.get_dataset_shard("train"), batch_size=4, start=start)

    def loss(model, batch, ctx, micro):   # under autocast; randomness from ctx.generator(micro)
        return model.loss(batch, generator=ctx.generator(micro)), {"extra_figure": 0.0}

    result = fit(TrainingTask("my-model", build, batches, loss), TrainConfig(num_workers=2, steps=100),
                 "s3://bucket/run", datasets={"train": ray_dataset}, resume=False, export_dir="model")

What :func:`fit` guarantees:

- **Launch** from a :class:`TrainConfig` (``train:`` section of a job's YAML): ``num_workers``,
  ``use_gpu``/``gpus_per_worker`` (NCCL) or CPU workers (gloo), ``cpus_per_worker``;
  ``max_failures`` becomes ``FailureConfig``: a failed worker group restarts from the newest checkpoint.
- **Checkpoints** (``checkpoint_every`` steps and at the end) through ``ray.train.report`` to
  ``{output}/ray_train/{name}/`` (any vidflow URL: local, s3://, gs://, other fsspec through
  pyarrow's ``FSSpecHandler``): the trainable parameters, optimizer, grad scaler, step and
  data position (micro-batches each worker consumed) in one ``state.pt`` (``weights_only`` loading).
- **Resume**: ``fit(..., resume=True)`` continues the run ``name`` from its newest checkpoint
  (a run that already finished just re-exports); without it an existing run is refused
  (:class:`TrainingRunExistsError`).
- **Determinism**: identical initial weights on all ranks; per-step randomness from
  ``ctx.generator(micro)`` / ``ctx.rng(micro)`` seeded by (seed, rank, step, micro-batch), and
  Ray Data shards in a fixed order, so a killed and resumed run ends with the parameters of an
  uninterrupted one.
- **Metrics** every ``log_every`` steps: the loss and the task's extra figures (means over
  ranks), ``samples_per_s``, ``s_per_step``, ``gpu_mem_gb`` (peak), ``lr``; to
  ``{output}/metrics/{name}.csv`` and ``.jsonl`` and to ``ray.train.report``.
- **Precision** (``train.precision``): trainable weights must be float32 (checked); compute in
  bfloat16 (CUDA default where supported) or float16 with a ``GradScaler``; ``float32`` on CPU.
  ``ctx.precision.frozen_dtype`` is the dtype to keep frozen modules in.
- Gradients of the trainable parameters are averaged across ranks by the loop itself (no DDP
  wrapper), so trainable parameters may be spread over several modules.
- **Export**: rank 0 calls ``TrainSetup.export(models, local_dir)`` after the last step and
  copies the folder to ``{output}/{export_dir}``.
"""

from pipeline.training.checkpoint import TrainingState, load_state, save_state
from pipeline.training.config import TrainConfig
from pipeline.training.launch import TRAIN_DIR, TrainingRunExistsError, TrainResult, fit, ray_storage, run_exists
from pipeline.training.metrics import MetricsWriter
from pipeline.training.precision import Precision, check_trainable_fp32, resolve_precision
from pipeline.training.task import (
                                    TrainingTask,
                                    TrainSetup,
                                    WorkerContext,
                                    default_batch_size,
                                    derived_seed,
                                    shard_batches,
)

__all__ = ["TRAIN_DIR", "MetricsWriter", "Precision", "TrainConfig", "TrainResult", "TrainSetup",
           "TrainingRunExistsError", "TrainingState", "TrainingTask", "WorkerContext", "check_trainable_fp32",
           "default_batch_size",
           "derived_seed", "fit", "load_state", "ray_storage", "resolve_precision", "run_exists", "save_state",
           "shard_batches"]
