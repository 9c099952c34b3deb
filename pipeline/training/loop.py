"""The per-worker training loop that :func:`pipeline.training.fit` runs in every Ray Train worker.

Each step: ``grad_accumulation`` micro-batches forward/backward under autocast, gradients of the
trainable parameters averaged across workers (one flattened all-reduce per dtype, the same on
every rank, so parameters stay identical without wrapping the models in DDP), optional
clipping, one optimizer step. Metrics every ``log_every`` steps and a checkpoint every
``checkpoint_every`` steps and at the end go through ``ray.train.report`` (a barrier: every rank
reports at the same steps; only rank 0 attaches the checkpoint folder).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import torch
import torch.distributed as dist

from pipeline import storage
from pipeline.training.checkpoint import load_state, restore_state, save_state
from pipeline.training.config import TrainConfig
from pipeline.training.metrics import MetricsWriter
from pipeline.training.precision import check_trainable_fp32, resolve_precision
from pipeline.training.task import TrainingTask, TrainSetup, WorkerContext, derived_seed

log = logging.getLogger(__name__)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_params(params: dict[str, torch.nn.Parameter]) -> None:
    """Give every rank rank 0's parameter values."""
    if _distributed():
        with torch.no_grad():
            for param in params.values():
                dist.broadcast(param.data, src=0)


def average_gradients(params: dict[str, torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` across ranks (missing grads count as zeros)."""
    if not _distributed():
        return
    world = dist.get_world_size()
    for param in params.values():
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for param in params.values():
        by_dtype.setdefault(param.grad.dtype, []).append(param.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each scalar over the ranks (every rank must call with the same keys)."""
    if not _distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.use_gpu:
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")


def _gpu_memory_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def _restore(setup: TrainSetup, scaler) -> tuple[int, int]:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        broadcast_params(setup.params)
        return 0, 0
    with checkpoint.as_directory() as folder:
        state = load_state(folder)
    restore_state(state, setup.params, setup.optimizer, scaler)
    log.info("resumed from checkpoint at step %d (data position %d)", state.step, state.data_position)
    return state.step, state.data_position


def _export(task: TrainingTask, setup: TrainSetup, output_url: str, options) -> None:
    if setup.export is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        setup.export(setup.models, tmp)
        for root, _, files in os.walk(tmp):
            for name in files:
                rel = os.path.relpath(os.path.join(root, name), tmp)
                storage.upload_file(os.path.join(root, name), storage.join_url(output_url, *rel.split(os.sep)), options)


def worker_main(config: dict) -> None:
    """The ``train_loop_per_worker`` of :func:`pipeline.training.fit` (``config`` built there)."""
    import ray.train

    task: TrainingTask = config["task"]
    cfg: TrainConfig = config["train"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = _device(cfg)
    precision = resolve_precision(cfg.precision, device)
    ctx = WorkerContext(rank=rank, world_size=world, device=device, precision=precision, seed=cfg.seed,
                        options=task.options)
    torch.manual_seed(derived_seed(cfg.seed, "init"))  # the same initial weights on every rank
    setup = task.build(ctx)
    check_trainable_fp32(setup.params)
    scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None
    step, position = _restore(setup, scaler)
    writer = MetricsWriter(config["metrics_prefix"], resume_step=step, options=config["storage_options"]) \
        if rank == 0 else None
    batches = iter(task.batches(ctx, position))
    window_start, window_samples, window_logs, window_steps = time.perf_counter(), 0, {}, 0
    params = list(setup.params.values())
    while step < cfg.steps:
        ctx.step = step
        setup.optimizer.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accumulation):
            batch = next(batches)
            with precision.autocast():
                loss, logs = task.loss(setup.models, batch, ctx, micro)
            scaled = loss.float() / cfg.grad_accumulation
            (scaler.scale(scaled) if scaler else scaled).backward()
            window_samples += task.batch_size(batch)
            for k, v in {"loss": float(loss.detach()), **logs}.items():
                window_logs[k] = window_logs.get(k, 0.0) + float(v) / cfg.grad_accumulation
        average_gradients(setup.params)
        if scaler:
            scaler.unscale_(setup.optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        (scaler.step(setup.optimizer), scaler.update()) if scaler else setup.optimizer.step()
        step, position, window_steps = step + 1, position + cfg.grad_accumulation, window_steps + 1
        checkpoint_now = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if step % cfg.log_every == 0 or checkpoint_now:
            elapsed = max(1e-9, time.perf_counter() - window_start)
            row = mean_across_ranks({k: v / window_steps for k, v in window_logs.items()}, device)
            row |= {"step": step, "task": task.name, "samples_per_s": window_samples * world / elapsed,
                    "s_per_step": elapsed / window_steps, "gpu_mem_gb": _gpu_memory_gb(device),
                    "lr": float(setup.optimizer.param_groups[0]["lr"])}
            if writer:
                writer.append(row)
            _report(row, setup, scaler, step, position, rank, checkpoint_now)
            window_start, window_samples, window_logs, window_steps = time.perf_counter(), 0, {}, 0
    if rank == 0:
        _export(task, setup, config["export_url"], config["storage_options"])


def _report(row: dict, setup: TrainSetup, scaler, step: int, position: int, rank: int, with_checkpoint: bool) -> None:
    import ray.train

    name = f"step_{step:08d}"
    if not with_checkpoint:
        ray.train.report(row)
    elif rank != 0:
        ray.train.report(row, checkpoint=None, checkpoint_dir_name=name)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            save_state(tmp, setup.params, setup.optimizer, scaler, step, position)
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
