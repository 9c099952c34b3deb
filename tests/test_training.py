"""pipeline.training on its own, with a tiny linear model: config checks, precision rules, checkpoint
round trip, metric files, and one Ray Train story (2 CPU workers, gloo) that covers checkpoints, a
worker failure restarted from the last checkpoint, `resume`, and bit-identical results to an
uninterrupted run."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError
from pipeline.training import (
    MetricsWriter,
    TrainConfig,
    TrainingRunExistsError,
    TrainingTask,
    TrainSetup,
    check_trainable_fp32,
    derived_seed,
    fit,
    load_state,
    resolve_precision,
    run_exists,
    save_state,
    shard_batches,
)
from pipeline.training.checkpoint import restore_state


def test_config_rejects_bad_values():
    for bad in ({"num_workers": 0}, {"steps": 0}, {"precision": "fp8"}, {"max_failures": -2},
                {"use_gpu": True, "gpus_per_worker": 0}, {"max_grad_norm": -1.0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


def test_derived_seed_is_stable_and_distinct():
    assert derived_seed(0, "torch", 1, 5, 0) == derived_seed(0, "torch", 1, 5, 0)
    seeds = {derived_seed(0, "torch", r, s, 0) for r in range(2) for s in range(50)}
    assert len(seeds) == 100 and all(0 <= s < 2**63 for s in seeds)


def test_precision_rules():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).compute_dtype is None
    assert resolve_precision("float16", cpu).needs_scaler
    assert resolve_precision("bfloat16", cpu).frozen_dtype == torch.float32  # frozen weights go half on CUDA only
    check_trainable_fp32({"w": torch.nn.Parameter(torch.zeros(2))})
    with pytest.raises(ValueError, match="must be float32"):
        check_trainable_fp32({"w": torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))})


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    params = dict(model.named_parameters())
    save_state(str(tmp_path), params, opt, None, step=7, data_position=14)
    other = torch.nn.Linear(3, 2)
    other_opt = torch.optim.Adam(other.parameters(), lr=0.1)
    state = load_state(str(tmp_path))
    restore_state(state, dict(other.named_parameters()), other_opt, None)
    assert (state.step, state.data_position) == (7, 14)
    assert torch.equal(other.weight, model.weight)
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="differ"):
        restore_state(state, {"weight": other.weight}, other_opt, None)


def test_metrics_writer_resumes_and_drops_later_rows(tmp_path):
    prefix = str(tmp_path / "metrics" / "run")
    writer = MetricsWriter(prefix)
    for step in (1, 2, 3):
        writer.append({"step": step, "loss": 1.0 / step})
    writer.append({"step": 4, "loss": 0.25, "extra": 1.0})
    resumed = MetricsWriter(prefix, resume_step=2)
    assert [r["step"] for r in resumed.rows] == [1, 2]
    text = open(prefix + ".csv").read().splitlines()
    assert text[0] == "step,loss,extra" and len(text) == 5


# ---- the Ray Train story: a tiny linear regression on a Ray Data dataset -------------------------------

def _build(ctx):
    model = torch.nn.Linear(4, 1).to(ctx.device)
    params = dict(model.named_parameters())

    def export(m, folder):
        torch.save({k: v.detach().clone() for k, v in m.state_dict().items()}, os.path.join(folder, "params.pt"))

    return TrainSetup(params=params, optimizer=torch.optim.Adam(params.values(), lr=0.05), models=model,
                      export=export)


def _batches(ctx, start):
    import ray.train

    return shard_batches(ray.train.get_dataset_shard("train"), batch_size=2, start=start)


def _loss(model, batch, ctx, micro):
    marker = ctx.options.get("fail_marker")
    if marker and ctx.rank == 1 and ctx.step == ctx.options["fail_at"] and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("injected worker failure")
    x = torch.as_tensor(batch["x"], dtype=torch.float32)
    noise = torch.randn(x.shape, generator=ctx.generator(micro)) * 0.01  # per-step randomness must replay
    pred = model(x + noise).squeeze(-1)
    return torch.mean((pred - torch.as_tensor(batch["y"], dtype=torch.float32)) ** 2), {"rank_sum": float(ctx.rank)}


def _dataset():
    import ray

    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32) + 0.3
    return ray.data.from_items([{"x": xi, "y": float(yi)} for xi, yi in zip(x, y)])


def _params(out):
    return torch.load(os.path.join(out, "model", "params.pt"), weights_only=True)


@pytest.mark.slow
def test_fit_checkpoints_restarts_resumes_and_matches_uninterrupted(ray_local, tmp_path):
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the callbacks live in this test module
    cfg = TrainConfig(num_workers=2, steps=6, grad_accumulation=2, checkpoint_every=2, log_every=1,
                      max_failures=1, seed=3)
    task = TrainingTask("tiny", _build, _batches, _loss)
    straight = str(tmp_path / "straight")
    result = fit(task, cfg, straight, datasets={"train": _dataset()})
    assert result.checkpoint_path and result.checkpoint_path.endswith("step_00000006")
    import json

    rows = [json.loads(line) for line in open(os.path.join(straight, "metrics", "tiny.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[0]["rank_sum"] == pytest.approx(0.5)  # mean over ranks
    assert all(r["samples_per_s"] > 0 for r in rows)

    # stop after 2 steps, then resume to 6 with a worker failure at step 3: restart from the step-2 checkpoint
    broken = str(tmp_path / "broken")
    fit(task, TrainConfig(**{**cfg.__dict__, "steps": 2}), broken, datasets={"train": _dataset()})
    assert run_exists(broken, "tiny")
    with pytest.raises(TrainingRunExistsError):
        fit(task, cfg, broken, datasets={"train": _dataset()})
    failing = TrainingTask("tiny", _build, _batches, _loss,
                           options={"fail_marker": str(tmp_path / "failed-once"), "fail_at": 3})
    fit(failing, cfg, broken, resume=True, datasets={"train": _dataset()})
    assert os.path.exists(tmp_path / "failed-once")  # the failure happened and the run still finished
    rows = [json.loads(line) for line in open(os.path.join(broken, "metrics", "tiny.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    a, b = _params(straight), _params(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
