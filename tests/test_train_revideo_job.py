"""End to end: trajectory shards from jobs.preprocess_trajectories on the sample, then the three ReVideo
training stages with jobs.train_revideo on a 2-worker CPU TorchTrainer (gloo) with tiny models; an
undecodable video is skipped and counted; the exported control modules load in the `revideo` method and
change its output against the zero-initialised module."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from jobs import preprocess_trajectories, train_revideo
from jobs.common import EXIT_PREFLIGHT
from pipeline.stage import RunContext
from stages.edit.revideo import ReVideoConfig, ReVideoStage
from tests.revideo_fixtures import TINY_REVIDEO, save_tiny_revideo, save_tiny_svd

pytestmark = pytest.mark.slow

WINDOW = ["window.num_frames=4", "window.width=32", "window.height=32"]


def _sets(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def _shards(tmp_path, sample_dir) -> str:
    rows = list(csv.DictReader(open(os.path.join(sample_dir, "manifest.csv"))))
    doomed = shutil.copy(rows[2]["video_uri"], tmp_path / "doomed.mp4")
    manifest = tmp_path / "webvid.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["videoid", "contentUrl", "name"])
        writer.writerows([["a", rows[0]["video_uri"], "a"], ["b", rows[1]["video_uri"], "b"], ["c", doomed, "c"]])
    out = str(tmp_path / "trajectories")
    settings = WINDOW + ["trajectories.grid_size=8", "trajectories.store_grid_tracks=true", "run.preview_first=0",
                         "run.preview_every=0"]
    assert preprocess_trajectories.main(["--manifest", str(manifest), "--output", out, *_sets(settings)]) == 0
    open(doomed, "wb").write(b"the source video went bad after preprocessing")
    return out


def _edit(svd: str, checkpoint: str, out: str, controlnet: str | None = None) -> np.ndarray:
    config = ReVideoConfig(model=svd, checkpoint=checkpoint, controlnet=controlnet, **TINY_REVIDEO, previews=False)
    stage = ReVideoStage(config, RunContext(output_url=out, cache_url=os.path.join(out, "cache")))
    stage.setup()
    frames = np.stack([np.roll(np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (32, 1, 3)), 2 * t, 1)
                       for t in range(4)])
    row = {"job_id": "j", "video_id": "v", "frames": frames, "fps": 8.0, "edit_box": json.dumps([4, 4, 28, 28]),
           "trajectories": json.dumps([[[10, 10], [20, 16]]])}
    return stage.edit(row, dataclasses.replace(config))


def test_three_stages_train_on_shards_and_export_what_revideo_loads(ray_local, sample_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # the controller notices each end sooner
    shards = _shards(tmp_path, sample_dir)
    svd, zero = save_tiny_svd(tmp_path / "svd"), save_tiny_revideo(tmp_path / "zero", randomise=False)
    out = str(tmp_path / "train")
    settings = WINDOW + [
        f"revideo.model={svd}", f"revideo.checkpoint={zero}", "revideo.stem_channels=[8,8,16]",
        "revideo.stage_steps=[2,2,2]", "revideo.learning_rate=0.01", "revideo.gradient_checkpointing=false",
        "revideo.samples.min_region=8", "revideo.samples.kernel_size=7", "revideo.samples.kernel_sigma=2.0",
        "train.num_workers=2", "train.cpus_per_worker=0.5", "data.num_cpus=0.5", "train.grad_accumulation=1",
        "train.checkpoint_every=1", "train.log_every=1"]
    args = ["--shards", shards, "--output", out, *_sets(settings)]
    assert train_revideo.main([*args, "--stage", "2"]) == EXIT_PREFLIGHT  # stage 2 needs stage 1's module

    for stage in (1, 2, 3):
        assert train_revideo.main([*args, "--stage", str(stage)]) == 0
        summary = json.load(open(os.path.join(out, f"stage{stage}", "summary.json")))
        assert summary["skipped_rows"] == 1 and summary["checkpoint"].endswith("step_00000002")
        rows = [json.loads(line) for line in open(os.path.join(out, "metrics", f"stage{stage}.jsonl"))]
        assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
        assert all(r["samples_per_s"] > 0 and "gpu_mem_gb" in r for r in rows)
        assert os.path.exists(os.path.join(out, f"stage{stage}", "controlnet", "config.json"))
    skipped = os.listdir(os.path.join(out, "skipped", "stage1"))
    assert len(skipped) == 1 and "doomed" in json.load(open(os.path.join(out, "skipped", "stage1", skipped[0])))[
        "video_uri"]
    assert train_revideo.main([*args, "--stage", "1"]) == EXIT_PREFLIGHT  # an existing run needs --resume
    assert os.path.exists(os.path.join(out, "stage3", "unet", "config.json"))  # stage 3 tunes the UNet's k/v

    base = _edit(svd, zero, str(tmp_path / "e0"))
    after1 = _edit(svd, zero, str(tmp_path / "e1"), controlnet=os.path.join(out, "stage1", "controlnet"))
    after3 = _edit(svd, os.path.join(out, "stage3"), str(tmp_path / "e3"))
    assert base.shape == after1.shape == after3.shape
    assert np.abs(after1.astype(int) - base).max() > 0 and np.abs(after3.astype(int) - base).max() > 0
